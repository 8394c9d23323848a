"""Domain shifts that turn D1 images into D2 images: GIMP/GEGL filters reimplemented natively.

`apply_filter(name, image, severity=..., seed=...)` is the one entry point the rest of segadapt uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from segadapt.errors import ConfigError
from segadapt.shifts.ripple import ripple, ripple_mask


def _ripple_severity(severity: float, seed: int) -> dict[str, Any]:
    """severity 0..1 -> amplitude 0..12 px at a 40-80 px period; the phase varies with the seed so pairs differ."""
    rng = np.random.default_rng(seed)
    return {
        "amplitude": 12.0 * severity,
        "period": 40.0 + 40.0 * (1.0 - severity),
        "phase": float(rng.uniform(-1, 1)),
        "abyss_policy": "clamp",
    }


FILTERS: dict[str, tuple[Callable[..., np.ndarray], Callable[[float, int], dict[str, Any]]]] = {
    "ripple": (ripple, _ripple_severity),
}


def apply_filter(
    name: str, image: np.ndarray, severity: float | None = None, seed: int = 0, **params: Any
) -> np.ndarray:
    """Filter `image` (uint8 HxWx3); `severity` picks parameters, explicit `params` override them."""
    if name not in FILTERS:
        raise ConfigError(f"unknown filter {name!r}; choose one of {', '.join(FILTERS)}")
    fn, by_severity = FILTERS[name]
    chosen = by_severity(severity, seed) if severity is not None else {}
    return fn(image, **(chosen | params))


__all__ = ["FILTERS", "apply_filter", "ripple", "ripple_mask"]
