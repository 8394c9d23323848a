"""Segmentation side by side: image, ground truth and each model's prediction in the dataset's colours.

Colours come from the model's metadata (the dataset's palette: VOC's for VOC, CamVid's published colours
for CamVid); ignored pixels are black. A legend lists the classes that appear in any panel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.patches import Patch
from torch import nn

from segadapt.metrics import confusion_matrix, scores
from segadapt.viz.plots import save_figure, subplots

Palette = Sequence[Sequence[int]]


def colorize(mask: np.ndarray, palette: Palette, ignore_index: int) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8; ignored or unknown labels are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    m = mask.astype(np.int64)
    valid = (m >= 0) & (m < len(palette)) & (m != ignore_index)
    out = lut[np.where(valid, m, 0)]
    out[~valid] = 0
    return out


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Class indices for one normalised image (3xHxW)."""
    model.eval()
    return model(x[None]).argmax(1)[0].cpu().numpy()


def overlay_figure(
    image: np.ndarray,
    mask: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    palette: Palette,
    ignore_index: int,
    path: Path,
    title: str = "",
) -> Path:
    """image | ground truth | one panel per model (its mIoU on this image in the title) + class legend."""
    panels = [("image", image), ("ground truth", colorize(mask, palette, ignore_index))]
    n = len(class_names)
    gt = torch.from_numpy(mask.astype(np.int64))
    for name, pred in predictions.items():
        s = scores(confusion_matrix(torch.from_numpy(pred), gt, n, ignore_index))
        panels.append((f"{name} (mIoU {s.miou:.2f})", colorize(pred, palette, ignore_index)))
    fig, axes = subplots(1, len(panels), figsize=(2.6 * len(panels), 2.6 * image.shape[0] / image.shape[1] + 1.0),
                             squeeze=False)
    for ax, (label, img) in zip(axes[0], panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    present = set(np.unique(mask).tolist())
    for pred in predictions.values():
        present |= set(np.unique(pred).tolist())
    handles = [Patch(color=np.asarray(palette[c]) / 255, label=class_names[c]) for c in range(n) if c in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6) or 1, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return save_figure(fig, path, dpi=100, tight=False)
