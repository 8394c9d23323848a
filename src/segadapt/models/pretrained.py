"""ImageNet initialisation from a local torchvision-format VGG-16 state dict (no download, no unpickling).

torchvision's `vgg16` keys: features.{0,2,5,...,28} are conv1_1..conv5_3, classifier.0 is fc6 (4096 x 25088)
and classifier.3 is fc7 (4096 x 4096). DeepLab-LargeFOV shrinks fc6/fc7 to 1024 channels by keeping every
4th filter, and fc6's 7x7 kernel to 3x3 by keeping taps 0, 3 and 6 (the dilation makes up the field of view).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from segadapt.errors import CheckpointError
from segadapt.models.vgg_deeplab import VGG_BLOCKS, VGGDeepLab

TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found; pass a local VGG-16 state dict to --init-weights")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused: not a plain tensor state dict ({first}); pickled code is never run, "
            "convert the file to safetensors or a plain state dict"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict); got {type(sd).__name__}")
    return sd


def convert_torchvision_vgg16(sd: dict[str, torch.Tensor], model: VGGDeepLab, source: str) -> dict[str, torch.Tensor]:
    """Map torchvision keys onto the model's; shapes are checked against the model, not assumed."""
    own = model.state_dict()
    convs = [f"conv{name}.{2 * i}" for name, _, n, _, _ in VGG_BLOCKS for i in range(n)]
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"{source}: key {key} missing; expected a torchvision-format VGG-16 state dict")
        return sd[key]

    def put(src_key: str, dst: str, value: torch.Tensor) -> None:
        if value.shape != own[dst].shape:
            raise CheckpointError(
                f"{source}: key {src_key} has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[dst].shape)}; ImageNet weights need --width 1.0"
            )
        out[dst] = value

    for idx, dst in zip(TORCHVISION_CONV_INDICES, convs):
        for kind in ("weight", "bias"):
            put(f"features.{idx}.{kind}", f"{dst}.{kind}", take(f"features.{idx}.{kind}"))

    fc6_w, fc6_b = take("classifier.0.weight"), take("classifier.0.bias")
    cin = own["fc6.0.weight"].shape[1]
    if fc6_w.ndim != 2 or fc6_w.shape[1] != cin * 49:
        raise CheckpointError(
            f"{source}: key classifier.0.weight has shape {tuple(fc6_w.shape)}, expected (N, {cin * 49}); "
            "ImageNet weights need --width 1.0"
        )
    fc6 = fc6_w.reshape(-1, cin, 7, 7)[::4][:, :, ::3, ::3]
    put("classifier.0.weight", "fc6.0.weight", fc6.contiguous())
    put("classifier.0.bias", "fc6.0.bias", fc6_b[::4].contiguous())
    fc7_w, fc7_b = take("classifier.3.weight"), take("classifier.3.bias")
    put("classifier.3.weight", "fc7.0.weight", fc7_w[::4, ::4].reshape(*fc7_w[::4, ::4].shape, 1, 1).contiguous())
    put("classifier.3.bias", "fc7.0.bias", fc7_b[::4].contiguous())
    return out


def load_vgg16_imagenet(model: VGGDeepLab, path: str | Path) -> list[str]:
    """Copy ImageNet weights into everything but the classifier; returns the model keys that were set."""
    if not isinstance(model, VGGDeepLab):
        raise CheckpointError(f"{path}: ImageNet VGG-16 weights only fit arch vgg16_deeplab")
    mapped = convert_torchvision_vgg16(read_state_dict(path), model, str(path))
    model.load_state_dict(mapped, strict=False)
    return sorted(mapped)
