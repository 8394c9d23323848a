"""Deploy a model as ONNX or TorchScript, normalisation inside, checked after writing.

Contract of the exported network: input `image`, float32 RGB in 0..255 (not uint8, so stretched 16-bit
data fits too), N x 3 x H x W with N, H and W free (dynamic axes); output `logits`, N x C x H x W. The
model's mean/std normalisation is part of the graph. Resizing is not: to reproduce `segadapt predict`,
resize an image so its shorter side is `base_size` (bilinear), run the network and resize the logits back
(predict also tiles images too large for memory). classes, palette, mean, std and base_size are stored
in the file (ONNX: metadata_props key "segadapt"; TorchScript: extra file "segadapt.json") and in the
sidecar FILE.json with the verification report.

Verification: before the file is renamed into place, it is loaded back (onnxruntime; torch.jit.load) and
run on sample frames at sizes other than the one it was traced at; its argmax must agree with PyTorch's
on at least MIN_AGREEMENT of the pixels, and its logits must be finite and differ from PyTorch's by at most
LOGIT_TOLERANCE x max(1, max |PyTorch logit|): argmax alone passes a graph whose logits are scaled wrong,
and the bound is relative because float32 rounding grows with the logits' size. Exporting ONNX uses
torch's TorchScript-based exporter, which needs no extra package; checking it needs `onnx` and
`onnxruntime` (the `export` extra). onnxruntime is imported with its telemetry off
(ORT_DISABLE_TELEMETRY=1), which otherwise writes a device id under ~/.cache at import.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segadapt.base_size import base_scale
from segadapt.checkpoint import atomic_path, write_json_atomic
from segadapt.data.transforms import resize_image
from segadapt.errors import SegadaptError
from segadapt.models.factory import sha256_file
from segadapt.owned_files import owned, read_record, with_files

FORMATS = ("onnx", "torchscript")
MIN_AGREEMENT = 0.999
LOGIT_TOLERANCE = 1e-3  # max |exported - PyTorch| logit over max(1, max |PyTorch logit|); float32 gives ~1e-6
OPSET = 17
TRACE_SIZE = (64, 96)  # the example input; samples are checked at other sizes, so dynamic H/W is tested
EXPORT_HINT = "pip install 'segadapt[export]'"


class Normalised(nn.Module):
    """RGB in 0..255 -> the model's normalised input -> logits."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image * self.scale + self.shift)


def metadata(meta: dict[str, Any], mean: Sequence[float], std: Sequence[float], base_size: int) -> dict[str, Any]:
    """What a deployment needs besides the graph."""
    return {"input": "image: float32 RGB 0..255, N x 3 x H x W (N, H, W dynamic)",
            "output": "logits: float32 N x C x H x W", "num_classes": meta["num_classes"],
            "class_names": list(meta.get("class_names") or []), "palette": meta.get("palette") or [],
            "ignore_index": meta.get("ignore_index"), "mean": list(mean), "std": list(std), "base_size": base_size,
            "resize": "shorter side to base_size (bilinear) before the network, logits resized back (bilinear); "
                      "base_size 0 = as stored"}


def _require_onnx() -> Any:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # else its import writes ~/.cache/Microsoft/...
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise SegadaptError(f"--format onnx: writing and checking ONNX needs onnx and onnxruntime; "
                            f"{EXPORT_HINT}") from None
    return onnx, onnxruntime


def _write_onnx(net: nn.Module, example: torch.Tensor, path: Path, info: dict[str, Any]) -> Callable:
    onnx, ort = _require_onnx()
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():  # the TorchScript-based exporter announces its successor; it works as is
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buffer, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, opset_version=OPSET, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    proto.metadata_props.add(key="segadapt", value=json.dumps(info))
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])


def _write_torchscript(net: nn.Module, example: torch.Tensor, path: Path, info: dict[str, Any]) -> Callable:
    with warnings.catch_warnings():  # tracing warns that shapes become constants (the check below proves
        warnings.simplefilter("ignore")  # not), and torch.jit announces torch.export as its successor
        traced = torch.jit.trace(net, example)
        torch.jit.save(traced, str(path), _extra_files={"segadapt.json": json.dumps(info)})
        loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda x: loaded(x)


def samples_at_scale(images: Sequence[np.ndarray], base_size: int) -> list[torch.Tensor]:
    """Sample frames as the exported network should see them: base-size resize, float 1 x 3 x H x W."""
    out = []
    for im in images:
        im = resize_image(im, base_scale(im.shape[0], im.shape[1], base_size))
        out.append(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float())
    return out


def _run(net: Callable, x: torch.Tensor, what: str, name: str) -> torch.Tensor:
    """`net(x)`, any failure one line naming the sample (a frame smaller than the network's kernels, ...)."""
    try:
        return net(x)
    except Exception as e:  # whatever the network raises on this input
        text = " ".join(str(e).split())[:300]
        raise SegadaptError(f"export check: {what} cannot run on {name} ({x.shape[2]}x{x.shape[3]} at the network's "
                            f"scale): {type(e).__name__}: {text}; give larger --samples") from None


@torch.inference_mode()
def compare(reference: nn.Module, runner: Callable, samples: Sequence[torch.Tensor],
            names: Sequence[str] = ()) -> dict[str, Any]:
    """Argmax agreement and logit difference (absolute, and relative to max(1, max |reference logit|)) of
    `runner` against `reference` over the samples (`names`: how errors call them)."""
    same = total = 0
    worst = scale = 0.0
    for i, x in enumerate(samples):
        name = names[i] if i < len(names) else f"sample frame {i + 1}"
        a = _run(reference, x, "PyTorch", name)
        b = _run(runner, x, "the exported network", name)
        if a.shape != b.shape:
            raise SegadaptError(f"export check: the exported network gave logits {tuple(b.shape)} for input "
                                f"{tuple(x.shape)}, PyTorch {tuple(a.shape)}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            which = "PyTorch's" if not torch.isfinite(a).all() else "the exported network's"
            raise SegadaptError(f"export check: {which} logits on {name} are not finite (inf or NaN); check the "
                                "model's weights and its data.mean/data.std")
        same += int((a.argmax(1) == b.argmax(1)).sum())
        total += a.shape[0] * a.shape[2] * a.shape[3]
        worst = max(worst, float((a - b).abs().max()))
        scale = max(scale, float(a.abs().max()))
    return {"samples": len(samples), "sizes": [list(x.shape[2:]) for x in samples], "pixels": total,
            "agreement": same / total, "max_abs_logit_diff": worst, "max_abs_logit": scale,
            "relative_logit_diff": worst / max(1.0, scale), "logit_tolerance": LOGIT_TOLERANCE}


def export(model: nn.Module, meta: dict[str, Any], mean: Sequence[float], std: Sequence[float], base_size: int,
           fmt: str, out: Path, images: Sequence[np.ndarray], names: Sequence[str] = ()) -> dict[str, Any]:
    """Write `model` as `fmt` to `out`, verified on `images` (RGB uint8, any size; `names` for errors);
    returns the report, also written to `out`.json. A failed export or check leaves no file, and a file at
    `out` is replaced only when the report beside it says export wrote it (its sha256)."""
    if fmt not in FORMATS:
        raise SegadaptError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    report_path = out.with_name(out.name + ".json")
    earlier = read_record(report_path)
    if report_path.exists() and "files" not in earlier:
        raise SegadaptError(f"{report_path}: exists and is not a report segadapt export wrote, and export would "
                            "replace it; move it away or give another --out")
    replaced = owned(earlier, out.parent, [out.name], "export")
    if fmt == "onnx":
        _require_onnx()
    net = Normalised(copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format), mean, std).eval()
    info = metadata(meta, mean, std, base_size)
    example = torch.rand(1, 3, *TRACE_SIZE, generator=torch.Generator().manual_seed(0)) * 255
    samples = samples_at_scale(images, base_size)
    write = _write_onnx if fmt == "onnx" else _write_torchscript
    with atomic_path(out) as tmp:
        try:
            runner = write(net, example, tmp, info)
        except SegadaptError:
            raise
        except Exception as e:  # an operator the exporter does not support, a trace that fails, ...
            text = " ".join(str(e).split())[:300]
            raise SegadaptError(f"--format {fmt}: the model could not be exported ({type(e).__name__}: {text}); "
                                f"try --format {'torchscript' if fmt == 'onnx' else 'onnx'}") from None
        check = compare(net, runner, samples, names)
        if check["agreement"] < MIN_AGREEMENT or check["relative_logit_diff"] > LOGIT_TOLERANCE:
            raise SegadaptError(f"export check failed: the {fmt} file agrees with PyTorch on "
                                f"{100 * check['agreement']:.3f}% of pixels (at least {100 * MIN_AGREEMENT:.1f}% "
                                f"needed) and its logits differ by up to {check['max_abs_logit_diff']:.3g} "
                                f"({check['relative_logit_diff']:.3g} of the logits' scale "
                                f"{max(1.0, check['max_abs_logit']):.3g}; at most {LOGIT_TOLERANCE:g} allowed); "
                                "nothing was written")
        # the report names the new file's hash before the file takes its name: stopped between the two,
        # the next export still owns whichever file is there
        report = {"format": fmt, "file": out.name, **info, "verification": {
            "runtime": "onnxruntime" if fmt == "onnx" else "torch.jit.load", **check},
            "files": with_files(earlier, {out.name: sha256_file(tmp)}, replaced)}
        write_json_atomic(report_path, report)
    return report


def sample_scenes(n: int = 2) -> list[np.ndarray]:
    """Default check frames when none are given: synthetic road scenes at two sizes (not the traced one)."""
    from segadapt.data.synthetic import SyntheticScenes

    sizes = [(120, 160), (97, 211)]
    return [SyntheticScenes(1, sizes[i % 2], seed=i, split="val").load_image(0) for i in range(n)]
