"""One training or adaptation run in its directory: what both loops need around their step, written once.

`train()` and `adapt()` each open a `Run` and keep their own step in view. The Run does the rest:
set-up (seed, threads, device, process group), the run directory (claimed by this process, fresh or resumed,
config.toml, run.json), the sharded loader, the log (log.csv, optional TensorBoard), resume points (saved
only after the finiteness check), the progress bar, Ctrl-C and the time budget, and the finished marker.

The run directory's own rules live here too, so the CLI only reads a saved config, applies flags and asks:
- run.json records the run's kind ("train", "adapt" or "peer") and state; `state = "finished"` is written after
  every other file, so a run that failed while writing its results is resumable, not "already finished".
- A directory holds a run once it has a resume point or a finished marker; one left by a start that failed
  before its first checkpoint (disk full, bad data) can be run again.
- `.lock` holds the pid of the process writing the directory: a second writer is refused in one line; a
  lock whose process is gone is taken over.
- `resumed_config`: what a resumed run may change (how long and where it runs, `RESUMABLE`), never what it
  learns with (the checkpoint's optimizer and RNG state would silently overrule a new lr or seed).

Under torchrun only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from segadapt import __version__, distributed, progress
from segadapt import checkpoint as ckpt
from segadapt.config import RunConfig, dumps_toml, load_toml, to_dict
from segadapt.data.sampler import EpochSampler, batches
from segadapt.errors import CheckpointError, ConfigError, Interrupted, SegadaptError
from segadapt.guards import describe_batch, global_loss, grads_finite, nonfinite_error, refuse_nonfinite
from segadapt.runtime import (
    InterruptFlag,
    check_batch,
    check_workers,
    select_device,
    setup,
    warn_if_busy,
)
from segadapt.speed import Variant, fastest_training, precision_candidates

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
KINDS = ("train", "adapt", "peer")
# what a resumed run may change: how long and where it runs, and how it reports, not what it learns
RESUMABLE = {"name", "out_dir", "data.root", "data.num_workers", "train.iterations", "train.time_budget_s",
             "train.checkpoint_every", "train.log_every", "train.eval_every", "train.device", "train.threads",
             "train.tensorboard"}


# --- the directory: claim, kind, state ------------------------------------------------------------------

_HELD: dict[Path, int] = {}  # run directories this process has claimed, with a count (claims nest)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def claim(run_dir: Path) -> Path:
    """Make this process the one writer of `run_dir` (created if needed), or refuse in one line.

    The claim is a `.lock` file holding the pid, made with O_EXCL so two processes starting together cannot
    both win. Nested claims by one process are counted; `release` undoes one, process exit all of them.
    """
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun rank 0 alone writes, and claims, the directory
        return run_dir
    key = run_dir.resolve()
    if key in _HELD:
        _HELD[key] += 1
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise SegadaptError(f"{run_dir}: in use by another segadapt process (pid {pid}); wait for it to "
                                    f"finish or choose another --out") from None
            lock.unlink(missing_ok=True)  # left by a process that is gone: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        _HELD[key] = 1
        return run_dir
    raise SegadaptError(f"{run_dir}: could not claim {LOCK_FILE}; another process keeps taking it")


def release(run_dir: Path) -> None:
    """Undo one `claim`; the last one removes the lock file."""
    key = run_dir.resolve()
    if key not in _HELD:
        return
    _HELD[key] -= 1
    if _HELD[key] <= 0:
        del _HELD[key]
        with contextlib.suppress(OSError):
            (run_dir / LOCK_FILE).unlink()


@atexit.register
def release_all() -> None:
    """Release every directory this process has claimed (a command's end, or the process's exit)."""
    for key in list(_HELD):
        _HELD[key] = 1
        release(key)


def read_info(run_dir: Path) -> dict[str, Any]:
    """run.json, or {} for a directory without one (not a run yet, or made before segadapt wrote it)."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SegadaptError(f"{path}: unreadable ({e}); the run's marker is damaged, start a new run") from None
    return info if isinstance(info, dict) else {}


def _write_info(run_dir: Path, kind: str, state: str, step: int) -> None:
    ckpt.write_json_atomic(run_dir / RUN_FILE, {"kind": kind, "state": state, "step": step, "segadapt": __version__})


def run_kind(run_dir: Path) -> str:
    """"train", "adapt" or "peer" from run.json; runs made before run.json tell by their checkpoint's metadata (an
    adaptation's resume point records H1's fingerprint). "" when neither says."""
    kind = read_info(run_dir).get("kind", "")
    if kind in KINDS:
        return kind
    last = ckpt.latest_checkpoint(run_dir)
    if last is None:
        return ""
    return "adapt" if "h1_sha256" in ckpt.read_meta(last) else "train"


def finished_step(run_dir: Path) -> int | None:
    """The step a run finished at, or None while it is unfinished (run.json's state is written last)."""
    info = read_info(run_dir)
    if info:
        return int(info.get("step", 0)) if info.get("state") == "finished" else None
    # made before run.json: finished when its model file is there
    last = ckpt.latest_checkpoint(run_dir)
    return ckpt.step_of(last) if last is not None and (run_dir / ckpt.MODEL_FILE).is_file() else None


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` has something worth keeping: a resume point or a finished run."""
    return ckpt.latest_checkpoint(run_dir) is not None or finished_step(run_dir) is not None


def refuse_overwrite(run_dir: Path) -> None:
    if holds_run(run_dir):
        raise SegadaptError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")


# --- resume rules -----------------------------------------------------------------------------------

def resumed_config(run_dir: Path, kind: str, apply: Callable[[RunConfig], RunConfig]) -> RunConfig | None:
    """The config `segadapt <kind> --resume RUN` continues with: the saved one with `apply` (the command's
    flags) on top; None when the run has already finished at that length."""
    if not (run_dir / "config.toml").is_file():
        raise SegadaptError(f"{run_dir}: not a run directory (no config.toml); pass the run folder to resume")
    found = run_kind(run_dir)
    if found and found != kind:
        what = {"adapt": "an adaptation", "peer": "a label-free peer's"}.get(found, "a training")
        raise SegadaptError(f"{run_dir}: {what} run; continue it with segadapt {found} --resume {run_dir}")
    saved = load_toml(run_dir / "config.toml")
    cfg = apply(saved)
    refuse_changes(run_dir, saved, cfg)
    last = ckpt.latest_checkpoint(run_dir)
    step = ckpt.step_of(last) if last is not None else 0
    if step > cfg.train.iterations:
        raise SegadaptError(f"{run_dir}: already at step {step}; --iterations {cfg.train.iterations} would "
                            f"go back. Give more iterations to extend it")
    if step == cfg.train.iterations and finished_step(run_dir) == step:
        print(f"{run_dir}: already finished at step {step}; pass --iterations N (> {step}) to extend it")
        return None
    return cfg


def refuse_changes(run_dir: Path, saved: RunConfig, cfg: RunConfig) -> None:
    """A resumed run keeps what it learns with; only the RESUMABLE keys may differ from config.toml."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(to_dict(saved)), flat(to_dict(cfg))
    # keys of either side: a term dropped from a table (adapt.objective) is a change too
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in {**old, **new}
               if old.get(k) != new.get(k) and k not in RESUMABLE]
    if changed:
        raise SegadaptError(f"{run_dir}/config.toml: a resumed run keeps what it learns with; these differ: "
                            f"{'; '.join(changed)}. Start a new run (--out) to change them")


# --- small pieces both loops use ----------------------------------------------------------------------

def rank_batch_size(batch_size: int, world: int) -> int:
    """Per-process batch: train.batch_size is the global batch, split evenly over the processes."""
    if batch_size % world:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch and must split evenly over {world} processes; "
            f"use a multiple of {world} or another --nproc_per_node"
        )
    return batch_size // world


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    return base_lr * (1.0 - step / total) ** power


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
                ... the step ...
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
            claim(run_dir)
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
        load the newest one into `model` and `optimizer` (RNG too) and return its metadata, else {}."""
        self._held = (model, optimizer, meta, extra)
        if self.last is None:
            return {}
        state = ckpt.load_training_state(self.last, model, optimizer)
        if self.main:
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
            _write_info(self.dir, self.kind, "running", self.start)
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

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """The poly schedule at `step` for every group (from its base_lr); returns the first group's lr."""
        tc = self.cfg.train
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(group["base_lr"], step, tc.iterations, tc.poly_power)
        return float(optimizer.param_groups[0]["lr"])

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
            _write_info(self.dir, self.kind, "finished", step)
            release(self.dir)
        distributed.barrier()  # when the loop returns, its files exist for every rank
