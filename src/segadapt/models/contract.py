"""The model contract: what segadapt asks of a segmentation network, written down once.

Training, adaptation, the teacher cache, the figures and evaluation talk to a model only through this
interface, so it is the one place a new architecture plugs in: implement it (as `VGGDeepLab` does), or let
`HookedModel` provide it for any `nn.Module` through forward hooks on module paths.

- `TAPS`: the named feature maps a user may regress, from input to output. Tap names are what the
  config's `adapt.layers` holds.
- `features(x, taps)`: those maps for a batch, computing nothing after the deepest one (early exit).
- `parameters_up_to(taps)`: the parameters that feed the deepest of `taps`: what adaptation trains.
  Everything else (the head above the tap) must stay exactly H1's.
- `param_groups(lr, head_lr_mult)`: the optimiser groups for supervised training; the model says which of
  its parameters are the freshly initialised head (trained `head_lr_mult` times faster), as nanoGPT's
  `configure_optimizers` does, so no loop probes the model's attributes.
- `layer_presets()`: the named layer sets of the study for this architecture (pool5, all_inc, ...).
- `tap_geometry(model, taps)`: each tap's channels, stride and receptive field (as timm's `feature_info`):
  a model may give them from its layer table (`VGGDeepLab.tap_geometry`); any other is measured.
- `forward(x)`: class logits at the input's height and width.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from segadapt.config import STUDY_OBJECTIVE
from segadapt.errors import ConfigError
from segadapt.losses import LayerPresets
from segadapt.models.outputs import forward_logits
from segadapt.models.taps import Features, flags_restored, parameters_used, tap_features

ParamGroups = list[dict[str, Any]]
PROBE_SIDE = 128  # input side of the geometry probe; the stride probe grows it by as much again


@dataclass(frozen=True)
class TapGeometry:
    """Where a tap's cells sit on the input: `channels` maps, one cell per `stride` input pixels, each seeing
    `receptive_field` input pixels a side around its centre (None: the whole input, as global attention does,
    or more than the probe could see)."""

    channels: int
    stride: int
    receptive_field: int | None

    @property
    def radius(self) -> int | None:
        """Input pixels a cell sees on each side of its centre: the border band where a crop's maps differ."""
        return None if self.receptive_field is None else (self.receptive_field - 1) // 2


@runtime_checkable
class SegmentationModel(Protocol):
    """A segmentation network segadapt can train, adapt, cache, draw and evaluate."""

    TAPS: tuple[str, ...]
    num_classes: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def features(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]: ...

    def parameters_up_to(self, taps: str | Sequence[str]) -> list[nn.Parameter]: ...

    def param_groups(self, lr: float, head_lr_mult: float) -> ParamGroups: ...

    def layer_presets(self) -> LayerPresets: ...


def as_list(taps: str | Sequence[str]) -> list[str]:
    """One tap name or several: a bare string is one name, not a sequence of letters."""
    return [taps] if isinstance(taps, str) else list(taps)


def deepest(model: SegmentationModel, taps: str | Sequence[str]) -> str:
    """The tap furthest from the input, by the model's TAPS order; unknown names are refused."""
    names = as_list(taps)
    check_taps(model, names)
    return max(names, key=model.TAPS.index)


def check_taps(model: SegmentationModel, taps: Sequence[str]) -> None:
    """Refuse unknown tap names in one line listing the valid ones, before a run starts."""
    unknown = [t for t in taps if t not in model.TAPS]
    if not taps or unknown:
        presets = ", ".join(model.layer_presets())
        hint = difflib.get_close_matches(unknown[0], model.TAPS, n=2) if unknown else []
        close = f" (did you mean {' or '.join(hint)}?)" if hint else ""
        raise ConfigError(f"unknown layer(s) {', '.join(unknown) or '(none given)'}{close}; {type(model).__name__} "
                          f"has {tap_listing(model.TAPS)} (or a preset: {presets or 'none'})")


def tap_listing(taps: Sequence[str], most: int = 16) -> str:
    """The valid tap names for an error line. A wrapped network offers every module path (hundreds), so a long
    list shows its short names (stage aliases, top-level modules) and counts the module paths."""
    if len(taps) <= most:
        return ", ".join(taps)
    short = [t for t in taps if "." not in t][:most]
    paths = [t for t in taps if t not in short]
    return f"{', '.join(short)} and {len(paths)} module paths such as {paths[0]} (see model.named_modules())"


def preset_taps(model: SegmentationModel) -> list[str]:
    """The taps the model's one-tap presets name, input to output (VGG: pool1..pool5, transformers models:
    stage1..stageN, a factory model: none): the default rows of feature figures and reconstructions."""
    single = {taps[0] for taps, _ in model.layer_presets().values() if len(taps) == 1}
    return [t for t in model.TAPS if t in single]


def default_layers(model: SegmentationModel) -> list[str]:
    """What adapt regresses when no layers are given: the model's deepest one-tap preset (VGG: pool5, as in the
    study; a transformers model: its last stage), or one line asking for --layers (a factory model)."""
    deepest = preset_taps(model)[-1:]
    if not deepest:
        raise ConfigError(f"{type(model).__name__} has no named stages to regress by default; pass --layers with "
                          f"tap names such as {tap_listing(model.TAPS, 6)}")
    return deepest


def default_objective(model: SegmentationModel) -> dict[str, float]:
    """What adapt minimises when adapt.objective is empty: the model's DEFAULT_OBJECTIVE, measured per
    architecture (the VGG's and a transformers model's: output_kl + paired_pseudo, docs/results/compare), else
    the study's feature regression (factory models, which no measurement covers)."""
    own = getattr(model, "DEFAULT_OBJECTIVE", None)
    return dict(own) if own else dict(STUDY_OBJECTIVE)


def sweep_presets(model: SegmentationModel) -> list[str]:
    """The model's layer presets for a sweep: every name of its table but `all`, an alias of `all_inc`."""
    table = model.layer_presets()
    return [name for name in table if not (name == "all" and table.get("all_inc") == table[name])]


def translation_equivariant(model: nn.Module) -> bool:
    """Whether a crop's feature maps are a window of the whole frame's (away from the border): true for
    convolutional networks; a model says otherwise with `translation_equivariant = False` (global attention,
    as SegFormer's), on itself or on the module it wraps."""
    for m in (model, getattr(model, "net", None)):
        flag = getattr(m, "translation_equivariant", None)
        if flag is not None:
            return bool(flag)
    return True


def head_split(model: nn.Module, head: Sequence[nn.Parameter], lr: float, head_lr_mult: float) -> ParamGroups:
    """Two groups: the body at `lr` and `head` at `lr * head_lr_mult` (the poly schedule's base rates, run.py).
    Every parameter is in exactly one group."""
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": body, "lr": lr}, {"params": list(head), "lr": lr * head_lr_mult}]
    return [g for g in groups if g["params"]]


class HookedModel(nn.Module):
    """Any `nn.Module` behind the contract: taps are module paths (`named_modules()`), read by forward hooks.

    `taps` lists the names offered (default: every named submodule, in registration order; give them in
    forward order when the presets or `deepest` should rely on it). The parameters feeding a tap are read
    off the autograd graph of one probe pass on `example` (exact for any wiring: shared modules, functional
    calls). `head` names the submodule trained at the higher supervised learning rate, if any.
    The wrapped module is `self.net`, so its state-dict keys carry a `net.` prefix.
    """

    def __init__(self, net: nn.Module, num_classes: int, taps: Sequence[str] = (), head: str = "",
                 example: Sequence[int] = (1, 3, 64, 64)) -> None:
        super().__init__()
        self.net, self.num_classes, self.head = net, num_classes, head
        self.TAPS = tuple(taps) or tuple(n for n, _ in net.named_modules() if n)
        self.example = tuple(example)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the wrapped module may return a transformers ModelOutput or a dict: the contract's forward is logits
        return forward_logits(self.net, x)

    def features(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        check_taps(self, list(taps))
        return tap_features(self.net, x, list(taps))

    def parameters_up_to(self, taps: str | Sequence[str]) -> list[nn.Parameter]:
        names = as_list(taps)
        check_taps(self, names)
        device = next(self.parameters()).device
        return parameters_used(self.net, torch.zeros(self.example, device=device), names)

    def param_groups(self, lr: float, head_lr_mult: float) -> ParamGroups:
        head = list(self.net.get_submodule(self.head).parameters()) if self.head else []
        return head_split(self, head, lr, head_lr_mult)

    def layer_presets(self) -> LayerPresets:
        return {}


def tap_geometry(model: nn.Module, taps: Sequence[str], device: torch.device | None = None, *,
                 fields: bool = True) -> dict[str, TapGeometry]:
    """Each tap's geometry: the model's own table where it has one (`tap_geometry` method), else measured on
    probe inputs (`measure_geometry`) in eval mode, the model's modes and flags left as they were. `fields`
    False: a measured receptive field is left out (None), which saves a backward pass per tap."""
    own = getattr(model, "tap_geometry", None)
    if callable(own):
        return own(list(taps))
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with flags_restored(model):
        model.eval()  # no BatchNorm statistics move, no dropout draws from the run's RNG
        return measure_geometry(conform(model).features, list(taps), device, fields=fields)


def measure_geometry(features: Any, taps: Sequence[str], device: torch.device, *,
                     fields: bool = True) -> dict[str, TapGeometry]:
    """Geometry read off the maps `features(x, taps)` gives: the stride from how much a map grows when the
    input grows by PROBE_SIDE pixels, the receptive field from which input pixels the centre cell's gradient
    reaches (a cell that reaches the probe's border: None). Refused in one line for a tap without one fixed
    stride that divides PROBE_SIDE (a map that is not spatial, or pooled to a fixed size)."""
    side = PROBE_SIDE
    with torch.no_grad():
        small = features(torch.zeros(1, 3, side, side, device=device), list(taps))
        big = features(torch.zeros(1, 3, 2 * side, 2 * side, device=device), list(taps))
    out: dict[str, TapGeometry] = {}
    for t in taps:
        grow = (big[t].shape[-2] - small[t].shape[-2], big[t].shape[-1] - small[t].shape[-1]) if small[t].dim() == 4 \
            else (0, 0)
        if grow[0] <= 0 or grow[0] != grow[1] or side % grow[0]:
            raise ConfigError(f"tap {t!r} has no fixed stride (its map does not grow evenly with the input); "
                              f"choose a convolutional feature map")
        field = _receptive_field(features, t, device) if fields else None
        out[t] = TapGeometry(int(small[t].shape[1]), side // grow[0], field)
    return out


def _receptive_field(features: Any, tap: str, device: torch.device) -> int | None:
    """Rows of random probe images that reach the centre cell of `tap` (None when they reach the border). Max
    pooling passes a gradient to one input of each window, so a few probes are summed; the outermost rows of a
    pooling network's field can still stay hidden (a lower bound, where a layer table gives it exactly)."""
    side = 2 * PROBE_SIDE
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
        y = features(x, [tap])[tap]
        (grad,) = torch.autograd.grad(y[:, :, y.shape[-2] // 2, y.shape[-1] // 2].float().sum(), x)
    rows = (grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero().flatten().tolist()
    if not rows or rows[0] == 0 or rows[-1] == side - 1:
        return None
    return rows[-1] - rows[0] + 1


def output_stride(model: nn.Module) -> int:
    """The coarsest stride among the taps the model's presets name (VGG: 8, pool5; a transformers encoder:
    its last stage's), the grid predict's tiles align to; 1 for a model that names none (a factory's)."""
    taps = preset_taps(conform(model))
    return max(g.stride for g in tap_geometry(model, taps, fields=False).values()) if taps else 1


def conform(model: nn.Module) -> SegmentationModel:
    """`model` itself if it implements the contract, else the same module behind `HookedModel` hooks.

    A plain module is wrapped without a class count (0: unknown); give it through HookedModel to have one.
    """
    if isinstance(model, SegmentationModel):
        return model
    return HookedModel(model, num_classes=0)


def feature_fn(model: nn.Module) -> Features:
    """The model's early-exit feature pass: its own `features`, or forward hooks for any other module."""
    return conform(model).features
