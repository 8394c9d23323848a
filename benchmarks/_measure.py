"""What the speed benchmarks share: FLOP counting, interleaved timing, the load average, writing results.

Imported by the scripts beside it (`python benchmarks/<script>.py` puts this folder on sys.path).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from segadapt.checkpoint import write_json_atomic

Step = Callable[[], None]


def count_flops(step: Step) -> int:
    """FLOPs of one call (convolutions and matmuls, forward and backward); the call also warms up."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def interleaved_times(steps: Mapping[str, Step], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, `repeats` times, in rotating order so none always runs first:
    a machine that speeds up or slows down during the run affects every variant alike."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t)
    return times


def _best_seconds(call: Step, repeats: int) -> float:
    """Best of `repeats` timed calls after one warm-up call."""
    call()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(n: int, repeats: int, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of an n x n by n x n torch.mm in `dtype` (after one warm-up product)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    return 2 * n**3 / _best_seconds(lambda: torch.mm(a, b, out=out), repeats) / 1e9


def conv_peak(shape: tuple[int, int, int, int], repeats: int, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of a 3x3 convolution (same padding, as many output as input channels) on an NHWC batch of
    `shape` (N, C, H, W) in `dtype`: the kernel oneDNN runs for VGG's layers, often faster than torch.mm."""
    n, c, h, w = shape
    x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, c, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = _best_seconds(lambda: torch.nn.functional.conv2d(x, weight, padding=1), repeats)
    return 2 * n * c * c * 9 * h * w / seconds / 1e9


PEAK_MM = (512, 1024, 2048)  # sides of the square products timed
PEAK_CONV = (8, 256, 60, 80)  # a VGG conv4-sized layer at width 1.0 on a 240x320 input, batch 8
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def timed_precisions(force_bf16: bool = False) -> tuple[str, ...]:
    """fp32, and bf16 where the CPU computes it natively (or when asked): emulated bf16 can be hundreds of times
    slower, so a benchmark on such a host records fp32 only rather than spend minutes on a known loser."""
    from segadapt.runtime import cpu_native_bf16

    return ("fp32", "bf16") if force_bf16 or cpu_native_bf16() else ("fp32",)


def kernel_peaks(repeats: int = 3, quick: bool = False,
                 precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, dict[str, Any]]:
    """Per precision: the GFLOP/s of torch.mm at a few sizes and of a large oneDNN convolution, and the best of
    them, the rate this machine's kernels are measured to reach."""
    sizes, conv = ((128, 256), (2, 32, 16, 16)) if quick else (PEAK_MM, PEAK_CONV)
    out: dict[str, dict[str, Any]] = {}
    for name in precisions:
        dtype = PEAK_DTYPES[name]
        rates = {f"mm_{n}": matmul_peak(n, repeats, dtype) for n in sizes}
        rates["conv3x3_" + "x".join(map(str, conv))] = conv_peak(conv, repeats, dtype)
        best = max(rates, key=rates.__getitem__)
        out[name] = {"gflop_per_s": round(rates[best], 1), "kernel": best,
                     "kernels": {k: round(v, 1) for k, v in rates.items()}}
    return out


def _clock_ghz() -> tuple[float | None, str]:
    """The CPU's clock and where it was read: cpufreq's maximum, else /proc/cpuinfo's "cpu MHz" (the current
    or, under a hypervisor, the nominal clock; turbo can exceed it); None where neither exists."""
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return int(khz) / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1e3, "cpu MHz of /proc/cpuinfo (may be below turbo)"
    except (OSError, ValueError, IndexError):
        pass
    return None, "not readable on this platform"


# FLOPs per cycle per core of one vector FMA unit: lanes x 2 (multiply and add); AVX-512 BF16's dot product
# (vdpbf16ps) does two products per fp32 lane; AMX: Intel's stated 1024 bf16 FLOPs per cycle per core
_FMA_FLOPS = {"avx512f": 32, "avx2": 16}
FMA_UNITS = 2  # per core: what server x86 cores have; no CPU feature says, so it is an assumption


def nominal_peaks(threads: int) -> dict[str, Any]:
    """fp32 and bf16 FLOP/s the CPU's features and clock promise for `threads` cores, with how they were read;
    None where the clock or the vector unit cannot be read (say so rather than guess)."""
    from segadapt.runtime import cpu_features, cpu_native_bf16

    features = cpu_features()
    ghz, clock_from = _clock_ghz()
    unit = next((f for f in _FMA_FLOPS if f in features and (f != "avx2" or "fma" in features)), None)
    fp32 = _FMA_FLOPS[unit] * FMA_UNITS if unit else None
    native = cpu_native_bf16()
    bf16 = {"amx_bf16": 1024, "avx512_bf16": 2 * (fp32 or 0)}.get(native or "", fp32) or None
    per = {"fp32": fp32, "bf16": bf16}
    return {
        "clock_ghz": ghz, "clock_from": clock_from, "cores": threads, "vector_unit": unit, "native_bf16": native,
        "flops_per_cycle_per_core": per,
        "gflop_per_s": {k: round(v * ghz * threads, 1) if v and ghz else None for k, v in per.items()},
        "assumes": f"{FMA_UNITS} FMA units per core (not reported by the CPU); bf16 as fp32 without native bf16",
    }


def measured_peaks(threads: int, repeats: int = 3, quick: bool = False,
                   precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, Any]:
    """What a "fraction of peak" divides by: `kernel_peaks` in fp32 and bf16, and `nominal_peaks`, flagged where a
    kernel beat it (the clock read is below the one the cores run at, or the FMA assumption is wrong)."""
    kernels, nominal = kernel_peaks(repeats, quick, precisions), nominal_peaks(threads)
    nominal["measured_above_nominal"] = [p for p, v in nominal["gflop_per_s"].items()
                                         if v is not None and p in kernels and kernels[p]["gflop_per_s"] > v]
    return {**kernels, "nominal": nominal}


def reached_peak(peaks: dict[str, Any], precision: str, rates: Mapping[str, float]) -> dict[str, Any]:
    """The peak a step in `precision` is measured against: the fastest rate any kernel reached in this run, the
    timed steps' own (`rates`, name -> GFLOP/s) included, so a fraction of it never exceeds 1 and says how
    close the step came to the best this machine was seen to do; and which kernel set it."""
    best = max(rates, key=rates.__getitem__, default=None)
    own = peaks[precision]
    if best is not None and rates[best] > own["gflop_per_s"]:
        return {"gflop_per_s": round(rates[best], 1), "kernel": best}
    return {"gflop_per_s": own["gflop_per_s"], "kernel": own["kernel"]}


def peak_lines(peaks: dict[str, Any], reached: dict[str, dict[str, Any]]) -> str:
    """The peaks of `measured_peaks` and `reached_peak` in two lines for the console."""
    nominal = peaks["nominal"]["gflop_per_s"]
    lines = []
    for p in reached:
        nom = f"{nominal[p]:.0f}" if nominal[p] else "not readable"
        lines.append(f"{p} peak {reached[p]['gflop_per_s']:.1f} GFLOP/s ({reached[p]['kernel']}; kernels "
                     + ", ".join(f"{k} {v:.0f}" for k, v in peaks[p]["kernels"].items()) + f"; nominal {nom})")
    return "\n".join(lines)


def step_arguments(p: argparse.ArgumentParser, width: float, batch: int, repeats: int) -> None:
    """The options every step benchmark takes: model width, input size, batch, threads, repeats, --quick, --out."""
    p.add_argument("--width", type=float, default=width)
    p.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--repeats", type=int, default=repeats, help="timed steps per variant; the median is reported")
    p.add_argument("--quick", action="store_true", help="tiny sanity run: width 0.125, 64x96, 2 repeats")
    p.add_argument("--out", type=Path, help="write the results as JSON here")


def use_threads(requested: int) -> int:
    """Set torch's thread count (0 = all cores) and return it, for the results."""
    threads = requested or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def load_average() -> float | None:
    """The 1-minute load average: how busy the machine was, recorded beside its timings."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def finish(result: dict[str, Any], out: Path | None, summary: Any) -> int:
    """Write the results as JSON to `out`, or print `summary` as JSON when no file was asked for."""
    if out:
        write_json_atomic(out, result)
        print(f"wrote {out}")
    else:
        print(json.dumps(summary))
    return 0
