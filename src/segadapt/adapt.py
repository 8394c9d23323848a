"""The method: fine-tune a copy H2 of H1 so that H2's feature maps on D2 images match the frozen H1's
feature maps on the paired D1 images. No D2 label is read anywhere in this file.

Only parameters below the deepest regressed tap are trained; everything above stays exactly as in H1,
so H2 keeps H1's classifier. The student's forward stops at that tap, the teacher runs in inference mode.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from segadapt import cache as teacher_cache
from segadapt import checkpoint as ckpt
from segadapt import distributed
from segadapt.config import RunConfig, dumps_toml, to_dict
from segadapt.data.pairs import PairedDataset
from segadapt.errors import CheckpointError, SegadaptError
from segadapt.losses import LAYER_PRESETS, feature_regression_loss, resolve_layers
from segadapt.models.contract import check_taps, conform, feature_fn
from segadapt.models.taps import Features
from segadapt.runtime import InterruptFlag, environment, select_device, setup
from segadapt.selection import HoldoutProbe, probe_steps, split_holdout
from segadapt.train import (
    EpochSampler,
    autocast,
    batches,
    describe_batch,
    end_of_step,
    global_loss,
    grads_finite,
    interrupted_mid_step,
    nonfinite_error,
    poly_lr,
    rank_batch_size,
    refuse_nonfinite,
    wrap_ddp,
    write_log_header,
)

OnProbe = Callable[[int, nn.Module], dict[str, float]]


def layer_weights(cfg: RunConfig) -> dict[str, float]:
    layers = cfg.adapt.layers
    if len(layers) == 1 and layers[0] in LAYER_PRESETS and not cfg.adapt.weights:
        return resolve_layers(preset=layers[0])
    return resolve_layers(layers=layers, weights=cfg.adapt.weights)


class StudentTaps(nn.Module):
    """The student's early-exit feature pass as a module's forward(), so DistributedDataParallel can wrap it.

    DDP averages gradients only for what runs through its own forward(); the loss here comes from
    `features` (which stops at the deepest tap), not from the student's forward(). Wrapping this small
    module instead of the student keeps the early exit, lets DDP overlap the gradient all-reduce with the
    backward pass, and needs no manual all-reduce. It owns the student, so its parameters are the student's
    (only the trainable ones, all used by the taps, are synchronised). In one process it is a thin call.
    """

    def __init__(self, student: nn.Module, features: Features, taps: list[str]) -> None:
        super().__init__()
        self.student, self._features, self.taps = student, features, taps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._features(x, self.taps)


def train_mode(student: nn.Module) -> None:
    """Train mode without dropout: the teacher's maps come from eval mode, and a student whose fc6/fc7 drop
    random units could not match them even with equal weights (the loss would chase noise)."""
    student.train()
    for m in student.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()



def adapt(
    cfg: RunConfig,
    run_dir: Path,
    pairs: PairedDataset,
    *,
    teacher: nn.Module | None = None,
    h1_meta: dict[str, Any] | None = None,
    on_probe: OnProbe | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Regress H2's features on X2 onto H1's on X1; writes model.safetensors (a normal model file).

    Every few steps the label-free signals are measured on held-out pairs (selection.csv) and the checkpoint
    with the lowest held-out loss is kept as model_selected.safetensors. `on_probe(step, h2)` lets a caller
    that has D2 labels (the sweep) score the same checkpoints; nothing here reads a label. Resume points
    (train.checkpoint_every, Ctrl-C) hold the student, optimizer, RNG, probes and selected weights, and
    `resume` continues from the newest one exactly as the run would have gone on.
    """
    tc = cfg.train
    setup(tc.seed, tc.threads, tc.deterministic)
    distributed.init()
    device = select_device(tc.device)
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    per_rank = rank_batch_size(tc.batch_size, world)  # train.batch_size is the global batch
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    weights = layer_weights(cfg)
    taps = list(weights)

    # teacher H1 (frozen) and student H2 (a copy)
    if teacher is None:
        if not cfg.adapt.h1:
            raise SegadaptError("no source model to adapt; pass --h1 RUN (a training run or model file)")
        teacher, h1_meta = ckpt.load_model(cfg.adapt.h1, device)
    assert h1_meta is not None
    check_taps(conform(teacher), taps)
    teacher = teacher.to(device).eval().requires_grad_(False)
    # NHWC convolutions, as in train(): faster with oneDNN (benchmarks/regression_step.py). The caller's
    # teacher is not converted in place; a copy in the new layout is used instead.
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    if tc.channels_last:
        teacher = copy.deepcopy(teacher).to(memory_format=memory_format)
    student = copy.deepcopy(teacher).to(device)
    teacher_features, student_features = feature_fn(teacher), feature_fn(student)

    holdout_ids, fit_ids = split_holdout(len(pairs), cfg.adapt.holdout, tc.seed)
    probe = HoldoutProbe(pairs, holdout_ids, teacher_features, weights, tc.seed, device) if holdout_ids else None
    probe_at = probe_steps(tc.iterations, cfg.adapt.probes) if probe else set()
    trainable = conform(student).parameters_up_to(taps)
    train_ids = {id(p) for p in trainable}
    for p in student.parameters():
        p.requires_grad_(id(p) in train_ids)
    optimizer = torch.optim.SGD(trainable, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = tc.lr
    # under torchrun: only the student is wrapped (the teacher never trains)
    student_net = wrap_ddp(StudentTaps(student, student_features, taps), device)
    last = ckpt.latest_checkpoint(run_dir) if resume else None
    if resume and last is None:
        raise CheckpointError(f"{run_dir}: nothing to resume (no checkpoints/step_*.safetensors); drop --resume")
    start = ckpt.step_of(last) if last is not None else 0

    cache, fit_pairs = None, pairs
    if cfg.adapt.teacher_cache:  # H1's maps read from disk instead of recomputed; X1 is then never loaded
        cache, fit_pairs = teacher_cache.prepare(
            cfg.adapt.teacher_cache, pairs, teacher, teacher_features, taps, device, per_rank)
    sampler = EpochSampler(len(fit_ids), tc.seed, start * tc.batch_size, rank, world)
    loader = DataLoader(
        Subset(fit_pairs, fit_ids), batch_size=per_rank, sampler=sampler,
        drop_last=True,
        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(distributed.rank_seed(tc.seed + start)),
        persistent_workers=cfg.data.num_workers > 0,
    )
    fields = ["step", "loss", *[f"loss_{t}" for t in taps], "lr", "images_per_s", "elapsed_s"]
    elapsed_before = 0.0  # seconds the run had logged before this resume
    if main:
        if not resume:  # resume points of an earlier run in this directory would outrank this run's
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        ckpt.write_text_atomic(run_dir / "config.toml", dumps_toml(cfg))
        elapsed_before = write_log_header(run_dir / "log.csv", start, fields)
    # only rank 0 writes files; the other ranks log into the void
    log_file = (run_dir / "log.csv").open("a", newline="") if main else open(os.devnull, "w")  # noqa: SIM115
    log = csv.DictWriter(log_file, fields)

    probes: list[dict[str, float]] = []
    selected: tuple[dict[str, float], dict[str, torch.Tensor]] | None = None
    h1_sha = teacher_cache.model_fingerprint(teacher)  # a resume must regress onto the same H1
    if last is not None:  # restored last, so the RNG is the checkpoint's, untouched by the set-up above
        state = ckpt.load_training_state(last, student, optimizer)
        if state.get("h1_sha256", h1_sha) != h1_sha:
            raise CheckpointError(f"{cfg.adapt.h1}: H1's weights changed since {run_dir} started; resuming would "
                                  f"regress onto another teacher. Start a new adaptation (--out)")
        probes = state.get("probes", [])
        if state.get("selected") is not None:
            selected = (state["selected"], ckpt.read_extra(last))
        if main:
            print(f"resuming {run_dir} from step {start}")
    # ranks > 0 draw augmentation from their own seeds: rank_seed(seed + step), restarted after every step
    if rank:
        torch.manual_seed(distributed.rank_seed(tc.seed + start))

    def save_state(step: int) -> None:
        """Rank 0 writes the resume point; weights that are not finite never replace a good checkpoint."""
        if not main:
            return
        refuse_nonfinite(student, step, run_dir)
        meta = {"probes": probes, "selected": selected[0] if selected else None, "config": to_dict(cfg),
                "h1_sha256": h1_sha}
        ckpt.save_training_state(ckpt.checkpoint_path(run_dir, step), student, optimizer, step, meta,
                                 extra=selected[1] if selected else None)
        ckpt.prune_checkpoints(run_dir)

    # loop
    train_mode(student)
    step, seen, t0, loss_value = start, 0, time.perf_counter(), math.nan
    per_layer: dict[str, float] = {}
    bar = tqdm(total=tc.iterations, initial=start, desc=f"adapt {'+'.join(taps)}", dynamic_ncols=True,
               mininterval=1.0, disable=not main)
    stop = InterruptFlag()
    fix = "lower train.lr or set adapt.grad_clip (e.g. 5)"
    try:
        for (x1, x2, *geometry), ids in zip(loader, batches(sampler, per_rank)):
            if step >= tc.iterations:
                break
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, tc.iterations, tc.poly_power)
            x1 = x1.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            x2 = x2.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with autocast(device):
                with torch.inference_mode():
                    target = teacher_features(x1, taps) if cache is None else cache.targets(geometry[0], device)
                pred = student_net(x2)
            loss, per_layer = feature_regression_loss(target, pred, weights)
            loss_value, bad_ranks = global_loss(loss)
            if bad_ranks:
                batch = describe_batch(pairs, [fit_ids[i] for i in ids])
                raise nonfinite_error("regression loss", loss_value, step + 1, bad_ranks, batch, run_dir, fix)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.adapt.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.adapt.grad_clip)
            if not grads_finite(trainable):  # checked before the step, so the student's weights stay finite
                batch = describe_batch(pairs, [fit_ids[i] for i in ids])
                raise nonfinite_error("gradients", "non-finite", step + 1, [], batch, run_dir, fix)
            optimizer.step()
            step += 1
            seen += x1.shape[0] * world
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.iterations:
                per_layer = distributed.mean_over_ranks(per_layer)  # same step on every rank: safe collective
                rate = seen / (time.perf_counter() - t0)
                row = {"step": step, "loss": f"{loss_value:.6g}", "lr": f"{optimizer.param_groups[0]['lr']:.3g}",
                       "images_per_s": f"{rate:.2f}", "elapsed_s": f"{elapsed_before + time.perf_counter() - t0:.1f}"}
                log.writerow(row | {f"loss_{t}": f"{v:.6g}" for t, v in per_layer.items()})
                log_file.flush()
                bar.set_postfix(loss=f"{loss_value:.4g}")
            if step in probe_at:
                assert probe is not None
                point = {"step": step, **probe.measure(student, student_features)}
                if on_probe is not None:
                    point |= on_probe(step, student)
                    train_mode(student)
                probes.append(point)
                if selected is None or point["holdout_loss"] < selected[0]["holdout_loss"]:
                    selected = (point, {k: v.detach().clone() for k, v in student.state_dict().items()})
            elapsed = time.perf_counter() - t0
            if end_of_step(step, tc, elapsed, stop, save_state, f"segadapt adapt --resume {run_dir}"):
                break
    except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the state is inconsistent, keep the last checkpoint
        raise interrupted_mid_step(step, run_dir, "adapt") from None
    finally:
        stop.restore()
        bar.close()
        log_file.close()

    student.requires_grad_(True).eval()
    meta = {**h1_meta, "step": step, "adapted_from": str(cfg.adapt.h1), "layers": weights, "config": to_dict(cfg)}
    save_state(step)  # the run can be extended later (--resume with more iterations)
    if main:
        ckpt.save_model(run_dir / ckpt.MODEL_FILE, student, meta)
    if selected is not None and main:
        _write_selection(run_dir, probes, selected, student, meta)
    result = {
        "layers": weights,
        "step": step,
        "final_loss": loss_value if step > start else None,
        "final_layer_loss": per_layer if step > start else {},
        "probes": probes,
        "selected_step": selected[0]["step"] if selected else None,
        "train_time_s": round(time.perf_counter() - t0, 2),
        "environment": environment(),
    }
    if main:
        ckpt.write_json_atomic(run_dir / "adapt.json", result)
    distributed.barrier()  # when adapt() returns, its files exist for every rank
    return result



def _write_selection(
    run_dir: Path, probes: list[dict[str, float]], selected: tuple[dict[str, float], dict[str, torch.Tensor]],
    student: nn.Module, meta: dict[str, Any],
) -> None:
    """selection.csv (one row per probe) and the lowest-held-out-loss weights as model_selected.safetensors."""
    with ckpt.atomic_path(run_dir / "selection.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, list(probes[0]))
        w.writeheader()
        w.writerows(probes)
    final = {k: v.detach().clone() for k, v in student.state_dict().items()}
    student.load_state_dict(selected[1])
    ckpt.save_model(run_dir / "model_selected.safetensors", student, {**meta, "step": selected[0]["step"]})
    student.load_state_dict(final)
