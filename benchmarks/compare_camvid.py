"""Issue 27's comparison on CamVid: two architectures, three shifts, every method, a learning-rate grid, seeds.

    python benchmarks/compare_camvid.py --work runs/compare [--archs vgg segformer] [--shifts ...] [--collect]

Protocol (one H1 per architecture, shared by the seeds):
- H1s on CamVid train at 120x160 (base size 120): VGG-DeepLab width 0.25, 4000 steps at LR 0.01 batch 8;
  SegFormer-B0 from scratch, 8000 steps at LR 0.01 batch 8 (about 40 min of this 2-core machine alone, the
  issue's "1.5 CPU-hours").
- Shifts, written once under <work>/d2-<shift> (network units): photocopy and cubism at severity 1, and
  photocopy+misalign=1 (pairs registered with adapt.align = ecc for the pair-based methods).
- Every method the same 300 steps and batch 4, its learning rate from one 3-value grid (SGD; GRID, the same for
  both architectures), the grid value picked by D2 val mIoU: an oracle choice, the same for every method. AdaBN
  has no learning rate and runs once.
- Methods: B2; the peers adabn, tent, self_training; the study's regression (VGG pool5; SegFormer: the best
  single stage of a scan at the grid's middle rate on photocopy); output_kl; paired_pseudo; features_std; the
  combination output_kl+paired_pseudo (fixed weights; issue 26's best, not searched again here); and with k = 5
  and k = 20 labelled D2 train images (drawn once with LABEL_SEED): cross-entropy alone, and with that
  combination.
- Seeds: 0 for the grid; then 1 and 2 at the picked rate for B2, the regression, the best label-free method and
  the best peer of that architecture and shift, and (once every shift has run) for the two label-free methods
  with the best mean recovery over the shifts, on every shift: the default is chosen between them.
Each run is one small sweep (segadapt.experiment.run_experiment) into its own folder, so scoring, probes and the
label-free selection are the sweep's own; a finished run is read back, an unfinished one resumes, so the script
continues where it was stopped. `--collect` only writes the results from what has finished.

Writes docs/results/compare.{json,md} and docs/figures/compare.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _paths import CAMVID_ROOT, REPO
from segadapt.checkpoint import write_json_atomic, write_text_atomic
from segadapt.config import RunConfig, load_toml, merge, preset
from segadapt.data.d2 import materialise_d2
from segadapt.run_dir import finished_step
from segadapt.runtime import environment

NAME = "compare"
ITERATIONS, BATCH = 300, 4
LABEL_SEED = 0
MIN_GAIN = 0.02  # B2 - B0 (mIoU) below which recovery is not reported
EXTRA_SEEDS = (1, 2)
TOP_SEEDED = 2  # label-free methods seeded on every shift once all have run (the default is chosen among them)


@dataclass(frozen=True)
class Arch:
    arch: str
    width: float
    h1_iterations: int
    grid: tuple[float, float, float]
    deepest: str  # the tap output-level objectives name (the deepest stage)
    stages: tuple[str, ...] = ()  # single-stage regressions scanned for the study's regression (empty: deepest)


# one grid for every method and both architectures: B2 on the VGG peaked at the lowest value of a first grid
# (0.001, 0.005, 0.025; those runs stay in the work folder, unused), so the grid moved down one step
GRID = (0.0002, 0.001, 0.005)
ARCHS = {
    "vgg": Arch("vgg16_deeplab", 0.25, 4000, GRID, "pool5"),
    "segformer": Arch("segformer_b0", 1.0, 8000, GRID, "stage4",
                      ("stage1", "stage2", "stage3", "stage4")),
}
# shift name -> (filter spec, adapt.align)
SHIFTS = {"photocopy": ("photocopy", "none"), "cubism": ("cubism", "none"),
          "photocopy+misalign": ("photocopy+misalign=1", "ecc")}
COMBO = {"output_kl": 1.0, "paired_pseudo": 1.0}
PEERS = ("adabn", "tent", "self_training")
LABEL_FREE = ("regression", "output_kl", "paired_pseudo", "features_std", "combo")


@dataclass
class Method:
    """One row of the comparison: the small sweep's baselines / preset / adapt keys, and the row it reads."""
    baselines: list[str] = field(default_factory=lambda: ["B0"])
    preset: str = ""
    adapt: dict[str, Any] = field(default_factory=dict)
    labels: int = 0
    lr_key: str = "adapt_lr"
    has_lr: bool = True


def methods(a: Arch, regression_tap: str) -> dict[str, Method]:
    deep = a.deepest
    out = {
        "B2": Method(["B0", "B2"], lr_key="finetune_lr"),
        "adabn": Method(["B0", "adabn"], has_lr=False),
        "tent": Method(["B0", "tent"]),
        "self_training": Method(["B0", "self_training"]),
        "regression": Method(preset=regression_tap, adapt={"objective": {"features": 1.0}}),
        "output_kl": Method(preset=deep, adapt={"objective": {"output_kl": 1.0}}),
        "paired_pseudo": Method(preset=deep, adapt={"objective": {"paired_pseudo": 1.0}}),
        "features_std": Method(preset=deep, adapt={"objective": {"features_std": 1.0}}),
        "combo": Method(preset=deep, adapt={"objective": dict(COMBO)}),
    }
    for k in (5, 20):  # the whole network trains (head too), as B2 does
        out[f"k{k}-ce"] = Method(preset=deep, labels=k, adapt={"objective": {"d2_labels": 1.0},
                                                                "train_head": True, "select": "labels"})
        out[f"k{k}-ce+combo"] = Method(preset=deep, labels=k, adapt={"objective": {"d2_labels": 1.0, **COMBO},
                                                                      "train_head": True, "select": "labels"})
    return out


# --- running ---------------------------------------------------------------------------------------

def finite(v: Any) -> bool:
    """A score that is there: a diverged run's mIoU is NaN, written to JSON as null."""
    return v is not None and math.isfinite(v)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def h1_config(name: str) -> RunConfig:
    a = ARCHS[name]
    cfg = preset("camvid")
    cfg.name = f"compare-h1-{name}"
    cfg.data.root = str(CAMVID_ROOT)
    cfg.data.base_size, cfg.data.crop_size = 120, [120, 160]
    cfg.model.arch, cfg.model.width = a.arch, a.width
    cfg.train.iterations, cfg.train.batch_size, cfg.train.lr = a.h1_iterations, 8, 0.01
    cfg.train.checkpoint_every, cfg.train.log_every = 500, 100
    cfg.train.precision = "fp32"  # "auto" times bf16 against fp32 under whatever load the host has at start
    cfg.shift.units = "network"
    return cfg


def train_h1(work: Path, name: str) -> Path:
    from segadapt.train import train

    run = work / f"h1-{name}"
    if finished_step(run) is None:
        log(f"H1 {name}: training ({ARCHS[name].h1_iterations} steps)")
        start = time.perf_counter()
        train(h1_config(name), run, resume=run.exists())
        timing(run, start)
    return run


def timing(run: Path, start: float) -> None:
    """Seconds and load of a run, beside it (a resumed run adds its parts)."""
    path = run / "compare-timing.json"
    old = json.loads(path.read_text()) if path.is_file() else {"seconds": 0.0, "load": []}
    old["seconds"] += time.perf_counter() - start
    old["load"].append(os.getloadavg()[0])
    write_json_atomic(path, old)


def write_d2(work: Path, h1: Path, shift: str) -> str:
    out = work / f"d2-{shift}"
    if not (out / "compare-done").is_file():
        log(f"D2 {shift}: writing")
        cfg = load_toml(h1 / "config.toml")
        cfg.shift.severity, cfg.shift.units = 1.0, "network"
        materialise_d2(cfg, SHIFTS[shift][0], out)
        (out / "compare-done").write_text("")
    return str(out)


def labelled_subset(d2_dir: Path, k: int, out: Path) -> Path:
    """`k` images of D2 train and their labels, drawn with LABEL_SEED (the same for every method)."""
    if (out / "compare-done").is_file():
        return out
    images = sorted((d2_dir / "train" / "images").iterdir())
    chosen = random.Random(LABEL_SEED).sample(images, k)
    for sub in ("images", "labels"):
        (out / "train" / sub).mkdir(parents=True, exist_ok=True)
    for path in chosen:
        shutil.copy(path, out / "train" / "images" / path.name)
        label = next((d2_dir / "train" / "labels").glob(f"{path.stem}.*"))
        shutil.copy(label, out / "train" / "labels" / label.name)
    (out / "compare-done").write_text("")
    return out


def run_config(h1: Path, shift: str, d2_dir: str, m: Method, lr: float, seed: int, work: Path) -> RunConfig:
    cfg = load_toml(h1 / "config.toml")
    cfg.adapt.h1 = str(h1.resolve())
    cfg.shift.filter, cfg.shift.severity, cfg.shift.d2_dir = SHIFTS[shift][0], 1.0, d2_dir
    cfg.train.batch_size = BATCH
    cfg.train.precision = "fp32"  # every method in the same precision, whatever the host's load at its start
    cfg.adapt.probes = 5
    ex = cfg.experiment
    ex.filters, ex.seeds, ex.iterations = [SHIFTS[shift][0]], [seed], ITERATIONS
    ex.baselines = list(m.baselines)
    ex.layer_presets = [m.preset] if m.preset else []
    ex.figure_images, ex.materialise_d2, ex.reconstruct_steps = 0, False, 0
    ex.adapt_lr = ex.finetune_lr = lr
    adapt = copy.deepcopy(m.adapt)
    adapt["align"] = SHIFTS[shift][1]
    if adapt["align"] != "none":  # one registration per pair for every run on this D2 (keyed by the settings)
        adapt["align_cache"] = str(work / f"d2-{shift}-align")
    if m.labels:
        adapt["d2_labels"] = str(labelled_subset(Path(d2_dir), m.labels, work / f"d2-{shift}-labels-k{m.labels}"))
    return merge(cfg, {"adapt": adapt}, f"{NAME} {shift}")


def run_one(out: Path, cfg: RunConfig) -> dict[str, Any]:
    from segadapt.experiment import run_experiment

    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    log(f"run {out.relative_to(out.parents[4])}")
    start = time.perf_counter()
    res = run_experiment(cfg, out)
    timing(out, start)
    return res


def run_dir(work: Path, arch: str, shift: str, method: str, lr: float | None, seed: int) -> Path:
    return work / arch / shift / method / (f"lr{lr:g}" if lr is not None else "lr-") / f"seed{seed}"


def method_row(res: dict[str, Any], method: str) -> dict[str, Any] | None:
    """The row of the method a small sweep ran (its one non-B0 row)."""
    rows = [r for r in res["rows"] if r["method"] not in ("H1", "B0")]
    if not rows:
        return None
    row = dict(rows[0])
    sel = [s for s in res.get("selection", []) if s["method"] == row["method"]]
    if sel:
        row["selection"] = {k: v for k, v in sel[0].items() if k not in ("seed", "shift", "method")}
    return row


def regression_tap(work: Path, arch: str, h1: Path, d2: dict[str, str]) -> str:
    """VGG: pool5 (the study's). SegFormer: the best single stage at the grid's middle rate on photocopy."""
    a = ARCHS[arch]
    if not a.stages:
        return a.deepest
    scores = {}
    for tap in a.stages:
        m = Method(preset=tap, adapt={"objective": {"features": 1.0}})
        out = run_dir(work, arch, "photocopy", f"scan-{tap}", a.grid[1], 0)
        row = method_row(run_one(out, run_config(h1, "photocopy", d2["photocopy"], m, a.grid[1], 0, work)), tap)
        scores[tap] = row["miou"] if row and finite(row["miou"]) else -1.0
    best = max(scores, key=lambda t: scores[t])
    log(f"{arch}: regression stage scan {scores} -> {best}")
    return best


def picked(work: Path, arch: str, shift: str, name: str, m: Method) -> tuple[float | None, dict[str, Any] | None]:
    """The grid value with the best D2 val mIoU (seed 0), and its row."""
    best: tuple[float | None, dict[str, Any] | None] = (None, None)
    for lr in (ARCHS[arch].grid if m.has_lr else (None,)):
        res_file = run_dir(work, arch, shift, name, lr, 0) / "results.json"
        if not res_file.is_file():
            continue
        row = method_row(json.loads(res_file.read_text()), name)
        if row and finite(row["miou"]) and (best[1] is None or row["miou"] > best[1]["miou"]):
            best = (lr, row)
    return best


def key_methods(work: Path, arch: str, shift: str, table: dict[str, Method]) -> list[str]:
    """B2, the regression, the best label-free method and the best peer (by seed 0 at their picked rates)."""
    def best_of(names: tuple[str, ...]) -> str | None:
        got = {n: picked(work, arch, shift, n, table[n])[1] for n in names}
        got = {n: r["miou"] for n, r in got.items() if r is not None}
        return max(got, key=lambda n: got[n]) if got else None
    out = ["B2", "regression", best_of(LABEL_FREE), best_of(PEERS)]
    return [n for n in dict.fromkeys(out) if n is not None]


def run_setup(work: Path, arch: str, shift: str, h1: Path, d2: dict[str, str], tap: str,
              only: set[str] | None = None) -> None:
    table = methods(ARCHS[arch], tap)
    for name, m in table.items():
        if only is not None and name not in only:
            continue
        for lr in (ARCHS[arch].grid if m.has_lr else (None,)):
            cfg = run_config(h1, shift, d2[shift], m, lr if lr is not None else ARCHS[arch].grid[1], 0, work)
            run_one(run_dir(work, arch, shift, name, lr, 0), cfg)
    for name in key_methods(work, arch, shift, table):
        if only is not None and name not in only:
            continue
        lr, _ = picked(work, arch, shift, name, table[name])
        if table[name].has_lr and lr is None:
            continue  # diverged at every rate
        for seed in EXTRA_SEEDS:
            cfg = run_config(h1, shift, d2[shift], table[name], lr if lr is not None else ARCHS[arch].grid[1],
                             seed, work)
            run_one(run_dir(work, arch, shift, name, lr, seed), cfg)


def seed_everywhere(work: Path, arch: str, shifts: list[str], h1: Path, d2: dict[str, str], tap: str,
                 default: str) -> None:
    """Seeds 1 and 2 of a candidate default on every shift: the default is chosen across shifts, so on some it
    is not that shift's best label-free method (which run_setup seeds)."""
    table = methods(ARCHS[arch], tap)
    for shift in shifts:
        lr, row = picked(work, arch, shift, default, table[default])
        if row is None:
            continue
        for seed in EXTRA_SEEDS:
            cfg = run_config(h1, shift, d2[shift], table[default], lr if lr is not None else ARCHS[arch].grid[1],
                             seed, work)
            run_one(run_dir(work, arch, shift, default, lr, seed), cfg)


# --- collecting ------------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if finite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def collect_setup(work: Path, arch: str, shift: str, tap: str) -> dict[str, Any]:
    table = methods(ARCHS[arch], tap)
    out: dict[str, Any] = {}
    b0 = None
    for name, m in table.items():
        lr, row0 = picked(work, arch, shift, name, m)
        grid = {}
        for g in (ARCHS[arch].grid if m.has_lr else (None,)):
            f = run_dir(work, arch, shift, name, g, 0) / "results.json"
            if f.is_file():
                res = json.loads(f.read_text())
                b0 = b0 or next(r["miou"] for r in res["rows"] if r["method"] == "B0")
                r = method_row(res, name)
                grid[f"{g:g}" if g is not None else "-"] = (
                    None if r is None or not finite(r["miou"]) else r["miou"])
                if r is not None and r.get("diverged"):
                    grid[f"{g:g}"] = "diverged"
        outside = {}  # rates of an earlier grid still in the work folder: shown, never picked
        for d in sorted(run_dir(work, arch, shift, name, 0.0, 0).parents[1].glob("lr*")):
            f = d / "seed0" / "results.json"
            g = d.name[2:]
            if m.has_lr and g not in {f"{v:g}" for v in ARCHS[arch].grid} and f.is_file():
                r = method_row(json.loads(f.read_text()), name)
                outside[g] = r["miou"] if r is not None and finite(r["miou"]) else "diverged"
        if row0 is None:
            if grid:
                out[name] = {"grid": grid, "seeds": [], "miou_mean": None}
            continue
        seeds = {0: row0["miou"]}
        for s in EXTRA_SEEDS:
            f = run_dir(work, arch, shift, name, lr, s) / "results.json"
            if f.is_file():
                r = method_row(json.loads(f.read_text()), name)
                if r is not None:
                    seeds[s] = r["miou"]
        mean, std = _mean_std(list(seeds.values()))
        edge = lr is not None and lr in (ARCHS[arch].grid[0], ARCHS[arch].grid[-1])  # the optimum may lie outside
        entry = {"lr": lr, "lr_at_grid_edge": edge, "grid": grid, "outside_grid": outside,
                 "seeds": [{"seed": s, "miou": v} for s, v in seeds.items()],
                 "miou_mean": mean, "miou_std": std}
        if "selection" in row0:
            entry["selection_regret_agreement"] = row0["selection"].get("regret_points")
            entry["selection"] = row0["selection"]
        out[name] = entry
    if b0 is not None:
        out["B0"] = {"lr": None, "grid": {}, "seeds": [{"seed": 0, "miou": b0}], "miou_mean": b0, "miou_std": 0.0}
    b2 = out.get("B2", {}).get("miou_mean")
    for e in out.values():
        if b0 is None or b2 is None or b2 - b0 < MIN_GAIN or e.get("miou_mean") is None:
            e["recovery_mean"] = e["recovery_std"] = None
            continue
        rec = [(s["miou"] - b0) / (b2 - b0) for s in e["seeds"] if finite(s["miou"])]
        e["recovery_mean"], e["recovery_std"] = _mean_std(rec)
    return out


def h1_miou(run: Path) -> float | None:
    f = run / "metrics.json"
    return json.loads(f.read_text()).get("val", {}).get("miou") if f.is_file() else None


def ranking(shifts: dict[str, Any]) -> list[tuple[str, float]]:
    """One architecture's label-free methods by mean recovery over the three shifts, best first (those with a
    recovery on every shift; empty until every shift has run)."""
    if set(shifts) != set(SHIFTS):
        return []
    rec = {n: [shifts[s].get(n, {}).get("recovery_mean") for s in SHIFTS] for n in LABEL_FREE}
    means = {n: statistics.fmean(v) for n, v in rec.items() if all(x is not None for x in v)}
    return sorted(means.items(), key=lambda kv: -kv[1])


def defaults(setups: dict[str, Any]) -> dict[str, Any]:
    """Per architecture, the label-free method with the best mean recovery over the shifts (None until every
    shift of that architecture has B0, B2 and the label-free methods)."""
    return {arch: (ranking(shifts) or [(None, 0.0)])[0][0] for arch, shifts in setups.items()}


def fmt(v: Any, nd: int = 3) -> str:
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def objective_of(name: str) -> dict[str, float] | None:
    """The adapt.objective a label-free row runs (None: not an objective of the model contract's)."""
    m = methods(ARCHS["vgg"], "pool5").get(name)
    return m.adapt.get("objective") if m is not None and name in LABEL_FREE else None


def code_default(arch: str) -> str:
    """The row whose objective segadapt adapts this architecture by today (models.contract.default_objective)."""
    from segadapt.models.contract import default_objective
    from segadapt.models.hf import HFSegmentation
    from segadapt.models.vgg_deeplab import VGGDeepLab

    own = default_objective({"vgg": VGGDeepLab, "segformer": HFSegmentation}[arch])  # a class attribute
    return next((n for n in LABEL_FREE if objective_of(n) == own), str(own))


def summary_rows(doc: dict[str, Any]) -> list[str]:
    """The README's lead table: per architecture and shift, B0, B2, the best peer, segadapt's default and
    its recovery, and the best label-free row where that is another."""
    lines = ["| architecture, shift | B0 | B2 (labels) | best peer | segadapt default (recovery) | "
             "best label-free (recovery) |", "| --- | --- | --- | --- | --- | --- |"]

    def cell(e: dict[str, Any] | None, name: str) -> str:
        if not e or e.get("miou_mean") is None:
            return f"{name}: not run yet"
        out = f"{name}: {fmt(e['miou_mean'])}"
        if e.get("recovery_mean") is not None:
            out += f" ({fmt(e['recovery_mean'], 2)}"
            out += f" ± {fmt(e['recovery_std'], 2)}, {len(e['seeds'])} seeds)" if len(e["seeds"]) > 1 else \
                ", 1 seed)"
        return out

    for arch, shifts in doc["setups"].items():
        default = code_default(arch)
        for shift, t in shifts.items():
            b0, b2 = t.get("B0", {}).get("miou_mean"), t.get("B2", {})
            peers = {n: t[n] for n in PEERS if t.get(n, {}).get("miou_mean") is not None}
            peer = max(peers, key=lambda n: peers[n]["miou_mean"]) if peers else None
            free = {n: t[n] for n in LABEL_FREE if t.get(n, {}).get("miou_mean") is not None}
            best = max(free, key=lambda n: free[n]["miou_mean"]) if free else None
            b2_cell = fmt(b2.get("miou_mean")) + (f" ± {fmt(b2['miou_std'])}" if len(b2.get("seeds", [])) > 1 else "")
            lines.append(f"| {arch}, {shift} | {fmt(b0)} | {b2_cell} | "
                         f"{cell(peers.get(peer), peer) if peer else ''} | {cell(t.get(default), default)} | "
                         f"{cell(free[best], best) if best and best != default else ('the default' if best else '')} |")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# {NAME}", "", doc["setup"], "", *summary_rows(doc), ""]
    for arch, shifts in doc["setups"].items():
        lines += [f"## {arch} (H1 D1 val mIoU {fmt(doc['h1_miou'].get(arch))})", ""]
        for shift, table in shifts.items():
            lines += [f"### {shift}", "", "| method | picked LR | mIoU on D2 val (mean ± std, seeds) | recovery | "
                      "grid (LR: mIoU, seed 0; an earlier grid's rates shown, never picked) | regret of the "
                      "label-free pick (points) |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for name, e in table.items():
                mean = fmt(e.get("miou_mean"))
                if mean and len(e["seeds"]) > 1:
                    mean += f" ± {fmt(e['miou_std'])} ({len(e['seeds'])})"
                rec = fmt(e.get("recovery_mean"), 2)
                if rec and len(e["seeds"]) > 1:
                    rec += f" ± {fmt(e['recovery_std'], 2)}"
                grid = ", ".join(f"{k}: {fmt(v)}" for k, v in e.get("grid", {}).items())
                if e.get("outside_grid"):
                    grid += " (earlier grid: " + ", ".join(f"{k}: {fmt(v)}" for k, v in e["outside_grid"].items()) + ")"
                regret = e.get("selection_regret_agreement")
                lr = (fmt(e["lr"], 4) + (" (edge)" if e.get("lr_at_grid_edge") else "")) if e.get("lr") else ""
                lines.append(f"| {name} | {lr} | {mean} | {rec} | {grid} | "
                             f"{'' if regret is None else f'{regret:.1f}'} |")
            lines.append("")
    lines += ["## Defaults chosen", "", *(f"- {a}: {d or 'not yet (shifts missing)'}"
                                         for a, d in doc["defaults"].items()), ""]
    if doc["missing"]:
        lines += ["## Not run yet", "", *(f"- {m}" for m in doc["missing"]), ""]
    return "\n".join(lines)


def figure(doc: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    archs = [a for a in doc["setups"] if doc["setups"][a]]
    if not archs:
        return
    fig, axes = plt.subplots(1, len(archs), figsize=(7 * len(archs), 4.5), squeeze=False)
    names = ["B2", *PEERS, *LABEL_FREE, "k5-ce", "k5-ce+combo", "k20-ce", "k20-ce+combo"]
    for ax, arch in zip(axes[0], archs):
        shifts = list(doc["setups"][arch])
        x = np.arange(len(names))
        w = 0.8 / max(1, len(shifts))
        for i, s in enumerate(shifts):
            t = doc["setups"][arch][s]
            vals = [t.get(n, {}).get("recovery_mean") for n in names]
            single = [len(t.get(n, {}).get("seeds", [])) == 1 for n in names]
            errs = [np.nan if one else t.get(n, {}).get("recovery_std") or 0.0 for n, one in zip(names, single)]
            bars = ax.bar(x + i * w - 0.4 + w / 2, [np.nan if v is None else v for v in vals], w, yerr=errs,
                          label=s, capsize=2)
            for bar, one in zip(bars, single):
                if one:  # one seed: no spread to show
                    bar.set_hatch("///")
                    bar.set_edgecolor("white")
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(1, color="k", lw=0.8, ls="--")
        ax.axhline(0.9, color="g", lw=0.8, ls=":")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_ylabel("recovery (M - B0) / (B2 - B0)")
        ax.set_title(f"{arch} (H1 D1 val mIoU {fmt(doc['h1_miou'].get(arch))}); error bars: std over 3 seeds",
                     fontsize=10)
        handles = [Patch(facecolor=f"C{i}", label=s) for i, s in enumerate(shifts)]
        handles.append(Patch(facecolor="grey", edgecolor="white", hatch="///", label="1 seed"))
        ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def fewer_measured(path: Path, doc: dict[str, Any]) -> list[str]:
    """The (architecture / shift / method) rows scored in the results file at `path` that `doc` no longer scores:
    a work folder that lost runs must not overwrite what was measured."""
    if not path.is_file():
        return []
    old = json.loads(path.read_text()).get("setups", {})
    return [f"{a}/{s}/{m}" for a, shifts in old.items() for s, t in shifts.items() for m, e in t.items()
            if e.get("miou_mean") is not None
            and doc["setups"].get(a, {}).get(s, {}).get(m, {}).get("miou_mean") is None]


def collect(work: Path, docs: Path, figures: Path, wall_s: float) -> dict[str, Any]:
    setups: dict[str, Any] = {}
    missing: list[str] = []
    h1s = {}
    seconds = 0.0
    for t in work.rglob("compare-timing.json"):
        seconds += json.loads(t.read_text())["seconds"]
    for arch in ARCHS:
        h1 = work / f"h1-{arch}"
        h1s[arch] = h1_miou(h1)
        setups[arch] = {}
        tap = ARCHS[arch].deepest
        scan = sorted(work.glob(f"{arch}/photocopy/scan-*/lr*/seed0/results.json"))
        if ARCHS[arch].stages:
            got = {p.parts[-4][5:]: method_row(json.loads(p.read_text()), "")["miou"] for p in scan}
            tap = max(got, key=lambda k: got[k]) if len(got) == len(ARCHS[arch].stages) else tap
        for shift in SHIFTS:
            t = collect_setup(work, arch, shift, tap)
            if t:
                setups[arch][shift] = t
            expected = methods(ARCHS[arch], tap)
            left = [n for n in expected if n not in t or t[n].get("miou_mean") is None]
            if left:
                missing.append(f"{arch} / {shift}: {', '.join(left)}")
    doc = {
        "setup": (f"CamVid 120x160 (base size 120); H1s from scratch on D1 train (VGG-DeepLab width 0.25, "
                  f"{ARCHS['vgg'].h1_iterations} steps; SegFormer-B0, {ARCHS['segformer'].h1_iterations} steps; "
                  f"LR 0.01, batch 8); shifts at severity 1 in network units, scored on D2 val with D1's labels; "
                  f"every method {ITERATIONS} steps at batch {BATCH}, LR picked from the architecture's grid "
                  f"(VGG {list(ARCHS['vgg'].grid)}, SegFormer {list(ARCHS['segformer'].grid)}) by D2 val mIoU "
                  f"(an oracle choice, the same for every method); recovery (M - B0) / (B2 - B0) where B2 gains "
                  f">= {MIN_GAIN}; combo = output_kl + paired_pseudo; k labelled D2 images drawn with seed "
                  f"{LABEL_SEED}; seeds 1 and 2 for B2, the regression, the best label-free method and the best "
                  f"peer of each setup, and for the two label-free methods of best mean recovery on every "
                  f"shift; seed 0 alone for the rest."),
        "setups": setups, "defaults": defaults(setups), "h1_miou": h1s, "missing": missing,
        "code_defaults": {a: code_default(a) for a in ARCHS},
        "compute_s": round(seconds, 1), "wall_s_this_invocation": round(wall_s, 1),
        "load_average_1min_end": os.getloadavg()[0], "environment": environment(),
        "script": "benchmarks/compare_camvid.py",
    }
    # what the model contract must hand out (tests/test_defaults.py holds the code to it)
    doc["default_objectives"] = {a: objective_of(d) if d else None for a, d in doc["defaults"].items()}
    lost = fewer_measured(docs / f"{NAME}.json", doc)
    if lost:  # the work folder lacks runs the written results hold: keep those results, say how to go on
        print(f"{docs / NAME}.json holds results this work folder lacks ({', '.join(lost[:4])}...); run them again "
              f"before collecting, or remove that file to start over; left unchanged", file=sys.stderr)
        return doc
    write_json_atomic(docs / f"{NAME}.json", doc)
    write_text_atomic(docs / f"{NAME}.md", markdown(doc))
    figure(doc, figures / f"{NAME}.png")
    return doc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="H1s, D2s and one folder per run go here")
    p.add_argument("--archs", nargs="+", choices=list(ARCHS), default=list(ARCHS))
    p.add_argument("--shifts", nargs="+", choices=list(SHIFTS), default=list(SHIFTS))
    p.add_argument("--methods", nargs="+", choices=list(methods(ARCHS["vgg"], "pool5")), default=None,
                   help="run only these rows (e.g. the label-free ones first, the k-label rows later); default all")
    p.add_argument("--collect", action="store_true", help="only write the results from finished runs")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "results")
    p.add_argument("--figures", type=Path, default=REPO / "docs" / "figures")
    args = p.parse_args()
    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.collect:
        if not CAMVID_ROOT.is_dir():
            print(f"CamVid not found at {CAMVID_ROOT}; set SEGADAPT_CAMVID", file=sys.stderr)
            return 2
        # order: every shift of one architecture before the next, photocopy first (the tap scan runs on it)
        for arch in args.archs:
            h1 = train_h1(args.work, arch)
            d2 = {s: write_d2(args.work, h1, s) for s in SHIFTS}
            tap = regression_tap(args.work, arch, h1, d2)
            for shift in args.shifts:
                run_setup(args.work, arch, shift, h1, d2, tap, set(args.methods) if args.methods else None)
                collect(args.work, args.docs, args.figures, time.perf_counter() - start)
            doc = collect(args.work, args.docs, args.figures, time.perf_counter() - start)
            # every shift measured: the two front-runners get seeds 1 and 2 on every shift, so the default is
            # chosen on 3 seeds each rather than on whichever shift happened to seed it
            for name, _ in ranking(doc["setups"][arch])[:TOP_SEEDED]:
                seed_everywhere(args.work, arch, list(SHIFTS), h1, d2, tap, name)
    doc = collect(args.work, args.docs, args.figures, time.perf_counter() - start)
    print(f"wrote {args.docs / NAME}.json/.md; left: {len(doc['missing'])} setups incomplete")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
