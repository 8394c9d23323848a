"""A child process's wall time and peak memory, for the benchmarks that time whole commands.

Kept apart from _measure.py (which imports torch): the scripts that import this one re-run themselves as
children whose memory is what they measure, so nothing heavy may load here.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak resident MB, stdout) of one child process.

    The peak comes from GNU time (`/usr/bin/time -f %M`) wrapped around the command, not from this process's
    wait4: Linux carries a process's resident high-water mark across exec, so a child forked from a large
    parent would report the parent's memory. Without GNU time, wait4's figure is used (an upper bound).
    """
    gnu_time = Path("/usr/bin/time").exists()
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile(mode="r", suffix=".rss") as rss:
        wrapped = ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd] if gnu_time else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
        peak_kb = float(rss.read().split()[-1]) if gnu_time else usage.ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed with exit status {proc.returncode}")
    return wall, peak_kb / 1024.0, text  # KiB -> MiB
