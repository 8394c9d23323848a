"""`d2_labels`: cross-entropy of H2 on the few labelled D2 images a user has (adapt.d2_labels), the
semi-supervised case of the study's title. Added by adapt.d2_labels (weight 1 unless adapt.objective gives
one); it is an output-level term, so adapt.train_head decides whether the head trains."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segadapt.losses import masked_pixel_mean
from segadapt.objectives.term import Outputs, Term


class D2Labels(Term):
    name = "d2_labels"
    needs_labelled = True

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)

    def forward(self, out: Outputs) -> dict[str, torch.Tensor]:
        assert out.labelled_logits is not None and out.labels is not None
        logits = out.labelled_logits.float()
        if logits.shape[-2:] != out.labels.shape[-2:]:  # a module whose logits are not input-sized
            logits = F.interpolate(logits, size=out.labels.shape[-2:], mode="bilinear", align_corners=False)
        keep = out.labels != self.ignore_index
        labels = torch.where(keep, out.labels, torch.zeros_like(out.labels))
        ce = F.cross_entropy(logits, labels, reduction="none")
        return {self.name: masked_pixel_mean(ce, keep=keep)}
