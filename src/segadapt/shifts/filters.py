"""The three native filters by name, and one filter applied on its own: parameters chosen, run, blended.

Compositions (shifts/compose.py) run their photometric parts through `apply_single`; `apply_filter` in the
package dispatches between the two, so neither needs the other's module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from segadapt.errors import ConfigError
from segadapt.shifts.cubism import cubism
from segadapt.shifts.gegl import linear_to_srgb, run_gegl, srgb_to_linear
from segadapt.shifts.photocopy import photocopy
from segadapt.shifts.ripple import ripple
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


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def apply_single(
    name: str,
    image: np.ndarray,
    severity: float | None = None,
    seed: int = 0,
    backend: str = "native",
    scale: float = 1.0,
    **params: Any,
) -> np.ndarray:
    """One of FILTERS on a uint8 HxWx3 RGB image (see the package's `apply_filter`)."""
    check_backend(backend)
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
