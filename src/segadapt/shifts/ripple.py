"""Ripple: GEGL's `gegl:ripple` reimplemented with numpy, plus the same warp for label masks.

GEGL's algorithm, restated: output pixel (x, y) (integer indices) reads the input at
(x + s sin a, y + s cos a), where a is `angle` and the shift s is a wave of the position along the rotated axis
n = x cos a - y sin a: sine s = A sin(2 pi (n / period + phi)); sawtooth and triangle are the matching
piecewise-linear waves. The read uses a GEGL sampler in linear light, premultiplied alpha ("RGBA float"), with GEGL's
pixel-centre convention (pixel i covers [i, i+1)). Because the read position is the integer corner, linear and cubic
samplers sit half a pixel up-left of the pixel centre; we keep that for conformance. Cubic is GEGL's BC-spline with
B = 0.5, C = 0.25 (what its cubic sampler actually uses), not OpenCV's Keys cubic, so the taps are gathered here.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from segadapt.shifts.gegl import linear_to_srgb, srgb_to_linear
from segadapt.shifts.photocopy import _check_image, _check_range

SAMPLERS = ("nearest", "linear", "cubic")
WAVE_TYPES = ("sine", "triangle", "sawtooth")
ABYSS_POLICIES = ("none", "clamp", "loop", "black", "white")
_ABYSS_RGBA = {"none": (0.0, 0.0, 0.0, 0.0), "black": (0.0, 0.0, 0.0, 1.0), "white": (1.0, 1.0, 1.0, 1.0)}
_CUBIC_B, _CUBIC_C = 0.5, 0.25
_RGBA_LINEAR = np.dstack([np.repeat(srgb_to_linear(np.arange(256, dtype=np.uint8))[None, :, None], 3, 2),
                          np.arange(256, dtype=np.float32)[None, :, None] / np.float32(255.0)])
_RGBA_CODES = np.repeat(np.arange(256, dtype=np.float32)[None, :, None] / np.float32(255.0), 4, 2)
_STRIP = 1 << 18  # output pixels per strip: bounds the maps and tap buffers at any image size


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of GEGL's {list(choices)}")
    return value


def _effective_wave(
    height: int, width: int, amplitude: float, period: float, angle: float, tileable: bool
) -> tuple[float, float, float]:
    """(amplitude, period, angle in radians) after GEGL's degenerate-period and tileable adjustments."""
    rad = math.radians(angle)
    if period < 0.0001:
        return 0.0, 1.0, rad
    if tileable:
        # Snap the wave so a whole number of periods spans the image both ways, then derive angle and period back.
        n = round(math.cos(rad) * width / period)
        m = round(math.sin(rad) * height / period)
        if n == 0 and m == 0:
            return 0.0, period, rad
        rad = math.atan2(m * width, height * n)
        period = math.sqrt(height * height * width * width / (n * n * height * height + m * m * width * width))
    return amplitude, period, rad


def _wave_shift(along: np.ndarray, amplitude: float, period: float, phi: float, wave_type: str) -> np.ndarray:
    """Displacement s along the wave axis for positions `along` (float64)."""
    if wave_type == "sawtooth":
        lam = np.mod(along + period / 2 - phi * period, period)
        return amplitude * (2.0 * lam / period - 1.0)
    if wave_type == "triangle":
        lam = np.mod(along + period * 3 / 4 - phi * period, period)
        return amplitude * (np.abs(4.0 * lam / period - 2.0) - 1.0)
    return amplitude * np.sin(2.0 * math.pi * along / period + 2.0 * math.pi * phi)


def source_coords(
    height: int,
    width: int,
    amplitude: float = 25.0,
    period: float = 200.0,
    phi: float = 0.0,
    angle: float = 0.0,
    wave_type: str = "sine",
    tileable: bool = False,
    rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """GEGL read positions (x, y) for every output pixel, float64 each (pixel i spans [i, i+1)).

    `rows` = (first, stop) limits the output to those rows of the height x width image (absolute positions, so a
    strip or window reads exactly what the whole image would).
    """
    amplitude, period, rad = _effective_wave(height, width, amplitude, period, angle, tileable)
    first, stop = rows if rows is not None else (0, height)
    ys, xs = np.mgrid[first:stop, 0:width].astype(np.float64)
    # when the wave runs along x only, one row of shifts serves every row (the same values, computed once)
    along = xs[:1] * math.cos(rad) if math.sin(rad) == 0.0 else xs * math.cos(rad) - ys * math.sin(rad)
    shift = _wave_shift(along, amplitude, period, phi, wave_type)
    return xs + shift * math.sin(rad), ys + shift * math.cos(rad)


def _index_map(idx: np.ndarray, size: int, policy: str) -> np.ndarray:
    """Integer pixel indices -> indices into the source padded by one constant pixel per side."""
    if policy == "clamp":
        return np.clip(idx, 0, size - 1) + 1
    if policy == "loop":
        return np.mod(idx, size) + 1
    return np.clip(idx, -1, size) + 1  # out of range -> the constant pad pixel


def _bc_inner(x: np.ndarray) -> np.ndarray:
    """BC-spline (B=0.5, C=0.25) for |x| <= 1."""
    b, c = _CUBIC_B, _CUBIC_C
    return ((12 - 9 * b - 6 * c) / 6 * x + (-18 + 12 * b + 6 * c) / 6) * x * x + (6 - 2 * b) / 6


def _bc_outer(x: np.ndarray) -> np.ndarray:
    """BC-spline (B=0.5, C=0.25) for 1 <= |x| < 2."""
    b, c = _CUBIC_B, _CUBIC_C
    return (((-b - 6 * c) / 6 * x + (6 * b + 30 * c) / 6) * x + (-12 * b - 48 * c) / 6) * x + (8 * b + 24 * c) / 6


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Weights of the taps at offsets -1, 0, 1, 2 from the floor sample, for fractions t in [0, 1)."""
    return [_bc_outer(1 + t), _bc_inner(t), _bc_inner(1 - t), _bc_outer(2 - t)]


def _sample_labels(padded: np.ndarray, sx: np.ndarray, sy: np.ndarray, policy: str) -> np.ndarray:
    """Nearest read of a 1-px-padded HxW array (any dtype) at GEGL positions (floor, single precision)."""
    height, width = padded.shape[0] - 2, padded.shape[1] - 2
    ix = _index_map(np.floor(sx.astype(np.float32)).astype(np.int64), width, policy)
    iy = _index_map(np.floor(sy.astype(np.float32)).astype(np.int64), height, policy)
    return padded[iy, ix]


def _taps(pos: np.ndarray, sampler: str) -> tuple[np.ndarray, tuple[int, ...], list[np.ndarray]]:
    """Floor index, tap offsets and float32 tap weights of GEGL's sampler along one axis (pixel centres at +0.5)."""
    if sampler == "linear":  # GEGL's linear sampler takes the position in single precision
        pos = pos.astype(np.float32)
    u = pos - 0.5
    f = np.floor(u)
    t = (u - f).astype(np.float32)
    if sampler == "linear":
        return f.astype(np.int64), (0, 1), [1 - t, t]
    return f.astype(np.int64), (-1, 0, 1, 2), _cubic_weights(t)


class _Source:
    """A window of the linear-light source (rows top .. top + h of a full_h x W image) and its abyss policy.

    Reads take absolute integer pixel indices: the policy maps them into the image (clamp, loop) or marks them
    outside (constant fills); the window must hold every row read, which the caller's halo guarantees.
    """

    def __init__(self, pixels: np.ndarray, top: int, full_h: int, policy: str) -> None:
        self.pixels, self.top, self.full_h, self.policy = pixels, top, full_h, policy
        channels = pixels.shape[2]
        self.fill = tuple(_ABYSS_RGBA.get(policy, (0.0, 0.0, 0.0, 0.0))[:channels])
        self.wide = max(pixels.shape[:2]) >= 32000  # int16 maps address at most 32767

    def index(self, idx: np.ndarray, size: int, offset: int = 0) -> np.ndarray:
        """Policy-mapped indices relative to the window (out of the image: -1 or past the end, i.e. the fill)."""
        if self.policy == "clamp":
            idx = np.clip(idx, 0, size - 1)
        elif self.policy == "loop":
            idx = np.mod(idx, size)
        else:
            return np.where((idx < 0) | (idx >= size), -1, idx - offset)
        return idx - offset

    def gather(self, ix: np.ndarray, iy: np.ndarray, pixels: np.ndarray | None = None, fill: tuple = ()) -> np.ndarray:
        """Exact integer reads pixels[iy, ix] (window-relative, -1 = fill) by cv2.remap with nearest sampling."""
        dtype = np.float32 if self.wide else np.int16
        maps = cv2.merge([ix.astype(dtype), iy.astype(dtype)]) if not self.wide else None
        src = self.pixels if pixels is None else pixels
        fill = fill or self.fill or 0
        if maps is None:
            return cv2.remap(src, ix.astype(np.float32), iy.astype(np.float32), cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
        return cv2.remap(src, maps, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def _pad_columns(src: _Source, pad: int) -> np.ndarray:
    """The window with `pad` columns added each side as the abyss policy reads them (edge, wrap or fill)."""
    border = {"clamp": cv2.BORDER_REPLICATE, "loop": cv2.BORDER_WRAP}.get(src.policy, cv2.BORDER_CONSTANT)
    if src.pixels.shape[1] < pad:  # OpenCV wraps at most once
        width = src.pixels.shape[1]
        cols = src.index(np.arange(-pad, width + pad), width)
        return src.gather(*np.meshgrid(cols, np.arange(src.pixels.shape[0])))
    return cv2.copyMakeBorder(src.pixels, 0, 0, pad, pad, border, value=src.fill or 0)


def _sample_strip(src: _Source, width: int, sx: np.ndarray, sy: np.ndarray, sampler: str) -> np.ndarray:
    """Resample a strip of output rows at GEGL positions with GEGL's sampler: the general path.

    Each tap is an exact integer gather; the taps are weighted here, so any kernel can be used.
    """
    if sampler == "nearest":
        ix = src.index(np.floor(sx.astype(np.float32)).astype(np.int64), width)
        iy = src.index(np.floor(sy.astype(np.float32)).astype(np.int64), src.full_h, src.top)
        return src.gather(ix, iy)
    fx, offsets, wx = _taps(sx, sampler)
    fy, _, wy = _taps(sy, sampler)
    cols = [src.index(fx + o, width) for o in offsets]
    shape = sx.shape + (src.pixels.shape[2],)
    out = np.zeros(shape, np.float32)
    row = np.empty(shape, np.float32)
    scratch = np.empty(shape, np.float32)
    for oy, wyj in zip(offsets, wy):
        iy = src.index(fy + oy, src.full_h, src.top)
        row.fill(0.0)
        for ix, wxi in zip(cols, wx):
            np.multiply(src.gather(ix, iy), wxi[..., None], out=scratch)
            row += scratch
        np.multiply(row, wyj[..., None], out=scratch)
        out += scratch
    return out


def _sample_vertical(src: _Source, rowwise: np.ndarray, fill: tuple, sy: np.ndarray, sampler: str) -> np.ndarray:
    """The same resampling when every read lies on its own column (angle 0): the horizontal taps then sit at a
    fixed half pixel, so `rowwise` (the window filtered along rows once) is read along columns only.

    Same arithmetic in the same order as `_sample_strip`, so the result is identical, with a quarter of the reads.
    """
    fy, offsets, wy = _taps(sy, sampler)
    ix = np.broadcast_to(np.arange(sy.shape[1]), sy.shape)
    out = np.zeros(sy.shape + (rowwise.shape[2],), np.float32)
    scratch = np.empty_like(out)
    for oy, wyj in zip(offsets, wy):
        iy = src.index(fy + oy, src.full_h, src.top)
        np.multiply(src.gather(ix, iy, rowwise, fill), wyj[..., None], out=scratch)
        out += scratch
    return out


def _rowwise(window: np.ndarray, linear, src: _Source, sampler: str) -> tuple[np.ndarray, tuple]:
    """The window (uint8, converted to linear by `linear` strip by strip) filtered along rows with the sampler's
    weights at fraction 0.5 (floor(x - 0.5) = x - 1), in `_sample_strip`'s order; and what a row outside the
    image reads as (the fill, weighted the same way). Only this result is kept, not the linear window."""
    _, offsets, weights = _taps(np.ones(1), sampler)  # any integer x reads at x, i.e. fraction 0.5
    height, width = window.shape[:2]
    channels = src.pixels.shape[2]
    out = np.zeros((height, width, channels), np.float32)
    fill = np.zeros(channels, np.float32)
    edge = np.asarray(src.fill, np.float32)
    for w in weights:
        fill += edge * w[0]
    step = max(1, _STRIP // max(width, 1))
    for r in range(0, height, step):
        part = _Source(linear(window[r : r + step]), 0, 0, src.policy)
        padded = _pad_columns(part, 2)  # padded column c + 2 = image column c
        scratch = np.empty(part.pixels.shape, np.float32)
        for o, w in zip(offsets, weights):  # image column x - 1 + o
            np.multiply(padded[:, 1 + o : 1 + o + width], w[0], out=scratch)
            out[r : r + step] += scratch
    return out, tuple(float(v) for v in fill)


def _validate(amplitude: float, period: float, phi: float, angle: float, wave_type: str, abyss_policy: str) -> None:
    _check_range("amplitude", amplitude, 0.0, 1000.0)
    _check_range("period", period, 0.0, 1000.0)
    _check_range("phi", phi, -1.0, 1.0)
    _check_range("angle", angle, -180.0, 180.0)
    _check_choice("wave_type", wave_type, WAVE_TYPES)
    _check_choice("abyss_policy", abyss_policy, ABYSS_POLICIES)


def ripple(
    image: np.ndarray,
    amplitude: float = 25.0,
    period: float = 200.0,
    phi: float = 0.0,
    angle: float = 0.0,
    sampler_type: str = "cubic",
    wave_type: str = "sine",
    abyss_policy: str = "none",
    tileable: bool = False,
    *,
    linear_light: bool = True,
    phase: float | None = None,
    sampler: str | None = None,
) -> np.ndarray:
    """Displace pixels in a ripple pattern (GEGL `gegl:ripple`).

    Args:
        image: uint8 HxWx3 sRGB.
        amplitude: GEGL `amplitude`, peak displacement in px; default 25.0, range [0, 1000]. 0 returns the input
            unchanged (GEGL would still resample it half a pixel off with the chosen sampler).
        period: GEGL `period`, wavelength in px along the wave axis; default 200.0, range [0, 1000]
            (< 0.0001 means no ripple, as in GEGL).
        phi: GEGL `phi` ("Phase shift"), in periods; default 0.0, range [-1, 1].
        angle: GEGL `angle`, degrees counter-clockwise; 0 = vertical displacement varying along x; default 0.0,
            range [-180, 180].
        sampler_type: GEGL `sampler-type`: "nearest", "linear" or "cubic" (default; GEGL's BC-spline B=0.5,
            C=0.25). GEGL's "nohalo"/"lohalo" are not reimplemented.
        wave_type: GEGL `wave-type`: "sine" (default), "triangle" or "sawtooth".
        abyss_policy: GEGL `abyss-policy` for reads outside the image: "none" (default; transparent, which shows
            as black once alpha is dropped), "clamp", "loop", "black", "white".
        tileable: GEGL `tileable`: snap period/angle so the result tiles; default False.
        linear_light: resample in linear light as GEGL does (default True); False resamples the sRGB codes,
            slightly faster but not GEGL.
        phase, sampler: aliases of `phi` and `sampler_type` (GIMP's UI words), kept for existing callers.

    Returns:
        uint8 HxWx3 sRGB. Resampling is done in linear light with premultiplied alpha, as GEGL does; the alpha
        GEGL would output is dropped (what GIMP shows on a layer without alpha).
    """
    _check_image(image)
    phi = phi if phase is None else phase
    sampler_type = sampler_type if sampler is None else sampler
    _validate(amplitude, period, phi, angle, wave_type, abyss_policy)
    _check_choice("sampler_type", sampler_type, SAMPLERS)
    if amplitude == 0.0 or period < 0.0001:
        return image.copy()
    wave = {"amplitude": amplitude, "period": period, "phi": phi, "angle": angle, "wave_type": wave_type,
            "tileable": tileable}
    return ripple_rows(image, 0, image.shape[0], (0, image.shape[0]), wave, sampler_type, abyss_policy, linear_light)


def ripple_reach(amplitude: float, sampler_type: str = "cubic") -> int:
    """Rows a window of output needs above and below it in the source: the largest displacement plus the taps."""
    return int(math.ceil(abs(amplitude))) + (3 if sampler_type == "cubic" else 2)


def ripple_rows(
    window: np.ndarray,
    top: int,
    full_height: int,
    rows: tuple[int, int],
    wave: dict,
    sampler_type: str = "cubic",
    abyss_policy: str = "none",
    linear_light: bool = True,
) -> np.ndarray:
    """Output rows [rows[0], rows[1]) of `ripple` on a full_height-row image of which `window` (uint8, full width)
    holds rows top .. top + len(window); positions are absolute, so windows agree with the whole image.

    The window must hold every row read (`ripple_reach` rows beyond `rows`, or the image edge); "loop" reads wrap
    to the far side, so it needs the whole image. `wave`: amplitude, period, phi, angle, wave_type, tileable.
    Works strip by strip, so memory stays a few times the window's.
    """
    width = window.shape[1]
    _, _, rad = _effective_wave(full_height, width, wave["amplitude"], wave["period"], wave["angle"], wave["tileable"])
    def linear(rows: np.ndarray) -> np.ndarray:
        if abyss_policy == "none":  # transparent abyss: carry premultiplied alpha, un-premultiplied as babl does
            lut = _RGBA_LINEAR if linear_light else _RGBA_CODES
            return cv2.LUT(cv2.cvtColor(rows, cv2.COLOR_RGB2RGBA), lut)  # opaque: alpha 255 -> 1.0
        return srgb_to_linear(rows) if linear_light else rows / np.float32(255.0)

    separable = math.sin(rad) == 0.0 and math.cos(rad) == 1.0 and sampler_type != "nearest"
    if separable:  # only the row-filtered window is kept
        shape = _Source(np.empty((1, 1, 4 if abyss_policy == "none" else 3), np.float32), top, full_height,
                        abyss_policy)
        rowwise, fill = _rowwise(window, linear, shape, sampler_type)
        src = _Source(rowwise, top, full_height, abyss_policy)
    else:
        rowwise, fill = None, ()
        src = _Source(linear(window), top, full_height, abyss_policy)
    out = np.empty((rows[1] - rows[0], width, 3), np.uint8)
    step = max(1, _STRIP // max(width, 1))
    for r in range(rows[0], rows[1], step):
        stop = min(rows[1], r + step)
        sx, sy = source_coords(full_height, width, **wave, rows=(r, stop))
        if rowwise is not None:
            part = _sample_vertical(src, rowwise, fill, sy, sampler_type)
        else:
            part = _sample_strip(src, width, sx, sy, sampler_type)
        out[r - rows[0] : stop - rows[0]] = _finish(part, abyss_policy, linear_light)
    return out


def _finish(sampled: np.ndarray, abyss_policy: str, linear_light: bool) -> np.ndarray:
    """Resampled linear (premultiplied when the abyss is transparent) pixels -> uint8 sRGB, alpha dropped."""
    if abyss_policy != "none":  # every read is opaque (image, edge, wrap or an opaque fill): colour only
        rgb = sampled
    else:
        # babl replaces |alpha| < 1/65536 by +-1/65536 (sign kept), so reads that fell just outside the image
        # (alpha ~0, or < 0 from cubic's negative lobe) keep their colour.
        floor = np.float32(1.0 / 65536)
        alpha = sampled[:, :, 3:]
        alpha = np.where(np.abs(alpha) > floor, alpha, np.where(alpha < 0, -floor, floor))
        rgb = sampled[:, :, :3] / alpha
    if linear_light:
        return linear_to_srgb(rgb)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def ripple_mask(
    mask: np.ndarray,
    amplitude: float = 25.0,
    period: float = 200.0,
    phi: float = 0.0,
    angle: float = 0.0,
    wave_type: str = "sine",
    abyss_policy: str = "none",
    tileable: bool = False,
    ignore_index: int = 255,
    *,
    phase: float | None = None,
) -> np.ndarray:
    """Move a label mask (HxW integer) exactly as `ripple` moves the image, with nearest sampling.

    Labels must not be interpolated, so each output pixel takes the label of the input pixel containing GEGL's
    read position (floor), which is the pixel nearest to where the linear/cubic samplers centre their read.
    Reads outside the image give `ignore_index` for the "none", "black" and "white" abyss policies (there is no
    label there); "clamp" and "loop" follow the image. Parameters are those of `ripple` (`phase` = `phi`).
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError(f"expected an HxW label mask, got {getattr(mask, 'shape', type(mask).__name__)}")
    phi = phi if phase is None else phase
    _validate(amplitude, period, phi, angle, wave_type, abyss_policy)
    if amplitude == 0.0 or period < 0.0001:
        return mask.copy()
    h, w = mask.shape
    sx, sy = source_coords(h, w, amplitude, period, phi, angle, wave_type, tileable)
    padded = np.full((h + 2, w + 2), ignore_index, dtype=mask.dtype)
    padded[1:-1, 1:-1] = mask
    return _sample_labels(padded, sx, sy, abyss_policy)
