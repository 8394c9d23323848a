"""Pairs by ground coordinates: random windows cut at the same world coordinates from a D1 and a D2 mosaic.

The two mosaics are GeoTIFFs (or any raster GDAL reads) of the same area, possibly in another CRS or at
another resolution. D1's pixel grid is the training grid: D2 is resampled onto it through a GDAL warped view
(data/overlap.py: reprojected when the CRS differs, bilinear), so a window of D1's grid is the same piece of
ground in both. Pixels that are nodata in either mosaic, or outside D2's footprint (whatever D2 declares),
have no source and are marked invalid in the item's validity mask (what the masked regression loss skips;
losses.py).

When the pairs are made, the overlap is measured: `coverage` is the share of D1's data that D2 covers (adapt
records it as raster_coverage). Mosaics whose overlap cannot hold one training window are refused, and
windows are drawn only around the overlap. Each item is one window: a random place (torch's RNG, as every
augmentation here), a random scale from the training transform's range (the window is crop/scale D1 pixels,
resized to the crop) and the shared flip. Windows where less than `min_valid` of the pixels are valid are
drawn again. An epoch is `windows` items.
`RasterTiles` serves evaluation: an image mosaic put on a label raster's grid and both cut into tiles, pixels
with no image or label data labelled ignore; `coverage` is the share of the labels' area the image covers.

Rasterio handles cannot cross process boundaries: they are opened lazily in each process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from segadapt.chatter import hushed
from segadapt.data.base import DatasetInfo, SegmentationSource
from segadapt.data.overlap import Grid, Overlap, data_bands, gdal_errors, measure, not_on_one_ground, onto
from segadapt.data.rasters import rasterio_or_none
from segadapt.data.transforms import JointTransform
from segadapt.errors import ConfigError, DataError

MAX_DRAWS = 50  # windows drawn before giving up on one with enough valid pixels


def _open(path: Path, what: str) -> Any:
    rasterio = rasterio_or_none()
    if rasterio is None:
        raise ConfigError(f"{path}: georeferenced rasters need rasterio: pip install 'segadapt[geo]'")
    from rasterio.errors import RasterioIOError

    if not path.is_file():
        raise DataError(f"{path}: {what} raster not found; check the path")
    try:
        with hushed():  # NotGeoreferencedWarning: the check below says it in one line
            ds = rasterio.open(path)
    except RasterioIOError as e:
        raise DataError(f"{path}: not a raster GDAL can read ({e}); give a GeoTIFF") from None
    if ds.crs is None or ds.transform.is_identity:
        ds.close()
        raise DataError(f"{path}: {what} raster has no georeferencing (CRS and geotransform); pairs by ground "
                        f"coordinates need both")
    return ds


def _rgb(data: np.ndarray, path: Path) -> np.ndarray:
    """Bands x H x W -> uint8 H x W x 3 (the first three bands; one band is repeated as grey)."""
    if data.shape[0] == 1:
        data = np.repeat(data, 3, 0)
    if data.shape[0] < 3:
        raise DataError(f"{path}: {data.shape[0]} bands; give an RGB (3 or more bands) or a one-band raster")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: {data.dtype} pixels; segadapt reads 8-bit rasters (convert with gdal_translate "
                        f"-ot Byte -scale)")
    return np.ascontiguousarray(data[:3].transpose(1, 2, 0))


def _pixels(ds: Any, window: Any, path: Path) -> np.ndarray:
    """A window's pixel values as uint8 H x W x 3 (alpha bands are validity: read through dataset_mask)."""
    return _rgb(ds.read(data_bands(ds), window=window), path)


def _place(u: float, size: int, lo: int, hi: int, total: int) -> int:
    """Start of a window of `size` in [0, total - size]: uniform over the places inside [lo, hi), or centred on
    that span when the window is wider."""
    if hi - lo >= size:
        return lo + min(int(u * (hi - lo - size + 1)), hi - lo - size)
    return min(max(0, (lo + hi - size) // 2), total - size)


class RasterPairs(torch.utils.data.Dataset):
    """(X1, X2, valid) windows at the same ground coordinates of a D1 and a D2 mosaic; valid: 1 x H x W of 0/1."""

    with_valid = True
    with_geometry = False
    registrations = None

    def __init__(self, d1: Path, d2: Path, transform: JointTransform, windows: int = 1000,
                 photometric: float = 0.0, min_valid: float = 0.5) -> None:
        if not transform.train:
            raise ValueError("RasterPairs draws training windows: give a training transform")
        self.paths = (Path(d1), Path(d2))
        self.transform, self.windows, self.photometric, self.min_valid = transform, windows, photometric, min_valid
        self._handles: tuple[Any, Any, Any] | None = None
        with _open(self.paths[0], "D1") as a, _open(self.paths[1], "D2") as b:
            self.grid = Grid.of(a)
            overlap = measure(a, b, self.paths)
        ch, cw = transform.crop
        lo, hi = min(transform.scale_range), max(transform.scale_range)
        if round(ch / lo) > self.grid.height or round(cw / lo) > self.grid.width:
            raise DataError(f"{self.paths[0]}: {self.grid.width}x{self.grid.height} pixels, smaller than a training "
                            f"window ({round(cw / lo)}x{round(ch / lo)} at scale {lo}); lower data.crop_size")
        self.coverage = overlap.coverage
        self._refuse_too_little(overlap, min(round(ch / hi), self.grid.height) * min(round(cw / hi), self.grid.width))
        self.region = overlap.region(self.grid.height, self.grid.width)  # windows are drawn around the overlap

    def _refuse_too_little(self, overlap: Overlap, window: int) -> None:
        """Refuse mosaics whose overlap could not fill even the smallest window to `min_valid`."""
        need = max(1.0, self.min_valid * window)
        if overlap.area < need:
            d1, d2 = self.paths
            raise DataError(f"{d2}: covers {overlap.coverage:.1%} of the ground of {d1} (about {overlap.area:.0f} of "
                            f"its pixels), too little for one training window ({need:.0f} pixels with data in "
                            f"both); give mosaics of the same area")

    def __len__(self) -> int:
        return self.windows

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": None}  # reopened in the worker

    def _open_all(self) -> tuple[Any, Any, Any]:
        if self._handles is None:
            d1, d2 = _open(self.paths[0], "D1"), _open(self.paths[1], "D2")
            self._handles = (d1, d2, onto(d2, self.grid))  # outside its footprint: masked invalid
        return self._handles

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A D1-grid window of both mosaics (uint8 H x W x 3 each) and its validity (bool H x W)."""
        from rasterio.windows import Window

        d1, _, d2 = self._open_all()
        w = Window(col, row, width, height)
        x1, x2 = _pixels(d1, w, self.paths[0]), _pixels(d2, w, self.paths[1])
        valid = (d1.dataset_mask(window=w) > 0) & (d2.dataset_mask(window=w) > 0)
        return x1, x2, valid

    def window_bounds(self, row: int, col: int, height: int, width: int) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in D1's CRS of a window: where on the ground both crops are."""
        t = self.grid.transform
        left, top = t @ (col, row)
        right, bottom = t @ (col + width, row + height)
        return left, top, right, bottom

    def draw(self) -> tuple[int, int, int, int, bool, float]:
        """A random window (row, col, height, width) placed around the overlap, flip and scale, from torch's
        RNG (where D2 covers all of D1, anywhere on D1)."""
        lo, hi = self.transform.scale_range
        u = torch.rand(4).tolist()
        scale = lo + (hi - lo) * u[0]
        ch, cw = self.transform.crop
        h, w = min(round(ch / scale), self.grid.height), min(round(cw / scale), self.grid.width)
        top, left, bottom, right = self.region
        row = _place(u[1], h, top, bottom, self.grid.height)
        col = _place(u[2], w, left, right, self.grid.width)
        return row, col, h, w, self.transform.hflip and u[3] < 0.5, scale

    def _jitter(self, image: np.ndarray) -> np.ndarray:
        if not self.photometric:
            return image
        gain, bias = (1 + self.photometric * (2 * torch.rand(2) - 1)).tolist()
        return np.clip(image.astype(np.float32) * gain + (bias - 1) * 64, 0, 255).astype(np.uint8)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for _ in range(MAX_DRAWS):
            row, col, h, w, flip, _ = self.draw()
            x1, x2, valid = self.read(row, col, h, w)
            if valid.mean() >= self.min_valid:
                break
        else:
            raise DataError(f"{self.paths[1]}: {MAX_DRAWS} random windows each had under {self.min_valid:.0%} pixels "
                            f"with data in both mosaics; check that D1 and D2 cover the same area "
                            f"(or lower shift.raster_min_valid)")
        ch, cw = self.transform.crop
        if (h, w) != (ch, cw):
            x1 = cv2.resize(x1, (cw, ch), interpolation=cv2.INTER_LINEAR)
            x2 = cv2.resize(x2, (cw, ch), interpolation=cv2.INTER_LINEAR)
            valid = cv2.resize(valid.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_NEAREST_EXACT) > 0
        if flip:
            x1, x2, valid = x1[:, ::-1], x2[:, ::-1], valid[:, ::-1]
        t1, t2 = self.transform.normalize(self._jitter(x1)), self.transform.normalize(self._jitter(x2))
        return t1, t2, torch.from_numpy(np.ascontiguousarray(valid)).float().unsqueeze(0)


class RasterTiles(SegmentationSource):
    """An image mosaic and a label raster cut into a grid of tiles on the label raster's grid, for evaluation:
    the image resampled onto the labels' ground, and pixels without data (outside the image's footprint,
    nodata in the image or the labels) labelled `info.ignore_index`. Tiles with no pixel the image covers are
    left out; an image covering none of the labels' ground is refused. `coverage`: the share of the labelled
    ground the image covers."""

    def __init__(self, image: Path, labels: Path, info: DatasetInfo, tile: tuple[int, int]) -> None:
        self.paths, self.info, self.tile = (Path(image), Path(labels)), info, tile
        self._handles: tuple[Any, Any] | None = None
        with _open(self.paths[1], "label") as lab:
            self.grid = Grid.of(lab)
            if lab.count != 1:
                raise DataError(f"{self.paths[1]}: {lab.count} bands; a label raster has one band of class indices")
            with _open(self.paths[0], "image") as image:
                overlap = measure(lab, image, self.paths[::-1])
        th, tw = tile
        grid = [(r, c) for r in range(0, self.grid.height - th + 1, th) for c in range(0, self.grid.width - tw + 1, tw)]
        if not grid:
            raise DataError(f"{self.paths[1]}: smaller than one {tw}x{th} tile; lower data.crop_size")
        self.coverage = overlap.coverage
        self.tiles = [(r, c) for r, c in grid if overlap.touches(r, c, th, tw)]
        if not self.tiles:
            raise DataError(f"{self.paths[0]}: covers {overlap.coverage:.1%} of the ground of {self.paths[1]}, no "
                            f"{tw}x{th} tile of it; give the image of the labelled area")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": None}

    def __len__(self) -> int:
        return len(self.tiles)

    def stem(self, i: int) -> str:
        r, c = self.tiles[i]
        return f"r{r}_c{c}"

    def _open_all(self) -> tuple[Any, Any]:
        if self._handles is None:
            image, labels = _open(self.paths[0], "image"), _open(self.paths[1], "label")
            self._handles = (onto(image, self.grid), labels)
        return self._handles

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        image, labels = self._open_all()
        (r, c), (th, tw) = self.tiles[i], self.tile
        w = Window(c, r, tw, th)
        x = _pixels(image, w, self.paths[0])
        y = labels.read(1, window=w).astype(np.int64)
        bad = (image.dataset_mask(window=w) == 0) | (labels.dataset_mask(window=w) == 0)
        y[bad] = self.info.ignore_index
        return x, y

    def load_image(self, i: int) -> np.ndarray:
        return self.load(i)[0]


# --- georeferenced image pairs (folder/stem pairs or a pairs CSV of GeoTIFF tiles) ---------------------------

GEO_FIT_TOLERANCE = 0.5  # px: a reprojection a homography cannot follow this closely over a tile is refused
GEO_GRID = 9  # points per side on which a reprojection is sampled for the fit


def _centre_shift(d: float) -> np.ndarray:
    return np.array([[1.0, 0.0, d], [0.0, 1.0, d], [0.0, 0.0, 1.0]])


def geo_transform(path1: Path, path2: Path) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], float]:
    """The transform (3x3, X1 pixel centres -> X2's, data/align.py's convention) that the two files'
    georeferencing implies, both sizes, and the fit residual in X2 pixels (0 for one CRS: the map is affine).

    Same CRS: W = inv(T2) T1 with the half-pixel shifts between GDAL's pixel corners and OpenCV's centres.
    Another CRS: X1's pixel centres on a grid are reprojected into X2's CRS and a homography is fitted; the
    largest residual says how well one transform describes the tile."""
    from rasterio.warp import transform as reproject_points

    with _open(path1, "X1") as a, _open(path2, "X2") as b:
        t1, t2 = np.array(a.transform).reshape(3, 3), np.array(b.transform).reshape(3, 3)
        size1, size2 = (a.height, a.width), (b.height, b.width)
        if a.crs == b.crs:
            return _centre_shift(-0.5) @ np.linalg.inv(t2) @ t1 @ _centre_shift(0.5), size1, size2, 0.0
        cols, rows = np.meshgrid(np.linspace(0, a.width - 1, GEO_GRID), np.linspace(0, a.height - 1, GEO_GRID))
        p1 = np.stack([cols.ravel(), rows.ravel()], 1)
        world = (np.hstack([p1 + 0.5, np.ones((len(p1), 1))]) @ t1.T)[:, :2]
        try:
            xs, ys = reproject_points(a.crs, b.crs, world[:, 0].tolist(), world[:, 1].tolist())
        except gdal_errors() as e:
            raise not_on_one_ground(path1, path2, (a.crs, b.crs), e) from None
        p2 = (np.stack([xs, ys, np.ones(len(xs))], 1) @ np.linalg.inv(t2).T)[:, :2] - 0.5
    h, _ = cv2.findHomography(p1.astype(np.float64), p2.astype(np.float64), 0)
    if h is None:
        raise DataError(f"{path2}: its georeferencing maps {path1} onto no plane transform; reproject the tiles "
                        f"to one CRS (gdalwarp)")
    fit = np.hstack([p1, np.ones((len(p1), 1))]) @ h.T
    residual = float(np.linalg.norm(fit[:, :2] / fit[:, 2:3] - p2, axis=1).max())
    return h, size1, size2, residual
