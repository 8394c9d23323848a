"""Segmentation metrics from a confusion matrix, and the study's distortion measure.

Everything is derived from one integer confusion matrix (rows = ground truth, columns = prediction), so
per-batch results can be summed (or all-reduced across processes) before any ratio is taken.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """K x K int64 counts of (true class, predicted class) over pixels whose label is not ignored."""
    pred = pred.reshape(-1).to(torch.int64)
    target = target.reshape(-1).to(torch.int64)
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        bad = torch.unique(target[(target < 0) | (target >= num_classes)]).tolist()
        raise ValueError(f"label values {bad} outside [0, {num_classes}) and not the ignore index {ignore_index}")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        bad = torch.unique(pred[(pred < 0) | (pred >= num_classes)]).tolist()
        raise ValueError(f"predicted classes {bad} outside [0, {num_classes}): the model has more outputs than the "
                         f"dataset has classes")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class Scores:
    pixel_acc: float
    mean_acc: float  # mean over classes present in the labels of per-class recall
    miou: float  # mean over classes present in labels or predictions
    class_acc: list[float]  # nan where the class never occurs in the labels
    class_iou: list[float]  # nan where the class occurs in neither labels nor predictions
    pixels: int

    def to_dict(self) -> dict:
        # JSON has no NaN; null marks "class absent" explicitly.
        d = asdict(self)
        for key in ("class_acc", "class_iou"):
            d[key] = [None if math.isnan(v) else v for v in d[key]]
        for key in ("pixel_acc", "mean_acc", "miou"):
            d[key] = None if math.isnan(d[key]) else d[key]
        return d


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


def scores(conf: torch.Tensor) -> Scores:
    conf = conf.to(torch.float64)
    tp = conf.diag()
    gt = conf.sum(1)
    pred = conf.sum(0)
    total = conf.sum()
    union = gt + pred - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    class_acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    class_iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    return Scores(
        pixel_acc=float(tp.sum() / total) if total > 0 else float("nan"),
        mean_acc=_nanmean(class_acc),
        miou=_nanmean(class_iou),
        class_acc=class_acc.tolist(),
        class_iou=class_iou.tolist(),
        pixels=int(total),
    )


def distortion(acc_d1: float, miou_d1: float, acc_d2: float, miou_d2: float) -> float:
    """The study's measure of how much a shift hurts H1: mean relative drop of accuracy and mIoU.
    nan when H1 scores 0 (or nan) on D1, where a relative drop means nothing."""
    if not (acc_d1 > 0 and miou_d1 > 0):
        return float("nan")
    return 0.5 * (abs(acc_d1 - acc_d2) / acc_d1 + abs(miou_d1 - miou_d2) / miou_d1)
