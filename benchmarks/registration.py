"""How well registration recovers a known misalignment on CamVid, and how fast.

For `--pairs` CamVid frames spread over train and val, X2 = photocopy+misalign of X1 (the misalign part at each
`--severities` value; 0.5 = offsets of 12-24 px, rotations up to 3 degrees, scale within 2% at 480x360) and
the ground-truth transform is known. Each method registers each pair; the mean corner error (X1's four
corners through the estimate and through the truth, in pixels) is the accuracy measure, and a pair that fails
the quality check counts as a failure (never as accurate). Also: unrelated pairs (X2 the photocopy of another
frame), which must all be flagged.

`--network-units BASE` makes X2 as `segadapt shift --units network` does for a network that sees the frames at
a shorter side of BASE pixels (the photocopy's lengths scaled by 480x360's 360 / BASE), reports corner errors
in network pixels, and adds the variants that register at that size (`*-network`, adapt.align_at = network).

    python benchmarks/registration.py --pairs 100 --out docs/results/registration.json \\
        --figure docs/figures/registration.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from _measure import load_average
from _paths import CAMVID_ROOT
from segadapt.base_size import base_scale
from segadapt.checkpoint import write_json_atomic
from segadapt.data.align import (
    AlignSettings,
    apply_h,
    contrast_image,
    corner_error,
    corners,
    register,
    valid_mask,
    warp_into,
)
from segadapt.data.base import read_image
from segadapt.data.pairs import stem_seed
from segadapt.runtime import environment
from segadapt.shifts import apply_filter
from segadapt.shifts.compose import geometry

VARIANTS = {  # name -> settings; "ecc-gradient" is the representation the module chose against
    "ecc": AlignSettings("ecc"),
    "features": AlignSettings("features"),
    "ecc-gradient": AlignSettings("ecc", image="gradient"),
    "ecc-network": AlignSettings("ecc"),  # base_size: --network-units
    "features-network": AlignSettings("features"),
}


def frames(root: Path, n: int) -> list[Path]:
    files = sorted((root / "train" / "images").glob("*.jpg")) + sorted((root / "val" / "images").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no CamVid frames under {root}; pass --root")
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, min(n, len(files))).round()]


def spec_of(severity: float) -> str:
    return f"photocopy+misalign={severity:g}"  # photocopy at full strength (severity 1), misalign at `severity`


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errs = [r["corner_error"] for r in rows if r["ok"]]
    times = [r["seconds"] for r in rows]
    return {
        "pairs": len(rows),
        "flagged": sum(not r["ok"] for r in rows),
        "fraction_within_1px": sum(r["ok"] and r["corner_error"] <= 1.0 for r in rows) / len(rows),
        "accepted_but_over_1px": sum(r["ok"] and r["corner_error"] > 1.0 for r in rows),
        "corner_error_px": {"median": statistics.median(errs), "mean": statistics.fmean(errs),
                            "p95": float(np.percentile(errs, 95)), "max": max(errs)} if errs else None,
        "seconds_per_pair": {"median": statistics.median(times), "mean": statistics.fmean(times)},
        "failures": [{"x1": r["x1"], "reason": r["reason"], "corner_error": r["corner_error"]}
                     for r in rows if not r["ok"]],
    }


def figure(path: Path, x1: np.ndarray, x2: np.ndarray, truth: np.ndarray, estimate: np.ndarray,
           label: str) -> None:
    """X1, X2, X2 warped back with the estimate, the structure difference before/after, the error map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = x1.shape[:2]
    back = warp_into(x2, estimate, (h, w))
    valid = valid_mask(estimate, (h, w), x2.shape[:2])
    c1, c2, cb = contrast_image(x1), contrast_image(x2), contrast_image(back)
    before, after = np.abs(c1 - c2), np.where(valid, np.abs(c1 - cb), np.nan)
    yy, xx = np.mgrid[0:h, 0:w]
    grid = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)
    err = np.linalg.norm(apply_h(estimate, grid) - apply_h(truth, grid), axis=1).reshape(h, w)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.6))
    panels = [(x1, "X1 (D1 frame)"), (x2, "X2 = photocopy + misalign"), (back, f"X2 warped back ({label})")]
    for ax, (img, title) in zip(axes[0], panels):
        ax.imshow(img)
        ax.set_title(title)
    vmax = float(np.nanpercentile(before, 99))
    axes[1, 0].imshow(before, cmap="magma", vmin=0, vmax=vmax)
    axes[1, 0].set_title("|contrast(X1) - contrast(X2)|, before")
    axes[1, 1].imshow(after, cmap="magma", vmin=0, vmax=vmax)
    axes[1, 1].set_title("after warping back (X1's frame)")
    im = axes[1, 2].imshow(err, cmap="viridis")
    c = corners(h, w)
    ce = np.linalg.norm(apply_h(estimate, c) - apply_h(truth, c), axis=1).mean()
    axes[1, 2].set_title(f"displacement error, px (corner mean {ce:.2f})")
    fig.colorbar(im, ax=axes[1, 2], fraction=0.035)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=CAMVID_ROOT)
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--severities", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   help="default: ecc, features, ecc-gradient; with --network-units: ecc, ecc-network, "
                        "features-network")
    p.add_argument("--network-units", type=int, default=0, metavar="BASE",
                   help="shift in network units for a network at base size BASE (errors in network pixels)")
    p.add_argument("--unrelated", type=int, default=20, help="unrelated pairs, which must all be flagged")
    p.add_argument("--out", type=Path)
    p.add_argument("--figure", type=Path)
    p.add_argument("--merge", action="store_true", help="update these variants in an existing --out file, keeping "
                   "the others (to re-measure one method after a change)")
    args = p.parse_args()
    cv2.setNumThreads(1)
    paths = frames(args.root, args.pairs)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"pairs": len(paths), "load_average_start": load_average(), "runs": {}}
    if args.merge and args.out and args.out.is_file():
        results = json.loads(args.out.read_text()) | {"load_average_start": load_average()}
    drawn = False
    base = args.network_units
    args.variants = args.variants or (["ecc", "ecc-network", "features-network"] if base else
                                      ["ecc", "features", "ecc-gradient"])
    settings = {v: replace(VARIANTS[v], base_size=base if v.endswith("-network") else 0) for v in args.variants}

    def scale_of(x: np.ndarray) -> float:  # stored pixels per network pixel (1: image units)
        return base_scale(*x.shape[:2], base, inverse=True)

    for severity in args.severities:
        spec = spec_of(severity)
        key = f"{spec} network units base {base}" if base else spec
        rows: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
        for n, path in enumerate(paths):
            x1 = read_image(path)
            seed = stem_seed(path.stem, 0)
            x2 = apply_filter(spec, x1, severity=1.0, seed=seed, scale=scale_of(x1))
            truth = geometry(spec, *x1.shape[:2], 1.0, seed)
            for v in args.variants:
                reg = register(x1, x2, settings[v])
                err = corner_error(reg.transform, truth, *x1.shape[:2]) / scale_of(x1)
                rows[v].append({"x1": path.name, "ok": reg.ok, "corner_error": err, "seconds": reg.seconds,
                                "reason": reg.reason, **reg.quality})
                if args.figure and not drawn and v == "ecc" and reg.ok and n == len(paths) // 3:
                    figure(args.figure, x1, x2, truth, reg.transform, f"ecc, severity {severity:g}")
                    drawn = True
            print(f"severity {severity:g}: {n + 1}/{len(paths)} pairs", end="\r", file=sys.stderr)
        print(file=sys.stderr)
        run = results["runs"].setdefault(key, {"rows": {}})
        run.update({v: summarise(r) for v, r in rows.items()})
        run["rows"].update(rows)
        results["runs"][key]["measured_at_load"] = load_average()
        for v in args.variants:
            s = results["runs"][key][v]
            e = s["corner_error_px"] or {}
            print(f"{key} {v:>16}: {s['fraction_within_1px']:.0%} within 1 px, {s['flagged']} flagged, "
                  f"median {e.get('median', float('nan')):.3f} px, p95 {e.get('p95', float('nan')):.3f} px, "
                  f"{s['seconds_per_pair']['median']:.2f} s/pair")
    # unrelated pairs: X2 is the photocopy of a frame a third of the list away
    unrelated: dict[str, int] = {v: 0 for v in args.variants}
    k = min(args.unrelated, len(paths))
    for a in range(k):
        x1 = read_image(paths[a])
        x2 = apply_filter("photocopy", read_image(paths[(a + len(paths) // 3) % len(paths)]), severity=1.0,
                          scale=scale_of(x1))
        for v in args.variants:
            unrelated[v] += not register(x1, x2, settings[v]).ok
    flagged = results.setdefault("unrelated", {"pairs": k, "flagged": {}})["flagged"]
    flagged.update({(f"{v} (network units base {base})" if base else v): n for v, n in unrelated.items()})
    print(f"unrelated pairs flagged (of {k}): {unrelated}")
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["load_average_end"] = load_average()
    results["environment"] = environment()
    if args.out:
        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
