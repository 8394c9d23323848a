"""Write a shifted copy D2 of a dataset split: same file stems and layout, D1's labels copied unchanged.

Every file is written under a temporary name and renamed, so an interrupted run leaves no half-written
image; files already present are skipped, so re-running resumes. A `.segadapt-shift-<split>.json` marker
records the parameters before the first image (and `complete` at the end), so a re-run with other
parameters is refused even after an interrupted run; an image and its label are each checked on resume.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from segadapt.checkpoint import atomic_path, write_json_atomic
from segadapt.data.base import SegmentationSource
from segadapt.data.pairs import stem_seed
from segadapt.errors import ConfigError, DataError, SegadaptError


def _targets(source: SegmentationSource, root: Path | None, out: Path, split: str, i: int) -> tuple[Path, Path]:
    """Output image and label paths: the source's own relative layout, or <split>/images|labels for synthetic."""
    ip, mp = source.image_path(i), source.mask_path(i)
    if ip is None or mp is None or root is None:
        stem = source.stem(i)
        return out / split / "images" / f"{stem}.png", out / split / "labels" / f"{stem}.png"
    return out / ip.relative_to(root), out / mp.relative_to(root)


def _write_image(path: Path, image: np.ndarray) -> None:
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image[..., ::-1]), params)
    if not ok:
        raise SegadaptError(f"{path}: could not encode the shifted image")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _one(job: tuple[SegmentationSource, Path | None, Path, str, int, str, float, int, str]) -> None:
    source, root, out, split, i, name, severity, seed, backend = job
    from segadapt.shifts import apply_filter

    img_out, mask_out = _targets(source, root, out, split, i)
    if img_out.exists() and mask_out.exists():
        return
    image, mask = source.load(i)  # also validates the pair
    if not img_out.exists():
        shifted = apply_filter(name, image, severity=severity, seed=stem_seed(source.stem(i), seed), backend=backend)
        _write_image(img_out, shifted)
    if not mask_out.exists():  # checked on its own: a run can stop between the image and its label
        mp = source.mask_path(i)
        with atomic_path(mask_out) as tmp:
            if mp is not None:
                shutil.copyfile(mp, tmp)
            else:  # generated data (synthetic): store the labels as an index PNG
                tmp.write_bytes(cv2.imencode(".png", mask.astype(np.uint8))[1].tobytes())


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _signal_on_parent_death() -> None:
    """Linux: ask the kernel to SIGKILL this process when its parent dies; a no-op where prctl is missing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # the watchdog thread still covers this worker
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _watch_parent(ppid: int, interval: float = 1.0) -> None:
    """Portable fallback: exit once this process has been handed to another parent (its own one died)."""
    while os.getppid() == ppid:
        time.sleep(interval)
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Pool initializer. A SIGKILLed `segadapt shift` cannot stop its pool, and workers blocked on the task
    queue would live on as orphans holding a filter's memory: each worker ends itself when its parent dies."""
    _signal_on_parent_death()
    ppid = os.getppid()
    if ppid != parent and not _pid_exists(parent):  # it died before the prctl above could take effect
        os._exit(1)
    # the process that started us (the parent, or a fork server that exits with it) is the one to watch
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True, name="segadapt-watch-parent").start()


def marker_path(out: Path, split: str) -> Path:
    return out / f".segadapt-shift-{split}.json"


def recorded_params(out: Path, split: str) -> dict[str, Any] | None:
    """The parameters a `segadapt shift` run recorded for `split` under `out`; None when it recorded none."""
    marker = marker_path(out, split)
    if not marker.exists():
        return None
    try:
        return dict(json.loads(marker.read_text())["params"])
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{marker}: unreadable marker; delete {out} (or the marker) and run again") from None


def write_shifted(
    source: SegmentationSource,
    root: Path | None,
    out: Path,
    split: str,
    name: str,
    severity: float,
    seed: int = 0,
    backend: str = "native",
    workers: int = 0,
) -> dict[str, Any]:
    from segadapt.shifts import BACKENDS, severity_params

    severity_params(name, severity, seed)  # filter and severity (nan, inf) refused before anything is written
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    params = {"filter": name, "severity": severity, "seed": seed, "backend": backend, "split": split}
    marker = marker_path(out, split)
    held = recorded_params(out, split)
    if held is not None:
        if held != params:
            raise DataError(f"{marker}: {out} already holds D2 (complete or partly written) made with other "
                            f"parameters {held}; choose another --out")
    else:
        if root is not None and out.resolve() == root.resolve():
            raise DataError(f"{out}: is the dataset itself (D1); write D2 to another --out")
        taken = next((img for i in range(len(source)) if (img := _targets(source, root, out, split, i)[0]).exists()),
                     None)
        if taken is not None:  # existing files would be kept as if this run had written them
            raise DataError(f"{taken}: already exists in {out}, which holds no segadapt shift of {split}; "
                            f"choose an empty --out")
        # written before any image, so a run stopped half-way is still known by its parameters
        write_json_atomic(marker, {"params": params, "complete": False})
    jobs = [(source, root, out, split, i, name, severity, seed, backend) for i in range(len(source))]
    workers = workers or os.cpu_count() or 1
    desc = f"shift {split} ({name})"
    if workers == 1:
        for job in tqdm(jobs, desc=desc, dynamic_ncols=True):
            _one(job)
    else:
        with ProcessPoolExecutor(workers, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            for _ in tqdm(pool.map(_one, jobs, chunksize=4), total=len(jobs), desc=desc, dynamic_ncols=True):
                pass
    if root is not None and (root / "ImageSets").is_dir():  # VOC split lists travel with the images
        shutil.copytree(root / "ImageSets", out / "ImageSets", dirs_exist_ok=True)
    write_json_atomic(marker, {"params": params, "images": len(jobs), "complete": True})
    return {"images": len(jobs), "out": str(out), **params}
