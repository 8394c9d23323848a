"""Map one `severity` in [0, 1] onto each filter's GEGL parameters, for sweeps of shift strength.

Severity 0 is the identity or the mildest setting, 1 the strongest we sweep. Distortion (mean |D2 - D1|)
grows with severity from 0 to 0.5 to 1 for every filter (tested); for ripple and photocopy it grows
monotonically in between, for cubism only in trend: each tile size draws a new tiling, so neighbouring
severities can swap order by a few percent on one image. Ranges, per filter:

* ripple: amplitude = 12 s px (0 = identity on both backends; above 0 the cubic resampling also blurs by
  about half a pixel, as in GEGL), period = 80 - 40 s px, phi drawn uniformly from [-1, 1] by `seed`
  (so paired images differ in phase, deterministically), abyss_policy "clamp" (no black borders), cubic sampler.
* photocopy: GEGL's defaults (mask_radius 10, sharpness 0.5, black 0.2, white 0.2) applied at opacity s, i.e.
  blended over the input in linear light like GIMP's filter "Opacity". Photocopy's own parameters are not a
  monotone strength knob (a small mask radius turns almost everything white), so opacity carries the severity.
* cubism: tile_size = 4 + 12 s px (10 = GEGL's default at s = 0.5), tile_saturation 2.5, seed = `seed`.
* misalign (not a GEGL filter; shifts/misalign.py): offsets up to 0.08 s of the image diagonal, rotations up
  to 6 s degrees, scale within 1 +- 0.04 s, drawn by `seed` (at 480x360, s = 0.5: up to 24 px and 3 degrees).

Every length above but misalign's, which are fractions of the image already (ripple amplitude and period,
cubism tile size, photocopy's mask radius and its detail blur's radius, 6 px at sharpness 0.5) is multiplied by
`scale`: stored-image pixels per pixel of the image the network
sees (shifts/units.py), so that in network units a severity is the same shift at every training resolution.
At scale 1 the parameters are exactly the ones listed; at another scale photocopy's detail radius is passed as
`detail_radius`, since GEGL's sharpness cannot express a radius above 11 px.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from segadapt.errors import ConfigError


def _ripple(severity: float, seed: int, scale: float) -> dict[str, Any]:
    phi = float(np.random.default_rng(seed).uniform(-1.0, 1.0))
    return {"amplitude": 12.0 * severity * scale, "period": (80.0 - 40.0 * severity) * scale, "phi": phi,
            "abyss_policy": "clamp"}


_DETAIL_RADIUS = 6.0  # the detail blur's radius at GEGL's default sharpness 0.5: max(1, 10 * 0.5) + 1


def _photocopy(severity: float, seed: int, scale: float) -> dict[str, Any]:
    params = {"mask_radius": 10.0 * scale, "sharpness": 0.5, "black": 0.2, "white": 0.2, "opacity": severity}
    if scale != 1.0:
        params["detail_radius"] = _DETAIL_RADIUS * scale
    return params


def _cubism(severity: float, seed: int, scale: float) -> dict[str, Any]:
    return {"tile_size": (4.0 + 12.0 * severity) * scale, "tile_saturation": 2.5, "seed": seed}


def _misalign(severity: float, seed: int, scale: float = 1.0) -> dict[str, Any]:
    del scale  # fractions of the image: the same at every resolution
    return {"max_offset": 0.08 * severity, "max_angle": 6.0 * severity, "max_scale": 0.04 * severity, "seed": seed}


_BY_FILTER = {"ripple": _ripple, "photocopy": _photocopy, "cubism": _cubism, "misalign": _misalign}


def severity_params(name: str, severity: float, seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """Keyword arguments for filter `name` at `severity` (may include "opacity", see module doc); `scale`
    multiplies every length (stored pixels per network pixel, shifts/units.py)."""
    if name not in _BY_FILTER:
        raise ConfigError(f"unknown filter {name!r}; choose one of {', '.join(_BY_FILTER)}")
    severity = float(severity)
    if not 0.0 <= severity <= 1.0:
        raise ConfigError(f"severity must be in [0, 1], got {severity:g}")
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"length scale must be a finite number > 0, got {scale:g}")
    return _BY_FILTER[name](severity, seed, scale)
