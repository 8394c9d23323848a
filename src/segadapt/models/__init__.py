"""Model registry: the config's `model.arch` names a constructor taking (num_classes, width)."""

from __future__ import annotations

from torch import nn

from segadapt.errors import ConfigError
from segadapt.models.vgg_deeplab import PixelNet, VGGDeepLab

ARCHS: dict[str, type[nn.Module]] = {"vgg16_deeplab": VGGDeepLab, "pixel": PixelNet}


def build_model(arch: str, num_classes: int, width: float = 1.0) -> nn.Module:
    """A freshly initialised model; config mistakes surface as ConfigError, not a deep traceback."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown model.arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 1 or not width > 0:
        raise ConfigError(f"model.width must be > 0 and num_classes >= 1; got {width} and {num_classes}")
    return ARCHS[arch](num_classes, width)


__all__ = ["ARCHS", "PixelNet", "VGGDeepLab", "build_model"]
