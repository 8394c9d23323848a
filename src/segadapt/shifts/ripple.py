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
_CV_BORDER = {
    "none": cv2.BORDER_CONSTANT,
    "black": cv2.BORDER_CONSTANT,
    "white": cv2.BORDER_CONSTANT,
    "clamp": cv2.BORDER_REPLICATE,
    "loop": cv2.BORDER_WRAP,
}
_CUBIC_B, _CUBIC_C = 0.5, 0.25


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


def source_coords(
    height: int,
    width: int,
    amplitude: float = 25.0,
    period: float = 200.0,
    phi: float = 0.0,
    angle: float = 0.0,
    wave_type: str = "sine",
    tileable: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """GEGL read positions (x, y) for every output pixel, float64 HxW each (pixel i spans [i, i+1))."""
    amplitude, period, rad = _effective_wave(height, width, amplitude, period, angle, tileable)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    along = xs * math.cos(rad) - ys * math.sin(rad)
    if wave_type == "sawtooth":
        lam = np.mod(along + period / 2 - phi * period, period)
        shift = amplitude * (2.0 * lam / period - 1.0)
    elif wave_type == "triangle":
        lam = np.mod(along + period * 3 / 4 - phi * period, period)
        shift = amplitude * (np.abs(4.0 * lam / period - 2.0) - 1.0)
    else:
        shift = amplitude * np.sin(2.0 * math.pi * along / period + 2.0 * math.pi * phi)
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


def _sample(src: np.ndarray, sx: np.ndarray, sy: np.ndarray, sampler: str, policy: str) -> np.ndarray:
    """Resample an HxWxC float32 image at GEGL positions with GEGL's sampler and abyss policy.

    Each tap is an exact integer gather (cv2.remap, nearest, int16 maps, OpenCV border = abyss policy); the
    taps are weighted here, so any kernel can be used.
    """
    channels = src.shape[2]
    border = _CV_BORDER[policy]
    fill = tuple(_ABYSS_RGBA.get(policy, (0.0, 0.0, 0.0, 0.0))[:channels]) if border == cv2.BORDER_CONSTANT else 0

    def tap(mx: np.ndarray, my: np.ndarray) -> np.ndarray:
        return cv2.remap(src, cv2.merge([mx, my]), None, cv2.INTER_NEAREST, borderMode=border, borderValue=fill)

    if sampler == "nearest":  # GEGL's nearest and linear samplers take the position in single precision
        return tap(np.floor(sx.astype(np.float32)).astype(np.int16), np.floor(sy.astype(np.float32)).astype(np.int16))
    if sampler == "linear":
        sx, sy = sx.astype(np.float32), sy.astype(np.float32)
    ux, uy = sx - 0.5, sy - 0.5  # to pixel-centre coordinates
    fx, fy = np.floor(ux), np.floor(uy)
    tx, ty = (ux - fx).astype(np.float32), (uy - fy).astype(np.float32)
    if sampler == "linear":
        offsets, wx, wy = (0, 1), [1 - tx, tx], [1 - ty, ty]
    else:
        offsets, wx, wy = (-1, 0, 1, 2), _cubic_weights(tx), _cubic_weights(ty)
    wx = [cv2.merge([w] * channels) for w in wx]  # per-channel copies: plain elementwise products below
    wy = [cv2.merge([w] * channels) for w in wy]
    fx16, fy16 = fx.astype(np.int16), fy.astype(np.int16)
    cols = [fx16 + np.int16(o) for o in offsets]
    out = np.zeros(src.shape, np.float32)
    row = np.empty(src.shape, np.float32)
    scratch = np.empty(src.shape, np.float32)
    for oy, wyj in zip(offsets, wy):
        my = fy16 + np.int16(oy)
        row.fill(0.0)
        for mx, wxi in zip(cols, wx):
            np.multiply(tap(mx, my), wxi, out=scratch)
            row += scratch
        np.multiply(row, wyj, out=scratch)
        out += scratch
    return out


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
    h, w = image.shape[:2]
    sx, sy = source_coords(h, w, amplitude, period, phi, angle, wave_type, tileable)
    colour = srgb_to_linear(image) if linear_light else image / np.float32(255.0)
    if abyss_policy != "none":  # every read is opaque (image, edge, wrap or an opaque fill): colour only
        rgb = _sample(colour, sx, sy, sampler_type, abyss_policy)
    else:  # transparent abyss: carry premultiplied alpha, then un-premultiply as babl does
        out = _sample(np.dstack([colour, np.ones((h, w), np.float32)]), sx, sy, sampler_type, abyss_policy)
        # babl replaces |alpha| < 1/65536 by +-1/65536 (sign kept), so reads that fell just outside the image
        # (alpha ~0, or < 0 from cubic's negative lobe) keep their colour.
        floor = np.float32(1.0 / 65536)
        alpha = out[:, :, 3:]
        alpha = np.where(np.abs(alpha) > floor, alpha, np.where(alpha < 0, -floor, floor))
        rgb = out[:, :, :3] / alpha
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
