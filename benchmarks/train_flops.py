"""Achieved FLOP/s of supervised training (VGG-DeepLab forward + backward + SGD) against the rate this machine's
kernels were measured to reach, for NCHW (contiguous) vs NHWC (channels_last), oneDNN (torch.backends.mkldnn)
on vs off, and NHWC in bf16 autocast (where the CPU computes bf16 natively, or with --bf16), all in one run.

The peak of each precision (_measure.measured_peaks) is the best of torch.mm at a few sizes and a large oneDNN
convolution, measured before and after the steps, and never below the fastest step itself
(_measure.reached_peak): a "fraction of peak" is at most 100% and says how close a step came to the best this
machine was seen to do. The nominal FMA peak (features, clock, an assumed 2 FMA units a core) is recorded
beside it. Training FLOPs per step are counted by torch.utils.flop_counter (convolutions forward and backward;
the SGD update is a few elementwise passes and is not counted). The configurations are timed interleaved, in
rotating order, after a warm-up step each; medians reported. Defaults are the camvid preset's shapes (width
0.25, 240x320, batch 8).

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
    measured_peaks,
    peak_lines,
    reached_peak,
    step_arguments,
    timed_precisions,
    use_threads,
)
from segadapt.models import VGGDeepLab
from segadapt.speed import autocast

CONFIGS = [  # (name, memory format, oneDNN enabled, precision)
    ("contiguous+mkldnn", torch.contiguous_format, True, "fp32"),
    ("channels_last+mkldnn", torch.channels_last, True, "fp32"),
    ("contiguous-no_mkldnn", torch.contiguous_format, False, "fp32"),
    ("channels_last-no_mkldnn", torch.channels_last, False, "fp32"),
    ("channels_last+mkldnn+bf16", torch.channels_last, True, "bf16"),
]


def make_step(fmt: torch.memory_format, mkldnn: bool, precision: str,
              args: argparse.Namespace) -> Callable[[], None]:
    """A training step on a fixed random batch, with its own model (same init) and optimizer."""
    torch.manual_seed(0)
    h, w = args.size
    model = VGGDeepLab(args.classes, args.width).train().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, h, w).contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch, h, w))

    def step() -> None:
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            with autocast(torch.device("cpu"), precision):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(p, width=0.25, batch=8, repeats=3)
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--bf16", action="store_true", help="time bf16 also where the CPU has no native bf16 (slow)")
    args = p.parse_args()
    if args.quick:  # also batch 2 and small peak kernels
        args.width, args.size, args.batch, args.repeats = 0.125, [64, 96], 2, 2
    threads = use_threads(args.threads)

    timed = timed_precisions(args.bf16)
    before = measured_peaks(threads, quick=args.quick, precisions=timed)
    configs_here = [c for c in CONFIGS if c[3] in timed]
    steps = {name: make_step(fmt, mk, prec, args) for name, fmt, mk, prec in configs_here}
    precision = {name: prec for name, _, _, prec in configs_here}
    flops = {name: count_flops(step) for name, step in steps.items()}  # the counted step doubles as the warm-up
    names = list(steps)
    times = interleaved_times(steps, args.repeats)
    after = measured_peaks(threads, quick=args.quick, precisions=timed)  # again, in case it was busier first
    peaks = {k: max(before[k], after[k], key=lambda v: v["gflop_per_s"]) for k in timed}
    peaks["nominal"] = after["nominal"]

    med = {n: statistics.median(v) for n, v in times.items()}
    rate = {n: flops[n] / med[n] / 1e9 for n in names}
    reached = {p: reached_peak(peaks, p, {n: r for n, r in rate.items() if precision[n] == p})
               for p in timed}
    configs = {
        n: {
            "precision": precision[n],
            "median_s": round(med[n], 4),
            "images_per_s": round(args.batch / med[n], 2),
            "gflop_per_step": round(flops[n] / 1e9, 2),
            "achieved_gflop_per_s": round(rate[n], 2),
            "fraction_of_peak": round(rate[n] / reached[precision[n]]["gflop_per_s"], 3),
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
    if "bf16" in timed:
        bf16 = med["channels_last+mkldnn+bf16"]
        ratios["bf16_over_fp32_channels_last"] = round(med["channels_last+mkldnn"] / bf16, 3)
    load = load_average()
    result = {
        "config": {"width": args.width, "size": args.size, "batch": args.batch, "threads": threads,
                   "repeats": args.repeats},
        "peaks": {**peaks, "before": before, "after": after},
        "peak_reached": reached,
        "configs": configs,
        "fastest": fastest,
        "ratios": ratios,
        "environment": {"torch": torch.__version__, "cpu_count": os.cpu_count(), "load_avg_1min": load,
                        "mkldnn_available": torch.backends.mkldnn.is_available()},
    }
    h, w = args.size
    print(f"training step: width {args.width}, {h}x{w}, batch {args.batch}, {threads} threads, median of "
          f"{args.repeats} (1-min load average {load})")
    print(peak_lines(peaks, reached))
    print(f"{'configuration':<26} {'s/step':>8} {'img/s':>7} {'GFLOP/s':>8} {'of peak':>8}")
    for n, c in configs.items():
        print(f"{n:<26} {c['median_s']:>8.3f} {c['images_per_s']:>7.2f} {c['achieved_gflop_per_s']:>8.1f} "
              f"{c['fraction_of_peak']:>8.1%}")
    print(f"fastest: {fastest}; " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return finish(result, args.out, ratios)


if __name__ == "__main__":
    raise SystemExit(main())
