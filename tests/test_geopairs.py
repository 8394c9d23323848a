"""Pairs by ground coordinates: GeoTIFF mosaics at different resolutions (and CRS) give windows that match on the
ground, nodata is masked, and adapt/evaluate run from the CLI flags."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402
from rasterio.warp import transform as reproject_points  # noqa: E402

from segadapt.data import JointTransform  # noqa: E402
from segadapt.data.base import DatasetInfo  # noqa: E402
from segadapt.data.geopairs import RasterPairs, RasterTiles  # noqa: E402
from segadapt.errors import DataError  # noqa: E402

UTM = "EPSG:32633"
X0, Y0 = 500000.0, 4000000.0  # D1's top-left corner, metres


def ground(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth RGB 'landscape' defined at every world point (metres), so any grid can sample it exactly."""
    r = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 11.0) + 40 * np.sin((x + y) / 5.0)
    g = 128 + 70 * np.cos(x / 9.0 - y / 6.0)
    b = 128 + 50 * np.sin(x / 4.0) + 50 * np.cos(y / 8.0)
    return np.clip(np.stack([r, g, b]), 1, 255).astype(np.uint8)


def write(path: Path, crs: str, transform, height: int, width: int, nodata_box: tuple[int, int, int, int] | None = None,
          to_utm=None, nodata: int | None = 0) -> None:
    """Sample `ground` at the pixel centres of a grid (coordinates mapped to UTM by `to_utm` when given)."""
    rows, cols = np.mgrid[0:height, 0:width]
    xs, ys = transform @ (cols + 0.5, rows + 0.5)
    if to_utm is not None:
        xs, ys = to_utm(xs, ys)
    data = ground(np.asarray(xs), np.asarray(ys))
    if nodata_box:
        r0, r1, c0, c1 = nodata_box
        data[:, r0:r1, c0:c1] = 0
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs=crs,
                       transform=transform, nodata=nodata) as ds:
        ds.write(data)


def offset_px(a: torch.Tensor, b: torch.Tensor) -> float:
    """Sub-pixel shift between two normalised crops (phase correlation of their grey images)."""
    ga, gb = (x.mean(0).numpy().astype(np.float32) for x in (a, b))
    (dx, dy), _ = cv2.phaseCorrelate(ga, gb, cv2.createHanningWindow(ga.shape[::-1], cv2.CV_32F))
    return float(np.hypot(dx, dy))


@pytest.fixture
def mosaics(tmp_path):
    """D1 at 1 m, D2 at 2.5 m shifted by a non-integer offset (7.3 m east, 4.6 m south) with a nodata hole."""
    d1, d2 = tmp_path / "d1.tif", tmp_path / "d2.tif"
    write(d1, UTM, from_origin(X0, Y0, 1.0, 1.0), 200, 260)
    write(d2, UTM, from_origin(X0 + 7.3, Y0 - 4.6, 2.5, 2.5), 76, 100, nodata_box=(0, 20, 0, 24))
    return d1, d2


def test_windows_match_on_the_ground_across_resolutions(mosaics):
    d1, d2 = mosaics
    pairs = RasterPairs(d1, d2, JointTransform(train=True, crop_size=(64, 64), scale_range=(1.0, 1.0), hflip=False),
                        windows=8)
    torch.manual_seed(0)
    # the same world window in both: the D2 crop is D2 resampled onto D1's grid
    row, col = 120, 150
    x1, x2, valid = pairs.read(row, col, 64, 64)
    assert valid.all()
    t1, t2 = (pairs.transform.normalize(x) for x in (x1, x2))
    assert offset_px(t1, t2) < 0.5  # within half a D1 pixel on the ground
    left, top, _, _ = pairs.window_bounds(row, col, 64, 64)
    assert (left, top) == (X0 + col, Y0 - row)
    for k in range(6):
        a, b, v = pairs[k]
        assert a.shape == b.shape == (3, 64, 64) and v.shape == (1, 64, 64)
        if bool((v == 1).all()):
            assert offset_px(a, b) < 0.5


def test_reprojected_d2_in_another_crs_matches_too(tmp_path):
    d1 = tmp_path / "d1.tif"
    write(d1, UTM, from_origin(X0, Y0, 1.0, 1.0), 160, 200)
    # D2 in geographic coordinates (EPSG:4326) covering the same ground at about 2 m per pixel
    lon, lat = reproject_points(UTM, "EPSG:4326", [X0 - 20], [Y0 + 20])
    step = 2.0 / 111_000  # degrees per 2 m (roughly; enough for a test grid)

    def to_utm(xs, ys):
        x, y = reproject_points("EPSG:4326", UTM, xs.ravel().tolist(), ys.ravel().tolist())
        return np.reshape(x, xs.shape), np.reshape(y, ys.shape)

    d2 = tmp_path / "d2.tif"
    write(d2, "EPSG:4326", from_origin(lon[0], lat[0], step * 1.25, step), 110, 110, to_utm=to_utm)
    pairs = RasterPairs(d1, d2, JointTransform(train=True, crop_size=(48, 48), scale_range=(1.0, 1.0)), windows=4)
    x1, x2, valid = pairs.read(60, 80, 48, 48)
    assert valid.mean() > 0.95
    t1, t2 = (pairs.transform.normalize(x) for x in (x1, x2))
    assert offset_px(t1, t2) < 0.5


def test_nodata_is_masked_and_windows_without_data_refused(mosaics, tmp_path):
    d1, d2 = mosaics
    pairs = RasterPairs(d1, d2, JointTransform(train=True, crop_size=(32, 32), scale_range=(1.0, 1.0)), windows=4)
    # D2's hole covers world x in [X0+7.3, X0+67.3), y in [Y0-54.6, Y0-4.6): D1 rows 5..54, cols 7..67
    _, _, valid = pairs.read(10, 20, 32, 32)
    assert not valid.any()
    _, _, valid = pairs.read(0, 0, 32, 32)  # D2 starts 7.3 m east and 4.6 m south: no data before that
    assert not valid[:4].any() and not valid[:, :7].any()
    far = tmp_path / "far.tif"
    write(far, UTM, from_origin(X0 + 10_000, Y0, 2.0, 2.0), 50, 50)
    with pytest.raises(DataError, match="covers 0.0% of the ground"):
        RasterPairs(d1, far, pairs.transform, windows=1)
    (tmp_path / "plain.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="GeoTIFF"):
        RasterPairs(d1, tmp_path / "plain.tif", pairs.transform)


def test_raster_tiles_carry_labels_on_the_ground(mosaics, tmp_path):
    d1, d2 = mosaics
    labels = np.zeros((200, 260), np.uint8)
    labels[:, 130:] = 1
    lab = tmp_path / "labels.tif"
    with rasterio.open(lab, "w", driver="GTiff", width=260, height=200, count=1, dtype="uint8", crs=UTM,
                       transform=from_origin(X0, Y0, 1.0, 1.0)) as ds:
        ds.write(labels[None])
    tiles = RasterTiles(d2, lab, DatasetInfo("r", ("a", "b"), 255, ((0, 0, 0), (255, 255, 255))), (50, 65))
    assert len(tiles) == 15 and (0, 0) not in tiles.tiles  # D2's edge and its nodata hole cover that whole tile
    image, y = tiles.load(0)
    assert image.shape == (50, 65, 3) and (y == 255).any()  # D2's missing edge is ignored, not scored
    _, y = tiles.load(tiles.tiles.index((100, 130)))  # rows 100-149, columns 130-194: all class 1, all inside D2
    assert set(np.unique(y)) == {1}


def test_adapt_and_evaluate_from_the_cli_flags(mosaics, tmp_path):
    from segadapt.cli import main

    d1, d2 = mosaics
    h1 = tmp_path / "h1"
    assert main(["train", "--preset", "synthetic", "--iterations", "1", "--width", "0.125", "--out", str(h1),
                 "--set", "data.synthetic_train=4", "--set", "data.synthetic_val=2", "--set", "data.crop_size=[48,64]",
                 "--set", "train.batch_size=2", "--set", "data.synthetic_size=[48,64]"]) == 0
    labels = tmp_path / "labels.tif"
    with rasterio.open(labels, "w", driver="GTiff", width=260, height=200, count=1, dtype="uint8", crs=UTM,
                       transform=from_origin(X0, Y0, 1.0, 1.0)) as ds:
        ds.write((np.arange(200 * 260).reshape(1, 200, 260) % 7).astype(np.uint8))
    out = tmp_path / "h2"
    assert main(["adapt", "--h1", str(h1), "--d1-raster", str(d1), "--d2-raster", str(d2), "--iterations", "2",
                 "--out", str(out), "--set", "train.batch_size=2", "--set", "shift.raster_windows=12",
                 "--set", "adapt.holdout=2", "--set", "adapt.probes=1"]) == 0
    saved = (out / "config.toml").read_text()
    result = json.loads((out / "adapt.json").read_text())
    assert str(d2) in saved and result["step"] == 2
    # D2 covers D1 but for 7.3 m on the west, 4.6 m on the north, the rest of the south and its 60x50 m hole
    share = (250 * 190 - 60 * 50) / (260 * 200)
    assert result["raster_coverage"] == pytest.approx(share, abs=0.002)
    assert main(["evaluate", "--model", str(out), "--d2-raster", str(d2), "--label-raster", str(labels),
                 "--dataset", "folder", "--set", "data.num_classes=7", "--out", str(tmp_path / "e.json")]) == 0
    scored = json.loads((tmp_path / "e.json").read_text())
    assert scored["images"] > 0 and scored["raster_coverage"] == pytest.approx(share, abs=0.002)


def test_folder_pairs_of_geotiff_tiles_align_by_their_georeference(tmp_path):
    """Works with folder/stem pairs too: adapt.align = geo warps each D2 tile onto its D1 tile's ground."""
    from segadapt.data.align import AlignSettings, describe
    from segadapt.data.align_cache import register_pairs
    from segadapt.data.pairs import PairedDataset, image_folder

    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
    write(tmp_path / "d1" / "a.tif", UTM, from_origin(X0, Y0, 1.0, 1.0), 96, 128)
    write(tmp_path / "d2" / "a.tif", UTM, from_origin(X0 + 6.4, Y0 - 3.2, 2.0, 2.0), 50, 64)  # other size
    pairs = PairedDataset(image_folder(tmp_path / "d1"), image_folder(tmp_path / "d2"),
                          JointTransform(train=True, crop_size=(96, 128), scale_range=(1.0, 1.0), hflip=False))
    regs = register_pairs(pairs.d1, pairs.d2, pairs.pairs, AlignSettings("geo"), None)
    assert regs[0].ok and regs[0].size2 == (50, 64)
    motion = describe(regs[0].transform, regs[0].size1)
    assert motion["scale"] == pytest.approx(0.5)  # 1 m pixels onto 2 m pixels
    x1, x2, valid = pairs.registered(regs)[0]
    inside = valid[0] > 0
    assert not inside[:, :6].any() and inside[10:90, 10:120].all()  # D2 starts 6.4 m east of D1
    a, b = x1[:, 8:88, 12:124], x2[:, 8:88, 12:124]
    assert offset_px(a, b) < 0.5


def test_geo_tiles_in_another_crs_are_fitted_and_checked(tmp_path):
    from segadapt.data.geopairs import geo_transform

    write(tmp_path / "a.tif", UTM, from_origin(X0, Y0, 1.0, 1.0), 80, 100)
    lon, lat = reproject_points(UTM, "EPSG:4326", [X0 + 5], [Y0 - 5])
    write(tmp_path / "b.tif", "EPSG:4326", from_origin(lon[0], lat[0], 2.5e-5, 2.0e-5), 60, 60)
    matrix, size1, size2, residual = geo_transform(tmp_path / "a.tif", tmp_path / "b.tif")
    assert residual < 0.05 and size1 == (80, 100) and size2 == (60, 60)
    # X1's pixel centre (20, 30) lies where the georeferencing says, in X2's pixels
    x, y = (np.array([X0 + 20.5]), np.array([Y0 - 30.5]))
    lon2, lat2 = reproject_points(UTM, "EPSG:4326", x.tolist(), y.tolist())
    expected = np.array([(lon2[0] - lon[0]) / 2.5e-5 - 0.5, (lat[0] - lat2[0]) / 2.0e-5 - 0.5])
    got = matrix @ np.array([20.0, 30.0, 1.0])
    assert np.allclose(got[:2] / got[2], expected, atol=0.05)


def labels_on(path: Path, height: int = 200, width: int = 260) -> Path:
    """A one-band label raster on D1's grid (classes 0..6)."""
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=UTM,
                       transform=from_origin(X0, Y0, 1.0, 1.0)) as ds:
        ds.write((np.arange(height * width).reshape(1, height, width) % 7).astype(np.uint8))
    return path


def test_ground_outside_d2_is_invalid_whatever_d2_declares(tmp_path):
    """A D2 declaring no nodata covers D1's east half: the west half is no data (not black pixels), for
    training windows and for scored tiles alike, and the coverage says one half."""
    d1, d2 = tmp_path / "d1.tif", tmp_path / "d2.tif"
    write(d1, UTM, from_origin(X0, Y0, 1.0, 1.0), 200, 260)
    write(d2, UTM, from_origin(X0 + 130, Y0, 2.0, 2.0), 100, 65, nodata=None)
    pairs = RasterPairs(d1, d2, JointTransform(train=True, crop_size=(32, 32), scale_range=(1.0, 1.0)), windows=8)
    assert pairs.coverage == pytest.approx(0.5, abs=0.005)
    _, _, valid = pairs.read(50, 110, 32, 40)  # columns 110..149: D2 starts at column 130
    assert not valid[:, :20].any() and valid[:, 20:].all()
    assert pairs.region[1] >= 129  # windows are drawn around the overlap
    torch.manual_seed(0)
    assert all(float(pairs[k][2].mean()) >= 0.5 for k in range(8))
    tiles = RasterTiles(d2, labels_on(tmp_path / "labels.tif"), DatasetInfo("r", tuple("abcdefg"), 255,
                        tuple((k, k, k) for k in range(7))), (50, 65))
    assert tiles.coverage == pytest.approx(0.5, abs=0.005)
    assert tiles.tiles and all(c >= 130 for _, c in tiles.tiles)  # the west tiles have no image: not scored


def test_mosaics_without_overlap_are_refused_in_one_line(tmp_path, capsys):
    from segadapt.cli import main
    from tiny import tiny_model_file

    d1, far = tmp_path / "d1.tif", tmp_path / "far.tif"
    write(d1, UTM, from_origin(X0, Y0, 1.0, 1.0), 200, 260)
    write(far, UTM, from_origin(X0 + 10_000, Y0, 2.0, 2.0), 100, 130, nodata=None)  # 10 km east, no nodata
    h1 = tiny_model_file(tmp_path / "h1.safetensors")
    labels = labels_on(tmp_path / "labels.tif")
    out = tmp_path / "h2"
    capsys.readouterr()
    assert main(["adapt", "--h1", str(h1), "--d1-raster", str(d1), "--d2-raster", str(far), "--iterations", "1",
                 "--out", str(out), "--set", "data.crop_size=[32,32]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(far) in err[0] and str(d1) in err[0] and "0.0%" in err[0]
    assert not out.exists()
    assert main(["evaluate", "--model", str(h1), "--d2-raster", str(far), "--label-raster", str(labels),
                 "--set", "data.crop_size=[32,32]", "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(far) in err[0] and str(labels) in err[0] and "0.0%" in err[0]
    assert not (tmp_path / "e.json").exists()


def test_a_crs_without_transformation_to_d1s_is_one_line(mosaics, tmp_path):
    from segadapt.data.geopairs import geo_transform

    d1, _ = mosaics
    mars = tmp_path / "mars.tif"
    write(mars, "+proj=longlat +a=3396190 +b=3376200 +no_defs +type=crs", from_origin(0, 0, 1e-4, 1e-4), 50, 50)
    for attempt in (lambda: RasterPairs(d1, mars, JointTransform(train=True, crop_size=(32, 32))),
                    lambda: geo_transform(d1, mars)):
        with pytest.raises(DataError, match="no transformation") as e:
            attempt()
        assert str(mars) in str(e.value) and str(d1) in str(e.value) and "\n" not in str(e.value)
