"""Every adaptation objective, weighting and label-free peer on the synthetic SegFormer + photocopy setup.

    python benchmarks/objectives_synthetic_segformer.py --h1 RUN --work /tmp/objectives [--only NAME ...]

Setup (issue 26's measurement, one seed): SegFormer-B0 trained from scratch on the synthetic scenes
(`segadapt train --preset synthetic --arch segformer_b0 --width 1 --set 'data.crop_size=[64,96]'
--set 'data.synthetic_size=[64,96]' --iterations 1500 --lr 0.01`), D2 = photocopy at severity 1, and each
method with the same budget as the sweep (`--iterations`, default 300; batch, crop and seed of H1's run) at the
sweep's learning rate (experiment.adapt_lr / finetune_lr, 2.5e-4 for every method alike). Each method runs as
one small sweep (segadapt.experiment.run_experiment, so scoring, probes and label-free selection are the
sweep's own) into <work>/<method>/ over one D2 written once; a method whose results.json exists is not run
again, so the script resumes after a stop.

Writes docs/results/objectives-synthetic-segformer.json (per method: mIoU on D2 val, recovery
(M - B0) / (B2 - B0), the label-free selection's pick and its regret where probes ran) and .md (the table).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

from _paths import REPO, recorded
from segadapt.checkpoint import write_json_atomic, write_text_atomic
from segadapt.config import RunConfig, load_toml, merge
from segadapt.experiment import run_experiment
from segadapt.runtime import environment

NAME = "objectives-synthetic-segformer"
FILTER, SEVERITY = "photocopy", 1.0
TAP = "stage4"  # SegFormer's deepest stage: the default tap, and the study's pool5 analogue
# method -> what its small sweep runs: baselines, layer presets, and adapt.* settings
METHODS: dict[str, dict[str, Any]] = {
    "B0+B2": {"baselines": ["B0", "B2"]},
    "adabn": {"baselines": ["B0", "adabn"]},
    "tent": {"baselines": ["B0", "tent"]},
    "self_training": {"baselines": ["B0", "self_training"]},
    "features-stage3": {"presets": ["stage3"]},  # the default objective: the study's regression
    "features-stage4": {"presets": [TAP]},
    "features_std-stage4": {"presets": [TAP], "adapt": {"objective": {"features_std": 1.0}}},
    "output_kl": {"presets": [TAP], "adapt": {"objective": {"output_kl": 1.0}, "train_head": False}},
    "output_kl-head": {"presets": [TAP], "adapt": {"objective": {"output_kl": 1.0}, "train_head": True}},
    "paired_pseudo": {"presets": [TAP], "adapt": {"objective": {"paired_pseudo": 1.0}, "train_head": False}},
    "paired_pseudo-head": {"presets": [TAP], "adapt": {"objective": {"paired_pseudo": 1.0}, "train_head": True}},
    "entropy": {"presets": [TAP], "adapt": {"objective": {"entropy": 1.0}, "train_head": False}},
    "features+output_kl": {"presets": [TAP], "adapt": {"objective": {"features": 1.0, "output_kl": 1.0}}},
    "output_kl+paired_pseudo+entropy": {
        "presets": [TAP], "adapt": {"objective": {"output_kl": 1.0, "paired_pseudo": 1.0, "entropy": 0.01}}},
    "output_kl+paired_pseudo-head": {
        "presets": [TAP], "adapt": {"objective": {"output_kl": 1.0, "paired_pseudo": 1.0}, "train_head": True}},
    "output_kl+paired_pseudo+entropy-head": {
        "presets": [TAP], "adapt": {"objective": {"output_kl": 1.0, "paired_pseudo": 1.0, "entropy": 0.01},
                                    "train_head": True}},
    "features+output_kl-normalised": {
        "presets": [TAP], "adapt": {"objective": {"features": 1.0, "output_kl": 1.0}, "weighting": "normalised"}},
    "features+output_kl-uncertainty": {
        "presets": [TAP], "adapt": {"objective": {"features": 1.0, "output_kl": 1.0}, "weighting": "uncertainty"}},
    # k labelled D2 images (drawn from D2 train with a fixed seed): cross-entropy alone, and with the label-free
    # combination beside it; the whole network trains, as B2 does
    "k5-labels": {"presets": [TAP], "labels": 5,
                  "adapt": {"objective": {"d2_labels": 1.0}, "train_head": True, "select": "labels"}},
    "k5-labels+output_kl": {"presets": [TAP], "labels": 5,
                            "adapt": {"objective": {"d2_labels": 1.0, "output_kl": 1.0}, "train_head": True}},
}
LABEL_SEED = 0


def labelled_subset(d2_dir: Path, k: int, out: Path) -> Path:
    """`k` images of D2 train and their labels, drawn with LABEL_SEED, copied in `segadapt shift`'s layout."""
    import random
    import shutil

    images = sorted((d2_dir / "train" / "images").iterdir())
    chosen = random.Random(LABEL_SEED).sample(images, k)
    for sub in ("images", "labels"):
        (out / "train" / sub).mkdir(parents=True, exist_ok=True)
    for path in chosen:
        shutil.copy(path, out / "train" / "images" / path.name)
        label = next((d2_dir / "train" / "labels").glob(f"{path.stem}.*"))
        shutil.copy(label, out / "train" / "labels" / label.name)
    return out


def method_config(h1: Path, method: str, iterations: int, d2_dir: str, work: Path) -> RunConfig:
    """H1's own run settings (data, batch, seed), one shift, one method's baselines / presets / adapt keys."""
    spec = METHODS[method]
    cfg = load_toml(h1 / "config.toml")
    cfg.adapt.h1 = str(h1.resolve())
    cfg.shift.filter, cfg.shift.severity, cfg.shift.d2_dir = FILTER, SEVERITY, d2_dir
    ex = cfg.experiment
    ex.filters, ex.seeds, ex.iterations = [FILTER], [cfg.train.seed], iterations
    ex.baselines = list(spec.get("baselines", ["B0"]))
    ex.layer_presets = list(spec.get("presets", []))
    ex.figure_images, ex.materialise_d2 = 0, d2_dir == ""
    adapt = copy.deepcopy(spec.get("adapt", {}))
    if spec.get("labels"):
        k = spec["labels"]
        adapt["d2_labels"] = str(labelled_subset(Path(d2_dir), k, work / f"d2-labels-k{k}"))
    return merge(cfg, {"adapt": adapt}, f"{NAME} {method}")


def _row(results: dict[str, Any], method: str) -> dict[str, Any] | None:
    rows = [r for r in results["rows"] if r["method"] == method and r["shift"] == FILTER]
    return rows[0] if rows else None


def collect(work: Path) -> dict[str, Any]:
    """Per method: its mIoU, recovery against the B0/B2 of the baselines sweep, and the selection's record."""
    done = {m: json.loads((work / m / "results.json").read_text())
            for m in METHODS if (work / m / "results.json").is_file()}
    base = done.get("B0+B2")
    b0 = _row(base, "B0")["miou"] if base else None
    b2 = _row(base, "B2")["miou"] if base else None
    out: dict[str, Any] = {}
    for method, results in done.items():
        names = [r["method"] for r in results["rows"] if r["shift"] == FILTER and r["method"] != "B0"]
        for name in names:
            miou = _row(results, name)["miou"]
            label = name if method == "B0+B2" else method
            entry: dict[str, Any] = {"method": label, "run": name, "miou": miou,
                                     "recovery": (miou - b0) / (b2 - b0) if None not in (b0, b2) and b2 != b0 else None}
            sel = [s for s in results.get("selection", []) if s["method"] == name]
            if sel:
                entry["selection"] = {k: v for k, v in sel[0].items() if k not in ("seed", "shift", "method")}
            out[label] = entry
    if base:
        out["B0"] = {"method": "B0", "run": "B0", "miou": b0, "recovery": 0.0}
    return out


def markdown(methods: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# {NAME}", "", meta["setup"], "",
             "| method | mIoU on D2 val | recovery (M - B0) / (B2 - B0) | regret of the label-free pick (mIoU points) "
             "by held-out loss / agreement / entropy |",
             "| --- | --- | --- | --- |"]
    for name in ["B0", "B2", *[m for m in methods if m not in ("B0", "B2")]]:
        e = methods.get(name)
        if e is None:
            continue
        rec = "" if e["recovery"] is None else f"{e['recovery']:.2f}"
        sel = e.get("selection", {})
        picks = " / ".join("n/a" if sel.get(f"regret_{k}") is None else f"{sel[f'regret_{k}']:.1f}"
                           for k in ("loss", "agreement", "entropy")) if sel else ""
        lines.append(f"| {name} | {e['miou']:.3f} | {rec} | {picks} |")
    missing = [m for m in METHODS if m not in meta["ran"]]
    if missing:
        lines += ["", f"Not run (yet): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--h1", type=Path, required=True, help="the trained SegFormer run (see the docstring)")
    p.add_argument("--work", type=Path, required=True, help="one sweep directory per method goes here")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--only", nargs="+", choices=list(METHODS), help="run these methods only")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "results")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    d2_dir = ""
    for method in args.only or list(METHODS):
        out = args.work / method
        if (out / "results.json").is_file():
            print(f"{method}: done earlier, kept", file=sys.stderr)
        else:
            cfg = method_config(args.h1, method, args.iterations, d2_dir, args.work)
            start = time.perf_counter()
            run_experiment(cfg, out)
            print(f"{method}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        written = next(out.glob(f"d2-{FILTER}*"), None)  # the first sweep writes D2; the others read it
        d2_dir = d2_dir or (str(written) if written else "")
    methods = collect(args.work)
    h1_cfg = json.loads((args.h1 / "metrics.json").read_text()) if (args.h1 / "metrics.json").is_file() else {}
    meta = {
        "setup": (f"SegFormer-B0 (width 1) from scratch on the synthetic scenes at 64x96, 1500 steps at LR 0.01 "
                  f"(D1 val mIoU {h1_cfg.get('val', {}).get('miou', float('nan')):.3f}); D2 = {FILTER} at severity "
                  f"{SEVERITY}; every method {args.iterations} steps at the sweep's learning rate, one seed."),
        "h1": recorded(args.h1), "iterations": args.iterations,
        "ran": sorted(m for m in METHODS if (args.work / m / "results.json").is_file()),
        "environment": environment(),
    }
    write_json_atomic(args.docs / f"{NAME}.json", {**meta, "methods": methods})
    write_text_atomic(args.docs / f"{NAME}.md", markdown(methods, meta))
    print(f"wrote {args.docs / NAME}.json and .md ({len(meta['ran'])} of {len(METHODS)} methods)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
