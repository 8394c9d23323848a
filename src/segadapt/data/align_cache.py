"""Registration runs once per pair: results are kept as one small JSON file per pair in a cache folder.

A pair's file is named by a hash of both images' identity (path, size and modification time of each file, or
what a generated image is made from; SegmentationSource.identity) and of the registration settings, so an
edited image or other settings get a fresh registration, never a stale one. Files are written atomically; a
damaged one is registered again. The folder is `adapt.align_cache`, by default `<run>/align` (a sweep that
adapts one D2 several times points every run at one folder so the pairs are registered once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segadapt.checkpoint import write_json_atomic
from segadapt.config import AdaptConfig
from segadapt.data.align import AlignSettings, Registration, from_georeference, register
from segadapt.data.base import SegmentationSource
from segadapt.data.pairs import PairedDataset
from segadapt.errors import DataError
from segadapt.progress import bar as progress_bar

FORMAT = 1
Register = Callable[[np.ndarray, np.ndarray, AlignSettings], Registration]


def settings_of(adapt: AdaptConfig, base_size: int = 0) -> AlignSettings:
    """The registration settings of a run's [adapt] table (adapt.align must not be "none"); `base_size`: the
    data's (data.base_size), the resolution registered at when adapt.align_at is "network"."""
    return AlignSettings(method=adapt.align, model=adapt.align_model, image=adapt.align_image,
                         min_corr=adapt.align_min_corr, min_inliers=adapt.align_min_inliers,
                         min_overlap=adapt.align_min_overlap,
                         base_size=base_size if adapt.align_at == "network" else 0)


def register_dataset(pairs: PairedDataset, adapt: AdaptConfig, default_cache: Path | None,
                     registrar: Register = register) -> tuple[PairedDataset, dict[str, Any]]:
    """The registered view of `pairs` (failed pairs left out) and its summary; refuses when none passed."""
    from segadapt import distributed

    settings = settings_of(adapt, pairs.transform.base_size)
    cache = Path(adapt.align_cache) if adapt.align_cache else default_cache

    def run() -> list[Registration]:
        return register_pairs(pairs.d1, pairs.d2, pairs.pairs, settings, cache, registrar=registrar,
                              desc=f"register pairs ({settings.method})", progress=distributed.is_main())

    if distributed.active() and cache is not None:  # under torchrun rank 0 registers, the others read its cache
        if not distributed.is_main():
            distributed.barrier()
        regs = run()
        if distributed.is_main():
            distributed.barrier()
    else:
        regs = run()
    stats = summary(pairs.d1, pairs.d2, pairs.pairs, regs) | {"method": settings.method,
                                                              "cache": str(cache) if cache else None}
    refuse_none_left(stats, settings.method)
    return pairs.registered(regs), stats


def pair_key(d1: SegmentationSource, i: int, d2: SegmentationSource, j: int, settings: AlignSettings) -> str:
    text = json.dumps([FORMAT, d1.identity(i), d2.identity(j), dataclasses.asdict(settings)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read(path: Path) -> Registration | None:
    try:
        return Registration.from_dict(json.loads(path.read_text())["registration"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # missing or damaged: register again


def register_pairs(
    d1: SegmentationSource, d2: SegmentationSource, pairs: Sequence[tuple[int, int]], settings: AlignSettings,
    cache_dir: Path | None, *, registrar: Register = register, desc: str = "register pairs", progress: bool = True,
) -> list[Registration]:
    """One Registration per (D1 index, D2 index) pair, from the cache where present, else computed and stored."""
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    out: list[Registration] = []
    for i, j in progress_bar(pairs, desc=desc, dynamic_ncols=True, mininterval=1.0, disable=not progress):
        path = cache_dir / f"{pair_key(d1, i, d2, j, settings)}.json" if cache_dir is not None else None
        found = _read(path) if path is not None and path.is_file() else None
        if found is None and settings.method == "geo":
            p1, p2 = d1.image_path(i), d2.image_path(j)
            if p1 is None or p2 is None:
                raise DataError(f"{d2.name(j)}: adapt.align = geo reads the georeferencing of image files; this "
                                f"pair has no files (generated or filtered on the fly)")
            found = from_georeference(p1, p2, settings)
        elif found is None:
            x1, x2 = d1.load_image(i), d2.load_image(j)
            found = registrar(x1, x2, settings)
            if path is not None:
                write_json_atomic(path, {"x1": d1.name(i), "x2": d2.name(j), "registration": found.to_dict()})
        out.append(found)
    return out


def summary(d1: SegmentationSource, d2: SegmentationSource, pairs: Sequence[tuple[int, int]],
            regs: Sequence[Registration]) -> dict[str, Any]:
    """Counts and the failed pairs with their reasons, for adapt.json and the start-of-run line."""
    failed = [{"x1": d1.name(i), "x2": d2.name(j), "reason": r.reason} for (i, j), r in zip(pairs, regs) if not r.ok]
    return {"pairs": len(regs), "ok": len(regs) - len(failed), "failed": len(failed), "failures": failed,
            "seconds": round(sum(r.seconds for r in regs), 2)}


def refuse_none_left(stats: dict[str, Any], method: str) -> None:
    if stats["ok"] == 0:
        first = stats["failures"][0] if stats["failures"] else {}
        raise DataError(f"{first.get('x2', 'D2')}: registration ({method}) failed on every pair (e.g. "
                        f"{first.get('reason', '?')}); check that D1 and D2 show the same scenes, or try "
                        f"adapt.align=features for large offsets")
