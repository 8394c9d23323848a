"""segadapt change: two eras' surveys of one area, each predicted by its own model, compared on era 1's grid."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segadapt.cli import main
from tiny_colour import colour_model_file

TRUST = ("--trust-factory", "tiny_colour:colour_net")
RED, GREEN, BLUE = (200, 30, 30), (30, 200, 30), (30, 30, 200)
# the changed field, in era 1's CRS (UTM 33N): green in era 1, blue in era 2
FIELD = (500040.0, 500080.0, 4099930.0, 4099960.0)  # x0, x1, y0, y1: 40 m x 30 m = 1200 m^2
ORIGIN1 = (500000.0, 4100000.0)  # era 1: 120 x 100 px of 1 m, UTM 33N


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    return colour_model_file(tmp_path_factory.mktemp("colour") / "run")


def survey(path, crs, transform, height, width, field_colour):
    """A GeoTIFF of the area: red ground, the field in `field_colour`, painted by each pixel centre's place in
    era 1's CRS (so a grid in another CRS sees the same ground)."""
    import rasterio
    from rasterio.warp import transform as reproject_points

    rows, cols = np.mgrid[0:height, 0:width]
    xs, ys = rasterio.transform.xy(transform, rows.ravel(), cols.ravel())
    xs, ys = reproject_points(crs, "EPSG:32633", xs, ys)
    xs, ys = np.asarray(xs).reshape(height, width), np.asarray(ys).reshape(height, width)
    inside = (xs >= FIELD[0]) & (xs < FIELD[1]) & (ys >= FIELD[2]) & (ys < FIELD[3])
    img = np.empty((height, width, 3), np.uint8)
    img[:] = RED
    img[inside] = field_colour
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint8", crs=crs,
                       transform=transform) as ds:
        ds.write(np.moveaxis(img, 2, 0))
    return path


def two_surveys(tmp_path):
    """Era 1: UTM 33N at 1 m; era 2: ETRS89-LAEA (EPSG:3035) at 0.7 m, its grid starting east of era 1's
    western 10 m (no era-2 data there) and reaching past era 1's other edges."""
    from rasterio.transform import from_origin
    from rasterio.warp import transform as reproject_points

    a = survey(tmp_path / "a" / "site.tif", "EPSG:32633", from_origin(*ORIGIN1, 1.0, 1.0), 100, 120, GREEN)
    xs, ys = reproject_points("EPSG:32633", "EPSG:3035", [500010.0, 500125.0, 500010.0, 500125.0],
                              [4100005.0, 4100005.0, 4099895.0, 4099895.0])
    x0, x1, y0, y1 = max(xs[0], xs[2]), max(xs), min(ys), max(ys)
    width, height = int((x1 - x0) / 0.7) + 1, int((y1 - y0) / 0.7) + 1
    b = survey(tmp_path / "b" / "site.tif", "EPSG:3035", from_origin(x0, y1, 0.7, 0.7), height, width, BLUE)
    return a, b


def change(model, a, b, out, *extra):
    return main(["change", "--model1", str(model), "--images1", str(a), "--model2", str(model), "--images2", str(b),
                 "--out", str(out), *TRUST, *extra])


def test_change_of_two_geotiff_surveys_in_different_crs_finds_the_changed_field(tmp_path, colour_model, capsys):
    rasterio = pytest.importorskip("rasterio")
    a, b = two_surveys(tmp_path)
    out = tmp_path / "out"
    assert change(colour_model, a, b, out, "--tile", "64", "--masks") == 0
    report = json.loads((out / "site_change.json").read_text())
    names = report["classes"]
    assert names == ["red", "green", "blue"] and report["pixel_area_m2"] == pytest.approx(1.0)
    m2 = np.asarray(report["transitions_m2"])
    # the field: 1200 m^2 green -> blue; era 2's grid is another CRS at 0.7 m, so only its edges may differ
    assert m2[1, 2] == pytest.approx(1200.0, rel=0.05)
    assert report["changed_m2"] == pytest.approx(1200.0, rel=0.05) and report["changed_ha"] == pytest.approx(0.12,
                                                                                                               rel=0.05)
    assert m2[0, 0] > 8000 and m2[0, 1] + m2[1, 0] + m2[2, 0] + m2[0, 2] < 60  # red stays red
    with rasterio.open(a) as s, rasterio.open(out / "site_change.tif") as c:
        assert c.crs == s.crs and c.transform == s.transform and (c.height, c.width) == (100, 120)
        codes = c.read(1)
        assert c.nodata == 255 and c.colormap(1)[255][3] == 0
    assert (codes[:, :9] == 255).all() and (codes[5:95, 30:115] != 255).all()  # era 2 misses the western 10 m
    field = codes[42:68, 42:78]  # inside the field, away from its edges: green (1) -> blue (2)
    assert (field == 1 * 3 + 2).all()
    assert ((codes == 5).sum()) == pytest.approx(1200, rel=0.05)
    with rasterio.open(out / "site_mask2.tif") as m:
        assert m.crs == s.crs and (m.read(1)[42:68, 42:78] == 2).all()
    csv = (out / "site_change.csv").read_text().splitlines()
    assert csv[0] == "from,to,changed,pixels,m2,ha" and any(r.startswith("green,blue,1,") for r in csv)
    assert (out / "site_change_figure.png").is_file()
    summary = json.loads((out / "changes.json").read_text())
    assert summary["pairs"][0]["changed_m2"] == report["changed_m2"] and not summary["failed"]
    # a re-run keeps the finished pair; a user's file at an output's name is never replaced
    assert change(colour_model, a, b, out, "--tile", "64", "--masks") == 0
    assert "1 already finished" in capsys.readouterr().out
    (out / "site_change.csv").write_text("mine\n")
    assert change(colour_model, a, b, out, "--tile", "64", "--masks") == 1
    assert "site_change.csv: exists and was not written by segadapt" in capsys.readouterr().err
    assert (out / "site_change.csv").read_text() == "mine\n"



def test_plain_images_pair_by_name_uncertain_change_is_its_own_code_and_a_bad_pair_is_one_line(tmp_path, colour_model,
                                                                                               capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = np.zeros((40, 60, 3), np.uint8)
    one[:] = RED
    one[10:30, 10:30] = GREEN  # becomes blue: a sure change
    one[10:30, 40:50] = (120, 110, 30)  # red by a little: becomes green, an uncertain change
    two = one.copy()
    two[10:30, 10:30] = BLUE
    two[10:30, 40:50] = GREEN
    Image.fromarray(one).save(tmp_path / "a" / "farm.png")
    Image.fromarray(np.repeat(np.repeat(two, 2, 0), 2, 1)).save(tmp_path / "b" / "farm.png")  # twice the size
    Image.fromarray(one).save(tmp_path / "a" / "alone.png")  # no era-2 partner
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert change(colour_model, tmp_path / "a", tmp_path / "b", out, "--min-confidence", "0.9") == 1
    err = capsys.readouterr().err
    assert "alone.png: no era-2 input has its name" in err and "broken.png" in err
    codes = np.asarray(Image.open(out / "farm_change.png"))
    assert codes.shape == (40, 60) and (codes[11:29, 11:29] == 5).all()  # green -> blue
    assert (codes[11:29, 41:49] == 9).all()  # red -> green, below 0.9 confident: uncertain (3 * 3)
    assert (codes[:5] == 0).all()  # red stays red
    report = json.loads((out / "farm_change.json").read_text())
    assert report["pixel_area_m2"] is None and report["transitions_m2"] is None
    assert report["transitions_pixels"][1][2] == pytest.approx(400, abs=40) and report["uncertain_pixels"] >= 8 * 18
    summary = json.loads((out / "changes.json").read_text())
    assert len(summary["pairs"]) == 1 and len(summary["failed"]) == 2


def _blobs(h, w, seed=0):
    """Smooth colour blobs: the dominant channel, hence the class, changes from place to place."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    return (cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


def test_align_registers_shifted_plain_images_so_only_the_real_change_remains(tmp_path, colour_model):
    canvas = _blobs(140, 180)
    one = canvas[10:130, 10:170].copy()
    two = canvas[16:136, 14:174].copy()  # the same ground, the frame moved by (6, 4) px
    two[40:70, 50:90] = BLUE  # the real change, in era 2's frame: era 1's rows 46..76, columns 54..94
    for era, img in (("a", one), ("b", two)):
        (tmp_path / era).mkdir()
        Image.fromarray(img).save(tmp_path / era / "scene.png")
    a, b = tmp_path / "a" / "scene.png", tmp_path / "b" / "scene.png"
    assert change(colour_model, a, b, tmp_path / "plain", "--no-figure") == 0
    assert change(colour_model, a, b, tmp_path / "ecc", "--align", "ecc", "--no-figure") == 0
    plain = json.loads((tmp_path / "plain" / "scene_change.json").read_text())
    ecc = json.loads((tmp_path / "ecc" / "scene_change.json").read_text())
    assert ecc["alignment"]["ok"] and ecc["alignment"]["method"] == "ecc"
    codes = np.asarray(Image.open(tmp_path / "ecc" / "scene_change.png"))
    c = 3
    changed = (codes < c * c) & (codes // c != codes % c)
    inside = np.zeros_like(changed)
    inside[46:76, 54:94] = True
    outside = changed & ~inside
    assert outside.mean() < 0.02  # registered: the blobs match, so (almost) no change outside the painted block
    assert plain["changed_pixels"] > 5 * ecc["changed_pixels"]  # unregistered: every blob edge reads as change
    assert (codes[48:74, 56:92] % c == 2).all()  # the block is blue in era 2, on era 1's grid
    assert changed[48:74, 56:92].sum() == (codes[48:74, 56:92] // c != 2).sum()  # changed wherever era 1 was not


def test_ctrl_c_leaves_no_partial_pair_keeps_finished_ones_and_is_exit_130(tmp_path, colour_model, monkeypatch,
                                                                           capsys):
    import segadapt.change as job

    for era in ("a", "b"):
        (tmp_path / era).mkdir()
        for stem in ("p1", "p2"):
            Image.fromarray(_blobs(32, 48, seed=len(stem + era))).save(tmp_path / era / f"{stem}.png")
    real, calls = job.predict_image, []

    def stop_in_the_second_pair(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # era 1 of the second pair
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "predict_image", stop_in_the_second_pair)
    out = tmp_path / "out"
    assert change(colour_model, tmp_path / "a", tmp_path / "b", out) == 130
    err = capsys.readouterr().err
    assert "1 of 2 pairs are finished" in err and "left: p2.png" in err
    assert (out / "p1_change.png").is_file() and not list(out.glob("p2_*")) and not list(out.glob(".*.tmp"))
    assert not [p for p in (out / ".change").iterdir() if p.is_dir()]  # the eras' temporary probabilities too
    monkeypatch.setattr(job, "predict_image", real)
    assert change(colour_model, tmp_path / "a", tmp_path / "b", out) == 0
    assert "1 already finished" in capsys.readouterr().out and (out / "p2_change_figure.png").is_file()


def test_era1_tiles_pair_by_ground_with_one_era2_mosaic_and_predict_only_their_part_of_it(tmp_path, colour_model,
                                                                                          monkeypatch):
    import rasterio
    from rasterio.transform import from_origin

    import segadapt.change_maps

    monkeypatch.setattr(segadapt.change_maps, "CONTEXT_PX", 8)  # this mosaic is small: a margin it can exceed

    _, mosaic = two_surveys(tmp_path)  # era 2: one LAEA mosaic of the whole area
    (tmp_path / "b" / "site.tif").rename(tmp_path / "b" / "survey_1955.tif")
    west = survey(tmp_path / "tiles" / "west.tif", "EPSG:32633", from_origin(500020.0, 4100000.0, 1.0, 1.0), 100,
                  40, GREEN)  # x 500020..500060
    east = survey(tmp_path / "tiles" / "east.tif", "EPSG:32633", from_origin(500060.0, 4100000.0, 1.0, 1.0), 100,
                  40, GREEN)  # x 500060..500100
    out = tmp_path / "out"
    assert change(colour_model, tmp_path / "tiles", tmp_path / "b", out, "--no-figure") == 0
    summary = json.loads((out / "changes.json").read_text())
    assert [p["paired_by"] for p in summary["pairs"]] == ["ground", "ground"]
    assert {Path(p["era1"]).name for p in summary["pairs"]} == {west.name, east.name}
    reports = [json.loads((out / f"{t}_change.json").read_text()) for t in ("east", "west")]
    # the field (x 500040..500080) is half in each tile: 20 m x 30 m = 600 m^2 each
    assert [r["transitions_m2"][1][2] for r in reports] == [pytest.approx(600.0, rel=0.05)] * 2
    with rasterio.open(tmp_path / "b" / "survey_1955.tif") as m:  # only the part around each tile was predicted
        assert all(r["era2_prediction"]["width"] < 0.8 * m.width for r in reports)
