"""ImageNet initialisation from a local torchvision-format VGG-16 state dict (no download, no unpickling).

torchvision's `vgg16` keys: features.{0,2,5,...,28} are conv1_1..conv5_3, classifier.0 is fc6 (4096 x 25088)
and classifier.3 is fc7 (4096 x 4096). DeepLab-LargeFOV shrinks fc6/fc7 to 1024 channels by keeping every
4th filter, and fc6's 7x7 kernel to 3x3 by keeping taps 0, 3 and 6 (the dilation makes up the field of view).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from segadapt.chatter import hushed
from segadapt.checkpoint import check_finite
from segadapt.errors import CheckpointError
from segadapt.models.vgg_deeplab import VGG_BLOCKS, VGGDeepLab

TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _load_error_detail(e: Exception) -> str:
    """One informative line from a loader error; torch.load's weights_only error is a page of advice."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = m.group(1) if m else (lines[0] if lines else type(e).__name__)
    detail = detail.split(" was not an allowed global")[0].split(". ")[0]
    return detail if len(detail) <= 160 else detail[:157].rsplit(" ", 1)[0] + "..."


def read_state_dict(path: str | Path, what: str = "VGG-16 weights",
                    flag: str = "--init-weights") -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, or from a torch.save'd dict with weights_only=True: no pickled code runs.

    `what` and `flag` name, in the error lines, what the file should hold and the option that points at it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found; point {flag} at a local file of {what}")
    with path.open("rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            detail = _load_error_detail(e)
            raise CheckpointError(f"{path}: unreadable safetensors file ({detail}); re-export it") from None
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive (or, long ago, a pickle)
        raise CheckpointError(f"{path}: neither a torch.save file nor safetensors; expected {what}")
    try:
        # torch's weights-only unpickler warns about any pickle protocol but 2 (plain pickle.dump files) before
        # it refuses them; what the user needs is the one line below, so nothing torch.load warns reaches them
        with hushed():
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):  # torch refused to unpickle an object
            raise CheckpointError(
                f"{path}: refused: not a plain state dict of tensors ({_load_error_detail(e)}); pickled code is "
                "never run, so re-save it with torch.save(model.state_dict()) or as .safetensors"
            ) from None
        raise CheckpointError(f"{path}: corrupt or truncated torch.save file ({_load_error_detail(e)}); "
                              "download or export it again") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: holds a {type(sd).__name__}, not a dict; save model.state_dict()")
    odd = [str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(
            f"{path}: entries {odd[:3]} are not tensors; a training checkpoint? save model.state_dict() alone"
        )
    return sd


def convert_torchvision_vgg16(
    sd: dict[str, torch.Tensor], model: VGGDeepLab, source: str
) -> dict[str, tuple[str, torch.Tensor]]:
    """{model key: (torchvision key, tensor)}; shapes are checked against the model, not assumed.

    Works for any width whose shapes line up, which lets tests use a small model and a matching fake dict.
    """
    own = model.state_dict()
    convs = [f"conv{name}.{2 * i}" for name, _, n, _, _ in VGG_BLOCKS for i in range(n)]
    out: dict[str, tuple[str, torch.Tensor]] = {}

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"{source}: key {key} missing; expected a torchvision VGG-16 state dict")
        return sd[key]

    def put(src_key: str, dst: str, value: torch.Tensor) -> None:
        if value.shape != own[dst].shape:
            raise CheckpointError(
                f"{source}: key {src_key} has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[dst].shape)}; "
                + ("ImageNet weights need --width 1.0" if model.width != 1.0 else
                   "expected a plain torchvision vgg16 state dict (not vgg16_bn or another variant)")
            )
        out[dst] = (src_key, value.contiguous())

    for idx, dst in zip(TORCHVISION_CONV_INDICES, convs):
        for kind in ("weight", "bias"):
            key = f"features.{idx}.{kind}"
            put(key, f"{dst}.{kind}", take(key))

    # fc6: (4096, 512*7*7) -> (4096, 512, 7, 7) -> every 4th filter, kernel taps 0/3/6 -> (1024, 512, 3, 3)
    fc6_w = take("classifier.0.weight")
    cin = own["fc6.0.weight"].shape[1]
    if fc6_w.ndim != 2 or fc6_w.shape[1] != cin * 49:
        raise CheckpointError(
            f"{source}: key classifier.0.weight has shape {tuple(fc6_w.shape)}, expected (N, {cin * 49}); "
            "ImageNet weights need --width 1.0"
        )
    put("classifier.0.weight", "fc6.0.weight", fc6_w.reshape(-1, cin, 7, 7)[::4, :, ::3, ::3])
    put("classifier.0.bias", "fc6.0.bias", take("classifier.0.bias")[::4])
    # fc7: (4096, 4096) -> every 4th output and input -> (1024, 1024, 1, 1)
    fc7_w = take("classifier.3.weight")
    if fc7_w.ndim != 2:
        raise CheckpointError(f"{source}: key classifier.3.weight is {tuple(fc7_w.shape)}, expected 2-D")
    put("classifier.3.weight", "fc7.0.weight", fc7_w[::4, ::4, None, None])
    put("classifier.3.bias", "fc7.0.bias", take("classifier.3.bias")[::4])
    return out


def load_vgg16_imagenet(model: VGGDeepLab, path: str | Path) -> list[str]:
    """Copy ImageNet weights into everything but the classifier (fc8 stays random: other classes).

    Returns one "torchvision key -> model key" line per tensor set, for the run log.
    """
    if not isinstance(model, VGGDeepLab):
        raise CheckpointError(f"{path}: ImageNet VGG-16 weights only fit arch vgg16_deeplab; set model.arch")
    mapped = convert_torchvision_vgg16(read_state_dict(path), model, str(path))
    check_finite({src: value for src, value in mapped.values()}, path)  # only what is copied: fc8 is not
    model.load_state_dict({dst: value for dst, (_, value) in mapped.items()}, strict=False)
    return [f"{src} -> {dst}" for dst, (src, _) in mapped.items()]
