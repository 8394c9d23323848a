"""Shift a GeoTIFF of any size in bounded memory: read, filter and write it in strips of rows with halos.

Each strip of output rows is computed from the source rows it can depend on (its halo), from positions in the
whole image, so the result is the whole image filtered at once; memory is a few strips, whatever the raster.
Halos per filter (rows above and below a strip; strips span the full width):

* ripple: the largest displacement plus the sampler's taps (ceil(amplitude) + 3 for cubic); the wave's phase is
  a function of the absolute pixel position (and, when tileable, of the whole image's size). Exact.
* cubism: none for reading. The tiles are GEGL's for the whole image (its size and the seed fix the random
  stream); a first pass reads each tile's colour at its centre pixel, then each strip blends every tile that
  touches it, in GEGL's order. Exact.
* photocopy: the blurs' reach (3 reach of the surround blur, about 150 px at GEGL's defaults; see
  `photocopy.blur_reach`). Its white ramp is a quantile over the whole image, so a first pass gathers the
  histogram and a second writes. The blurs' float32 sums can round differently in a strip than in the whole
  image (OpenCV's convolution blocks), a ~1e-7 change that can move a pixel by one level in rare cases; that
  is the only difference (tests bound it).

Input: an 8-bit RGB raster (3 bands, uint8), as the filters are GIMP's 8-bit RGB filters. Other band counts or
data types are refused with one line saying how to convert. CRS, transform, nodata value, tags and the GeoTIFF
profile are copied; nodata pixels are filtered like any other (the filters have no notion of "no data"). The
output is written to a temporary file beside it and renamed at the end, so an interrupted run leaves nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from segadapt.chatter import hushed
from segadapt.checkpoint import atomic_path
from segadapt.errors import ConfigError, DataError, SegadaptError
from segadapt.progress import bar as progress_bar
from segadapt.shifts.cubism import _tile_geometry, check_params, cubism_rows, tile_rows
from segadapt.shifts.filters import blend, resolve_params
from segadapt.shifts.gegl import srgb_to_linear
from segadapt.shifts.photocopy import (
    blur_ratio,
    blur_reach,
    blur_sigmas,
    check_detail_radius,
    encode_grey,
    gaussian_blur,
    ink_histogram,
    luminance,
    white_ramp,
)
from segadapt.shifts.photocopy import check_params as photocopy_params
from segadapt.shifts.ripple import SAMPLERS, _check_choice, _validate, ripple_reach, ripple_rows

STRIP_PIXELS = 1 << 22  # output pixels per strip (about 4M: ~200 rows of a 20000 px wide raster)

GDAL_CACHE_MB = 128  # GDAL's block cache while shifting: bounded, so memory is the strips'

Strip = tuple[int, int]  # output rows [first, stop)


def _rasterio() -> Any:
    try:
        import rasterio
    except ImportError:
        raise SegadaptError("GeoTIFF shifting needs rasterio: pip install 'segadapt[geo]' (or rasterio)") from None
    return rasterio


def _strips(height: int, width: int, rows: int | None) -> list[Strip]:
    step = rows or max(16, STRIP_PIXELS // max(width, 1))
    return [(r, min(height, r + step)) for r in range(0, height, step)]


class _Reader:
    """Reads rows of the source as uint8 HxWx3 RGB."""

    def __init__(self, dataset: Any) -> None:
        self.dataset, self.height, self.width = dataset, dataset.height, dataset.width

    def rows(self, first: int, stop: int) -> np.ndarray:
        from rasterio.windows import Window

        first, stop = max(0, first), min(self.height, stop)
        data = self.dataset.read(window=Window(0, first, self.width, stop - first))
        return np.ascontiguousarray(data.transpose(1, 2, 0))

    def halo(self, strip: Strip, halo: int) -> tuple[np.ndarray, int]:
        """The strip's rows plus `halo` rows each side (clipped to the image) and the first row read."""
        first = max(0, strip[0] - halo)
        return self.rows(first, strip[1] + halo), first


def _check_source(path: Path, dataset: Any) -> None:
    if dataset.count != 3 or any(d != "uint8" for d in dataset.dtypes):
        dtypes = ", ".join(sorted(set(dataset.dtypes)))
        raise DataError(
            f"{path}: has {dataset.count} band(s) of {dtypes}; shift_raster takes 8-bit RGB (3 bands, uint8): "
            f"convert it first, e.g. gdal_translate -b 1 -b 2 -b 3 -ot Byte -scale {path} rgb.tif"
        )


def _ripple(reader: _Reader, params: dict[str, Any]) -> Callable[[Strip], np.ndarray]:
    sampler = params.pop("sampler_type", "cubic")
    policy = params.pop("abyss_policy", "none")
    params.pop("linear_light", None)
    wave = {k: params.pop(k, d) for k, d in
            (("amplitude", 25.0), ("period", 200.0), ("phi", 0.0), ("angle", 0.0), ("wave_type", "sine"),
             ("tileable", False))}
    if params:
        raise ConfigError(f"ripple has no parameter(s) {sorted(params)}")
    _validate(wave["amplitude"], wave["period"], wave["phi"], wave["angle"], wave["wave_type"], policy)
    _check_choice("sampler_type", sampler, SAMPLERS)
    if policy == "loop":
        raise ConfigError("ripple abyss_policy='loop' reads across the whole image; use 'clamp' (the severity "
                          "mapping's) or another policy for a windowed raster")
    halo = ripple_reach(wave["amplitude"], sampler)
    if wave["amplitude"] == 0.0 or wave["period"] < 0.0001:
        return lambda strip: reader.rows(*strip)

    def run(strip: Strip) -> np.ndarray:
        window, top = reader.halo(strip, halo)
        return ripple_rows(window, top, reader.height, strip, wave, sampler, policy)

    return run


def _cubism(reader: _Reader, params: dict[str, Any], strips: list[Strip], bar: tqdm) -> Callable[[Strip], np.ndarray]:
    tile_size, saturation, bg = check_params(params.pop("tile_size", 10.0), params.pop("tile_saturation", 2.5),
                                             params.pop("bg_color", (0.0, 0.0, 0.0, 0.0)))
    seed = int(params.pop("seed", 0))
    if params:
        raise ConfigError(f"cubism has no parameter(s) {sorted(params)}")
    corners, source = _tile_geometry(reader.height, reader.width, tile_size, saturation, seed)
    colours = np.empty((len(source), 3), np.float32)
    by_row = np.argsort(source[:, 0], kind="stable")
    bounds = np.searchsorted(source[by_row, 0], [s[0] for s in strips] + [reader.height])
    for k, strip in enumerate(strips):  # pass 1: each tile's colour, from the strip holding its centre pixel
        ids = by_row[bounds[k] : bounds[k + 1]]
        if len(ids):
            pixels = reader.rows(*strip)
            colours[ids] = srgb_to_linear(pixels[source[ids, 0] - strip[0], source[ids, 1]])
        bar.update(1)
    ybox = tile_rows(corners)
    return lambda strip: cubism_rows(corners, colours, bg, strip, reader.width, ybox)


def _photocopy(
    reader: _Reader, params: dict[str, Any], strips: list[Strip], bar: tqdm
) -> Callable[[Strip], np.ndarray]:
    names = ("mask_radius", "sharpness", "black", "white")
    values = photocopy_params(*(params.pop(k, d) for k, d in zip(names, (10.0, 0.5, 0.2, 0.2))))
    detail_radius = check_detail_radius(params.pop("detail_radius", None))
    if params:
        raise ConfigError(f"photocopy has no parameter(s) {sorted(params)}")
    mask_radius, sharpness, black, white = values
    sigmas = blur_sigmas(mask_radius, sharpness, detail_radius)
    halo = max(blur_reach(s) for s in sigmas)

    def planes(strip: Strip) -> tuple[np.ndarray, np.ndarray]:
        window, top = reader.halo(strip, halo)
        y = luminance(window)
        d1 = gaussian_blur(y, sigmas[0])
        ratio = blur_ratio(d1, gaussian_blur(y, sigmas[1]))
        core = slice(strip[0] - top, strip[1] - top)
        return d1[core], ratio[core]

    hist = np.zeros(1000, np.int64)
    for strip in strips:  # pass 1: the ink histogram over the whole image sets the white ramp
        hist += ink_histogram(planes(strip)[1])
        bar.update(1)
    ramps = (1.0 if black > 0.0 and hist.sum() > 0 else 0.0), white_ramp(hist, white)

    def run(strip: Strip) -> np.ndarray:
        grey = encode_grey(*planes(strip), *ramps)
        return np.repeat(grey[:, :, None], 3, axis=2)

    return run


def shift_raster(
    src_path: str | Path,
    dst_path: str | Path,
    filter: str,
    severity: float | None = None,
    seed: int = 0,
    strip_rows: int | None = None,
    progress: bool = True,
    units: str = "network",
    base_size: int = 0,
    **params: Any,
) -> dict[str, Any]:
    """Write `filter` (photocopy, ripple, cubism) of the GeoTIFF `src_path` to `dst_path`, strip by strip.

    `severity`, `seed` and `params` mean what they mean for `apply_filter` (including `opacity`); the result
    equals `apply_filter` on the whole image (photocopy: see the module doc). `strip_rows` sets the rows per
    strip (default: about 4M pixels); `progress` shows a bar over strips. `units`/`base_size`: the severity's
    lengths in network pixels (factor: the raster's shorter side / base_size) or as given (shifts/units.py).
    Returns a summary of what was written.
    """
    from segadapt.shifts.units import check_units

    rasterio = _rasterio()
    src_path, dst_path = Path(src_path), Path(dst_path)
    if src_path.resolve() == dst_path.resolve():
        raise ConfigError(f"{dst_path}: is the source itself; write the shifted raster to another path")
    check_units(units)
    resolve_params(filter, severity, seed, **params)  # bad parameters refused before the raster is opened
    # GDAL's block cache defaults to 5% of the machine's memory and fills as strips are read and written
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return _shift(rasterio, src_path, dst_path, filter, severity, seed, strip_rows, progress,
                      (units, base_size), params)


def _shift(
    rasterio: Any,
    src_path: Path,
    dst_path: Path,
    filter: str,
    severity: float | None,
    seed: int,
    strip_rows: int | None,
    progress: bool,
    lengths: tuple[str, int],
    params: dict[str, Any],
) -> dict[str, Any]:
    from segadapt.shifts.units import length_scale

    try:
        with hushed():
            dataset = rasterio.open(src_path)
    except rasterio.errors.RasterioIOError as e:
        raise DataError(f"{src_path}: not a readable raster ({str(e).splitlines()[0]}); check the path") from None
    with dataset:
        _check_source(src_path, dataset)
        reader = _Reader(dataset)
        scale = length_scale(reader.height, reader.width, lengths[1], lengths[0])
        chosen, opacity = resolve_params(filter, severity, seed, scale, **params)
        strips = _strips(reader.height, reader.width, strip_rows)
        passes = 1 if filter == "ripple" else 2
        with progress_bar(total=passes * len(strips), desc=f"shift {src_path.name} ({filter})", disable=not progress,
                  dynamic_ncols=True) as bar:
            try:
                make = {"ripple": lambda: _ripple(reader, chosen),
                        "cubism": lambda: _cubism(reader, chosen, strips, bar),
                        "photocopy": lambda: _photocopy(reader, chosen, strips, bar)}[filter]
                render = make()
            except ValueError as e:  # a filter's own range check: one line
                raise ConfigError(f"{filter}: {e}") from None
            profile = dataset.profile.copy()
            profile.update(driver="GTiff", count=3, dtype="uint8")
            if reader.height * reader.width * 3 > 3_900_000_000:
                profile["BIGTIFF"] = "YES"
            with atomic_path(dst_path) as tmp, rasterio.open(tmp, "w", **profile) as out:
                out.update_tags(**dataset.tags())
                for strip, rows in _rendered(render, strips):
                    if opacity < 1.0:
                        rows = blend(reader.rows(*strip), rows, opacity)
                    out.write(rows.transpose(2, 0, 1), window=_window(strip, reader.width))
                    bar.update(1)
    return {"src": str(src_path), "dst": str(dst_path), "filter": filter, "severity": severity, "seed": seed,
            "size": [reader.width, reader.height], "strips": len(strips), **{k: _plain(v) for k, v in chosen.items()},
            "opacity": opacity, "units": lengths[0], "base_size": lengths[1], "scale": scale}


def _rendered(render: Callable[[Strip], np.ndarray], strips: list[Strip]) -> Iterator[tuple[Strip, np.ndarray]]:
    for strip in strips:
        yield strip, render(strip)


def _window(strip: Strip, width: int) -> Any:
    from rasterio.windows import Window

    return Window(0, strip[0], width, strip[1] - strip[0])


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return list(value) if isinstance(value, tuple) else value
