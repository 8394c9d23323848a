"""`features`: the study's method, the mean squared error between H2's maps on X2 and H1's on X1 at each
tap of adapt.layers, weighted per tap (losses.py). Alone it is the regression segadapt has always run."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from segadapt.losses import tap_errors
from segadapt.objectives.term import Outputs, Term


class Features(Term):
    name = "features"
    needs_maps = True

    def __init__(self, taps: Mapping[str, float]) -> None:
        super().__init__()
        self.taps = dict(taps)

    def parts(self) -> dict[str, float]:
        # parts keyed by the bare tap name: log.csv's loss_<tap> columns stay as they were
        return dict(self.taps)

    def forward(self, out: Outputs) -> dict[str, torch.Tensor]:
        return tap_errors(out.teacher_maps, out.student_maps, self.taps, out.valid)
