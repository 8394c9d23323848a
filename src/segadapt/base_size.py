"""`data.base_size`: the factor between a stored image's pixels and the pixels the network sees.

Training and scoring resize each image so its shorter side is base_size pixels (0: as stored). Every part that
needs that factor calls `base_scale`: the resize itself (data/transforms.py), a model's recorded pixel factor
(data/base.py), predict and export, and a shift's lengths in network units (shifts/units.py, which wants the
inverse: stored pixels per network pixel). It sits below data, shifts and models so that none of them needs
another for it.
"""

from __future__ import annotations


def base_scale(height: int, width: int, base_size: int, *, inverse: bool = False) -> float:
    """Network pixels per stored pixel for a `height` x `width` image: base_size over its shorter side (1 when
    base_size is 0). `inverse`: stored pixels per network pixel, divided the other way (not 1 / the factor, so
    both directions are exact quotients of the two whole numbers)."""
    if base_size <= 0:
        return 1.0
    side = min(height, width)
    return side / base_size if inverse else base_size / side
