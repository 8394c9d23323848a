"""The method: fine-tune a copy H2 of H1 so that H2's feature maps on D2 images match the frozen H1's
feature maps on the paired D1 images. No D2 label is read anywhere in this file.

Only parameters below the deepest regressed tap are trained; everything above stays exactly as in H1,
so H2 keeps H1's classifier. The student's forward stops at that tap, the teacher runs in inference mode.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segadapt import checkpoint as ckpt
from segadapt.config import RunConfig, dumps_toml, to_dict
from segadapt.data.pairs import PairedDataset
from segadapt.errors import SegadaptError
from segadapt.losses import LAYER_PRESETS, feature_regression_loss, resolve_layers
from segadapt.models.taps import parameters_used, tap_features
from segadapt.runtime import environment, select_device, setup
from segadapt.train import EpochSampler, load_model, poly_lr

Features = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]


def layer_weights(cfg: RunConfig) -> dict[str, float]:
    layers = cfg.adapt.layers
    if len(layers) == 1 and layers[0] in LAYER_PRESETS and not cfg.adapt.weights:
        return resolve_layers(preset=layers[0])
    return resolve_layers(layers=layers, weights=cfg.adapt.weights)


def feature_fn(model: nn.Module) -> Features:
    """The built-in models' early-exit `features`, or forward hooks for any other module."""
    if hasattr(model, "features") and hasattr(model, "TAPS"):
        return model.features
    return lambda x, taps: tap_features(model, x, taps)


def trainable_parameters(model: nn.Module, taps: list[str], probe: torch.Tensor) -> list[nn.Parameter]:
    """Parameters that influence the taps; found structurally for VGG, by a probe forward otherwise."""
    if hasattr(model, "parameters_up_to") and hasattr(model, "TAPS"):
        deepest = max(taps, key=model.TAPS.index)
        return model.parameters_up_to(deepest)
    return parameters_used(model, probe, taps)


def adapt(
    cfg: RunConfig,
    run_dir: Path,
    pairs: PairedDataset,
    *,
    teacher: nn.Module | None = None,
    h1_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Regress H2's features on X2 onto H1's on X1; writes model.safetensors (a normal model file)."""
    tc = cfg.train
    setup(tc.seed, tc.threads, tc.deterministic)
    device = select_device(tc.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = layer_weights(cfg)
    taps = list(weights)

    # teacher H1 (frozen) and student H2 (a copy)
    if teacher is None:
        if not cfg.adapt.h1:
            raise SegadaptError("no source model to adapt; pass --h1 RUN (a training run or model file)")
        teacher, h1_meta = load_model(cfg.adapt.h1, device)
    assert h1_meta is not None
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).to(device)
    teacher_features, student_features = feature_fn(teacher), feature_fn(student)

    x1_probe, _ = pairs[0]
    trainable = trainable_parameters(student, taps, x1_probe[None].to(device))
    train_ids = {id(p) for p in trainable}
    for p in student.parameters():
        p.requires_grad_(id(p) in train_ids)
    optimizer = torch.optim.SGD(trainable, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = tc.lr

    loader = DataLoader(
        pairs, batch_size=tc.batch_size, sampler=EpochSampler(len(pairs), tc.seed), drop_last=True,
        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(tc.seed), persistent_workers=cfg.data.num_workers > 0,
    )
    ckpt.write_text_atomic(run_dir / "config.toml", dumps_toml(cfg))
    fields = ["step", "loss", *[f"loss_{t}" for t in taps], "lr", "images_per_s"]
    log_file = (run_dir / "log.csv").open("w", newline="")
    log = csv.DictWriter(log_file, fields)
    log.writeheader()

    # loop
    student.train()
    step, seen, t0 = 0, 0, time.perf_counter()
    bar = tqdm(total=tc.iterations, desc=f"adapt {'+'.join(taps)}", dynamic_ncols=True, mininterval=1.0)
    try:
        for x1, x2 in loader:
            if step >= tc.iterations:
                break
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, tc.iterations, tc.poly_power)
            x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
            with torch.inference_mode():
                target = teacher_features(x1, taps)
            pred = student_features(x2, taps)
            loss, per_layer = feature_regression_loss(target, pred, weights)
            if not math.isfinite(loss.item()):
                raise SegadaptError(
                    f"regression loss became {loss.item()} at step {step}; "
                    "lower train.lr or set adapt.grad_clip (e.g. 5)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.adapt.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.adapt.grad_clip)
            optimizer.step()
            step += 1
            seen += x1.shape[0]
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.iterations:
                rate = seen / (time.perf_counter() - t0)
                row = {"step": step, "loss": f"{loss.item():.6g}", "lr": f"{optimizer.param_groups[0]['lr']:.3g}",
                       "images_per_s": f"{rate:.2f}"}
                log.writerow(row | {f"loss_{t}": f"{v:.6g}" for t, v in per_layer.items()})
                log_file.flush()
                bar.set_postfix(loss=f"{loss.item():.4g}")
    finally:
        bar.close()
        log_file.close()

    student.requires_grad_(True).eval()
    meta = {**h1_meta, "step": step, "adapted_from": str(cfg.adapt.h1), "layers": weights, "config": to_dict(cfg)}
    ckpt.save_model(run_dir / ckpt.MODEL_FILE, student, meta)
    result = {
        "layers": weights,
        "step": step,
        "final_loss": float(loss.item()) if step else None,
        "final_layer_loss": per_layer if step else {},
        "train_time_s": round(time.perf_counter() - t0, 2),
        "environment": environment(),
    }
    ckpt.write_json_atomic(run_dir / "adapt.json", result)
    return result

