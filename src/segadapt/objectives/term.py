"""What every adaptation term reads and returns: one batch's outputs of H1 on X1 and H2 on X2, and the
common interface (`Term`) that adapt() and the held-out probe call without knowing which terms run."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from segadapt.models.outputs import logits_of
from segadapt.models.taps import Features


@dataclass
class Outputs:
    """One batch as the terms see it. Maps are the taps of adapt.layers (empty when no term reads them), logits
    the models' class scores at their forward's size (None when no term reads them); `valid` is the
    registration mask (N x 1 x H x W, 1 = X2 has a source there; None = every pixel)."""

    teacher_maps: Mapping[str, torch.Tensor]
    student_maps: Mapping[str, torch.Tensor]
    teacher_logits: torch.Tensor | None = None
    student_logits: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    # adapt.d2_labels: H2's logits on this step's labelled D2 images, and their labels (N x H x W)
    labelled_logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None


class Term(nn.Module):
    """One adaptation term: `forward(outputs)` gives its parts' unweighted losses (scalars), keyed as `parts()`
    names them with their weights relative to the term's (a feature term: one part per tap; others one).

    `needs_maps` / `needs_logits` / `needs_labelled` say which passes the run must make (the taps on the pairs,
    both models' logits on the pairs, H2's logits on labelled D2 images); a term with statistics of H1 on D1
    estimates them in `calibrate` (buffers, so they travel with the run's resume state)."""

    name: ClassVar[str]
    needs_maps: ClassVar[bool] = False
    needs_logits: ClassVar[bool] = False
    needs_labelled: ClassVar[bool] = False

    def parts(self) -> dict[str, float]:
        return {self.name: 1.0}

    def calibrate(self, teacher_maps: Iterator[Mapping[str, torch.Tensor]]) -> None:
        """Statistics of H1's maps on D1 images, for terms that need them (default: none)."""

    def forward(self, out: Outputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def model_outputs(model: nn.Module, features: Features, x: torch.Tensor, taps: Sequence[str], maps: bool,
                  logits: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The taps (the early-exit feature pass) and/or the class logits (the full forward) of `model` on `x`.

    With both, the model runs twice (the contract has no pass that returns both); only runs that combine a
    feature term with an output term pay for it."""
    found = features(x, list(taps)) if maps else {}
    return found, (logits_of(model(x)) if logits else None)


def as_plain(t: torch.Tensor | None) -> torch.Tensor | None:
    """A tensor made in inference mode (the teacher's) as an ordinary one, which autograd may save: the
    terms multiply by probabilities and index with labels derived from it."""
    return None if t is None else t.clone()
