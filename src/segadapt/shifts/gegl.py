"""GEGL interop: babl-equivalent pixel conversions and an optional backend that shells out to the `gegl` CLI.

The native filters work in the same pixel formats as the GEGL operations they reimplement (GEGL converts with
babl), so the sRGB <-> linear-light helpers live here beside the CLI backend used to check them.

CLI findings (GEGL 0.4.42, Debian), which shape `run_gegl`:

* Properties must be given by their canonical GObject names, with dashes (`mask-radius=3`, `wave-type=sawtooth`).
  The CLI silently ignores an unknown key such as `mask_radius=3`, so the op then runs with its default.
* In-process use (GObject introspection, ctypes) gets "Failed to set operation type gegl:photocopy, using a
  passthrough op instead" because GEGL registers its GPL3+ operations (photocopy, ripple, cubism, ...) only once
  the application sets `application-license` to "GPL3" on `gegl_config()`; the CLI does so itself. We stay with
  the CLI: a separate process also keeps GPL3 code out of this MIT package.
* Area filters (ripple, cubism) enlarge the output by their reach (e.g. 410x530 for ripple's amplitude 25 on a
  360x480 image); a trailing `gegl:crop` restores the input extent, as GIMP clips to the layer.
* The PNG writer stores the op's own output format at 16 bits: photocopy ("Y float") gives a 16-bit grey PNG,
  ripple/cubism ("RGBA float") a 16-bit RGBA PNG. Reading such a PNG with PIL's `.convert("RGB")` clips every
  value above 255 to white, which is why photocopy looked "all white"; decode with `cv2.IMREAD_UNCHANGED`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from segadapt.errors import SegadaptError

# Luminance weights babl uses for "Y" from linear sRGB (its primaries are chromatically adapted to D50, ICC style);
# measured here with `gegl:convert-format format="Y float"` on pure primaries.
LUMA_WEIGHTS = np.array([0.22248840, 0.71690369, 0.06060791], dtype=np.float32)

_SRGB_TO_LINEAR_LUT = np.where(
    np.arange(256) / 255.0 <= 0.04045,
    np.arange(256) / 255.0 / 12.92,
    ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
).astype(np.float32)

# GEGL CLI property names (canonical, dashed) for our keyword arguments, per op.
_CLI_NAMES: dict[str, dict[str, str]] = {
    "photocopy": {"mask_radius": "mask-radius", "sharpness": "sharpness", "black": "black", "white": "white"},
    "ripple": {
        "amplitude": "amplitude",
        "period": "period",
        "phi": "phi",
        "angle": "angle",
        "sampler_type": "sampler-type",
        "wave_type": "wave-type",
        "abyss_policy": "abyss-policy",
        "tileable": "tileable",
    },
    "cubism": {"tile_size": "tile-size", "tile_saturation": "tile-saturation", "bg_color": "bg-color", "seed": "seed"},
}


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear light in [0, 1] (babl's "R'G'B' u8" -> "RGB float"), via an exact LUT.

    Images (HxW or HxWxC, C <= 4) go through cv2.LUT, which reads the same table several times faster.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim in (2, 3) and (image.ndim == 2 or image.shape[2] <= 4) and image.size:
        return cv2.LUT(image, _SRGB_TO_LINEAR_LUT).reshape(image.shape)
    return _SRGB_TO_LINEAR_LUT[image]


def _linear_to_srgb_reference(linear: np.ndarray) -> np.ndarray:
    """The defining float32 formula of `linear_to_srgb` (slow: a power per value); the fast tables are built from it."""
    x = np.clip(np.nan_to_num(linear, nan=0.0), 0.0, 1.0).astype(np.float32)
    s = np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1.0 / 2.4, dtype=np.float32) - 0.055)
    return np.clip(s * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _encode_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per float32 bucket (the top 16 bits of the value): the code at its low end and where, if at all, it steps up.

    A bucket spans 1/128 of an octave, less than one code step anywhere in [0, 1], so the code rises by at most one
    inside a bucket; the step is found by bisection on the reference formula, so the tables reproduce it exactly.
    Buckets above 1.0 (and +inf) give 255, NaN buckets 0; a NaN threshold means "no step" (x >= NaN is False).
    """
    base = np.zeros(0x8000, np.uint8)
    step = np.full(0x8000, np.nan, np.float32)
    lo = np.arange(0x3F80, dtype=np.uint32) << 16
    hi = lo + 0xFFFF
    code_lo, code_hi = _linear_to_srgb_reference(lo.view(np.float32)), _linear_to_srgb_reference(hi.view(np.float32))
    base[:0x3F80], base[0x3F80:0x7F81] = code_lo, 255
    jumps = np.nonzero(code_hi != code_lo)[0]
    if not (code_hi[jumps] - code_lo[jumps] == 1).all():
        raise AssertionError("an sRGB encode bucket spans more than one code step")
    a, b, target = lo[jumps].astype(np.int64), hi[jumps].astype(np.int64), code_hi[jumps]
    while (a < b).any():  # smallest float32 in the bucket that reaches the next code
        mid = (a + b) // 2
        up = _linear_to_srgb_reference(mid.astype(np.uint32).view(np.float32)) >= target
        a, b = np.where(up, a, mid + 1), np.where(up, mid, b)
    step[jumps] = a.astype(np.uint32).view(np.float32)
    return base, step


_ENCODE_BASE, _ENCODE_STEP = _encode_tables()


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Float linear light -> uint8 sRGB, clipping to [0, 1] and rounding to nearest as babl does.

    Equal to `_linear_to_srgb_reference` value for value (NaN -> 0), by two table look-ups instead of a power.
    """
    x = np.asarray(linear, dtype=np.float32)
    if not x.flags.c_contiguous:
        x = x.copy()
    bucket = x.view(np.int32) >> 16  # negative values (sign bit) clip to bucket 0, which encodes as 0
    out = _ENCODE_BASE.take(bucket, mode="clip")
    out += x >= _ENCODE_STEP.take(bucket, mode="clip")
    return out


def gegl_executable() -> str:
    """Path of the `gegl` CLI, or a one-line SegadaptError saying how to get it."""
    exe = shutil.which("gegl")
    if exe is None:
        raise SegadaptError(
            "the gegl backend needs the `gegl` command (GEGL >= 0.4): install it (apt-get install gegl) "
            "or use --backend native"
        )
    return exe


def _cli_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):  # a colour: linear-light RGBA floats, GEGL's rgba() notation
        return "rgba({})".format(", ".join(repr(float(v)) for v in value))
    return str(value)


def cli_args(op: str, params: Mapping[str, object]) -> list[str]:
    """`gegl:<op>` followed by `key=value` tokens with GEGL's dashed property names (unknown keys are an error)."""
    names = _CLI_NAMES.get(op)
    if names is None:
        raise SegadaptError(f"unknown GEGL filter {op!r}; choose one of {sorted(_CLI_NAMES)}")
    args = [f"gegl:{op}"]
    for key, value in params.items():
        if key not in names:
            raise SegadaptError(f"gegl:{op} has no parameter {key!r}; valid: {sorted(names)}")
        args.append(f"{names[key]}={_cli_value(value)}")
    return args


def read_gegl_png(path: Path) -> np.ndarray:
    """Decode a PNG written by `gegl` (8/16-bit, grey/RGB/RGBA) to uint8 HxWx3 RGB, dropping alpha.

    Dropping alpha keeps the colour channels as GEGL computed them, as GIMP does on a layer without an alpha
    channel (transparent abyss/background becomes black).
    """
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise SegadaptError(f"gegl wrote no readable image at {path}")
    if data.dtype == np.uint16:
        data = ((data.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if data.ndim == 2:
        return np.repeat(data[:, :, None], 3, axis=2)
    return np.ascontiguousarray(data[:, :, 2::-1])  # BGR(A) -> RGB


def run_gegl(image: np.ndarray, op: str, timeout: float = 120.0, **params: object) -> np.ndarray:
    """Apply `gegl:<op>` to a uint8 HxWx3 RGB array through the `gegl` CLI (via temporary PNGs)."""
    exe = gegl_executable()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image.dtype} {image.shape}")
    with tempfile.TemporaryDirectory(prefix="segadapt-gegl-") as tmp:
        src, dst = Path(tmp) / "in.png", Path(tmp) / "out.png"
        if not cv2.imwrite(str(src), np.ascontiguousarray(image[:, :, ::-1])):
            raise SegadaptError(f"could not write the image for gegl:{op} to {src}")
        h, w = image.shape[:2]
        # Area filters (ripple, cubism) grow their bounding box by their reach; GIMP clips to the layer, so do we.
        crop = ["gegl:crop", "x=0", "y=0", f"width={w}", f"height={h}"]
        cmd = [exe, str(src), "-o", str(dst), "--", *cli_args(op, params), *crop]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise SegadaptError(f"gegl:{op} timed out after {timeout:g} s") from exc
        # gegl exits 0 after an out-of-range value or an unknown enum, and renders its defaults instead
        complaints = [ln for ln in proc.stderr.splitlines() if "GObject-WARNING" in ln or "Error:" in ln]
        if proc.returncode != 0 or not dst.exists() or complaints:
            lines = complaints or [ln for ln in proc.stderr.splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            raise SegadaptError(f"gegl:{op} failed: {last}")
        return read_gegl_png(dst)
