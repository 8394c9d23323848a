"""Class colours for overlays: CamVid's published colours, VOC's bit-interleaved palette, and a fallback."""

from __future__ import annotations

Palette = tuple[tuple[int, int, int], ...]

CAMVID: Palette = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)


def voc(n: int = 21) -> Palette:
    """PASCAL VOC's palette: the bits of the class index spread over the high bits of R, G and B."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def generic(n: int) -> Palette:
    """Distinct colours for any number of classes (VOC's scheme extends to 256)."""
    return voc(n)
