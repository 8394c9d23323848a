"""The method: fine-tune a copy H2 of H1 so that H2 on D2 images matches the frozen H1 on the paired D1
images, by the terms of adapt.objective (segadapt.objectives). No D2 label is read anywhere in this file.

With feature terms alone (the study's regression) only parameters below the deepest tap of adapt.layers
train and the student's forward stops at that tap; everything above stays exactly as in H1, so H2 keeps
H1's classifier. An output-level term needs the student's logits (its full forward); the parameters above
the deepest tap (the decode head) then train too, unless adapt.train_head is false. The teacher runs in inference mode.
The run directory, log, resume points and Ctrl-C are the `Run`'s (run.py); the step is below, in adapt().
"""

from __future__ import annotations

import copy
import csv
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segadapt import cache as teacher_cache
from segadapt import checkpoint as ckpt
from segadapt import distributed
from segadapt.card import written
from segadapt.config import AdaptConfig, RunConfig, to_dict
from segadapt.data.d2_labels import LabelledDraws, d2_label_source
from segadapt.data.geopairs import RasterPairs
from segadapt.data.pairs import PairedDataset
from segadapt.errors import CheckpointError, ConfigError, SegadaptError
from segadapt.evaluate import score
from segadapt.losses import resolve_layers
from segadapt.models.contract import SegmentationModel, check_taps, conform, default_layers, default_objective
from segadapt.models.loading import load_any, rebuild_meta, save_native
from segadapt.models.modes import NormPolicy, adaptation_mode
from segadapt.models.outputs import classes_read_off, logits_of
from segadapt.models.taps import Features
from segadapt.objectives import Objective, Outputs, build_objective
from segadapt.objectives.term import as_plain, model_outputs
from segadapt.run import Run, wrap_ddp
from segadapt.runtime import environment
from segadapt.selection import HoldoutProbe, better, probe_steps, split_holdout
from segadapt.speed import autocast

OnProbe = Callable[[int, nn.Module], dict[str, float]]
# the objective's own state (statistics, running means, learned weights) in a resume point's extra tensors,
# beside the selected weights (whose keys are the student's)
OBJECTIVE_STATE = "objective:"


def layer_weights(cfg: RunConfig, model: SegmentationModel) -> dict[str, float]:
    """Tap -> weight from adapt.layers: one preset name of the model's own table, or explicit taps; none given:
    the model's deepest stage (`default_layers`)."""
    layers, presets = cfg.adapt.layers or default_layers(model), model.layer_presets()
    if len(layers) == 1 and layers[0] in presets and not cfg.adapt.weights:
        return resolve_layers(preset=layers[0], presets=presets)
    return resolve_layers(layers=layers, weights=cfg.adapt.weights)


class StudentPass(nn.Module):
    """H2's pass on X2 as a module's forward(), so DistributedDataParallel can wrap it: the taps (early exit)
    and/or the logits, as the objective needs.

    DDP averages gradients only for what runs through its own forward(); with feature terms alone the loss
    comes from `features` (which stops at the deepest tap), not from the student's forward(). Wrapping this
    small module instead of the student keeps the early exit, lets DDP overlap the gradient all-reduce with
    the backward pass, and needs no manual all-reduce. It owns the student, so its parameters are the
    student's (only the trainable ones, all used by the pass, are synchronised). In one process it is a thin call.
    """

    def __init__(self, student: nn.Module, features: Features, taps: list[str], maps: bool, logits: bool) -> None:
        super().__init__()
        self.student, self._features, self.taps, self.maps, self.logits = student, features, taps, maps, logits

    def forward(self, x: torch.Tensor, labelled: torch.Tensor | None = None
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """The pass on X2, and H2's logits on labelled D2 images (adapt.d2_labels) when there are any."""
        maps, logits = model_outputs(self.student, self._features, x, self.taps, self.maps, self.logits)
        return maps, logits, None if labelled is None else logits_of(self.student(labelled))


def trains_head(cfg: AdaptConfig, objective: Objective) -> bool:
    """Whether the parameters above the deepest tap train: only with an output-level term, and then unless
    adapt.train_head is false. auto trains them: measured on a SegFormer (docs/results/objectives-synthetic-
    segformer), a trained head recovered more of B2's gain than CMA's frozen one (output_kl 0.84 vs 0.75,
    paired_pseudo 0.83 vs 0.77)."""
    return objective.output_level and cfg.train_head is not False


def trainable_parameters(model: SegmentationModel, taps: Sequence[str], head: bool) -> list[nn.Parameter]:
    """What adaptation trains: the parameters feeding the deepest of `taps` (the contract's parameters_up_to),
    and with `head` every other parameter too (the decode head above the taps)."""
    below = model.parameters_up_to(list(taps))
    return list(model.parameters()) if head else below  # type: ignore[attr-defined]


def d1_maps(teacher: nn.Module, pairs: PairedDataset | RasterPairs, ids: Sequence[int], taps: list[str],
            batch_size: int, seed: int, device: torch.device, batches: int = 4) -> Iterator[dict[str, torch.Tensor]]:
    """H1's maps on the X1 of the first few batches of `ids` (augmentation drawn under a forked, seeded RNG,
    so the run's own stream is untouched): what a term calibrates its statistics of H1 on D1 from."""
    features = conform(teacher).features
    chosen = list(ids)[:batch_size * batches]
    for start in range(0, len(chosen), batch_size):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + start)
            x1 = torch.stack([pairs[i][0] for i in chosen[start:start + batch_size]]).to(device)
        with torch.inference_mode():
            yield features(x1, taps)


def h1_classes(teacher: nn.Module, meta: dict[str, Any]) -> int:
    """The classes H1 predicts: the contract's count, else its model file's, else read off one forward."""
    return conform(teacher).num_classes or int(meta.get("num_classes") or 0) or classes_read_off(teacher)


def load_h1(cfg: RunConfig, device: torch.device | str) -> tuple[nn.Module, dict[str, Any]]:
    """H1 as adapt.h1 names it (any form models/loading.py reads), with its factory weights, kwargs and trust."""
    a = cfg.adapt
    if not a.h1:
        raise SegadaptError("no source model to adapt; pass --h1 RUN (a training run or model file, a transformers "
                            "model directory, or a factory package.module:function)")
    return load_any(a.h1, device, weights=a.h1_weights or None, kwargs=a.h1_kwargs or None,
                    trusted_factories=a.trust_factories)


@dataclass
class Adaptation:
    """What the loop of `adapt` works with, built once by `_prepare`: the frozen teacher H1 and its student H2,
    what H2 minimises, the pairs it fits and the held-out ones it is probed on, what trains and how."""

    cfg: RunConfig
    device: torch.device
    teacher: nn.Module
    teacher_features: Features  # H1's early-exit pass (made once: a plain module's is built from hooks)
    student: nn.Module
    objective: Objective
    weights: dict[str, float]  # tap -> weight of the feature terms
    policy: NormPolicy
    pairs: PairedDataset | RasterPairs  # registered when adapt.align is set
    fit_pairs: PairedDataset | RasterPairs  # the same, or their X1-free view when H1's maps come from the cache
    fit_ids: list[int]
    probe: HoldoutProbe | None
    probe_at: set[int]
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    student_net: nn.Module  # the student's pass (StudentPass), under torchrun wrapped by DDP
    registration: dict[str, Any] | None = None
    cache: teacher_cache.TeacherCache | None = None
    draws: LabelledDraws | None = None

    @property
    def taps(self) -> list[str]:
        return list(self.weights)

    def outputs(self, x1: torch.Tensor, x2: torch.Tensor, rest: list[Any], valid: torch.Tensor | None,
                step: int) -> Outputs:
        """H1 on X1 (inference mode, or sliced from the cache) and H2 on X2, as the terms read them; with
        adapt.d2_labels also H2 on this step's labelled D2 images."""
        o, device = self.objective, self.device
        xl, labels = self.draws.batch(step, device) if self.draws is not None else (None, None)
        with autocast(device, self.cfg.train.precision):
            with torch.inference_mode():
                if self.cache is None:
                    target, target_logits = model_outputs(self.teacher, self.teacher_features, x1,
                                                          self.taps, o.needs_maps, o.needs_logits)
                else:
                    target, target_logits = self.cache.targets(rest[0], device), None
            pred, pred_logits, labelled_logits = self.student_net(x2, xl)
        return Outputs(target, pred, as_plain(target_logits), pred_logits, valid, labelled_logits, labels)


@dataclass
class Selection:
    """The label-free probes measured so far and the checkpoint adapt.select prefers: its probe and weights."""

    probes: list[dict[str, float]] = field(default_factory=list)
    best: tuple[dict[str, float], dict[str, torch.Tensor]] | None = None

    def offer(self, point: dict[str, float], student: nn.Module, select: str) -> None:
        self.probes.append(point)
        if self.best is None or better(point, self.best[0], select):
            self.best = (point, {k: v.detach().clone() for k, v in student.state_dict().items()})


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
    """Train H2 on (X1, X2) pairs by adapt.objective (by default the architecture's: models.contract.
    default_objective); writes model.safetensors (a normal model file).

    Every few steps the label-free signals are measured on held-out pairs (selection.csv) and the checkpoint
    adapt.select prefers (default: the highest agreement with H1's labels) is kept as model_selected.safetensors.
    `on_probe(step, h2)` lets a caller that has D2 labels (the sweep) score the same checkpoints; nothing here
    reads a label. Resume points (train.checkpoint_every, Ctrl-C) hold the student, optimizer, RNG, probes,
    selected weights and the objective's own state (statistics, running means, learned weights), and
    `resume` continues from the newest one exactly as the run would have gone on.
    """
    tc, ac = cfg.train, cfg.adapt
    run = Run(cfg, run_dir, "adapt", resume=resume)
    if teacher is None:
        teacher, h1_meta = load_h1(cfg, run.device)
    assert h1_meta is not None
    a = _prepare(cfg, run, run_dir, teacher, h1_meta, pairs)
    student, objective, trainable, optimizer = a.student, a.objective, a.trainable, a.optimizer
    # resume point: restored last, so the RNG is the checkpoint's, untouched by the set-up above
    sel = Selection()
    _hold(run, run_dir, a, sel)

    # loop
    adaptation_mode(student, a.policy)
    step, seen, loss_value = run.start, 0, math.nan
    values: dict[str, float] = {}
    fields = ["step", "loss", *[f"loss_{p}" for p in objective.parts], "lr", "images_per_s", "elapsed_s"]
    fix = "lower train.lr or set adapt.grad_clip (e.g. 5)"
    what = "regression loss" if objective.features_only else "adaptation loss"
    desc = "+".join(a.taps) if objective.features_only else f"{'+'.join(objective.terms)} ({'+'.join(a.taps)})"
    with run.logging(fields, f"adapt {desc}"):
        for (x1, x2, *rest), ids in run.batches(a.fit_pairs, a.fit_ids):
            if step >= tc.iterations:
                break
            lr = run.lr
            x1, x2 = run.to_device(x1), run.to_device(x2)
            valid = rest.pop().to(run.device) if a.pairs.with_valid else None  # registered: where X2 has a source
            loss, parts = objective(a.outputs(x1, x2, rest, valid, step))
            values = {k: float(v.detach()) for k, v in parts.items()}
            loss_value = run.check_loss(loss, step + 1, ids, fix, what=what)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            objective.weighting.sync_grads()
            if ac.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, ac.grad_clip)
            run.check_grads(trainable, step + 1, ids, fix)  # before the step: the student's weights stay finite
            optimizer.step()
            run.schedule.step()
            step += 1
            seen += x1.shape[0] * run.world
            run.progress(loss=f"{loss_value:.4g}")
            if run.due(step):
                values = distributed.mean_over_ranks(values)  # same step on every rank: safe collective
                run.log({"step": step, "loss": f"{loss_value:.6g}", "lr": f"{lr:.3g}",
                         "images_per_s": f"{seen / run.elapsed():.2f}"}
                        | {f"loss_{k}": f"{v:.6g}" for k, v in values.items()})
            if step in a.probe_at:
                assert a.probe is not None
                point = {"step": step, **a.probe.measure(student)}
                if on_probe is not None:
                    point |= on_probe(step, student)
                    adaptation_mode(student, a.policy)
                sel.offer(point, student, ac.select)
            if run.end_of_step(step):
                break
    train_time = run.elapsed()

    result = _write(run, run_dir, a, sel, h1_meta, step)
    ran = step > run.start
    result |= {
        "final_loss": loss_value if ran else None,
        "final_layer_loss": {t: values[t] for t in a.taps if t in values} if ran and "features" in objective.terms
        else {},
        "final_term_loss": objective.term_values(values) if ran else {},
        "final_weights": objective.weighting.effective(),
        "probes": sel.probes,
        "selected_step": sel.best[0]["step"] if sel.best else None,
        "train_time_s": round(train_time, 2),
        **({"registration": a.registration} if a.registration is not None else {}),
        **({"raster_coverage": round(a.pairs.coverage, 4)} if isinstance(a.pairs, RasterPairs) else {}),
        "environment": environment(),
    }
    if run.main:
        ckpt.write_json_atomic(run_dir / "adapt.json", result)
    run.finish(step)
    return result


def _prepare(cfg: RunConfig, run: Run, run_dir: Path, teacher: nn.Module, h1_meta: dict[str, Any],
             pairs: PairedDataset | RasterPairs) -> Adaptation:
    """Teacher, student, objective, pairs (registered), held-out probe and optimizer, in the order the RNG
    streams expect: a seed gives the same H2 as it always has."""
    tc, ac, device = cfg.train, cfg.adapt, run.device
    weights = layer_weights(cfg, conform(teacher))
    taps = list(weights)
    ac.layers = ac.layers or taps  # config.toml says what was regressed (a resume keeps it)
    check_taps(conform(teacher), taps)
    labelled = d2_label_source(cfg, h1_classes(teacher, h1_meta)) if ac.d2_labels else None
    ac.objective = dict(ac.objective) or default_objective(conform(teacher))  # config.toml says which
    objective = build_objective(ac, weights, labelled.info.ignore_index if labelled is not None else 255)
    if objective.needs_logits and ac.teacher_cache:
        raise ConfigError(f"adapt.teacher_cache holds H1's feature maps only, and adapt.objective "
                          f"{'+'.join(objective.terms)} reads its predictions; drop adapt.teacher_cache, or "
                          f"regress features (--objective features)")
    teacher = teacher.to(device).eval().requires_grad_(False)
    # NHWC convolutions and bf16 as train.channels_last and train.precision say, as in train() ("auto": timed
    # on a copy). The caller's teacher is not converted in place; a copy in the new layout is used instead.
    run.settle(teacher)
    if tc.channels_last:
        teacher = copy.deepcopy(teacher).to(memory_format=run.memory_format)
    student = copy.deepcopy(teacher).to(device)
    teacher_features = conform(teacher).features
    # the student runs without dropout or stochastic depth (the teacher's maps come from eval mode: a student
    # dropping random units could not match them even with equal weights), BatchNorm as adapt.norm says
    policy = NormPolicy(student, ac.norm, taps)

    registration = None
    if ac.align != "none":  # pairs not pixel-aligned: register each once, keep those that pass
        from segadapt.data.align_cache import register_dataset

        if not isinstance(pairs, PairedDataset):
            raise SegadaptError(f"adapt.align = {ac.align}: mosaics are paired by their georeferencing; "
                                f"set adapt.align = none")
        pairs, registration = register_dataset(pairs, ac, run_dir / "align")
        if run.main:
            print(f"registration ({registration['method']}): {registration['ok']} of {registration['pairs']} pairs "
                  f"usable, {registration['failed']} failed the quality check and are skipped (adapt.json)")
    if isinstance(pairs, RasterPairs) and run.main and pairs.coverage < 0.995:
        print(f"{pairs.paths[1]} covers {pairs.coverage:.1%} of the ground of {pairs.paths[0]}: windows are drawn "
              f"around the overlap, pixels without both mosaics are left out of the loss (raster_coverage)")
    holdout_ids, fit_ids = split_holdout(len(pairs), ac.holdout, tc.seed)
    if ac.holdout > 0 and ac.probes > 0 and not holdout_ids and run.main:  # said, not left to a missing file
        print(f"segadapt: {len(pairs)} pairs are too few to hold any out for the label-free checkpoint selection "
              f"(at most a fifth are held out); no selection.csv or model_selected.safetensors, use model.safetensors")
    labels_miou = None if labelled is None else (
        lambda model: score(model, labelled, cfg, device).miou)  # type: ignore[arg-type]
    probe = HoldoutProbe(pairs, holdout_ids, teacher, objective, taps, tc.seed, device,
                         labels_miou) if holdout_ids else None
    trainable = trainable_parameters(conform(student), taps, trains_head(ac, objective))
    # one augmented pair drawn here, as adapt() always has (before the model contract it fed the parameter
    # probe): the loop's augmentation stream starts where it did, so a seed gives the same H2 as before
    pairs[0]
    train_ids = {id(p) for p in trainable}
    for p in student.parameters():
        p.requires_grad_(id(p) in train_ids)
    optimizer = torch.optim.SGD(trainable, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    objective.to(device)
    if objective.calibrates:  # statistics of H1 on D1 (features_std), before the first step
        objective.calibrate(list(d1_maps(teacher, pairs, fit_ids, taps, run.per_rank, tc.seed, device)))
    learned = list(objective.parameters())
    if learned:  # the uncertainty weighting's log-variances: trained with the student, never decayed
        optimizer.add_param_group({"params": learned, "lr": tc.lr, "weight_decay": 0.0})
    draws = None if labelled is None else LabelledDraws(labelled, cfg, max(1, round(ac.d2_label_share * run.per_rank)))
    # under torchrun: only the student is wrapped (the teacher never trains)
    student_net = wrap_ddp(StudentPass(student, conform(student).features, taps, objective.needs_maps,
                                       objective.needs_logits), device)
    cache, fit_pairs = None, pairs
    if ac.teacher_cache:  # H1's maps read from disk instead of recomputed; X1 is then never loaded
        cache, fit_pairs = teacher_cache.prepare(
            ac.teacher_cache, pairs, teacher, teacher_features, taps, device, run.per_rank)
    return Adaptation(
        cfg=cfg, device=device, teacher=teacher, teacher_features=teacher_features, student=student,
        objective=objective, weights=weights, policy=policy, pairs=pairs, fit_pairs=fit_pairs, fit_ids=fit_ids,
        probe=probe, probe_at=probe_steps(tc.iterations, ac.probes) if probe else set(), trainable=trainable,
        optimizer=optimizer, student_net=student_net, registration=registration, cache=cache, draws=draws)


def _hold(run: Run, run_dir: Path, a: Adaptation, sel: Selection) -> None:
    """Hand the run what a resume point holds (student, optimizer, probes, the selected weights, the
    objective's own state) and, when resuming, read them back into `a` and `sel`."""
    h1_sha = teacher_cache.model_fingerprint(a.teacher)  # a resume must regress onto the same H1

    def resume_meta() -> dict[str, Any]:
        return {"probes": sel.probes, "selected": sel.best[0] if sel.best else None, "config": to_dict(a.cfg),
                "h1_sha256": h1_sha}

    def resume_extra() -> dict[str, torch.Tensor] | None:
        own = {f"{OBJECTIVE_STATE}{k}": v for k, v in a.objective.state_dict().items()}
        return {**(sel.best[1] if sel.best else {}), **own} or None

    state = run.hold(a.student, a.optimizer, resume_meta, resume_extra)
    if not state:
        return
    if state.get("h1_sha256", h1_sha) != h1_sha:
        raise CheckpointError(f"{a.cfg.adapt.h1}: H1's weights changed since {run_dir} started; resuming would "
                              f"regress onto another teacher. Start a new adaptation (--out)")
    sel.probes = state.get("probes", [])
    extra = ckpt.read_extra(run.last)
    own = {k[len(OBJECTIVE_STATE):]: v for k, v in extra.items() if k.startswith(OBJECTIVE_STATE)}
    if own:
        a.objective.load_state_dict(own)
    if state.get("selected") is not None:
        sel.best = (state["selected"], {k: v for k, v in extra.items() if not k.startswith(OBJECTIVE_STATE)})


def _write(run: Run, run_dir: Path, a: Adaptation, sel: Selection, h1_meta: dict[str, Any],
           step: int) -> dict[str, Any]:
    """The run's files (rank 0): H2 as model.safetensors and in H1's own format, the selected checkpoint, the
    resume point; returns the settings part of adapt.json."""
    ac, student = a.cfg.adapt, a.student
    student.requires_grad_(True).eval()
    meta = written({**h1_meta, **rebuild_meta(student), "step": step, "adapted_from": str(ac.h1),
                    "layers": a.weights, "objective": a.objective.term_weights, "config": to_dict(a.cfg)})
    run.save(step)  # the run can be extended later (--resume with more iterations)
    if run.main:
        ckpt.save_model(run_dir / ckpt.MODEL_FILE, student, meta)
        native = functools.partial(save_native, student, run_dir, meta, h1_meta.get("hf_source"))
        native()  # H2 in H1's own format too (hf_model/, factory_weights.safetensors): a drop-in replacement
        if sel.best is not None:
            _write_selection(run_dir, sel.probes, sel.best, student, meta, native)
    return {"layers": a.weights, "objective": a.objective.term_weights, "weighting": ac.weighting,
            "select": ac.select, "step": step}


def _write_selection(
    run_dir: Path, probes: list[dict[str, float]], selected: tuple[dict[str, float], dict[str, torch.Tensor]],
    student: nn.Module, meta: dict[str, Any], native: Callable[..., Any],
) -> None:
    """selection.csv (one row per probe) and the weights adapt.select chose as model_selected.safetensors
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
