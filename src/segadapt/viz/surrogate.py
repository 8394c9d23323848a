"""Surrogate gradients for inverting a network: exact forward values, gradients that reach switched-off units.

Why: a ReLU below zero and a max-pool's non-maximal inputs pass no gradient. When X̂ has a unit off where X1
has it on, nothing turns it on, and a reconstruction stalls far above its attainable loss (pool1 of a
narrow VGG: 20x, with half the residual at such units). Inside `surrogate_gradients` every `nn.ReLU` and
`nn.MaxPool2d` still computes its exact output (so the loss is the true one), but its backward pass is
that of a leaky ReLU, and of a max-pool sharing part of its gradient evenly across its window.
Activations called as functions (`F.relu`) and other modules are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

RELU_SLOPE = 0.3  # backward slope below zero
POOL_SHARE = 0.5  # share of a max-pool's gradient spread evenly over its window


def _straight_through(exact: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """The value of `exact` with the gradient of `surrogate`."""
    return surrogate + (exact - surrogate).detach()


def _relu_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    return _straight_through(output, F.leaky_relu(inputs[0], RELU_SLOPE))


def _pool_hook(module: nn.MaxPool2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
    if module.return_indices or module.dilation not in (1, (1, 1)):
        return None  # no average pool with the same windows: keep the exact gradient
    mean = F.avg_pool2d(inputs[0], module.kernel_size, module.stride, module.padding,
                        ceil_mode=module.ceil_mode, count_include_pad=False)
    if mean.shape != output.shape:
        return None
    return _straight_through(output, (1 - POOL_SHARE) * output + POOL_SHARE * mean)


@contextmanager
def surrogate_gradients(model: nn.Module) -> Iterator[None]:
    """Within the block, the model's ReLUs and max-pools back-propagate as described above.

    In-place ReLUs are made out-of-place for the block (the hook needs their input); on exit every hook is
    removed and every `inplace` flag restored.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    inplace = [m.inplace for m in relus]
    handles = [m.register_forward_hook(_relu_hook) for m in relus]
    handles += [m.register_forward_hook(_pool_hook) for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    try:
        for m in relus:
            m.inplace = False
        yield
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(relus, inplace):
            m.inplace = flag
