"""A 20000x20000 GeoTIFF predicted with bounded memory: peak resident memory and wall time of `segadapt predict`.

Writes a 3-band uint8 GeoTIFF (tiled, with a UTM CRS and a 0.1 m transform; the pixels are CamVid frames
laid side by side, or synthetic scenes without CamVid) into a temporary folder, predicts it with a
width-0.25 VGG-DeepLab through the CLI in a subprocess under `/usr/bin/time -v` (Debian's `time`), and reads
the mask back to check its CRS, transform and size. Records wall time, peak RSS, the tiles chosen and the
machine's load in docs/results/predict_large.json. The raster is removed afterwards; nothing is committed.

    nice python benchmarks/predict_large.py                 # 20000x20000, default memory budget
    python benchmarks/predict_large.py --size 2000 --out /tmp/predict_large.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _measure import load_average
from _models import camvid_model
from _paths import CAMVID_ROOT, REPO, recorded
from segadapt.checkpoint import write_json_atomic
from segadapt.runtime import environment

LIMIT_MB = 2048
STRIP = 512


def frames() -> list[np.ndarray]:
    """The pictures the raster is tiled with."""
    from segadapt.data.base import read_image

    files = sorted((CAMVID_ROOT / "val" / "images").glob("*.jpg"))[::10]
    if files:
        return [read_image(f) for f in files]
    from segadapt.data.synthetic import SyntheticScenes

    return [SyntheticScenes(1, (360, 480), seed=i).load_image(0) for i in range(8)]


def write_raster(path: Path, size: int) -> None:
    """size x size x 3 uint8, written strip by strip (the benchmark itself stays small in memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    pics = frames()
    fh, fw = pics[0].shape[:2]
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8", "tiled": True,
               "blockxsize": 512, "blockysize": 512, "crs": "EPSG:32633",
               "transform": from_origin(500000.0, 4200000.0, 0.1, 0.1), "BIGTIFF": "IF_SAFER"}
    with rasterio.open(path, "w", **profile) as ds:
        for y in range(0, size, STRIP):
            h = min(STRIP, size - y)
            rows = np.empty((h, size, 3), np.uint8)
            for r in range(h):
                row = (y + r) // fh
                cells = [pics[(row * 7 + c) % len(pics)][(y + r) % fh] for c in range(-(-size // fw))]
                rows[r] = np.concatenate(cells, axis=0)[:size]
            ds.write(rows.transpose(2, 0, 1), window=Window(0, y, size, h))


def parse_time_v(text: str) -> dict[str, float]:
    """Peak RSS, wall, user and system seconds from GNU time's -v report."""
    def field(name: str) -> str:
        m = re.search(rf"{re.escape(name)}: (.+)", text)
        if not m:
            raise SystemExit(f"/usr/bin/time -v printed no {name!r}; is it GNU time? (apt-get install -y time)")
        return m.group(1).strip()

    wall = [float(p) for p in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    seconds = sum(v * 60 ** i for i, v in enumerate(reversed(wall)))
    return {"peak_rss_mb": int(field("Maximum resident set size (kbytes)")) / 1024, "wall_s": seconds,
            "user_s": float(field("User time (seconds)")), "system_s": float(field("System time (seconds)")),
            "cpu_percent": float(field("Percent of CPU this job got").rstrip("%"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=20000, help="raster side in pixels")
    p.add_argument("--model", type=Path, help="model file (default: a fresh width-0.25 VGG-DeepLab)")
    p.add_argument("--flags", default="", help="extra predict flags, e.g. '--tile 512 --memory-mb 768'")
    p.add_argument("--workdir", type=Path, help="folder for the raster and outputs (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the raster and outputs")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "predict_large.json")
    args = p.parse_args()
    if not Path("/usr/bin/time").is_file():
        print("needs GNU time at /usr/bin/time: apt-get install -y time", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="segadapt-predict-large-", dir=args.workdir))
    try:
        raster = work / "large.tif"
        t = time.perf_counter()
        write_raster(raster, args.size)
        written = time.perf_counter() - t
        print(f"wrote {args.size}x{args.size} raster in {written:.0f} s ({raster.stat().st_size / 2**20:.0f} MiB)")
        model = args.model or camvid_model(work / "model.safetensors")
        out = work / "out"
        # --scale 1: the mosaic at its stored size, as the committed results were measured (a model recording
        # its frames' pixel factor would resize it by that)
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "segadapt", "predict", "--model", str(model),
               "--images", str(raster), "--out", str(out), "--scale", "1", *args.flags.split()]
        load_before = load_average()
        log = work / "predict.log"
        with open(log, "w") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ}).returncode
        text = log.read_text()
        if code != 0:
            print(text[-3000:], file=sys.stderr)
            return code
        measured = parse_time_v(text)
        result = {"date": time.strftime("%Y-%m-%d"), "size": [args.size, args.size], "bands": 3, "dtype": "uint8",
                  "model": recorded(args.model) if args.model else "fresh width-0.25 VGG-DeepLab (weights do not "
                  "change speed or memory)", "flags": args.flags, "raster_written_s": round(written, 1),
                  **measured, "limit_mb": LIMIT_MB, "under_limit": measured["peak_rss_mb"] < LIMIT_MB,
                  "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_average(),
                  "environment": environment()}
        result.update(check_outputs(raster, out))
        write_json_atomic(args.out, result)
        print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))
        print(f"wrote {args.out}")
        return 0 if result["under_limit"] and result["georeferencing_kept"] else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def check_outputs(raster: Path, out: Path) -> dict:
    """The mask read back: same CRS, transform and size as the input; the tiles predict chose."""
    import rasterio

    with rasterio.open(raster) as src, rasterio.open(out / "large_mask.tif") as mask:
        kept = mask.crs == src.crs and mask.transform == src.transform and mask.shape == src.shape
    entry = json.loads((out / "predictions.json").read_text())["images"][0]
    return {"georeferencing_kept": kept, "tile": entry["tile"], "overlap": entry["overlap"], "tiles": entry["tiles"],
            "batch": entry["batch"], "predict_seconds": entry["seconds"],
            "megapixels_per_s": round(raster_pixels(entry) / entry["seconds"] / 1e6, 3)}


def raster_pixels(entry: dict) -> int:
    return int(entry["width"]) * int(entry["height"])


if __name__ == "__main__":
    raise SystemExit(main())
