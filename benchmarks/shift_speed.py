"""Native shift filters against GEGL's `gegl` CLI on the same frame at 480x360, 1920x1080 and 7680x4320.

For each size (a CamVid frame upscaled with cv2.resize, written as a PNG) and filter at GEGL's defaults:

* native: seconds per call (median of --repeat calls in one child process that loads the PNG once) and that
  process's peak resident memory (interpreter and libraries included);
* gegl: the CLI on the same PNG, as the gegl backend runs it (process start, PNG decode, filter, crop, PNG
  encode), and a `gegl:nop` run on the same PNG, which costs the same start and I/O; GEGL's compute is
  CLI - nop (photocopy writes a 16-bit grey PNG, cheaper than nop's 16-bit RGB, so this slightly favours GEGL);
  peak resident memory of the CLI process;
* gegl, twice: the same CLI run with the filter chained twice (`-- gegl:<filter> gegl:<filter>`). The second
  application is one more filter's compute and nothing else (same process, same input decode, same output
  format), so GEGL's compute is also CLI(2 filters) - CLI(1 filter), which needs no nop whose output format
  differs (photocopy writes a 16-bit grey PNG, cheaper to encode than nop's 16-bit RGB: CLI - nop then
  undercounts photocopy, down to nothing at 1920x1080);
* gegl, matched: a near-free op whose output PNG has the filter's own format (photocopy: `gegl:gray`, 16-bit
  grey; ripple and cubism: `gegl:opacity value=1`, 16-bit RGBA; nop writes 16-bit RGB), so CLI - matched
  removes start, decode and the same encode, and leaves the filter with its format conversions;
* ratios: CLI / native, (CLI - nop), (CLI - matched) and (CLI twice - CLI) over native, from medians; the kinds
  of run are
  interleaved so a machine that gets busier or quieter affects all alike. Where a difference is within the
  spread of the runs it subtracts (small frames: GEGL's compute is lost in its start-up), its ratio is null
  rather than a ratio of noise.

`--raster` instead writes a 20000x20000 RGB GeoTIFF (a CamVid frame upscaled; into a temporary folder, deleted
after) and shifts it at severity 0.5 with every filter through `segadapt.shifts.raster.shift_raster`, each in
a child process, recording seconds, peak resident memory and whether CRS and transform were kept.

    python benchmarks/shift_speed.py                 # sizes and ratios -> docs/results/shift_speed.json
    python benchmarks/shift_speed.py --raster        # the 20000x20000 GeoTIFF -> docs/results/shift_raster.json
    python benchmarks/shift_speed.py --quick         # 480x360 only, 2 repeats (a sanity run)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from _paths import CAMVID_ROOT, REPO  # light, as _process
from _process import run_measured  # light: no torch in this script's children
from segadapt.shifts.gegl import cli_args  # light: the native child must not pull in torch (its memory counts)

CAMVID_IMAGES = CAMVID_ROOT / "train" / "images"
SIZES = {"480x360": (480, 360), "1920x1080": (1920, 1080), "7680x4320": (7680, 4320)}
REPEATS = {"480x360": 5, "1920x1080": 3, "7680x4320": 1}
FILTERS = ("photocopy", "ripple", "cubism")
GEGL_DEFAULTS: dict[str, dict[str, Any]] = {"photocopy": {}, "ripple": {}, "cubism": {"seed": 0}}
MATCHED = {"photocopy": ["gegl:gray"], "ripple": ["gegl:opacity", "value=1.0"], "cubism": ["gegl:opacity", "value=1.0"]}


def child_native(name: str, png: str, repeat: int) -> None:
    """--child mode: time `repeat` native calls on the PNG (after a warm-up on a 64 px corner); print the seconds."""
    from segadapt.shifts import FILTERS as NATIVE

    image = np.ascontiguousarray(cv2.imread(png, cv2.IMREAD_COLOR)[:, :, ::-1])
    NATIVE[name](np.ascontiguousarray(image[:64, :64]), **GEGL_DEFAULTS[name])  # warm-up: imports, blur kernels
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        NATIVE[name](image, **GEGL_DEFAULTS[name])
        times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times}))


def child_raster(name: str, src: str, dst: str) -> None:
    """--child-raster mode: shift the GeoTIFF at severity 0.5; print whether CRS and transform were kept."""
    import rasterio

    from segadapt.shifts.raster import shift_raster

    t0 = time.perf_counter()
    shift_raster(src, dst, name, 0.5, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        kept = a.crs == b.crs and a.transform == b.transform and (a.width, a.height) == (b.width, b.height)
    print(json.dumps({"seconds": seconds, "crs_transform_kept": kept}))


def frame(width: int, height: int, images: Path) -> np.ndarray:
    paths = sorted(images.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no .jpg images in {images} (pass --images-dir)")
    return cv2.resize(cv2.imread(str(paths[0]), cv2.IMREAD_COLOR), (width, height), interpolation=cv2.INTER_CUBIC)


def _difference(runs: list[float], subtracted: list[float]) -> tuple[float, float]:
    """Median of `runs` minus median of `subtracted`, and the spread of `subtracted` (0 from a single run)."""
    spread = max(subtracted) - min(subtracted) if len(subtracted) > 1 else 0.0
    return statistics.median(runs) - statistics.median(subtracted), spread


def _over(compute: float, noise: float, native: float) -> float | None:
    """GEGL's compute over native's time; None where the compute is within the noise of what was subtracted
    (a difference of noise is not a compute time, so no ratio is claimed)."""
    return compute / native if compute > noise else None


def _ratio(value: float | None) -> str:
    return "  n/a " if value is None else f"{value:6.2f}x"


def gegl_cmd(png: Path, out: Path, op: str, width: int, height: int, times: int = 1) -> list[str]:
    if op == "nop":
        ops = ["gegl:nop"]
    elif op.startswith("matched:"):
        ops = MATCHED[op.split(":", 1)[1]]
    else:
        ops = cli_args(op, GEGL_DEFAULTS[op]) * times
    crop = ["gegl:crop", "x=0", "y=0", f"width={width}", f"height={height}"]
    return [shutil.which("gegl") or "gegl", str(png), "-o", str(out), "--", *ops, *crop]


def bench_size(
    label: str, repeat: int, images: Path, tmp: Path, have_gegl: bool, filters: list[str]
) -> list[dict[str, Any]]:
    width, height = SIZES[label]
    png = tmp / f"frame-{label}.png"
    cv2.imwrite(str(png), frame(width, height, images))
    out = tmp / "out.png"
    me = [sys.executable, str(Path(__file__).resolve())]
    nop: list[float] = []
    nop_mb = 0.0
    rows = []
    for name in filters:
        native: list[float] = []
        native_mb = gegl_mb = 0.0
        cli: list[float] = []
        twice: list[float] = []
        matched: list[float] = []
        for _ in range(repeat):  # interleaved: native, gegl, gegl twice, matched, nop
            _, mb, text = run_measured([*me, "--child", name, str(png), "1"])
            native += json.loads(text)["times"]
            native_mb = max(native_mb, mb)
            if have_gegl:
                wall, mb, _ = run_measured(gegl_cmd(png, out, name, width, height))
                cli.append(wall)
                gegl_mb = max(gegl_mb, mb)
                twice.append(run_measured(gegl_cmd(png, out, name, width, height, times=2))[0])
                matched.append(run_measured(gegl_cmd(png, out, f"matched:{name}", width, height))[0])
                wall, mb, _ = run_measured(gegl_cmd(png, out, "nop", width, height))
                nop.append(wall)
                nop_mb = max(nop_mb, mb)
        t_native = statistics.median(native)
        row: dict[str, Any] = {"size": label, "filter": name, "native_s": t_native, "native_runs_s": native,
                               "native_peak_mb": round(native_mb, 1)}
        if have_gegl:
            t_cli, t_nop = statistics.median(cli), statistics.median(nop)
            compute, noise = _difference(cli, nop)
            chained, chain_noise = _difference(twice, cli)  # one more application of the filter, nothing else
            matched_compute, matched_noise = _difference(cli, matched)
            row.update({"gegl_cli_s": t_cli, "gegl_cli_runs_s": cli, "gegl_nop_s": t_nop, "gegl_nop_runs_s": nop,
                        "gegl_compute_s": compute, "gegl_nop_spread_s": noise, "vs_cli": t_cli / t_native,
                        "vs_compute": _over(compute, noise, t_native),
                        "gegl_twice_runs_s": twice, "gegl_compute_chained_s": chained,
                        "gegl_cli_spread_s": chain_noise, "gegl_matched_op": " ".join(MATCHED[name]),
                        "gegl_matched_runs_s": matched, "gegl_compute_matched_s": matched_compute,
                        "vs_compute_matched": _over(matched_compute, matched_noise, t_native),
                        "vs_compute_chained": _over(chained, chain_noise, t_native),
                        "gegl_peak_mb": round(gegl_mb, 1), "gegl_nop_peak_mb": round(nop_mb, 1)})
        rows.append(row)
        ratio = (f"{row['vs_cli']:6.2f}x CLI {_ratio(row.get('vs_compute'))} compute (nop) "
                 f"{_ratio(row.get('vs_compute_matched'))} (matched) "
                 f"{_ratio(row.get('vs_compute_chained'))} (chained)") if have_gegl else ""
        gegl_txt = f"gegl {row['gegl_cli_s']:7.3f} s (nop {row['gegl_nop_s']:.3f})" if have_gegl else ""
        print(f"{label:>10} {name:<10} native {t_native:7.3f} s {native_mb:7.0f} MB  {gegl_txt}  {ratio}",
              flush=True)
    return rows


def bench_raster(size: int, images: Path, tmp: Path, filters: list[str]) -> dict[str, Any]:
    import rasterio
    from rasterio.transform import Affine

    src = tmp / f"d1-{size}.tif"
    tile = frame(min(size, 4000), min(size, 4000), images)[:, :, ::-1]  # RGB, repeated across the raster
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": Affine(0.3, 0.0, 500000.0, 0.0, -0.3, 4500000.0), "tiled": True, "blockxsize": 512,
               "blockysize": 512}
    t0 = time.perf_counter()
    with rasterio.open(src, "w", **profile) as dst:
        step = tile.shape[0]
        for r in range(0, size, step):
            rows = min(step, size - r)
            band = np.tile(tile[:rows], (1, size // tile.shape[1] + 1, 1))[:, :size]
            dst.write(band.transpose(2, 0, 1), window=rasterio.windows.Window(0, r, size, rows))
    print(f"wrote {size}x{size} GeoTIFF in {time.perf_counter() - t0:.1f} s", flush=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    rows = []
    for name in filters:
        dst_path = tmp / f"d2-{name}.tif"
        wall, mb, text = run_measured([*me, "--child-raster", name, str(src), str(dst_path)])
        info = json.loads(text)
        rows.append({"filter": name, "severity": 0.5, "seconds": info["seconds"], "process_s": wall,
                     "peak_mb": round(mb, 1), "crs_transform_kept": info["crs_transform_kept"]})
        print(f"raster {size}x{size} {name:<10} {info['seconds']:8.1f} s  peak {mb:7.0f} MB  "
              f"CRS/transform kept: {info['crs_transform_kept']}", flush=True)
        dst_path.unlink()
    return {"size": [size, size], "results": rows}


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_avg_1min": load_average(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images-dir", type=Path, default=CAMVID_IMAGES)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeat", type=int, help="calls per filter and size (default: 5, 3, 1 by size)")
    p.add_argument("--quick", action="store_true", help="480x360 only, 2 repeats; with --raster a 2000 px raster")
    p.add_argument("--raster", action="store_true", help="the 20000x20000 GeoTIFF run instead of the sizes")
    p.add_argument("--raster-size", type=int, default=20000)
    p.add_argument("--filters", nargs="+", default=list(FILTERS), choices=FILTERS,
                   help="filters to run (--raster: results for the others are kept from the existing JSON)")
    p.add_argument("--out", type=Path, help="results JSON (default docs/results/shift_speed.json or "
                                           "shift_raster.json; --quick writes nothing unless given)")
    p.add_argument("--child", nargs=3, metavar=("FILTER", "PNG", "REPEAT"), help=argparse.SUPPRESS)
    p.add_argument("--child-raster", nargs=3, metavar=("FILTER", "SRC", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_native(args.child[0], args.child[1], int(args.child[2]))
        return 0
    if args.child_raster:
        child_raster(*args.child_raster)
        return 0
    default_out = REPO / "docs" / "results" / ("shift_raster.json" if args.raster else "shift_speed.json")
    out = args.out or (None if args.quick else default_out)
    before = machine()
    with tempfile.TemporaryDirectory(prefix="segadapt-shift-bench-") as tmp:
        if args.raster:
            size = 2000 if args.quick else args.raster_size
            raster = bench_raster(size, args.images_dir, Path(tmp), args.filters)
            if out and out.exists() and set(args.filters) != set(FILTERS):  # a partial rerun: keep the others
                kept = json.loads(out.read_text())["raster"]["results"]
                raster["results"] = [r for r in kept if r["filter"] not in args.filters] + raster["results"]
            result: dict[str, Any] = {"machine": before, "raster": raster}
        else:
            have_gegl = shutil.which("gegl") is not None
            sizes = ["480x360"] if args.quick else args.sizes
            print(f"gegl CLI: {'yes' if have_gegl else 'not installed (native only)'}; {os.cpu_count()} CPUs, "
                  f"load {before['load_avg_1min']}", flush=True)
            rows = []
            for label in sizes:
                repeat = args.repeat or (2 if args.quick else REPEATS[label])
                rows += bench_size(label, repeat, args.images_dir, Path(tmp), have_gegl, args.filters)
            result = {"machine": before, "params": "GEGL defaults (cubism seed 0)", "results": rows}
    result["load_avg_1min_after"] = load_average()
    if out:
        from segadapt.checkpoint import write_json_atomic  # imports torch: only in the parent, at the end

        write_json_atomic(out, result)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
