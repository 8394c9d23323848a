"""The study's sweep on CamVid: photocopy, ripple and cubism at the study's distortions of H1, every method.

    python benchmarks/study_sweep.py --out runs/study-sweep [--docs docs]

Setup (the `study-camvid` preset): CamVid at 120x160 as in benchmarks/adapt_shift.py's camvid-photocopy, width-0.25
VGG-DeepLab from scratch, H1 4000 steps; shift lengths in network units. For each seed: H1, then for each filter
the severity at which H1's distortion on 100 D1 *train* images is the study's (photocopy 0.325, ripple 0.626,
cubism 0.94, ± 0.03; severity_search.py), D2 written at that severity, then B0, B1, B2 and H2 for every layer
preset, scored on D2 val (D1's labels). Results: mean ± std over seeds.

The full protocol is many CPU-days on a small machine, so every part of it has a knob, and the run records what
it used: `--h1 RUN` shares one trained H1 between the seeds (the seeds then vary B2 and H2 only, and the search
gives each seed the same severity), `--all-presets-seeds K` runs every preset on the first K seeds and pool5 alone
on the others, `--baselines` drops B1, `--iterations` sets B2's and each regression's steps.

Writes <out>/results.{json,md,csv}, methods.png and layers.png for all seeds together, <out>/study-camvid.{json,md}
(distortions reached, B0/B2/H2:pool5 per shift, recovery (H2 - B0)/(B2 - B0), best preset), and with --docs
also docs/results/study-camvid.{json,md} and docs/figures/study-camvid-{methods,layers}.png.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _paths import CAMVID_ROOT, recorded
from segadapt.checkpoint import write_json_atomic, write_text_atomic
from segadapt.config import STUDY_DISTORTIONS, RunConfig, dumps_toml, preset
from segadapt.experiment import across_presets, json_safe, run_experiment, summarise, write_results
from segadapt.protocol import METRICS
from segadapt.runtime import environment

STUDY = "study-camvid"
PATH_ARGS = ("out", "root", "h1", "docs")  # recorded relative to the repository or ../shared
MIN_GAP = 0.01  # B2 - B0 (mIoU) below which a recovery ratio divides noise by noise and is not reported


def study_config(args: argparse.Namespace) -> RunConfig:
    cfg = preset(STUDY)
    cfg.data.root = args.root
    cfg.train.iterations = args.h1_iterations
    cfg.adapt.h1 = str(Path(args.h1).resolve()) if args.h1 else ""
    cfg.adapt.probes = args.probes
    cfg.shift.search_images = args.search_images
    ex = cfg.experiment
    ex.layer_presets = args.presets
    ex.baselines = args.baselines
    ex.iterations = args.iterations
    ex.figure_images = args.figure_images
    ex.target_distortion = {f: STUDY_DISTORTIONS[f] for f in args.filters}
    ex.filters = list(args.filters)
    return cfg


def rounds(args: argparse.Namespace) -> list[tuple[str, list[int], list[str]]]:
    """(folder, seeds, presets): every preset on the first K seeds, pool5 alone on the rest."""
    k = min(args.all_presets_seeds, len(args.seeds))
    out = [("all-presets", args.seeds[:k], args.presets)]
    if args.seeds[k:]:
        out.append(("pool5", args.seeds[k:], ["pool5"]))
    return out


def share_d2(done: Path, todo: Path) -> None:
    """A later round with the same H1 lands on the same severities: it reads the D2 the first round wrote
    (write_shifted checks each file and the marker's parameters) instead of filtering every frame again."""
    todo.mkdir(parents=True, exist_ok=True)
    for d in sorted(done.glob("d2-*")):
        link = todo / d.name
        if not link.exists():
            link.symlink_to(d.resolve(), target_is_directory=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def study_summary(results: dict[str, Any], filters: list[str], first_seeds: list[int]) -> dict[str, Any]:
    """Per shift: distortions reached, B0/B2/H2:pool5 mIoU mean ± std, recovery, the best preset."""
    rows, by = results["rows"], {(e["shift"], e["method"]): e for e in results["summary"]}
    out: dict[str, Any] = {}
    for f in filters:
        found = [r for r in results["severity_search"] if r["shift"] == f]
        per_seed = {}
        for seed in sorted({r["seed"] for r in rows if r["shift"] == f}):
            m = {r["method"]: r["miou"] for r in rows if r["shift"] == f and r["seed"] == seed}
            if {"B0", "B2", "H2:pool5"} <= m.keys() and m["B2"] - m["B0"] >= MIN_GAP:
                per_seed[seed] = (m["H2:pool5"] - m["B0"]) / (m["B2"] - m["B0"])
        methods = {k[1]: {"miou": e["miou"], "miou_std": e["miou_std"], "mean_acc": e["mean_acc"],
                          "mean_acc_std": e["mean_acc_std"], "seeds": e["seeds"]}
                   for k, e in by.items() if k[0] == f}
        h2 = {m: v for m, v in methods.items() if m.startswith("H2:")}
        full = max((v["seeds"] for v in h2.values()), default=0)
        b0, b2, pool5 = (methods.get(m, {}).get("miou") for m in ("B0", "B2", "H2:pool5"))
        gap = b2 - b0 if None not in (b0, b2) else None
        recovery = (pool5 - b0) / gap if pool5 is not None and gap is not None and gap >= MIN_GAP else None
        rec_mean, rec_std = _mean_std(list(per_seed.values()))
        # the best preset: mean mIoU over the seeds that ran every preset (the first round's)
        h2_first = {m: statistics.fmean(r["miou"] for r in rows if r["shift"] == f and r["method"] == m
                                        and r["seed"] in first_seeds)
                    for m in {r["method"] for r in rows if r["shift"] == f and r["method"].startswith("H2:")
                              and r["seed"] in first_seeds}}
        best = max(h2_first, key=lambda m: h2_first[m]) if h2_first else None
        out[f] = {
            "target_distortion": found[0]["target"] if found else None,
            "search": [{"seed": r["seed"], "severity": r["severity"], "distortion_search": r["distortion"],
                        "distortion_val": r.get("val_distortion"), "reached": r["reached"], "message": r["message"],
                        "probes": len(r["probes"])} for r in found],
            "distortion_val_of_means": results["distortion"].get(f),
            "methods": methods,
            "recovery_of_means": recovery,
            "recovery_note": None if recovery is not None or gap is None else
            f"B2 is {100 * gap:.1f} mIoU points above B0 (under {100 * MIN_GAP:.0f}): nothing to recover, no ratio",
            "recovery_per_seed": per_seed,
            "recovery_mean_std": [rec_mean, rec_std],
            "best_preset": best,
            "best_preset_seeds": first_seeds,
            "presets_miou_on_those_seeds": h2_first,
            "h2_seeds": full,
        }
    return out


def _best(s: dict[str, Any]) -> str:
    if not s["best_preset"]:
        return "n/a"
    seeds = ", ".join(map(str, s["best_preset_seeds"]))
    return f"{s['best_preset']} ({s['presets_miou_on_those_seeds'][s['best_preset']]:.3f}; seed(s) {seeds})"


def _finite(results: dict[str, Any]) -> dict[str, Any]:
    """A round's results.json read back: null scores (nan when written) are nan again, as summarise expects."""
    for r in results["rows"]:
        for m in METRICS:
            r[m] = math.nan if r[m] is None else r[m]
    return results


def study_markdown(summary: dict[str, Any], meta: dict[str, Any], sweep_md: str) -> str:
    def ms(v: dict[str, Any] | None, key: str = "miou") -> str:
        if not v or v.get(key) is None or not math.isfinite(v[key]):
            return "n/a"
        return f"{v[key]:.3f} ± {v[key + '_std']:.3f}" if v["seeds"] > 1 else f"{v[key]:.3f} (1 seed)"

    lines = [f"# {STUDY}: the study's three shifts at the study's distortions", "",
             f"Setup: {meta['setup']}", "", "## Distortions reached", "",
             "| shift | target | seed | severity | distortion, search images (train) | distortion, val | reached |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f, s in summary.items():
        for r in s["search"]:
            val = r["distortion_val"]
            lines.append(f"| {f} | {s['target_distortion']:g} | {r['seed']} | {r['severity']:.4f} | "
                         f"{r['distortion_search']:.3f} | {'n/a' if val is None else f'{val:.3f}'} | "
                         f"{'yes' if r['reached'] else 'no: ' + r['message']} |")
    lines += ["", "## B0, B2 and H2:pool5 (mIoU on D2 val, mean ± std over seeds)", "",
              "| shift | B0 | B2 | H2:pool5 | recovery (H2 − B0)/(B2 − B0), of the means | recovery per seed, "
              "mean ± std | best preset |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for f, s in summary.items():
        m = s["methods"]
        rec = s["recovery_of_means"]
        rm, rsd = s["recovery_mean_std"]
        lines.append(f"| {f} | {ms(m.get('B0'))} | {ms(m.get('B2'))} | {ms(m.get('H2:pool5'))} | "
                     f"{s['recovery_note'] or 'n/a' if rec is None else f'{rec:.2f}'} | "
                     f"{'n/a' if not math.isfinite(rm) else f'{rm:.2f} ± {rsd:.2f}'} | "
                     f"{_best(s)} |")
    lines += ["", "Recovery: the share of B2's gain over B0 (fine-tuning with labels) that H2:pool5 gets without "
              "D2 labels; 1 = as good as B2, above 1 = better.", "", "---", "", "The sweep's own tables (all "
              "seeds together; methods run on fewer seeds say so in their seed counts in results.json):", ""]
    body = sweep_md.split("\n", 1)[1] if sweep_md.startswith("# ") else sweep_md
    return "\n".join(lines) + "\n" + body.replace("(methods.png)", "(../figures/study-camvid-methods.png)") \
        .replace("(layers.png)", "(../figures/study-camvid-layers.png)")


def _h1_text(run: Path) -> str:
    """The shared H1 as a reader can judge it (its steps and D1 val mIoU), not as a path on the machine that ran it."""
    try:
        m = json.loads((run / "metrics.json").read_text())
        return f"shared by all seeds ({m['step']} steps, D1 val mIoU {m['val']['miou']:.3f})"
    except (OSError, KeyError, TypeError, ValueError):
        return f"shared by all seeds ({run.name})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--root", default=str(CAMVID_ROOT), help="CamVid root")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--filters", nargs="+", default=list(STUDY_DISTORTIONS), choices=list(STUDY_DISTORTIONS))
    p.add_argument("--presets", nargs="+", default=["pool1", "pool2", "pool3", "pool4", "pool5", "all_inc", "all_dec"])
    p.add_argument("--all-presets-seeds", type=int, default=99, help="run every preset on this many of the seeds "
                   "(the first ones), pool5 alone on the rest (default: all)")
    p.add_argument("--baselines", nargs="+", default=["B0", "B1", "B2"])
    p.add_argument("--iterations", type=int, default=1000, help="B2 and each regression")
    p.add_argument("--h1-iterations", type=int, default=4000, help="H1 (and B1) when trained here")
    p.add_argument("--h1", default="", help="one trained H1 for every seed instead of one per seed")
    p.add_argument("--search-images", type=int, default=100)
    p.add_argument("--probes", type=int, default=5, help="label-free selection probes per regression")
    p.add_argument("--figure-images", type=int, default=0, help="report.html figures (0: the two plots only)")
    p.add_argument("--docs", default="", help="also write docs/results/study-camvid.* and docs/figures/ here")
    args = p.parse_args()
    if not Path(args.root, "train", "images").is_dir():
        print(f"CamVid not found at {args.root}; pass --root", file=sys.stderr)
        return 2
    if "pool5" not in args.presets:
        print("--presets must include pool5 (the study's method and the recovery measure)", file=sys.stderr)
        return 2

    cfg = study_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.toml", dumps_toml(cfg))
    t0 = time.perf_counter()
    parts: list[dict[str, Any]] = []
    resumed: list[str] = []
    start: dict[str, float] = {}
    first: Path | None = None
    for name, seeds, presets in rounds(args):
        rdir = out / name
        if (rdir / "results.json").is_file():  # a finished round is kept: the benchmark resumes by round
            res = _finite(json.loads((rdir / "results.json").read_text()))
            resumed.append(name)
        else:
            c = study_config(args)
            c.experiment.seeds, c.experiment.layer_presets = seeds, presets
            if first is not None and cfg.adapt.h1:
                share_d2(first, rdir)
            res = run_experiment(c, rdir, search_start=start if cfg.adapt.h1 else None)
        parts.append(res)
        first = first or rdir
        if cfg.adapt.h1:  # the same H1: the next round's search starts where this one landed
            start |= {r["shift"]: r["severity"] for r in res["severity_search"]}
    rows = [r for res in parts for r in res["rows"]]
    results = summarise(rows, cfg.experiment.filters)
    results["severity_search"] = [r for res in parts for r in res["severity_search"]]
    results["selection"] = [r for res in parts for r in res["selection"]]
    results["selection_across_presets"] = across_presets(results["selection"])
    results["environment"] = environment()
    write_results(results, out)
    summary = study_summary(results, cfg.experiment.filters, rounds(args)[0][1])
    meta = {
        "setup": (f"CamVid {cfg.data.crop_size[0]}x{cfg.data.crop_size[1]} (base size {cfg.data.base_size}), "
                  f"width {cfg.model.width} VGG-DeepLab from scratch, H1 "
                  f"{_h1_text(Path(args.h1)) if args.h1 else f'{args.h1_iterations} steps per seed'}; "
                  f"seeds {args.seeds}; presets {args.presets} on the first {len(rounds(args)[0][1])} seed(s), "
                  f"pool5 on all; baselines {args.baselines}; B2 and regressions {args.iterations} steps "
                  f"(lr {cfg.experiment.finetune_lr} / {cfg.experiment.adapt_lr}); severity searched on "
                  f"{args.search_images} train images, ± {cfg.shift.search_tolerance}; shift units "
                  f"{cfg.shift.units}; {args.probes} selection probes"),
        "args": {k: recorded(v) if k in PATH_ARGS and v else v for k, v in vars(args).items()},
        "wall_s": round(time.perf_counter() - t0, 1),  # this invocation: rounds read back cost nothing here
        "rounds_read_back": resumed,
    }
    report = {**meta, "shifts": summary, "environment": results["environment"]}
    write_json_atomic(out / f"{STUDY}.json", json_safe(report))
    text = study_markdown(summary, meta, (out / "results.md").read_text())
    write_text_atomic(out / f"{STUDY}.md", text)
    if args.docs:
        docs = Path(args.docs)
        write_json_atomic(docs / "results" / f"{STUDY}.json", json_safe(report))
        write_text_atomic(docs / "results" / f"{STUDY}.md", text)
        for fig in ("methods", "layers"):
            if (out / f"{fig}.png").is_file():
                shutil.copyfile(out / f"{fig}.png", docs / "figures" / f"{STUDY}-{fig}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
