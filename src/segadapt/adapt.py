"""The method: fine-tune a copy H2 of H1 so that H2's feature maps on D2 images match the frozen H1's
feature maps on the paired D1 images. No D2 label is read anywhere in this file.

Only parameters below the deepest regressed tap are trained; everything above stays exactly as in H1,
so H2 keeps H1's classifier. The student's forward stops at that tap, the teacher runs in inference mode.
The run directory, log, resume points and Ctrl-C are the `Run`'s (run.py); the step is below, in adapt().
"""

from __future__ import annotations

import copy
import csv
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segadapt import cache as teacher_cache
from segadapt import checkpoint as ckpt
from segadapt import distributed
from segadapt.config import RunConfig, to_dict
from segadapt.data.geopairs import RasterPairs
from segadapt.data.pairs import PairedDataset
from segadapt.errors import CheckpointError, SegadaptError
from segadapt.losses import feature_regression_loss, resolve_layers
from segadapt.models.contract import SegmentationModel, check_taps, conform, default_layers
from segadapt.models.loading import load_any, rebuild_meta, save_native
from segadapt.models.modes import NormPolicy, adaptation_mode
from segadapt.models.taps import Features
from segadapt.run import Run, autocast, wrap_ddp
from segadapt.runtime import environment
from segadapt.selection import HoldoutProbe, probe_steps, split_holdout

OnProbe = Callable[[int, nn.Module], dict[str, float]]


def layer_weights(cfg: RunConfig, model: SegmentationModel) -> dict[str, float]:
    """Tap -> weight from adapt.layers: one preset name of the model's own table, or explicit taps; none given:
    the model's deepest stage (`default_layers`)."""
    layers, presets = cfg.adapt.layers or default_layers(model), model.layer_presets()
    if len(layers) == 1 and layers[0] in presets and not cfg.adapt.weights:
        return resolve_layers(preset=layers[0], presets=presets)
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


def load_h1(cfg: RunConfig, device: torch.device | str) -> tuple[nn.Module, dict[str, Any]]:
    """H1 as adapt.h1 names it (any form models/loading.py reads), with its factory weights, kwargs and trust."""
    a = cfg.adapt
    if not a.h1:
        raise SegadaptError("no source model to adapt; pass --h1 RUN (a training run or model file, a transformers "
                            "model directory, or a factory package.module:function)")
    return load_any(a.h1, device, weights=a.h1_weights or None, kwargs=a.h1_kwargs or None,
                    trusted_factories=a.trust_factories)


def adapt(
    cfg: RunConfig,
    run_dir: Path,
    pairs: PairedDataset | RasterPairs,
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
    run = Run(cfg, run_dir, "adapt", resume=resume)
    device = run.device

    # teacher H1 (frozen) and student H2 (a copy)
    if teacher is None:
        teacher, h1_meta = load_h1(cfg, device)
    assert h1_meta is not None
    weights = layer_weights(cfg, conform(teacher))
    taps = list(weights)
    cfg.adapt.layers = cfg.adapt.layers or taps  # config.toml says what was regressed (a resume keeps it)
    check_taps(conform(teacher), taps)
    teacher = teacher.to(device).eval().requires_grad_(False)
    # NHWC convolutions as train.channels_last says, as in train() ("auto": timed on a copy, since the
    # teacher takes no gradients). The caller's teacher is not converted in place; a copy in the new layout
    # is used instead.
    if tc.channels_last == "auto":
        run.settle_layout(copy.deepcopy(teacher).requires_grad_(True))
    if tc.channels_last:
        teacher = copy.deepcopy(teacher).to(memory_format=run.memory_format)
    student = copy.deepcopy(teacher).to(device)
    teacher_features, student_features = conform(teacher).features, conform(student).features
    # the student runs without dropout or stochastic depth (the teacher's maps come from eval mode: a student
    # dropping random units could not match them even with equal weights), BatchNorm as adapt.norm says
    policy = NormPolicy(student, cfg.adapt.norm, taps)

    registration = None
    if cfg.adapt.align != "none":  # pairs not pixel-aligned: register each once, keep those that pass
        from segadapt.data.align_cache import register_dataset

        if not isinstance(pairs, PairedDataset):
            raise SegadaptError(f"adapt.align = {cfg.adapt.align}: mosaics are paired by their georeferencing; "
                                f"set adapt.align = none")
        pairs, registration = register_dataset(pairs, cfg.adapt, run_dir / "align")
        if run.main:
            print(f"registration ({registration['method']}): {registration['ok']} of {registration['pairs']} pairs "
                  f"usable, {registration['failed']} failed the quality check and are skipped (adapt.json)")
    if isinstance(pairs, RasterPairs) and run.main and pairs.coverage < 0.995:
        print(f"{pairs.paths[1]} covers {pairs.coverage:.1%} of the ground of {pairs.paths[0]}: windows are drawn "
              f"around the overlap, pixels without both mosaics are left out of the loss (raster_coverage)")
    holdout_ids, fit_ids = split_holdout(len(pairs), cfg.adapt.holdout, tc.seed)
    probe = HoldoutProbe(pairs, holdout_ids, teacher_features, weights, tc.seed, device) if holdout_ids else None
    probe_at = probe_steps(tc.iterations, cfg.adapt.probes) if probe else set()
    trainable = conform(student).parameters_up_to(taps)
    # one augmented pair drawn here, as adapt() always has (before the model contract it fed the parameter
    # probe): the loop's augmentation stream starts where it did, so a seed gives the same H2 as before
    pairs[0]
    train_ids = {id(p) for p in trainable}
    for p in student.parameters():
        p.requires_grad_(id(p) in train_ids)
    optimizer = torch.optim.SGD(trainable, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = tc.lr
    # under torchrun: only the student is wrapped (the teacher never trains)
    student_net = wrap_ddp(StudentTaps(student, student_features, taps), device)

    cache, fit_pairs = None, pairs
    if cfg.adapt.teacher_cache:  # H1's maps read from disk instead of recomputed; X1 is then never loaded
        cache, fit_pairs = teacher_cache.prepare(
            cfg.adapt.teacher_cache, pairs, teacher, teacher_features, taps, device, run.per_rank)

    # resume point: restored last, so the RNG is the checkpoint's, untouched by the set-up above
    probes: list[dict[str, float]] = []
    selected: tuple[dict[str, float], dict[str, torch.Tensor]] | None = None
    h1_sha = teacher_cache.model_fingerprint(teacher)  # a resume must regress onto the same H1

    def resume_meta() -> dict[str, Any]:
        return {"probes": probes, "selected": selected[0] if selected else None, "config": to_dict(cfg),
                "h1_sha256": h1_sha}

    state = run.hold(student, optimizer, resume_meta, lambda: selected[1] if selected else None)
    if state:
        if state.get("h1_sha256", h1_sha) != h1_sha:
            raise CheckpointError(f"{cfg.adapt.h1}: H1's weights changed since {run_dir} started; resuming would "
                                  f"regress onto another teacher. Start a new adaptation (--out)")
        probes = state.get("probes", [])
        if state.get("selected") is not None:
            selected = (state["selected"], ckpt.read_extra(run.last))

    # loop
    adaptation_mode(student, policy)
    step, seen, loss_value = run.start, 0, math.nan
    per_layer: dict[str, float] = {}
    fields = ["step", "loss", *[f"loss_{t}" for t in taps], "lr", "images_per_s", "elapsed_s"]
    fix = "lower train.lr or set adapt.grad_clip (e.g. 5)"
    with run.logging(fields, f"adapt {'+'.join(taps)}"):
        for (x1, x2, *rest), ids in run.batches(fit_pairs, fit_ids):
            if step >= tc.iterations:
                break
            lr = run.set_lr(optimizer, step)
            x1, x2 = run.to_device(x1), run.to_device(x2)
            valid = rest.pop().to(device) if pairs.with_valid else None  # registered pairs: where X2 has a source
            with autocast(device):
                with torch.inference_mode():
                    target = teacher_features(x1, taps) if cache is None else cache.targets(rest[0], device)
                pred = student_net(x2)
            loss, per_layer = feature_regression_loss(target, pred, weights, valid)
            loss_value = run.check_loss(loss, step + 1, ids, fix, what="regression loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.adapt.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.adapt.grad_clip)
            run.check_grads(trainable, step + 1, ids, fix)  # before the step: the student's weights stay finite
            optimizer.step()
            step += 1
            seen += x1.shape[0] * run.world
            run.progress(loss=f"{loss_value:.4g}")
            if run.due(step):
                per_layer = distributed.mean_over_ranks(per_layer)  # same step on every rank: safe collective
                run.log({"step": step, "loss": f"{loss_value:.6g}", "lr": f"{lr:.3g}",
                         "images_per_s": f"{seen / run.elapsed():.2f}"}
                        | {f"loss_{t}": f"{v:.6g}" for t, v in per_layer.items()})
            if step in probe_at:
                assert probe is not None
                point = {"step": step, **probe.measure(student, student_features)}
                if on_probe is not None:
                    point |= on_probe(step, student)
                    adaptation_mode(student, policy)
                probes.append(point)
                if selected is None or point["holdout_loss"] < selected[0]["holdout_loss"]:
                    selected = (point, {k: v.detach().clone() for k, v in student.state_dict().items()})
            if run.end_of_step(step):
                break
    train_time = run.elapsed()

    # files (rank 0)
    student.requires_grad_(True).eval()
    meta = {**h1_meta, **rebuild_meta(student), "step": step, "adapted_from": str(cfg.adapt.h1),
            "layers": weights, "config": to_dict(cfg)}
    run.save(step)  # the run can be extended later (--resume with more iterations)
    if run.main:
        ckpt.save_model(run_dir / ckpt.MODEL_FILE, student, meta)
        native = functools.partial(save_native, student, run_dir, meta, h1_meta.get("hf_source"))
        native()  # H2 in H1's own format too (hf_model/, factory_weights.safetensors): a drop-in replacement
        if selected is not None:
            _write_selection(run_dir, probes, selected, student, meta, native)
    result = {
        "layers": weights,
        "step": step,
        "final_loss": loss_value if step > run.start else None,
        "final_layer_loss": per_layer if step > run.start else {},
        "probes": probes,
        "selected_step": selected[0]["step"] if selected else None,
        "train_time_s": round(train_time, 2),
        **({"registration": registration} if registration is not None else {}),
        **({"raster_coverage": round(pairs.coverage, 4)} if isinstance(pairs, RasterPairs) else {}),
        "environment": environment(),
    }
    if run.main:
        ckpt.write_json_atomic(run_dir / "adapt.json", result)
    run.finish(step)
    return result


def _write_selection(
    run_dir: Path, probes: list[dict[str, float]], selected: tuple[dict[str, float], dict[str, torch.Tensor]],
    student: nn.Module, meta: dict[str, Any], native: Callable[..., Any],
) -> None:
    """selection.csv (one row per probe) and the lowest-held-out-loss weights as model_selected.safetensors
    (and in H1's own format: `native(suffix=...)`)."""
    with ckpt.atomic_path(run_dir / "selection.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, list(probes[0]))
        w.writeheader()
        w.writerows(probes)
    final = {k: v.detach().clone() for k, v in student.state_dict().items()}
    student.load_state_dict(selected[1])
    ckpt.save_model(run_dir / "model_selected.safetensors", student, {**meta, "step": selected[0]["step"]})
    native(suffix="_selected")
    student.load_state_dict(final)
