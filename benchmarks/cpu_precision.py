"""fp32 against bf16 autocast on this CPU, side by side in one process: a training step (forward, loss, backward,
SGD), an adaptation step (adapt's default objective: H1 under inference mode, H2 to its deepest stage, MSE,
backward, SGD), inference (inference mode) and `segadapt predict`'s work on one image (tiling, blending,
softmax), for VGG-DeepLab (width 0.25, 240x320, batch 8, channels-last) and SegFormer-B0; with --parity also
whether bf16 trains and adapts to the same accuracy.

Speed: every step of one model is timed in interleaved rounds (_measure.interleaved_times, rotating order, after
a warm-up call each); medians, bf16/fp32 ratios with their range over rounds, achieved GFLOP/s against the peak
this machine's kernels reach in that precision (_measure.measured_peaks, before and after the steps), the CPU's
native bf16 feature (segadapt.runtime.cpu_native_bf16) and the load average. On a CPU without native bf16 only
fp32 is timed and recorded (emulated bf16 is many times slower; --bf16 times it anyway).

Parity (--parity): the preset (synthetic, or camvid) trained in fp32 and in bf16 for each seed, val mIoU; the
fp32 H1 adapted to the preset's shift (default objective, deepest stage) in fp32 and in bf16, mIoU on D2 val;
and the agreement of bf16 predictions with fp32's on the val frames (what predict --precision auto requires,
>= 99.5%). The issue asks bf16 to stay within 0.5 mIoU points on average; `within_half_a_point` says whether
it does.

    python benchmarks/cpu_precision.py                                   # speed; docs/results/cpu_precision.json
    python benchmarks/cpu_precision.py --parity --seeds 3 --parity-iterations 800
    python benchmarks/cpu_precision.py --quick --parity --out /tmp/cpu_precision.json   # a sanity run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
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
from _paths import REPO, camvid_root
from segadapt.config import RunConfig, preset
from segadapt.runtime import cpu_native_bf16
from segadapt.speed import autocast

CPU = torch.device("cpu")
KINDS = ("train", "adapt", "infer", "predict")
OUT = REPO / "docs" / "results" / "cpu_precision.json"
CLASSES = 11  # CamVid's


# --- speed ----------------------------------------------------------------------------------------------

def make_model(arch: str, width: float) -> torch.nn.Module:
    from segadapt.models import build_model

    torch.manual_seed(0)
    return build_model(arch, CLASSES, width if arch == "vgg16_deeplab" else 1.0).to(memory_format=torch.channels_last)


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> Callable[[], None]:
    """What train() does per step: forward and loss under autocast, backward, SGD (own copy of the model)."""
    net = copy.deepcopy(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        with autocast(CPU, precision):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def adapt_step(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, arch: str,
               precision: str) -> Callable[[], None]:
    """What adapt() does per step with the default objective and layers: H1's maps under inference mode, H2's
    early-exit pass, the objective, backward through the parameters below the tap, SGD."""
    from segadapt.adapt import layer_weights, trainable_parameters, trains_head
    from segadapt.models.contract import conform, default_objective
    from segadapt.objectives.objective import build_objective
    from segadapt.objectives.term import Outputs, as_plain, model_outputs

    cfg = RunConfig()
    cfg.model.arch = arch
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    student = copy.deepcopy(model).eval().requires_grad_(False)  # adapt.norm = keep: BatchNorm as H1's, no dropout
    weights = layer_weights(cfg, conform(teacher))
    taps = list(weights)
    cfg.adapt.objective = default_objective(conform(teacher))
    objective = build_objective(cfg.adapt, weights)
    trainable = trainable_parameters(conform(student), taps, trains_head(cfg.adapt, objective))
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.SGD(trainable, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    t_features, s_features = conform(teacher).features, conform(student).features
    if objective.calibrates:
        with torch.inference_mode():
            objective.calibrate([t_features(x1, taps)])

    def step() -> None:
        with autocast(CPU, precision):
            with torch.inference_mode():
                target, target_logits = model_outputs(teacher, t_features, x1, taps, objective.needs_maps,
                                                      objective.needs_logits)
            pred, pred_logits = model_outputs(student, s_features, x2, taps, objective.needs_maps,
                                              objective.needs_logits)
        loss, _ = objective(Outputs(target, pred, as_plain(target_logits), pred_logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def infer_step(model: torch.nn.Module, x: torch.Tensor, precision: str) -> Callable[[], None]:
    net = copy.deepcopy(model).eval()

    @torch.inference_mode()
    def step() -> None:
        with autocast(CPU, precision):
            net(x)

    return step


def predict_step(model: torch.nn.Module, image: np.ndarray, precision: str) -> Callable[[], None]:
    """segadapt predict's work on one decoded image (whole-image plan, blending, softmax, labels), no files."""
    from segadapt.data.palettes import generic
    from segadapt.data.rasters import ArrayReader
    from segadapt.predict import Predictor, predict_image

    pred = Predictor(copy.deepcopy(model).eval(), CLASSES, tuple(f"c{i}" for i in range(CLASSES)),
                     tuple(generic(CLASSES)), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0, CPU,
                     precision=precision)
    reader = ArrayReader(image)
    return lambda: predict_image(pred, reader, None, progress=False)


def speed(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every kind of step in both precisions for `arch`, interleaved; medians, ratios, GFLOP/s."""
    h, w = args.size
    model = make_model(arch, args.width)
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(args.batch, 3, h, w, generator=g).contiguous(memory_format=torch.channels_last)
              for _ in range(2))
    y = torch.randint(0, CLASSES, (args.batch, h, w), generator=g)
    image = np.random.default_rng(0).integers(0, 256, (*args.predict_size, 3), dtype=np.uint8)
    precisions = args.precisions
    steps: dict[str, Callable[[], None]] = {}
    for p in precisions:
        steps[f"train_{p}"] = train_step(model, x1, y, p)
        steps[f"adapt_{p}"] = adapt_step(model, x1, x2, arch, p)
        steps[f"infer_{p}"] = infer_step(model, x1, p)
        steps[f"predict_{p}"] = predict_step(model, image, p)
    flops = {n: count_flops(s) if not n.startswith("predict") else None for n, s in steps.items()}  # + warm-up
    for p in precisions:
        steps[f"predict_{p}"]()  # its warm-up
    times = interleaved_times(steps, args.repeats)
    med = {n: statistics.median(v) for n, v in times.items()}
    rows: dict[str, Any] = {}
    for kind in KINDS:
        rows[kind] = {
            **{f"{p}_s": round(med[f"{kind}_{p}"], 4) for p in precisions},
            **{f"{p}_gflop_per_s": round(flops[f"{kind}_{p}"] / med[f"{kind}_{p}"] / 1e9, 1)
               for p in precisions if flops[f"{kind}_{p}"]},
            **({"gflop_per_step": round(flops[f"{kind}_fp32"] / 1e9, 2)} if flops[f"{kind}_fp32"] else {}),
            "times_s": {p: [round(t, 4) for t in times[f"{kind}_{p}"]] for p in precisions},
        }
        if "bf16" in precisions:
            per_round = [x / y for x, y in zip(times[f"{kind}_fp32"], times[f"{kind}_bf16"])]
            rows[kind]["bf16_speedup"] = round(med[f"{kind}_fp32"] / med[f"{kind}_bf16"], 3)
            rows[kind]["speedup_range_over_rounds"] = [round(min(per_round), 3), round(max(per_round), 3)]
    return {"arch": arch, "width": args.width if arch == "vgg16_deeplab" else 1.0, "steps": rows}


# --- accuracy parity ---------------------------------------------------------------------------------------

def parity_config(args: argparse.Namespace, seed: int, precision: str) -> RunConfig:
    cfg = preset(args.parity_preset)
    if args.parity_preset == "camvid":
        cfg.data.root = str(camvid_root())
    cfg.train.seed, cfg.train.precision, cfg.train.threads = seed, precision, torch.get_num_threads()
    cfg.train.iterations, cfg.train.checkpoint_every = args.parity_iterations, 0
    if args.quick:
        cfg.model.width, cfg.train.batch_size = 0.0625, 2
        cfg.data.synthetic_size = cfg.data.crop_size = [32, 48]
        cfg.data.synthetic_train, cfg.data.synthetic_val = 8, 4
    return cfg


def parity(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Per seed: H1 trained in fp32 and in bf16 (val mIoU), the fp32 H1 adapted in fp32 and in bf16 (mIoU on D2
    val), and how far bf16 predictions of the fp32 H1 agree with its fp32 ones on the val frames."""
    from segadapt.adapt import adapt
    from segadapt.data import SegmentationDataset, build_source, make_transform
    from segadapt.data.d2 import d2_source
    from segadapt.data.pairs import PairedDataset
    from segadapt.evaluate import inference_precision, score
    from segadapt.models.loading import load_model
    from segadapt.train import train

    rows = []
    for seed in args.seeds_list:
        row: dict[str, Any] = {"seed": seed}
        for p in ("fp32", "bf16"):
            cfg = parity_config(args, seed, p)
            m = train(cfg, work / f"seed{seed}-H1-{p}")
            row[f"train_miou_{p}"] = m["val"]["miou"]
            row[f"train_time_s_{p}"] = m["train_time_s"]
        cfg = parity_config(args, seed, "fp32")
        h1, h1_meta = load_model(work / f"seed{seed}-H1-fp32", CPU)
        val = build_source(cfg.data, cfg.data.val_split)
        val_set = SegmentationDataset(val, make_transform(cfg.data, False, val.info.ignore_index))
        row["predict_agreement"] = inference_precision(h1, val_set, CPU, "bf16").agreement
        d1_train = build_source(cfg.data, cfg.data.train_split)
        d2_train = d2_source(cfg, cfg.data.train_split, labelled=True)
        d2_val = d2_source(cfg, cfg.data.val_split, labelled=True)
        pairs = PairedDataset(d1_train, d2_train, make_transform(cfg.data, True, d1_train.info.ignore_index),
                              cfg.shift.photometric)
        row["b0_miou"] = score(h1, d2_val, cfg, CPU).miou
        for p in ("fp32", "bf16"):
            a = parity_config(args, seed, p)
            a.train.iterations, a.train.lr = args.adapt_iterations, a.experiment.adapt_lr
            adapt(a, work / f"seed{seed}-H2-{p}", pairs, teacher=h1, h1_meta=h1_meta)
            h2, _ = load_model(work / f"seed{seed}-H2-{p}", CPU)
            row[f"adapt_miou_{p}"] = score(h2, d2_val, cfg, CPU).miou
        rows.append(row)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                           if isinstance(v, float) and "time" not in k), flush=True)

    def mean_gap(what: str) -> float:
        return round(100 * statistics.mean(r[f"{what}_miou_bf16"] - r[f"{what}_miou_fp32"] for r in rows), 2)

    gaps = {"train": mean_gap("train"), "adapt": mean_gap("adapt")}
    return {"preset": args.parity_preset, "iterations": args.parity_iterations,
            "adapt_iterations": args.adapt_iterations, "seeds": args.seeds_list, "rows": rows,
            "mean_gap_points_bf16_minus_fp32": gaps,
            "within_half_a_point": {k: abs(v) <= 0.5 for k, v in gaps.items()},
            "min_predict_agreement": min(r["predict_agreement"] for r in rows)}


def parity_block(path: Path) -> dict[str, Any]:
    """The parity block of an earlier `--no-speed --parity` run on this host, with the run it came from."""
    earlier = json.loads(path.read_text())
    return {**earlier["parity"], "from_run": {"file": path.name, "environment": earlier.get("environment")}}


def run_parity(args: argparse.Namespace) -> dict[str, Any]:
    if "bf16" not in args.precisions:
        par = {"skipped": "this CPU has no native bf16: auto never picks bf16 here (--bf16 forces it)"}
        print(f"parity: {par['skipped']}")
        return par
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        par = parity(args, args.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            par = parity(args, Path(tmp))
    print(f"parity ({par['preset']}, {len(par['seeds'])} seed(s)): bf16 - fp32 mIoU points "
          f"{par['mean_gap_points_bf16_minus_fp32']}; predictions agree on >= {par['min_predict_agreement']:.2%}")
    return par


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(p, width=0.25, batch=8, repeats=4)
    p.add_argument("--archs", nargs="+", default=["vgg16_deeplab", "segformer_b0"],
                   help="models timed (segformer_b0 needs transformers)")
    p.add_argument("--predict-size", type=int, nargs=2, default=[720, 960], metavar=("H", "W"),
                   help="the image predict segments (CamVid's full frame)")
    p.add_argument("--parity", action="store_true", help="also train and adapt in both precisions (slow)")
    p.add_argument("--parity-preset", default="synthetic", choices=["synthetic", "camvid", "demo"])
    p.add_argument("--seeds", type=int, default=1, help="parity seeds (0..N-1)")
    p.add_argument("--parity-iterations", type=int, default=200, help="training steps per H1 (the preset's: 800)")
    p.add_argument("--adapt-iterations", type=int, default=100, help="adaptation steps (the demo's: 100)")
    p.add_argument("--work", type=Path, help="folder for the parity runs (default: a temporary one)")
    p.add_argument("--bf16", action="store_true", help="time bf16 also where the CPU has no native bf16 (slow)")
    p.add_argument("--no-speed", dest="speed", action="store_false",
                   help="with --parity: the parity runs alone (they need no idle machine; the timings do)")
    p.add_argument("--parity-from", type=Path, metavar="JSON",
                   help="take the parity block from this earlier --no-speed --parity run on this host")
    p.add_argument("--add-parity-to", type=Path, metavar="JSON",
                   help="with --parity-from: put that parity block into this earlier speed run's results, run nothing")
    args = p.parse_args()
    if args.quick:
        args.width, args.size, args.batch, args.repeats, args.predict_size = 0.0625, [32, 48], 2, 2, [64, 96]
        args.parity_iterations, args.adapt_iterations = min(args.parity_iterations, 3), min(args.adapt_iterations, 2)
    out = args.out if args.out or args.quick else OUT
    args.seeds_list = list(range(args.seeds))
    threads = use_threads(args.threads)
    args.precisions = timed_precisions(args.bf16)

    if args.add_parity_to:  # the speed part measured alone earlier, the parity runs (hours of CPU) beside other work
        result = json.loads(args.add_parity_to.read_text())
        result["parity"] = parity_block(args.parity_from)
        return finish(result, args.add_parity_to, {"parity": result["parity"].get("mean_gap_points_bf16_minus_fp32")})
    if not args.speed:
        result = {"native_bf16": cpu_native_bf16(), "parity": run_parity(args),
                  "environment": {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                                  "machine": platform.machine(), "load_avg_1min": {"end": load_average()}}}
        return finish(result, out, {"parity": result["parity"].get("mean_gap_points_bf16_minus_fp32")})
    load_before = load_average()
    before = measured_peaks(threads, quick=args.quick, precisions=args.precisions)
    models = [speed(arch, args) for arch in args.archs]
    after = measured_peaks(threads, quick=args.quick, precisions=args.precisions)
    peaks = {k: max(before[k], after[k], key=lambda v: v["gflop_per_s"]) for k in args.precisions}
    peaks["nominal"] = after["nominal"]
    rates = {pr: {f"{m['arch']}_{k}": r[f"{pr}_gflop_per_s"] for m in models for k, r in m["steps"].items()
                  if f"{pr}_gflop_per_s" in r} for pr in args.precisions}
    reached = {pr: reached_peak(peaks, pr, rates[pr]) for pr in args.precisions}
    for m in models:
        for r in m["steps"].values():
            for pr in args.precisions:
                if f"{pr}_gflop_per_s" in r:
                    r[f"{pr}_fraction_of_peak"] = round(r[f"{pr}_gflop_per_s"] / reached[pr]["gflop_per_s"], 3)

    result: dict[str, Any] = {
        "config": {"width": args.width, "size": args.size, "batch": args.batch, "threads": threads,
                   "repeats": args.repeats, "predict_size": args.predict_size, "layout": "channels_last",
                   "quick": args.quick},
        "native_bf16": cpu_native_bf16(),
        "precisions_timed": list(args.precisions),
        "models": models,
        "peaks": {**peaks, "before": before, "after": after},
        "peak_reached": reached,
        "environment": {"torch": torch.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                        "processor": platform.processor(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "load_avg_1min": {"before": load_before, "after_speed": load_average()}},
    }
    h, w = args.size
    print(f"width {args.width}, {h}x{w}, batch {args.batch}, {threads} threads, median of {args.repeats} rounds; "
          f"native bf16: {result['native_bf16'] or 'none'}; 1-min load average {load_before}")
    print(peak_lines(peaks, reached))
    print(f"{'model':<14} {'step':<8} {'fp32 s':>8} {'bf16 s':>8} {'speedup':>8} {'range':>12}")
    for m in models:
        for kind, r in m["steps"].items():
            if "bf16_speedup" in r:
                lo, hi = r["speedup_range_over_rounds"]
                print(f"{m['arch']:<14} {kind:<8} {r['fp32_s']:>8.4f} {r['bf16_s']:>8.4f} "
                      f"{r['bf16_speedup']:>7.2f}x {lo:>5.2f}-{hi:.2f}")
            else:
                print(f"{m['arch']:<14} {kind:<8} {r['fp32_s']:>8.4f}")
    if args.parity_from:  # run earlier, alone, while the machine was busy: recorded with where it came from
        result["parity"] = parity_block(args.parity_from)
    elif args.parity:
        result["parity"] = run_parity(args)
    result["environment"]["load_avg_1min"]["end"] = load_average()
    summary = {m["arch"]: {k: r.get("bf16_speedup", r["fp32_s"]) for k, r in m["steps"].items()} for m in models}
    return finish(result, out, summary)


if __name__ == "__main__":
    raise SystemExit(main())
