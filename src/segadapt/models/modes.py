"""Train/eval modes while adapting: no stochastic layers, and a BatchNorm policy.

The student regresses the frozen teacher's eval-mode maps, so anything random in its forward (dropout,
stochastic depth) is switched off: with equal weights it must give equal maps. BatchNorm running statistics
(UperNet's head, CNN backbones) follow `adapt.norm`:

- ``keep``: every BatchNorm layer in eval mode; H1's running statistics are used and kept bit for bit.
- ``adabn``: BatchNorm layers that feed the deepest regressed tap run in train mode, so they normalise with
  D2 batch statistics and their running averages move to D2's (AdaBN: re-estimating them on the new
  domain). Layers above the tap are held in eval mode and never touched, so the head stays exactly H1's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from segadapt.config import NORM_MODES
from segadapt.errors import ConfigError
from segadapt.models.contract import as_list, conform
from segadapt.models.taps import flags_restored, graph_nodes


def has_running_stats(module: nn.Module) -> bool:
    """BatchNorm (any dimension, SyncBatchNorm) or InstanceNorm with tracked running statistics."""
    return isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats


def is_stochastic(module: nn.Module) -> bool:
    """Dropout of any kind, and stochastic depth (transformers' and timm's DropPath, torchvision's
    StochasticDepth), which have no common base class."""
    name = type(module).__name__
    return isinstance(module, nn.modules.dropout._DropoutNd) or "DropPath" in name or name == "StochasticDepth"


def norms_feeding(model: nn.Module, taps: str | Sequence[str],
                  example: Sequence[int] = (1, 3, 64, 64)) -> list[nn.Module]:
    """The running-statistics norm layers whose output the maps of `taps` are computed from.

    Read off the autograd graph of one probe pass (input requiring grad, eval mode, flags restored), so a
    norm layer that runs before the tap on a side branch the tap does not use is not counted.
    """
    norms = [m for m in model.modules() if has_running_stats(m)]
    if not norms:
        return []
    made: dict[int, object] = {}  # norm layer -> the autograd node of its output

    def record(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        made.setdefault(id(module), output.grad_fn)

    hooks = [m.register_forward_hook(record) for m in norms]
    p = next(model.parameters())
    try:
        with flags_restored(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()
            x = torch.zeros(tuple(example), device=p.device, dtype=p.dtype, requires_grad=True)
            maps = conform(model).features(x, as_list(taps))
            reached = graph_nodes(t for t in maps.values() if isinstance(t, torch.Tensor))
    finally:
        for h in hooks:
            h.remove()
    return [m for m in norms if made.get(id(m)) in reached]


class NormPolicy:
    """`adapt.norm` for one student and tap set, worked out once; `apply` after every switch to train mode."""

    def __init__(self, model: nn.Module, mode: str, taps: str | Sequence[str],
                 example: Sequence[int] = (1, 3, 64, 64)) -> None:
        if mode not in NORM_MODES:
            raise ConfigError(f"adapt.norm={mode!r}; choose one of {', '.join(NORM_MODES)} (keep: H1's BatchNorm "
                              "statistics; adabn: re-estimated on D2 below the deepest tap)")
        self.mode = mode
        self.adapted = norms_feeding(model, taps, example) if mode == "adabn" else []

    def apply(self, model: nn.Module) -> None:
        """Running-statistics layers: train mode for those being re-estimated, eval mode for all others."""
        adapted = {id(m) for m in self.adapted}
        for m in model.modules():
            if has_running_stats(m):
                m.train(id(m) in adapted)


def adaptation_mode(model: nn.Module, policy: NormPolicy | None = None) -> None:
    """Train mode for the student, minus dropout and stochastic depth, with `policy` for BatchNorm (default:
    keep H1's statistics)."""
    model.train()
    for m in model.modules():
        if is_stochastic(m):
            m.eval()
    if policy is not None:
        policy.apply(model)
    else:
        for m in model.modules():
            if has_running_stats(m):
                m.eval()


def set_norm_mode(model: nn.Module, mode: str, taps: str | Sequence[str]) -> NormPolicy:
    """Put `model` in adaptation mode under BatchNorm policy `mode` (keep | adabn); returns the policy so a
    loop can re-apply it after a probe (`adaptation_mode(model, policy)`)."""
    policy = NormPolicy(model, mode, taps)
    adaptation_mode(model, policy)
    return policy


@contextmanager
def modes_restored(model: nn.Module) -> Iterator[None]:
    """Run a block (an eval pass) and put every submodule's train/eval flag back as it was: `model.train(was)`
    would switch on the dropout and BatchNorm layers adaptation had switched off."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
