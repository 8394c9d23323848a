"""Photocopy: GEGL's `gegl:photocopy` reimplemented with numpy (same pixel format, blurs and thresholds).

GEGL's algorithm, restated: work on linear luminance Y. Blur Y twice with Gaussians: a small one set by
`sharpness` (d1) and a large one set by `mask_radius` (d2). The ratio d1/d2 marks pixels darker than their
surroundings (ratio < 0.75, "ink") and the rest ("paper"). Ink pixels become d1 * (ratio + 0.25) (or 0 when the
black ramp is 0); paper pixels are pushed towards white by min(ramp_up, ratio - 0.75) / ramp_up, where ramp_up comes
from a 1000-bin histogram of the ink ratios (the `white` quantile). Quirk kept for conformance: in GEGL 0.4.x only
the ink histogram is filled, so `black` only matters as zero vs non-zero (ramp_down is 0 or 1).

The Gaussians are GEGL's own (`gegl:gaussian-blur`, clamp edges): a Young/van Vliet IIR filter with Triggs-Sdika
boundary handling for std_dev >= 1, a sampled, normalised FIR kernel (length ceil(6.5 sigma), odd) below that.
Both are linear, so each 1-D pass is precomputed as an NxN matrix (cached per size and sigma) and the 2-D blur is
two matrix products -- exact and fast.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from segadapt.shifts.gegl import LUMA_WEIGHTS, linear_to_srgb, srgb_to_linear

_THRESHOLD = 0.75  # ratio d1/d2 separating ink from paper


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


def _iir_matrix(n: int, sigma: float) -> np.ndarray:
    """Apply the 1-D IIR blur (clamp edges) to all n unit impulses at once; column k is the response to x[k]."""
    b, boundary = _iir_coefficients(sigma)
    x = np.eye(n)
    w = np.empty((n + 6, n))
    w[:3] = x[0]  # the left edge is clamped: the past is the first sample repeated
    for i in range(3, n + 3):  # causal pass
        w[i] = b[0] * x[i - 3] + b[1] * w[i - 1] + b[2] * w[i - 2] + b[3] * w[i - 3]
    edge = x[n - 1]  # the right edge is clamped: steady state of the last sample
    w[n + 3 : n + 6] = boundary @ (w[[n + 2, n + 1, n]] - edge) + edge
    for i in range(n + 2, 2, -1):  # anti-causal pass
        w[i] = b[0] * w[i] + b[1] * w[i + 1] + b[2] * w[i + 2] + b[3] * w[i + 3]
    return w[3 : n + 3]


def _fir_matrix(n: int, sigma: float) -> np.ndarray:
    """Sampled Gaussian of odd length ceil(6.5 sigma), normalised to 1, clamp edges, as an nxn operator."""
    length = math.ceil(sigma * 6.5) if sigma > 1e-5 else 1
    length += (length + 1) % 2
    half = length // 2
    taps = np.exp(-((np.arange(length) - half) ** 2) / (2.0 * sigma * sigma)) if length > 1 else np.ones(1)
    taps /= taps.sum()
    rows = np.arange(n)
    op = np.zeros((n, n))
    for t, weight in enumerate(taps):
        np.add.at(op, (rows, np.clip(rows + t - half, 0, n - 1)), weight)
    return op


@lru_cache(maxsize=32)
def _blur_operator(n: int, sigma: float) -> np.ndarray:
    """GEGL's `filter=auto` choice: FIR below std_dev 1, IIR from 1 up."""
    op = _fir_matrix(n, sigma) if sigma < 1.0 else _iir_matrix(n, sigma)
    op[np.abs(op) < 1e-12] = 0.0  # far IIR tails would be float32 denormals: slow and irrelevant
    op = op.astype(np.float32)
    op.setflags(write=False)
    return op


def gaussian_blur(y: np.ndarray, std_dev: float) -> np.ndarray:
    """GEGL `gaussian-blur` (auto filter, clamp abyss) of a float HxW plane; returns float32."""
    h, w = y.shape
    return _blur_operator(h, std_dev) @ y.astype(np.float32) @ _blur_operator(w, std_dev).T


def _white_ramp(ratio: np.ndarray, ink: np.ndarray, white: float) -> float:
    """Ratio span over which paper fades to white: 0.75 minus the `white` quantile of the binned ink ratios."""
    count = int(ink.sum())
    if white == 0.0 or count == 0:
        return 1.0
    hist = np.bincount((ratio[ink] * 1000.0).astype(np.int64), minlength=1000)
    above = np.nonzero(np.cumsum(hist) / count > white)[0]
    return _THRESHOLD - above[0] / 1000.0 if above.size else 0.0


def photocopy_luminance(
    y: np.ndarray, mask_radius: float = 10.0, sharpness: float = 0.5, black: float = 0.2, white: float = 0.2
) -> np.ndarray:
    """The photocopy transfer on a linear-luminance plane (float, HxW) -> float64 HxW in [0, 1].

    Exposed so tests can feed synthetic luminance directly and check known answers.
    """
    sigma_detail = _radius_to_sigma(max(1.0, 10.0 * (1.0 - sharpness)) + 1.0)
    sigma_mask = _radius_to_sigma(abs(mask_radius) + 1.0)
    d1 = gaussian_blur(y, sigma_detail)
    d2 = gaussian_blur(y, sigma_mask)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (d1 / d2).astype(np.float64)  # float32 division, as GEGL does
    ink = (ratio < _THRESHOLD) & (ratio >= 0.0)
    ramp_down = 1.0 if black > 0.0 and ink.any() else 0.0
    ramp_up = _white_ramp(ratio, ink, white)
    d1 = d1.astype(np.float64)
    with np.errstate(invalid="ignore"):
        if ramp_down == 0.0:
            dark = np.zeros_like(d1)
        else:
            dark = d1 * (ramp_down - np.minimum(ramp_down, _THRESHOLD - ratio)) / ramp_down
        fade = np.ones_like(d1) if ramp_up == 0.0 else np.minimum(ramp_up, ratio - _THRESHOLD) / ramp_up
        light = d1 + fade * (1.0 - d1)
        out = np.where(ratio < _THRESHOLD, dark, light)
    return np.nan_to_num(out, nan=0.0, posinf=1.0)  # 0/0 (black surround) -> black


def photocopy(
    image: np.ndarray, mask_radius: float = 10.0, sharpness: float = 0.5, black: float = 0.2, white: float = 0.2
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

    Returns:
        uint8 HxWx3 sRGB with equal channels (GEGL's output is grey "Y float").
    """
    _check_image(image)
    mask_radius = _check_range("mask_radius", mask_radius, 0.0, 50.0)
    sharpness = _check_range("sharpness", sharpness, 0.0, 1.0)
    black = _check_range("black", black, 0.0, 1.0)
    white = _check_range("white", white, 0.0, 1.0)
    y = srgb_to_linear(image) @ LUMA_WEIGHTS
    grey = linear_to_srgb(photocopy_luminance(y, mask_radius, sharpness, black, white))
    return np.repeat(grey[:, :, None], 3, axis=2)
