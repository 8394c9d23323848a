"""Photocopy: GEGL's `gegl:photocopy` reimplemented with numpy/OpenCV (same pixel format, blurs and thresholds).

GEGL's algorithm, restated: work on linear luminance Y. Blur Y twice with Gaussians: a small one set by
`sharpness` (d1) and a large one set by `mask_radius` (d2). The ratio d1/d2 marks pixels darker than their
surroundings (ratio < 0.75, "ink") and the rest ("paper"). Ink pixels become d1 * (ratio + 0.25) (or 0 when the
black ramp is 0); paper pixels are pushed towards white by min(ramp_up, ratio - 0.75) / ramp_up, where ramp_up comes
from a 1000-bin histogram of the ink ratios (the `white` quantile). Quirk kept for conformance: in GEGL 0.4.x only
the ink histogram is filled, so `black` only matters as zero vs non-zero (ramp_down is 0 or 1).

The Gaussians are GEGL's own (`gegl:gaussian-blur`, clamp edges): a Young/van Vliet IIR filter with Triggs-Sdika
boundary handling for std_dev >= 1, a sampled, normalised FIR kernel (length ceil(6.5 sigma), odd) below that.
The IIR is linear and shift-invariant away from the far edge: its clamped start is exactly the infinite
edge-replicated signal, so each 1-D pass is a convolution with the filter's impulse response (cut where it falls
below 1e-12), done by `cv2.filter2D` with replicated borders in linear time. Only GEGL's Triggs-Sdika end
differs from replication, over the last `reach` samples; those are recomputed exactly with a small precomputed
block of the IIR operator. Memory is a few float32 planes (the pixel-wise steps run in strips).
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from segadapt.shifts.gegl import LUMA_WEIGHTS, linear_to_srgb, srgb_to_linear

_THRESHOLD = 0.75  # ratio d1/d2 separating ink from paper
_TAIL = 1e-12  # the exact operators (edge block, short axes) drop weights below this
_CONV_TAIL = 1e-8  # the convolution drops weights below this (see _conv_taps)
_EDGE_TOL = 1e-9  # the far-edge block covers where GEGL's end differs from replication by more than this
_STRIP = 1 << 16  # pixels per strip in the pixel-wise steps: bounds their temporaries, which stay in cache
_LUT_Y = np.ascontiguousarray((srgb_to_linear(np.arange(256, dtype=np.uint8))[:, None] * LUMA_WEIGHTS)[None])


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {got}")


def _check_range(name: str, value: float, lo: float, hi: float) -> float:
    value = float(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value:g} is outside GEGL's range [{lo:g}, {hi:g}]")
    return value


def _radius_to_sigma(radius: float) -> float:
    """GEGL's mapping: the Gaussian whose tail falls to 1/255 at `radius`."""
    return math.sqrt(-(radius * radius) / (2.0 * math.log(1.0 / 255.0)))


def blur_sigmas(
    mask_radius: float = 10.0, sharpness: float = 0.5, detail_radius: float | None = None
) -> tuple[float, float]:
    """GEGL's std_devs of the detail blur (d1, from `sharpness`) and the surround blur (d2, from `mask_radius`).

    `detail_radius` (segadapt's, not GEGL's) replaces the radius GEGL derives from sharpness, max(1, 10 (1 -
    sharpness)) + 1, which spans only [2, 11] px: the severity mapping in network units scales it (shifts/units.py).
    """
    radius = max(1.0, 10.0 * (1.0 - sharpness)) + 1.0 if detail_radius is None else detail_radius
    return _radius_to_sigma(radius), _radius_to_sigma(abs(mask_radius) + 1.0)


def check_detail_radius(detail_radius: float | None) -> float | None:
    if detail_radius is None:
        return None
    return _check_range("detail_radius", detail_radius, 1.0, 1000.0)


def _iir_coefficients(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Young/van Vliet recursion weights b[0..3] and the Triggs-Sdika 3x3 right-boundary matrix."""
    k1, k2, k3 = 2.44413, 1.4281, 0.422205
    q = 0.98711 * sigma - 0.96330 if sigma >= 2.5 else 3.97156 - 4.14554 * math.sqrt(1.0 - 0.26891 * sigma)
    b0 = 1.57825 + q * (k1 + q * (k2 + q * k3))
    a1 = q * (k1 + q * (2 * k2 + q * 3 * k3)) / b0
    a2 = (-k2 * q * q - k3 * 3 * q**3) / b0
    a3 = (k3 * q**3) / b0
    scale = 1.0 / ((1 + a1 - a2 + a3) * (1 + a2 + (a1 - a3) * a3))
    boundary = scale * np.array(
        [
            [1 - a2 - a3 * (a1 + a3), (a1 + a3) * (a2 + a1 * a3), a3 * (a1 + a2 * a3)],
            [a1 + a2 * a3, (1 - a2) * (a2 + a1 * a3), a3 * (1 - a2 - a1 * a3 - a3 * a3)],
            [
                a2 + a1 * a1 + a1 * a3 - a2 * a2,
                a3 + a1 * a2 + a3 * a2 * a2 - a1 * a3 * a3 - a3**3 - a2 * a3,
                a3 * (a1 + a2 * a3),
            ],
        ]
    )
    return np.array([1.0 - (a1 + a2 + a3), a1, a2, a3]), boundary


def _iir_apply(x: np.ndarray, sigma: float) -> np.ndarray:
    """GEGL's 1-D IIR blur (clamp edges) along axis 0 of a float64 (n, m) array, run step by step.

    Only used on short signals (impulses, edge blocks, tiny images) to build the exact operators below.
    """
    b, boundary = _iir_coefficients(sigma)
    n = x.shape[0]
    w = np.empty((n + 6, x.shape[1]))
    w[:3] = x[0]  # the left edge is clamped: the past is the first sample repeated
    for i in range(3, n + 3):  # causal pass
        w[i] = b[0] * x[i - 3] + b[1] * w[i - 1] + b[2] * w[i - 2] + b[3] * w[i - 3]
    edge = x[n - 1]  # the right edge is clamped: Triggs-Sdika's steady state of the last sample
    w[n + 3 : n + 6] = boundary @ (w[[n + 2, n + 1, n]] - edge) + edge
    for i in range(n + 2, 2, -1):  # anti-causal pass
        w[i] = b[0] * w[i] + b[1] * w[i + 1] + b[2] * w[i + 2] + b[3] * w[i + 3]
    return w[3 : n + 3]


@lru_cache(maxsize=16)
def _iir_taps(sigma: float) -> np.ndarray:
    """The IIR's symmetric impulse response away from both edges, cut where it falls below 1e-12."""
    half = int(40 * sigma) + 64
    impulse = np.zeros((2 * half + 1, 1))
    impulse[half] = 1.0
    h = _iir_apply(impulse, sigma)[:, 0]
    reach = int(np.nonzero(np.abs(h) >= _TAIL)[0].max()) - half
    taps = h[half - reach : half + reach + 1]  # float64: the exact response (convolution taps: _conv_taps)
    taps.setflags(write=False)
    return taps


@lru_cache(maxsize=16)
def _end_shape(sigma: float) -> tuple[int, int]:
    """(outputs, inputs) of the far-edge block: the last outputs where GEGL's Triggs-Sdika end differs from
    replicating the edge by more than 1e-9, and the last inputs those outputs weigh by more than 1e-12
    (measured on a signal of 6 reach; about 0.7 and 1.5 reach)."""
    reach = len(_iir_taps(sigma)) // 2
    n = 6 * reach
    exact = _iir_apply(np.eye(n), sigma)
    taps = _iir_taps(sigma).astype(np.float64)
    half = len(taps) // 2
    conv = np.zeros((n, n))
    rows = np.arange(n)
    for k, weight in enumerate(taps):
        np.add.at(conv, (rows, np.clip(rows + k - half, 0, n - 1)), weight)
    deviating = np.nonzero(np.abs(exact - conv)[n // 2 :].max(1) > _EDGE_TOL)[0]
    outputs = n - n // 2 - int(deviating.min()) + 2 if deviating.size else 1
    weighed = np.nonzero(np.abs(exact[n - outputs :]).max(0) > _TAIL)[0]
    return outputs, n - int(weighed.min()) + 2


@lru_cache(maxsize=16)
def _iir_end_block(sigma: float) -> np.ndarray:
    """Exact operator from the last `inputs` samples to the last `outputs` outputs (GEGL's Triggs-Sdika end)."""
    rows, span = _end_shape(sigma)
    n = span + 2 * (len(_iir_taps(sigma)) // 2)  # long enough that the clamped start does not reach the block
    block = _iir_apply(np.eye(n), sigma)[n - rows :, n - span :].astype(np.float32)
    block.setflags(write=False)
    return block


@lru_cache(maxsize=8)
def _iir_dense(n: int, sigma: float) -> np.ndarray:
    """The exact n x n IIR operator, only for axes shorter than 2 end blocks (at most ~1400, whatever the image)."""
    op = _iir_apply(np.eye(n), sigma)
    op[np.abs(op) < _TAIL] = 0.0
    op = op.astype(np.float32)
    op.setflags(write=False)
    return op


@lru_cache(maxsize=16)
def _conv_taps(sigma: float) -> np.ndarray:
    """The impulse response as convolution taps: cut where it falls below 1e-8 (OpenCV's cost grows with the
    taps; the dropped tail weighs ~1e-7, float32's resolution of the sums), rescaled to sum to 1.

    Measured on CamVid frames against the exact operator: 0.01% of pixels move by one level (as float32 noise
    does), none by more; 1e-6 would move pixels by up to 216 levels when black = 0 makes the ink threshold a
    jump from d1 to 0."""
    h = _iir_taps(sigma).astype(np.float64)
    reach = int(np.nonzero(h >= _CONV_TAIL)[0].max()) - len(h) // 2
    taps = h[len(h) // 2 - reach : len(h) // 2 + reach + 1]
    taps = (taps / taps.sum()).astype(np.float32)
    taps.setflags(write=False)
    return taps


@lru_cache(maxsize=16)
def _fir_taps(sigma: float) -> np.ndarray:
    """Sampled Gaussian of odd length ceil(6.5 sigma), normalised to 1 (GEGL's FIR for std_dev < 1)."""
    length = math.ceil(sigma * 6.5) if sigma > 1e-5 else 1
    length += (length + 1) % 2
    half = length // 2
    taps = np.exp(-((np.arange(length) - half) ** 2) / (2.0 * sigma * sigma)) if length > 1 else np.ones(1)
    taps = (taps / taps.sum()).astype(np.float32)
    taps.setflags(write=False)
    return taps


def blur_reach(std_dev: float) -> int:
    """Rows (px) a window needs beyond its core for the blur to match the whole image's: the kernel's reach, or
    the far-edge block's inputs, whichever is more (a window's own far edge then falls in its halo)."""
    return len(_fir_taps(std_dev)) // 2 if std_dev < 1.0 else _end_shape(std_dev)[1]


def _blur_axis(y: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """One 1-D pass of GEGL's blur of a float32 (H, W) plane along `axis` (1: rows, 0: columns)."""
    n = y.shape[axis]
    if sigma < 1.0:
        taps = _fir_taps(sigma)
        kernel = taps[None, :] if axis == 1 else taps[:, None]
        return cv2.filter2D(y, cv2.CV_32F, kernel, borderType=cv2.BORDER_REPLICATE)
    rows, span = _end_shape(sigma)
    if n < 2 * span:
        return y @ _iir_dense(n, sigma).T if axis == 1 else _iir_dense(n, sigma) @ y
    taps = _conv_taps(sigma)
    if axis == 0 and len(taps) > 64:  # OpenCV's long column kernels are slower than rows plus two transposes
        out = cv2.transpose(cv2.filter2D(cv2.transpose(y), cv2.CV_32F, taps[None, :], borderType=cv2.BORDER_REPLICATE))
    else:
        kernel = taps[None, :] if axis == 1 else taps[:, None]
        out = cv2.filter2D(y, cv2.CV_32F, kernel, borderType=cv2.BORDER_REPLICATE)
    block = _iir_end_block(sigma)
    if axis == 1:
        out[:, n - rows :] = np.ascontiguousarray(y[:, n - span :]) @ block.T
    else:
        out[n - rows :] = block @ y[n - span :]
    return out


def gaussian_blur(y: np.ndarray, std_dev: float) -> np.ndarray:
    """GEGL `gaussian-blur` (auto filter, clamp abyss) of a float HxW plane; returns float32."""
    rows = _blur_axis(np.ascontiguousarray(y, dtype=np.float32), std_dev, 1)
    return _blur_axis(rows, std_dev, 0)


def luminance(image: np.ndarray) -> np.ndarray:
    """babl's linear "Y float" of a uint8 HxWx3 sRGB image (float32 HxW), in strips to keep memory flat."""
    h, w = image.shape[:2]
    y = np.empty((h, w), np.float32)
    ones = np.ones((1, 3), np.float32)
    step = max(1, _STRIP // max(w, 1))
    for r in range(0, h, step):
        part = image[r : r + step]
        y[r : r + step] = cv2.transform(cv2.LUT(part, _LUT_Y), ones).reshape(part.shape[:2])
    return y


def blur_ratio(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """d1 / d2 in float32, as GEGL divides (0/0 -> NaN, which ends up black)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(d1, d2, dtype=np.float32)


def ink_histogram(ratio: np.ndarray) -> np.ndarray:
    """GEGL's 1000-bin histogram of the ink ratios (0 <= ratio < 0.75), bin = int(ratio * 1000) in double."""
    hist = np.zeros(1000, np.int64)
    flat = ratio.reshape(-1)
    for s in range(0, flat.size, _STRIP):
        part = flat[s : s + _STRIP]
        ink = part[(part < _THRESHOLD) & (part >= 0.0)]
        hist += np.bincount((ink.astype(np.float64) * 1000.0).astype(np.int64), minlength=1000)
    return hist


def white_ramp(hist: np.ndarray, white: float) -> float:
    """Ratio span over which paper fades to white: 0.75 minus the `white` quantile of the binned ink ratios."""
    count = int(hist.sum())
    if white == 0.0 or count == 0:
        return 1.0
    above = np.nonzero(np.cumsum(hist) / count > white)[0]
    return _THRESHOLD - above[0] / 1000.0 if above.size else 0.0


def transfer(d1: np.ndarray, ratio: np.ndarray, ramp_down: float, ramp_up: float) -> np.ndarray:
    """GEGL's per-pixel photocopy transfer (float32 linear Y out): dark ink below the threshold, paper above.

    Paper: d1 + fade (1 - d1), fade = min(ramp_up, ratio - 0.75) / ramp_up. Ink: d1 (ramp_down - min(ramp_down,
    0.75 - ratio)) / ramp_down, which for GEGL 0.4's ramp_down of 1 is d1 (ratio + 0.25); 0 when ramp_down is 0.
    Float32, one pass per operation, in place where possible; the minima are clips to [-inf, bound], the same
    values (NaN stays NaN) from numpy's faster clip loop.
    """
    with np.errstate(invalid="ignore"):
        over = ratio - np.float32(_THRESHOLD)
        out = np.float32(1.0) - d1
        if ramp_up != 0.0:
            fade = np.clip(over, np.float32(-np.inf), np.float32(ramp_up))  # NaN (0/0) stays NaN, ends up black
            fade /= np.float32(ramp_up)
            out *= fade
        out += d1
        ink = over < 0
        if ramp_down == 0.0:
            out[ink] = 0.0
        else:
            dark = np.subtract(np.float32(_THRESHOLD), ratio, out=over)
            np.clip(dark, np.float32(-np.inf), np.float32(ramp_down), out=dark)
            np.subtract(np.float32(ramp_down), dark, out=dark)
            dark *= d1
            if ramp_down != 1.0:
                dark /= np.float32(ramp_down)
            np.copyto(out, dark, where=ink)
    return out


def _ramps(ratio: np.ndarray, black: float, white: float) -> tuple[float, float]:
    hist = ink_histogram(ratio)
    return (1.0 if black > 0.0 and hist.sum() > 0 else 0.0), white_ramp(hist, white)


def photocopy_luminance(
    y: np.ndarray, mask_radius: float = 10.0, sharpness: float = 0.5, black: float = 0.2, white: float = 0.2
) -> np.ndarray:
    """The photocopy transfer on a linear-luminance plane (float, HxW) -> float64 HxW in [0, 1].

    Exposed so tests can feed synthetic luminance directly and check known answers.
    """
    sigma_detail, sigma_mask = blur_sigmas(mask_radius, sharpness)
    d1 = gaussian_blur(y, sigma_detail)
    ratio = blur_ratio(d1, gaussian_blur(y, sigma_mask))
    out = transfer(d1, ratio, *_ramps(ratio, black, white)).astype(np.float64)
    return np.nan_to_num(out, nan=0.0, posinf=1.0)  # 0/0 (black surround) -> black


def check_params(mask_radius: float, sharpness: float, black: float, white: float) -> tuple[float, ...]:
    """GEGL's ranges, checked (a bad value is one ValueError line naming it)."""
    return (
        _check_range("mask_radius", mask_radius, 0.0, 50.0),
        _check_range("sharpness", sharpness, 0.0, 1.0),
        _check_range("black", black, 0.0, 1.0),
        _check_range("white", white, 0.0, 1.0),
    )


def encode_grey(d1: np.ndarray, ratio: np.ndarray, ramp_down: float, ramp_up: float) -> np.ndarray:
    """The transfer encoded to uint8 sRGB grey (H, W), strip by strip so temporaries stay small."""
    h, w = d1.shape
    grey = np.empty((h, w), np.uint8)
    step = max(1, _STRIP // max(w, 1))
    for r in range(0, h, step):
        grey[r : r + step] = linear_to_srgb(transfer(d1[r : r + step], ratio[r : r + step], ramp_down, ramp_up))
    return grey


def photocopy(
    image: np.ndarray,
    mask_radius: float = 10.0,
    sharpness: float = 0.5,
    black: float = 0.2,
    white: float = 0.2,
    *,
    detail_radius: float | None = None,
) -> np.ndarray:
    """Simulate a photocopier (GEGL `gegl:photocopy`): grey ink on white paper, edges darkened.

    Args:
        image: uint8 HxWx3 sRGB.
        mask_radius: GEGL `mask-radius`, radius of the surround blur in px; default 10.0, range [0, 50].
        sharpness: GEGL `sharpness`, 1 = smallest detail blur (radius 2), 0 = radius 11; default 0.5, range [0, 1].
        black: GEGL `black` ("Percent black"); default 0.2, range [0, 1]. GEGL 0.4 only distinguishes 0 (ink
            becomes pure black) from > 0 (ink keeps a scaled luminance).
        white: GEGL `white` ("Percent white"), quantile of ink ratios setting how fast paper fades to white;
            default 0.2, range [0, 1].
        detail_radius: not GEGL's: the detail blur's radius in px, overriding the one sharpness sets (see
            `blur_sigmas`); None (default) keeps GEGL's.

    Returns:
        uint8 HxWx3 sRGB with equal channels (GEGL's output is grey "Y float").
    """
    _check_image(image)
    mask_radius, sharpness, black, white = check_params(mask_radius, sharpness, black, white)
    sigma_detail, sigma_mask = blur_sigmas(mask_radius, sharpness, check_detail_radius(detail_radius))
    y = luminance(image)
    d1 = gaussian_blur(y, sigma_detail)
    ratio = blur_ratio(d1, gaussian_blur(y, sigma_mask))
    del y
    grey = encode_grey(d1, ratio, *_ramps(ratio, black, white))
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
