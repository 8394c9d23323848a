"""BatchNorm while adapting: keep H1's running statistics, or re-estimate them on D2 (AdaBN)?

On CamVid + photocopy (the camvid-photocopy setup: 120x160, batch 8), with a small BatchNorm CNN given to
segadapt through the factory path (benchmarks/bn_cnn.py, `bn_cnn:build`):

1. H1 is trained from scratch on D1 (a factory model handed to `segadapt.train.train`; its run writes
   factory_weights.safetensors, the factory's own state dict);
2. the sweep runs twice on that H1 as an external factory H1 (`adapt.h1 = "bn_cnn:build"` with those weights):
   once with adapt.norm = keep, once with adabn; B0 and B2 with the first, each with the same regressions
   (layer1 alone, layer3 alone: the encoder's middle and its deepest block);
3. "AdaBN alone" is H1 with its BatchNorm statistics re-estimated on D2's training images and nothing else
   changed (no gradient step): the classic baseline the adabn setting adds regression to.

    PYTHONPATH=benchmarks python benchmarks/adabn_keep.py --out runs/bench-adabn

Writes <out>/benchmark.json (and each sweep's results under <out>/keep, <out>/adabn).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from _paths import CAMVID_ROOT

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bn_cnn, the factory

from segadapt.checkpoint import write_json_atomic  # noqa: E402
from segadapt.config import RunConfig, ShiftConfig, preset  # noqa: E402
from segadapt.data import SegmentationDataset, make_transform  # noqa: E402
from segadapt.data.d2 import d2_source, materialise_d2  # noqa: E402
from segadapt.evaluate import score  # noqa: E402
from segadapt.experiment import run_experiment  # noqa: E402
from segadapt.models.factory import load_factory  # noqa: E402
from segadapt.models.modes import has_running_stats  # noqa: E402
from segadapt.train import train  # noqa: E402

FACTORY = "bn_cnn:build"
KWARGS = {"classes": 11, "width": 16}


def setup(args: argparse.Namespace) -> RunConfig:
    """camvid-photocopy's data, shift and budgets ratio (H1 4x each regression), for a net 10x cheaper."""
    cfg = preset("camvid")
    cfg.data.root = args.root
    cfg.data.base_size, cfg.data.crop_size = 120, [120, 160]
    cfg.train.iterations, cfg.train.lr, cfg.train.checkpoint_every, cfg.train.log_every = args.h1_iterations, \
        0.02, 0, 50
    cfg.shift = ShiftConfig(filter="photocopy", severity=1.0)
    cfg.adapt.grad_clip = 5.0
    ex = cfg.experiment
    ex.filters, ex.layer_presets, ex.iterations = ["photocopy"], ["layer1", "layer3"], args.iterations
    ex.finetune_lr, ex.adapt_lr, ex.figure_images = 0.02, 0.005, 0
    return cfg


@torch.no_grad()
def adabn_alone(h1: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    """H1 with every BatchNorm layer's statistics recomputed as the plain average over D2's training frames."""
    model = copy.deepcopy(h1).eval()
    norms = [m for m in model.modules() if has_running_stats(m)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    source = d2_source(cfg, cfg.data.train_split, labelled=True)
    frames = SegmentationDataset(source, make_transform(cfg.data, False, source.info.ignore_index))
    for i in range(len(frames)):
        model(frames[i][0][None].to(device))
    return model.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--root", default=str(CAMVID_ROOT), help="CamVid root")
    p.add_argument("--h1-iterations", type=int, default=2000)
    p.add_argument("--iterations", type=int, default=500, help="B2 and regression budget")
    args = p.parse_args()
    if not Path(args.root, "train", "images").is_dir():
        print(f"CamVid not found at {args.root}; pass --root", file=sys.stderr)
        return 2
    out, t0 = Path(args.out), time.perf_counter()
    cfg = setup(args)
    cfg.shift = materialise_d2(cfg, "photocopy", out / "d2-photocopy")  # once, shared by both sweeps

    h1_dir = out / "H1"
    if not (h1_dir / "factory_weights.safetensors").is_file():
        torch.manual_seed(cfg.train.seed)
        model, _ = load_factory(FACTORY, kwargs=KWARGS)
        train(cfg, h1_dir, model=model.train())
    cfg.adapt.h1, cfg.adapt.h1_weights = FACTORY, str(h1_dir / "factory_weights.safetensors")
    cfg.adapt.h1_kwargs = json.dumps(KWARGS)

    sweeps: dict[str, Any] = {}
    for norm in ("keep", "adabn"):
        run = copy.deepcopy(cfg)
        run.adapt.norm = norm
        run.experiment.baselines = ["B0", "B2"] if norm == "keep" else ["B0"]
        sweeps[norm] = run_experiment(run, out / norm)

    device = torch.device("cpu")
    h1, _ = load_factory(FACTORY, cfg.adapt.h1_weights, KWARGS)
    d2_val = d2_source(cfg, cfg.data.val_split, labelled=True)
    alone = score(adabn_alone(h1, cfg, device), d2_val, cfg, device)

    by = {norm: {e["method"]: e for e in r["summary"]} for norm, r in sweeps.items()}
    rows = {"H1 (D1)": by["keep"]["H1"], "B0": by["keep"]["B0"], "B2": by["keep"]["B2"],
            "AdaBN alone": {"mean_acc": alone.mean_acc, "miou": alone.miou, "pixel_acc": alone.pixel_acc}}
    for norm in ("keep", "adabn"):
        for tap in cfg.experiment.layer_presets:
            rows[f"H2:{tap} ({norm})"] = by[norm][f"H2:{tap}"]
    summary = {
        "setup": "camvid-photocopy, BatchNorm CNN (benchmarks/bn_cnn.py) via the factory path",
        "h1_iterations": cfg.train.iterations, "adapt_iterations": cfg.experiment.iterations,
        "rows": {k: {m: round(v[m], 4) for m in ("mean_acc", "miou", "pixel_acc")} for k, v in rows.items()},
        "distortion": sweeps["keep"]["distortion"].get("photocopy"),
        "wall_s": round(time.perf_counter() - t0, 1),
        "environment": sweeps["keep"]["environment"],
    }
    write_json_atomic(out / "benchmark.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "environment"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
