"""The study's sweep: H1 on D1, then for each shift its distortion, the baselines and the regression presets.

Protocol (one metric code, crop and ignore index for all):
- H1: trained on D1 with labels (train.iterations), or reused from adapt.h1.
- Severity (filters in experiment.target_distortion): searched per seed, after that seed's H1, so that H1's
  distortion on shift.search_images D1 *train* images is the target (severity_search.py; the first seed's
  landing starts the next seed's search); D2 is then made at that severity. Other filters use shift.severity.
- B0: H1 evaluated on D2.
- B1: a fresh model trained on D2 images with D1's labels, with H1's budget (it starts from scratch as H1 did).
- B2: H1 fine-tuned on D2 images with D1's labels, experiment.iterations steps.
- adabn, tent, self_training (when experiment.baselines names them): the label-free peers a user would run
  instead (segadapt.peers), from D2's train images alone, experiment.iterations steps at experiment.adapt_lr.
- H2 (one per layer preset, and per experiment.objectives table if any): H1 adapted on (D1, D2) pairs by
  adapt.objective (default: the architecture's, models.contract.default_objective), experiment.iterations
  steps, no D2 labels.
All are scored on the D2 val split, whose labels are D1's (as in the study).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from segadapt import checkpoint as ckpt
from segadapt.adapt import adapt, load_h1
from segadapt.config import STUDY_OBJECTIVE, AdaptConfig, ExperimentConfig, RunConfig, dumps_toml
from segadapt.data import (
    ImageDataset,
    JointTransform,
    SegmentationDataset,
    SegmentationSource,
    build_source,
    make_transform,
)
from segadapt.data.d2 import d2_source, materialise_d2, with_shift
from segadapt.data.pairs import PairedDataset
from segadapt.errors import ConfigError, DataError, Diverged
from segadapt.evaluate import score
from segadapt.metrics import Scores, distortion
from segadapt.models import build_model
from segadapt.models.contract import (
    SegmentationModel,
    conform,
    default_layers,
    default_objective,
    sweep_presets,
    tap_listing,
)
from segadapt.models.loading import data_norm, load_model, rebuild
from segadapt.models.vgg_deeplab import VGGDeepLab
from segadapt.paths import check_name, remove_tree
from segadapt.peers import PEERS, run_peer
from segadapt.protocol import BASELINE_MEANINGS, BASELINES, METRICS, SummaryEntry, SweepResults
from segadapt.run_dir import finished_step
from segadapt.runtime import environment, select_device
from segadapt.selection import agreement, finite_or_none, spearman
from segadapt.train import train


def _row(seed: int, shift: str, method: str, s: Scores) -> dict[str, Any]:
    return {"seed": seed, "shift": shift, "method": method, **{m: getattr(s, m) for m in METRICS}}


def _earlier(run_dir: Path, out_dir: Path, result_file: str) -> tuple[dict[str, Any] | None, bool]:
    """(the result file of a method this sweep finished in an earlier run, whether to resume it): a stopped
    sweep continues where it was. A finished run (run.json says so) is read back; an unfinished one with a
    resume point continues from it (the sweep's settings are checked to be the same); one without is removed
    and the method runs from its start."""
    if finished_step(run_dir) is not None and (run_dir / result_file).is_file():
        return json.loads((run_dir / result_file).read_text()), False
    if ckpt.latest_checkpoint(run_dir) is not None:
        return None, True
    if run_dir.exists():
        remove_tree(run_dir, out_dir)
    return None, False


def _diverged_row(seed: int, shift: str, method: str, e: Diverged) -> dict[str, Any]:
    """A method whose loss, gradients or weights went non-finite (at this learning rate, typically): recorded as
    diverged with no scores, so one diverging method does not end the sweep with the others not run."""
    print(f"segadapt: {method} diverged ({e}); the sweep goes on", file=sys.stderr)
    return {"seed": seed, "shift": shift, "method": method, **{m: math.nan for m in METRICS}, "diverged": str(e)}




def check_experiment(cfg: RunConfig, model: SegmentationModel | None = None) -> None:
    """Refuse unknown filters, baselines and layer presets before H1 trains, not hours into the sweep.

    Layer presets are `model`'s (H1's architecture; default: the built-in VGG's table); a model without
    presets (a factory's) takes tap names instead.
    """
    from segadapt.shifts import FILTERS
    from segadapt.shifts.compose import GEOMETRIC, parse

    ex = cfg.experiment
    # with shift.d2_dir the filter names only label the given D2; otherwise a filter, or a composition of
    # filters such as photocopy+misalign (shifts/compose.py checks those)
    known_filters = ex.filters if cfg.shift.d2_dir else [*FILTERS, *GEOMETRIC]
    if not cfg.shift.d2_dir:
        for name in ex.filters:
            if "+" in name or "=" in name:  # a composition: checked (and explained) by its parser
                parse(name)
                known_filters.append(name)
    presets = list((model if model is not None else VGGDeepLab).layer_presets())
    unknown_presets = [v for v in ex.layer_presets if v not in presets and (model is None or v not in model.TAPS)]
    if unknown_presets:
        name = type(getattr(model, "net", model)).__name__
        known = (f"{name}'s presets {', '.join(presets)} or one of its taps" if presets else
                 f"tap names of {name} (it has no layer presets), such as {tap_listing(model.TAPS, 6)}"
                 ) if model is not None else ", ".join(presets)
        raise ConfigError(f"experiment.layer_presets: unknown {', '.join(map(repr, unknown_presets))}; choose from "
                          f"{known}")
    checks = [("experiment.filters", ex.filters, known_filters), ("experiment.baselines", ex.baselines, BASELINES),
              ("experiment.layer_presets", ex.layer_presets, None), ("experiment.seeds", ex.seeds, None)]
    for key, values, known in checks:
        unknown = [v for v in values if known is not None and v not in known]
        if unknown:
            raise ConfigError(f"{key}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{key}: {', '.join(twice)} listed twice; each runs once (repeats would count as "
                              f"extra seeds)")
    for key, values in (("experiment.filters", ex.filters), ("experiment.layer_presets", ex.layer_presets),
                        ("experiment.objectives", [objective_label(o) for o in ex.objectives])):
        for v in values:  # each becomes a folder name in the sweep directory
            check_name(v, key)
    labels = [objective_label(o) for o in ex.objectives]
    twice = sorted({v for v in labels if labels.count(v) > 1})
    if twice:
        raise ConfigError(f"experiment.objectives: {', '.join(twice)} listed twice; each runs once")
    if not ex.filters:
        raise ConfigError("experiment.filters is empty; name at least one shift, e.g. [\"ripple\"]")
    stray = [f for f in ex.target_distortion if f not in ex.filters]
    if stray:
        raise ConfigError(f"experiment.target_distortion: {', '.join(map(repr, stray))} not in experiment.filters "
                          f"({', '.join(ex.filters)}); a target names a filter the sweep runs")
    if ex.target_distortion and (cfg.shift.d2_dir or cfg.shift.pairs_csv):
        raise ConfigError("experiment.target_distortion searches a filter's severity, but shift.d2_dir / "
                          "shift.pairs_csv give D2 as it is; drop one or the other")
    if cfg.shift.d2_dir:
        if len(ex.filters) != 1:
            raise ConfigError(f"shift.d2_dir = {cfg.shift.d2_dir} is one D2; name it with one experiment.filters "
                              f"entry, not {len(ex.filters)}")
        for split in dict.fromkeys((cfg.data.train_split, cfg.data.val_split)):
            try:  # a missing split fails here, before H1 trains
                d2_source(cfg, split, labelled=True)
            except DataError as e:
                raise DataError(f"shift.d2_dir = {cfg.shift.d2_dir}: no usable D2 for split {split!r} ({e}); "
                                f"write it with segadapt shift --split {split}") from None


def _stage(seed: int, shift: str, what: str) -> None:
    """One line per model of the sweep, so its progress bars say which model they belong to."""
    where = "" if shift == "none" else f", shift {shift}"
    print(f"== seed {seed}{where}: {what}", flush=True)


def sweep_h1(cfg: RunConfig, device: torch.device,
             h1: tuple[torch.nn.Module, dict[str, Any]] | None = None
             ) -> tuple[RunConfig, tuple[torch.nn.Module, dict[str, Any]] | None, SegmentationModel]:
    """The sweep's config fitted to H1's architecture, the reused H1 (None when the sweep trains it) and a model
    of that architecture to read presets from.

    A reused H1 brings its layer presets (experiment.layer_presets left at the VGG default becomes the model's
    own) and, loaded here from adapt.h1, its normalisation (a transformers preprocessor's mean/std); a caller
    passing `h1` has fitted cfg.data to it already (the CLI keeps a user's explicit data.mean/std).
    """
    loaded_here = h1 is None and bool(cfg.adapt.h1)
    if loaded_here:
        h1 = load_h1(cfg, device)
    if h1 is not None:
        model = conform(h1[0])
    else:
        with torch.random.fork_rng(devices=[]):  # a throwaway model: the sweep's random streams stay untouched
            model = build_model(cfg.model.arch, 2, cfg.model.width)
    cfg = copy.deepcopy(cfg)
    norm = data_norm(h1[1]) if loaded_here and h1 is not None else None
    if norm is not None:
        cfg.data.mean, cfg.data.std = norm
    if cfg.experiment.layer_presets == ExperimentConfig().layer_presets and model.layer_presets():
        cfg.experiment.layer_presets = sweep_presets(model)
    return cfg, h1, model


def fresh_of(h1_meta: dict[str, Any], source: str, trusted: list[str], seed: int) -> torch.nn.Module | None:
    """B1's starting point for an external H1: a randomly initialised model of H1's architecture (a transformers
    model from the recorded config; a factory's module from the factory with its kwargs, no weights), or None
    when the config's own architecture is H1's (the sweep's default)."""
    if "hf_config" not in h1_meta and "factory" not in h1_meta:
        return None
    torch.manual_seed(seed)
    return rebuild(h1_meta, source, trusted)


@dataclasses.dataclass
class SeedRun:
    """What every step of one seed's sweep reads (settings, H1, where runs go) and the lists it adds to."""

    cfg: RunConfig  # the sweep's settings
    base: RunConfig  # the same with this seed
    device: torch.device
    out_dir: Path
    h1: torch.nn.Module
    h1_meta: dict[str, Any]
    reused: bool  # H1 came from adapt.h1 (or the caller), not trained by this sweep
    trusted: list[str]
    default_objective: dict[str, float]  # H1's architecture's, for H2 rows without adapt.objective
    deepest: str  # its deepest one-tap preset ("" for a model without presets)
    rows: list[dict[str, Any]]
    selection: list[dict[str, Any]]

    @property
    def seed(self) -> int:
        return self.base.train.seed


@dataclasses.dataclass
class ShiftData:
    """One shift's D2 for one seed: its splits, and the datasets B1 and B2 train and score on."""

    name: str
    dir: Path  # <out>/seed<N>/<shift>: the runs of this seed and shift
    train: SegmentationSource
    val: SegmentationSource
    train_tf: JointTransform  # D2 train's augmentation (the pairs' too)
    sets: tuple[SegmentationDataset, SegmentationDataset]


def run_experiment(cfg: RunConfig, out_dir: Path, h1: tuple[torch.nn.Module, dict[str, Any]] | None = None,
                   search_start: dict[str, float] | None = None) -> dict[str, Any]:
    """The sweep into `out_dir`; `h1` (model, metadata): an H1 the caller has loaded (else adapt.h1, else trained).
    `search_start`: filter -> severity the first seed's search tries first (a landing from an earlier sweep with
    the same H1; later seeds start at the previous seed's landing)."""
    device = select_device(cfg.train.device)
    cfg, reused, arch_model = sweep_h1(cfg, device, h1)
    ex = cfg.experiment
    check_experiment(cfg, arch_model)
    trusted = list(cfg.adapt.trust_factories)
    if reused is not None and "factory" in reused[1]:  # the factory the user named (or trusted) for H1
        trusted.append(str(reused[1]["factory"]["target"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = out_dir / "config.toml"
    if saved.is_file() and saved.read_text() != dumps_toml(cfg):  # its finished methods would not be this sweep's
        raise ConfigError(f"{out_dir}: holds a sweep with other settings (its config.toml); continue it with the "
                          "same settings, or give another --out")
    ckpt.write_text_atomic(saved, dumps_toml(cfg))
    rows: list[dict[str, Any]] = []
    selection: list[dict[str, Any]] = []
    searches: list[dict[str, Any]] = []
    landed = dict(search_start or {})  # filter -> the previous seed's searched severity: the next search starts there

    for seed in ex.seeds:
        base = copy.deepcopy(cfg)
        base.train.seed = seed
        seed_dir = out_dir / f"seed{seed}"

        # H1 on D1
        done, resume = _earlier(seed_dir / "H1", out_dir, "metrics.json") if reused is None else (None, False)
        _stage(seed, "none", "H1 (reused)" if reused or done else "H1: trained on D1 with labels")
        if reused is not None:
            h1, h1_meta = reused
        else:
            if done is None:
                train(base, seed_dir / "H1", resume=resume)
            h1, h1_meta = load_model(seed_dir / "H1", device)
        d1_train, d1_val = build_source(cfg.data, cfg.data.train_split), build_source(cfg.data, cfg.data.val_split)
        if h1_meta.get("num_classes") != d1_val.info.num_classes:
            raise ConfigError(f"{cfg.adapt.h1}: H1 predicts {h1_meta.get('num_classes')} classes but "
                              f"{cfg.data.dataset} has {d1_val.info.num_classes}; use an H1 trained on this dataset")
        rows.append(_row(seed, "none", "H1", score(h1, d1_val, cfg, device)))
        run = SeedRun(cfg, base, device, out_dir, h1, h1_meta, reused is not None, trusted,
                      default_objective(arch_model), _deepest(arch_model), rows, selection)

        for name in ex.filters:
            d2 = _shift_data(run, name, d1_train, searches, landed)
            _baselines(run, d2, searches)
            _adaptations(run, d2, d1_train)
            if seed == ex.seeds[0] and ex.figure_images > 0 and ex.layer_presets:
                _figures(cfg, out_dir / "figures" / name, d2.dir, h1, rows, seed, name, d1_val, d2.val, device,
                         trusted)

    results = summarise(rows, ex.filters)
    results["severity_search"] = searches
    results["selection"] = selection
    results["selection_across_presets"] = across_presets(selection)
    results["environment"] = environment()
    write_results(results, out_dir)
    from segadapt.viz.report import write_report  # tables and plots even without figures

    results["report"] = str(write_report(out_dir))
    return results


def _deepest(model: SegmentationModel) -> str:
    try:
        return default_layers(model)[0]
    except ConfigError:  # no presets (a factory model): the sweep's layer presets are taps, the last one is used
        return ""


def _shift_data(run: SeedRun, name: str, d1_train: SegmentationSource, searches: list[dict[str, Any]],
                landed: dict[str, float]) -> ShiftData:
    """This seed's D2 for filter `name`: its severity searched when experiment.target_distortion names it
    (recorded in `searches`, the landing kept in `landed` for the next seed), written to disk if asked."""
    cfg, ex = run.cfg, run.cfg.experiment
    shift = dataclasses.replace(cfg.shift, filter=name)
    d2_name = f"d2-{name}"
    if name in ex.target_distortion:
        found = _search(run.h1, with_shift(run.base, shift), run.device, run.seed, name, ex.target_distortion[name],
                        landed.get(name))
        searches.append(found)
        landed[name] = found["severity"]
        shift = dataclasses.replace(shift, severity=found["severity"])
        d2_name = f"d2-{name}-severity{found['severity']:.4f}"  # seeds landing alike share one D2
    if ex.materialise_d2 and not shift.d2_dir:
        shift = materialise_d2(with_shift(cfg, shift), name, run.out_dir / d2_name)
    d2_train = d2_source(with_shift(cfg, shift), cfg.data.train_split, labelled=True)
    d2_val = d2_source(with_shift(cfg, shift), cfg.data.val_split, labelled=True)
    train_tf = make_transform(cfg.data, True, d1_train.info.ignore_index)
    eval_tf = make_transform(cfg.data, False, d1_train.info.ignore_index)
    sets = (SegmentationDataset(d2_train, train_tf), SegmentationDataset(d2_val, eval_tf))
    return ShiftData(name, run.out_dir / f"seed{run.seed}" / name, d2_train, d2_val, train_tf, sets)


def _baselines(run: SeedRun, d2: ShiftData, searches: list[dict[str, Any]]) -> None:
    """The rows experiment.baselines names for one seed and shift: B0, B1, B2 and the label-free peers."""
    cfg, ex, seed, name, rows = run.cfg, run.cfg.experiment, run.seed, d2.name, run.rows
    if "B0" in ex.baselines:
        _stage(seed, name, "B0: H1 scored on D2")
        rows.append(_row(seed, name, "B0", score(run.h1, d2.val, cfg, run.device)))
        if name in ex.target_distortion:  # the distortion the search aimed at, as the val split shows it
            h1_row, b0_row = next(r for r in rows if r["seed"] == seed and r["method"] == "H1"), rows[-1]
            searches[-1]["val_distortion"] = finite_or_none(distortion(
                h1_row["mean_acc"], h1_row["miou"], b0_row["mean_acc"], b0_row["miou"]))
    if "B1" in ex.baselines:
        _stage(seed, name, "B1: trained from scratch on D2 with D1's labels")
        fresh = fresh_of(run.h1_meta, cfg.adapt.h1, run.trusted, seed) if run.reused else None
        try:
            m, resume = _earlier(d2.dir / "B1", run.out_dir, "metrics.json")
            m = m or train(run.base, d2.dir / "B1", model=fresh, train_set=d2.sets[0], val_set=d2.sets[1],
                           resume=resume)
            rows.append(_row(seed, name, "B1", _scores_from(m)))
        except Diverged as e:
            rows.append(_diverged_row(seed, name, "B1", e))
    if "B2" in ex.baselines:
        _stage(seed, name, "B2: H1 fine-tuned on D2 with D1's labels")
        b2 = copy.deepcopy(run.base)
        b2.train.iterations, b2.train.lr = ex.iterations, ex.finetune_lr
        try:
            m, resume = _earlier(d2.dir / "B2", run.out_dir, "metrics.json")
            m = m or train(b2, d2.dir / "B2", model=copy.deepcopy(run.h1), train_set=d2.sets[0],
                           val_set=d2.sets[1], resume=resume)
            rows.append(_row(seed, name, "B2", _scores_from(m)))
        except Diverged as e:
            rows.append(_diverged_row(seed, name, "B2", e))
    for method in [b for b in ex.baselines if b in PEERS]:  # D2's images alone: no label is read
        _stage(seed, name, f"{method}: {BASELINE_MEANINGS[method]}")
        p = copy.deepcopy(run.base)
        p.train.iterations, p.train.lr, p.peer.method = ex.iterations, ex.adapt_lr, method
        try:
            done, resume = _earlier(d2.dir / method, run.out_dir, "peer.json")
            if done is None:
                run_peer(p, d2.dir / method, ImageDataset(d2.train, d2.train_tf), teacher=run.h1,
                         h1_meta=run.h1_meta, resume=resume)
        except Diverged as e:
            rows.append(_diverged_row(seed, name, method, e))
            continue
        h2, _ = load_model(d2.dir / method, run.device, trusted_factories=run.trusted)
        rows.append(_row(seed, name, method, score(h2, d2.val, cfg, run.device)))


def _adaptations(run: SeedRun, d2: ShiftData, d1_train: SegmentationSource) -> None:
    """The H2 rows for one seed and shift: H1 adapted on (D1, D2) pairs once per layer preset (and objective
    table), no D2 label read; the sweep's labels score the probes only, to judge the label-free selection."""
    cfg, seed, name, device = run.cfg, run.seed, d2.name, run.device
    pairs = PairedDataset(d1_train, d2.train, d2.train_tf, cfg.shift.photometric)

    def miou_on_d2(step: int, model: torch.nn.Module) -> dict[str, float]:
        return {"miou": score(model, d2.val, cfg, device).miou}  # labels: only here, to judge selection

    for preset, table, objective in h2_variants(cfg.experiment, cfg.adapt, run.default_objective, run.deepest):
        # the study's regression keeps the plain row name H2:<preset>
        study = table is None and objective == STUDY_OBJECTIVE
        label = preset if study else f"{preset}+{objective_label(objective)}"
        terms = "regressing" if objective == STUDY_OBJECTIVE else f"{objective_label(objective)} at"
        _stage(seed, name, f"H2:{label}: H1 adapted by {terms} {preset} (no D2 labels)")
        a = copy.deepcopy(run.base)
        a.train.iterations, a.train.lr = cfg.experiment.iterations, cfg.experiment.adapt_lr
        a.adapt.layers, a.adapt.weights = [preset], []
        a.adapt.objective = dict(objective)
        if cfg.adapt.teacher_cache:  # a cache holds one H1's maps at one tap set: one per seed and preset
            a.adapt.teacher_cache = str(Path(cfg.adapt.teacher_cache) / f"seed{seed}-{preset}")
        try:
            res, resume = _earlier(d2.dir / f"H2-{label}", run.out_dir, "adapt.json")
            res = res or adapt(a, d2.dir / f"H2-{label}", pairs, teacher=run.h1, h1_meta=run.h1_meta,
                               on_probe=miou_on_d2, resume=resume)
        except Diverged as e:
            run.rows.append(_diverged_row(seed, name, f"H2:{label}", e))
            continue
        h2, _ = load_model(d2.dir / f"H2-{label}", device, trusted_factories=run.trusted)
        run.rows.append(_row(seed, name, f"H2:{label}", score(h2, d2.val, cfg, device)))
        if res["probes"]:
            sel = agreement(res["probes"], a.adapt.select) | {"final_entropy": res["probes"][-1]["entropy"]}
            run.selection.append({"seed": seed, "shift": name, "method": f"H2:{label}", **sel})


def h2_variants(ex: ExperimentConfig, adapt_cfg: AdaptConfig, model_default: dict[str, float],
                deepest: str) -> list[tuple[str, dict[str, float] | None, dict[str, float]]]:
    """(layer preset, experiment.objectives table or None, the objective) of every adaptation the sweep runs:
    each preset once per table, or once with adapt.objective (else the architecture's default) when there is
    none. An objective that reads no feature map while the head trains trains every parameter whatever the
    preset, so it runs once per seed and shift, at `deepest` (the deepest preset swept), not once per preset."""
    tables: list[dict[str, float] | None] = list(ex.objectives) or [None]
    at = deepest if deepest in ex.layer_presets else ex.layer_presets[-1] if ex.layer_presets else ""
    out = []
    for preset in ex.layer_presets:
        for table in tables:
            objective = table or adapt_cfg.objective or model_default
            if preset == at or not preset_free(objective, adapt_cfg):
                out.append((preset, table, objective))
    return out


def preset_free(objective: dict[str, float], adapt_cfg: AdaptConfig) -> bool:
    """Whether the layers an objective is given change nothing: no term of it reads a feature map and the
    head trains (adapt.train_head), so every parameter trains (adapt.trainable_parameters)."""
    from segadapt.objectives import TERMS

    return adapt_cfg.train_head is not False and not any(TERMS[t].needs_maps for t, w in objective.items() if w > 0)


def objective_label(objective: dict[str, float]) -> str:
    """An objective as a row and folder name: its terms of weight > 0 joined by +, a weight other than 1
    written term=weight (output_kl+entropy=0.01)."""
    return "+".join(t if w == 1 else f"{t}={w:g}" for t, w in objective.items() if w > 0)


def _search(h1: torch.nn.Module, cfg: RunConfig, device: torch.device, seed: int, name: str, target: float,
            start: float | None) -> dict[str, Any]:
    """One seed's severity search for filter `name` (cfg.shift.search_* settings); a target the filter cannot
    reach is one line here and in the results, and the sweep goes on at the closest severity."""
    from segadapt.severity_search import search_for

    sh = cfg.shift
    _stage(seed, name, f"severity search: H1's distortion {target:g} ± {sh.search_tolerance:g} on "
                       f"{sh.search_images} {cfg.data.train_split} images ({sh.units} units)")
    result = search_for(h1, cfg, device, name, target, start=start)
    print(f"   {'landed' if result.reached else 'not reached'}: {result.message}", flush=True)
    return {"seed": seed, "shift": name, **result.to_dict()}


def _figures(
    cfg: RunConfig, out: Path, shift_dir: Path, h1: torch.nn.Module, rows: list[dict[str, Any]], seed: int,
    shift: str, d1_val: SegmentationSource, d2_val: SegmentationSource, device: torch.device,
    trusted: list[str],
) -> None:
    """Feature grids, overlays and reconstructions for report.html: H2 on pool5 (the study's choice) when it
    was run, else the best preset, next to B2."""
    from segadapt.viz.sweep import write_shift_figures

    h2s = {r["method"]: r["miou"] for r in rows if r["seed"] == seed and r["shift"] == shift
           and r["method"].startswith("H2:")}
    h2_name = "H2:pool5" if "H2:pool5" in h2s else max(h2s, key=lambda k: -1.0 if math.isnan(h2s[k]) else h2s[k])
    models = {}
    if "B2" in cfg.experiment.baselines and (shift_dir / "B2" / ckpt.MODEL_FILE).is_file():
        models["B2"] = load_model(shift_dir / "B2", device, trusted_factories=trusted)[0]
    models[h2_name] = load_model(shift_dir / f"H2-{h2_name[3:]}", device, trusted_factories=trusted)[0]
    remove_tree(out, out.parent)  # figures of an earlier sweep into this --out would mix in
    try:
        write_shift_figures(cfg, out, h1, models, h2_name, d1_val, d2_val, device)
    except Exception as e:  # figures come after hours of training: never lose the scores to one
        print(f"warning: figures for {shift} not drawn ({type(e).__name__}: {e}); the scores are unaffected; "
              f"draw them later with `segadapt viz`", file=sys.stderr)


def _scores_from(metrics: dict[str, Any]) -> Scores:
    v = metrics["val"]
    nan = float("nan")
    def value(k: str) -> float:  # null in metrics.json means nan; a real 0.0 stays 0.0
        return nan if v[k] is None else v[k]

    return Scores(value("pixel_acc"), value("mean_acc"), value("miou"), [], [], 0)


def summarise(rows: list[dict[str, Any]], filters: list[str]) -> SweepResults:
    """Mean and std over seeds per (shift, method), and each shift's distortion of H1."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["shift"], r["method"]), []).append(r)
    summary: list[SummaryEntry] = []
    for (shift, method), rs in groups.items():
        # diverged: seeds whose run went non-finite (no scores)
        entry: dict[str, Any] = {"shift": shift, "method": method, "seeds": len(rs),
                                 "diverged": sum("diverged" in r for r in rs)}
        for m in METRICS:  # a nan score (nothing labelled) is left out of the mean; none at all stays nan
            vals = [r[m] for r in rs if math.isfinite(r[m])]
            entry[m] = statistics.fmean(vals) if vals else math.nan
            entry[f"{m}_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else math.nan)
        summary.append(SummaryEntry(**entry))  # type: ignore[typeddict-item]
    lookup = {(e["shift"], e["method"]): e for e in summary}
    dist = {}
    h1 = lookup.get(("none", "H1"))
    for f in filters:
        b0 = lookup.get((f, "B0"))
        if h1 and b0:
            dist[f] = finite_or_none(distortion(h1["mean_acc"], h1["miou"], b0["mean_acc"], b0["miou"]))
    return {"rows": rows, "summary": summary, "distortion": dist}


def across_presets(selection: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per (seed, shift): does a lower final prediction entropy go with a higher mIoU across layer presets?"""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in selection:
        groups.setdefault(f"seed{r['seed']}/{r['shift']}", []).append(r)
    return {
        k: finite_or_none(spearman([-r["final_entropy"] for r in rs], [r["final_miou"] for r in rs]))
        for k, rs in groups.items() if len(rs) >= 3
    }


def write_results(results: SweepResults, out_dir: Path) -> None:
    from segadapt.viz.plots import plot_layers, plot_methods
    from segadapt.viz.report import results_markdown

    ckpt.write_json_atomic(out_dir / "results.json", json_safe(results))
    fields = ["shift", "method", "seeds", "diverged", *[k for m in METRICS for k in (m, f"{m}_std")]]
    with ckpt.atomic_path(out_dir / "results.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(results["summary"])
    plots = [plot_methods(results, out_dir / "methods.png"), plot_layers(results, out_dir / "layers.png")]
    ckpt.write_text_atomic(out_dir / "results.md", results_markdown(results, [p.name for p in plots if p]))


def json_safe(value: Any) -> Any:
    """`value` with nan and inf as null: JSON has no such numbers (a score over no labelled pixel is nan)."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
