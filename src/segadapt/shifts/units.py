"""In which pixels a shift's lengths are measured: the stored image's, or those of the image the network sees.

The filters run on the stored image (D2 files keep D1's size), but training and scoring first resize each image
so its shorter side is `data.base_size` (data/transforms.py). A ripple of 12 px on a 360 px tall CamVid frame is
a 4 px ripple at base_size 120, so in image units the same severity is a weaker shift at a lower training
resolution. In network units the severity mapping's lengths (ripple amplitude and period, cubism tile size,
photocopy blur radii) are pixels of the resized image, multiplied by `length_scale` before the filter runs on
the stored one. This module is the one place that factor is computed: on-the-fly D2 (ShiftedSource),
`segadapt shift`, the sweep's materialised D2 and GeoTIFFs all call it.
"""

from __future__ import annotations

from segadapt.base_size import base_scale
from segadapt.errors import ConfigError

UNITS = ("network", "image")


def check_units(units: str) -> str:
    if units not in UNITS:
        raise ConfigError(f"shift.units = {units!r}: choose one of {', '.join(UNITS)}")
    return units


def network_base(units: str, base_size: int) -> int:
    """The rule: the base size a shift's lengths refer to, `base_size` in network units, else 0 (factor 1: image
    units, or no resize before the network)."""
    return base_size if check_units(units) == "network" and base_size > 0 else 0


def length_scale(height: int, width: int, base_size: int, units: str = "network") -> float:
    """Stored-image pixels per network pixel for an image of `height` x `width`: its shorter side over
    `base_size` in network units with base_size > 0, else 1 (network_base)."""
    return base_scale(height, width, network_base(units, base_size), inverse=True)
