"""Model registry: a name in the config maps to a constructor (num_classes, width)."""

from __future__ import annotations

from torch import nn

from segadapt.errors import ConfigError
from segadapt.models.vgg_deeplab import PixelNet, VGGDeepLab

ARCHS = {"vgg16_deeplab": VGGDeepLab, "pixel": PixelNet}


def build_model(arch: str, num_classes: int, width: float = 1.0) -> nn.Module:
    if arch not in ARCHS:
        raise ConfigError(f"unknown model arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch](num_classes, width)


__all__ = ["ARCHS", "PixelNet", "VGGDeepLab", "build_model"]
