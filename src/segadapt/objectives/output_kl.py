"""`output_kl`: pixel-wise distillation of H1's prediction on X1 into H2's on X2,
KL(softmax(H1(X1)/T) || softmax(H2(X2)/T)) x T^2 summed over classes, averaged over valid pixels.

Feature regression asks H2 to reproduce every channel of a stage, including ones the head ignores; the KL
asks only for what H1 predicted (with its confidence), which is what distilling into a SegFormer student
rewards (CIRKD: pixel-wise KL helps, channel-wise distillation hurts). T > 1 softens both distributions so
the ranking of the non-maximal classes counts too; the T^2 keeps the gradient's scale independent of T.
"""

from __future__ import annotations

import torch

from segadapt.losses import masked_pixel_mean
from segadapt.objectives.term import Outputs, Term


class OutputKL(Term):
    name = "output_kl"
    needs_logits = True

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, out: Outputs) -> dict[str, torch.Tensor]:
        assert out.teacher_logits is not None and out.student_logits is not None
        t = self.temperature
        log_p1 = torch.log_softmax(out.teacher_logits.float() / t, 1)
        log_p2 = torch.log_softmax(out.student_logits.float() / t, 1)
        kl = (log_p1.exp() * (log_p1 - log_p2)).sum(1)
        return {self.name: masked_pixel_mean(kl, out.valid) * t * t}
