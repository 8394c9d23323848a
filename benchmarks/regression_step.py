"""Images/s of one feature-regression step (tap pool5 by default), five ways, on the same inputs in one run:

  naive     the loop as first written: teacher and student each run the whole network to the logits,
            pool5 collected by forward hooks, loss on the two captures, the student's optimizer over all
            parameters. Nothing detaches the teacher, whose parameters still require grad as copied, so
            backward also runs through the teacher (its gradients are computed and never used; the
            student's update is the same as with a detached target)
  detached  naive with the teacher's capture detached: the teacher's graph is built but not back-propagated
  early     early exit at the deepest tap (`model.features(x, ["pool5"])`), teacher under
            torch.inference_mode(), only parameters below the tap trained; NCHW like naive
  segadapt  what adapt() does: `early` with NHWC (channels_last) models and inputs (train.channels_last)
  cached    segadapt with the teacher's maps read from a teacher cache (segadapt.cache) instead of computed

naive and detached run NCHW, as a plain PyTorch loop does; `early` isolates what the early exit and
inference mode buy, `detached` what detaching alone buys.

Each timed sample is one step (forward, loss, backward, SGD); variants are interleaved in rotating order,
after warm-up steps, and the median of --repeats samples is reported. FLOPs per step are counted with
torch.utils.flop_counter (convolutions and matmuls, forward and backward) to give achieved FLOP/s.

    python benchmarks/regression_step.py --out runs/bench-regression.json
    python benchmarks/regression_step.py --quick          # tiny sanity run
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
from torch import nn

from _measure import (
    Step,
    count_flops,
    finish,
    interleaved_times,
    load_average,
    matmul_peak,
    step_arguments,
    use_threads,
)
from segadapt import cache as teacher_cache
from segadapt.data import JointTransform
from segadapt.data.pairs import PairedDataset, ShiftedSource
from segadapt.data.synthetic import SyntheticScenes
from segadapt.losses import feature_regression_loss
from segadapt.models import VGGDeepLab


def darken(image: np.ndarray, seed: int) -> np.ndarray:
    return (image * 0.6).astype(np.uint8)


def hooked_full_forward(model: nn.Module, x: torch.Tensor, tap: str) -> torch.Tensor:
    """The naive way to get a map: run the whole network (to upsampled logits), keep a hook's capture."""
    captured: list[torch.Tensor] = []
    handle = getattr(model, tap).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0]


def make_steps(
    teacher: nn.Module, x1: torch.Tensor, x2: torch.Tensor, geometry: torch.Tensor, tap: str,
    cache: teacher_cache.TeacherCache,
) -> tuple[dict[str, Step], dict[str, nn.Module]]:
    """One closure per variant, each with its own models and optimizer (so none shares state), and each
    variant's student, so a test can check that all variants make the same update."""
    weights = {tap: 1.0}
    nhwc = torch.channels_last

    students: dict[str, nn.Module] = {}

    def naive_step(name: str, detach: bool) -> Step:
        naive_teacher = copy.deepcopy(teacher).requires_grad_(True)  # the naive code never froze it
        naive_student = students[name] = copy.deepcopy(teacher).requires_grad_(True).train()
        naive_opt = torch.optim.SGD(naive_student.parameters(), lr=1e-4, momentum=0.9)

        def step() -> None:
            target = hooked_full_forward(naive_teacher, x1, tap)
            pred = hooked_full_forward(naive_student, x2, tap)
            loss, _ = feature_regression_loss({tap: target.detach() if detach else target}, {tap: pred}, weights)
            naive_opt.zero_grad(set_to_none=True)
            naive_teacher.zero_grad(set_to_none=True)  # the teacher's unused gradients are not kept
            loss.backward()
            naive_opt.step()

        return step

    def early_exit(name: str, fmt: torch.memory_format, cached: bool) -> Step:
        frozen = copy.deepcopy(teacher).to(memory_format=fmt)
        student = students[name] = copy.deepcopy(teacher).to(memory_format=fmt).train().requires_grad_(False)
        trainable = student.parameters_up_to(tap)
        for p in trainable:
            p.requires_grad_(True)
        opt = torch.optim.SGD(trainable, lr=1e-4, momentum=0.9)
        a, b = x1.contiguous(memory_format=fmt), x2.contiguous(memory_format=fmt)

        def step() -> None:
            with torch.inference_mode():
                target = cache.targets(geometry) if cached else frozen.features(a, [tap])
            loss, _ = feature_regression_loss(target, student.features(b, [tap]), weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    steps = {
        "naive": naive_step("naive", detach=False),
        "detached": naive_step("detached", detach=True),
        "early": early_exit("early", torch.contiguous_format, cached=False),
        "segadapt": early_exit("segadapt", nhwc, cached=False),
        "cached": early_exit("cached", nhwc, cached=True),
    }
    return steps, students


def make_inputs(
    width: float, size: tuple[int, int], batch: int, tap: str, cache_dir: str,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, teacher_cache.TeacherCache]:
    """A fresh teacher, one batch of (X1, X2, geometry) pairs and a teacher cache built for them."""
    teacher = VGGDeepLab(21, width).eval().requires_grad_(False)
    d1 = SyntheticScenes(batch, size=size)
    tf = JointTransform(train=True, crop_size=size, scale_range=(1, 1))
    pairs = PairedDataset(d1, ShiftedSource(d1, darken), tf)
    cache, _ = teacher_cache.prepare(cache_dir, pairs, teacher, teacher.features, [tap], torch.device("cpu"))
    items = [pairs.aligned(8)[k] for k in range(batch)]
    x1, x2, geometry = (torch.stack([it[j] for it in items]) for j in range(3))
    return teacher, x1, x2, geometry, cache


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(p, width=1.0, batch=2, repeats=5)
    p.add_argument("--tap", default="pool5")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    args = p.parse_args()
    if args.quick:
        args.width, args.size, args.repeats = 0.125, [64, 96], 2
    threads = use_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.size

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        teacher, x1, x2, geometry, cache = make_inputs(args.width, (h, w), args.batch, args.tap, tmp)
        build_s = time.perf_counter() - t0
        steps, _ = make_steps(teacher, x1, x2, geometry, args.tap, cache)
        names = list(steps)
        flops = {n: count_flops(s) for n, s in steps.items()}  # also the first warm-up step
        for _ in range(args.warmup):
            for s in steps.values():
                s()
        times = interleaved_times(steps, args.repeats)

    med = {n: statistics.median(v) for n, v in times.items()}
    variants = {
        n: {
            "median_s": round(med[n], 4),
            "images_per_s": round(args.batch / med[n], 3),
            "gflop_per_step": round(flops[n] / 1e9, 2),
            "achieved_gflop_per_s": round(flops[n] / med[n] / 1e9, 2),
            "times_s": [round(t, 4) for t in times[n]],
        }
        for n in names
    }
    ratios = {
        "segadapt_over_naive": round(med["naive"] / med["segadapt"], 3),
        "early_exit_over_naive": round(med["naive"] / med["early"], 3),
        "segadapt_over_detached": round(med["detached"] / med["segadapt"], 3),
        "early_exit_over_detached": round(med["detached"] / med["early"], 3),
        "cached_over_naive": round(med["naive"] / med["cached"], 3),
        "flop_ratio_naive_over_segadapt": round(flops["naive"] / flops["segadapt"], 3),
        "flop_ratio_naive_over_cached": round(flops["naive"] / flops["cached"], 3),
        "flop_ratio_detached_over_segadapt": round(flops["detached"] / flops["segadapt"], 3),
    }
    # the same ratios round by round (the variants of one round ran back to back): their range is the spread
    # a single figure hides
    pairs = {"segadapt_over_naive": ("naive", "segadapt"), "early_exit_over_naive": ("naive", "early"),
             "segadapt_over_detached": ("detached", "segadapt"), "early_exit_over_detached": ("detached", "early"),
             "cached_over_naive": ("naive", "cached")}
    spread = {k: [round(min(r := [a / b for a, b in zip(times[num], times[den])]), 3), round(max(r), 3)]
              for k, (num, den) in pairs.items()}
    load = load_average()
    peak = matmul_peak(2048, 3)
    result = {
        "config": {"width": args.width, "size": [h, w], "batch": args.batch, "tap": args.tap, "threads": threads,
                   "warmup": args.warmup, "repeats": args.repeats},
        "variants": variants,
        "ratios": ratios,
        "ratio_range_over_rounds": spread,
        "matmul_peak_gflop_per_s": round(peak, 1),
        "target_segadapt_over_naive": 1.6,
        "cache_build_s": round(build_s, 2),
        "environment": {"torch": torch.__version__, "cpu_count": os.cpu_count(), "load_avg_1min": load,
                        "machine": platform.machine(), "processor": platform.processor(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    }
    print(f"regression step at {args.tap}: width {args.width}, {h}x{w}, batch {args.batch}, {threads} threads, "
          f"median of {args.repeats} (1-min load average {load})")
    print(f"{'variant':<10} {'s/step':>8} {'img/s':>8} {'GFLOP/step':>11} {'GFLOP/s':>8}")
    for n, v in variants.items():
        print(f"{n:<10} {v['median_s']:>8.3f} {v['images_per_s']:>8.2f} {v['gflop_per_step']:>11.1f} "
              f"{v['achieved_gflop_per_s']:>8.1f}")
    print(f"early/naive {ratios['early_exit_over_naive']:.2f}x (NCHW, early exit and inference mode alone); "
          f"against a naive loop that detaches the teacher: segadapt {ratios['segadapt_over_detached']:.2f}x "
          f"(FLOP ratio {ratios['flop_ratio_detached_over_segadapt']:.2f}), "
          f"early {ratios['early_exit_over_detached']:.2f}x")
    print("range over rounds: " + ", ".join(f"{k} {lo:.2f}-{hi:.2f}" for k, (lo, hi) in spread.items())
          + f"; fp32 matmul peak {peak:.0f} GFLOP/s")
    print(f"segadapt/naive {ratios['segadapt_over_naive']:.2f}x (target 1.6; FLOP ratio "
          f"{ratios['flop_ratio_naive_over_segadapt']:.2f}), cached/naive {ratios['cached_over_naive']:.2f}x "
          f"(FLOP ratio {ratios['flop_ratio_naive_over_cached']:.2f}); cache built in {build_s:.1f}s")
    return finish(result, args.out, ratios)


if __name__ == "__main__":
    raise SystemExit(main())
