"""`entropy`: H2's mean prediction entropy on X2 (normalised by ln C, entropy.py), minimised.

Alone it rewards any confident prediction, right or wrong (TENT's objective); beside a paired term, with a
small weight (CMA uses 0.01), it sharpens H2's predictions on D2 where the pairs leave them unsure."""

from __future__ import annotations

import torch

from segadapt.losses import masked_pixel_mean
from segadapt.objectives.entropy import pixel_entropy
from segadapt.objectives.term import Outputs, Term


class Entropy(Term):
    name = "entropy"
    needs_logits = True

    def forward(self, out: Outputs) -> dict[str, torch.Tensor]:
        assert out.student_logits is not None
        return {self.name: masked_pixel_mean(pixel_entropy(out.student_logits), out.valid)}
