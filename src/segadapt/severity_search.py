"""Choose a shift's severity so that H1's distortion hits a target, by bisection on a fixed subset of D1's train split.

The study compares shifts at given distortions of H1 (photocopy 32.5%, ripple 62.6%, cubism 94.0%); one severity
means different distortions on other data, at other resolutions and for other models, so the sweep and
`segadapt shift --target-distortion` search for it instead. H1 is scored on `shift.search_images` images of the
*train* split (drawn once with `shift.seed`, clean and shifted), never on the val split the results are scored on,
so the search cannot tune to the scoring images.

`search_severity` works on any measure severity -> distortion:
1. score the ends of [lo, hi] (given a `start`, such as the previous seed's landing, that first, then the end
   towards the target, then the other end only if those two do not straddle it);
2. if no two scored severities straddle the target (a non-monotone filter, or one too weak), score a coarse grid
   inside the range; the lowest-severity interval whose ends straddle the target is the bracket;
3. bisect the bracket until a severity lands within ± tolerance or `steps` severities have been scored.
Bisection on a bracket finds a crossing of a continuous curve even when it is not monotone (cubism's: each tile
size draws a new tiling), though not necessarily the only one; every scored point is reported. When no severity
lands within the tolerance the closest scored one is returned with `reached = False` and one line saying why:
the target is above every distortion seen (the filter cannot reach it in the range; the largest is given), below
the mildest, or the steps ran out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from segadapt.config import RunConfig
from segadapt.data.base import DatasetInfo, SegmentationSource
from segadapt.errors import ConfigError


@dataclass
class Probe:
    """One scored severity: H1's distortion there (and its scores on the shifted subset when measured)."""

    severity: float
    distortion: float
    mean_acc: float = math.nan
    miou: float = math.nan


@dataclass
class SearchResult:
    target: float
    tolerance: float
    severity: float  # where the search landed (the closest scored severity when not reached)
    distortion: float  # H1's distortion there, on the search subset
    reached: bool
    message: str  # one line: where it landed, or why it could not
    probes: list[Probe] = field(default_factory=list)  # in the order scored
    info: dict[str, Any] = field(default_factory=dict)  # what was scored: split, images, clean scores, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Measure = Callable[[float], "Probe | float"]


def search_severity(
    measure: Measure,
    target: float,
    tolerance: float = 0.03,
    lo: float = 0.0,
    hi: float = 1.0,
    steps: int = 10,
    start: float | None = None,
    grid: int = 4,
) -> SearchResult:
    """Search [lo, hi] for a severity whose distortion is within `tolerance` of `target` (see the module doc)."""
    if not (lo < hi and steps >= 2 and tolerance > 0 and math.isfinite(target)):
        raise ConfigError(f"severity search: need lo < hi, steps >= 2 and tolerance > 0 (got lo {lo}, hi {hi}, "
                          f"steps {steps}, tolerance {tolerance})")
    probes: dict[float, Probe] = {}

    def at(s: float) -> Probe | None:
        s = round(float(s), 6)
        if s not in probes:
            if len(probes) >= steps:
                return None
            got = measure(s)
            probes[s] = got if isinstance(got, Probe) else Probe(s, float(got))
        return probes[s]

    def hit(p: Probe | None) -> bool:
        return p is not None and abs(p.distortion - target) <= tolerance

    def bracket() -> tuple[float, float] | None:
        scored = sorted((s, p.distortion - target) for s, p in probes.items() if math.isfinite(p.distortion))
        for (a, da), (b, db) in zip(scored, scored[1:]):
            if da * db < 0:
                return a, b
        return None

    def done(p: Probe) -> SearchResult:
        return _result(probes, target, tolerance, p, True,
                       f"severity {p.severity:.4f}: distortion {p.distortion:.3f}, within ±{tolerance:g} of {target:g}")

    if start is not None and lo < start < hi:
        p = at(start)
        if hit(p):
            return done(p)
        ends = [hi, lo] if p is None or not p.distortion > target else [lo, hi]
    else:
        ends = [hi, lo]
    for s in ends:
        p = at(s)
        if hit(p):
            return done(p)  # type: ignore[arg-type]  # hit() is False for None
        if bracket():
            break
    inside = [lo + k * (hi - lo) / grid for k in range(1, grid)]
    for s in inside if not bracket() else []:
        p = at(s)
        if p is None:
            break
        if hit(p):
            return done(p)
        if bracket():
            break
    if bracket() is None:
        return _unreachable(probes, target, tolerance, lo, hi)
    while (b := bracket()) is not None:
        mid = round((b[0] + b[1]) / 2, 6)
        if mid in probes:  # the bracket is narrower than the severities' resolution
            break
        p = at(mid)
        if p is None:
            break
        if hit(p):
            return done(p)
    best = _closest(probes, target)
    return _result(probes, target, tolerance, best, False,
                   f"no severity within ±{tolerance:g} of {target:g} in {len(probes)} steps; closest: severity "
                   f"{best.severity:.4f}, distortion {best.distortion:.3f}")


def _closest(probes: dict[float, Probe], target: float) -> Probe:
    finite = [p for p in probes.values() if math.isfinite(p.distortion)]
    return min(finite or probes.values(), key=lambda p: (abs(p.distortion - target), p.severity))


def _result(probes: dict[float, Probe], target: float, tolerance: float, p: Probe, reached: bool,
            message: str) -> SearchResult:
    return SearchResult(target, tolerance, p.severity, p.distortion, reached, message, list(probes.values()))


def _unreachable(probes: dict[float, Probe], target: float, tolerance: float, lo: float, hi: float) -> SearchResult:
    finite = [p for p in probes.values() if math.isfinite(p.distortion)]
    best = _closest(probes, target)
    where = f"severities {lo:g}..{hi:g}"
    if not finite:
        msg = f"H1's distortion is undefined (it scores 0 on the clean subset); cannot aim at {target:g}"
    elif all(p.distortion < target for p in finite):
        top = max(finite, key=lambda p: p.distortion)
        msg = (f"cannot reach distortion {target:g} at any of {where}: at most {top.distortion:.3f} (severity "
               f"{top.severity:.4f}, {len(probes)} scored); using the closest, severity {best.severity:.4f}")
    else:
        low = min(finite, key=lambda p: p.distortion)
        msg = (f"cannot go as low as distortion {target:g} in {where}: at least {low.distortion:.3f} (severity "
               f"{low.severity:.4f}); using the closest, severity {best.severity:.4f}")
    return _result(probes, target, tolerance, best, False, msg)


# --- H1's distortion on a fixed subset of D1's train split ---------------------------------------------------

def subset_indices(total: int, n: int, seed: int) -> list[int]:
    """`n` of `total` indices drawn without replacement by `seed`, in order (all of them when n >= total)."""
    if n >= total:
        return list(range(total))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(total, size=n, replace=False))


class HeldSubset(SegmentationSource):
    """Some samples of a source, loaded once and kept in memory: the search re-filters them at every severity."""

    def __init__(self, source: SegmentationSource, indices: list[int]) -> None:
        self.info: DatasetInfo = source.info
        self.stems = [source.stem(i) for i in indices]
        self.samples = [source.load(i) for i in indices]

    def __len__(self) -> int:
        return len(self.samples)

    def stem(self, i: int) -> str:
        return self.stems[i]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.samples[i]
        return image.copy(), mask.copy()


def h1_measure(
    model: torch.nn.Module, cfg: RunConfig, device: torch.device, filter_name: str
) -> tuple[Callable[[float], Probe], dict[str, Any]]:
    """H1's distortion at a severity of `filter_name` (cfg.shift's units and seed, cfg.data's base size), on
    shift.search_images images of the train split; and what was scored (split, images, clean scores)."""
    from segadapt.data import build_source
    from segadapt.data.d2 import filtered_source, with_shift
    from segadapt.evaluate import score
    from segadapt.metrics import distortion

    split = cfg.data.train_split
    if split == cfg.data.val_split:
        raise ConfigError(f"data.train_split and data.val_split are both {split!r}: the severity search scores on "
                          f"train images so that it never sees the split results are scored on; split them")
    d1 = build_source(cfg.data, split)
    subset = HeldSubset(d1, subset_indices(len(d1), cfg.shift.search_images, cfg.shift.seed))
    clean = score(model, subset, cfg, device)
    shift_cfg = with_shift(cfg, _replace_filter(cfg, filter_name))
    info = {"filter": filter_name, "split": split, "images": len(subset), "subset_seed": cfg.shift.seed,
            "units": cfg.shift.units, "base_size": cfg.data.base_size,
            "clean": {"mean_acc": clean.mean_acc, "miou": clean.miou}}

    def measure(severity: float) -> Probe:
        shifted = filtered_source(subset, shift_cfg, severity)
        s = score(model, shifted, cfg, device)
        p = Probe(severity, distortion(clean.mean_acc, clean.miou, s.mean_acc, s.miou), s.mean_acc, s.miou)
        print(f"  search {filter_name}: severity {severity:.4f} -> distortion {p.distortion:.3f} "
              f"(mean acc {s.mean_acc:.3f}, mIoU {s.miou:.3f})", flush=True)
        return p

    return measure, info


def _replace_filter(cfg: RunConfig, filter_name: str) -> Any:
    import dataclasses

    return dataclasses.replace(cfg.shift, filter=filter_name)


def search_for(
    model: torch.nn.Module, cfg: RunConfig, device: torch.device, filter_name: str, target: float,
    start: float | None = None,
) -> SearchResult:
    """The severity of `filter_name` at which H1 (`model`) has distortion `target` (cfg.shift.search_* settings)."""
    measure, info = h1_measure(model, cfg, device, filter_name)
    s = cfg.shift
    result = search_severity(measure, target, s.search_tolerance, steps=s.search_steps, start=start)
    result.info = info
    return result
