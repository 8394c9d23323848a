"""Label-free model selection for adaptation: D2 has no labels, so which checkpoint of H2 should one keep?

Two signals that need no label, measured on pairs held out from training:
- the held-out regression loss (the training objective on pairs H2 never fitted), which picks the
  checkpoint (lower is better; comparable only between checkpoints of one layer preset);
- the mean prediction entropy of H2 on the held-out D2 images, normalised by log(classes) to 0..1
  (comparable across presets, but a model can be confidently wrong).
Where D2 labels do exist (the sweep), `agreement` says how well these choices track mIoU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from segadapt.data.pairs import PairedDataset
from segadapt.losses import feature_regression_loss
from segadapt.models.modes import modes_restored


def split_holdout(n: int, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random subset of pairs for selection, and the rest for training; never more than a fifth."""
    holdout = max(0, min(holdout, n // 5))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    return sorted(order[:holdout]), sorted(order[holdout:])


def probe_steps(iterations: int, probes: int) -> set[int]:
    """`probes` evenly spaced steps ending at the last one."""
    return {max(1, round(iterations * (k + 1) / probes)) for k in range(probes)} if probes > 0 else set()


class HoldoutProbe:
    """Fixed held-out pairs (augmentation drawn once, seeded) and the teacher's features on them."""

    def __init__(
        self, pairs: PairedDataset, ids: Sequence[int], teacher_features, weights: Mapping[str, float], seed: int,
        device: torch.device,
    ) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            items = [pairs[i] for i in ids]
        self.x1 = torch.stack([item[0] for item in items]).to(device)
        self.x2 = torch.stack([item[1] for item in items]).to(device)
        # registered pairs end with a validity mask: the held-out loss is then masked as the training loss is
        masked = getattr(pairs, "with_valid", False)  # a plain list of (x1, x2) pairs has no masks
        self.valid = torch.stack([item[-1] for item in items]).to(device) if masked else None
        self.weights = dict(weights)
        with torch.inference_mode():
            self.target = {k: v.clone() for k, v in teacher_features(self.x1, list(self.weights)).items()}

    @torch.inference_mode()
    def measure(self, student: nn.Module, student_features) -> dict[str, float]:
        with modes_restored(student):  # student.train() afterwards would undo adaptation's dropout/BN modes
            student.eval()
            loss, _ = feature_regression_loss(self.target, student_features(self.x2, list(self.weights)), self.weights,
                                              self.valid)
            logits = student(self.x2).float()
        p = logits.softmax(1)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean() / math.log(logits.shape[1])
        return {"holdout_loss": float(loss), "entropy": float(entropy)}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (ties get their mean rank); nan when either side is constant or too short."""
    if len(a) < 2:
        return float("nan")

    def ranks(x: Sequence[float]) -> list[float]:
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va and vb else float("nan")


def agreement(points: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    """How a label-free choice among checkpoints compares with the mIoU-best one (needs a 'miou' per point)."""
    chosen = min(points, key=lambda p: p["holdout_loss"])
    best = max(points, key=lambda p: p["miou"])
    return {
        "selected_step": chosen["step"],
        "selected_miou": chosen["miou"],
        "best_step": best["step"],
        "best_miou": best["miou"],
        "final_miou": points[-1]["miou"],
        "regret_points": round(100 * (best["miou"] - chosen["miou"]), 3),
        # lower loss should mean higher mIoU: a good signal gives a correlation near +1
        "rank_corr_loss": finite_or_none(spearman([-p["holdout_loss"] for p in points], [p["miou"] for p in points])),
        "rank_corr_entropy": finite_or_none(spearman([-p["entropy"] for p in points], [p["miou"] for p in points])),
    }


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: an undefined correlation (constant mIoU, one probe) is written as null."""
    return x if math.isfinite(x) else None
