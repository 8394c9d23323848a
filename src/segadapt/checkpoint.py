"""Checkpoints as safetensors with JSON metadata; atomic writes; nothing is ever unpickled.

Two kinds of file:
- a *model* file (``model.safetensors``): weights plus metadata (arch, width, classes, config, step),
  the thing users pass to ``evaluate`` or ``adapt``; a readable ``model.json`` sidecar is written beside it.
- a *training state* file (``checkpoints/step_XXXXXXX.safetensors``): weights, optimizer tensors, RNG
  state and a loop's extra tensors (adapt: the selected weights; its probes and H1's fingerprint go in the
  metadata) in one file, so that one atomic rename makes a consistent resume point.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from segadapt.errors import CheckpointError, SegadaptError

META_KEY = "segadapt"
MODEL_FILE = "model.safetensors"


_UMASK = os.umask(0)
os.umask(_UMASK)


def no_space(path: Path, needed: int | None = None) -> SegadaptError:
    """One line for a full disk: the path, what the file needs and what is free, and how to go on."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free there"
    except OSError:
        free = "free space unknown"
    need = f"needs about {needed / 1e6:.1f} MB, " if needed else ""
    return SegadaptError(f"{path}: no space left on device ({need}{free}); free some space or write elsewhere, "
                         f"then run the command again (a run with a checkpoint continues with --resume)")


@contextmanager
def atomic_path(path: Path, durable: bool = False, size: int | None = None) -> Iterator[Path]:
    """Yield a temp path in the same directory; rename it onto `path` only if the block succeeds.

    `durable`: flush the data to disk before the rename, so that after a power loss the name never points
    at an empty file (checkpoints: the older ones are pruned as soon as a new one is written). A full disk
    is one line naming `path` (and `size`, the bytes being written, when the caller knows it)."""
    path = Path(os.path.normpath(path))  # making the parents of `a/../../b` must not make `a`
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(path, size) from None
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files, and so does a writer that replaces ours with its own temp file
        # (safetensors' save_file does): set the mode last, so results are as readable as any other file
        os.chmod(tmp, 0o666 & ~_UMASK)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise no_space(path, size) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    data = text.encode()
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with atomic_path(path, durable=True, size=size) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
        except SafetensorError as e:  # safetensors reports a full disk as its own error, not an OSError
            if "os error 28" in str(e) or "No space left" in str(e):
                raise no_space(path, size) from None
            raise CheckpointError(f"{path}: could not write the weights ({e})") from None


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass a run directory or a .safetensors file")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); re-export the weights") from None
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        meta = None
    if not isinstance(meta, dict):  # someone else's safetensors, or edited metadata: never guess
        raise CheckpointError(f"{path}: its {META_KEY!r} metadata is not a JSON object; re-export the model")
    return tensors, meta


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a segadapt safetensors file, without reading its tensors ({} if it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
        meta = json.loads(raw) if raw else {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); re-export the weights") from None
    return meta if isinstance(meta, dict) else {}


# --- model files ------------------------------------------------------------------------------------

def save_model(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Weights + metadata in one safetensors file, and a human-readable JSON sidecar."""
    _save(path, model.state_dict(), meta)
    write_json_atomic(path.with_suffix(".json"), meta)


def resolve_model_path(path: str | Path) -> Path:
    """Accept a run directory (uses its model.safetensors) or a file."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise CheckpointError(f"{path}: no model found; pass a run directory holding {MODEL_FILE}, or the file")
    return p


def load_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    p = resolve_model_path(path)
    tensors, meta = _load(p)
    if "arch" not in meta:
        raise CheckpointError(f"{p}: safetensors file has no segadapt metadata; it was not written by segadapt")
    if "optimizer" in meta:
        command = "adapt" if "h1_sha256" in meta else "train"
        raise CheckpointError(f"{p}: a resume point, not a model; pass the run directory (or its {MODEL_FILE}), "
                              f"or continue the run with segadapt {command} --resume")
    return tensors, meta


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path | str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "check that --arch, --width and model.num_classes match the checkpoint"
        )
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{source}: {k} has shape {tuple(v.shape)} but the model expects {tuple(own[k].shape)}; "
                "check that --width and model.num_classes match the checkpoint"
            )
    check_finite({k: tensors[k] for k in own}, source)
    model.load_state_dict(tensors)


def check_finite(tensors: dict[str, torch.Tensor], source: Path | str) -> None:
    """Refuse weights holding NaN or inf: such a model predicts one class everywhere, and would otherwise be
    scored, adapted or resumed as if it were a model. Names the first bad tensor, in the order given."""
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{source}: {k} holds NaN or inf values; the run that saved these weights "
                                  "diverged: use an earlier checkpoint or train again")


# --- training state ---------------------------------------------------------------------------------

def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            key = f"optim.{idx}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    items = [(k, v) for k, v in tensors.items() if k.startswith("optim.")]
    items += list(info["scalars"].items())
    for key, value in items:
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    meta: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Everything needed to continue exactly: weights, optimizer slots, step, and RNG state; `extra` holds
    tensors a loop keeps besides (adapt: the weights label-free selection has picked so far)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    opt_tensors, opt_info = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    _save(path, tensors, {**meta, "step": step, "optimizer": opt_info})


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG in place; returns the metadata (with ``step``)."""
    tensors, meta = _load(path)
    if "optimizer" not in meta:
        raise CheckpointError(f"{path}: not a segadapt training-state file; resume reads checkpoints/step_*")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_weights(model, weights, path)
    try:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not match this run ({e}); start a fresh run") from None
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return meta


def read_extra(path: Path) -> dict[str, torch.Tensor]:
    """The `extra` tensors saved with a training state."""
    tensors, _ = _load(path)
    return {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:07d}.safetensors"


def step_of(path: Path) -> int:
    """The step a resume point was saved at, from its name (checkpoints/step_0001200.safetensors: 1200)."""
    return int(path.stem[len("step_"):])


def _checkpoints(run_dir: Path) -> list[Path]:
    """Resume points, oldest first, ordered by step number (names outgrow their zero padding past 10^7)."""
    files = [f for f in (run_dir / "checkpoints").glob("step_*.safetensors") if f.stem[len("step_"):].isdigit()]
    return sorted(files, key=step_of)


def latest_checkpoint(run_dir: Path) -> Path | None:
    files = _checkpoints(run_dir)
    return files[-1] if files else None


def prune_checkpoints(run_dir: Path, keep: int = 2) -> None:
    """Keep the newest `keep` resume points; older ones only cost disk."""
    files = _checkpoints(run_dir)
    for f in files[:-keep]:
        f.unlink(missing_ok=True)
