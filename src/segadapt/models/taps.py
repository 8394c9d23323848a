"""Feature taps for any nn.Module via forward hooks, stopping the forward pass after the last tap fires.

The built-in VGG has `features()`; this makes the method work for a user's own network too: name the
layers (as in `named_modules()`), get their outputs, and pay only for the layers up to the deepest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import nn


class _AllTapsCaptured(Exception):
    """Raised from a hook to abandon the rest of the forward pass."""


def _resolve(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see model.named_modules()"
            raise ValueError(f"layer {name!r} not found in {type(model).__name__}{hint}")
        out[name] = modules[name]
    return out


def tap_features(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules for input `x`; layers after the last of them never run."""
    targets = _resolve(model, names)
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            captured[name] = output
            if len(captured) == len(targets):
                raise _AllTapsCaptured

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in targets.items()]
    try:
        model(x)
    except _AllTapsCaptured:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = set(targets) - set(captured)
    if missing:
        raise ValueError(f"layer(s) {sorted(missing)} never ran in the forward pass; tap modules that are called")
    return captured


def parameters_used(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> list[nn.Parameter]:
    """Parameters of the modules that ran before the taps were all captured: what adaptation may train."""
    fired: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, *_: fired.append(mod)) for m in model.modules()]
    try:
        with torch.no_grad():
            tap_features(model, x, names)
    finally:
        for h in hooks:
            h.remove()
    seen: set[int] = set()
    params = []
    for mod in fired:
        for p in mod.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params
