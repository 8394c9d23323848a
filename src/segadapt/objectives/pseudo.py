"""Pseudo-labels from a model's own confident predictions, chosen per class.

A global confidence threshold keeps the easy, frequent classes (road, sky) and drops the rare ones; CMA and
the self-training baselines of the DA literature therefore keep, for each predicted class, the most
confident share of its pixels in the batch. `confident_pixels` does that: among the valid pixels predicted
as class c, those whose confidence is at least the (1 - keep) quantile of that class's confidences (so at
least one pixel of every predicted class stays).
"""

from __future__ import annotations

import torch


def confident_pixels(probs: torch.Tensor, keep: float,
                     valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels N x H x W, mask N x H x W bool) from class probabilities N x C x H x W: the argmax, and the pixels
    kept as pseudo-labels (per predicted class, its top `keep` share by confidence among `valid` pixels;
    `valid` N x 1 x H x W or N x H x W of 0/1, None = all)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1]; got {keep}")
    conf, labels = probs.detach().max(1)
    ok = torch.ones_like(labels, dtype=torch.bool) if valid is None else valid.reshape(labels.shape).bool()
    mask = torch.zeros_like(ok)
    for c in labels[ok].unique().tolist():
        members = ok & (labels == c)
        values = conf[members]
        threshold = torch.quantile(values.float(), 1 - keep) if keep < 1 else values.min()
        mask |= members & (conf >= threshold)
    return labels, mask
