"""predict across processes and runtimes: Mpx/s for 1 process x 2 threads vs 2 processes x 1 thread (torchrun,
gloo), and torch vs onnxruntime vs auto, on one large GeoTIFF area; outputs checked equal.

The area (--size x --size px, 3-band uint8, UTM, 0.1 m; synthetic scenes or CamVid frames laid side by side,
as benchmarks/predict_large.py) is written as --tiles x --tiles GeoTIFF tiles, as a survey's archive is
delivered: ranks share inputs, not the rows of one mosaic. Each configuration is one `segadapt predict` in a
subprocess (fresh outputs), timed from launch to exit (model load and process start included) and by the
summed per-image seconds of predictions.json. Masks are compared with the first configuration's: torch under
2 processes must be byte-identical; onnxruntime and auto agree within float rounding (share of equal pixels).
Writes docs/results/predict_scale.json.

    nice python benchmarks/predict_scale.py                        # 8192 px, 4 x 4 tiles (the machine free)
    python benchmarks/predict_scale.py --size 256 --tiles 2 --out /tmp/predict_scale.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _measure import load_average
from _models import camvid_model
from _paths import REPO, recorded
from predict_large import write_raster
from segadapt.checkpoint import write_json_atomic
from segadapt.runtime import environment

LAYOUTS = {"1x2": (1, 2), "2x1": (2, 1)}  # processes x threads each
RUNTIMES = ("torch", "onnxruntime", "auto")


def write_tiles(folder: Path, size: int, tiles: int) -> list[Path]:
    """The area as tiles x tiles GeoTIFFs (each cut from one written mosaic, georeferencing kept)."""
    import rasterio
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    mosaic = folder.parent / "area.tif"
    write_raster(mosaic, size)
    side = -(-size // tiles)
    paths = []
    with rasterio.open(mosaic) as src:
        for i in range(tiles):
            for j in range(tiles):
                win = Window(j * side, i * side, min(side, size - j * side), min(side, size - i * side))
                profile = {**src.profile, "width": int(win.width), "height": int(win.height),
                           "transform": src.window_transform(win)}
                if win.width < 256 or win.height < 256:
                    profile.pop("blockxsize"), profile.pop("blockysize"), profile.pop("tiled")
                path = folder / f"tile_{i}_{j}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(src.read(window=win))
                paths.append(path)
    mosaic.unlink()
    return paths


def run(layout: str, runtime: str, model: Path, tiles: Path, out: Path, flags: list[str]) -> dict:
    procs, threads = LAYOUTS[layout]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m"]
              if procs > 1 else [sys.executable, "-m"])
    cmd = [*launch, "segadapt", "predict", "--model", str(model), "--images", str(tiles), "--out", str(out),
           "--runtime", runtime, "--scale", "1", *flags]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{layout} {runtime} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    summary = json.loads((out / "predictions.json").read_text())
    pixels = sum(int(e["width"]) * int(e["height"]) for e in summary["images"])
    seconds = sum(float(e["seconds"]) for e in summary["images"])
    return {"layout": layout, "processes": procs, "threads_each": threads, "runtime": runtime,
            "chosen": summary.get("runtime", {}).get("chosen"), "images": len(summary["images"]),
            "wall_s": round(wall, 2), "megapixels_per_s_wall": round(pixels / wall / 1e6, 4),
            "image_seconds_summed": round(seconds, 2),
            "megapixels_per_s_per_process": round(pixels / seconds / 1e6, 4) if seconds else None}


def agreement(a: Path, b: Path) -> dict:
    """Masks of two runs: byte-identical files, and the share of equal pixels."""
    import rasterio

    same_bytes, equal, total = True, 0, 0
    for pa in sorted(a.glob("*_mask.tif")):
        pb = b / pa.name
        same_bytes &= pa.read_bytes() == pb.read_bytes()
        with rasterio.open(pa) as x, rasterio.open(pb) as y:
            ma, mb = x.read(1), y.read(1)
        equal, total = equal + int((ma == mb).sum()), total + ma.size
    return {"byte_identical": same_bytes, "equal_pixels": equal / total if total else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192, help="side of the area in pixels")
    p.add_argument("--tiles", type=int, default=4, help="tiles a side the area is delivered as")
    p.add_argument("--model", type=Path, help="model file (default: a fresh width-0.25 VGG-DeepLab)")
    p.add_argument("--flags", default="--tile 512", help="extra predict flags")
    p.add_argument("--workdir", type=Path, help="folder for the rasters and outputs (default: a temp dir)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "predict_scale.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segadapt-predict-scale-", dir=args.workdir))
    try:
        tiles = work / "tiles"
        write_tiles(tiles, args.size, args.tiles)
        model = args.model or camvid_model(work / "model.safetensors")
        load_before = load_average()
        rows, first = [], None
        for runtime in RUNTIMES:
            for layout in LAYOUTS:
                out = work / f"out-{layout}-{runtime}"
                row = run(layout, runtime, model, tiles, out, args.flags.split())
                first = first or out
                row["vs_first"] = agreement(first, out)
                rows.append(row)
                print(json.dumps(row), flush=True)
        torch_2x1 = next(r for r in rows if r["runtime"] == "torch" and r["layout"] == "2x1")
        result = {"date": time.strftime("%Y-%m-%d"), "size": [args.size, args.size], "tiles": args.tiles ** 2,
                  "model": recorded(args.model) if args.model else "fresh width-0.25 VGG-DeepLab (weights do not "
                  "change speed)", "flags": args.flags, "first": "1x2 torch", "runs": rows,
                  "torch_processes_byte_identical": torch_2x1["vs_first"]["byte_identical"],
                  "min_equal_pixels": min(r["vs_first"]["equal_pixels"] for r in rows),
                  "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_average(),
                  "environment": environment()}
        write_json_atomic(args.out, result)
        print(f"wrote {args.out}")
        ok = result["torch_processes_byte_identical"] and result["min_equal_pixels"] > 0.999
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
