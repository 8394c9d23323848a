"""Feature taps for any nn.Module via forward hooks, stopping the forward pass after the last tap fires.

The built-in VGG has `features()`; this makes the method work for a user's own network too: name the
layers (as in `named_modules()`), get their outputs, and pay only for the layers up to the deepest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    return capture(model, x, _resolve(model, names))


Convert = Callable[[str, Any], Any]
Watch = tuple[nn.Module, Callable[[Any], None]]


def capture(model: nn.Module, x: torch.Tensor, targets: Mapping[str, nn.Module], convert: Convert | None = None,
            watch: Sequence[Watch] = ()) -> dict[str, Any]:
    """`tap_features` over named modules (several names may share one module), for wrappers that need more.

    `convert(name, output)` turns a captured output into the map handed out (a token sequence into NCHW, a
    backbone stage into its normed feature map) while the forward pass is still at that module, so it may
    read what `watch` hooks (module, fn(output)) have seen so far; watched modules never end the pass.
    """
    captured: dict[str, Any] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: Any) -> None:
            if name in captured:
                return
            done = len(captured) + 1 == len(targets)
            out = convert(name, output) if convert is not None else output
            captured[name] = out.clone() if isinstance(out, torch.Tensor) and not done else out
            if done:
                raise _AllTapsCaptured

        return hook

    handles = [m.register_forward_hook(lambda _m, _i, out, fn=fn: fn(out)) for m, fn in watch]
    handles += [m.register_forward_hook(hook_for(n)) for n, m in targets.items()]
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
    return {n: captured[n] for n in targets}


def execution_order(model: nn.Module, x: torch.Tensor) -> list[tuple[str, Any]]:
    """(module path, output) for every submodule that runs on `x`, in the order their forward() returns.

    Registration order is not execution order (UperNet registers its classifier first), so wrappers that
    list taps from input to output measure it with one probe pass (eval mode, no grad, flags restored).
    """
    order: list[tuple[str, Any]] = []
    seen: set[str] = set()

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: Any) -> None:
            if name not in seen:
                seen.add(name)
                order.append((name, output))

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if n]
    try:
        with flags_restored(model), torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def graph_nodes(roots: Iterable[torch.Tensor]) -> set[Any]:
    """The autograd nodes the graph of `roots` reaches: what those tensors were computed from."""
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    seen: set[Any] = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return seen


def _graph_leaves(roots: Iterable[torch.Tensor]) -> set[int]:
    """ids of the leaf tensors the autograd graph of `roots` reaches (the ones that would get a gradient)."""
    roots = list(roots)
    found = {id(t) for t in roots if t.grad_fn is None}
    for fn in graph_nodes(roots):
        leaf = getattr(fn, "variable", None)  # AccumulateGrad nodes hold the leaf they accumulate into
        if leaf is not None:
            found.add(id(leaf))
    return found


def parameters_used(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> list[nn.Parameter]:
    """Parameters the named taps depend on: what adaptation may train when these are the regressed maps.

    Read off the autograd graph of one tapped forward pass, so it is exact for any architecture (shared
    modules, functional calls, parameters owned by containers). The pass runs in eval mode with every
    parameter temporarily requiring grad, so BatchNorm statistics and `requires_grad` flags are left as found.
    """
    return parameters_reached(model, lambda: tap_features(model, x.clone(), names))


def parameters_reached(model: nn.Module, run: Callable[[], Mapping[str, Any]]) -> list[nn.Parameter]:
    """Parameters of `model` that the tensors `run()` returns depend on, found as `parameters_used` finds them;
    for wrappers whose feature pass is more than a hooked forward (reshaped or normed maps)."""
    with flags_restored(model) as params:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            taps = run()
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
