"""Throughput of the native shift filters against the `gegl` CLI on the same CamVid frames, in one run.

For each filter at GEGL's default parameters: images/s natively (single process, after one warm-up call that
builds cached operators) and through `gegl` (one CLI process per image, PNG in/out, as the gegl backend runs),
printed with the speed-up ratio of the best of --repeat passes and of their medians (on shared cores the
best pass is the least disturbed one; the median shows how much a busy machine moves the ratio). Without
`gegl` on PATH only the native numbers are printed.

    python benchmarks/shift_speed.py --images 8
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from _measure import load_average
from segadapt.checkpoint import write_json_atomic
from segadapt.shifts import FILTERS, run_gegl

CAMVID_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid" / "train" / "images"


def load_frames(folder: Path, count: int) -> list[np.ndarray]:
    paths = sorted(folder.glob("*.jpg"))[:count]
    if not paths:
        raise SystemExit(f"no .jpg images in {folder} (pass --images-dir)")
    return [np.ascontiguousarray(cv2.imread(str(p))[:, :, ::-1]) for p in paths]


def images_per_s(fn, frames: list[np.ndarray], repeat: int) -> list[float]:
    """Images/s of each of `repeat` passes over the frames."""
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for img in frames:
            fn(img)
        rates.append(len(frames) / (time.perf_counter() - t0))
    return rates


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8, help="number of CamVid frames to time (default 8)")
    p.add_argument("--images-dir", type=Path, default=CAMVID_IMAGES)
    p.add_argument("--repeat", type=int, default=3, help="timed passes per backend; the best is reported")
    p.add_argument("--filters", nargs="+", default=sorted(FILTERS), choices=sorted(FILTERS))
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    frames = load_frames(args.images_dir, args.images)
    have_gegl = shutil.which("gegl") is not None
    h, w = frames[0].shape[:2]
    print(f"{len(frames)} frames of {w}x{h}; gegl CLI: {'yes' if have_gegl else 'not installed'}")
    print(f"{'filter':<10} {'native img/s':>13} {'gegl img/s':>11} {'native/gegl':>12} {'(medians)':>10}")
    results = []
    for name in args.filters:
        fn = FILTERS[name]
        fn(frames[0])  # warm-up: cached blur operators, imports
        native_runs = images_per_s(fn, frames, args.repeat)
        gegl_runs = (images_per_s(lambda img, name=name: run_gegl(img, name), frames, args.repeat)
                     if have_gegl else [])
        native, gegl = max(native_runs), max(gegl_runs, default=None)
        ratio = native / gegl if gegl else None
        ratio_median = statistics.median(native_runs) / statistics.median(gegl_runs) if gegl_runs else None
        gegl_txt = f"{gegl:11.2f}" if gegl else f"{'-':>11}"
        ratio_txt = f"{ratio:11.1f}x {ratio_median:9.1f}x" if ratio else f"{'-':>12}"
        print(f"{name:<10} {native:13.2f} {gegl_txt} {ratio_txt}")
        results.append({"filter": name, "native_images_per_s": native, "gegl_images_per_s": gegl, "ratio": ratio,
                        "ratio_of_medians": ratio_median, "native_runs": native_runs, "gegl_runs": gegl_runs})
    if args.json:
        write_json_atomic(args.json, {"frames": len(frames), "size": [w, h], "repeat": args.repeat,
                                      "load_avg_1min": load_average(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
