"""Filter specs: one filter (`photocopy`) or a composition (`photocopy+misalign`), parsed in one place.

A spec is parts joined by `+`, each a filter name with an optional own severity: `photocopy+misalign=0.5` is
photocopy at the run's severity then misalign at 0.5 (`=` because a spec becomes a folder name, d2-<spec>).
Parts run left to right with the image's one seed. Geometric parts (misalign) must come last: the photometric
filters are neighbourhood filters (photocopy blurs over 10 px), and run after the warp they would smear the
black no-source border into the valid pixels next to it; run first, they see only the scene, the warp then
only moves and resamples it, and the ground-truth transform describes the output exactly.

Labels: geometric parts move D1's labels along (nearest neighbour, ignore index where nothing maps), so D2
is scored against labels that lie on its pixels; photometric filters (ripple too, as in the study) keep D1's
labels unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from segadapt.errors import ConfigError
from segadapt.shifts.filters import FILTERS, apply_single
from segadapt.shifts.misalign import draw_transform, misalign, warp_mask
from segadapt.shifts.severity import severity_params

GEOMETRIC = {"misalign": misalign}


@dataclass(frozen=True)
class Part:
    name: str
    severity: float | None  # None: the run's severity


def known() -> list[str]:
    return [*FILTERS, *GEOMETRIC]


def parse(spec: str) -> list[Part]:
    """The parts of a spec, checked: known names, each once, severities in [0, 1], geometric parts last."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"filter {spec!r}: empty; name one of {', '.join(known())}")
    parts: list[Part] = []
    for text in spec.split("+"):
        name, eq, value = text.strip().partition("=")
        if name not in known():
            raise ConfigError(f"unknown filter {name!r}; choose one of {', '.join(known())}, or a composition such "
                              f"as photocopy+misalign")
        severity = None
        if eq:
            try:
                severity = float(value)
            except ValueError:
                severity = math.nan
            if not (math.isfinite(severity) and 0 <= severity <= 1):
                raise ConfigError(f"filter {spec!r}: severity {value!r} of {name} must be a number in [0, 1]")
        parts.append(Part(name, severity))
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise ConfigError(f"filter {spec!r}: a filter listed twice; give each once")
    geometric = [n in GEOMETRIC for n in names]
    if any(g and not later for g, later in zip(geometric, geometric[1:])):
        raise ConfigError(f"filter {spec!r}: put misalign last (photometric filters run before the warp, so they "
                          f"never see its empty border), e.g. photocopy+misalign")
    return parts


def resolve(spec: str, severity: float | None) -> list[tuple[str, float | None]]:
    """(name, severity) per part: a part's own severity, else the run's."""
    return [(p.name, p.severity if p.severity is not None else severity) for p in parse(spec)]


def check(spec: str, severity: float, seed: int = 0) -> None:
    """Refuse a bad spec or severity before any image is written."""
    for name, s in resolve(spec, severity):
        severity_params(name, s if s is not None else severity, seed)


def moves_labels(spec: str) -> bool:
    """Whether the spec names a geometric part, whose move labels must follow (read off the names only: checking
    the spec is apply's job, so a caller's own filter names pass through)."""
    return any(part.partition("=")[0].strip() in GEOMETRIC for part in spec.split("+"))


def _geometric_params(severity: float | None, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    chosen = severity_params("misalign", severity, seed) if severity is not None else {"seed": seed}
    return chosen | params


def apply(spec: str, image: np.ndarray, severity: float | None, seed: int, backend: str, scale: float = 1.0,
          **params: Any) -> np.ndarray:
    """The image through every part of the spec (see apply_filter); `params` only for a single filter. `scale`
    (network units) reaches the photometric parts; misalign's moves are fractions of the image already."""
    parts = resolve(spec, severity)
    if params and len(parts) > 1:
        raise ConfigError(f"filter {spec!r}: explicit parameters are for a single filter, not a composition")
    out = image
    for name, s in parts:
        if name in GEOMETRIC:  # native only: gegl has no such filter
            out = GEOMETRIC[name](out, **_geometric_params(s, seed, params))
        else:
            out = apply_single(name, out, severity=s, seed=seed, backend=backend, scale=scale, **params)
    return out


def geometry(spec: str, height: int, width: int, severity: float | None, seed: int,
             **params: Any) -> np.ndarray | None:
    """The ground-truth transform (3x3, X1 pixel coordinates -> X2's) the spec applies, None if it moves nothing
    rigidly (photometric filters; ripple's displacement is not a transform)."""
    for name, s in resolve(spec, severity):
        if name in GEOMETRIC:
            return draw_transform(height, width, **_geometric_params(s, seed, params)).matrix
    return None


def warp_labels(spec: str, mask: np.ndarray, severity: float | None, seed: int, fill: int) -> np.ndarray:
    """D1's labels moved as the spec moves the image (unchanged when it has no geometric part)."""
    matrix = geometry(spec, mask.shape[0], mask.shape[1], severity, seed)
    if matrix is None:
        return mask
    return warp_mask(mask, matrix, fill)
