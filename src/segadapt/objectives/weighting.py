"""How the parts of an objective (each term, and each tap of a feature term) are added up: adapt.weighting.

- fixed: sum_i w_i L_i, the weights as configured (the study's).
- normalised: sum_i w_i L_i / m_i, with m_i a running mean of L_i's own detached value (bias-corrected
  exponential average, decay BETA, so m_1 = L_1 and every part starts at exactly w_i). Parts of very
  different scales (stage 1 against stage 4, a KL against an MSE) then pull alike, and each keeps pulling as
  it shrinks.
- uncertainty: sum_i exp(-s_i) w_i L_i + s_i with one learned log-variance s_i per part (Kendall, Gal and
  Cipolla 2018), trained by the student's optimizer; at its optimum exp(-s_i) = 1 / (w_i L_i), so a part
  that stays large is weighted down. Parts of weight 0 get no s_i (it would run to -inf).

The running means and log-variances are the module's buffers and parameters, so a resumed run continues
with them. Under torchrun the running means are updated with the mean over ranks and the log-variances'
gradients averaged over ranks (they live outside the DDP-wrapped student), so every rank weighs alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from segadapt import distributed

WEIGHTINGS = ("fixed", "normalised", "uncertainty")
BETA = 0.99  # the running mean's decay: about the last 100 steps


class Fixed(nn.Module):
    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.weights = dict(weights)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(losses.values())).device)
        for name, w in self.weights.items():
            total = total + w * losses[name]
        return total

    def effective(self) -> dict[str, float]:
        """Each part's weight at this step (what multiplies its loss)."""
        return dict(self.weights)

    def sync_grads(self) -> None:
        """Average this weighting's own gradients over ranks (only learned weights have any)."""


class Normalised(Fixed):
    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__(weights)
        self.register_buffer("ema", torch.zeros(len(self.weights), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def means(self) -> torch.Tensor:
        return self.ema / (1 - BETA ** max(int(self.steps), 1))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        values = torch.stack([losses[n].detach().double() for n in self.weights]).to(self.ema.device)
        if distributed.active():
            values = distributed.all_reduce(values) / distributed.world_size()
        self.ema.mul_(BETA).add_(values, alpha=1 - BETA)
        self.steps += 1
        scale = self.means().clamp_min(1e-12)
        total = torch.zeros((), device=next(iter(losses.values())).device)
        for i, (name, w) in enumerate(self.weights.items()):
            total = total + (w / float(scale[i])) * losses[name]
        return total

    def effective(self) -> dict[str, float]:
        if not int(self.steps):
            return dict(self.weights)
        scale = self.means().clamp_min(1e-12)
        return {name: w / float(scale[i]) for i, (name, w) in enumerate(self.weights.items())}


class Uncertainty(Fixed):
    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__(weights)
        self.learned = [n for n, w in self.weights.items() if w > 0]
        self.log_var = nn.Parameter(torch.zeros(len(self.learned)))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(losses.values())).device)
        for i, name in enumerate(self.learned):
            s = self.log_var[i]
            total = total + torch.exp(-s) * (self.weights[name] * losses[name]) + s
        return total

    def effective(self) -> dict[str, float]:
        s = self.log_var.detach()
        return {n: self.weights[n] * float(torch.exp(-s[self.learned.index(n)])) if n in self.learned else 0.0
                for n in self.weights}

    def sync_grads(self) -> None:
        if distributed.active() and self.log_var.grad is not None:
            distributed.all_reduce(self.log_var.grad)
            self.log_var.grad /= distributed.world_size()


def make_weighting(kind: str, weights: Mapping[str, float]) -> Fixed:
    return {"fixed": Fixed, "normalised": Normalised, "uncertainty": Uncertainty}[kind](weights)
