"""Data-loader images/s against training images/s, in one run: can input loading keep up with the model?

For the synthetic scenes and, when present, CamVid (../shared/data/camvid beside the repository), the
training DataLoader (the presets' augmentation, batch 8) is timed alone at num_workers 0, 1 and 2:
steady-state images/s after the first batch (worker start-up is reported apart). Every measurement gets a
freshly built dataset: the synthetic scenes are generated on first use and then kept, so a reused dataset
(or workers forked from a process that had filled it) would time cache hits. These are first-epoch rates,
the slowest a run sees. Training images/s is the
synthetic preset's model (width 0.25, 96x128, channels_last) stepping on a fixed batch, so it contains no
loading; "loader/train" above 1 means loading alone is faster than training alone. The training loop
itself is then also fed by each loader (end to end), which is what a run sees: on a machine with few
cores, worker processes compete with the training threads. CamVid's loader is also compared with the camvid
preset's model (width 0.25, 240x320).

    python benchmarks/data_loader.py --out runs/bench-data-loader.json
    python benchmarks/data_loader.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from _measure import finish, load_average
from _paths import CAMVID_ROOT
from segadapt.config import RunConfig, preset
from segadapt.data import build_dataset
from segadapt.data.sampler import EpochSampler
from segadapt.models import build_model


def make_loader(dataset: Dataset, batch: int, workers: int) -> DataLoader:
    """The training loader's settings (train.py): endless seeded sampler, dropped last batch."""
    return DataLoader(dataset, batch_size=batch, sampler=EpochSampler(len(dataset), 0),  # type: ignore[arg-type]
                      num_workers=workers, drop_last=True, generator=torch.Generator().manual_seed(0))


def loader_rate(fresh: Callable[[], Dataset], batch: int, workers: int, batches: int) -> dict[str, float]:
    """Images/s over `batches` batches after the first one; the first one's wait is the start-up."""
    dataset = fresh()
    t0 = time.perf_counter()
    it = iter(make_loader(dataset, batch, workers))
    next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    t2 = time.perf_counter()
    del it  # stops the workers
    return {"images_per_s": round(batches * batch / (t2 - t1), 2), "startup_s": round(t1 - t0, 3)}


class Trainer:
    """A preset's model and optimizer, stepping as train.py does (channels_last when the preset says so)."""

    def __init__(self, cfg: RunConfig, num_classes: int) -> None:
        torch.manual_seed(0)
        self.fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model = build_model(cfg.model.arch, num_classes, cfg.model.width).train().to(memory_format=self.fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.ignore = 255

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        out = self.model(images.contiguous(memory_format=self.fmt))
        loss = F.cross_entropy(out, masks, ignore_index=self.ignore)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def rate(self, batch: tuple[torch.Tensor, torch.Tensor], steps: int, warmup: int = 10) -> float:
        """Images/s on one fixed batch (no loading): median step time after warm-up steps (the first ~10
        steps run measurably slower, as oneDNN settles)."""
        for _ in range(warmup):
            self.step(*batch)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            self.step(*batch)
            times.append(time.perf_counter() - t)
        return round(batch[0].shape[0] / statistics.median(times), 2)

    def end_to_end(self, fresh: Callable[[], Dataset], batch: int, workers: int, steps: int) -> float:
        """Images/s of training fed by a fresh dataset's loader, after the first batch."""
        it = iter(make_loader(fresh(), batch, workers))
        self.step(*next(it))
        t = time.perf_counter()
        for _ in range(steps):
            self.step(*next(it))
        rate = steps * batch / (time.perf_counter() - t)
        del it
        return round(rate, 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=20, help="timed batches per loader measurement")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--camvid", type=Path, default=CAMVID_ROOT, help="CamVid root (skipped when absent)")
    p.add_argument("--quick", action="store_true", help="tiny sanity run: few batches, no CamVid model")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    if args.quick:
        args.batches, args.steps = 3, 2

    syn = preset("synthetic")
    batch = syn.train.batch_size
    syn_data = build_dataset(syn.data, syn.data.train_split, train=True)
    trainer = Trainer(syn, syn_data.info.num_classes)
    fixed = next(iter(make_loader(syn_data, batch, 0)))
    train_rate = trainer.rate(fixed, args.steps)
    result: dict[str, Any] = {"batch": batch, "threads": torch.get_num_threads(),
                              "train_images_per_s": {"synthetic_preset": train_rate}, "loaders": {}}
    print(f"synthetic preset training (width {syn.model.width}, {syn.data.crop_size[0]}x{syn.data.crop_size[1]}, "
          f"batch {batch}, no loading): {train_rate:.1f} img/s")
    print(f"{'dataset':<10} {'workers':>7} {'loader img/s':>13} {'start-up s':>11} {'loader/train':>13} "
          f"{'end-to-end img/s':>17}")

    datasets: list[tuple[str, Callable[[], Dataset]]] = [
        ("synthetic", lambda: build_dataset(syn.data, syn.data.train_split, train=True))]
    if (args.camvid / "train" / "images").is_dir():
        cam = preset("camvid")
        cam.data.root = str(args.camvid)
        cam_data = build_dataset(cam.data, cam.data.train_split, train=True)
        datasets.append(("camvid", lambda: build_dataset(cam.data, cam.data.train_split, train=True)))
        if not args.quick:
            cam_trainer = Trainer(cam, cam_data.info.num_classes)
            cam_trainer.ignore = cam_data.info.ignore_index
            cam_batch = next(iter(make_loader(cam_data, batch, 0)))
            result["train_images_per_s"]["camvid_preset"] = cam_trainer.rate(cam_batch, max(2, args.steps // 3), 5)
    else:
        print(f"CamVid not found at {args.camvid}: synthetic only")

    for name, fresh in datasets:
        rows = {}
        for w in args.workers:
            row = loader_rate(fresh, batch, w, args.batches)
            row["loader_over_synthetic_train"] = round(row["images_per_s"] / train_rate, 2)
            if name == "camvid" and "camvid_preset" in result["train_images_per_s"]:
                row["loader_over_camvid_train"] = round(
                    row["images_per_s"] / result["train_images_per_s"]["camvid_preset"], 2)
            if name == "synthetic":
                row["end_to_end_images_per_s"] = trainer.end_to_end(fresh, batch, w, args.steps)
            rows[f"workers={w}"] = row
            e2e = row.get("end_to_end_images_per_s")
            print(f"{name:<10} {w:>7} {row['images_per_s']:>13.1f} {row['startup_s']:>11.2f} "
                  f"{row['loader_over_synthetic_train']:>13.2f} {e2e if e2e is not None else '-':>17}")
        result["loaders"][name] = rows
    if "camvid_preset" in result["train_images_per_s"]:
        print(f"camvid preset training (width 0.25, 240x320, batch {batch}, no loading): "
              f"{result['train_images_per_s']['camvid_preset']:.1f} img/s")
    result["load_avg_1min"] = load_average()
    result["cpu_count"] = os.cpu_count()
    return finish(result, args.out, result["train_images_per_s"])


if __name__ == "__main__":
    raise SystemExit(main())
