"""A run directory and every output folder a command writes: who holds it, what it records, what a resume keeps.

The rules (the loop that fills a run directory is run.py's `Run`):
- One registry of the folders this process writes (`_HELD`): each may be locked (its one writer) and may be
  noted for clean-up, so a command that fails removes what it added there and a finished one releases them.
- `.lock` holds the pid of the process writing the directory: a second writer is refused in one line; a
  lock whose process is gone (`pid_alive`, the one pid check) is taken over.
- run.json records the run's kind ("train", "adapt" or "peer") and state; `state = "finished"` is written after
  every other file, so a run that failed while writing its results is resumable, not "already finished".
- A directory holds a run once it has a resume point or a finished marker; one left by a start that failed
  before its first checkpoint (disk full, bad data) can be run again.
- `resumed_config`: what a resumed run may change (how long and where it runs, `RESUMABLE`), never what it
  learns with (the checkpoint's optimizer and RNG state would silently overrule a new lr or seed).

Under torchrun only rank 0 writes, locks and cleans up.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segadapt import checkpoint as ckpt
from segadapt import distributed
from segadapt.config import RunConfig, load_toml, to_dict
from segadapt.errors import SegadaptError
from segadapt.paths import check_path
from segadapt.runtime import new_run_dir
from segadapt.version import __version__

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
KINDS = ("train", "adapt", "peer")
# what a resumed run may change: how long and where it runs, and how it reports, not what it learns
RESUMABLE = {"name", "out_dir", "data.root", "data.num_workers", "train.iterations", "train.time_budget_s",
             "train.checkpoint_every", "train.log_every", "train.eval_every", "train.device", "train.threads",
             "train.tensorboard"}


# --- the one registry: folders this process writes ------------------------------------------------------

@dataclass
class _Held:
    """A folder this process writes: its lock (claims nest, counted) and, when noted for clean-up, what a failed
    command would remove (its entries before the command, or all of it when the command made it)."""

    path: Path
    locks: int = 0
    cleanup: bool = False
    before: frozenset[str] | None = None  # None: the command made the folder
    made: tuple[Path, ...] = ()  # ancestors the command created, innermost first


_HELD: dict[Path, _Held] = {}  # keyed by the resolved path; in the order first held


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (someone else's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _entry(path: Path) -> _Held:
    return _HELD.setdefault(path.resolve(), _Held(path))


def _drop_if_idle(key: Path) -> None:
    held = _HELD.get(key)
    if held is not None and not held.locks and not held.cleanup:
        del _HELD[key]


def lock(run_dir: Path) -> Path:
    """Make this process the one writer of `run_dir` (created if needed), or refuse in one line.

    The lock is a `.lock` file holding the pid, made with O_EXCL so two processes starting together cannot
    both win. Nested locks by one process are counted; `unlock` undoes one, process exit all of them.
    """
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun rank 0 alone writes, and locks, the directory
        return run_dir
    held = _entry(run_dir)
    if held.locks:
        held.locks += 1
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_file = run_dir / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock_file.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                _drop_if_idle(run_dir.resolve())
                raise SegadaptError(f"{run_dir}: in use by another segadapt process (pid {pid}); wait for it to "
                                    f"finish or choose another --out") from None
            lock_file.unlink(missing_ok=True)  # left by a process that is gone: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        held.locks = 1
        return run_dir
    _drop_if_idle(run_dir.resolve())
    raise SegadaptError(f"{run_dir}: could not claim {LOCK_FILE}; another process keeps taking it")


def unlock(run_dir: Path) -> None:
    """Undo one `lock`; the last one removes the lock file."""
    key = run_dir.resolve()
    held = _HELD.get(key)
    if held is None or not held.locks:
        return
    held.locks -= 1
    if not held.locks:
        with contextlib.suppress(OSError):
            (held.path / LOCK_FILE).unlink()
        _drop_if_idle(key)


@atexit.register
def unlock_all() -> None:
    """Unlock every directory this process has locked (a command's end, or the process's exit)."""
    for key, held in list(_HELD.items()):
        if held.locks:
            held.locks = 1
            unlock(key)


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, innermost first."""
    return [p for p in (path, *path.parents) if not p.exists()]


def _note(path: Path, before: frozenset[str] | None, made: list[Path]) -> None:
    held = _entry(path)
    if not held.cleanup:  # noted twice: the first note saw the folder as it was before the command
        held.cleanup, held.before, held.made = True, before, tuple(made)


def claim(path: Path, *, lock_it: bool = False) -> Path:
    """Note an output folder before the command writes into it, so a failure removes what the command added;
    `lock_it`: also make this process its one writer (`lock`), refused in one line while another holds it."""
    before = frozenset(c.name for c in path.iterdir()) if path.is_dir() else None
    made = _missing_dirs(path)[1:]
    if lock_it:
        lock(path)
    _note(path, before, made)
    return path


def created(out_dir: str, name: str) -> Path:
    """A fresh run directory <out_dir>/<name>-<time>, noted as made by this command, and locked."""
    missing = _missing_dirs(check_path(out_dir, "out_dir"))
    path = new_run_dir(out_dir, name)
    lock(path)
    _note(path, None, missing)
    return path


def output_dir(out: str | None, out_dir: str, name: str) -> Path:
    """--out when given (claimed and locked), else a fresh directory under out_dir."""
    return claim(check_path(out, "--out"), lock_it=True) if out else created(out_dir, name)


def _holds_weights(path: Path) -> bool:
    """A model or resume checkpoint (any .safetensors) is worth keeping even from a failed run."""
    if path.is_file():
        return path.suffix == ".safetensors"
    return path.is_dir() and next(path.rglob("*.safetensors"), None) is not None


def _forget_cleanup(keys: list[Path]) -> None:
    for key in keys:
        _HELD[key].cleanup = False
        _drop_if_idle(key)


def discard_partial_outputs() -> None:
    """Remove what a failed command added to its output folders, unless it saved weights there.

    A folder that existed before keeps its old entries; resumed runs are never noted, and a run that saved a
    checkpoint (e.g. interrupted, or a loss that blew up after some steps) keeps everything.
    """
    noted = [key for key, held in _HELD.items() if held.cleanup]
    if not distributed.is_main():
        _forget_cleanup(noted)
        return
    for key in reversed(noted):  # the last noted first: a folder inside an earlier one goes before it
        held = _HELD[key]
        path = held.path
        _forget_cleanup([key])
        if not path.is_dir() or path.is_symlink():
            continue
        added = [path] if held.before is None else [c for c in path.iterdir() if c.name not in held.before]
        if any(_holds_weights(p) for p in added):
            continue
        for p in added:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        for d in held.made:  # empty parents that the command created, innermost first
            try:
                d.rmdir()
            except OSError:
                break


def keep_outputs(path: Path) -> None:
    """`path` now holds finished results, each written atomically (a long job's first finished image): a
    later failure leaves them, and the command's lock, in place until the command ends."""
    if path.resolve() in _HELD:
        _forget_cleanup([path.resolve()])


def forget_outputs() -> None:
    """The command succeeded: nothing to clean up, and its folders are unlocked."""
    _forget_cleanup([key for key, held in _HELD.items() if held.cleanup])
    unlock_all()


# --- what the directory records ---------------------------------------------------------------------

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


def write_info(run_dir: Path, kind: str, state: str, step: int) -> None:
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


