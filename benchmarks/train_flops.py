"""Achieved FLOP/s of supervised training (VGG-DeepLab forward + backward + SGD) against the machine's measured
fp32 matmul peak, for NCHW (contiguous) vs NHWC (channels_last) and oneDNN (torch.backends.mkldnn) on vs off,
all in one run.

The peak is the best of several large torch.mm timings (2n^3 FLOPs each): what this CPU and torch build
reach on the most favourable kernel. Training FLOPs per step are counted by torch.utils.flop_counter
(convolutions forward and backward; the SGD update is a few elementwise passes and is not counted). The
four configurations are timed interleaved, in rotating order, after a warm-up step each; medians reported.
Defaults are the camvid preset's shapes (width 0.25, 240x320, batch 8).

    python benchmarks/train_flops.py --out runs/bench-train-flops.json
    python benchmarks/train_flops.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _measure import (
    count_flops,
    finish,
    interleaved_times,
    load_average,
    matmul_peak,
    step_arguments,
    use_threads,
)
from segadapt.models import VGGDeepLab

CONFIGS = [  # (name, memory format, oneDNN enabled)
    ("contiguous+mkldnn", torch.contiguous_format, True),
    ("channels_last+mkldnn", torch.channels_last, True),
    ("contiguous-no_mkldnn", torch.contiguous_format, False),
    ("channels_last-no_mkldnn", torch.channels_last, False),
]


def make_step(fmt: torch.memory_format, mkldnn: bool, args: argparse.Namespace) -> Callable[[], None]:
    """A training step on a fixed random batch, with its own model (same init) and optimizer."""
    torch.manual_seed(0)
    h, w = args.size
    model = VGGDeepLab(args.classes, args.width).train().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, h, w).contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch, h, w))

    def step() -> None:
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(p, width=0.25, batch=8, repeats=3)
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--matmul", type=int, default=2048, help="side of the square matmul that measures the peak")
    args = p.parse_args()
    if args.quick:  # also batch 2 and a small matmul
        args.width, args.size, args.batch, args.repeats, args.matmul = 0.125, [64, 96], 2, 2, 512
    threads = use_threads(args.threads)

    peak = max(matmul_peak(args.matmul, 5) for _ in range(2))
    steps = {name: make_step(fmt, mk, args) for name, fmt, mk in CONFIGS}
    flops = {name: count_flops(step) for name, step in steps.items()}  # the counted step doubles as the warm-up
    names = list(steps)
    times = interleaved_times(steps, args.repeats)
    peak = max(peak, matmul_peak(args.matmul, 5))  # again after training, in case the machine was busier first

    med = {n: statistics.median(v) for n, v in times.items()}
    configs = {
        n: {
            "median_s": round(med[n], 4),
            "images_per_s": round(args.batch / med[n], 2),
            "gflop_per_step": round(flops[n] / 1e9, 2),
            "achieved_gflop_per_s": round(flops[n] / med[n] / 1e9, 2),
            "fraction_of_matmul_peak": round(flops[n] / med[n] / 1e9 / peak, 3),
            "times_s": [round(t, 4) for t in times[n]],
        }
        for n in names
    }
    fastest = min(med, key=med.__getitem__)
    ratios = {
        "channels_last_over_contiguous_mkldnn": round(med["contiguous+mkldnn"] / med["channels_last+mkldnn"], 3),
        "mkldnn_on_over_off_contiguous": round(med["contiguous-no_mkldnn"] / med["contiguous+mkldnn"], 3),
        "mkldnn_on_over_off_channels_last": round(med["channels_last-no_mkldnn"] / med["channels_last+mkldnn"], 3),
    }
    load = load_average()
    result = {
        "config": {"width": args.width, "size": args.size, "batch": args.batch, "threads": threads,
                   "repeats": args.repeats, "matmul_n": args.matmul},
        "matmul_peak_gflop_per_s": round(peak, 2),
        "configs": configs,
        "fastest": fastest,
        "ratios": ratios,
        "environment": {"torch": torch.__version__, "cpu_count": os.cpu_count(), "load_avg_1min": load,
                        "mkldnn_available": torch.backends.mkldnn.is_available()},
    }
    h, w = args.size
    print(f"training step: width {args.width}, {h}x{w}, batch {args.batch}, {threads} threads, median of "
          f"{args.repeats} (1-min load average {load}); fp32 matmul peak {peak:.1f} GFLOP/s (n={args.matmul})")
    print(f"{'configuration':<24} {'s/step':>8} {'img/s':>7} {'GFLOP/s':>8} {'of peak':>8}")
    for n, c in configs.items():
        print(f"{n:<24} {c['median_s']:>8.3f} {c['images_per_s']:>7.2f} {c['achieved_gflop_per_s']:>8.1f} "
              f"{c['fraction_of_matmul_peak']:>8.1%}")
    print(f"fastest: {fastest}; " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return finish(result, args.out, ratios)


if __name__ == "__main__":
    raise SystemExit(main())
