"""Rasters seen on another raster's pixel grid, and where on that grid both hold data.

A raster is put on a grid through a GDAL warped view (rasterio's WarpedVRT) that carries an alpha band, so a
pixel with no source (outside the raster's footprint, or nodata / masked in it) reads as invalid in the view's
`dataset_mask()` whatever the raster declares: without the alpha a raster with no nodata value reads as valid
black beyond its edge. `measure` compares two rasters on a coarse copy of a grid (cheap for any mosaic size):
the share of the grid's data that the other raster covers, and where that overlap lies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segadapt.chatter import hushed
from segadapt.errors import DataError

COARSE_SIDE = 512  # the overlap is measured on the grid decimated to at most this many cells a side


@dataclass(frozen=True)
class Grid:
    """A raster's pixel grid: CRS, affine geotransform (pixel corner -> world) and size."""

    crs: Any
    transform: Any
    height: int
    width: int

    @classmethod
    def of(cls, ds: Any) -> Grid:
        return cls(ds.crs, ds.transform, ds.height, ds.width)


def onto(src: Any, grid: Grid, nearest: bool = False) -> Any:
    """`src` seen on `grid` (GDAL warped view, bilinear unless `nearest`), with an alpha band marking the pixels
    that have a source: its `dataset_mask()` is 0 outside `src`'s footprint and where `src` has no data."""
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.vrt import WarpedVRT

    with hushed():
        return WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                         resampling=Resampling.nearest if nearest else Resampling.bilinear,
                         add_alpha=ColorInterp.alpha not in src.colorinterp)  # a source alpha already says


def data_bands(ds: Any) -> list[int]:
    """1-based indices of the bands that hold pixel values (an alpha band is validity, read as the mask)."""
    from rasterio.enums import ColorInterp

    return [i for i, c in enumerate(ds.colorinterp, 1) if c != ColorInterp.alpha] or [1]


def gdal_errors() -> tuple[type[BaseException], ...]:
    """What rasterio raises when GDAL or PROJ refuses (e.g. no transformation between two CRS)."""
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    return RasterioError, CPLE_BaseError


def _short(crs: Any) -> str:
    text = crs.to_string() if crs is not None else "none"
    return text if len(text) <= 48 else f"{text[:45]}..."


def not_on_one_ground(base: Path, other: Path, crs: tuple[Any, Any], e: BaseException) -> DataError:
    """The one line for two rasters GDAL cannot relate (`crs`: base's, other's); PROJ's own message quotes
    both CRS in full (pages of JSON), so only its kind is kept."""
    return DataError(f"{other}: its CRS ({_short(crs[1])}) has no transformation to the CRS of {base} "
                     f"({_short(crs[0])}; {type(e).__name__}); reproject one to the other's CRS (gdalwarp -t_srs)")


@dataclass(frozen=True)
class Overlap:
    """Where a raster (`other`) has data on `grid` (`base`'s grid), measured on a coarse copy of the grid."""

    coverage: float  # share of base's data area where other has data too (0..1)
    cells: np.ndarray  # bool, coarse: both have data
    cell: tuple[float, float]  # a coarse cell's height and width in grid pixels

    @property
    def area(self) -> float:
        """The overlap's area in grid pixels."""
        return float(self.cells.sum()) * self.cell[0] * self.cell[1]

    @property
    def margin(self) -> tuple[int, int]:
        """Cells of margin per axis: a coarse cell is sampled at its centre, so the overlap may reach into its
        neighbours (none when a cell is a pixel)."""
        return int(self.cell[0] > 1), int(self.cell[1] > 1)

    def _span(self, axis: int, size: int) -> tuple[int, int]:
        hit = np.flatnonzero(self.cells.any(axis=1 - axis))
        step, m = self.cell[axis], self.margin[axis]
        return max(0, math.floor((hit[0] - m) * step)), min(size, math.ceil((hit[-1] + 1 + m) * step))

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in grid pixels of a box holding the whole overlap."""
        (top, bottom), (left, right) = self._span(0, height), self._span(1, width)
        return top, left, bottom, right

    def touches(self, row: int, col: int, height: int, width: int) -> bool:
        """Whether a window of the grid may hold pixels of the overlap."""
        (sy, sx), (my, mx) = self.cell, self.margin
        r0, c0 = max(0, math.floor(row / sy) - my), max(0, math.floor(col / sx) - mx)
        r1, c1 = math.ceil((row + height) / sy) + my, math.ceil((col + width) / sx) + mx
        return bool(self.cells[r0:r1, c0:c1].any())


def _coarse(grid: Grid) -> tuple[Grid, tuple[float, float]]:
    from rasterio.transform import Affine

    f = max(1.0, max(grid.height, grid.width) / COARSE_SIDE)
    h, w = max(1, math.ceil(grid.height / f)), max(1, math.ceil(grid.width / f))
    cell = (grid.height / h, grid.width / w)
    return Grid(grid.crs, grid.transform @ Affine.scale(cell[1], cell[0]), h, w), cell


def _has_data(ds: Any, grid: Grid) -> np.ndarray:
    with onto(ds, grid, nearest=True) as view:
        return view.dataset_mask() > 0


def measure(base: Any, other: Any, paths: tuple[Path, Path]) -> Overlap:
    """Where `other` has data on `base`'s grid. `paths` (base's, other's) name the files in errors: a pair
    whose CRS have no transformation between them, and a base raster with no data at all."""
    coarse, cell = _coarse(Grid.of(base))
    try:
        has_base, has_other = _has_data(base, coarse), _has_data(other, coarse)
    except gdal_errors() as e:
        raise not_on_one_ground(*paths, (base.crs, other.crs), e) from None
    if not has_base.any():
        raise DataError(f"{paths[0]}: holds no data (every pixel is nodata or masked); check the file")
    both = has_base & has_other
    return Overlap(float(both.sum() / has_base.sum()), both, cell)
