"""How long `segadapt demo` takes here, where the time goes, and how fast this machine is while it runs.

    python benchmarks/demo_time.py [--out docs/results/demo_time.json]

Runs `segadapt demo` once in a child process (GNU time: wall seconds and peak resident memory), in a temporary
folder deleted afterwards, and reads each run's own training time from the files it wrote (H1, B1, B2 and every
regression); the rest (scene rendering, D2 written, scoring, figures, report, start-up) is what remains of the
wall time. The machine's fp32 matmul peak is measured before and after: a wall time alone says as much about
the host as about the code (the same demo, same table, took 4 min 18 s on a host whose peak measured 197 GFLOP/s
and 12 min 38 s on one measuring 55-65), so the two are reported together, with the 1-minute load average.
The sha256 of results.md lets two runs (two commits, two machines) check that they printed the same table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _measure import finish, load_average, matmul_peak
from _process import run_measured
from segadapt.runtime import environment

BAR_S = 240.0  # issue #18: the demo in under 4 minutes on 2 cores


def phases(out: Path) -> dict[str, float]:
    """Training seconds of each run in the demo's output folder, as the runs recorded them."""
    found: dict[str, float] = {}
    for f in sorted(out.rglob("metrics.json")) + sorted(out.rglob("adapt.json")):
        seconds = json.loads(f.read_text()).get("train_time_s")
        if isinstance(seconds, (int, float)):
            found[f.parent.name] = round(float(seconds), 1)
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the results as JSON here (e.g. docs/results/demo_time.json)")
    p.add_argument("--matmul", type=int, default=2048, help="side of the square matmul that measures the peak")
    args = p.parse_args()

    peak_before = max(matmul_peak(args.matmul, 5) for _ in range(2))
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="segadapt-demo-") as tmp:
        wall, peak_mb, _ = run_measured([sys.executable, "-m", "segadapt", "demo", "--out", tmp])
        runs = [d for d in Path(tmp).iterdir() if (d / "results.md").is_file()]
        if len(runs) != 1:
            raise SystemExit(f"expected one demo run under {tmp}, found {len(runs)}")
        table = (runs[0] / "results.md").read_bytes()
        spent = phases(runs[0])
    peak_after = matmul_peak(args.matmul, 5)
    trained = sum(spent.values())
    result: dict[str, Any] = {
        "wall_s": round(wall, 1),
        "under_4_min": wall < BAR_S,
        "peak_rss_mb": round(peak_mb, 1),
        "train_s": spent,
        "train_total_s": round(trained, 1),
        "other_s": round(wall - trained, 1),
        "results_md_sha256": hashlib.sha256(table).hexdigest(),
        "matmul_peak_gflop_per_s": {"before": round(peak_before, 1), "after": round(peak_after, 1)},
        "load_avg_1min": {"before": load_before, "after": load_average()},
        "environment": environment(),
    }
    print(f"segadapt demo: {wall:.0f} s wall ({'under' if wall < BAR_S else 'over'} {BAR_S:.0f} s), "
          f"{peak_mb:.0f} MB peak; training {trained:.0f} s ({', '.join(f'{k} {v:.0f}' for k, v in spent.items())}),"
          f" the rest {wall - trained:.0f} s; fp32 matmul peak {peak_before:.0f} / {peak_after:.0f} GFLOP/s "
          f"before / after")
    return finish(result, args.out, result)


if __name__ == "__main__":
    sys.exit(main())
