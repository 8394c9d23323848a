"""Supervised training benchmark on real data: width-0.25 VGG-DeepLab on CamVid at 240x320, fixed step budget.

Prints val mIoU, mean accuracy and training images/s, and writes them to <out>/benchmark.json.

    python benchmarks/train_camvid.py --iterations 600 --out runs/bench-camvid
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _paths import CAMVID_ROOT
from segadapt.checkpoint import write_json_atomic
from segadapt.config import preset
from segadapt.train import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(CAMVID_ROOT))
    p.add_argument("--iterations", type=int, default=600, help="fixed budget of SGD steps (batch 8)")
    p.add_argument("--budget", type=float, default=0.0, help="optional wall-clock cap in seconds (0 = none)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--out", default="runs/bench-camvid")
    args = p.parse_args()
    if not Path(args.root, "train", "images").is_dir():
        print(f"CamVid not found at {args.root}; pass --root", file=sys.stderr)
        return 2

    cfg = preset("camvid")
    cfg.data.root = args.root
    cfg.train.time_budget_s = args.budget
    cfg.train.iterations = args.iterations
    cfg.train.checkpoint_every = 0
    if args.lr is not None:
        cfg.train.lr = args.lr
    out = Path(args.out)
    m = train(cfg, out)
    v = m["val"]
    result = {
        "dataset": "camvid 240x320 (val: 101 images)",
        "width": cfg.model.width,
        "budget_s": args.budget,
        "steps": m["step"],
        "batch_size": cfg.train.batch_size,
        "train_images_per_s": m["train_images_per_s"],
        "val_miou": v["miou"],
        "val_mean_acc": v["mean_acc"],
        "val_pixel_acc": v["pixel_acc"],
        "environment": m["environment"],
    }
    write_json_atomic(out / "benchmark.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
