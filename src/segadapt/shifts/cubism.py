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
        words = rng.words(min(need, _BLOCK))
        picks = carry + (words[words <= top] % count).tolist()
        need -= len(picks) - len(carry)
        pairs = len(picks) // 2 * 2
        it = iter(picks[:pairs])
        for a, b in zip(it, it):  # consecutive picks, two at a time
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


def _edges(corners: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each tile's edges as GEGL walks them, (edge, tile) arrays in subpixels: first subrow (relative to subrow 0
    of pixel row `origin`), number of subrows, x at the first subrow and x step per subrow."""
    pts = np.ascontiguousarray(corners.transpose(1, 2, 0), dtype=np.int64) * _SUPERSAMPLE  # (corner, x/y, tile)
    prev = pts[[3, 0, 1, 2]]  # edge k runs from corner k - 1 to corner k
    swap = (prev[:, 1] > pts[:, 1])[:, None]
    top, bot = np.where(swap, pts, prev), np.where(swap, prev, pts)
    dy = bot[:, 1] - top[:, 1]
    step = np.where(dy > 0, (bot[:, 0] - top[:, 0]) / np.maximum(dy, 1), 0.0)
    return top[:, 1] - _SUPERSAMPLE * origin, dy, top[:, 0] + 0.5 * step, step


def _spans(corners: np.ndarray, origin: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled scanline spans [lo, hi) (rows, T) of each tile, from subrow 0 of pixel row `origin` (T,), which
    must not be below the tile's top; subrows the tile misses come out empty (lo == hi).

    GEGL walks each edge from its top subrow adding the slope once per subrow, stores the running x in an int and
    keeps each subrow's min and max over the edges crossing it. A tile's outline falls from its top corner to its
    bottom corner on both sides (opposite corners are negatives of each other before the truncations, which keep
    order), so two edges cross each subrow, one per side. Each side's x is walked subrow by subrow for all tiles
    at once, switching to the side's next edge (its own start and step, as GEGL walks it) on the pixel row where
    that edge begins: the same additions in the same order, so the same rounding. Truncation is applied after the
    min and max (it is monotone, so it commutes with them).
    """
    n = len(corners)
    offset, dy, start, step = _edges(corners, origin)
    y = corners[:, :, 1].T
    first, last = y.argmin(0), y.argmax(0)
    rolled = np.take_along_axis(y, (first + np.arange(4)[:, None]) % 4, 0)  # corner y from the top corner on
    if ((rolled[2] < rolled[1]) & (rolled[3] > rolled[2])).any():  # a fall then a rise: not one edge per side
        raise AssertionError("a cubism tile's outline is not monotone in y")
    # edge k joins corners k - 1 and k: the edges from the top corner forwards to the bottom one form side 1
    forward = (np.arange(4)[:, None] - first - 1) % 4 < (last - first) % 4
    slot = forward * n + np.arange(n)
    live = (dy > 0) & (offset < rows)
    bottom = _SUPERSAMPLE * (y.max(0) - origin)  # both sides stop (at equal x, an empty span) below the tile
    stop = bottom < rows
    at = np.concatenate([offset[live], bottom[stop], bottom[stop]])
    order = np.argsort(at, kind="stable")
    at = at[order]
    where = np.concatenate([slot[live], np.nonzero(stop)[0], n + np.nonzero(stop)[0]])[order]
    x_at = np.concatenate([start[live], np.zeros(2 * stop.sum())])[order]
    step_at = np.concatenate([step[live], np.zeros(2 * stop.sum())])[order]
    bounds = np.searchsorted(at, np.arange(0, rows + 1, _SUPERSAMPLE)).tolist()
    xs = np.zeros((rows, 2 * n))
    walk = np.zeros(2 * n)
    for p in range(rows // _SUPERSAMPLE):
        r = _SUPERSAMPLE * p
        if r:
            np.add(xs[r - 1], walk, out=xs[r])
        a, b = bounds[p], bounds[p + 1]
        if b > a:
            xs[r, where[a:b]] = x_at[a:b]
            walk[where[a:b]] = step_at[a:b]
        for k in range(r + 1, r + _SUPERSAMPLE):
            np.add(xs[k - 1], walk, out=xs[k])
    lo = np.minimum(xs[:, :n], xs[:, n:])
    hi = np.maximum(xs[:, :n], xs[:, n:])
    return np.trunc(lo, out=lo), np.trunc(hi, out=hi)


def _window_spans(corners: np.ndarray, wy: np.ndarray, wx: np.ndarray, wh: int, ww: int, gap: int) -> np.ndarray:
    """Span-table rows (T, 8, wh) giving each tile's coverage of its window (top-left wy, wx; wh x ww): for each
    pixel row, its four subrows' span ends `hi` and then `lo + gap`, relative to the window and clipped to it.
    The first rows of this are the same for a smaller window at the same top-left.

    A tile whose top the canvas cuts off has edges starting above its window; their walk starts at the tile's top.
    Clipping to the window changes no coverage inside it, and subrows the tile misses become empty (lo == hi).
    """
    n, sub = len(corners), _SUPERSAMPLE * wh
    y0 = corners[:, :, 1].min(1)
    cut = np.nonzero(y0 < wy)[0]
    if len(cut):
        lo, hi = np.empty((sub, n)), np.empty((sub, n))
        whole = np.nonzero(y0 >= wy)[0]
        lo[:, whole], hi[:, whole] = _spans(corners[whole], wy[whole], sub)
        shift = _SUPERSAMPLE * (wy[cut] - y0[cut])
        per = max(1, _SPAN_ROWS // (sub + int(shift.max())))  # their walks are longer: fewer at a time
        for g in range(0, len(cut), per):
            part, moved = cut[g : g + per], shift[g : g + per]
            lo_cut, hi_cut = _spans(corners[part], y0[part], sub + int(moved.max()))
            rows = moved[None, :] + np.arange(sub)[:, None]
            lo[:, part] = np.take_along_axis(lo_cut, rows, 0)
            hi[:, part] = np.take_along_axis(hi_cut, rows, 0)
    else:
        lo, hi = _spans(corners, wy, sub)
    left = _SUPERSAMPLE * wx
    for v in (lo, hi):
        v -= left
        np.clip(v, 0, _SUPERSAMPLE * ww, out=v)
    np.maximum(hi, lo, out=hi)
    lo += gap
    kind = np.int16 if gap + _SUPERSAMPLE * ww <= np.iinfo(np.int16).max else np.intp
    index = np.empty((n, 2 * _SUPERSAMPLE, wh), kind)
    index[:, :_SUPERSAMPLE] = hi.astype(kind).reshape(wh, _SUPERSAMPLE, n).transpose(2, 1, 0)
    index[:, _SUPERSAMPLE:] = lo.astype(kind).reshape(wh, _SUPERSAMPLE, n).transpose(2, 1, 0)
    return index


_TABLE_LIMIT = 1 << 20  # span-table bytes kept as an array; wider windows read a strided view instead


def _span_table(cols: int) -> tuple[np.ndarray, int]:
    """Table of int8 rows F[v] = clip(v - 4c, 0, 4) over pixel columns c < cols (subpixels of column c left of
    subpixel v) for v in 0..4 cols, and -F[v] at row v + the returned offset.

    A span [lo, hi) covers F[hi] - F[lo] subpixels of each column, so a pixel row's coverage is eight rows summed.
    Every entry depends on v - 4c only: the table is a strided view of two short lines, copied when small.
    """
    reach = _SUPERSAMPLE * (cols - 1)  # F[v, c] = line[v - 4c + reach]
    line = np.clip(np.arange(-reach, _SUPERSAMPLE * cols + 1), 0, _SUPERSAMPLE).astype(np.int8)
    gap = len(line)  # -F starts past the end of F's line, so the two never share memory
    both = np.concatenate([line, -line])
    table = np.lib.stride_tricks.as_strided(
        both[reach:], shape=(gap + _SUPERSAMPLE * cols + 1, cols), strides=(1, -_SUPERSAMPLE), writeable=False
    )
    return (table.copy() if table.size <= _TABLE_LIMIT else table), gap


def _ramp_terms(corners: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per tile: the first corner (x, y) and the first edge divided by its squared length (x, y), so that the ramp
    at (px, py) relative to the corner is px kx + py ky; zero terms for a degenerate edge, whose ramp is 1."""
    first = corners[:, 0].astype(np.float64)
    edge = corners[:, 1] - corners[:, 0]
    length = np.hypot(edge[:, 0], edge[:, 1])
    safe = np.where(length > 0, length, 1.0)
    kx = np.where(length > 0, edge[:, 0] / safe / safe, 0.0)
    ky = np.where(length > 0, edge[:, 1] / safe / safe, 0.0)
    return first[:, 0], first[:, 1], kx, ky, length <= 0


def _window_alpha(
    index: np.ndarray, ramp: tuple[np.ndarray, ...], wy: np.ndarray, wx: np.ndarray, ww: int, lines: np.ndarray
) -> np.ndarray:
    """Blend weight (T, wh, ww) of each tile over its window (top-left wy, wx): GEGL's 4x4 coverage of the pixel
    (`index` from `_window_spans` into the span table `lines`) times the tile's 0.2..1 ramp along its first edge
    (`ramp` from `_ramp_terms`), with GEGL's rounding."""
    n, wh = index.shape[0], index.shape[2]
    parts = np.take(lines, index, axis=0) if lines.flags.c_contiguous else lines[index]  # (T, 8, wh, ww)
    parts = parts[:, :4] + parts[:, 4:]
    parts = parts[:, :2] + parts[:, 2:]
    count = parts[:, 0] + parts[:, 1]  # subpixels covered, 0..16
    fx, fy, kx, ky, flat = ramp
    px = wx[:, None] + np.arange(ww)[None, :] - fx[:, None]  # pixel relative to the first corner
    py = wy[:, None] + np.arange(wh)[None, :] + 0.75 - fy[:, None]  # GEGL uses the last subrow's y
    # GEGL: alpha = float32(coverage / 16) * float32(clip(ramp, 0.2, 1)). Dividing by 16 is exact (and commutes
    # with rounding to float32), and clipping after the rounding gives the same values (rounding is monotone), so
    # the ramp is summed pre-divided, rounded, clipped and multiplied by the subpixel count, one pass each.
    scale = 1.0 / _SUPERSAMPLE**2
    alpha = np.empty((n, wh, ww), np.float32)
    np.add((py * (ky * scale)[:, None])[:, :, None], (px * (kx * scale)[:, None])[:, None, :], out=alpha,
           casting="same_kind")
    np.clip(alpha, np.float32(0.2) * np.float32(scale), np.float32(scale), out=alpha)
    if flat.any():
        alpha[flat] = scale
    alpha *= count
    return alpha


def _waves(wy: np.ndarray, wx: np.ndarray, wh: int, ww: int) -> np.ndarray:
    """Wave of each tile (drawing order kept): tiles of one wave have disjoint wh x ww windows (top-left wy, wx),
    and a tile's wave is above that of every earlier tile whose window it meets, so blending wave by wave (any
    order within a wave, any smaller windows at the same top-left) keeps GEGL's order.

    Windows are binned in cells of their own size (each meets at most 2 x 2 cells); sharing a cell stands in for
    meeting, which is conservative and one max over four cells per tile.
    """
    cy0, cy1 = wy // wh, (wy + wh - 1) // wh
    cx0, cx1 = wx // ww, (wx + ww - 1) // ww
    ncols = int(cx1.max()) + 1
    cells = np.stack([cy0 * ncols + cx0, cy0 * ncols + cx1, cy1 * ncols + cx0, cy1 * ncols + cx1], 1)
    level = [0] * (int(cells.max()) + 1)
    waves = []
    for a, b, c, d in cells.tolist():
        v = max(level[a], level[b], level[c], level[d]) + 1
        level[a] = level[b] = level[c] = level[d] = v
        waves.append(v)
    return np.asarray(waves, dtype=np.int64)


_SPAN_ROWS = 1 << 18  # tile subrows whose spans are walked at a time
_ALPHA_PIXELS = 1 << 16  # window pixels whose weights are computed at a time
_BLEND_PIXELS = 1 << 13  # window pixels blended at a time (small enough to stay in cache)


def _chunks(order: np.ndarray, waves: np.ndarray, hs: np.ndarray, ws: np.ndarray, per_span: int) -> list[tuple]:
    """Split the tiles (`order`, wave by wave) into chunks whose weights are computed together over one window
    size (the largest visible box among them), each split into batches of one wave blended together; chunks do
    not cross the blocks of `per_span` tiles whose spans are walked together. Returns (start, end, window height,
    window width, batches)."""
    heights, widths, levels = hs[order].tolist(), ws[order].tolist(), waves[order].tolist()
    chunks = []
    for block in range(0, len(order), per_span):
        end = min(len(order), block + per_span)
        start, h, w = block, heights[block], widths[block]
        for i in range(block + 1, end + 1):
            if i < end:
                nh, nw = max(h, heights[i]), max(w, widths[i])
                if (i - start + 1) * nh * nw <= _ALPHA_PIXELS:
                    h, w = nh, nw
                    continue
            per_blend = max(1, _BLEND_PIXELS // (h * w))
            batches, a = [], start
            for b in range(start + 1, i + 1):
                if b == i or levels[b] != levels[a] or b - a == per_blend:
                    batches.append((a, b))
                    a = b
            chunks.append((start, i, h, w, batches))
            if i < end:
                start, h, w = i, heights[i], widths[i]
    return chunks


def _draw(corners: np.ndarray, colours: np.ndarray, height: int, width: int, background: np.ndarray) -> np.ndarray:
    """A (height, width, 3) linear float32 canvas of `background` with every tile blended over it as GEGL does,
    in drawing order.

    The canvas may be a window of the image: `corners` are then relative to its top-left pixel, and tiles outside
    it are skipped. Each tile is blended as canvas - alpha (canvas - colour) in float32 over a window from the
    top-left of its visible box (alpha is 0 beyond the tile, which leaves those pixels as they are; the canvas
    has a margin for windows reaching past its edge, and the result is a view of it). Tiles whose largest
    windows are disjoint commute, so tiles are grouped into waves, and a wave's tiles are blended a batch at a
    time with a handful of numpy calls instead of a Python loop over tiles. Within a wave tiles go by size (up
    and down in turn), so that a chunk of consecutive tiles shares a window size close to each one's.
    """
    x0, y0 = corners[:, :, 0].min(1), corners[:, :, 1].min(1)
    x1, y1 = corners[:, :, 0].max(1), corners[:, :, 1].max(1)
    keep = np.nonzero((x0 < width) & (x1 > 0) & (y0 < height) & (y1 > 0) & (x1 > x0) & (y1 > y0))[0]
    if not len(keep):
        canvas = np.empty((height, width, 3), np.float32)
        canvas[:] = background
        return canvas
    corners, colours = corners[keep], colours[keep]
    top, left = np.maximum(y0[keep], 0).astype(np.intp), np.maximum(x0[keep], 0).astype(np.intp)
    hs, ws = np.minimum(y1[keep], height) - top, np.minimum(x1[keep], width) - left
    wh, ww = int(hs.max()), int(ws.max())
    waves = _waves(top, left, wh, ww)
    size = np.maximum(hs, ws) * (wh * ww + 1) + hs * ws
    order = np.lexsort((np.where(waves % 2, -size, size), waves))
    ramp = _ramp_terms(corners)
    plane = np.empty((height + wh - 1, width + ww - 1, 3), np.float32)
    plane[:] = background
    lines, gap = _span_table(ww)
    tables: dict[int, np.ndarray] = {}
    views: dict[tuple[int, int], np.ndarray] = {}
    per_span = max(1, _SPAN_ROWS // (_SUPERSAMPLE * wh))
    for start, end, h, w, batches in _chunks(order, waves, hs, ws, per_span):
        if start % per_span == 0:
            ids = order[start : start + per_span]
            index = _window_spans(corners[ids], top[ids], left[ids], wh, ww, gap)
        if w not in tables:  # the table for narrower windows: its first columns (kept if small, else a view)
            table = lines[:, :w]
            cached = sum(t.nbytes for t in tables.values() if t.flags.c_contiguous)
            tables[w] = table.copy() if cached + table.size <= _TABLE_LIMIT else table
        if (h, w) not in views:
            s0, s1, s2 = plane.strides
            views[h, w] = np.lib.stride_tricks.as_strided(
                plane, shape=(height, width, h, 3 * w), strides=(s0, s1, s0, s2)
            )
        ids = order[start:end]
        part = index[start % per_span : end - start + start % per_span, :, :h]
        alpha = _window_alpha(part, tuple(r[ids] for r in ramp), top[ids], left[ids], w, tables[w])
        alpha3 = cv2.merge([alpha.reshape(-1, w)] * 3).reshape(len(ids), h, 3 * w)
        colour3 = np.broadcast_to(colours[ids][:, None, :], (len(ids), w, 3)).reshape(len(ids), 1, 3 * w)
        windows = views[h, w]
        for a, b in batches:
            ys, xs = top[order[a:b]], left[order[a:b]]
            region = windows[ys, xs]
            diff = np.subtract(region, colour3[a - start : b - start])
            diff *= alpha3[a - start : b - start]
            region -= diff
            windows[ys, xs] = region
    return plane[:height, :width]


def check_params(
    tile_size: float, tile_saturation: float, bg_color: tuple[float, float, float, float]
) -> tuple[float, float, np.ndarray]:
    """GEGL's ranges, checked (one ValueError line naming the value); bg_color as a float32 RGBA array."""
    tile_size = _check_range("tile_size", tile_size, 0.0, 256.0)
    if tile_size <= 0.0:
        raise ValueError("tile_size must be > 0 (GEGL divides by it)")
    tile_saturation = _check_range("tile_saturation", tile_saturation, 0.0, 10.0)
    bg = np.asarray(bg_color, dtype=np.float32)
    if bg.shape != (4,) or not np.isfinite(bg).all():
        raise ValueError(f"bg_color must be 4 finite floats (linear RGBA), got {bg_color!r}")
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
    return linear_to_srgb(_draw(part, colours[ids], rows[1] - rows[0], width, np.asarray(bg_color, np.float32)[:3]))
