"""The label-free peers a user would run instead of feature regression: AdaBN, TENT and self-training.

Each adapts a copy H2 of H1 with D2's images alone: no D1 image, no pairing, no label is read anywhere in
this file. A peer writes a normal run directory (config.toml, run.json, log.csv, peer.json,
model.safetensors and H1's own format, checkpoints/), so evaluate, predict and the sweep read its model as
any other, and Ctrl-C, the time budget and `--resume` work as in train and adapt (the `Run`'s, run.py).

- ``adabn`` (Li et al. 2016): every BatchNorm layer's running statistics re-estimated on D2 images, an
  exact average over train.iterations batches; no gradient step, no other weight changes.
- ``tent`` (Wang et al. 2021): the mean pixel entropy of H2(X2) minimised; only the normalisation layers'
  affine parameters train (BatchNorm, LayerNorm, GroupNorm, and a model's own norm classes), without
  weight decay. BatchNorm normalises with batch statistics while adapting, as TENT does; its running
  averages follow D2's meanwhile, and the saved model, evaluated in eval mode, normalises with them.
- ``self_training``: cross-entropy of H2(X2) against the frozen H1's argmax on the same X2, on the pixels
  whose H1 confidence is in the top adapt.pseudo_keep of their predicted class in the batch
  (objectives.pseudo, as CMA and class-balanced self-training keep them). Every parameter trains, with
  B2's parameter groups, weight decay and mode (train mode), so it differs from B2 only in its labels.

A model the method cannot act on (adabn: no BatchNorm; tent: no normalisation layer with affine
parameters, e.g. the study's VGG) is said so in one line and comes back unchanged: in a sweep its row is B0.
Every loss is a mean over the valid pixels (the validity mask: padding, or a mosaic's nodata).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from segadapt import checkpoint as ckpt
from segadapt.adapt import load_h1
from segadapt.cache import model_fingerprint
from segadapt.card import written
from segadapt.config import PEER_METHODS, RunConfig, to_dict
from segadapt.errors import CheckpointError, ConfigError
from segadapt.models.contract import conform
from segadapt.models.loading import rebuild_meta, save_native
from segadapt.models.modes import adaptation_mode, has_running_stats
from segadapt.objectives.entropy import pixel_entropy
from segadapt.objectives.pseudo import confident_pixels
from segadapt.run import Run, wrap_ddp
from segadapt.runtime import environment
from segadapt.speed import autocast

PEERS = PEER_METHODS  # the names config accepts (config.PEER_METHODS), each a loop below
_IGNORE = -100  # pixels left out of the pseudo-label loss


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's BatchNorm, InstanceNorm, LayerNorm and GroupNorm, or a model's own class
    named like one (transformers' ConvNextLayerNorm, RMSNorm), which share no base class with torch's."""
    return (isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
            or type(module).__name__.endswith("Norm"))


def norm_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters (scale, shift) of every normalisation layer of `model`: what TENT trains."""
    return [p for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)]


def masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-pixel `values` (N x H x W) over the pixels where `valid` (N x 1 x H x W of 0/1) is 1."""
    if valid is None:
        return values.mean()
    w = valid.reshape(values.shape).to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def entropy_loss(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """TENT's objective: the mean normalised prediction entropy over the valid pixels."""
    return masked_mean(pixel_entropy(logits), valid)


def pseudo_label_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, keep: float,
                      valid: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Cross-entropy of `logits` against the teacher's argmax on its confident pixels (per predicted class its
    top `keep` share among the valid pixels), and the share of valid pixels kept. No other pixel counts."""
    labels, kept = confident_pixels(torch.softmax(teacher_logits.detach().float(), 1), keep, valid)
    if not kept.any():
        return logits.sum() * 0.0, 0.0
    loss = F.cross_entropy(logits.float(), labels.masked_fill(~kept, _IGNORE), ignore_index=_IGNORE)
    total = kept.numel() if valid is None else float(valid.sum().item())
    return loss, float(kept.sum().item()) / max(total, 1.0)


def check_method(cfg: RunConfig) -> str:
    """peer.method, or one line naming the choices; adapt.pseudo_keep checked for self_training."""
    method = cfg.peer.method
    if method not in PEERS:
        raise ConfigError(f"peer.method={method!r}; choose one of {', '.join(PEERS)} (--method)")
    if method == "self_training" and not 0 < cfg.adapt.pseudo_keep <= 1:
        raise ConfigError(f"adapt.pseudo_keep={cfg.adapt.pseudo_keep}: the share of each class's pixels kept as "
                          f"pseudo-labels must be in (0, 1]; CMA keeps 0.2")
    return method


def _nothing_to_do(method: str, model: nn.Module) -> str:
    """Why `method` leaves `model` as it is, or "" when it applies."""
    name = type(getattr(model, "net", model)).__name__
    if method == "adabn" and not any(has_running_stats(m) for m in model.modules()):
        others = "its normalisation is per sample (LayerNorm/GroupNorm), which has no statistics to re-estimate" \
            if any(is_norm(m) for m in model.modules()) else "it has no normalisation layers"
        return f"adabn: {name} has no BatchNorm layer ({others}); H2 is H1 unchanged"
    if method == "tent" and not norm_affine_parameters(model):
        return f"tent: {name} has no normalisation layer with affine parameters to train; H2 is H1 unchanged"
    return ""


def _statistics_mode(model: nn.Module) -> list[tuple[nn.Module, float | None]]:
    """AdaBN: eval mode but the BatchNorm layers, whose running statistics restart and become the plain
    average over every batch seen (momentum None); returns their momenta, to be put back after."""
    model.eval()
    layers = [m for m in model.modules() if has_running_stats(m)]
    momenta = [(m, m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    return momenta


def _placeholder_optimizer() -> torch.optim.Optimizer:
    """AdaBN takes no gradient step, but a resume point holds an optimizer: one over no weight stands in."""
    return torch.optim.SGD([nn.Parameter(torch.zeros(0))], lr=0.0)


def _optimizer(method: str, student: nn.Module, cfg: RunConfig) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """What trains and how: tent the norm layers' affine parameters (no weight decay, as TENT), self_training
    every parameter in B2's groups; adabn nothing."""
    tc = cfg.train
    student.requires_grad_(False)
    if method == "adabn":
        return _placeholder_optimizer(), []
    if method == "tent":
        params = norm_affine_parameters(student)
        groups: list[dict[str, Any]] = [{"params": params, "lr": tc.lr}]
        weight_decay = 0.0
    else:
        student.requires_grad_(True)
        groups = conform(student).param_groups(tc.lr, tc.head_lr_mult)
        weight_decay = tc.weight_decay
    params = [p for g in groups for p in g["params"]]
    for p in params:
        p.requires_grad_(True)
    return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, weight_decay=weight_decay), params


def _train_mode(method: str, student: nn.Module) -> None:
    """tent: train mode without dropout or stochastic depth, BatchNorm on batch statistics; self_training: train
    mode as B2 trains."""
    if method == "tent":
        adaptation_mode(student)
        for m in student.modules():
            if has_running_stats(m):
                m.train()
    else:
        student.train()


def _loss(method: str, net: nn.Module, teacher: nn.Module, x2: torch.Tensor, valid: torch.Tensor, keep: float
          ) -> tuple[torch.Tensor, float]:
    """tent's or self_training's loss on one batch of D2 images, and the share of pixels kept as pseudo-labels
    (nan for tent)."""
    if method == "tent":
        return entropy_loss(net(x2), valid), math.nan
    with torch.no_grad():
        target = teacher(x2)  # the frozen H1's predictions on the same images
    return pseudo_label_loss(net(x2), target, keep, valid)


def run_peer(
    cfg: RunConfig,
    run_dir: Path,
    images: Dataset,
    *,
    teacher: nn.Module | None = None,
    h1_meta: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Adapt H1 to D2 by `cfg.peer.method` from `images` ((X2, valid) items: data.d2.d2_images, or an
    ImageDataset of the sweep's D2); writes model.safetensors and peer.json, returns peer.json's content."""
    method = check_method(cfg)
    tc = cfg.train
    run = Run(cfg, run_dir, "peer", resume=resume)
    device = run.device

    # teacher H1 (frozen) and student H2 (a copy), in the layout train.channels_last says (as adapt())
    if teacher is None:
        teacher, h1_meta = load_h1(cfg, device)
    assert h1_meta is not None
    teacher = teacher.to(device).eval().requires_grad_(False)
    run.settle(teacher)  # train.channels_last / train.precision = "auto": timed on a copy
    if tc.channels_last:
        teacher = copy.deepcopy(teacher).to(memory_format=run.memory_format)
    student = copy.deepcopy(teacher).to(device)
    note = _nothing_to_do(method, student)
    if note and run.main:
        print(note, flush=True)

    momenta = _statistics_mode(student) if method == "adabn" and not note else []
    optimizer, trainable = _optimizer(method, student, cfg)
    h1_sha = model_fingerprint(teacher)  # a resume must adapt the same H1

    def resume_meta() -> dict[str, Any]:
        return {"config": to_dict(cfg), "h1_sha256": h1_sha, "peer": method}

    state = run.hold(student, optimizer, resume_meta)
    if state and state.get("h1_sha256", h1_sha) != h1_sha:
        raise CheckpointError(f"{cfg.adapt.h1}: H1's weights changed since {run_dir} started; resuming would "
                              f"adapt another model. Start a new run (--out)")
    if trainable:
        _train_mode(method, student)
    net = wrap_ddp(student, device) if trainable else student

    # loop (none when the method does not apply to this model)
    step, seen, loss_value, kept = run.start, 0, math.nan, math.nan
    fields = ["step", "loss", *(["kept"] if method == "self_training" else []), "lr", "images_per_s", "elapsed_s"]
    fix = "lower train.lr or check these D2 images"
    with run.logging(fields, f"peer {method}"):
        for (x2, valid), ids in ([] if note else run.batches(images)):
            if step >= tc.iterations:
                break
            x2, valid = run.to_device(x2), valid.to(device, non_blocking=True)
            lr = run.lr if trainable else 0.0
            if not trainable:  # adabn: a forward pass moves the statistics
                with torch.no_grad(), autocast(device, tc.precision):
                    student(x2)
            else:
                with autocast(device, tc.precision):
                    loss, kept = _loss(method, net, teacher, x2, valid, cfg.adapt.pseudo_keep)
                loss_value = run.check_loss(loss, step + 1, ids, fix, what=f"{method} loss")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.check_grads(trainable, step + 1, ids, f"{fix}; weights were not updated")
                optimizer.step()
                run.schedule.step()
            step += 1
            seen += x2.shape[0] * run.world
            run.progress(**({"loss": f"{loss_value:.4g}"} if trainable else {}))
            if run.due(step):
                row = {"step": step, "images_per_s": f"{seen / run.elapsed():.2f}"}
                if trainable:
                    row |= {"loss": f"{loss_value:.6g}", "lr": f"{lr:.3g}"}
                if method == "self_training":
                    row["kept"] = f"{kept:.4f}"
                run.log(row)
            if run.end_of_step(step):
                break
    train_time = run.elapsed()
    for m, momentum in momenta:
        m.momentum = momentum

    # files (rank 0)
    student.requires_grad_(True).eval()
    meta = written({**h1_meta, **rebuild_meta(student), "step": step, "adapted_from": str(cfg.adapt.h1),
                    "peer": method, "config": to_dict(cfg)})
    run.save(step)  # the run can be extended later (--resume with more iterations)
    if run.main:
        ckpt.save_model(run_dir / ckpt.MODEL_FILE, student, meta)
        save_native(student, run_dir, meta, h1_meta.get("hf_source"))  # and in H1's own format
    result = {
        "method": method,
        "step": step,
        "applies": not note,
        "note": note,
        "trained_parameters": sum(p.numel() for p in trainable),
        "final_loss": loss_value if trainable and step > run.start else None,
        **({"final_kept": kept} if method == "self_training" and step > run.start else {}),
        "train_time_s": round(train_time, 2),
        "environment": environment(),
    }
    if run.main:
        ckpt.write_json_atomic(run_dir / "peer.json", result)
    run.finish(step)
    return result
