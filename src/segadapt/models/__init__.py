"""Model registry: `model.arch` names a constructor taking (num_classes, width) that returns a
`SegmentationModel` (models/contract.py). A new architecture plugs in by adding an entry here."""

from __future__ import annotations

from collections.abc import Callable

from segadapt.errors import ConfigError
from segadapt.models.contract import HookedModel, SegmentationModel, conform
from segadapt.models.vgg_deeplab import PixelNet, VGGDeepLab

ARCHS: dict[str, Callable[[int, float], SegmentationModel]] = {"vgg16_deeplab": VGGDeepLab, "pixel": PixelNet}


def build_model(arch: str, num_classes: int, width: float = 1.0) -> SegmentationModel:
    """A freshly initialised model; config mistakes surface as ConfigError, not a deep traceback."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown model.arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 1 or not width > 0:
        raise ConfigError(f"model.width must be > 0 and num_classes >= 1; got {width} and {num_classes}")
    return ARCHS[arch](num_classes, width)


__all__ = ["ARCHS", "HookedModel", "PixelNet", "SegmentationModel", "VGGDeepLab", "build_model", "conform"]
