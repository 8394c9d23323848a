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
- `forward(x)`: class logits at the input's height and width.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from segadapt.errors import ConfigError
from segadapt.losses import LayerPresets
from segadapt.models.outputs import forward_logits
from segadapt.models.taps import Features, parameters_used, tap_features

ParamGroups = list[dict[str, Any]]


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


STUDY_OBJECTIVE = {"features": 1.0}  # the study's feature regression


def default_objective(model: SegmentationModel) -> dict[str, float]:
    """What adapt minimises when adapt.objective is empty: the model's DEFAULT_OBJECTIVE (a transformers
    model's: output_kl + paired_pseudo, since its stage regressions end below B0: docs/results/objectives-
    synthetic-segformer), else the study's feature regression (the VGG; factory models)."""
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
    """Two groups: the body at `lr` and `head` at `lr * head_lr_mult`; each group records its base_lr for
    the poly schedule. Every parameter is in exactly one group."""
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": body, "lr": lr, "base_lr": lr},
              {"params": list(head), "lr": lr * head_lr_mult, "base_lr": lr * head_lr_mult}]
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
