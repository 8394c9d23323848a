"""The files `segadapt predict` writes for one image, each atomically (a temp file renamed when complete).

Per input <stem>, in the output folder:
- `<stem>_mask.png`: class indices as a palette PNG in the model's dataset colours; `<stem>_mask.tif` for a
  TIFF input: the same indices with the dataset's colour map and the input's CRS and transform.
  Pixels without data (GeoTIFF nodata) hold NODATA (255; 65535 for models of more than 255 classes), which
  is also the mask's nodata value.
- `<stem>_overlay.png|tif` (--overlay): the image blended half and half with the class colours.
- `<stem>_confidence.png|tif` (--confidence): the max softmax probability; `<stem>_entropy.png|tif`
  (--entropy): the softmax entropy divided by ln(classes), so 0 = certain and 1 = uniform. PNGs store
  round(255 * value) as 8-bit grey; TIFFs store float32 with NaN as nodata.

PNG outputs are assembled in memory (their inputs were decoded whole anyway); TIFF outputs are written in
blocks of rows as inference finishes them, so memory is bounded by those rows, not by the raster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from segadapt.chatter import hushed
from segadapt.checkpoint import atomic_path
from segadapt.data.rasters import GeoInfo
from segadapt.models.factory import sha256_file

TIFF_BLOCK = 256  # TIFF outputs are tiled in 256x256 blocks and written 256 rows at a time


def nodata_value(num_classes: int) -> int:
    return 255 if num_classes <= 255 else 65535


def mask_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8 if num_classes <= 255 else np.uint16)


@dataclass(frozen=True)
class OutputSpec:
    """Which optional outputs to write besides the mask."""

    overlay: bool = False
    confidence: bool = False
    entropy: bool = False

    def kinds(self) -> list[str]:
        return ["mask", *(k for k in ("overlay", "confidence", "entropy") if getattr(self, k))]


def output_names(stem: str, tiff: bool, spec: OutputSpec) -> dict[str, str]:
    """kind -> file name of each output of the input `stem`."""
    ext = ".tif" if tiff else ".png"
    return {k: f"{stem}_{k}{ext}" for k in spec.kinds()}


class PngWriter:
    """Rows gathered into one array, saved as PNG when the block ends without error."""

    def __init__(self, path: Path, height: int, width: int, channels: int, dtype: np.dtype,
                 palette: Sequence[Sequence[int]] | None = None) -> None:
        shape = (height, width) if channels == 1 else (height, width, channels)
        self.path, self.palette, self.array = path, palette, np.zeros(shape, dtype)

    def write(self, y: int, rows: np.ndarray) -> None:
        self.array[y:y + rows.shape[0]] = rows

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            return
        a = self.array
        image = Image.fromarray(a)  # uint8: L or RGB; uint16 (over 255 classes): I;16
        if self.palette is not None and a.dtype == np.uint8:  # an L image with a palette becomes a P image
            flat = [int(v) for colour in self.palette for v in colour][: 3 * 255]
            image.putpalette(flat + [0] * (768 - len(flat)))
        image.save(self.path, format="PNG", compress_level=1)  # the temp name has no suffix: say the format


class TiffWriter:
    """A (Geo)TIFF written in whole blocks of rows; the georeferencing is the input's."""

    def __init__(self, path: Path, height: int, width: int, count: int, dtype: np.dtype, geo: GeoInfo,
                 nodata: float | None = None, colormap: dict[int, tuple[int, int, int, int]] | None = None) -> None:
        import rasterio

        profile: dict[str, Any] = {"driver": "GTiff", "height": height, "width": width, "count": count,
                                   "dtype": dtype.name, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
        if height >= TIFF_BLOCK and width >= TIFF_BLOCK:
            profile.update(tiled=True, blockxsize=TIFF_BLOCK, blockysize=TIFF_BLOCK)
        if geo.georeferenced:
            profile.update(crs=geo.crs, transform=geo.transform)
        if nodata is not None:
            profile["nodata"] = nodata
        with hushed():  # NotGeoreferencedWarning for a plain TIFF's output
            self.ds = rasterio.open(path, "w", **profile)
        if colormap:
            self.ds.write_colormap(1, colormap)
        self.width, self.count, self.dtype = width, count, dtype
        self.pending: list[np.ndarray] = []
        self.start = self.rows = 0

    def write(self, y: int, rows: np.ndarray) -> None:
        if y != self.start + self.rows:
            raise ValueError(f"rows must arrive in order: expected row {self.start + self.rows}, got {y}")
        self.pending.append(rows)
        self.rows += rows.shape[0]
        if self.rows >= TIFF_BLOCK:
            self._flush(self.rows - self.rows % TIFF_BLOCK)

    def _flush(self, n: int) -> None:
        from rasterio.windows import Window

        block = np.concatenate(self.pending, axis=0)
        data = block[:n].reshape(n, self.width, self.count).transpose(2, 0, 1)
        self.ds.write(np.ascontiguousarray(data, self.dtype), window=Window(0, self.start, self.width, n))
        rest = block[n:]
        self.pending = [rest] if rest.shape[0] else []
        self.start, self.rows = self.start + n, self.rows - n

    def __enter__(self) -> TiffWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if kind is None and self.rows:
                self._flush(self.rows)
        finally:
            self.ds.close()


def colour_table(palette: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """num_classes x 3 uint8 colours (classes past the palette are black)."""
    lut = np.zeros((max(num_classes, 1), 3), np.uint8)
    n = min(len(palette), num_classes)
    lut[:n] = np.asarray(palette[:n], np.uint8).reshape(n, 3)
    return lut


class ImageOutputs:
    """Every output of one image: `write` takes finished rows; leaving the block without error closes every
    file, calls `before_rename` with each one's sha256 (kind -> hex; predict records them there, so a file is
    never in place before the record that owns it), then renames them all into place. An exception (Ctrl-C
    included), in the block or in `before_rename`, removes the temp files."""

    def __init__(self, paths: dict[str, Path], height: int, width: int, num_classes: int,
                 palette: Sequence[Sequence[int]], geo: GeoInfo | None,
                 before_rename: Callable[[dict[str, str]], None] | None = None) -> None:
        self.paths, self.height, self.width, self.geo = paths, height, width, geo
        self.num_classes, self.palette = num_classes, palette
        self.before_rename = before_rename
        self.lut = colour_table(palette, num_classes)
        self.nodata = nodata_value(num_classes)
        self.temps, self.files = ExitStack(), ExitStack()
        self.temp_paths: dict[str, Path] = {}
        self.writers: dict[str, PngWriter | TiffWriter] = {}

    def _writer(self, kind: str, tmp: Path) -> PngWriter | TiffWriter:
        h, w, n = self.height, self.width, self.num_classes
        channels, dtype = {"mask": (1, mask_dtype(n)), "overlay": (3, np.dtype(np.uint8))}.get(
            kind, (1, np.dtype(np.float32) if self.geo else np.dtype(np.uint8)))
        if self.geo is None:
            return PngWriter(tmp, h, w, channels, dtype, self.palette if kind == "mask" else None)
        colormap = None
        nodata: float | None = None
        if kind == "mask":
            nodata = self.nodata
            if dtype == np.uint8:
                colormap = {i: (*map(int, self.lut[i]), 255) for i in range(min(n, 255))}
                colormap[self.nodata] = (0, 0, 0, 0)
        elif kind in ("confidence", "entropy"):
            nodata = float("nan")
        return TiffWriter(tmp, h, w, channels, dtype, self.geo, nodata, colormap)

    def __enter__(self) -> ImageOutputs:
        with ExitStack() as temps, ExitStack() as files:
            for kind, path in self.paths.items():
                self.temp_paths[kind] = tmp = temps.enter_context(atomic_path(path))
                self.writers[kind] = files.enter_context(self._writer(kind, tmp))
            self.temps, self.files = temps.pop_all(), files.pop_all()
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.files.__exit__(kind, e, tb)  # closed: complete on success
            if kind is None and self.before_rename is not None:
                self.before_rename({k: sha256_file(p) for k, p in self.temp_paths.items()})
        except BaseException as failed:
            self.temps.__exit__(type(failed), failed, failed.__traceback__)
            raise
        self.temps.__exit__(kind, e, tb)

    def write(self, y: int, labels: np.ndarray, confidence: np.ndarray, entropy: np.ndarray | None,
              valid: np.ndarray | None, rgb: np.ndarray | None) -> None:
        """Rows [y, y + len(labels)) of every output; `rgb` (the image's rows) is needed for the overlay."""
        w = self.writers
        mask = labels.astype(mask_dtype(self.num_classes))
        if valid is not None:
            mask[~valid] = self.nodata
        w["mask"].write(y, mask)
        if "overlay" in w:
            assert rgb is not None
            w["overlay"].write(y, self._overlay(labels, valid, rgb))
        for kind, values in (("confidence", confidence), ("entropy", entropy)):
            if kind in w:
                assert values is not None
                w[kind].write(y, self._grey(values, valid))

    def _overlay(self, labels: np.ndarray, valid: np.ndarray | None, rgb: np.ndarray) -> np.ndarray:
        blend = rgb.astype(np.float32) * 0.5 + self.lut[labels] * 0.5
        if valid is not None:
            blend[~valid] = rgb[~valid]
        return np.clip(np.rint(blend), 0, 255).astype(np.uint8)

    def _grey(self, values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        if self.geo is not None:
            out = values.astype(np.float32)
            if valid is not None:
                out[~valid] = np.nan
            return out
        out = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
        if valid is not None:
            out[~valid] = 0
        return out
