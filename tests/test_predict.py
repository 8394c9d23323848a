"""segadapt predict: tiling and blending, readers (GeoTIFF, 16-bit, grey), outputs, re-runs and failures."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segadapt.cli import main
from segadapt.data.base import read_image
from segadapt.data.rasters import ArrayReader
from segadapt.errors import ConfigError
from segadapt.predict import (
    FLOOR,
    Predictor,
    RowResampler,
    axis_weights,
    coverage,
    plan_tiles,
    positions,
    predict_image,
)
from tiny import CAMVID_CLASSES, tiny_model_file
from tiny_hf import factory_model_file, hf_model_file

NORM = SimpleNamespace(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), base_size=0)


class Rows:
    """An `outputs` stand-in that keeps the labels and confidence it is given, checking rows come in order."""

    def __init__(self, h: int, w: int) -> None:
        self.labels, self.conf, self.next = np.full((h, w), -1), np.zeros((h, w), np.float32), 0

    def write(self, y, labels, conf, entropy, valid, rgb):
        assert y == self.next, "rows must arrive in order, each once"
        self.labels[y:y + len(labels)], self.conf[y:y + len(labels)] = labels, conf
        self.next = y + len(labels)


def run(pred, image, **kw) -> Rows:
    rows = Rows(*image.shape[:2])
    predict_image(pred, ArrayReader(image), rows, progress=False, **kw)
    assert rows.next == image.shape[0] and (rows.labels >= 0).all()
    return rows


def local_net(classes: int = 5) -> nn.Module:
    """Three 3x3 convolutions: a receptive field of 7 pixels, so tiles overlapping by 16 see what the whole
    image shows around every pixel that matters."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, classes, 3, padding=1))


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


# --- grid and weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("length,tile,overlap", [(311, 64, 16), (320, 256, 64), (100, 100, 0), (1000, 128, 40)])
def test_tiles_cover_the_axis_evenly_with_at_least_the_overlap(length, tile, overlap):
    starts = positions(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == max(0, length - tile)
    gaps = np.diff(starts)
    assert (tile - gaps >= overlap).all() and (np.ptp(gaps) if len(gaps) else 0) <= 1


def test_weights_are_positive_full_at_the_border_and_cross_fade_to_one():
    length, tile = 300, 96
    starts = positions(length, tile, 32)
    ws = axis_weights(length, starts, tile)
    assert all((w >= FLOOR).all() and w.max() == pytest.approx(1.0) for w in ws)
    assert ws[0][0] == pytest.approx(1.0) and ws[-1][-1] == pytest.approx(1.0)  # image border: trusted
    assert ws[1][0] == pytest.approx(FLOOR, abs=1e-6) and ws[0][-1] == pytest.approx(FLOOR, abs=1e-6)  # cuts
    # with the floor taken out, the windows of neighbours sum to exactly 1 everywhere: a partition of unity
    raw = [(w - FLOOR) / (1 - FLOOR) for w in ws]
    np.testing.assert_allclose(coverage(length, starts, raw), 1.0, atol=1e-6)
    mid = ws[1]
    np.testing.assert_allclose(mid, mid[::-1], atol=1e-6)  # equal overlaps on both sides: symmetric
    rise = mid[: tile // 2]
    assert (np.diff(rise) >= -1e-7).all()


def test_overlap_and_tile_are_checked():
    with pytest.raises(ConfigError, match="--overlap 60"):
        plan_tiles(300, 300, 5, 64.0, tile=100, overlap=60)
    with pytest.raises(ConfigError, match="--tile 8"):
        plan_tiles(300, 300, 5, 64.0, tile=8)


def test_the_memory_budget_picks_whole_images_when_they_fit_and_tiles_when_not():
    small = plan_tiles(240, 320, 11, 256.0, memory_mb=1024)
    assert small.tiles == 1 and (small.tile_h, small.tile_w) == (240, 320)
    big = plan_tiles(20000, 20000, 11, 256.0, memory_mb=1024)
    assert 128 <= big.tile_h < 20000 and big.overlap == big.tile_h // 4
    tighter = plan_tiles(20000, 20000, 11, 256.0, memory_mb=256)
    assert tighter.tile_h < big.tile_h


@pytest.mark.parametrize("out", [(91, 120), (20, 30), (37, 53), (37, 100), (200, 13)])
def test_chunked_resize_equals_resizing_the_whole_map(out):
    x = torch.randn(5, 37, 53)
    r = RowResampler((37, 53), out)
    rows = [c for a in range(0, 37, 7) for _, c in r.push(a, x[:, a:a + 7].clone())]
    ref = F.interpolate(x[None], size=out, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(torch.cat(rows, 1), ref, atol=2e-5, rtol=0)


# --- tiled against whole-image prediction -------------------------------------------------------------

@pytest.mark.parametrize("tile,overlap,batch", [(64, 16, 4), (50, 20, 3), (100, 24, 1)])
def test_tiled_prediction_matches_the_whole_image_for_a_local_model(tile, overlap, batch):
    pred = Predictor.from_meta(local_net(), {"num_classes": 5}, NORM, torch.device("cpu"))
    image = scene(203, 311)
    whole, tiled = run(pred, image), run(pred, image, tile=tile, overlap=overlap, batch=batch)
    assert (whole.labels == tiled.labels).mean() >= 0.9995
    assert np.abs(whole.conf - tiled.conf).max() < 1e-3


def test_tiles_without_overlap_show_the_seams_the_overlap_removes():
    pred = Predictor.from_meta(local_net(), {"num_classes": 5}, NORM, torch.device("cpu"))
    image = scene(203, 311, seed=1)
    whole = run(pred, image)
    seams = (run(pred, image, tile=64, overlap=0).labels != whole.labels).mean()
    blended = (run(pred, image, tile=64, overlap=16).labels != whole.labels).mean()
    assert seams > 5 * blended


@pytest.fixture(scope="module")
def camvid_model(camvid_root):
    """A tiny VGGDeepLab whose classifier is fitted (least squares) to the fc7 features of four CamVid training
    frames: a random backbone with a classifier that separates the frames' classes, so its argmax means something."""
    from segadapt.data.base import read_mask
    from segadapt.models import VGGDeepLab

    torch.manual_seed(0)
    model = VGGDeepLab(len(CAMVID_CLASSES), 0.0625).eval()
    files = sorted((camvid_root / "train" / "images").glob("*.jpg"))[::90][:4]
    x = torch.from_numpy(np.stack([read_image(f) for f in files])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(NORM.mean).view(1, 3, 1, 1)) / torch.tensor(NORM.std).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = model.features(x, ["fc7"])["fc7"]
    h, w = feats.shape[2:]
    labels = [read_mask(camvid_root / "train" / "labels" / f"{f.stem}.png") for f in files]
    y = torch.from_numpy(np.stack([m[4::8, 4::8][:h, :w] for m in labels])).reshape(-1)
    a = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])[y != 11]
    a = torch.cat([a, torch.ones(len(a), 1)], 1)
    sol = torch.linalg.lstsq(a, F.one_hot(y[y != 11], len(CAMVID_CLASSES)).float()).solution * 10
    model.classifier.weight.data = sol[:-1].T.reshape(len(CAMVID_CLASSES), -1, 1, 1).contiguous()
    model.classifier.bias.data = sol[-1].contiguous()
    return model


def test_tiled_prediction_agrees_with_the_whole_camvid_frame(camvid_model, camvid_root):
    """A CamVid frame at twice its size (720x960), larger than VGG-DeepLab-LargeFOV's ~420-pixel receptive
    field: tiles of 640 with half overlap leave each pixel enough image around it to match the whole-frame
    prediction; smaller tiles, which cut closer to more pixels, agree less."""
    import cv2

    # one thread: oneDNN picks its convolution algorithm by thread count, and the few pixels whose two best
    # classes are within that algorithm's rounding of each other flip with it (0.9947-0.9987 agreement seen at
    # 1-8 threads); the test is about context, so it fixes the arithmetic
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _tiles_agree_with_the_whole_frame(camvid_model, camvid_root, cv2)
    finally:
        torch.set_num_threads(threads)


def _tiles_agree_with_the_whole_frame(camvid_model, camvid_root, cv2) -> None:
    pred = Predictor.from_meta(camvid_model, {"num_classes": 11}, NORM, torch.device("cpu"))
    frame = cv2.resize(read_image(sorted((camvid_root / "val" / "images").glob("*.jpg"))[0]), (960, 720))
    whole = run(pred, frame)
    assert len(np.unique(whole.labels)) >= 3  # the fitted classifier finds several classes
    near = (run(pred, frame, tile=448, overlap=224).labels == whole.labels).mean()
    far = (run(pred, frame, tile=640, overlap=320).labels == whole.labels).mean()
    assert far >= 0.995 and near < far


# --- the command ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "model.safetensors")


def predict(model, images, out, *flags):
    return main(["predict", "--model", str(model), "--images", *map(str, images), "--out", str(out), *flags])


def test_folders_and_globs_list_each_image_once_and_refuse_stem_clashes(tmp_path, model_file, capsys):
    from segadapt.predict_job import list_inputs

    (tmp_path / "a").mkdir()
    for name in ("a/x.png", "a/y.jpg", "b.webp"):
        Image.fromarray(scene(20, 30)).save(tmp_path / name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    got = list_inputs([str(tmp_path / "a"), str(tmp_path / "*.webp"), str(tmp_path / "a" / "x.png")])
    assert [p.name for p in got] == ["x.png", "y.jpg", "b.webp"]
    Image.fromarray(scene(20, 30)).save(tmp_path / "x.jpg")
    with pytest.raises(ConfigError, match="share the name 'x'"):
        list_inputs([str(tmp_path / "a"), str(tmp_path / "x.jpg")])
    assert predict(model_file, [tmp_path / "nothing*.png"], tmp_path / "out") == 2
    assert "matches no image files" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert predict(model_file, [tmp_path / "a"], tmp_path / "a") == 0  # outputs beside the images...
    capsys.readouterr()
    assert predict(model_file, [tmp_path / "a"], tmp_path / "a") == 0  # ...are not taken for inputs next time
    assert "predicted 2 of 2 image(s)" in capsys.readouterr().out


def test_outputs_summary_and_rerun_skips_finished_images(tmp_path, model_file, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(scene(48, 64)).save(images / "one.png")
    Image.fromarray(scene(40, 56, 1)).save(images / "two.jpg")
    Image.fromarray(scene(30, 44, 2)).save(images / "three.webp")
    out = tmp_path / "out"
    assert predict(model_file, [images], out, "--overlay", "--confidence", "--entropy") == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["classes"] == list(CAMVID_CLASSES) and not summary["failed"]
    one = next(e for e in summary["images"] if e["input"].endswith("one.png"))
    assert (one["width"], one["height"]) == (64, 48)
    assert sum(one["class_fractions"].values()) == pytest.approx(1.0)
    assert 1 / 11 <= one["mean_confidence"] <= 1.0
    mask = Image.open(out / "one_mask.png")
    assert mask.mode == "P" and mask.size == (64, 48)
    assert mask.getpalette()[:6] == [128, 128, 128, 128, 0, 0]  # CamVid's sky, building
    fractions = np.bincount(np.array(mask).ravel(), minlength=11) / (48 * 64)
    np.testing.assert_allclose(fractions, list(one["class_fractions"].values()), atol=1e-9)
    conf = np.array(Image.open(out / "one_confidence.png"))
    assert conf.mean() / 255 == pytest.approx(one["mean_confidence"], abs=0.01)
    assert Image.open(out / "one_overlay.png").size == (64, 48) and (out / "two_entropy.png").is_file()
    assert Image.open(out / "three_mask.png").size == (44, 30)
    times = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    capsys.readouterr()
    assert predict(model_file, [images], out, "--overlay", "--confidence", "--entropy") == 0
    assert "3 already finished" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == times
    assert all(e["skipped"] for e in json.loads((out / "predictions.json").read_text())["images"])
    assert predict(model_file, [images], out, "--overlay", "--confidence", "--entropy", "--tile", "32") == 0
    assert "already finished" not in capsys.readouterr().out  # other settings: predicted again
    assert (out / "one_mask.png").stat().st_mtime_ns != times["one_mask.png"]


def test_an_unreadable_image_is_listed_and_the_others_are_written(tmp_path, model_file, capsys):
    Image.fromarray(scene(32, 40)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "out"
    assert predict(model_file, [tmp_path / "broken.jpg", tmp_path / "good.png"], out) == 1
    err = capsys.readouterr().err
    assert "broken.jpg: unreadable or corrupt image" in err and "Traceback" not in err
    assert (out / "good_mask.png").is_file() and not list(out.glob("broken*"))
    failed = json.loads((out / "predictions.json").read_text())["failed"]
    assert [Path(f["input"]).name for f in failed] == ["broken.jpg"]


def test_grey_images_are_replicated_to_rgb(tmp_path, model_file):
    grey = scene(36, 52)[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(np.repeat(grey[..., None], 3, 2)).save(tmp_path / "rgb.png")
    assert predict(model_file, [tmp_path / "grey.png", tmp_path / "rgb.png"], tmp_path / "out") == 0
    a, b = (np.array(Image.open(tmp_path / "out" / f"{n}_mask.png")) for n in ("grey", "rgb"))
    np.testing.assert_array_equal(a, b)


def test_an_interrupted_image_leaves_no_partial_file_and_keeps_finished_ones(tmp_path, model_file, monkeypatch,
                                                                               capsys):
    import segadapt.predict_outputs as outputs

    for name in ("a", "b"):
        Image.fromarray(scene(40, 40)).save(tmp_path / f"{name}.png")
    real = outputs.ImageOutputs.write
    calls = {"n": 0}

    def write(self, y, *args):
        calls["n"] += 1
        if self.paths["mask"].name.startswith("b") and y > 0:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second image
        return real(self, y, *args)

    monkeypatch.setattr(outputs.ImageOutputs, "write", write)
    monkeypatch.setattr("segadapt.predict.CHUNK_PIXELS", 8 * 40)  # 8 rows a chunk
    out = tmp_path / "out"
    assert predict(model_file, [tmp_path / "a.png", tmp_path / "b.png"], out, "--confidence") == 130
    assert "1 of 2 images are finished" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".predict", "a_confidence.png", "a_mask.png"]
    assert [p.name for p in (out / ".predict").iterdir()] == ["a.json"]  # no temp file, nothing of b
    monkeypatch.setattr(outputs.ImageOutputs, "write", real)
    assert predict(model_file, [tmp_path / "a.png", tmp_path / "b.png"], out, "--confidence") == 0
    assert "1 already finished" in capsys.readouterr().out and (out / "b_mask.png").is_file()


# --- TIFF and GeoTIFF ---------------------------------------------------------------------------------

def write_tiff(path, data, **profile):
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype.name, **profile) as ds:
        ds.write(data)
    return path


def test_geotiff_round_trip_keeps_crs_transform_and_nodata(tmp_path, model_file):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    data = np.moveaxis(scene(300, 280), 2, 0).copy()
    data[:, :50, :70] = 0  # nodata in every band
    data[0, 100:110, 100:110] = 0  # nodata in one band only: still data
    transform = from_origin(500000.0, 4100000.0, 0.25, 0.25)
    src = write_tiff(tmp_path / "scene.tif", data, crs="EPSG:32633", transform=transform, nodata=0)
    out = tmp_path / "out"
    assert predict(model_file, [src], out, "--tile", "128", "--overlay", "--confidence") == 0
    with rasterio.open(src) as s, rasterio.open(out / "scene_mask.tif") as m:
        assert m.crs == s.crs and m.transform == s.transform and (m.width, m.height) == (280, 300)
        mask = m.read(1)
        assert m.nodata == 255 and m.colormap(1)[0][:3] == (128, 128, 128)
    assert (mask[:50, :70] == 255).all() and (mask[50:] < 11).all() and (mask[100:110, 100:110] < 11).all()
    with rasterio.open(out / "scene_confidence.tif") as c:
        conf = c.read(1)
        assert c.crs == s.crs and c.transform == transform and np.isnan(c.nodata)
    assert np.isnan(conf[:50, :70]).all() and np.isfinite(conf[50:]).all()
    with rasterio.open(out / "scene_overlay.tif") as o:
        assert o.count == 3 and o.transform == transform
    entry = json.loads((out / "predictions.json").read_text())["images"][0]
    assert entry["nodata_fraction"] == pytest.approx(50 * 70 / (300 * 280))
    assert entry["tiles"] > 1 and entry["raster"]["crs"] == "EPSG:32633"


def test_16_bit_rasters_are_stretched_by_the_stated_rule(tmp_path):
    pytest.importorskip("rasterio")
    from segadapt.data.rasters import GeoTiffReader

    rng = np.random.default_rng(0)
    band = rng.integers(1000, 3000, (1, 64, 80)).astype(np.uint16)
    path = write_tiff(tmp_path / "scan.tif", band)
    r = GeoTiffReader(path)  # auto: percentile 2..98 for 16-bit
    lo, hi = np.percentile(band, [2, 98])
    rgb, valid = r.read(0, 0, 64, 80)
    assert valid is None and rgb.shape == (64, 80, 3) and (rgb[..., 0] == rgb[..., 2]).all()  # one band, replicated
    expect = np.clip((band[0] - lo) * 255 / (hi - lo), 0, 255)
    np.testing.assert_allclose(rgb[..., 0], expect, atol=1e-3)
    assert r.stretch.rule == "percentile" and r.stretch.low == (pytest.approx(lo),)
    r.close()
    r = GeoTiffReader(path, stretch="range")
    np.testing.assert_allclose(r.read(0, 0, 64, 80)[0][..., 1], band[0].astype(float) * 255 / 65535, atol=1e-3)
    r.close()
    r = GeoTiffReader(write_tiff(tmp_path / "rgb8.tif", (band[:, :, :] % 256).astype(np.uint8).repeat(3, 0)))
    assert r.stretch.rule == "as stored" and r.read(0, 0, 4, 4)[0].max() == (band[0, :4, :4] % 256).max()
    r.close()


def test_bands_are_chosen_or_asked_for(tmp_path, model_file, capsys):
    pytest.importorskip("rasterio")
    from segadapt.data.rasters import GeoTiffReader

    data = (np.arange(4 * 30 * 40).reshape(4, 30, 40) % 251).astype(np.uint8)
    r = GeoTiffReader(write_tiff(tmp_path / "four.tif", data), bands=(4, 2, 1))
    np.testing.assert_array_equal(r.read(0, 0, 30, 40)[0], np.moveaxis(data[[3, 1, 0]], 0, 2))
    r.close()
    two = write_tiff(tmp_path / "two.tif", data[:2])
    assert predict(model_file, [two], tmp_path / "out") == 1
    assert "has 2 bands; choose which to use with --bands" in capsys.readouterr().err
    assert predict(model_file, [two], tmp_path / "out", "--bands", "2") == 0
    assert predict(model_file, [two], tmp_path / "out2", "--bands", "1,2") == 2


# --- what predict may replace, and failures that stay one image's ----------------------------------------

def test_a_users_file_named_like_an_output_is_never_replaced(tmp_path, model_file, capsys):
    """Images and outputs in one folder: a ground-truth scene_mask.png beside scene.png is the user's (no
    record of predict's says it wrote it), so predicting scene.png is refused naming it, the file is left
    as it was, and the other images are predicted; predict's own outputs are not taken for inputs later."""
    from segadapt.predict_job import list_inputs

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(scene(24, 32)).save(folder / "scene.png")
    Image.fromarray(scene(24, 32, 1)).save(folder / "other.png")
    truth = np.zeros((24, 32), np.uint8)
    truth[:, 16:] = 3
    Image.fromarray(truth).save(folder / "scene_mask.png")
    before = (folder / "scene_mask.png").read_bytes()
    assert predict(model_file, [folder], folder) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'scene_mask.png'}: exists and was not written by segadapt" in err
    assert "Traceback" not in err
    assert (folder / "scene_mask.png").read_bytes() == before  # the user's file, untouched
    assert (folder / "other_mask.png").is_file() and (folder / "scene_mask_mask.png").is_file()
    failed = json.loads((folder / "predictions.json").read_text())["failed"]
    assert [Path(f["input"]).name for f in failed] == ["scene.png"]
    # the outputs predict wrote are no inputs on a re-run; the user's file named like one still is
    assert [p.name for p in list_inputs([str(folder)], folder)] == ["other.png", "scene.png", "scene_mask.png"]
    assert predict(model_file, [folder], folder) == 1
    assert "2 already finished" in capsys.readouterr().out
    # an output predict wrote and the user then changed is theirs: not replaced by a run with other settings
    Image.fromarray(truth).save(folder / "other_mask.png")
    changed = (folder / "other_mask.png").read_bytes()
    assert predict(model_file, [folder / "other.png"], folder, "--tile", "32") == 1
    assert "other_mask.png: exists and was not written by segadapt" in capsys.readouterr().err
    assert (folder / "other_mask.png").read_bytes() == changed


def test_a_predictions_json_predict_did_not_write_is_refused_before_any_output(tmp_path, model_file, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(scene(24, 32)).save(folder / "a.png")
    (folder / "predictions.json").write_text('{"mine": true}\n')
    assert predict(model_file, [folder], folder) == 2
    assert "predictions.json: exists and was not written by segadapt" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "predictions.json"]
    assert (folder / "predictions.json").read_text() == '{"mine": true}\n'
    (folder / "predictions.json").unlink()
    assert predict(model_file, [folder], folder) == 0
    assert predict(model_file, [folder], folder, "--confidence") == 0  # its own summary it replaces


def test_outputs_are_recorded_by_hash_before_they_are_in_place(tmp_path, model_file, monkeypatch):
    """A run killed after the record but before the renames still owns whatever is at each name."""
    import segadapt.predict_outputs as outputs

    Image.fromarray(scene(24, 32)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert predict(model_file, [tmp_path / "a.png"], out) == 0
    first = (out / "a_mask.png").read_bytes()

    class Killed(BaseException):
        pass

    real = outputs.ImageOutputs.__exit__

    def exit_after_record(self, kind, e, tb):
        self.files.__exit__(kind, e, tb)
        self.before_rename({k: outputs.sha256_file(p) for k, p in self.temp_paths.items()})
        self.temps.__exit__(Killed, Killed(), None)  # the temp files go, the renames never happen
        raise Killed

    monkeypatch.setattr(outputs.ImageOutputs, "__exit__", exit_after_record)
    with pytest.raises(Killed):
        predict(model_file, [tmp_path / "a.png"], out, "--tile", "32")
    assert (out / "a_mask.png").read_bytes() == first
    monkeypatch.setattr(outputs.ImageOutputs, "__exit__", real)
    assert predict(model_file, [tmp_path / "a.png"], out, "--tile", "32") == 0  # still predict's file: replaced


@pytest.fixture(scope="module")
def segformer_file(tmp_path_factory):
    """A tiny SegFormer: its first kernel is 8x8 at stride 4."""
    return hf_model_file(tmp_path_factory.mktemp("segformer"))


def test_every_failure_of_one_image_is_one_line_and_the_run_goes_on(tmp_path, segformer_file, capsys):
    """Images too small for the network's kernels and a complex-valued TIFF: each is one line naming it,
    the other images are predicted, predictions.json lists the failures, exit 1."""
    rasterio = pytest.importorskip("rasterio")
    Image.fromarray(scene(1, 1)).save(tmp_path / "dot.png")
    Image.fromarray(scene(2, 300)).save(tmp_path / "strip.png")
    Image.fromarray(scene(32, 40)).save(tmp_path / "good.png")
    rng = np.random.default_rng(0)
    with rasterio.open(tmp_path / "complex.tif", "w", driver="GTiff", height=8, width=8, count=3,
                       dtype="complex64") as ds:
        ds.write((rng.random((3, 8, 8)) + 1j * rng.random((3, 8, 8))).astype(np.complex64))
    images = [tmp_path / n for n in ("dot.png", "complex.tif", "strip.png", "good.png")]
    out = tmp_path / "out"
    assert predict(segformer_file, images, out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in ("dot.png", "complex.tif", "strip.png"):
        lines = [ln for ln in err.splitlines() if f"{tmp_path / name}: " in ln]
        assert len(lines) == 2, name  # as it happens, and in the list at the end
    assert "complex64 pixels are not image brightness; convert" in err  # a pixel type is named as such
    assert (out / "good_mask.png").is_file() and not list(out.glob("dot*")) and not list(out.glob("strip*"))
    summary = json.loads((out / "predictions.json").read_text())
    assert sorted(Path(f["input"]).name for f in summary["failed"]) == ["complex.tif", "dot.png", "strip.png"]
    assert [Path(e["input"]).name for e in summary["images"]] == ["good.png"]


def test_a_name_too_long_for_its_outputs_is_that_images_failure(tmp_path, model_file, capsys):
    long = tmp_path / ("n" * 249 + ".png")  # a valid name; `<stem>_confidence.png` would be 264 bytes
    Image.fromarray(scene(20, 24)).save(long)
    Image.fromarray(scene(20, 24)).save(tmp_path / "short.png")
    out = tmp_path / "out"
    assert predict(model_file, [long, tmp_path / "short.png"], out, "--confidence") == 1
    err = capsys.readouterr().err
    assert f"{long}: its name is too long for its outputs" in err and "rename the file" in err
    assert "Traceback" not in err and (out / "short_confidence.png").is_file()
    assert [Path(f["input"]) for f in json.loads((out / "predictions.json").read_text())["failed"]] == [long]


def test_a_memory_budget_below_the_smallest_plan_is_said_and_the_smallest_plan_used(tmp_path, model_file, capsys):
    plan = plan_tiles(4000, 4000, 11, 256.0, memory_mb=1, batch=4)
    assert (plan.tile_h, plan.batch) == (128, 1) and plan.needs_mb > 1
    assert plan_tiles(4000, 4000, 11, 256.0, memory_mb=1024).needs_mb is None
    Image.fromarray(scene(300, 300)).save(tmp_path / "a.png")
    assert predict(model_file, [tmp_path / "a.png"], tmp_path / "out", "--memory-mb", "0.5") == 0
    warning = [ln for ln in capsys.readouterr().err.splitlines() if "--memory-mb 0.5" in ln]
    assert len(warning) == 1 and "less than the smallest tile plan needs (about" in warning[0]
    entry = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"][0]
    assert entry["tile"] == [128, 128] and entry["batch"] == 1 and entry["memory_needed_mb"] > 0.5


# --- factory models ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def factory_h2(tmp_path_factory):
    return factory_model_file(tmp_path_factory.mktemp("factory") / "run")


def test_predict_takes_trust_factory_for_a_factory_model(tmp_path, factory_h2, capsys):
    Image.fromarray(scene(24, 32)).save(tmp_path / "a.png")
    assert predict(factory_h2, [tmp_path / "a.png"], tmp_path / "out") == 2
    assert "--trust-factory tiny_hf:small_cnn" in capsys.readouterr().err
    assert predict(factory_h2, [tmp_path / "a.png"], tmp_path / "out", "--trust-factory", "tiny_hf:small_cnn") == 0
    assert predict(factory_h2, [tmp_path / "a.png"], tmp_path / "out2",
                   "--set", 'adapt.trust_factories=["tiny_hf:small_cnn"]') == 0
    assert (tmp_path / "out2" / "a_mask.png").is_file()


def test_every_command_that_loads_a_model_takes_trust_factory():
    import argparse

    from segadapt.cli import build_parser

    def parsers(p):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in dict.fromkeys(action.choices.values()):
                    yield from parsers(sub)

    checked = []
    for p in parsers(build_parser()):
        options = {o for a in p._actions for o in a.option_strings}
        if options & {"--model", "--h1", "--h2", "--models"}:
            checked.append(p.prog)
            assert "--trust-factory" in options, p.prog
    assert {"segadapt predict", "segadapt export", "segadapt evaluate", "segadapt adapt"} <= set(checked)
