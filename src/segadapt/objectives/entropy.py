"""Prediction entropy per pixel, normalised by ln(classes) so 0 is certain and 1 uniform whatever the class
count: TENT minimises it, CMA adds a small weight of it, label-free selection reads it."""

from __future__ import annotations

import math

import torch


def pixel_entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy of softmax(`logits`) over `dim` divided by ln(classes), per pixel (differentiable). Computed from
    log-softmax, so a saturated prediction gives 0 rather than 0 x log 0 = nan."""
    classes = logits.shape[dim]
    if classes < 2:
        return torch.zeros_like(logits.select(dim, 0))
    log_p = torch.log_softmax(logits.float(), dim)
    return -(log_p.exp() * log_p).sum(dim) / math.log(classes)
