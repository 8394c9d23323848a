"""Feature taps for any nn.Module via forward hooks, stopping the forward pass after the last tap fires.

The built-in VGG has `features()`; this makes the method work for a user's own network too: name the
layers (as in `named_modules()`), get their outputs, and pay only for the layers up to the deepest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# (input, tap names) -> {tap: map}: the early-exit feature pass that adaptation, the teacher cache and the
# figures all call
Features = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]


class _AllTapsCaptured(Exception):
    """Raised from a hook to abandon the rest of the forward pass."""


def _resolve(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    if not names:
        raise ValueError("no layers to tap; name at least one of model.named_modules()")
    out = {}
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see model.named_modules()"
            raise ValueError(f"layer {name!r} not found in {type(model).__name__}{hint}")
        out[name] = modules[name]
    return out


def tap_features(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules for input `x`; layers after the last of them never run.

    A module called more than once (a shared ReLU, say) is tapped at its first call. Outputs captured
    before the last tap are cloned, because a later in-place op (ReLU(inplace=True) after a tapped conv)
    would otherwise overwrite them silently. Gradients flow through the returned tensors.
    """
    targets = _resolve(model, names)
    captured: dict[str, Any] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: Any) -> None:
            if name in captured:
                return
            done = len(captured) + 1 == len(targets)
            captured[name] = output.clone() if isinstance(output, torch.Tensor) and not done else output
            if done:
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
    missing = [n for n in targets if n not in captured]
    if missing:
        raise ValueError(f"layer(s) {missing} never ran in the forward pass; tap modules forward() calls")
    return {n: captured[n] for n in names}


def _graph_leaves(roots: Iterable[torch.Tensor]) -> set[int]:
    """ids of the leaf tensors the autograd graph of `roots` reaches (the ones that would get a gradient)."""
    found: set[int] = set()
    stack = []
    for t in roots:
        if t.grad_fn is None:
            found.add(id(t))
        else:
            stack.append(t.grad_fn)
    seen: set[Any] = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        leaf = getattr(fn, "variable", None)  # AccumulateGrad nodes hold the leaf they accumulate into
        if leaf is not None:
            found.add(id(leaf))
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return found


def parameters_used(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> list[nn.Parameter]:
    """Parameters the named taps depend on: what adaptation may train when these are the regressed maps.

    Read off the autograd graph of one tapped forward pass, so it is exact for any architecture (shared
    modules, functional calls, parameters owned by containers). The pass runs in eval mode with every
    parameter temporarily requiring grad, so BatchNorm statistics and `requires_grad` flags are left as found.
    """
    with flags_restored(model) as params:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            taps = tap_features(model, x.clone(), names)
        reached = _graph_leaves(t for t in taps.values() if isinstance(t, torch.Tensor) and t.requires_grad)
    return [p for p in params if id(p) in reached]


@contextmanager
def flags_restored(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Yield the model's parameters; on exit put back every `requires_grad` flag and train/eval mode.

    For passes that must freeze or unfreeze a model temporarily (probing, reconstruction) without leaving
    a trace on a model the caller keeps using.
    """
    params = list(model.parameters())
    grad_flags = [p.requires_grad for p in params]
    train_flags = [(m, m.training) for m in model.modules()]
    try:
        yield params
    finally:
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)
        for m, flag in train_flags:
            m.training = flag
