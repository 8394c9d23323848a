"""What a module's output means as class logits: the one place segadapt unpacks a forward's return value.

Networks return their logits in many wrappers: a tensor, torchvision's dict {"out": ..., "aux": ...}, or a
transformers `ModelOutput` (`SemanticSegmenterOutput.logits`; a `ModelOutput` is also a Mapping, so it is
tested for `.logits` before the dict convention). Every forward behind the model contract returns plain
(N, classes, H, W) logits at the input's size, so no loop, probe or evaluator unpacks outputs itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from segadapt.errors import ConfigError


def logits_of(output: Any) -> torch.Tensor:
    """The class logits in a module's output: a tensor, `.logits` (transformers) or dict["out"] (torchvision)."""
    if not isinstance(output, torch.Tensor):
        found = getattr(output, "logits", None)
        if found is None and isinstance(output, Mapping):
            found = output.get("logits", output.get("out"))
        output = found
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        raise ConfigError("the model must return (N, classes, H, W) logits: a tensor, a dict with 'out', or an "
                          "object with .logits (a transformers model's output)")
    return output


def at_input_size(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits resized to the input's height and width (bilinear, align_corners=False, as transformers' own
    post-processing does): what a forward behind the contract returns, whatever stride its head has."""
    if logits.shape[-2:] != x.shape[-2:]:
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def forward_logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`net(x)` as class logits at `x`'s size."""
    return at_input_size(logits_of(net(x)), x)


def classes_read_off(model: torch.nn.Module, size: int = 64) -> int:
    """The classes a module predicts, read off one forward on a small blank image (for a module that does not
    say: a plain `nn.Module` behind no contract and no model file)."""
    p = next(model.parameters())
    was = model.training
    try:
        with torch.inference_mode():
            return int(logits_of(model.eval()(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))).shape[1])
    finally:
        model.train(was)
