"""Supervised training (H1, and the baselines B1/B2): SGD + momentum, poly LR, cross-entropy.

`train()` reads top to bottom: data, model, optimizer, (resume), loop, final evaluation, files.
A run directory holds config.toml, log.csv, metrics.json, model.safetensors(+.json) and checkpoints/.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from segadapt import checkpoint as ckpt
from segadapt.config import RunConfig, dumps_toml, to_dict
from segadapt.data import SegmentationDataset, build_dataset
from segadapt.errors import CheckpointError, SegadaptError
from segadapt.evaluate import evaluate
from segadapt.models import build_model
from segadapt.runtime import environment, select_device, setup

LOG_FIELDS = ["step", "loss", "lr", "images_per_s", "elapsed_s", "val_miou", "val_mean_acc"]


class EpochSampler(Sampler[int]):
    """Endless shuffled indices; epoch e uses permutation(seed + e), so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.n)
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            yield from torch.randperm(self.n, generator=g)[offset:].tolist()
            epoch, offset = epoch + 1, 0


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    return base_lr * (1.0 - step / total) ** power


def param_groups(model: torch.nn.Module, lr: float, head_lr_mult: float) -> list[dict[str, Any]]:
    """DeepLab trains the classifier at a higher LR than the (pre-trained) backbone."""
    if hasattr(model, "classifier_parameters"):
        head = list(model.classifier_parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in model.parameters() if id(p) not in head_ids]
        return [{"params": body, "lr": lr, "base_lr": lr}, {"params": head, "lr": lr * head_lr_mult,
                                                             "base_lr": lr * head_lr_mult}]
    return [{"params": list(model.parameters()), "lr": lr, "base_lr": lr}]


def model_meta(cfg: RunConfig, dataset: SegmentationDataset, step: int) -> dict[str, Any]:
    info = dataset.info
    return {
        "arch": cfg.model.arch,
        "width": cfg.model.width,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "ignore_index": info.ignore_index,
        "palette": [list(c) for c in info.palette],
        "dataset": info.name,
        "step": step,
        "config": to_dict(cfg),
    }


def create_model(cfg: RunConfig, num_classes: int) -> torch.nn.Module:
    """Fresh model, with ImageNet initialisation if the config names a weights file."""
    if cfg.model.num_classes and cfg.model.num_classes != num_classes:
        raise SegadaptError(
            f"model.num_classes={cfg.model.num_classes} but the dataset has {num_classes} classes; "
            "set model.num_classes=0 to follow the dataset"
        )
    model = build_model(cfg.model.arch, num_classes, cfg.model.width)
    if cfg.model.init_weights:
        from segadapt.models.pretrained import load_vgg16_imagenet

        load_vgg16_imagenet(model, cfg.model.init_weights)
    return model


def _write_log_header(path: Path, resume_step: int) -> None:
    """Start log.csv, or on resume drop rows after the resumed step so the log has no duplicates."""
    rows: list[dict[str, str]] = []
    if resume_step and path.exists():
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
    with ckpt.atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)


def train(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    model: torch.nn.Module | None = None,
    train_set: SegmentationDataset | None = None,
    val_set: SegmentationDataset | None = None,
) -> dict[str, Any]:
    """Train a segmentation model with labels; returns the final metrics (also in metrics.json).

    `model`, `train_set` and `val_set` override what the config would build: the baselines use this to
    fine-tune H1 (B2) or to train on shifted images with the original labels (B1, B2).
    """
    tc = cfg.train
    setup(tc.seed, tc.threads, tc.deterministic)
    device = select_device(tc.device)
    run_dir.mkdir(parents=True, exist_ok=True)

    # data
    train_set = train_set or build_dataset(cfg.data, cfg.data.train_split, train=True)
    val_set = val_set or build_dataset(cfg.data, cfg.data.val_split, train=False)
    info = train_set.info

    # model and optimizer
    # a given model may arrive frozen (adapt freezes its teacher H1); supervised training updates everything
    model = (model or create_model(cfg, info.num_classes)).to(device).requires_grad_(True)
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(
        param_groups(model, tc.lr, tc.head_lr_mult), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay
    )

    # resume
    start = 0
    if resume:
        last = ckpt.latest_checkpoint(run_dir)
        if last is None:
            raise CheckpointError(f"{run_dir}: nothing to resume (no checkpoints/step_*.safetensors); drop --resume")
        start = ckpt.load_training_state(last, model, optimizer)["step"]
        print(f"resuming {run_dir} from step {start}")
    ckpt.write_text_atomic(run_dir / "config.toml", dumps_toml(cfg))
    _write_log_header(run_dir / "log.csv", start)

    loader = DataLoader(
        train_set,
        batch_size=tc.batch_size,
        sampler=EpochSampler(len(train_set), tc.seed, start * tc.batch_size),
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        # own generator: DataLoader draws worker seeds from it, not from the global RNG we checkpoint
        generator=torch.Generator().manual_seed(tc.seed + start),
        persistent_workers=cfg.data.num_workers > 0,
    )

    def save_state(step: int) -> None:
        ckpt.save_training_state(ckpt.checkpoint_path(run_dir, step), model, optimizer, step,
                                 model_meta(cfg, train_set, step))
        ckpt.prune_checkpoints(run_dir)

    # loop
    model.train()
    step, t0, seen = start, time.perf_counter(), 0
    bar = tqdm(total=tc.iterations, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)
    log = (run_dir / "log.csv").open("a", newline="")
    writer = csv.DictWriter(log, LOG_FIELDS)
    try:
        for images, masks in loader:
            if step >= tc.iterations:
                break
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, tc.iterations, tc.poly_power)
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            masks = masks.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images), masks, ignore_index=info.ignore_index)
            if not math.isfinite(loss.item()):
                raise SegadaptError(
                    f"loss became {loss.item()} at step {step}; lower train.lr or check the data "
                    f"(last good checkpoint: {ckpt.latest_checkpoint(run_dir)})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += images.shape[0]
            bar.update(1)
            elapsed = time.perf_counter() - t0
            row: dict[str, Any] = {}
            if step % tc.log_every == 0 or step == tc.iterations:
                row = {"step": step, "loss": f"{loss.item():.5f}", "lr": f"{optimizer.param_groups[0]['lr']:.3g}",
                       "images_per_s": f"{seen / elapsed:.2f}", "elapsed_s": f"{elapsed:.1f}"}
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=row["lr"])
            if tc.eval_every and step % tc.eval_every == 0 and step < tc.iterations:
                s, _ = evaluate(model, val_set, info.num_classes, info.ignore_index, device, desc="val")
                row = {**row, "step": step, "val_miou": f"{s.miou:.4f}", "val_mean_acc": f"{s.mean_acc:.4f}"}
                model.train()
            if row:
                writer.writerow(row)
                log.flush()
            if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                save_state(step)
            if tc.time_budget_s and elapsed > tc.time_budget_s:
                print(f"time budget of {tc.time_budget_s:.0f}s reached at step {step}")
                break
    except KeyboardInterrupt:
        save_state(step)
        raise SegadaptError(f"interrupted at step {step}; checkpoint saved, continue with --resume {run_dir}") from None
    finally:
        bar.close()
        log.close()
    train_time = time.perf_counter() - t0

    # final evaluation and files
    scores, conf = evaluate(model, val_set, info.num_classes, info.ignore_index, device, desc="val")
    save_state(step)
    ckpt.save_model(run_dir / ckpt.MODEL_FILE, model, model_meta(cfg, train_set, step))
    metrics = {
        "step": step,
        "train_time_s": round(train_time, 2),
        "train_images_per_s": round(seen / train_time, 2) if train_time > 0 else None,
        "val": scores.to_dict(),
        "class_names": list(info.class_names),
        "confusion": conf.tolist(),
        "environment": environment(),
    }
    ckpt.write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from a segadapt model file (or run directory) and its metadata."""
    tensors, meta = ckpt.load_model_file(path)
    model = build_model(meta["arch"], meta["num_classes"], meta["width"])
    ckpt.load_weights(model, tensors, path)
    return model.to(device).eval(), meta
