"""Windowed GeoTIFF shifting (segadapt.shifts.raster) equals filtering the whole image, and keeps the georeferencing.

Strips of 37 rows on a 300x400 raster: every strip boundary, halo and the image edges are exercised.
"""

import numpy as np
import pytest

from segadapt.errors import ConfigError, DataError
from segadapt.shifts import apply_filter

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402

from segadapt.shifts.raster import shift_raster  # noqa: E402

CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4500000.0)  # 0.5 m pixels, north up


def texture(h: int = 300, w: int = 400) -> np.ndarray:
    rng = np.random.default_rng(4)
    small = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3)).astype(np.float32)
    up = np.kron(small, np.ones((10, 10, 1), np.float32))[:h, :w]
    return np.clip(up + rng.normal(0, 10, up.shape), 0, 255).astype(np.uint8)


def write_tif(path, data: np.ndarray, dtype: str = "uint8") -> None:
    bands = data.transpose(2, 0, 1) if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2], count=bands.shape[0],
                       dtype=dtype, crs=CRS, transform=TRANSFORM, nodata=0) as dst:
        dst.write(bands.astype(dtype))


def read_tif(path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read().transpose(1, 2, 0), {"crs": src.crs, "transform": src.transform, "nodata": src.nodata,
                                               "dtypes": src.dtypes}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    image = texture()
    path = tmp_path_factory.mktemp("raster") / "d1.tif"
    write_tif(path, image)
    return path, image


@pytest.mark.parametrize(
    "name, severity, params",
    [
        ("ripple", 0.7, {}),  # angle 0: the separable path
        ("ripple", None, {"amplitude": 6.0, "period": 45.0, "angle": 35.0, "abyss_policy": "white",
                          "sampler_type": "linear", "tileable": True}),  # general path, fill abyss, tileable
        ("cubism", 0.5, {}),
        ("cubism", None, {"tile_size": 23.0, "tile_saturation": 1.5, "bg_color": (1.0, 0.0, 1.0, 1.0)}),
    ],
    ids=["ripple-sev", "ripple-angle", "cubism-sev", "cubism-big-tiles"],
)
def test_windowed_equals_whole_image(source, tmp_path, name, severity, params):
    path, image = source
    dst = tmp_path / "d2.tif"
    summary = shift_raster(path, dst, name, severity, seed=3, strip_rows=37, progress=False, **params)
    out, meta = read_tif(dst)
    assert summary["strips"] == 9
    assert np.array_equal(out, apply_filter(name, image, severity=severity, seed=3, **params))
    assert meta["crs"] == rasterio.crs.CRS.from_string(CRS) and meta["transform"] == TRANSFORM
    assert meta["nodata"] == 0 and meta["dtypes"] == ("uint8",) * 3


@pytest.mark.parametrize("severity", [1.0, 0.5])  # 0.5: blended at opacity 0.5, as apply_filter does
def test_windowed_photocopy_matches_whole_image(source, tmp_path, severity):
    """The white ramp is a whole-image quantile (first pass); the blurs can round a 1e-7 apart in a strip."""
    path, image = source
    shift_raster(path, tmp_path / "d2.tif", "photocopy", severity, strip_rows=37, progress=False)
    out, meta = read_tif(tmp_path / "d2.tif")
    diff = np.abs(out.astype(int) - apply_filter("photocopy", image, severity=severity).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert meta["transform"] == TRANSFORM


def test_other_rasters_are_refused_in_one_line_and_nothing_is_written(tmp_path):
    grey16 = tmp_path / "dem.tif"
    write_tif(grey16, np.zeros((20, 30), np.uint16), dtype="uint16")
    dst = tmp_path / "out.tif"
    with pytest.raises(DataError, match=r"dem\.tif: has 1 band\(s\) of uint16; .*3 bands, uint8.*gdal_translate"):
        shift_raster(grey16, dst, "ripple", 0.5, progress=False)
    rgb = tmp_path / "rgb.tif"
    write_tif(rgb, texture(20, 30))
    with pytest.raises(ConfigError, match="loop"):
        shift_raster(rgb, dst, "ripple", 0.5, progress=False, abyss_policy="loop")
    with pytest.raises(DataError, match="missing.tif: not a readable raster"):
        shift_raster(tmp_path / "missing.tif", dst, "cubism", 0.5, progress=False)
    assert sorted(tmp_path.iterdir()) == sorted([grey16, rgb])  # no output, no temporary left behind


def test_shift_command_takes_a_geotiff(tmp_path):
    """`segadapt shift --raster IN.tif --out OUT.tif`: the CLI path of shift_raster, georeference kept."""
    from segadapt.cli import main

    src = tmp_path / "in.tif"
    write_tif(src, texture(60, 80))
    assert main(["shift", "--raster", str(src), "--filter", "ripple", "--severity", "0.5",
                 "--out", str(tmp_path / "out.tif")]) == 0
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out.tif") as b:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
