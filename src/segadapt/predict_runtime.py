"""Which runtime runs predict's network: PyTorch, onnxruntime, or whichever is faster here (`auto`).

onnxruntime runs the same network exported to ONNX in memory (export.py's exporter and opset: tiles of any
size and batch, dynamic axes), on the CPU with as many threads as torch has, so each process of a torchrun
launch keeps to its share. Measured on one core it was 1.2-1.3x faster than PyTorch channels-last for
VGG-DeepLab; by how much depends on the CPU, the layer widths and how busy the cores are, so `auto` measures
instead of assuming, as `train.channels_last = "auto"` does: on the run's first tile batch it runs each
runtime twice and keeps the one whose second run (the first warms caches and allocators) was faster, saying
so once. A network the exporter cannot convert stays on PyTorch under `auto` (one note) and is refused in one
line under `onnxruntime`. Outputs agree within float rounding, not bit for bit, and the runtime is not part of
what decides whether an earlier result is kept.
"""

from __future__ import annotations

import io
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from segadapt.errors import ConfigError

RUNTIMES = ("torch", "onnxruntime", "auto")
Runner = Callable[[torch.Tensor], torch.Tensor]


def onnx_runner(model: nn.Module, channels: int = 3) -> Runner:
    """`model` (normalised N x 3 x H x W -> logits) exported to ONNX and run by onnxruntime on the CPU."""
    from segadapt.export import OPSET, _require_onnx

    _, ort = _require_onnx()
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    example = torch.zeros(1, channels, 64, 64)
    with warnings.catch_warnings(), torch.no_grad():  # the TorchScript-based exporter announces its successor
        warnings.simplefilter("ignore")
        net = model.to(memory_format=torch.contiguous_format) if hasattr(model, "to") else model
        torch.onnx.export(net, (example,), buffer, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, opset_version=OPSET, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {"image": x.float().contiguous().numpy()})[0])

    return run


def torch_runner(model: nn.Module) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.contiguous(memory_format=torch.channels_last)).float()

    return run


class Auto:
    """Times both runtimes on the first batch it is given and runs the faster from then on; `report` says
    which, and the seconds of each."""

    def __init__(self, runners: dict[str, Runner]) -> None:
        self.runners, self.chosen = runners, ""
        self.report: dict[str, Any] = {"asked": "auto"}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.chosen:
            seconds, outs = {}, {}
            for name, run in self.runners.items():
                times = []
                for _ in range(2):
                    t = time.perf_counter()
                    outs[name] = run(x)
                    times.append(time.perf_counter() - t)
                seconds[name] = times[-1]
            self.chosen = min(seconds, key=seconds.__getitem__)
            self.report |= {"chosen": self.chosen, "seconds": {k: round(v, 4) for k, v in seconds.items()},
                            "batch": list(x.shape)}
            print(f"segadapt: runtime: {self.chosen} (first tile batch {tuple(x.shape)}: "
                  + ", ".join(f"{k} {v:.3g} s" for k, v in seconds.items()) + ")", file=sys.stderr)
            return outs[self.chosen]
        return self.runners[self.chosen](x)


def choose(model: nn.Module, runtime: str, device: torch.device) -> tuple[Runner | None, dict[str, Any]]:
    """The runner for `runtime` (None: the Predictor's own PyTorch forward) and what predictions.json records."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: choose one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return None, {"asked": "torch", "chosen": "torch"}
    if device.type != "cpu":
        if runtime == "onnxruntime":
            raise ConfigError(f"--runtime onnxruntime runs on the CPU, and this run's device is {device}; give "
                              "--device cpu, or --runtime torch")
        return None, {"asked": "auto", "chosen": "torch", "why": f"device {device}"}
    try:
        ort = onnx_runner(model)
    except ConfigError:
        raise
    except Exception as e:  # an operator the exporter cannot convert, or onnx/onnxruntime missing
        text = " ".join(str(e).split())[:200]
        if runtime == "onnxruntime":
            raise ConfigError(f"--runtime onnxruntime: the model could not be exported to ONNX "
                              f"({type(e).__name__}: {text}); use --runtime torch") from None
        print(f"segadapt: note: --runtime auto: the model could not be exported to ONNX ({type(e).__name__}); "
              "predicting with torch", file=sys.stderr)
        return None, {"asked": "auto", "chosen": "torch", "why": "no ONNX export"}
    finally:
        model.to(memory_format=torch.channels_last)  # as Predictor keeps it on the CPU
    if runtime == "onnxruntime":
        return ort, {"asked": "onnxruntime", "chosen": "onnxruntime"}
    auto = Auto({"torch": torch_runner(model), "onnxruntime": ort})
    return auto, auto.report
