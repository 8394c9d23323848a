"""The feature-regression loss, and layer sets resolved against a model's presets (the contract's
`layer_presets`; the study's VGG table lives with the VGG, models/vgg_deeplab.py).

loss = sum_l w_l * mean((F1_l(X1) - F2_l(X2))^2): a per-element mean inside each layer, so layers of
different sizes are comparable and the weights alone set their balance.

With registered pairs (data/align.py) part of X1's frame has no X2 pixel behind it; a validity mask (1 = has a
source) then makes the mean run over valid elements only. The mask reaches each tap by min-pooling over the
tap's cells (`tap_mask`): a cell counts only when every input pixel of its footprint is valid, because a cell
that straddles the border already mixes in the empty fill. Its receptive field reaches further (113 px for
pool5), so cells near the border still see some fill through it; excluding whole receptive fields would drop
most of a small crop, so the footprint is where the line is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from segadapt.errors import ConfigError

# preset name -> (taps, weights), as a model's layer_presets() hands them out
LayerPresets = dict[str, tuple[tuple[str, ...], tuple[float, ...]]]


def resolve_layers(preset: str = "", layers: Sequence[str] = (), weights: Sequence[float] = (),
                   presets: LayerPresets | None = None) -> dict[str, float]:
    """Tap name -> weight, from a preset name (of `presets`, a model's table) or explicit layers (weights
    default to 1)."""
    presets = presets or {}
    if preset:
        if preset not in presets:
            raise ConfigError(f"unknown layer preset {preset!r}; choose one of {', '.join(presets)}")
        layers, weights = presets[preset]
    if not layers:
        raise ConfigError("no layers to regress; pass --layers pool5 or a preset such as --layers all")
    weights = list(weights) or [1.0] * len(layers)
    if len(weights) != len(layers):
        raise ConfigError(f"{len(layers)} layers but {len(weights)} weights; give one weight per layer")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layer listed twice in {list(layers)}")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"layer weights {list(weights)}: each must be >= 0 and finite, one > 0 (a negative "
                          f"weight would push the features apart)")
    return dict(zip(layers, (float(w) for w in weights)))


def tap_mask(valid: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A validity mask (N x 1 x H x W of 0/1) at a tap's size (h, w): 1 where the cell's whole footprint is valid
    (area average == 1, i.e. min-pooling; adaptive pooling also covers sizes that do not divide evenly)."""
    area = F.adaptive_avg_pool2d(valid.float(), (int(size[0]), int(size[1])))
    return (area >= 1 - 1e-6).float()


def tap_errors(
    target: Mapping[str, torch.Tensor], pred: Mapping[str, torch.Tensor], taps: Iterable[str],
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Each tap's mean squared error (a differentiable scalar per tap).

    `valid` (N x 1 x H x W, 1 = the pixel has a source): each tap's mean runs over its valid elements only
    (a tap with none gives 0); None keeps the plain mean, computed exactly as without masks."""
    errors: dict[str, torch.Tensor] = {}
    for name in taps:
        # written as a difference, not F.mse_loss: the target may be an inference-mode tensor, which
        # autograd cannot save, and (a - b)^2 only saves the difference
        diff = (pred[name].float() - target[name].float()).pow(2)
        if valid is None:
            errors[name] = diff.mean()
        else:
            m = tap_mask(valid.to(diff.device), diff.shape[-2:])
            kept = torch.where(m > 0, diff, torch.zeros((), device=diff.device))
            errors[name] = kept.sum() / (m.sum() * diff.shape[1]).clamp_min(1.0)
    return errors


def feature_regression_loss(
    target: Mapping[str, torch.Tensor], pred: Mapping[str, torch.Tensor], weights: Mapping[str, float],
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of per-layer mean squared errors (`tap_errors`); also returns each layer's unweighted error."""
    errors = tap_errors(target, pred, weights, valid)
    total = torch.zeros((), device=next(iter(pred.values())).device)
    for name, w in weights.items():
        total = total + w * errors[name]
    return total, {name: float(err.detach()) for name, err in errors.items()}


def masked_pixel_mean(values: torch.Tensor, valid: torch.Tensor | None = None,
                      keep: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of per-pixel `values` (N x h x w) over pixels that are valid (`valid` N x 1 x H x W, brought to
    h x w as `tap_mask` does) and, if given, in `keep` (N x h x w bool); 0 when none is. Pixels left out cannot
    reach the result, even when their values are not finite."""
    ok = torch.ones_like(values, dtype=torch.bool) if keep is None else keep
    if valid is not None:
        ok = ok & (tap_mask(valid.to(values.device), values.shape[-2:])[:, 0] > 0)
    kept = torch.where(ok, values, torch.zeros((), device=values.device, dtype=values.dtype))
    return kept.sum() / ok.sum().clamp_min(1)
