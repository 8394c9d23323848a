"""Supervised training (H1, and the baselines B1/B2): SGD + momentum, poly LR, cross-entropy.

`train()` reads top to bottom: data, model, optimizer, (resume), loop, final evaluation, files; the run
directory, log, resume points and Ctrl-C are the `Run`'s (run.py). A run directory holds config.toml,
run.json, log.csv, metrics.json, model.safetensors(+.json) and checkpoints/.

Under `torchrun --nproc_per_node N` the same loop runs in N processes with DistributedDataParallel:
`train.batch_size` stays the *global* batch (each process takes batch_size / N of it, from a disjoint
shard of the one shuffled order), so a config means the same optimisation at any N. Only rank 0 writes
files and draws progress bars; the final evaluation is split over the ranks and its confusion matrix
summed, so every rank returns the same metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from segadapt import checkpoint as ckpt
from segadapt.card import written
from segadapt.config import RunConfig, to_dict
from segadapt.data import SegmentationDataset, build_dataset
from segadapt.data.base import pixel_factor
from segadapt.errors import SegadaptError
from segadapt.evaluate import evaluate
from segadapt.models import build_model, conform
from segadapt.models.loading import arch_of, rebuild_meta, save_native
from segadapt.run import Run, wrap_ddp
from segadapt.runtime import environment
from segadapt.speed import autocast

LOG_FIELDS = ["step", "loss", "lr", "images_per_s", "elapsed_s", "val_miou", "val_mean_acc"]


def model_meta(cfg: RunConfig, dataset: SegmentationDataset, step: int,
               model: torch.nn.Module | None = None, pixel: float | None = None) -> dict[str, Any]:
    """The model file's metadata; for a transformers or factory model also what rebuilds it (its config, its
    factory), so an `hf:DIR` run does not need DIR later and a B2 of an external H1 is recorded as such.
    `pixel`: the factor its training frames were resized by (data/base.pixel_factor), for mosaics."""
    info = dataset.info
    native = rebuild_meta(model) if model is not None else {}
    arch = arch_of(model, cfg.model.arch) if model is not None else cfg.model.arch
    return {
        "arch": arch,
        "width": cfg.model.width if arch == cfg.model.arch else 1.0,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "ignore_index": info.ignore_index,
        "palette": [list(c) for c in info.palette],
        "dataset": info.name,
        "step": step,
        "config": to_dict(cfg),
        "pixel_factor": pixel,
        **native,
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
    run = Run(cfg, run_dir, "train", resume=resume)
    device = run.device

    # data
    train_set = train_set or build_dataset(cfg.data, cfg.data.train_split, train=True)
    val_set = val_set or build_dataset(cfg.data, cfg.data.val_split, train=False)
    info = train_set.info

    # model and optimizer
    # a given model may arrive frozen (adapt freezes its teacher H1); supervised training updates everything
    model = (model or create_model(cfg, info.num_classes)).to(device).requires_grad_(True)
    run.settle(model)  # train.channels_last / train.precision = "auto": timed here
    model = model.to(memory_format=run.memory_format)
    groups = conform(model).param_groups(tc.lr, tc.head_lr_mult)  # the model names its head
    optimizer = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    pixel = pixel_factor(train_set.source, cfg.data.base_size)  # how mosaics are resized for this model, later
    run.hold(model, optimizer, lambda: model_meta(cfg, train_set, step, model, pixel))  # resume point
    net = wrap_ddp(model, device)

    # loop
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    step, seen = run.start, 0
    fix = "lower train.lr or check these samples"
    with run.logging(LOG_FIELDS, "train"):
        for (images, masks), ids in run.batches(train_set):
            if step >= tc.iterations:
                break
            lr = run.lr
            images, masks = run.to_device(images), masks.to(device, non_blocking=True)
            with autocast(device, tc.precision):
                loss = F.cross_entropy(net(images), masks, ignore_index=info.ignore_index)
            loss_value = run.check_loss(loss, step + 1, ids, fix)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.check_grads(params, step + 1, ids, f"{fix}; weights were not updated")  # DDP has averaged them
            optimizer.step()
            run.schedule.step()
            step += 1
            seen += images.shape[0] * run.world
            run.progress(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}")
            row: dict[str, Any] = {}
            if run.due(step):
                row = {"step": step, "loss": f"{loss_value:.5f}", "lr": f"{lr:.3g}",
                       "images_per_s": f"{seen / run.elapsed():.2f}"}
            if tc.eval_every and step % tc.eval_every == 0 and step < tc.iterations:
                s, _ = evaluate(model, val_set, info.num_classes, info.ignore_index, device, desc="val", shard=True)
                row = {**row, "step": step, "val_miou": f"{s.miou:.4f}", "val_mean_acc": f"{s.mean_acc:.4f}"}
                model.train()
            if row:
                run.log(row)
            if run.end_of_step(step):
                break
    train_time = run.elapsed()

    # final evaluation (split over the ranks, confusion summed) and files (rank 0)
    scores, conf = evaluate(model, val_set, info.num_classes, info.ignore_index, device, desc="val", shard=True)
    metrics = {
        "step": step,
        "train_time_s": round(train_time, 2),
        "train_images_per_s": round(seen / train_time, 2) if train_time > 0 else None,
        "val": scores.to_dict(),
        "class_names": list(info.class_names),
        "confusion": conf.tolist(),
        "environment": {**environment(), "processes": run.world},
    }
    run.save(step)  # the run can be extended later (--resume with more iterations)
    if run.main:
        meta = written(model_meta(cfg, train_set, step, model, pixel))
        ckpt.save_model(run_dir / ckpt.MODEL_FILE, model, meta)
        save_native(model, run_dir, meta)  # hf_model/ for transformers models
        ckpt.write_json_atomic(run_dir / "metrics.json", metrics)
    run.finish(step)
    return metrics
