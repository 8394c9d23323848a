"""A CamVid-classed VGG-DeepLab model file for the predict and export benchmarks, when no trained one is given.

Speed and memory do not depend on the weights, so the large-raster and overhead benchmarks can run on a
freshly initialised network; figures that show masks need a trained model (--model).
"""

from __future__ import annotations

from pathlib import Path

import torch

from segadapt.checkpoint import save_model
from segadapt.config import preset, to_dict
from segadapt.data.palettes import CAMVID
from segadapt.models import build_model

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
                  "bicyclist")


def camvid_val_files(root: Path, count: int) -> list[Path]:
    """The first `count` CamVid val frames under `root`, in name order; exits with one line when there are none."""
    files = sorted((root / "val" / "images").glob("*.jpg"))[:count]
    if not files:
        raise SystemExit(f"no CamVid val frames under {root}; pass --root")
    return files


def camvid_model(path: Path, width: float = 0.25, seed: int = 0) -> Path:
    """A fresh VGGDeepLab with the camvid preset's data settings (base size 240), saved as a model file."""
    cfg = preset("camvid")
    cfg.model.width = width
    torch.manual_seed(seed)
    model = build_model("vgg16_deeplab", len(CAMVID_CLASSES), width)
    meta = {"arch": "vgg16_deeplab", "width": width, "num_classes": len(CAMVID_CLASSES),
            "class_names": list(CAMVID_CLASSES), "ignore_index": 11, "palette": [list(c) for c in CAMVID],
            "dataset": "camvid", "step": 0, "config": to_dict(cfg)}
    save_model(path, model, meta)
    return path
