"""Tiled against whole-image prediction on CamVid val, and the figure of a predicted frame.

For each of --images val frames (spread over the split), the model predicts the frame whole and then cut
into tiles (sizes and overlaps at the network's scale, 240x320 for the camvid preset), and the fraction of
the frame's pixels whose class is the same is recorded. The same is done for 2x2 mosaics of val frames
(480x640 at the network's scale, larger than VGG-DeepLab-LargeFOV's ~420-pixel receptive field). Writes
docs/results/predict_tiling.json and docs/figures/predict-camvid.png: a frame, its mask over it, the
confidence map and where one tiling disagrees with the whole-frame prediction.

    nice python benchmarks/predict_tiling.py --model RUN [--images 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _measure import load_average
from _paths import CAMVID_ROOT, REPO, recorded
from segadapt.checkpoint import write_json_atomic
from segadapt.config import DataConfig, from_dict
from segadapt.data.base import read_image, spread_indices
from segadapt.data.rasters import ArrayReader
from segadapt.predict import Predictor, load, predict_image
from segadapt.runtime import environment

FRAME_TILINGS = [(304, 152), (288, 144), (256, 128), (256, 64), (224, 112), (192, 96)]
MOSAIC_TILINGS = [(512, 256), (512, 128), (448, 224), (384, 192), (384, 96), (256, 128)]
FIGURE_TILING = (256, 128)


class Capture:
    """Labels and confidence of every row predict_image finishes."""

    def __init__(self, h: int, w: int) -> None:
        self.labels, self.conf = np.zeros((h, w), np.int64), np.zeros((h, w), np.float32)
        self.plan = None

    def write(self, y, labels, conf, entropy, valid, rgb) -> None:
        self.labels[y:y + len(labels)], self.conf[y:y + len(labels)] = labels, conf


def predicted(pred: Predictor, image: np.ndarray, **kw) -> Capture:
    c = Capture(*image.shape[:2])
    c.plan = predict_image(pred, ArrayReader(image), c, progress=False, **kw).plan
    return c


def agreements(pred: Predictor, images: list[np.ndarray], tilings: list[tuple[int, int]], scale: float) -> list[dict]:
    """Per tiling, the fraction of pixels whose class matches the whole-image prediction (mean, worst image)."""
    rows = []
    wholes = [predicted(pred, im, scale=scale).labels for im in images]
    for tile, overlap in tilings:
        same, plans = [], []
        for im, whole in zip(images, wholes):
            tiled = predicted(pred, im, tile=tile, overlap=overlap, scale=scale)
            same.append(float((tiled.labels == whole).mean()))
            plans.append(tiled.plan)
        plan = plans[0].to_dict()
        rows.append({"tile": tile, "overlap": overlap, "tile_hw": plan["tile"],
                     "overlap_actual": plan["overlap_actual"], "tiles": plan["tiles"],
                     "mean_agreement": float(np.mean(same)), "min_agreement": float(np.min(same))})
        print(f"tile {tile} overlap {overlap}: agreement mean {np.mean(same):.4f} min {np.min(same):.4f}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a trained model file or run (masks are shown)")
    p.add_argument("--images", type=int, default=10, help="val frames to compare on (spread over the split)")
    p.add_argument("--root", type=Path, default=CAMVID_ROOT)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "predict_tiling.json")
    p.add_argument("--figure", type=Path, default=REPO / "docs" / "figures" / "predict-camvid.png")
    args = p.parse_args()
    files = sorted((args.root / "val" / "images").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no CamVid val frames under {args.root}; pass --root")
    picked = [files[i] for i in spread_indices(len(files), args.images)]
    model, meta = load(args.model)
    data = from_dict(DataConfig, meta["config"]["data"], "model metadata")
    pred = Predictor.from_meta(model, meta, data, torch.device("cpu"))
    frames = [read_image(f) for f in picked]
    h, w = frames[0].shape[:2]
    scale = data.base_size / min(h, w) if data.base_size else 1.0  # mosaics at the frames' scale, not shrunk
    mosaics = [np.block([[frames[i][..., None], frames[i + 1][..., None]],
                         [frames[i + 2][..., None], frames[i + 3][..., None]]]).reshape(2 * h, 2 * w, 3)
               for i in range(0, len(frames) - 3, 4)]
    t = time.perf_counter()
    result = {"date": time.strftime("%Y-%m-%d"), "model": recorded(args.model), "frames": [f.name for f in picked],
              "frame_network_size": [round(h * scale), round(w * scale)],
              "frame": agreements(pred, frames, FRAME_TILINGS, scale),
              "mosaic_network_size": [round(2 * h * scale), round(2 * w * scale)],
              "mosaics": len(mosaics), "mosaic": agreements(pred, mosaics, MOSAIC_TILINGS, scale)}
    result.update({"seconds": round(time.perf_counter() - t, 1), "load_average": load_average(),
                   "environment": environment()})
    figure(pred, frames[0], picked[0].name, args.figure)
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))
    print(f"wrote {args.out} and {args.figure}")
    return 0


def figure(pred: Predictor, image: np.ndarray, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from segadapt.viz.overlays import colorize
    from segadapt.viz.plots import save_figure

    whole = predicted(pred, image)
    tiled = predicted(pred, image, tile=FIGURE_TILING[0], overlap=FIGURE_TILING[1])
    differ = tiled.labels != whole.labels
    colours = colorize(whole.labels, pred.palette, -1)
    overlay = (0.5 * image + 0.5 * colours).astype(np.uint8)
    shown = np.where(differ[..., None], np.array([230, 30, 30], np.uint8), (image * 0.4).astype(np.uint8))
    fig, axes = plt.subplots(1, 4, figsize=(13, 2.9))
    panels = [(image, name), (overlay, "predicted classes (whole frame)"),
              (whole.conf, f"confidence (mean {whole.conf.mean():.2f})"),
              (shown, f"tiled {FIGURE_TILING[0]}/{FIGURE_TILING[1]} differs: {100 * differ.mean():.2f}% of pixels")]
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img, cmap="magma" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    present = np.unique(whole.labels)
    handles = [Patch(color=np.asarray(pred.palette[c]) / 255, label=pred.class_names[c]) for c in present]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path, dpi=110, tight=False)


if __name__ == "__main__":
    raise SystemExit(main())
