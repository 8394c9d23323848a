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


def matmul_peak(n: int, repeats: int) -> float:
    """Best fp32 GFLOP/s of an n x n by n x n torch.mm (after one warm-up product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


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
