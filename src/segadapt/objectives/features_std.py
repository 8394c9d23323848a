"""`features_std`: the feature MSE on maps standardised per channel by H1's statistics on D1.

Stages and channels differ in scale by orders of magnitude (a transformer's last stage against its first, a
channel that barely fires against one that dominates), so the plain MSE is ruled by the loudest ones. Here
each channel's difference is divided by H1's standard deviation of that channel on D1 images (the mean
cancels in a difference), estimated once before the first step on a few batches and kept as buffers, so a
resumed run divides by the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from segadapt.losses import tap_errors
from segadapt.objectives.term import Outputs, Term

# a channel H1 (almost) never varies on D1 would otherwise be divided by ~0 and rule the loss; its std is
# floored at this fraction of the tap's mean channel std (so it weighs at most 1/FLOOR^2 = 100x the average)
FLOOR = 0.1


class FeaturesStd(Term):
    name = "features_std"
    needs_maps = True

    def __init__(self, taps: Mapping[str, float]) -> None:
        super().__init__()
        self.taps = dict(taps)
        for i in range(len(self.taps)):  # buffers by index: tap names may hold dots (module paths); sized by
            self.register_buffer(f"std_{i}", torch.ones(0))  # calibrate, which runs before a resume loads them

    def std(self, tap: str) -> torch.Tensor:
        return getattr(self, f"std_{list(self.taps).index(tap)}")

    def parts(self) -> dict[str, float]:
        return {f"{self.name}.{tap}": w for tap, w in self.taps.items()}

    @torch.no_grad()
    def calibrate(self, teacher_maps: Iterator[Mapping[str, torch.Tensor]]) -> None:
        """Per-channel std of each tap over all pixels of the batches (float64 sums, one pass)."""
        sums: dict[str, list[torch.Tensor]] = {}
        count: dict[str, int] = {}
        for maps in teacher_maps:
            for tap in self.taps:
                f = maps[tap].double()
                s = sums.setdefault(tap, [torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)] * 2)
                sums[tap] = [s[0] + f.sum((0, 2, 3)), s[1] + f.pow(2).sum((0, 2, 3))]
                count[tap] = count.get(tap, 0) + f.numel() // f.shape[1]
        for tap, (s1, s2) in sums.items():
            mean = s1 / count[tap]
            std = (s2 / count[tap] - mean.pow(2)).clamp_min(0).sqrt()
            std = std.clamp_min(FLOOR * float(std.mean()) if float(std.mean()) > 0 else 1.0)
            with torch.inference_mode(False):  # H1's maps may come from inference mode; the buffer may not
                self.register_buffer(f"std_{list(self.taps).index(tap)}", std.float().clone())

    def forward(self, out: Outputs) -> dict[str, torch.Tensor]:
        scale = {tap: self.std(tap).reshape(1, -1, 1, 1) for tap in self.taps}
        teacher = {tap: out.teacher_maps[tap].float() / scale[tap] for tap in self.taps}
        student = {tap: out.student_maps[tap].float() / scale[tap] for tap in self.taps}
        errors = tap_errors(teacher, student, self.taps, out.valid)
        return {f"{self.name}.{tap}": err for tap, err in errors.items()}
