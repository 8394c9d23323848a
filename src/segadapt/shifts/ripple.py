"""Ripple (GIMP's Filters > Distorts > Ripple, i.e. GEGL's `gegl:ripple`): displace pixels along a wave.

Each output pixel (x, y) samples the input at (x + s*sin(a), y + s*cos(a)), where a is the wave's angle and
the displacement s depends on the position along the wave, n = x*cos(a) + y*sin(a):
- sine:     s = amplitude * sin(2*pi*n/period + 2*pi*phase)
- sawtooth: GEGL's "sawtooth" is a triangle wave of the same period and amplitude.
GEGL samples in linear light ("RGBA float"), so we convert sRGB to linear before resampling and back after.

Parameters (GEGL name, default, range):
- amplitude: displacement in pixels, 25.0, [0, 1000]
- period: wavelength in pixels, 200.0, [0, 1000]
- phase: phase shift in periods (GEGL's `phi`), 0.0, [-1, 1]
- angle: wave direction in degrees, 0.0, [-180, 180]
- wave_type: "sine" (default) or "sawtooth"
- abyss_policy: what is sampled outside the image: "none" (transparent; black here, as GIMP shows it on a
  flattened image), "clamp" (edge pixels), "loop" (GEGL's `tileable=true`), "black", "white"
- sampler: "cubic" (GEGL's default), "linear" or "nearest"
"""

from __future__ import annotations

import cv2
import numpy as np

_SAMPLERS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
_ABYSS = {
    "none": (cv2.BORDER_CONSTANT, 0.0),
    "black": (cv2.BORDER_CONSTANT, 0.0),
    "white": (cv2.BORDER_CONSTANT, 1.0),
    "clamp": (cv2.BORDER_REPLICATE, 0.0),
    "loop": (cv2.BORDER_WRAP, 0.0),
}


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    y = np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def ripple_maps(
    height: int, width: int, amplitude: float, period: float, phase: float, angle: float, wave_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (map_x, map_y) for every output pixel."""
    if wave_type not in ("sine", "sawtooth"):
        raise ValueError(f"wave_type must be 'sine' or 'sawtooth', got {wave_type!r}")
    a = np.deg2rad(angle)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    n = x * np.cos(a) + y * np.sin(a)
    if period <= 0:
        shift = np.zeros_like(n)
    elif wave_type == "sine":
        shift = amplitude * np.sin(2 * np.pi * n / period + 2 * np.pi * phase)
    else:
        lam = np.fmod(n, period) - phase * period  # C's remainder keeps the sign of n, as in GEGL
        lam = np.where(lam < 0, lam + period, lam)
        shift = amplitude * (np.abs(lam / period * 4 - 2) - 1)
    return (x + shift * np.sin(a)).astype(np.float32), (y + shift * np.cos(a)).astype(np.float32)


def ripple(
    image: np.ndarray,
    amplitude: float = 25.0,
    period: float = 200.0,
    phase: float = 0.0,
    angle: float = 0.0,
    wave_type: str = "sine",
    abyss_policy: str = "none",
    sampler: str = "cubic",
    linear_light: bool = True,
) -> np.ndarray:
    if abyss_policy not in _ABYSS:
        raise ValueError(f"abyss_policy must be one of {', '.join(_ABYSS)}, got {abyss_policy!r}")
    if sampler not in _SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(_SAMPLERS)}, got {sampler!r}")
    h, w = image.shape[:2]
    mx, my = ripple_maps(h, w, amplitude, period, phase, angle, wave_type)
    border, fill = _ABYSS[abyss_policy]
    src = srgb_to_linear(image) if linear_light else image.astype(np.float32) / 255.0
    out = cv2.remap(src, mx, my, _SAMPLERS[sampler], borderMode=border, borderValue=(fill, fill, fill, 0))
    if linear_light:
        return linear_to_srgb(out)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def ripple_mask(
    mask: np.ndarray,
    amplitude: float = 25.0,
    period: float = 200.0,
    phase: float = 0.0,
    angle: float = 0.0,
    wave_type: str = "sine",
    abyss_policy: str = "none",
    ignore_index: int = 255,
) -> np.ndarray:
    """Move a label mask exactly as `ripple` moves the image (nearest sampling; outside -> ignore)."""
    h, w = mask.shape
    mx, my = ripple_maps(h, w, amplitude, period, phase, angle, wave_type)
    border, _ = _ABYSS[abyss_policy]
    if border == cv2.BORDER_CONSTANT:
        fill = ignore_index
    out = cv2.remap(mask.astype(np.float32), np.rint(mx), np.rint(my), cv2.INTER_NEAREST, borderMode=border,
                    borderValue=float(fill) if border == cv2.BORDER_CONSTANT else 0.0)
    return out.astype(mask.dtype)
