"""Cubism: GEGL's `gegl:cubism` reimplemented with numpy, including its random-number stream.

GEGL's algorithm, restated: start from the background colour; lay a jittered grid of (rows+1) x (cols+1) square
tiles (rows/cols = ceil(size / tile_size)) in a shuffled order. Each tile is a rectangle of side
(tile_size +- tile_size/8) * tile_saturation, randomly rotated, centred near its grid point, filled with the input
colour at its centre and blended over what is there with an alpha that ramps from 0.2 to 1 along the tile's first
edge, times the tile's coverage of each pixel (4x4 supersampled scanline fill). GEGL works in linear light
("RGBA float") and keeps the polygon corners as integers (C truncation after each step), which we mirror.

Randomness: GEGL draws from GLib's GRand (MT19937, Knuth-style `init_genrand` seeding, `g_rand_int_range` by
rejection + modulo, `g_rand_double_range` from two 32-bit words). numpy's legacy MT19937 seeding is the same
generator, so for the same `seed` the tiles are GEGL's tiles.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from segadapt.shifts.gegl import linear_to_srgb, srgb_to_linear
from segadapt.shifts.photocopy import _check_image, _check_range

_SUPERSAMPLE = 4
_SHUFFLE_ROUNDS = 5  # swaps per tile when shuffling the drawing order
_TWO_POW_32 = 4294967296.0
_BLOCK = 1 << 20  # random words / tiles handled at a time
_STRIP = 1 << 20  # output pixels per strip of float canvas


class GRand:
    """GLib's GRand stream (as used by GEGL ops), vectorised where the call order allows."""

    def __init__(self, seed: int) -> None:
        key = np.random.RandomState(seed & 0xFFFFFFFF).get_state()  # legacy seeding == init_genrand(seed)
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": key[1], "pos": key[2]}}

    def words(self, n: int) -> np.ndarray:
        """The next n raw 32-bit outputs (as uint64)."""
        return self._bits.random_raw(n)

    def int_range(self, begin: int, end: int) -> int:
        """`g_rand_int_range`: uniform integer in [begin, end) by rejection, then modulo."""
        dist = end - begin
        leftover = ((0x80000000 % dist) * 2) % dist if dist <= 0x80000000 else 0
        top = 0xFFFFFFFF - leftover if dist <= 0x80000000 else dist - 1
        while True:
            word = int(self.words(1)[0])
            if word <= top:
                return begin + word % dist

    def doubles(self, n: int) -> np.ndarray:
        """n draws of `g_rand_double` in [0, 1): two words each (the rare >= 1.0 retry is ignored)."""
        w = self.words(2 * n).astype(np.float64).reshape(n, 2)
        return (w[:, 0] / _TWO_POW_32 + w[:, 1]) / _TWO_POW_32


def _shuffled_order(count: int, rng: GRand) -> np.ndarray:
    """GEGL's drawing order: 5*count random transpositions of 0..count-1."""
    order = list(range(count))
    top = 0xFFFFFFFF - ((0x80000000 % count) * 2) % count
    need = 2 * count * _SHUFFLE_ROUNDS
    # GLib rejects a word above `top` and takes the next word of the stream: read the stream in order, in
    # blocks of at most as many words as are still needed, so no word is drawn that GLib would not draw (and
    # memory stays flat for millions of tiles)
    carry: list[int] = []
    while need:
        picks = carry + [w % count for w in rng.words(min(need, _BLOCK)).tolist() if w <= top]
        need -= len(picks) - len(carry)
        pairs = len(picks) // 2 * 2
        for i in range(0, pairs, 2):
            a, b = picks[i], picks[i + 1]
            order[a], order[b] = order[b], order[a]
        carry = picks[pairs:]
    return np.asarray(order, dtype=np.int64)


def tile_count(height: int, width: int, tile_size: float) -> tuple[int, int]:
    """GEGL's grid: (rows, cols) = ceil(size / tile_size); (rows + 1) x (cols + 1) tiles are drawn."""
    return int((height + tile_size - 1) / tile_size), int((width + tile_size - 1) / tile_size)


def _tile_geometry(
    height: int, width: int, tile_size: float, tile_saturation: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer corners (T, 4, 2) of every tile in drawing order and the (T, 2) integer pixel its colour comes from.

    Tiles depend on the whole image's size and the seed only, so any window of the image sees the same tiles.
    """
    rows, cols = tile_count(height, width, tile_size)
    count = (rows + 1) * (cols + 1)
    rng = GRand(seed)
    order = _shuffled_order(count, rng)
    corners = np.empty((count, 4, 2), np.int32)
    source = np.empty((count, 2), np.int32)
    half, eighth = tile_size / 2.0, tile_size / 8.0
    for start in range(0, count, _BLOCK):  # the stream is sequential, so blocks read it exactly as one call would
        block = order[start : start + _BLOCK]
        u = rng.doubles(5 * len(block)).reshape(len(block), 5)
        gi, gj = block // (cols + 1), block % (cols + 1)
        # g_rand_double_range(lo, hi) = r*hi - (r-1)*lo
        cx = gj * tile_size + tile_size / 4.0 - u[:, 0] * half
        cy = gi * tile_size + tile_size / 4.0 - u[:, 1] * half
        tw = (tile_size + (u[:, 2] * eighth - (u[:, 2] - 1) * -eighth)) * tile_saturation
        th = (tile_size + (u[:, 3] * eighth - (u[:, 3] - 1) * -eighth)) * tile_saturation
        theta = u[:, 4] * (2 * math.pi)
        # Corners as C ints: truncated when stored, after rotation and after translation.
        corner_x = np.trunc(np.stack([-tw / 2, tw / 2, tw / 2, -tw / 2], 1))
        corner_y = np.trunc(np.stack([-th / 2, -th / 2, th / 2, th / 2], 1))
        ct, st = np.cos(theta)[:, None], np.sin(theta)[:, None]
        rx = np.trunc(ct * corner_x - st * corner_y)
        ry = np.trunc(st * corner_x + ct * corner_y)
        corners[start : start + len(block), :, 0] = np.trunc(rx + cx[:, None])
        corners[start : start + len(block), :, 1] = np.trunc(ry + cy[:, None])
        source[start : start + len(block), 0] = np.trunc(np.clip(cy, 0, height - 1))
        source[start : start + len(block), 1] = np.trunc(np.clip(cx, 0, width - 1))
    return corners, source


def _scan_spans(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tile supersampled scanline spans [lo, hi) and each tile's integer bounding box (x0, y0, x1, y1)."""
    n = corners.shape[0]
    x0, y0 = corners[:, :, 0].min(1), corners[:, :, 1].min(1)
    x1, y1 = corners[:, :, 0].max(1), corners[:, :, 1].max(1)
    rows = int((y1 - y0).max()) * _SUPERSAMPLE
    sub_y = (y0 * _SUPERSAMPLE)[:, None] + np.arange(rows)[None, :]  # (T, R) absolute subrow
    lo = np.broadcast_to((x1 * _SUPERSAMPLE)[:, None], (n, rows)).astype(np.float64).copy()
    hi = np.broadcast_to((x0 * _SUPERSAMPLE)[:, None], (n, rows)).astype(np.float64).copy()
    pts = corners * _SUPERSAMPLE
    for k in range(4):
        a, b = pts[:, k - 1], pts[:, k]
        swap = a[:, 1] > b[:, 1]
        top = np.where(swap[:, None], b, a)
        bot = np.where(swap[:, None], a, b)
        dy = bot[:, 1] - top[:, 1]
        step = np.where(dy > 0, (bot[:, 0] - top[:, 0]) / np.maximum(dy, 1), 0.0)
        # The C loop accumulates x += step row by row; a sequential cumsum reproduces its rounding exactly.
        rel = sub_y - top[:, 1][:, None]
        start = top[:, 0] + 0.5 * step
        xs = np.cumsum(np.where(rel == 0, start[:, None], np.where(rel > 0, step[:, None], 0.0)), axis=1)
        on_edge = (rel >= 0) & (sub_y < bot[:, 1][:, None])
        xs = np.trunc(xs)  # the C code stores span ends in ints
        lo = np.where(on_edge, np.minimum(lo, xs), lo)
        hi = np.where(on_edge, np.maximum(hi, xs), hi)
    hi = np.maximum(hi, lo)  # empty rows cover nothing
    return lo, hi, np.stack([x0, y0, x1, y1], 1)


def _coverage(lo: np.ndarray, hi: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Fraction (T, H, W) of each box pixel covered by its tile's spans, 4x4 supersampled (GEGL's val).

    A subrow span [lo, hi) covers min(4, max(0, hi - 4c)) - min(4, max(0, lo - 4c)) subpixels of pixel column c:
    as a function of c that is a step of 4 falling to hi % 4 at c = hi // 4 (and the same for lo, subtracted),
    so each span adds four entries to a difference array over columns, and one cumulative sum per pixel row
    gives the counts, instead of clipping every subrow against every column.
    """
    n, rows = lo.shape
    cols = int((box[:, 2] - box[:, 0]).max())
    width = cols + 2
    left = (box[:, 0] * _SUPERSAMPLE)[:, None]
    lo_rel = np.clip(lo - left, 0, _SUPERSAMPLE * cols).astype(np.int64)
    hi_rel = np.clip(hi - left, 0, _SUPERSAMPLE * cols).astype(np.int64)
    pixel_row = (np.arange(n)[:, None] * (rows // _SUPERSAMPLE) + np.arange(rows)[None, :] // _SUPERSAMPLE) * width
    index, weight = [], []
    for v, sign in ((hi_rel, 1), (lo_rel, -1)):
        q, r = np.divmod(v, _SUPERSAMPLE)
        index += [pixel_row + q, pixel_row + q + 1]
        weight += [sign * (r - _SUPERSAMPLE), -sign * r]
    diff = np.bincount(np.concatenate([i.ravel() for i in index]), np.concatenate([w.ravel() for w in weight]),
                       minlength=n * (rows // _SUPERSAMPLE) * width)
    cov = np.cumsum(diff.reshape(n, rows // _SUPERSAMPLE, width), axis=2)[:, :, :cols]
    return cov.astype(np.float32) * np.float32(1.0 / _SUPERSAMPLE**2)


def _alpha(corners: np.ndarray, box: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Per-pixel blend weight (T, H, W): coverage times GEGL's 0.2..1 ramp along each tile's first edge."""
    first = corners[:, 0].astype(np.float64)
    edge = corners[:, 1] - corners[:, 0]
    length = np.hypot(edge[:, 0], edge[:, 1])
    safe = np.where(length > 0, length, 1.0)
    # Ramp = projection on the unit edge direction divided by the edge length (1 when the edge is degenerate).
    kx = np.where(length > 0, edge[:, 0] / safe / safe, 0.0)
    ky = np.where(length > 0, edge[:, 1] / safe / safe, 0.0)
    _, rows, cols = cov.shape
    px = box[:, 0:1] + np.arange(cols)[None, :] - first[:, 0:1]  # pixel x relative to the first corner
    py = box[:, 1:2] + np.arange(rows)[None, :] + 0.75 - first[:, 1:2]  # GEGL uses the last subrow's y
    ramp = (py * ky[:, None])[:, :, None] + (px * kx[:, None])[:, None, :]
    np.clip(ramp, 0.2, 1.0, out=ramp)
    if not (length > 0).all():
        ramp[length <= 0] = 1.0
    cov *= ramp.astype(np.float32)
    return cov


def _draw(canvas: np.ndarray, corners: np.ndarray, colours: np.ndarray, chunk: int = 512) -> None:
    """Blend every tile over `canvas` (H, W, 3 linear) in drawing order; weights are computed per chunk.

    `canvas` may be a window of the image: `corners` are then relative to its top-left pixel, and tiles outside
    it are skipped. The blend is canvas - alpha (canvas - colour) in float32, one OpenCV call per step on the
    tile's box (the same arithmetic numpy would do, several times faster on small boxes).
    """
    height, width = canvas.shape[:2]
    box_all = np.stack([corners[:, :, 0].min(1), corners[:, :, 1].min(1), corners[:, :, 0].max(1),
                        corners[:, :, 1].max(1)], 1)
    visible = (box_all[:, 0] < width) & (box_all[:, 2] > 0) & (box_all[:, 1] < height) & (box_all[:, 3] > 0)
    keep = np.nonzero(visible & (box_all[:, 2] > box_all[:, 0]) & (box_all[:, 3] > box_all[:, 1]))[0]
    scratch = np.empty((1, 1, 3), np.float32)
    for start in range(0, len(keep), chunk):
        ids = keep[start : start + chunk]
        part = corners[ids]
        lo, hi, box = _scan_spans(part)
        alpha = _alpha(part, box, _coverage(lo, hi, box))
        alpha3 = np.repeat(alpha[..., None], 3, axis=3)
        clipped = np.stack(
            [
                np.maximum(box[:, 0], 0),
                np.maximum(box[:, 1], 0),
                np.minimum(box[:, 2], width),
                np.minimum(box[:, 3], height),
            ],
            1,
        )
        offsets = (clipped[:, :2] - box[:, :2]).tolist()
        cols = [tuple(float(v) for v in c) for c in colours[ids]]
        for t, (x0, y0, x1, y1) in enumerate(clipped.tolist()):
            ox, oy = offsets[t]
            region = canvas[y0:y1, x0:x1]
            if scratch.shape != region.shape:
                scratch = np.empty(region.shape, np.float32)
            cv2.subtract(region, cols[t], dst=scratch)
            cv2.multiply(scratch, alpha3[t, oy : oy + y1 - y0, ox : ox + x1 - x0], dst=scratch)
            cv2.subtract(region, scratch, dst=region)


def check_params(
    tile_size: float, tile_saturation: float, bg_color: tuple[float, float, float, float]
) -> tuple[float, float, np.ndarray]:
    """GEGL's ranges, checked (one ValueError line naming the value); bg_color as a float32 RGBA array."""
    tile_size = _check_range("tile_size", tile_size, 0.0, 256.0)
    if tile_size <= 0.0:
        raise ValueError("tile_size must be > 0 (GEGL divides by it)")
    tile_saturation = _check_range("tile_saturation", tile_saturation, 0.0, 10.0)
    bg = np.asarray(bg_color, dtype=np.float32)
    if bg.shape != (4,):
        raise ValueError(f"bg_color must be 4 floats (linear RGBA), got {bg_color!r}")
    return tile_size, tile_saturation, bg


def cubism(
    image: np.ndarray,
    tile_size: float = 10.0,
    tile_saturation: float = 2.5,
    bg_color: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
    seed: int = 0,
) -> np.ndarray:
    """Repaint the image as randomly rotated, overlapping square tiles (GEGL `gegl:cubism`).

    Args:
        image: uint8 HxWx3 sRGB.
        tile_size: GEGL `tile-size`, average tile diameter in px; default 10.0, range (0, 256].
        tile_saturation: GEGL `tile-saturation`, factor by which tiles are enlarged (more overlap, less
            background); default 2.5, range [0, 10].
        bg_color: GEGL `bg-color` as linear-light RGBA floats in [0, 1] (GEGL's `rgba(...)` notation); default
            transparent black, which shows as black once alpha is dropped.
        seed: GEGL `seed`; the same seed gives GEGL's tiles. Default 0.

    Returns:
        uint8 HxWx3 sRGB; GEGL's alpha is dropped (what GIMP shows on a layer without alpha).
    """
    _check_image(image)
    tile_size, tile_saturation, bg = check_params(tile_size, tile_saturation, bg_color)
    h, w = image.shape[:2]
    corners, source = _tile_geometry(h, w, tile_size, tile_saturation, int(seed))
    colours = srgb_to_linear(image[source[:, 0], source[:, 1]])
    ybox = tile_rows(corners)
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, _STRIP // max(w, 1))
    for r in range(0, h, step):  # strips: the float canvas stays small at any image size, and strips agree
        out[r : r + step] = cubism_rows(corners, colours, bg, (r, min(h, r + step)), w, ybox)
    return out


def tile_rows(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each tile's first and end row (its box spans rows first .. end - 1)."""
    return corners[:, :, 1].min(1), corners[:, :, 1].max(1)


def cubism_rows(
    corners: np.ndarray,
    colours: np.ndarray,
    bg_color: np.ndarray,
    rows: tuple[int, int],
    width: int,
    ybox: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Rows [rows[0], rows[1]) of the cubism image whose tiles are `corners` (absolute, drawing order) with linear
    `colours`: every tile touching them, blended in GEGL's order, so any strip equals the whole image's rows."""
    first, end = tile_rows(corners) if ybox is None else ybox
    ids = np.nonzero((first < rows[1]) & (end > rows[0]))[0]
    part = corners[ids]
    part[:, :, 1] -= rows[0]
    # Only colour is blended: GEGL's straight-alpha blend never lets the alpha channel feed back into colour, and
    # the alpha it would output is dropped anyway.
    canvas = np.empty((rows[1] - rows[0], width, 3), dtype=np.float32)
    canvas[:] = np.asarray(bg_color, np.float32)[:3]
    _draw(canvas, part, colours[ids])
    return linear_to_srgb(canvas)
