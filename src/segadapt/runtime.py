"""Device, threads, seeding and run directories: the small amount of set-up every job shares."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segadapt import distributed
from segadapt.errors import ConfigError


def select_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N; under torchrun a bare "cuda" (or auto) means this process's own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = torch.device("meta")  # refused just below
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index is not None):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if device.type == "cuda" and device.index is None and distributed.env_world_size() > 1:
        device = torch.device("cuda", distributed.local_rank() % torch.cuda.device_count())
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a module's weights are (CPU for one without parameters): a library call's default device."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def check_workers(n: int, what: str = "data.num_workers") -> None:
    """Refuse more worker processes than the machine can use: hundreds of them on a few cores only fight
    over the cores (and memory) and looked like a hang."""
    cores = os.cpu_count() or 1
    if n > 4 * cores:
        raise ConfigError(f"{what}={n}: this machine has {cores} CPU core(s); more than {4 * cores} worker processes "
                          f"only compete for them. Use at most {4 * cores} (0: work in the main process)")


def memory_bytes() -> int:
    """Physical memory of this machine (0 if the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_batch(batch: int, crop: tuple[int, int] | list[int], images_per_sample: int = 1) -> None:
    """Refuse a batch whose input tensors alone exceed this machine's memory (the network's activations need
    many times more, so this only catches sizes that cannot work at all, before a MemoryError)."""
    need = batch * images_per_sample * 3 * int(crop[0]) * int(crop[1]) * 4
    total = memory_bytes()
    if total and need > total:
        raise ConfigError(f"train.batch_size={batch}: its {crop[0]}x{crop[1]} input images alone take "
                          f"{need / 2**30:.1f} GiB, more than this machine's {total / 2**30:.1f} GiB; use a smaller "
                          f"batch (or data.crop_size)")


# CPU features that compute bf16 natively: x86's AVX-512 BF16 and AMX (torch.cpu's names and Linux's
# /proc/cpuinfo flags), Arm's BF16 extension (/proc/cpuinfo "Features": bf16)
BF16_FEATURES = ("amx_bf16", "avx512_bf16", "bf16")


def cpu_features() -> set[str]:
    """This CPU's feature names, lower case: those torch.cpu reports present, and Linux's /proc/cpuinfo flags
    (x86 "flags", Arm "Features"); empty where neither says (then no feature is assumed)."""
    found: set[str] = set()
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        with contextlib.suppress(RuntimeError, AttributeError):
            found |= {str(k).lower() for k, v in capabilities().items() if v is True}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    found |= set(value.lower().split())
    except OSError:
        pass
    return found


def cpu_native_bf16() -> str | None:
    """The feature by which this CPU computes bf16 natively (amx_bf16, avx512_bf16, or Arm's bf16), or None.
    Without one, bf16 matmuls are emulated and reported up to ~250x slower than fp32, so "auto" never tries
    them there."""
    features = cpu_features()
    return next((f for f in BF16_FEATURES if f in features), None)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The mixed-precision dtype on `device` for train.precision `precision`, or None to stay in float32.

    "bf16" and "fp32" are taken as given. "auto": bfloat16 on CUDA GPUs with native bf16 (Ampere and newer;
    it has float32's range, so no gradient scaler is needed, and tensor cores speed up the convolutions),
    float32 everywhere else. On CPU "auto" is settled before a run by timing (segadapt.speed): bf16 only where
    the CPU computes it natively and a step on the run's own model and batch is faster in it.
    """
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else None
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:  # torch >= 2.3: do not count slow emulated bf16 on older GPUs as support
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else None


_load_checked = False
SAMPLE_S = 0.2  # how long the CPU use of other processes is watched before a job starts


def others_busy(cpus: set[int], seconds: float = SAMPLE_S) -> float | None:
    """How many of `cpus` other processes keep busy (0..len(cpus)), watched for `seconds`; None where the
    kernel does not say (/proc/stat is Linux's). This process's own threads are left out, so a sweep's
    earlier runs or a test suite never read as someone else's load, as the load average would."""
    def busy() -> float:
        ticks = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
                    ticks += user + nice + system + irq + softirq + steal
        return ticks / os.sysconf("SC_CLK_TCK")

    try:
        start, own, wall = busy(), sum(os.times()[:2]), time.perf_counter()
        time.sleep(seconds)
        others = busy() - start - (sum(os.times()[:2]) - own)
    except (OSError, ValueError):
        return None
    return max(0.0, others / (time.perf_counter() - wall))


def warn_if_busy() -> None:
    """Say once per process when other processes keep so many cores busy that torch's threads cannot each have
    one: every thread then waits for the slowest at each operation, so a shared machine runs several times
    slower (the demo: 7.5 min on 2 shared cores, 1 min 10 s idle) with no sign why."""
    global _load_checked
    if _load_checked or not hasattr(os, "sched_getaffinity"):
        return
    _load_checked = True
    cpus = os.sched_getaffinity(0)
    others, threads = others_busy(cpus), torch.get_num_threads()
    if others is not None and others >= 0.5 and others + threads > len(cpus) + 0.5:
        free = max(1, round(len(cpus) - others))
        print(f"segadapt: note: other processes keep {others:.1f} of this process's {len(cpus)} core(s) busy, so "
              f"torch's {threads} thread(s) wait on them and this runs slower; wait for them, or give "
              f"--threads {free}", file=sys.stderr)


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
    """runs/<name>-YYYYmmdd-HHMMSS, with a numeric suffix if two runs start in the same second.

    Under torchrun rank 0 picks and creates the directory and tells the others, so that N processes make
    one run directory rather than N with suffixes.
    """
    distributed.init()
    path = Path(out_dir)  # ranks > 0 receive rank 0's choice below
    if distributed.is_main():
        base = Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = base, 1
        while path.exists():
            path = base.with_name(f"{base.name}-{n}")
            n += 1
        path.mkdir(parents=True)
    return Path(distributed.broadcast_str(str(path)))


def environment() -> dict[str, str | int]:
    """Recorded with results so figures can be compared across machines."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
    }


class InterruptFlag:
    """Turns the first Ctrl-C into a request the training loop honours at the next step boundary, so the
    resume point it saves is the state a periodic checkpoint would hold there (an interrupt mid-step would
    save updated weights under the old step count, or an RNG already advanced by the next batch).
    A second Ctrl-C raises KeyboardInterrupt at once. Call `restore()` when the loop ends."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
