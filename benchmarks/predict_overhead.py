"""What `segadapt predict` costs on top of the network: images/s of the predict path against the bare forward.

On CamVid val, in one run and interleaved image by image (alternating which goes first), so a busy machine
slows both alike:
- predict: what the CLI runs for each image (`predict_job.predict_file`): decode the JPEG, base-size
  resize, plan (the whole frame is one tile), normalise, forward, softmax, probabilities resized back to
  360x480, argmax and confidence, class counts, the palette-PNG mask and the image's record written
  atomically;
- bare: the model's forward alone on the same frames, decoded, resized and normalised beforehand.
overhead = 1 - predict images/s / bare images/s (target: at most 15%). Writes docs/results/predict_overhead.json.

    nice python benchmarks/predict_overhead.py [--model RUN] [--images 101]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _measure import load_average
from _models import camvid_model, camvid_val_files
from _paths import CAMVID_ROOT, REPO, recorded
from segadapt.base_size import base_scale
from segadapt.checkpoint import write_json_atomic
from segadapt.config import DataConfig, from_dict
from segadapt.data.base import read_image
from segadapt.data.transforms import resize_image
from segadapt.predict import Predictor, load
from segadapt.predict_job import RECORDS, PredictOptions, predict_file
from segadapt.runtime import environment


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="model file or run (default: a fresh width-0.25 VGG-DeepLab; speed "
                   "does not depend on the weights)")
    p.add_argument("--images", type=int, default=101, help="CamVid val frames (101 = all)")
    p.add_argument("--root", type=Path, default=CAMVID_ROOT)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "predict_overhead.json")
    args = p.parse_args()
    files = camvid_val_files(args.root, args.images)
    with tempfile.TemporaryDirectory(prefix="segadapt-overhead-") as tmp:
        work = Path(tmp)
        model_path = args.model or camvid_model(work / "model.safetensors")
        model, meta = load(model_path)
        data = from_dict(DataConfig, meta["config"]["data"], "model metadata")
        pred = Predictor.from_meta(model, meta, data, torch.device("cpu"))
        inputs = [bare_input(pred, f) for f in files]
        opts = PredictOptions()
        out = work / "out"
        (out / RECORDS).mkdir(parents=True)

        def bare(i: int) -> None:
            with torch.inference_mode():
                pred.model(inputs[i])

        def predict(i: int) -> None:
            entries.append(predict_file(pred, files[i], out, opts, {"call": len(entries)}, progress=False)[0])

        entries: list[dict] = []
        bare(0), predict(0)  # warm-up: oneDNN kernels, the activation probe
        times = {"bare": [], "predict": []}
        load_before = load_average()
        for i in range(len(files)):
            order = ("bare", "predict") if i % 2 == 0 else ("predict", "bare")
            for name in order:
                t = time.perf_counter()
                (bare if name == "bare" else predict)(i)
                times[name].append(time.perf_counter() - t)
        entry = entries[-1]
    rate = {k: len(v) / sum(v) for k, v in times.items()}
    result = {"date": time.strftime("%Y-%m-%d"), "images": len(files), "frame": "CamVid val 480x360 JPEG",
              "network_size": entry["network_size"], "tiles_per_image": entry["tiles"],
              "model": recorded(args.model) if args.model else "fresh width-0.25 VGG-DeepLab",
              "bare_images_per_s": round(rate["bare"], 3), "predict_images_per_s": round(rate["predict"], 3),
              "overhead": round(1 - rate["predict"] / rate["bare"], 4),
              "median_s": {k: round(float(np.median(v)), 4) for k, v in times.items()},
              "target_overhead": 0.15, "threads": torch.get_num_threads(), "load_average_before": load_before,
              "load_average_after": load_average(), "environment": environment()}
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))
    print(f"wrote {args.out}")
    return 0


def bare_input(pred: Predictor, path: Path) -> torch.Tensor:
    """The frame as the network sees it: base-size resize and normalisation done once, outside the timing."""
    image = read_image(path)
    image = resize_image(image, base_scale(*image.shape[:2], pred.base_size))
    return pred.normalise(np.ascontiguousarray(image[None], np.float32))


if __name__ == "__main__":
    raise SystemExit(main())
