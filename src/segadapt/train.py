"""Supervised training (H1, and the baselines B1/B2): SGD + momentum, poly LR, cross-entropy.

`train()` reads top to bottom: data, model, optimizer, (resume), loop, final evaluation, files.
A run directory holds config.toml, log.csv, metrics.json, model.safetensors(+.json) and checkpoints/.

Under `torchrun --nproc_per_node N` the same loop runs in N processes with DistributedDataParallel:
`train.batch_size` stays the *global* batch (each process takes batch_size / N of it, from a disjoint
shard of the one shuffled order), so a config means the same optimisation at any N. Only rank 0 writes
files and draws progress bars; the final evaluation is split over the ranks and its confusion matrix
summed, so every rank returns the same metrics.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, Subset
from tqdm import tqdm

from segadapt import checkpoint as ckpt
from segadapt import distributed
from segadapt.config import RunConfig, TrainConfig, dumps_toml, to_dict
from segadapt.data import SegmentationDataset, build_dataset
from segadapt.data.base import SegmentationSource
from segadapt.errors import CheckpointError, ConfigError, SegadaptError
from segadapt.evaluate import evaluate
from segadapt.models import build_model
from segadapt.runtime import InterruptFlag, autocast_dtype, environment, select_device, setup

LOG_FIELDS = ["step", "loss", "lr", "images_per_s", "elapsed_s", "val_miou", "val_mean_acc"]


class EpochSampler(Sampler[int]):
    """Endless shuffled indices; epoch e uses permutation(seed + e), so a resumed run sees the same order.

    `start` is a position in that global order. With `world` > 1 processes the order is dealt out like
    cards: rank r takes positions start + r, start + r + world, ... So the shards are disjoint, together
    they are exactly the single-process order, and b consecutive items on each of the ranks make up the
    same global batch of b * world samples that one process would take at that step.
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        if start % world:
            raise ValueError(f"start {start} must be a multiple of world {world} (whole global batches)")
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def _global_order(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.n)
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            yield from torch.randperm(self.n, generator=g)[offset:].tolist()
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        order = self._global_order()
        return order if self.world == 1 else itertools.islice(order, self.rank, None, self.world)


def batches(sampler: Iterable[int], size: int) -> Iterator[list[int]]:
    """The sampler's indices grouped as the DataLoader groups them: which samples each batch holds.

    EpochSampler is deterministic, so iterating it a second time beside the loader names every batch's
    samples without changing the dataset's items (used to name a batch that makes the loss non-finite).
    """
    it = iter(sampler)
    while batch := list(itertools.islice(it, size)):
        yield batch


def rank_batch_size(batch_size: int, world: int) -> int:
    """Per-process batch: train.batch_size is the global batch, split evenly over the processes."""
    if batch_size % world:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch and must split evenly over {world} processes; "
            f"use a multiple of {world} or another --nproc_per_node"
        )
    return batch_size // world


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where runtime.autocast_dtype allows it (CUDA with bf16), otherwise plain float32."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun (gradients averaged during backward), the module itself otherwise."""
    if not distributed.active():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


# --- non-finite guard -------------------------------------------------------------------------------

def sample_name(dataset: Any, index: int) -> str | None:
    """A file path (or stem) for one sample, when the dataset can tell: `describe(i)`, a source, or pairs."""
    try:
        describe = getattr(dataset, "describe", None)
        if callable(describe):
            return str(describe(index))
        if isinstance(dataset, Subset):
            return sample_name(dataset.dataset, dataset.indices[index])
        source = getattr(dataset, "source", None)
        if isinstance(source, SegmentationSource):
            return source.name(index)
        pairs, d1, d2 = (getattr(dataset, k, None) for k in ("pairs", "d1", "d2"))
        if pairs is not None and isinstance(d1, SegmentationSource) and isinstance(d2, SegmentationSource):
            i, j = pairs[index]
            return f"{d1.name(i)} / {d2.name(j)}"
    except Exception:  # naming is a courtesy in an error path: never let it hide the real error
        return None
    return None


def describe_batch(dataset: Any, indices: Sequence[int]) -> str:
    """"dataset indices [3, 17] (name3, name17)": enough to find and inspect the samples of a bad batch."""
    names = [sample_name(dataset, i) for i in indices]
    text = f"dataset indices {list(indices)}"
    if any(names):
        text += f" ({', '.join(n or '?' for n in names)})"
    if distributed.active():
        text += f" on rank {distributed.rank()}"
    return text


def global_loss(loss: torch.Tensor) -> tuple[float, list[int]]:
    """The loss averaged over processes, and the ranks whose own loss is not finite.

    Every rank gets the same answer (one small all-reduce), so all of them stop at the same step instead
    of some waiting forever in DDP's gradient all-reduce. One process: the loss itself, and [0] if bad.
    """
    value = loss.detach().float()
    world = distributed.world_size()
    if world == 1:
        v = value.item()
        return v, [] if math.isfinite(v) else [0]
    finite = torch.isfinite(value)
    buf = torch.zeros(world + 1, device=value.device)
    buf[0] = torch.where(finite, value, torch.zeros_like(value))
    buf[1 + distributed.rank()] = (~finite).float()
    vals = distributed.all_reduce(buf).tolist()
    bad = [r for r in range(world) if vals[1 + r]]
    return (float("nan") if bad else vals[0] / world), bad


def grads_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """Whether every gradient element is finite: checked before optimizer.step() so weights never turn NaN.

    Max-abs rather than a norm: it overflows for no finite value, and NaN propagates through amax.
    """
    peaks = [p.grad.detach().abs().amax().float() for p in params if p.grad is not None]
    return not peaks or bool(torch.isfinite(torch.stack(peaks).amax()))


def end_of_step(step: int, tc: TrainConfig, elapsed: float, stop: InterruptFlag, save_state: Callable[[int], None],
                resume_command: str) -> bool:
    """What train and adapt do after every step: the periodic resume point, the RNG restart of ranks > 0,
    then the time budget (True: stop here) and Ctrl-C (save here, then one line saying how to continue).
    The stop decisions are all-reduced, so every rank stops at the same step."""
    if tc.checkpoint_every and step % tc.checkpoint_every == 0:
        save_state(step)
    if distributed.rank():  # from seed and step alone (only rank 0's RNG is saved): a resume at any step is exact
        torch.manual_seed(distributed.rank_seed(tc.seed + step))
    if tc.time_budget_s and distributed.any_rank(elapsed > tc.time_budget_s):
        if distributed.is_main():
            print(f"time budget of {tc.time_budget_s:g}s reached at step {step} of {tc.iterations}; "
                  f"continue with {resume_command}")
        return True
    if distributed.any_rank(stop.requested):
        save_state(step)
        raise SegadaptError(f"interrupted at step {step}; checkpoint saved, continue with {resume_command}")
    return False


def interrupted_mid_step(step: int, run_dir: Path, command: str) -> SegadaptError:
    """A second Ctrl-C lands mid-step: nothing is saved, the last resume point stands."""
    last = ckpt.latest_checkpoint(run_dir)
    where = (f"resume from {last.stem} with segadapt {command} --resume {run_dir}" if last is not None
             else "no checkpoint had been saved yet")
    return SegadaptError(f"interrupted during step {step + 1}; {where}")


def refuse_nonfinite(model: torch.nn.Module, step: int, run_dir: Path) -> None:
    """Before a resume point is written: weights that are not finite never replace a good checkpoint."""
    if not weights_finite(model):
        raise SegadaptError(f"weights are not finite at step {step}; not saving them "
                            f"(last good checkpoint: {ckpt.latest_checkpoint(run_dir)})")


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def nonfinite_error(
    what: str, value: float | str, step: int, bad_ranks: Sequence[int], batch: str, run_dir: Path, fix: str
) -> SegadaptError:
    """One line: what went non-finite, at which step, on which samples, the fix, and the last good checkpoint."""
    last = ckpt.latest_checkpoint(run_dir)
    saved = f"last good checkpoint: {last}" if last else "no checkpoint saved yet"
    if distributed.active() and bad_ranks and distributed.rank() not in bad_ranks:
        where = f"on rank(s) {list(bad_ranks)}, whose error names the batch"
    else:
        where = f"on the batch of {batch}"
    return SegadaptError(f"{what} became {value} at step {step} {where}; {fix} ({saved})")


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    return base_lr * (1.0 - step / total) ** power


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


def write_log_header(path: Path, resume_step: int, fields: Sequence[str] = LOG_FIELDS) -> float:
    """Start log.csv, or on resume drop rows after the resumed step so the log has no duplicates.
    Returns the run's elapsed seconds logged so far, from which a resumed run's clock continues."""
    rows: list[dict[str, str]] = []
    if resume_step and path.exists():
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
    with ckpt.atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    return max((float(r["elapsed_s"]) for r in rows if r.get("elapsed_s")), default=0.0)


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
    distributed.init()
    device = select_device(tc.device)
    world, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    per_rank = rank_batch_size(tc.batch_size, world)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # resume points of an earlier run in this directory would outrank this run's
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)

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
        model.param_groups(tc.lr, tc.head_lr_mult), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay
    )

    # resume
    start = 0
    if resume:
        last = ckpt.latest_checkpoint(run_dir)
        if last is None:
            raise CheckpointError(f"{run_dir}: nothing to resume (no checkpoints/step_*.safetensors); drop --resume")
        start = ckpt.load_training_state(last, model, optimizer)["step"]
        if main:
            print(f"resuming {run_dir} from step {start}")
    elapsed_before = 0.0  # seconds the run had logged before this resume
    if main:
        ckpt.write_text_atomic(run_dir / "config.toml", dumps_toml(cfg))
        elapsed_before = write_log_header(run_dir / "log.csv", start)
    # every rank holds the same weights here (same seed, same checkpoint; DDP also broadcasts rank 0's);
    # from now on ranks > 0 draw augmentation and dropout from their own seeds (reset after every step,
    # since only rank 0's RNG state is saved), rank 0 keeps the usual stream
    net = wrap_ddp(model, device)
    if rank:
        torch.manual_seed(distributed.rank_seed(tc.seed + start))

    sampler = EpochSampler(len(train_set), tc.seed, start * tc.batch_size, rank, world)
    loader = DataLoader(
        train_set,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        # own generator: DataLoader draws worker seeds from it, not from the global RNG we checkpoint
        generator=torch.Generator().manual_seed(distributed.rank_seed(tc.seed + start)),
        persistent_workers=cfg.data.num_workers > 0,
    )

    def save_state(step: int) -> None:
        """Rank 0 writes the resume point; weights that are not finite never replace a good checkpoint."""
        if not main:
            return
        refuse_nonfinite(model, step, run_dir)
        ckpt.save_training_state(ckpt.checkpoint_path(run_dir, step), model, optimizer, step,
                                 model_meta(cfg, train_set, step))
        ckpt.prune_checkpoints(run_dir)

    # loop
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    step, t0, seen = start, time.perf_counter(), 0
    bar = tqdm(total=tc.iterations, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0,
               disable=not main)
    log = (run_dir / "log.csv").open("a", newline="") if main else None
    writer = csv.DictWriter(log, LOG_FIELDS) if log else None
    stop = InterruptFlag()
    try:
        for (images, masks), ids in zip(loader, batches(sampler, per_rank)):
            if step >= tc.iterations:
                break
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, tc.iterations, tc.poly_power)
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            masks = masks.to(device, non_blocking=True)
            with autocast(device):
                loss = F.cross_entropy(net(images), masks, ignore_index=info.ignore_index)
            loss_value, bad_ranks = global_loss(loss)
            if bad_ranks:
                raise nonfinite_error("loss", loss_value, step + 1, bad_ranks, describe_batch(train_set, ids), run_dir,
                                      "lower train.lr or check these samples")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not grads_finite(params):  # identical on every rank: DDP has averaged them
                raise nonfinite_error("gradients", "non-finite", step + 1, [], describe_batch(train_set, ids),
                                      run_dir, "lower train.lr or check these samples; weights were not updated")
            optimizer.step()
            step += 1
            seen += images.shape[0] * world
            bar.update(1)
            elapsed = time.perf_counter() - t0
            row: dict[str, Any] = {}
            if step % tc.log_every == 0 or step == tc.iterations:
                row = {"step": step, "loss": f"{loss_value:.5f}", "lr": f"{optimizer.param_groups[0]['lr']:.3g}",
                       "images_per_s": f"{seen / elapsed:.2f}", "elapsed_s": f"{elapsed_before + elapsed:.1f}"}
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=row["lr"])
            if tc.eval_every and step % tc.eval_every == 0 and step < tc.iterations:
                s, _ = evaluate(model, val_set, info.num_classes, info.ignore_index, device, desc="val", shard=True)
                row = {**row, "step": step, "val_miou": f"{s.miou:.4f}", "val_mean_acc": f"{s.mean_acc:.4f}"}
                model.train()
            if row and writer and log:
                writer.writerow(row)
                log.flush()
            if end_of_step(step, tc, elapsed, stop, save_state, f"segadapt train --resume {run_dir}"):
                break
    except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the state is inconsistent, keep the last checkpoint
        raise interrupted_mid_step(step, run_dir, "train") from None
    finally:
        stop.restore()
        bar.close()
        if log:
            log.close()
    train_time = time.perf_counter() - t0

    # final evaluation (split over the ranks, confusion summed) and files (rank 0)
    scores, conf = evaluate(model, val_set, info.num_classes, info.ignore_index, device, desc="val", shard=True)
    metrics = {
        "step": step,
        "train_time_s": round(train_time, 2),
        "train_images_per_s": round(seen / train_time, 2) if train_time > 0 else None,
        "val": scores.to_dict(),
        "class_names": list(info.class_names),
        "confusion": conf.tolist(),
        "environment": {**environment(), "processes": world},
    }
    if main:
        save_state(step)
        ckpt.save_model(run_dir / ckpt.MODEL_FILE, model, model_meta(cfg, train_set, step))
        ckpt.write_json_atomic(run_dir / "metrics.json", metrics)
    distributed.barrier()  # when train() returns, the files exist for every rank (the sweep reads H1 back)
    return metrics
