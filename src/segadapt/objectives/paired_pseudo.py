"""`paired_pseudo`: cross-entropy of H2(X2) against H1's labels on the paired X1, on the pixels H1 is most
sure of: per predicted class, the top adapt.pseudo_keep share of its pixels in the batch (pseudo.py; CMA
keeps 0.2). Hard labels from the clean view are the pairing's strongest output-level signal; keeping only
the confident ones per class leaves out H1's own mistakes without losing the rare classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segadapt.losses import masked_pixel_mean, tap_mask
from segadapt.objectives.pseudo import confident_pixels
from segadapt.objectives.term import Outputs, Term


class PairedPseudo(Term):
    name = "paired_pseudo"
    needs_logits = True

    def __init__(self, keep: float = 0.2) -> None:
        super().__init__()
        self.keep = float(keep)

    def forward(self, out: Outputs) -> dict[str, torch.Tensor]:
        assert out.teacher_logits is not None and out.student_logits is not None
        teacher = out.teacher_logits.float()
        valid = None if out.valid is None else tap_mask(out.valid, teacher.shape[-2:])
        labels, kept = confident_pixels(teacher.softmax(1), self.keep, valid)
        ce = F.cross_entropy(out.student_logits.float(), labels, reduction="none")
        return {self.name: masked_pixel_mean(ce, keep=kept)}
