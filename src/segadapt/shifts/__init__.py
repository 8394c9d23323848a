"""Domain shifts that turn D1 images into D2 images: GIMP 2.10's GEGL filters reimplemented natively.

`apply_filter(name, image, severity=..., seed=...)` is the one entry point the rest of segadapt uses; the
per-filter functions take GEGL's parameter names and defaults. `backend="gegl"` runs the real `gegl` CLI instead
(slow, needs `apt-get install gegl`), for checking or for exact GIMP output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from segadapt.errors import ConfigError
from segadapt.shifts.cubism import cubism
from segadapt.shifts.gegl import linear_to_srgb, run_gegl, srgb_to_linear
from segadapt.shifts.photocopy import photocopy
from segadapt.shifts.ripple import ripple, ripple_mask
from segadapt.shifts.severity import severity_params

FILTERS: dict[str, Callable[..., np.ndarray]] = {"photocopy": photocopy, "ripple": ripple, "cubism": cubism}
BACKENDS = ("native", "gegl")
_ALIASES = {"phase": "phi", "sampler": "sampler_type"}  # ripple's older keyword names -> GEGL's


def blend(original: np.ndarray, filtered: np.ndarray, opacity: float) -> np.ndarray:
    """GIMP-style filter opacity: mix filtered over original in linear light (1 = filtered only)."""
    if opacity >= 1.0:
        return filtered
    if opacity <= 0.0:
        return original.copy()
    a, b = srgb_to_linear(original), srgb_to_linear(filtered)
    return linear_to_srgb(a + np.float32(opacity) * (b - a))


def resolve_params(
    name: str, severity: float | None = None, seed: int = 0, scale: float = 1.0, **params: Any
) -> tuple[dict[str, Any], float]:
    """The filter's keyword arguments (severity's choice, explicit `params` overriding) and the opacity to blend at.
    `scale` multiplies the lengths severity chooses (shifts/units.py); explicit `params` are stored-image pixels."""
    if name not in FILTERS:
        raise ConfigError(f"unknown filter {name!r}; choose one of {', '.join(FILTERS)}")
    chosen = severity_params(name, severity, seed, scale) if severity is not None else {}
    if name == "cubism" and severity is None:
        chosen["seed"] = seed
    chosen.update({_ALIASES.get(k, k): v for k, v in params.items()})
    return chosen, float(chosen.pop("opacity", 1.0))


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
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if name not in FILTERS:  # misalign, or a composition such as photocopy+misalign (shifts/compose.py)
        from segadapt.shifts import compose

        return compose.apply(name, image, severity, seed, backend, scale, **params)
    chosen, opacity = resolve_params(name, severity, seed, scale, **params)
    if backend == "gegl" and "detail_radius" in chosen:
        raise ConfigError("photocopy's detail_radius (network units at a length scale other than 1) has no GEGL "
                          "property; use the native backend, or shift.units = \"image\"")
    if name == "ripple" and float(chosen.get("amplitude", 1.0)) == 0.0:
        return image.copy()  # severity 0 is the identity on both backends (gegl would still resample)
    try:  # the native filter checks the values on a 2x2 image first (gegl would take bad ones silently)
        FILTERS[name](np.zeros((2, 2, 3), np.uint8), **chosen)
    except ValueError as e:  # in range at scale 1, a severity's lengths can leave it in network units
        where = f" at severity {severity:g}" if severity is not None else ""
        hint = (f" (its lengths scaled x{scale:.3g} to network units: raise data.base_size, lower the severity or "
                f"set shift.units = \"image\")" if scale != 1.0 else "")
        raise ConfigError(f"{name}{where}: {e}{hint}") from None
    out = run_gegl(image, name, **chosen) if backend == "gegl" else FILTERS[name](image, **chosen)
    return blend(image, out, opacity)


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
