"""Two eras' class probabilities on one grid (era 1's), and the from->to change of each pixel.

Each era is predicted with its own model at its own scale (segadapt.predict: the same tiling, blending and
memory plan as `predict`), and its class probabilities are kept at its input's size:
- GeoTIFFs: streamed into a temporary float32 GeoTIFF (one band per class, NaN where the input has no data).
  Era 2's is then seen on era 1's grid through a GDAL warped view (reprojected when the CRS differs,
  bilinear, as data/overlap.onto puts D2 on D1 for real pairs; NaN where it has no source), so the
  probabilities, not the labels, are resampled; a pixel outside era 2's footprint or without its data has no
  source. Both are read back a block of rows at a time: memory is bounded by the tile plan and one block,
  never the whole raster.
- Plain images (decoded whole, as predict decodes them) are held in memory; era 2's probabilities are warped
  onto era 1's frame by the registration `--align ecc|features` estimates (data/align.py), or, without it,
  stretched to era 1's frame (the two are taken to show the same frame).

Codes: with C classes, a pixel that was class i in era 1 and class j in era 2 gets code i*C + j (i == j:
unchanged); `uncertain` (C*C) marks a pixel whose classes differ while either era's probability of its
class is below `min_confidence`: it is not counted as change, since adaptation errors would read as change.
Pixels without data in either era, or outside the other, are nodata.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segadapt.data.rasters import ArrayReader, GeoInfo, GeoTiffReader, RasterReader
from segadapt.errors import DataError

BLOCK_ROWS = 256  # rows of era 1's grid handled at once when the change is written
CONTEXT_PX = 128  # era 2 is predicted over era 1's ground plus this margin (its pixels): the network's context


def code_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8 if num_classes * num_classes + 1 < 255 else np.uint16)


def code_nodata(num_classes: int) -> int:
    return 255 if code_dtype(num_classes) == np.uint8 else 65535


@dataclass
class Block:
    """Rows [y, y + n) of both eras on era 1's grid."""

    y: int
    labels1: np.ndarray
    labels2: np.ndarray
    conf1: np.ndarray
    conf2: np.ndarray
    valid: np.ndarray  # both eras have data here


@dataclass
class ChangeStats:
    """Counts over the pixels both eras cover (what `<stem>_change.json` reports)."""

    num_classes: int
    matrix: np.ndarray = field(init=False)  # C x C pixels, from (era 1) -> to (era 2), confident pixels only
    uncertain: int = 0
    pixels: int = 0  # pixels of era 1's grid
    common: int = 0  # pixels where both eras have data
    conf_sum: np.ndarray = field(init=False)  # [changed, unchanged] x [era 1, era 2]
    conf_n: np.ndarray = field(init=False)
    area: np.ndarray = field(init=False)  # 2 x C: pixels of each class in each era, over the common pixels

    def __post_init__(self) -> None:
        c = self.num_classes
        self.matrix, self.area = np.zeros((c, c), np.int64), np.zeros((2, c), np.int64)
        self.conf_sum, self.conf_n = np.zeros((2, 2), np.float64), np.zeros(2, np.int64)

    def add(self, b: Block, codes: np.ndarray) -> None:
        c = self.num_classes
        self.pixels += b.valid.size
        self.common += int(b.valid.sum())
        confident = b.valid & (codes != c * c)
        self.uncertain += int((b.valid & ~confident).sum())
        for k, labels in enumerate((b.labels1, b.labels2)):
            self.area[k] += np.bincount(labels[b.valid], minlength=c)
        pairs = b.labels1[confident].astype(np.int64) * c + b.labels2[confident]
        self.matrix += np.bincount(pairs, minlength=c * c).reshape(c, c)
        changed = confident & (b.labels1 != b.labels2)
        for k, sel in enumerate((changed, confident & ~changed)):
            self.conf_sum[k] += (float(b.conf1[sel].sum(dtype=np.float64)), float(b.conf2[sel].sum(dtype=np.float64)))
            self.conf_n[k] += int(sel.sum())

    def to_dict(self, class_names: tuple[str, ...], pixel_m2: float | None) -> dict[str, Any]:
        """The JSON report: pixels, and ground area where the grid is in metres."""
        m = self.matrix
        confident = int(m.sum())
        changed = confident - int(np.trace(m))

        def area(px: float) -> dict[str, float]:
            return {} if pixel_m2 is None else {"m2": px * pixel_m2, "ha": px * pixel_m2 / 1e4}

        def conf(k: int) -> dict[str, float | None]:
            n = int(self.conf_n[k])
            return {"era1": self.conf_sum[k, 0] / n if n else None, "era2": self.conf_sum[k, 1] / n if n else None}

        per_class = {name: {f"era{k + 1}": {"pixels": int(self.area[k, i]), **area(float(self.area[k, i]))}
                            for k in range(2)} for i, name in enumerate(class_names)}
        return {"classes": list(class_names), "pixel_area_m2": pixel_m2, "pixels": self.pixels,
                "common_pixels": self.common, "common_fraction": self.common / self.pixels if self.pixels else 0.0,
                "uncertain_pixels": self.uncertain, "changed_pixels": changed, **{f"changed_{k}": v for k, v in
                                                                                   area(changed).items()},
                "changed_fraction": changed / confident if confident else 0.0,
                "mean_confidence": {"changed": conf(0), "unchanged": conf(1)},
                "transitions_pixels": m.tolist(),
                "transitions_m2": None if pixel_m2 is None else (m * pixel_m2).tolist(),
                "class_area": per_class}


def codes_of(b: Block, num_classes: int, min_confidence: float | None) -> np.ndarray:
    """From->to code per pixel (see the module docstring)."""
    c = num_classes
    codes = (b.labels1.astype(np.int64) * c + b.labels2).astype(code_dtype(c))
    if min_confidence is not None:
        unsure = (b.labels1 != b.labels2) & ((b.conf1 < min_confidence) | (b.conf2 < min_confidence))
        codes[unsure] = c * c
    codes[~b.valid] = code_nodata(c)
    return codes


def pixel_area_m2(geo: GeoInfo | None) -> float | None:
    """Ground area of one pixel in m^2 when the grid is a projected CRS in (a multiple of) metres, else None."""
    if geo is None or not geo.georeferenced or geo.crs is None or not geo.crs.is_projected:
        return None
    t = geo.transform
    try:
        factor = float(geo.crs.linear_units_factor[1])
    except Exception:  # a CRS whose units GDAL cannot name
        return None
    return abs(t.a * t.e - t.b * t.d) * factor * factor


def _summarise(probs: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, confidence and validity (no NaN) of C x n x W probabilities."""
    valid = valid & np.isfinite(probs).all(0)
    p = np.nan_to_num(probs, nan=0.0)
    return p.argmax(0), p.max(0), valid


class WindowReader:
    """A window of a GeoTIFF read as a raster of its own, georeferenced as that window: era 2's part around era
    1's ground, so a tile of era 1 paired with a whole era-2 mosaic predicts only what it needs of it."""

    def __init__(self, reader: GeoTiffReader, row: int, col: int, height: int, width: int) -> None:
        from rasterio.windows import Window

        self.reader, self.row, self.col, self.height, self.width = reader, row, col, height, width
        transform = reader.ds.window_transform(Window(col, row, width, height))
        self.geo = GeoInfo(reader.geo.crs, transform, True)

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.reader.read(y + self.row, x + self.col, h, w)

    def valid(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        return self.reader.valid(y + self.row, x + self.col, h, w)

    def describe(self) -> dict[str, Any]:
        return {**self.reader.describe(), "window": [self.row, self.col, self.height, self.width]}

    def close(self) -> None:
        self.reader.close()


def around(era1: GeoTiffReader, era2: GeoTiffReader, path2: Path) -> GeoTiffReader | WindowReader:
    """The part of `era2` that covers era 1's ground, widened by CONTEXT_PX (all of it when that is all)."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    bounds = transform_bounds(era1.geo.crs, era2.geo.crs, *era1.ds.bounds, densify_pts=21)
    win = from_bounds(*bounds, transform=era2.ds.transform)
    top, left = math.floor(win.row_off) - CONTEXT_PX, math.floor(win.col_off) - CONTEXT_PX
    bottom = math.ceil(win.row_off + win.height) + CONTEXT_PX
    right = math.ceil(win.col_off + win.width) + CONTEXT_PX
    top, left, bottom, right = max(top, 0), max(left, 0), min(bottom, era2.height), min(right, era2.width)
    if bottom <= top or right <= left:
        raise DataError(f"{path2}: does not cover any of its era-1 raster's ground ({era1.path}); pair it with "
                        "the era-2 raster of that area")
    if (top, left, bottom, right) == (0, 0, era2.height, era2.width):
        return era2
    return WindowReader(era2, top, left, bottom - top, right - left)


# --- an era's probabilities while it is predicted ----------------------------------------------------------

class ProbTiff:
    """The sink predict_image streams an era's probabilities into: a temporary float32 GeoTIFF, NaN where the
    input has no data, with the input's georeferencing."""

    def __init__(self, path: Path, reader: GeoTiffReader | WindowReader, num_classes: int) -> None:
        from segadapt.predict_outputs import TiffWriter

        self.path = path
        self.writer = TiffWriter(path, reader.height, reader.width, num_classes, np.dtype(np.float32), reader.geo,
                                 float("nan"))

    def __call__(self, y: int, probs: torch.Tensor, valid: np.ndarray | None) -> None:
        rows = probs.permute(1, 2, 0).numpy().astype(np.float32, copy=True)
        if valid is not None:
            rows[~valid] = np.nan
        self.writer.write(y, rows)

    def close(self) -> None:
        self.writer.__exit__(None, None, None)


class ProbArray:
    """The sink for a plain image: its probabilities in memory (it was decoded whole anyway)."""

    def __init__(self, reader: RasterReader, num_classes: int) -> None:
        self.probs = np.zeros((num_classes, reader.height, reader.width), np.float32)
        self.valid = np.ones((reader.height, reader.width), bool)

    def __call__(self, y: int, probs: torch.Tensor, valid: np.ndarray | None) -> None:
        n = probs.shape[1]
        self.probs[:, y:y + n] = probs.numpy()
        if valid is not None:
            self.valid[y:y + n] = valid


# --- both eras on era 1's grid -------------------------------------------------------------------------------

class GeoEras:
    """Era 1's probability raster and era 2's seen on its grid, read a block of rows at a time."""

    def __init__(self, path1: Path, path2: Path, paths: tuple[Path, Path]) -> None:
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        from segadapt.data.overlap import gdal_errors, not_on_one_ground

        self.ds1, self.ds2 = rasterio.open(path1), rasterio.open(path2)
        try:  # as data/overlap.onto, but NaN marks no source: a float alpha band reads as valid in dataset_mask
            d1 = self.ds1
            self.view = WarpedVRT(self.ds2, crs=d1.crs, transform=d1.transform, width=d1.width, height=d1.height,
                                  resampling=Resampling.bilinear, nodata=float("nan"))
        except gdal_errors() as e:
            self.close()
            raise not_on_one_ground(paths[0], paths[1], (self.ds1.crs, self.ds2.crs), e) from None
        self.height, self.width, self.count = self.ds1.height, self.ds1.width, self.ds1.count

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[Block]:
        from rasterio.windows import Window

        bands = list(range(1, self.count + 1))
        for y in range(0, self.height, rows):
            win = Window(0, y, self.width, min(rows, self.height - y))
            p1 = self.ds1.read(bands, window=win)
            p2 = self.view.read(bands, window=win)
            l1, c1, v1 = _summarise(p1, np.ones(p1.shape[1:], bool))
            l2, c2, v2 = _summarise(p2, np.ones(p2.shape[1:], bool))
            yield Block(y, l1, l2, c1, c2, v1 & v2)

    def close(self) -> None:
        for name in ("view", "ds2", "ds1"):
            ds = getattr(self, name, None)
            if ds is not None:
                ds.close()


class PlainEras:
    """Two in-memory probability maps, era 2's warped onto era 1's frame by `matrix` (era 1 px -> era 2 px)."""

    def __init__(self, a: ProbArray, b: ProbArray, matrix: np.ndarray) -> None:
        from segadapt.data.align import valid_mask, warp_into

        size1 = a.probs.shape[1:]
        size2 = b.probs.shape[1:]
        warped = np.stack([warp_into(np.ascontiguousarray(ch), matrix, size1) for ch in b.probs])
        inside = valid_mask(matrix, size1, size2)
        has = warp_into(b.valid.astype(np.float32), matrix, size1) > 0.999  # every bilinear source has data
        self.l1, self.c1 = a.probs.argmax(0), a.probs.max(0)
        self.l2, self.c2 = warped.argmax(0), warped.max(0)
        self.valid = a.valid & inside & has
        self.height, self.width = size1

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[Block]:
        for y in range(0, self.height, rows):
            s = slice(y, y + rows)
            yield Block(y, self.l1[s], self.l2[s], self.c1[s], self.c2[s], self.valid[s])

    def close(self) -> None:
        pass


def frame_matrix(size1: tuple[int, int], size2: tuple[int, int]) -> np.ndarray:
    """Era 1 pixel centres -> era 2's, for two images of one frame at different sizes (corners on corners)."""
    sy, sx = size2[0] / size1[0], size2[1] / size1[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def plain_matrix(image1: np.ndarray, image2: np.ndarray, align: str | None, path2: Path) -> tuple[np.ndarray, dict]:
    """The transform taking era 1's frame to era 2's for plain images, and what the JSON says of it."""
    size1, size2 = image1.shape[:2], image2.shape[:2]
    if align is None:
        return frame_matrix(size1, size2), {"method": "frame"}
    from segadapt.data.align import AlignSettings, register

    reg = register(image1, image2, AlignSettings(method=align))
    if not reg.ok:
        raise DataError(f"{path2}: could not be registered onto its era-1 image with --align {align} ({reg.reason}); "
                        "try the other --align method or pair georeferenced rasters")
    return reg.transform, reg.to_dict()


def thumbnail(reader: RasterReader, side: int = 512) -> np.ndarray:
    """The image at most `side` px a side (bounded memory for a mosaic: data/rasters.Resampled)."""
    from segadapt.data.rasters import Resampled

    f = min(1.0, side / max(reader.height, reader.width))
    small: RasterReader = reader if f == 1.0 else (
        ArrayReader(reader.image[::math.ceil(1 / f), ::math.ceil(1 / f)]) if isinstance(reader, ArrayReader)
        else Resampled(reader, f))
    rgb, _ = small.read(0, 0, small.height, small.width)
    return np.clip(rgb, 0, 255).astype(np.uint8)
