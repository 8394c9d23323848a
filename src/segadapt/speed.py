"""How a model runs fastest on this machine: memory layout (NCHW or NHWC) and precision (fp32 or bf16 autocast).

Which is faster depends on the CPU (its vector units, whether it computes bf16 natively), the torch build and
the layer widths, so it is measured rather than assumed: each candidate runs on the job's own model and batch
and the faster is kept. This is the one place that does so: training, adaptation and the label-free peers
(`train.channels_last` / `train.precision` = "auto", settled by `run.Run.settle`) and predict and evaluate
(`--precision auto`).

bf16 is a candidate only where it can win: on a CPU that computes it natively (runtime.cpu_native_bf16;
elsewhere it is emulated, many times slower) and, on CUDA, under the GPU rule of runtime.autocast_dtype
(no timing there). For inference bf16 is kept only when its masks agree with fp32's on >= AGREEMENT of the
pixels of the sample, reported with the choice.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from segadapt.models.modes import modes_restored
from segadapt.runtime import autocast_dtype, cpu_native_bf16

AGREEMENT = 0.995  # share of pixels whose class a bf16 prediction must share with fp32's to be kept
K = TypeVar("K", bound=Hashable)


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where `precision` (train.precision, settled or "auto") asks for it, else plain float32."""
    dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def precision_candidates(requested: str, device: torch.device) -> list[str]:
    """The precisions worth timing for `requested`: itself when fixed; for "auto" the CUDA rule's pick on a GPU,
    fp32 and bf16 on a CPU with native bf16, fp32 alone on one without (emulated bf16 is never faster) and under
    torchrun."""
    if requested != "auto":
        return [requested]
    if device.type == "cuda":
        return ["bf16" if autocast_dtype(device) is not None else "fp32"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun ranks must agree, and a timing each would not
        return ["fp32"]
    return ["fp32", "bf16"] if cpu_native_bf16() else ["fp32"]


def best_times(steps: Mapping[K, Callable[[], Any]], repeats: int = 2, device: torch.device | None = None,
               prepare: Callable[[K], None] | None = None) -> tuple[dict[K, float], dict[K, Any]]:
    """Best of `repeats` seconds of each step after one warm-up call each, the steps taking turns so a machine
    that slows down during the timing affects each alike; and each step's last result. `prepare(k)` runs
    untimed before each call of step k (e.g. converting a shared model to its layout)."""
    seconds: dict[K, float] = {k: float("inf") for k in steps}
    results: dict[K, Any] = {}

    def call(k: K) -> float:
        if prepare is not None:
            prepare(k)
        t = time.perf_counter()
        results[k] = steps[k]()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    for k in steps:
        call(k)
    for _ in range(repeats):
        for k in steps:
            seconds[k] = min(seconds[k], call(k))
    return seconds, results


@dataclass(frozen=True)
class Variant:
    """One way to run a training step: NHWC or NCHW, fp32 or bf16 autocast."""

    channels_last: bool
    precision: str

    @property
    def name(self) -> str:
        return f"{'NHWC' if self.channels_last else 'NCHW'} {self.precision}"


def fastest_training(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device,
                     variants: list[Variant], repeats: int = 2) -> tuple[Variant, dict[Variant, float]]:
    """The variant whose forward and backward pass of `model` on a random batch of `shape` is fastest, and the
    seconds of each. Timed on a copy in eval mode (no BatchNorm statistics move, no dropout draws from the RNG
    a run checkpoints), so the model itself is left as it was."""
    probe = copy.deepcopy(model).requires_grad_(True)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)

    def fmt(v: Variant) -> torch.memory_format:
        return torch.channels_last if v.channels_last else torch.contiguous_format

    def step(v: Variant) -> Callable[[], None]:
        xi = x.contiguous(memory_format=fmt(v))

        def run() -> None:
            with autocast(device, v.precision):
                out = probe(xi)
            out.float().sum().backward()
            probe.zero_grad(set_to_none=True)

        return run

    with modes_restored(probe):
        probe.eval()
        seconds, _ = best_times({v: step(v) for v in variants}, repeats, device,
                                prepare=lambda v: probe.to(memory_format=fmt(v)))  # untimed; a no-op if it is
    return min(variants, key=seconds.__getitem__), seconds


@dataclass
class PrecisionChoice:
    """What inference runs in, and why: the seconds of each precision timed, and where bf16 was tried the share
    of the sample's pixels whose class it predicts as fp32 does."""

    precision: str
    seconds: dict[str, float] = field(default_factory=dict)
    agreement: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
                "agreement_with_fp32": None if self.agreement is None else round(self.agreement, 5),
                "note": self.note}

    def line(self) -> str:
        """One line for the console."""
        parts = [f"precision: {self.precision}"]
        if self.seconds:
            parts.append("a sample took " + ", ".join(f"{k} {v:.3g} s" for k, v in self.seconds.items()))
        if self.agreement is not None:
            parts.append(f"masks agree with fp32 on {self.agreement:.2%} of pixels")
        return "; ".join(parts + ([self.note] if self.note else []))


def choose_inference_precision(requested: str, device: torch.device,
                               predict: Callable[[str], torch.Tensor], repeats: int = 2) -> PrecisionChoice:
    """The precision predict and evaluate run in. `predict(precision)` labels a sample (class per pixel) the way
    the command will. "auto": bf16 where it is a candidate, is faster on the sample and its labels agree with
    fp32's on >= AGREEMENT of the pixels, else fp32; "bf16" as asked, with its agreement measured too."""
    candidates = precision_candidates(requested, device)
    if requested == "fp32" or candidates == ["fp32"]:
        return PrecisionChoice("fp32")
    if requested == "auto" and device.type == "cuda":  # the GPU rule stands, untimed
        return PrecisionChoice(candidates[0])
    seconds, labels = best_times({p: (lambda p=p: predict(p)) for p in ("fp32", "bf16")},
                                 repeats if requested == "auto" else 0, device)
    agreement = float((labels["bf16"] == labels["fp32"]).float().mean())
    if requested == "bf16":
        note = "" if agreement >= AGREEMENT else f"below the {AGREEMENT:.1%} auto requires"
        return PrecisionChoice("bf16", {}, agreement, note)
    if seconds["bf16"] >= seconds["fp32"]:
        return PrecisionChoice("fp32", seconds, agreement, "bf16 was not faster")
    if agreement < AGREEMENT:
        return PrecisionChoice("fp32", seconds, agreement, f"bf16 agreed on fewer than {AGREEMENT:.1%}")
    return PrecisionChoice("bf16", seconds, agreement)
