"""Model registry: `model.arch` names a constructor taking (num_classes, width) that returns a
`SegmentationModel` (models/contract.py). A new architecture plugs in by adding an entry here.

`hf:DIR` (not a key) builds a fresh transformers model of the architecture in DIR/config.json.
"""

from __future__ import annotations

from collections.abc import Callable

from segadapt.errors import ConfigError
from segadapt.models.contract import HookedModel, SegmentationModel, conform
from segadapt.models.vgg_deeplab import PixelNet, VGGDeepLab


def segformer_b0(num_classes: int, width: float = 1.0) -> SegmentationModel:
    """SegFormer-B0 (transformers), imported only when asked for."""
    from segadapt.models.hf_dir import segformer_b0 as build

    return build(num_classes, width)


ARCHS: dict[str, Callable[[int, float], SegmentationModel]] = {
    "vgg16_deeplab": VGGDeepLab, "pixel": PixelNet, "segformer_b0": segformer_b0,
}
NEEDS_TRANSFORMERS = ("segformer_b0",)  # plus every hf:DIR


def build_model(arch: str, num_classes: int, width: float = 1.0) -> SegmentationModel:
    """A freshly initialised model; config mistakes surface as ConfigError, not a deep traceback."""
    if arch not in ARCHS and not arch.startswith("hf:"):
        raise ConfigError(f"unknown model.arch {arch!r}; choose one of {', '.join(ARCHS)}, or hf:DIR for the "
                          "architecture in a transformers config.json")
    if num_classes < 1 or not width > 0:
        raise ConfigError(f"model.width must be > 0 and num_classes >= 1; got {width} and {num_classes}")
    if arch.startswith("hf:"):
        from segadapt.models.hf_dir import from_hf_arch

        return from_hf_arch(arch, num_classes, width)
    return ARCHS[arch](num_classes, width)


__all__ = ["ARCHS", "HookedModel", "PixelNet", "SegmentationModel", "VGGDeepLab", "build_model", "conform"]
