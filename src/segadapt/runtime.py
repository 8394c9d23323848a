"""Device, threads, seeding and run directories: the small amount of set-up every job shares."""

from __future__ import annotations

import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from segadapt.errors import ConfigError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def setup(seed: int, threads: int = 0, deterministic: bool = False) -> None:
    """Seed every RNG the pipeline touches (augmentation draws from torch's global RNG)."""
    if threads > 0:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """runs/<name>-YYYYmmdd-HHMMSS, with a numeric suffix if two runs start in the same second."""
    base = Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    path.mkdir(parents=True)
    return path


def environment() -> dict[str, str | int]:
    """Recorded with results so figures can be compared across machines."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
    }
