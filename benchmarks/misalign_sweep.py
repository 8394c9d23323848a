"""What misalignment costs the method, and how much registration wins back: a CPU-scale sweep on CamVid.

D2 = photocopy (full strength) then misalign at each `--severities` value (0 = photocopy alone; 0.5 = offsets
of 12-24 px and rotations up to 3 degrees at CamVid's 480x360, 1 = 24-48 px and up to 6 degrees). D2 is
written once per severity (`segadapt shift`'s writer: labels moved with the images, so every method is
scored on labels that lie on D2's pixels). Training and scoring at 120x160, as benchmarks/adapt_shift.py's
camvid-photocopy setup, with a shorter budget. For each severity: B0 (H1 on D2), B2 (H1 fine-tuned on D2 with
the moved labels) and H2:pool5 (no labels) with adapt.align = none, ecc and features; registrations are
cached per severity and method, so each pair is registered once. With --teacher-cache every regression
reads H1's maps of the D1 frames from one cache (flip augmentation only, for the H2 runs).

    python benchmarks/misalign_sweep.py --h1 runs/misalign-h1 --out runs/misalign-sweep \\
        --json docs/results/misalign_sweep.json --figure docs/figures/misalign_sweep.png
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _measure import load_average
from _paths import CAMVID_ROOT
from segadapt.adapt import adapt
from segadapt.checkpoint import write_json_atomic, write_text_atomic
from segadapt.config import STUDY_OBJECTIVE, RunConfig, ShiftConfig, preset
from segadapt.data import SegmentationDataset, build_source, make_transform
from segadapt.data.d2 import d2_source, materialise_d2, with_shift
from segadapt.data.pairs import PairedDataset
from segadapt.data.shifted import recorded_transforms
from segadapt.evaluate import score
from segadapt.experiment import _scores_from
from segadapt.models.loading import load_model
from segadapt.runtime import environment, select_device
from segadapt.train import train


def base_config(root: str, iterations: int) -> RunConfig:
    """benchmarks/adapt_shift.py's camvid-photocopy setup (120x160, width 0.25, lr 0.01 / 0.005, clip 5)."""
    cfg = preset("camvid")
    cfg.data.root = root
    cfg.data.base_size, cfg.data.crop_size = 120, [120, 160]
    cfg.train.lr, cfg.train.checkpoint_every, cfg.train.log_every = 0.01, 0, 50
    cfg.shift = ShiftConfig(filter="photocopy", severity=1.0)
    cfg.adapt.grad_clip, cfg.adapt.layers = 5.0, ["pool5"]
    cfg.adapt.objective = dict(STUDY_OBJECTIVE)  # the study's regression, as when these results were measured
    cfg.experiment.iterations, cfg.experiment.finetune_lr, cfg.experiment.adapt_lr = iterations, 0.01, 0.005
    return cfg


def spec_of(severity: float) -> str:
    return "photocopy" if severity == 0 else f"photocopy+misalign={severity:g}"


def offsets(d2_dir: Path, split: str) -> dict[str, float] | None:
    """Mean and max displacement of the frame's centre (px at 480x360) that the shift recorded."""
    try:
        truths = recorded_transforms(d2_dir, split)
    except Exception:
        return None
    if not truths:
        return None
    centre = np.array([239.5, 179.5, 1.0])
    d = [float(np.linalg.norm((m @ centre)[:2] - centre[:2])) for m in truths.values()]
    return {"mean_px": round(float(np.mean(d)), 2), "max_px": round(float(np.max(d)), 2)}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["severity"] is not None]
    sev = sorted({r["severity"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"B0": ("k", ":"), "B2": ("tab:gray", "--"), "H2:pool5 none": ("tab:red", "-"),
              "H2:pool5 ecc": ("tab:blue", "-"), "H2:pool5 features": ("tab:green", "-")}
    for method, (colour, ls) in styles.items():
        pts = [(r["severity"], r["miou"]) for r in rows if r["method"] == method]
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, ls, color=colour, marker="o", label=method)
    ax.set_xticks(sev)
    ax.set_xticklabels([f"{s:g}\n({results['offsets'].get(str(s), {}).get('mean_px', 0):.0f} px)" for s in sev])
    ax.set_xlabel("misalign severity (mean offset of the frame centre at 480x360)")
    ax.set_ylabel("mIoU on D2 val")
    ax.set_title("CamVid, photocopy + misalign: pool5 regression with and without registration", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    swept = [r for r in results["rows"] if r["severity"] is not None]
    sev = sorted({r["severity"] for r in swept})
    methods = list(dict.fromkeys(r["method"] for r in swept))
    by = {(r["severity"], r["method"]): r for r in results["rows"]}
    def mean_offset(s: float) -> float:
        return results["offsets"].get(str(s), {}).get("mean_px", 0.0)

    head = "| method | " + " | ".join(f"severity {s:g} (mean offset {mean_offset(s):.0f} px)" for s in sev) + " |"
    h1 = next(r for r in results["rows"] if r["severity"] is None)
    lines = [f"H1 on D1 val: mIoU {h1['miou']:.3f}", "", head, "| --- |" + " --- |" * len(sev)]
    for m in methods:
        cells = []
        for s in sev:
            r = by.get((s, m))
            cells.append("" if r is None else f"{r['miou']:.3f}" + (f" ({r['registration']['failed']} skipped)"
                                                                  if r.get("registration") else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--h1", required=True, help="H1 run directory (trained on CamVid at 120x160)")
    p.add_argument("--root", default=str(CAMVID_ROOT))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--severities", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--methods", nargs="+", default=["none", "ecc", "features"])
    p.add_argument("--iterations", type=int, default=300, help="B2 and each regression's steps")
    p.add_argument("--teacher-cache", action="store_true", help="H1's D1 maps computed once for every regression "
                   "(about 1.6x faster steps; augmentation then flips only, no random scale, for H2)")
    p.add_argument("--json", type=Path)
    p.add_argument("--figure", type=Path)
    p.add_argument("--report-only", action="store_true", help="redo the table and figure from <out>/partial.json "
                   "(what a stopped sweep has measured so far)")
    args = p.parse_args()
    if args.report_only:
        results = json.loads((args.out / "partial.json").read_text())
        results["partial"] = True
        report(results, args)
        return 0

    cfg = base_config(args.root, args.iterations)
    device = select_device("cpu")
    h1, h1_meta = load_model(args.h1, device)
    d1_train, d1_val = build_source(cfg.data, "train"), build_source(cfg.data, "val")
    train_tf = make_transform(cfg.data, True, d1_train.info.ignore_index)
    eval_tf = make_transform(cfg.data, False, d1_train.info.ignore_index)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = [{"severity": None, "method": "H1 on D1", "miou": score(h1, d1_val, cfg, device).miou}]
    results: dict[str, Any] = {"h1": str(args.h1), "iterations": args.iterations, "rows": rows, "offsets": {},
                               "teacher_cache": args.teacher_cache,
                               "load_average_start": load_average(), "started": time.strftime("%Y-%m-%d %H:%M")}
    for severity in args.severities:
        spec = spec_of(severity)
        shift = materialise_d2(cfg, spec, args.out / f"d2-{spec}")
        results["offsets"][str(severity)] = offsets(Path(shift.d2_dir), "train") or {"mean_px": 0.0, "max_px": 0.0}
        sc = with_shift(cfg, shift)
        d2_train, d2_val = d2_source(sc, "train", labelled=True), d2_source(sc, "val", labelled=True)
        here = args.out / spec

        def add(method: str, s: Any, extra: dict[str, Any] | None = None, severity: float = severity,
                spec: str = spec) -> None:
            rows.append({"severity": severity, "spec": spec, "method": method, "miou": s.miou,
                         "mean_acc": s.mean_acc, "pixel_acc": s.pixel_acc, **(extra or {})})
            print(f"== {spec} {method}: mIoU {s.miou:.4f}", flush=True)
            write_json_atomic(args.out / "partial.json", results)

        add("B0", score(h1, d2_val, cfg, device))
        b2 = copy.deepcopy(cfg)
        b2.train.iterations, b2.train.lr = args.iterations, cfg.experiment.finetune_lr
        m = train(b2, here / "B2", model=copy.deepcopy(h1), train_set=SegmentationDataset(d2_train, train_tf),
                  val_set=SegmentationDataset(d2_val, eval_tf))
        add("B2", _scores_from(m))  # train() scored it on D2 val already (the same data and transform)
        for method in args.methods if severity else ["none"]:
            a = copy.deepcopy(cfg)
            a.train.iterations, a.train.lr = args.iterations, cfg.experiment.adapt_lr
            cache = str(args.out / "align" / f"{spec}-{method}")
            a.adapt = dataclasses.replace(a.adapt, align=method, align_cache=cache,
                                          teacher_cache=str(args.out / "teacher-cache") if args.teacher_cache else "")
            res = adapt(a, here / f"H2-pool5-{method}", PairedDataset(d1_train, d2_train, train_tf), teacher=h1,
                        h1_meta=h1_meta)
            h2, _ = load_model(here / f"H2-pool5-{method}", device)
            reg = res.get("registration")
            add(f"H2:pool5 {method}", score(h2, d2_val, cfg, device),
                {"registration": {k: reg[k] for k in ("pairs", "ok", "failed", "seconds")} if reg else None,
                 "train_time_s": res["train_time_s"]})
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["load_average_end"] = load_average()
    results["environment"] = environment()
    write_json_atomic(args.out / "results.json", results)
    report(results, args)
    print(json.dumps({"wall_s": results["wall_s"]}))
    return 0


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    write_text_atomic(args.out / "results.md", markdown(results))
    if args.json:
        write_json_atomic(args.json, results)
        write_text_atomic(args.json.with_suffix(".md"), markdown(results))
    if args.figure:
        plot(results, args.figure)
    print(markdown(results))


if __name__ == "__main__":
    sys.exit(main())
