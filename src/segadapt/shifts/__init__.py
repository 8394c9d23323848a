"""Domain shifts that turn D1 images into D2 images: GIMP 2.10's GEGL filters reimplemented natively.

`apply_filter(name, image, severity=..., seed=...)` is the one entry point the rest of segadapt uses; the
per-filter functions take GEGL's parameter names and defaults. `backend="gegl"` runs the real `gegl` CLI instead
(slow, needs `apt-get install gegl`), for checking or for exact GIMP output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segadapt.shifts import compose
from segadapt.shifts.cubism import cubism
from segadapt.shifts.filters import BACKENDS, FILTERS, apply_single, blend, check_backend, resolve_params
from segadapt.shifts.gegl import run_gegl
from segadapt.shifts.photocopy import photocopy
from segadapt.shifts.ripple import ripple, ripple_mask
from segadapt.shifts.severity import severity_params


def apply_filter(
    name: str,
    image: np.ndarray,
    severity: float | None = None,
    seed: int = 0,
    backend: str = "native",
    scale: float = 1.0,
    **params: Any,
) -> np.ndarray:
    """Filter a uint8 HxWx3 RGB image; `severity` (0..1) picks parameters, explicit `params` override them.

    `seed` feeds the severity mapping (ripple phase, cubism tiles); `opacity` (0..1, default 1) blends the result
    over the input as GIMP's filter dialog does; `scale` multiplies the severity's lengths (network units,
    shifts/units.py). Deterministic for a given seed. `name` may also be `misalign` or a composition
    (`photocopy+misalign`, see shifts/compose.py).
    """
    if name in FILTERS:
        return apply_single(name, image, severity, seed, backend, scale, **params)
    check_backend(backend)
    return compose.apply(name, image, severity, seed, backend, scale, **params)  # misalign, photocopy+misalign


__all__ = [
    "BACKENDS",
    "FILTERS",
    "apply_filter",
    "blend",
    "cubism",
    "photocopy",
    "resolve_params",
    "ripple",
    "ripple_mask",
    "run_gegl",
    "severity_params",
]
