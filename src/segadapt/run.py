"""One training or adaptation run in its directory: what both loops need around their step, written once.

`train()` and `adapt()` each open a `Run` and keep their own step in view. The Run does the rest:
set-up (seed, threads, device, process group), the run directory (claimed by this process, fresh or resumed,
config.toml, run.json), the sharded loader, the log (log.csv, optional TensorBoard), resume points (saved
only after the finiteness check), the progress bar, Ctrl-C and the time budget, and the finished marker.

The run directory's own rules (lock, run.json, what a resume may change) are run_dir.py's.

Under torchrun only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from segadapt import checkpoint as ckpt
from segadapt import distributed, progress
from segadapt.config import RunConfig, dumps_toml, load_toml
from segadapt.data.sampler import EpochSampler, batches
from segadapt.errors import CheckpointError, ConfigError, Interrupted
from segadapt.guards import describe_batch, global_loss, grads_finite, nonfinite_error, refuse_nonfinite
from segadapt.run_dir import KINDS, RUN_FILE, lock, unlock, write_info
from segadapt.runtime import (
    InterruptFlag,
    check_batch,
    check_workers,
    select_device,
    setup,
    warn_if_busy,
)
from segadapt.speed import Variant, fastest_training, precision_candidates

# --- small pieces both loops use ----------------------------------------------------------------------

def rank_batch_size(batch_size: int, world: int) -> int:
    """Per-process batch: train.batch_size is the global batch, split evenly over the processes."""
    if batch_size % world:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch and must split evenly over {world} processes; "
            f"use a multiple of {world} or another --nproc_per_node"
        )
    return batch_size // world


def poly_schedule(optimizer: torch.optim.Optimizer, total: int, power: float, start: int = 0) -> LambdaLR:
    """The poly learning rate, base_lr * (1 - step / total) ** power, as a LambdaLR standing at step `start`.

    Its base rates are the groups' `initial_lr`: taken from their lr on a fresh run (start 0), restored with
    the optimizer's state from a resume point otherwise, so the schedule continues from what the resume point
    holds; the rate at `start` is computed with this run's `total`, which a resume may extend."""
    for group in optimizer.param_groups:  # resume points written before the schedule kept its base as base_lr
        if start and "initial_lr" not in group:
            group["initial_lr"] = group.get("base_lr", group["lr"])

    def factor(step: int) -> float:
        return (1.0 - step / total) ** power

    return LambdaLR(optimizer, factor, last_epoch=start - 1)


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun (gradients averaged during backward), the module itself otherwise."""
    if not distributed.active():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def write_log_header(path: Path, resume_step: int, fields: Sequence[str]) -> float:
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


class RunLog:
    """log.csv rows, and the same numbers as TensorBoard scalars when train.tensorboard is on (rank 0 only)."""

    def __init__(self, run_dir: Path, fields: Sequence[str], enabled: bool, tensorboard: bool) -> None:
        self.fields, self.path = list(fields), run_dir / "log.csv"
        self._file = self.path.open("a", newline="") if enabled else None
        self._csv = csv.DictWriter(self._file, self.fields) if self._file else None
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # checked importable when the Run opened

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        if self._csv is None or self._file is None:
            return
        try:
            self._csv.writerow(row)
            self._file.flush()
        except OSError as e:  # the file object's error names no path
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ckpt.no_space(self.path) from None
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        if self._tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k not in ("step", "elapsed_s") and v not in ("", None):
                    self._tb.add_scalar(k.replace("loss_", "loss/"), float(v), step)
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a row that could not be written has already been reported
                self._file.close()
        if self._tb is not None:
            self._tb.close()


def _check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard = true needs the tensorboard package: "
                          "pip install 'segadapt[tensorboard]'") from None


# --- the run ----------------------------------------------------------------------------------------

class Run:
    """A training or adaptation run being written: open it, hold the model, iterate, save, finish.

    Typical use, in this order (see train.py and adapt.py):
        run = Run(cfg, run_dir, "train", resume=resume)     # seed, device, claim the directory
        ... build data, model, optimizer ...
        run.hold(model, optimizer, meta)                    # what a resume point holds; restored if resuming
        with run.logging(fields, desc):                     # config.toml, run.json, log, bar, Ctrl-C
            for batch, ids in run.batches(dataset):
                ... the step at run.lr; optimizer.step(); run.schedule.step() ...
                run.log(step, row); if run.end_of_step(step): break
        run.save(step); ... write results ...; run.finish(step)
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, kind: str, *, resume: bool = False) -> None:
        assert kind in KINDS
        tc = cfg.train
        setup(tc.seed, tc.threads, tc.deterministic)
        distributed.init()
        self.cfg, self.dir, self.kind, self.resume = cfg, run_dir, kind, resume
        self.device = select_device(tc.device)
        self.world, self.rank, self.main = distributed.world_size(), distributed.rank(), distributed.is_main()
        self.per_rank = rank_batch_size(tc.batch_size, self.world)
        check_workers(cfg.data.num_workers)  # bounds against this machine, before anything is written
        check_batch(self.per_rank, cfg.data.crop_size, 2 if kind == "adapt" else 1)
        if tc.tensorboard and self.main:
            _check_tensorboard()
        self.last = ckpt.latest_checkpoint(run_dir) if resume else None
        if resume and self.last is None:
            raise CheckpointError(f"{run_dir}: nothing to resume (no checkpoints/step_*.safetensors); drop --resume")
        if resume:
            self._keep_settled()
        self.start = ckpt.step_of(self.last) if self.last is not None else 0
        self.elapsed_before = 0.0
        self._held: tuple[torch.nn.Module, torch.optim.Optimizer, Callable[[], dict[str, Any]],
                          Callable[[], dict[str, torch.Tensor] | None]] | None = None
        self._log: RunLog | None = None
        self._dataset: Any = None
        self._bar: tqdm | None = None
        self._stop: InterruptFlag | None = None
        self._t0 = time.perf_counter()
        self._done = self.start
        if self.main:
            lock(run_dir)
            if not resume:  # resume points or a finished marker of an earlier run here would outrank this run's
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
                (run_dir / RUN_FILE).unlink(missing_ok=True)

    def _keep_settled(self) -> None:
        """A resumed run runs as it started: the layout and precision its config.toml recorded replace an "auto"
        in the config it is resumed with (the sweep resumes its methods with its own config), never retimed."""
        saved = self.dir / "config.toml"
        if not saved.is_file():
            return
        recorded, tc = load_toml(saved).train, self.cfg.train
        if tc.channels_last == "auto":
            tc.channels_last = recorded.channels_last
        if tc.precision == "auto" and recorded.precision != "auto":
            tc.precision = recorded.precision
        elif tc.precision == "auto" and self.device.type == "cpu":  # a run from before train.precision: fp32 on CPU
            tc.precision = "fp32"

    # what a resume point holds
    def hold(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: Callable[[], dict[str, Any]],
             extra: Callable[[], dict[str, torch.Tensor] | None] = lambda: None) -> dict[str, Any]:
        """Name what every resume point saves (`meta()` and `extra()` are read at each save); when resuming,
        load the newest one into `model` and `optimizer` (RNG too) and return its metadata, else {}. Then
        `schedule` is the poly learning rate over `optimizer`, at the step the run starts at: the loop steps it
        after each optimizer step, and `lr` is the rate of the step about to run."""
        self._held = (model, optimizer, meta, extra)
        state = {} if self.last is None else ckpt.load_training_state(self.last, model, optimizer)
        tc = self.cfg.train
        self.schedule = poly_schedule(optimizer, tc.iterations, tc.poly_power, self.start)
        if state and self.main:
            print(f"resuming {self.dir} from step {self.start}")
        return state

    def save(self, step: int) -> None:
        """Write a resume point at `step` (rank 0); weights that are not finite never replace a good one."""
        if not self.main or self._held is None:
            return
        model, optimizer, meta, extra = self._held
        refuse_nonfinite(model, step, self.dir)
        ckpt.save_training_state(ckpt.checkpoint_path(self.dir, step), model, optimizer, step, meta(),
                                 extra=extra())
        ckpt.prune_checkpoints(self.dir)

    # data
    def batches(self, dataset: Dataset, indices: Sequence[int] | None = None) -> Iterator[tuple[Any, list[int]]]:
        """(batch, its samples' indices in `dataset`) for ever: this rank's shard of the one shuffled order of
        `dataset` (or of its subset `indices`), from the step the run starts at."""
        tc = self.cfg.train
        warn_if_busy()  # as the loop starts: after every check that could end the command in one line
        n = len(indices) if indices is not None else len(dataset)  # type: ignore[arg-type]
        sampler = EpochSampler(n, tc.seed, self.start * tc.batch_size, self.rank, self.world)
        workers = self.cfg.data.num_workers
        loader = DataLoader(
            Subset(dataset, list(indices)) if indices is not None else dataset,
            batch_size=self.per_rank, sampler=sampler, drop_last=True, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            # own generator: DataLoader draws worker seeds from it, not from the global RNG we checkpoint
            generator=torch.Generator().manual_seed(distributed.rank_seed(tc.seed + self.start)),
        )
        # every rank holds the same weights here; from now on ranks > 0 draw augmentation and dropout from
        # their own seeds (reset after every step, since only rank 0's RNG state is saved)
        if self.rank:
            torch.manual_seed(distributed.rank_seed(tc.seed + self.start))
        self._dataset = dataset
        names = batches(sampler, self.per_rank)
        if indices is not None:
            names = ([indices[i] for i in b] for b in names)
        return zip(loader, names)

    def settle(self, model: torch.nn.Module) -> None:
        """Resolve train.channels_last and train.precision = "auto" for `model` at this run's batch and crop size
        (segadapt.speed: every candidate pair timed on a copy of `model`, the fastest kept) and write the choice
        into the config, so config.toml and a resume hold it. Every rank of a torchrun takes NHWC, and fp32 on
        CPU, since they must agree and a timing each would not; train.deterministic keeps fp32 on CPU too."""
        tc = self.cfg.train
        layouts = [True, False] if tc.channels_last == "auto" else [bool(tc.channels_last)]
        precisions = precision_candidates(tc.precision, self.device)
        if tc.deterministic and tc.precision == "auto":  # a timing is not reproducible; fp32 (or the GPU rule) is
            precisions = precisions[:1]
        if self.world > 1:
            layouts, precisions = layouts[:1], precisions[:1]
        variants = [Variant(c, p) for c in layouts for p in precisions]
        if len(variants) == 1:
            picked, seconds = variants[0], {}
        else:
            picked, seconds = fastest_training(model, (self.per_rank, 3, *self.cfg.data.crop_size), self.device,
                                               variants)
        tc.channels_last, tc.precision = picked.channels_last, picked.precision
        if seconds and self.main:
            timed = ", ".join(f"{v.name} {t:.3g} s" for v, t in seconds.items())
            print(f"memory layout: {'NHWC (channels_last)' if picked.channels_last else 'NCHW'}, precision: "
                  f"{picked.precision}; a forward and backward pass took {timed}", flush=True)

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout train.channels_last names (NHWC while "auto" is not yet settled)."""
        return torch.contiguous_format if self.cfg.train.channels_last is False else torch.channels_last

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch on the run's device, in the run's memory format."""
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    # the loop around the step
    @contextlib.contextmanager
    def logging(self, fields: Sequence[str], desc: str) -> Iterator[Run]:
        """config.toml, run.json (running), the log and a progress bar, and Ctrl-C handling, for the loop's
        duration: a first Ctrl-C stops at the next step boundary with a resume point, a second stops at once
        keeping the last checkpoint."""
        if self.main:
            ckpt.write_text_atomic(self.dir / "config.toml", dumps_toml(self.cfg))
            write_info(self.dir, self.kind, "running", self.start)
            self.elapsed_before = write_log_header(self.dir / "log.csv", self.start, fields)
        self._log = RunLog(self.dir, fields, self.main, self.cfg.train.tensorboard)
        self._bar = progress.bar(total=self.cfg.train.iterations, initial=self.start, desc=desc, dynamic_ncols=True,
                         mininterval=1.0, disable=not self.main)
        self._stop = InterruptFlag()
        self._t0 = time.perf_counter()
        self._done = self.start
        try:
            yield self
        except KeyboardInterrupt:  # a second Ctrl-C, mid-step: the state is inconsistent, keep the last checkpoint
            last = ckpt.latest_checkpoint(self.dir)
            where = (f"resume from {last.stem} with segadapt {self.kind} --resume {self.dir}" if last is not None
                     else "no checkpoint had been saved yet")
            raise Interrupted(f"interrupted during step {self._done + 1}; {where}") from None
        finally:
            self._stop.restore()
            self._bar.close()
            self._log.close()

    @property
    def lr(self) -> float:
        """The first group's learning rate for the step about to run."""
        return float(self.schedule.get_last_lr()[0])

    def check_loss(self, loss: torch.Tensor, step: int, ids: Sequence[int], fix: str, what: str = "loss") -> float:
        """The loss averaged over processes; a non-finite one on any rank stops every rank at this step, in one
        line naming the batch's samples (`ids`, as `batches` yields them)."""
        value, bad_ranks = global_loss(loss)
        if bad_ranks:
            batch = describe_batch(self._dataset, ids)
            raise nonfinite_error(what, value, step, bad_ranks, batch, self.dir, fix)
        return value

    def check_grads(self, params: Sequence[torch.nn.Parameter], step: int, ids: Sequence[int], fix: str) -> None:
        """Before optimizer.step(): a non-finite gradient stops the run with the weights untouched."""
        if not grads_finite(params):
            raise nonfinite_error("gradients", "non-finite", step, [], describe_batch(self._dataset, ids), self.dir,
                                  fix)

    def elapsed(self) -> float:
        """Seconds since this process's loop started (a resumed run's log adds `elapsed_before`)."""
        return time.perf_counter() - self._t0

    def due(self, step: int) -> bool:
        """Whether `step` gets a log row: every train.log_every steps and at the last."""
        return step % self.cfg.train.log_every == 0 or step == self.cfg.train.iterations

    def log(self, row: dict[str, Any]) -> None:
        """One log row (it must hold "step"); the run's elapsed seconds, across resumes, are added."""
        assert self._log is not None, "log inside Run.logging()"
        self._log.write({**row, "elapsed_s": f"{self.elapsed_before + self.elapsed():.1f}"})

    def progress(self, **postfix: str) -> None:
        assert self._bar is not None
        self._bar.update(1)
        if postfix:
            self._bar.set_postfix(**postfix)

    def end_of_step(self, step: int) -> bool:
        """After every step: the periodic resume point, the RNG restart of ranks > 0, then the time budget
        (True: stop here) and Ctrl-C (save here, then one line saying how to continue). The stop decisions
        are all-reduced, so every rank stops at the same step."""
        tc = self.cfg.train
        assert self._stop is not None
        self._done = step
        if tc.checkpoint_every and step % tc.checkpoint_every == 0:
            self.save(step)
        if self.rank:  # from seed and step alone (only rank 0's RNG is saved): a resume at any step is exact
            torch.manual_seed(distributed.rank_seed(tc.seed + step))
        again = f"segadapt {self.kind} --resume {self.dir}"
        if tc.time_budget_s and distributed.any_rank(self.elapsed() > tc.time_budget_s):
            if self.main:
                print(f"time budget of {tc.time_budget_s:g}s reached at step {step} of {tc.iterations}; "
                      f"continue with {again}")
            return True
        if distributed.any_rank(self._stop.requested):
            self.save(step)
            raise Interrupted(f"interrupted at step {step}; checkpoint saved, continue with {again}")
        return False

    def finish(self, step: int) -> None:
        """Mark the run finished, after every other file (rank 0), release the directory, wait for all ranks."""
        if self.main:
            write_info(self.dir, self.kind, "finished", step)
            unlock(self.dir)
        distributed.barrier()  # when the loop returns, its files exist for every rank
