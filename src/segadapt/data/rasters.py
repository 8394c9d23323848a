"""Images to predict, read window by window through one interface.

`RasterReader` is what sliding-window inference reads from: `read(y, x, h, w)` returns RGB in 0..255 and
which pixels hold data. Two readers share it:

- `ArrayReader`: an image decoded whole (JPEG, PNG, WebP, BMP, and TIFF when rasterio is absent) by the
  checked reader in data/base.py: 8-bit RGB, grey replicated to three channels, 16-bit PNGs divided by 256
  (OpenCV's conversion), alpha dropped, at most MAX_IMAGE_PIXELS.
- `GeoTiffReader`: a TIFF or GeoTIFF read through rasterio windows, so memory does not grow with the raster.
  Bands: `bands` (1-based), default 1,2,3 (one band is replicated to three; two bands, or a pick of other
  than one or three bands, must be chosen). Values become 0..255 by the stretch rule:
    - ``auto`` (default): 8-bit data as stored; any other type as ``percentile``.
    - ``percentile``: per band, the 2nd..98th percentile of its valid pixels (sampled on a read decimated to
      at most 1024x1024) mapped linearly onto 0..255, clipped.
    - ``range``: the integer type's full range onto 0..255 (uint16: v * 255 / 65535); refused for floats.
  Nodata: a pixel holds no data when every selected band masks it (GDAL's masks: the nodata value, an
  alpha band or an internal mask). Such pixels reach the network as the mean colour and come out as nodata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from segadapt.chatter import hushed
from segadapt.data.base import read_image
from segadapt.errors import ConfigError, DataError

TIFF_SUFFIXES = (".tif", ".tiff")
STRETCHES = ("auto", "percentile", "range")
PERCENTILES = (2.0, 98.0)
SAMPLE_SIDE = 1024  # the percentile stretch samples a read decimated to at most this many pixels a side
GEO_HINT = "pip install 'segadapt[geo]'"


class RasterReader(Protocol):
    """A raster read in windows: RGB float32 or uint8 in 0..255, shape h x w x 3, and its valid pixels."""

    height: int
    width: int
    masked: bool  # whether any pixel may lack data (else `valid` is always None)

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels [y, y+h) x [x, x+w) and a boolean h x w mask of valid pixels (None: every pixel is valid)."""
        ...

    def valid(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        """The valid-pixel mask of that window alone."""
        ...


class ArrayReader:
    """An image already in memory (uint8 H x W x 3)."""

    masked = False

    def __init__(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
        self.image = image
        self.height, self.width = image.shape[:2]

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.image[y:y + h, x:x + w], None

    def valid(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        return None


@dataclass(frozen=True)
class Stretch:
    """(v - low) * 255 / (high - low), clipped to 0..255, per selected band; `rule` says how low/high were set."""

    rule: str
    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, data: np.ndarray) -> np.ndarray:
        """bands x h x w of any dtype -> float32 in 0..255."""
        out = data.astype(np.float32)
        if self.rule == "as stored":
            return out
        low = np.asarray(self.low, np.float32)[:, None, None]
        gain = (255.0 / (np.asarray(self.high, np.float32) - np.asarray(self.low, np.float32)))[:, None, None]
        out -= low
        out *= gain
        return np.clip(out, 0.0, 255.0, out=out)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "low": list(self.low), "high": list(self.high)}


@dataclass(frozen=True)
class GeoInfo:
    """Georeferencing copied onto outputs: rasterio's CRS (or None) and affine transform."""

    crs: Any
    transform: Any
    georeferenced: bool = False


def rasterio_or_none() -> Any:
    """rasterio if installed (the `geo` extra), else None."""
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


def check_bands(bands: Sequence[int] | None) -> tuple[int, ...] | None:
    """--bands as given: one or three 1-based indices."""
    if bands is None:
        return None
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise ConfigError(f"--bands {','.join(map(str, bands))}: give one band (replicated to RGB) or three, "
                          "1-based, e.g. --bands 3,2,1")
    return tuple(bands)


def check_stretch(stretch: str) -> str:
    if stretch not in STRETCHES:
        raise ConfigError(f"--stretch {stretch}: choose one of {', '.join(STRETCHES)}")
    return stretch


def _choose_bands(count: int, bands: tuple[int, ...] | None, path: Path) -> tuple[int, ...]:
    """Three band indices (1-based) for R, G, B."""
    if bands is None:
        if count == 1:
            return (1, 1, 1)
        if count >= 3:
            return (1, 2, 3)
        raise DataError(f"{path}: has {count} bands; choose which to use with --bands (one, or three for R,G,B)")
    if max(bands) > count:
        raise DataError(f"{path}: has {count} band(s), --bands asks for band {max(bands)}; choose bands 1..{count}")
    return bands * 3 if len(bands) == 1 else bands


def _unique(bands: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Distinct bands to read, and where each of R, G, B comes from among them."""
    distinct = sorted(set(bands))
    return distinct, [distinct.index(b) for b in bands]


class GeoTiffReader:
    """A TIFF/GeoTIFF read in rasterio windows (see the module docstring for bands, stretch and nodata)."""

    def __init__(self, path: Path, bands: tuple[int, ...] | None = None, stretch: str = "auto") -> None:
        rasterio = rasterio_or_none()
        if rasterio is None:
            raise DataError(f"{path}: reading TIFF windows needs rasterio; {GEO_HINT}")
        self.path = path
        try:
            with hushed():  # e.g. NotGeoreferencedWarning: a plain TIFF is fine here
                self.ds = rasterio.open(path)
        except rasterio.errors.RasterioError as e:
            raise DataError(f"{path}: unreadable or corrupt TIFF ({_first_line(e)}); re-export it or remove "
                            "it") from None
        try:
            self._setup(bands, stretch)
        except BaseException:
            self.ds.close()
            raise

    def _setup(self, bands: tuple[int, ...] | None, stretch: str) -> None:
        ds = self.ds
        self.height, self.width = ds.height, ds.width
        self.bands = _choose_bands(ds.count, bands, self.path)
        self._read_bands, self._rgb = _unique(self.bands)
        self.dtype = np.dtype(ds.dtypes[self._read_bands[0] - 1])
        if self.dtype.kind not in "uif":  # complex (radar) samples have no brightness to stretch into RGB
            raise DataError(f"{self.path}: {self.dtype} pixels are not image brightness; convert the bands to "
                            "real values first (e.g. gdal_translate -ot Float32 of their magnitude)")
        flags = [ds.mask_flag_enums[b - 1] for b in self._read_bands]
        all_valid = type(flags[0][0]).all_valid
        self.masked = any(f != [all_valid] for f in flags)
        self.nodata = ds.nodata
        self.stretch = self._stretch(check_stretch(stretch))
        self.geo = GeoInfo(ds.crs, ds.transform, ds.crs is not None or not ds.transform.is_identity)

    def _stretch(self, rule: str) -> Stretch:
        n = len(self._read_bands)
        if rule == "auto":
            rule = "as stored" if self.dtype == np.uint8 else "percentile"
        if rule == "as stored":
            return Stretch("as stored", (0.0,) * n, (255.0,) * n)
        if rule == "range":
            if not np.issubdtype(self.dtype, np.integer):
                raise DataError(f"{self.path}: {self.dtype} values have no fixed range; use --stretch percentile")
            info = np.iinfo(self.dtype)
            return Stretch("range", (float(info.min),) * n, (float(info.max),) * n)
        return self._percentiles()

    def _percentiles(self) -> Stretch:
        """Per-band 2nd..98th percentiles of valid pixels, on a decimated read (bounded memory and time)."""
        from rasterio.enums import Resampling

        f = max(1.0, max(self.height, self.width) / SAMPLE_SIDE)
        shape = (len(self._read_bands), max(1, int(self.height / f)), max(1, int(self.width / f)))
        data = self._guard(lambda: self.ds.read(self._read_bands, out_shape=shape, resampling=Resampling.nearest))
        valid = self._mask(out_shape=shape) if self.masked else None
        low, high = [], []
        for band in data:
            values = band[valid] if valid is not None else band.ravel()
            values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            lo, hi = (np.percentile(values, PERCENTILES).tolist() if values.size else (0.0, 1.0))
            low.append(float(lo))
            high.append(float(hi) if hi > lo else float(lo) + 1.0)
        return Stretch("percentile", tuple(low), tuple(high))

    def _guard(self, fn: Any) -> Any:
        """Run a read; a damaged block becomes one line naming the file."""
        import rasterio

        try:
            return fn()
        except rasterio.errors.RasterioError as e:
            raise DataError(f"{self.path}: could not read pixels ({_first_line(e)}); the file is damaged") from None

    def _mask(self, **kwargs: Any) -> np.ndarray:
        masks = self._guard(lambda: self.ds.read_masks(self._read_bands, **kwargs))
        return (masks != 0).any(axis=0)

    def valid(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        from rasterio.windows import Window

        return self._mask(window=Window(x, y, w, h)) if self.masked else None

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        from rasterio.windows import Window

        data = self._guard(lambda: self.ds.read(self._read_bands, window=Window(x, y, w, h)))
        valid = self.valid(y, x, h, w)
        rgb = self.stretch.apply(data)[self._rgb]
        if rgb.dtype.kind == "f":
            np.nan_to_num(rgb, copy=False, nan=0.0)
        return np.ascontiguousarray(rgb.transpose(1, 2, 0)), valid

    def describe(self) -> dict[str, Any]:
        """What predictions.json records about how the raster was read."""
        return {"bands": list(self.bands), "dtype": str(self.dtype), "stretch": self.stretch.to_dict(),
                "nodata": self.nodata, "crs": str(self.geo.crs) if self.geo.crs else None}

    def close(self) -> None:
        self.ds.close()


class Resampled:
    """A raster seen at `scale`, window by window: bilinear as evaluation resizes a decoded image (OpenCV's
    INTER_LINEAR: pixel centres, edges clamped), so a TIFF read in windows reaches the network at the
    scale a JPEG of the same frame does. Valid pixels: the nearest source pixel's. Only the source rows and
    columns an output window samples are kept, read in runs of at most WINDOW_PIXELS, so memory follows the
    output window even when a mosaic is brought down to a few hundred pixels."""

    WINDOW_PIXELS = 1 << 22

    def __init__(self, reader: RasterReader, scale: float) -> None:
        from segadapt.data.transforms import scaled_size

        self.reader, self.masked = reader, reader.masked
        self.height, self.width = scaled_size(reader.height, reader.width, scale)

    @staticmethod
    def _axis(start: int, n: int, size: int, source: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per output index: the lower source index and the upper one's weight (bilinear), the nearest one."""
        centres = (np.arange(start, start + n, dtype=np.float64) + 0.5) * (source / size)
        at = np.clip(centres - 0.5, 0.0, source - 1.0)
        low = np.minimum(np.floor(at).astype(np.int64), max(source - 2, 0))
        return low, (at - low).astype(np.float32), np.minimum(np.floor(centres).astype(np.int64), source - 1)

    def _gather(self, rows: np.ndarray, cols: np.ndarray, masks: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Source pixels (or only the valid mask) at rows x cols (sorted, unique), in runs of adjacent rows."""
        left, span = int(cols[0]), int(cols[-1] - cols[0] + 1)
        run = max(1, self.WINDOW_PIXELS // span)
        rgb = None if masks else np.empty((len(rows), len(cols), 3), np.float32)
        valid = np.ones((len(rows), len(cols)), bool) if self.masked else None
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1 and j - i < run:
                j += 1
            if masks:
                got, ok = None, self.reader.valid(int(rows[i]), left, j - i, span)
            else:
                got, ok = self.reader.read(int(rows[i]), left, j - i, span)
            if rgb is not None and got is not None:
                rgb[i:j] = got[:, cols - left]
            if valid is not None and ok is not None:
                valid[i:j] = ok[:, cols - left]
            i = j
        return rgb, valid

    def _sample(self, y: int, x: int, h: int, w: int, masks: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        (y0, fy, ny), (x0, fx, nx) = self._axis(y, h, self.height, self.reader.height), \
            self._axis(x, w, self.width, self.reader.width)
        y1, x1 = np.minimum(y0 + 1, self.reader.height - 1), np.minimum(x0 + 1, self.reader.width - 1)
        rows, cols = np.unique(np.concatenate([y0, y1, ny])), np.unique(np.concatenate([x0, x1, nx]))
        src, valid = self._gather(rows, cols, masks)
        r0, r1, rn = (np.searchsorted(rows, v) for v in (y0, y1, ny))
        c0, c1, cn = (np.searchsorted(cols, v) for v in (x0, x1, nx))
        mask = valid[np.ix_(rn, cn)] if valid is not None else None
        if src is None:
            return None, mask
        wy, wx = fy[:, None, None], fx[None, :, None]
        top = src[r0] * (1 - wy) + src[r1] * wy
        return top[:, c0] * (1 - wx) + top[:, c1] * wx, mask

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        rgb, valid = self._sample(y, x, h, w, masks=False)
        assert rgb is not None
        return rgb, valid

    def valid(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        return self._sample(y, x, h, w, masks=True)[1] if self.masked else None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def open_raster(path: Path, bands: tuple[int, ...] | None = None, stretch: str = "auto") -> ArrayReader | GeoTiffReader:
    """A TIFF through rasterio windows when rasterio is installed; anything else decoded whole."""
    if is_tiff(path) and rasterio_or_none() is not None:
        return GeoTiffReader(path, bands, stretch)
    if bands is not None:
        raise DataError(f"{path}: --bands applies to TIFFs read with rasterio"
                        + ("" if is_tiff(path) else "; this image is decoded as RGB")
                        + ("" if rasterio_or_none() else f" ({GEO_HINT})"))
    return ArrayReader(read_image(path))
