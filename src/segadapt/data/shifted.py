"""Write a shifted copy D2 of a dataset split: same file stems and layout, D1's labels copied unchanged.

A filter that moves the image rigidly (misalign, alone or last in a composition such as photocopy+misalign)
writes D1's labels moved the same way instead (nearest neighbour, the ignore index where nothing maps), and
the marker records each image's ground-truth transform (3x3, X1 pixel coordinates -> X2's) under
"transforms"; `recorded_transforms` reads them back.

Every file is written under a temporary name and renamed, so an interrupted run leaves no half-written
image; files already present are skipped, so re-running resumes, once checked whole (an image ends as its
format should and decodes at its source's size; a copied label equals its original): broken ones are
rewritten. A `.segadapt-shift-<split>.json` marker records the parameters before the first image (and
`complete` at the end), so a re-run with other parameters is refused even after an interrupted run. The
parameters include the units of the severity's lengths and the base size they refer to; the finished marker adds
the length factor (stored pixels per network pixel) each image was filtered at.
"""

from __future__ import annotations

import contextlib
import ctypes
import filecmp
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

from segadapt import ranks
from segadapt.checkpoint import atomic_path, write_json_atomic
from segadapt.data.base import SegmentationSource, decode_image, image_header, read_file_bytes, read_mask
from segadapt.data.pairs import stem_seed
from segadapt.errors import DataError, SegadaptError
from segadapt.progress import bar as progress_bar
from segadapt.run_dir import pid_alive
from segadapt.shifts import apply_filter
from segadapt.shifts.compose import check, geometry, moves_labels, warp_labels
from segadapt.shifts.filters import check_backend
from segadapt.shifts.units import check_units, length_scale, network_base


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


# how the files this module writes end (cv2.imencode's JPEG and PNG): a file cut short lacks it
_END_MARKERS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND\xaeB`\x82"}


def _source_size(source: SegmentationSource, i: int) -> tuple[int, int]:
    """(height, width) of image i as read, from its header where it has a file (EXIF turns swap the sides)."""
    path = source.image_path(i)
    header = image_header(read_file_bytes(path)) if path is not None else None
    if header is None:
        return source.load_image(i).shape[:2]
    w, h = header.size
    return (w, h) if header.orientation in (5, 6, 7, 8) else (h, w)


def _image_intact(path: Path, size: tuple[int, int]) -> bool:
    """Whether a shifted image already written is whole: its format's end marker, it decodes, it has `size`."""
    try:
        data = read_file_bytes(path)
        end = _END_MARKERS.get(path.suffix.lower(), b"")
        return data[len(data) - len(end):].tobytes() == end and decode_image(data, path).shape[:2] == size
    except DataError:
        return False


def _mask_intact(path: Path, original: Path | None, size: tuple[int, int]) -> bool:
    """A copied label must equal its original byte for byte; a generated one must decode at the image's size."""
    if original is not None:  # a missing original: rewrite, and the source's read names the problem
        return original.is_file() and filecmp.cmp(original, path, shallow=False)
    try:
        return read_mask(path).shape == size
    except DataError:
        return False


def _labels_for(source: SegmentationSource, i: int, name: str, severity: float, seed: int) -> np.ndarray:
    """D1's labels of image i moved as the filter moves the image (geometric filters only)."""
    _, mask = source.load(i)
    return warp_labels(name, mask, severity, stem_seed(source.stem(i), seed), source.info.ignore_index)


def _encode_labels(path: Path, mask: np.ndarray) -> bytes:
    dtype = np.uint8 if mask.max(initial=0) < 256 else np.uint16
    ok, buf = cv2.imencode(path.suffix.lower() or ".png", mask.astype(dtype))
    if not ok:
        raise SegadaptError(f"{path}: could not encode the moved labels")
    return buf.tobytes()


Job = tuple[SegmentationSource, Path | None, Path, str, int, str, float, int, str, int]


def _one(job: Job) -> tuple[bool, list[list[float]] | None]:
    """Shift image i and copy (or move) its label, keeping outputs already whole; returns whether one present
    was broken, and the image's ground-truth transform when the filter moves it rigidly. `base_size` > 0: the
    severity's lengths are network pixels (shifts/units.py)."""
    source, root, out, split, i, name, severity, seed, backend, base_size = job
    img_out, mask_out = _targets(source, root, out, split, i)
    moves = moves_labels(name)
    # a resumed run skips only what is whole: a stop mid-write leaves none (atomic), but disks and people can
    had_img, had_mask = img_out.exists(), mask_out.exists()
    size = _source_size(source, i) if had_img or had_mask or moves else (0, 0)
    truth = geometry(name, *size, severity, stem_seed(source.stem(i), seed)) if moves else None
    moved = _labels_for(source, i, name, severity, seed) if moves else None
    img_ok = had_img and _image_intact(img_out, size)
    if moved is not None:
        mask_ok = had_mask and _moved_intact(mask_out, moved)
    else:
        mask_ok = had_mask and _mask_intact(mask_out, source.mask_path(i), size)
    if not (img_ok and mask_ok):
        image, mask = source.load(i)  # also validates the pair
        if not img_ok:
            scale = length_scale(*image.shape[:2], base_size)
            shifted = apply_filter(name, image, severity=severity, seed=stem_seed(source.stem(i), seed),
                                   backend=backend, scale=scale)
            _write_image(img_out, shifted)
        if not mask_ok:  # checked on its own: a run can stop between the image and its label
            mp = source.mask_path(i)
            with atomic_path(mask_out) as tmp:
                if moved is not None:
                    tmp.write_bytes(_encode_labels(mask_out, moved))
                elif mp is not None:
                    shutil.copyfile(mp, tmp)
                else:  # generated data (synthetic): store the labels as an index PNG
                    tmp.write_bytes(cv2.imencode(".png", mask.astype(np.uint8))[1].tobytes())
    repaired = (had_img and not img_ok) or (had_mask and not mask_ok)
    return repaired, (truth.tolist() if truth is not None else None)


def _moved_intact(path: Path, expected: np.ndarray) -> bool:
    """Moved labels already written must equal the move recomputed from D1's labels."""
    try:
        return np.array_equal(read_mask(path), expected)
    except DataError:
        return False


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _signal_on_parent_death() -> None:
    """Linux: ask the kernel to SIGKILL this process when its parent dies; a no-op where prctl is missing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # the watchdog thread still covers this worker
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
    if ppid != parent and not pid_alive(parent):  # it died before the prctl above could take effect
        os._exit(1)
    # the process that started us (the parent, or a fork server that exits with it) is the one to watch
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True, name="segadapt-watch-parent").start()


def marker_path(out: Path, split: str) -> Path:
    return out / f".segadapt-shift-{split}.json"


def _length_rule(params: dict[str, Any]) -> tuple[str, int]:
    """How a marker's lengths were measured, as one comparable value: factor 1 whichever the units (image units,
    or base_size 0), else network pixels at its base size. Markers from before `units` existed: image units."""
    base_size = network_base(params.get("units", "image"), int(params.get("base_size", 0) or 0))
    return ("network", base_size) if base_size else ("image", 0)


def _same_params(held: dict[str, Any], params: dict[str, Any]) -> bool:
    keys = {"units", "base_size"}
    plain = {k: v for k, v in held.items() if k not in keys} == {k: v for k, v in params.items() if k not in keys}
    return plain and _length_rule(held) == _length_rule(params)


def _scales(source: SegmentationSource, base_size: int, units: str) -> float | list[float]:
    """The length factor(s) of a split (one per image size): one number when every image shares it."""
    if not network_base(units, base_size):
        return 1.0
    found = sorted({round(length_scale(*_source_size(source, i), base_size, units), 6) for i in range(len(source))})
    return found[0] if len(found) == 1 else [found[0], found[-1]]


def recorded_params(out: Path, split: str) -> dict[str, Any] | None:
    """The parameters a `segadapt shift` run recorded for `split` under `out`; None when it recorded none."""
    marker = marker_path(out, split)
    if not marker.exists():
        return None
    try:
        return dict(json.loads(marker.read_text())["params"])
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{marker}: unreadable marker; delete {out} (or the marker) and run again") from None


def recorded_transforms(out: Path, split: str) -> dict[str, np.ndarray]:
    """stem -> ground-truth transform (3x3) that a finished `segadapt shift` with a geometric filter recorded."""
    marker = marker_path(out, split)
    try:
        held = json.loads(marker.read_text())
        return {stem: np.asarray(m, dtype=np.float64) for stem, m in held.get("transforms", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise DataError(f"{marker}: no readable transforms ({e}); write D2 again with segadapt shift") from None


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
    *,
    units: str = "network",
    base_size: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write D2 of `split` under `out`. `units`/`base_size`: in network units with base_size > 0 the severity's
    lengths are pixels of the image resized to that shorter side (shifts/units.py); the marker records both and
    the factor(s) used. `extra` is recorded in the finished marker too (e.g. the severity search's result)."""
    check(name, severity, seed)  # filter and severity (nan, inf) refused before anything is written
    check_backend(backend)
    check_units(units)
    params = {"filter": name, "severity": severity, "seed": seed, "backend": backend, "split": split,
              "units": units, "base_size": base_size}
    ranks.start()  # under torchrun each rank writes a share of the images; rank 0 alone the marker
    marker = marker_path(out, split)
    problem, held = "", None
    if ranks.is_main():
        try:
            held = _claim_marker(source, root, out, split, params, marker)
        except DataError as e:
            problem = str(e)
    problem, held = ranks.same_everywhere((problem, held))  # every rank stops alike, after the marker exists
    if problem:
        raise DataError(problem)
    scale = _scales(source, base_size, units)
    rule_base = _length_rule(params)[1]  # 0: factor 1
    jobs = ranks.share([(source, root, out, split, i, name, severity, seed, backend, rule_base)
                        for i in range(len(source))])
    workers = workers or os.cpu_count() or 1
    desc = f"shift {split} ({name})"
    quiet = not ranks.is_main()
    if workers == 1:
        done = [_one(job) for job in progress_bar(jobs, desc=desc, dynamic_ncols=True, disable=quiet)]
    else:
        with ProcessPoolExecutor(workers, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            done = list(progress_bar(pool.map(_one, jobs, chunksize=4), total=len(jobs), desc=desc,
                                     dynamic_ncols=True, disable=quiet))
    parts = ranks.gather([(job[4], result) for job, result in zip(jobs, done)])
    results = sorted((r for part in parts for r in part), key=lambda r: r[0])
    repaired = sum(r for _, (r, _) in results)
    transforms = {source.stem(i): t for i, (_, t) in results if t is not None}
    if not ranks.is_main():
        return {"images": len(results), "repaired": repaired, "out": str(out), **params, "scale": scale}
    if root is not None and (root / "ImageSets").is_dir():  # VOC split lists travel with the images
        shutil.copytree(root / "ImageSets", out / "ImageSets", dirs_exist_ok=True)
    write_json_atomic(marker, {"params": held or params, "scale": scale, **(extra or {}), "images": len(results),
                               "complete": True, **({"transforms": transforms} if transforms else {})})
    return {"images": len(results), "repaired": repaired, "out": str(out), **params, "scale": scale}


def _claim_marker(source: SegmentationSource, root: Path | None, out: Path, split: str, params: dict[str, Any],
                  marker: Path) -> dict[str, Any] | None:
    """Check `out` may take this shift and mark it as begun; the parameters an earlier run recorded, if any."""
    held = recorded_params(out, split)
    if held is not None:
        if not _same_params(held, params):
            raise DataError(f"{marker}: {out} already holds D2 (complete or partly written) made with other "
                            f"parameters {held}; choose another --out")
        return held
    if root is not None and out.resolve() == root.resolve():
        raise DataError(f"{out}: is the dataset itself (D1); write D2 to another --out")
    taken = next((img for i in range(len(source)) if (img := _targets(source, root, out, split, i)[0]).exists()),
                 None)
    if taken is not None:  # existing files would be kept as if this run had written them
        raise DataError(f"{taken}: already exists in {out}, which holds no segadapt shift of {split}; "
                        f"choose an empty --out")
    # written before any image, so a run stopped half-way is still known by its parameters
    write_json_atomic(marker, {"params": params, "complete": False})
    return None
