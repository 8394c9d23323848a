"""What the speed benchmarks share: FLOP counting, interleaved timing, the load average, writing results.

Imported by the scripts beside it (`python benchmarks/<script>.py` puts this folder on sys.path).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
