"""Exported models against PyTorch on CamVid val: argmax agreement, max abs logit difference, images/s.

Exports the model as ONNX and TorchScript with `segadapt.export.export` (each file is verified before it is
kept), then runs every val frame (base-size resized, float RGB 0..255, batch 1) through PyTorch eager (the
same normalising wrapper, NCHW as exported and channels_last as `segadapt predict` runs it), the reloaded
TorchScript and onnxruntime (CPU, as many threads as torch), interleaved frame by frame in rotating order.
Agreement and logit differences are against PyTorch NCHW. Writes docs/results/export_speed.json.

    nice python benchmarks/export_speed.py --model RUN [--images 101]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from _measure import load_average
from _models import camvid_model, camvid_val_files
from _paths import CAMVID_ROOT, REPO, recorded
from segadapt.checkpoint import write_json_atomic
from segadapt.data.base import read_image
from segadapt.export import Normalised, export, samples_at_scale
from segadapt.predict import load
from segadapt.runtime import environment


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="model file or run (default: a fresh width-0.25 VGG-DeepLab)")
    p.add_argument("--images", type=int, default=101, help="CamVid val frames (101 = all)")
    p.add_argument("--root", type=Path, default=CAMVID_ROOT)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "export_speed.json")
    args = p.parse_args()
    import onnxruntime as ort

    files = camvid_val_files(args.root, args.images)
    frames = [read_image(f) for f in files]
    with tempfile.TemporaryDirectory(prefix="segadapt-export-") as tmp:
        work = Path(tmp)
        model_path = args.model or camvid_model(work / "model.safetensors")
        model, meta = load(model_path)
        data = meta["config"]["data"]
        mean, std, base = data["mean"], data["std"], data["base_size"]
        reports = {fmt: export(model, meta, mean, std, base, fmt, work / f"model.{fmt}", frames[:2])
                   for fmt in ("onnx", "torchscript")}
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(work / "model.onnx"), options, providers=["CPUExecutionProvider"])
        scripted = torch.jit.load(str(work / "model.torchscript"))
        net = Normalised(model, mean, std).eval()
        fast = Normalised(copy.deepcopy(model).to(memory_format=torch.channels_last), mean, std).eval()
        runners = {"pytorch": lambda x: net(x),
                   "pytorch_channels_last": lambda x: fast(x.contiguous(memory_format=torch.channels_last)),
                   "torchscript": lambda x: scripted(x),
                   "onnxruntime": lambda x: torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])}
        result = compare(runners, samples_at_scale(frames, base))
    result = {"date": time.strftime("%Y-%m-%d"), "images": len(files), "frames": "CamVid val, base-size resized",
              "model": recorded(args.model) if args.model else "fresh width-0.25 VGG-DeepLab", **result,
              "verification": {f: r["verification"] for f, r in reports.items()},
              "threads": torch.get_num_threads(), "load_average": load_average(), "environment": environment()}
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))
    print(f"wrote {args.out}")
    return 0


@torch.inference_mode()
def compare(runners: dict, samples: list[torch.Tensor]) -> dict:
    """Agreement with PyTorch's argmax and max abs logit difference per runtime, and images/s of each."""
    names = list(runners)
    seconds = dict.fromkeys(names, 0.0)
    same = {n: 0 for n in names[1:]}
    worst = {n: 0.0 for n in names[1:]}
    for x in samples[:1]:  # warm-up
        for n in names:
            runners[n](x)
    pixels = 0
    for i, x in enumerate(samples):
        out = {}
        for n in names[i % len(names):] + names[: i % len(names)]:
            t = time.perf_counter()
            out[n] = runners[n](x)
            seconds[n] += time.perf_counter() - t
        ref = out["pytorch"]
        pixels += ref.shape[2] * ref.shape[3]
        for n in names[1:]:
            same[n] += int((out[n].argmax(1) == ref.argmax(1)).sum())
            worst[n] = max(worst[n], float((out[n] - ref).abs().max()))
    return {"size": list(samples[0].shape[2:]), "pixels": pixels,
            "images_per_s": {n: round(len(samples) / s, 3) for n, s in seconds.items()},
            "agreement": {n: same[n] / pixels for n in same}, "max_abs_logit_diff": worst}


if __name__ == "__main__":
    raise SystemExit(main())
