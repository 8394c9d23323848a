"""One rule for scale: a model records the scale it was trained at (data.base_size) in its own format, every
command applies it unless told otherwise, and says so in one line when it applies another (models/scale.py)."""

import json

import numpy as np
import pytest
from PIL import Image

from segadapt.cli import build_parser, main, resolve_config
from segadapt.config import read_toml
from segadapt.errors import CheckpointError
from tiny import tiny_model_file

SIZE = ["--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
        "--set", "data.synthetic_train=8", "--set", "data.synthetic_val=2"]
BASE = 24  # the scenes' shorter side 32 -> 24: what the network saw
# SegFormer's first stage reduces keys by 8 at stride 4: frames of 48x64 seen at 32x43
SEG_SIZE = ["--set", "data.synthetic_size=[48, 64]", *SIZE[2:]]
SEG_BASE, SEG_NET = 32, [32, 43]


@pytest.fixture(scope="module")
def segformer_run(tmp_path_factory):
    """A tiny SegFormer trained (2 steps) at base size 32: model.safetensors and hf_model/ beside it."""
    pytest.importorskip("transformers")
    run = tmp_path_factory.mktemp("scale") / "run"
    assert main(["train", "--arch", "segformer_b0", "--width", "0.125", "--iterations", "2", "--batch-size", "2",
                 "--threads", "1", *SEG_SIZE, "--set", f"data.base_size={SEG_BASE}", "--set", "train.batch_size=3",
                 "--out", str(run)]) == 0
    return run


def test_a_transformers_directory_segadapt_writes_records_its_scale_for_transformers_too(segformer_run):
    processor = json.loads((segformer_run / "hf_model" / "preprocessor_config.json").read_text())
    assert processor["do_resize"] is True and processor["size"] == {"shortest_edge": SEG_BASE}
    record = json.loads((segformer_run / "hf_model" / "segadapt.json").read_text())
    assert record["config"]["data"]["base_size"] == SEG_BASE
    transformers = pytest.importorskip("transformers")
    seen = transformers.AutoImageProcessor.from_pretrained(segformer_run / "hf_model")(
        np.zeros((48, 64, 3), np.uint8), return_tensors="pt")["pixel_values"]
    # transformers resizes as segadapt does (the longer side floored where segadapt rounds it)
    assert seen.shape[-2] == SEG_BASE and abs(seen.shape[-1] - SEG_NET[1]) <= 1


def test_training_records_the_factor_its_frames_were_resized_by(segformer_run):
    from segadapt.checkpoint import load_model_file

    meta = load_model_file(segformer_run / "model.safetensors")[1]
    assert meta["pixel_factor"] == pytest.approx(SEG_BASE / 48)  # 48x64 frames at base size 32
    record = json.loads((segformer_run / "hf_model" / "segadapt.json").read_text())
    assert record["pixel_factor"] == meta["pixel_factor"]


def test_a_mosaic_is_resized_by_the_training_frames_factor_not_to_the_base_size(tmp_path, capsys):
    """A survey larger than any frame keeps the ground size per pixel the model learnt at; a model whose
    frames had many sizes records no factor, and mosaics are then predicted as stored, said in one line."""
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(tmp_path / "survey.tif", "w", driver="GTiff", height=96, width=128, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(5e5, 4e6, 1, 1)) as ds:
        ds.write(np.random.default_rng(0).integers(0, 256, (3, 96, 128)).astype(np.uint8))
    for factor, network, said in [(0.75, [72, 96], False), (None, [96, 128], True)]:
        model = tiny_model_file(tmp_path / f"m{factor}.safetensors", base_size=BASE, pixel_factor=factor)
        out = tmp_path / f"out{factor}"
        assert main(["predict", "--model", str(model), "--images", str(tmp_path / "survey.tif"),
                     "--out", str(out)]) == 0
        entry = json.loads((out / "predictions.json").read_text())["images"][0]
        assert entry["network_size"] == network
        assert ("no pixel factor is known for TIFFs read in windows" in capsys.readouterr().err) == said
    with rasterio.open(tmp_path / "out0.75" / "survey_mask.tif") as m:
        assert (m.height, m.width) == (96, 128)  # the outputs keep the survey's grid


def test_a_scale_past_any_mosaic_is_one_line_before_any_output(tmp_path, capsys):
    model = tiny_model_file(tmp_path / "m.safetensors", base_size=BASE)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["predict", "--model", str(model), "--images", str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out"), "--scale", "1e5"])
    err = capsys.readouterr().err
    assert code == 1 and "--scale 100000: the image would reach the network at 3000000x4000000 px" in err
    assert not list((tmp_path / "out").glob("a_*"))


def test_the_hf_directory_scores_as_its_run_does(segformer_run, tmp_path):
    """The same weights at the same scale: the same confusion (pixel counts at 32x43, not 48x64)."""
    assert main(["evaluate", "--model", str(segformer_run), "--out", str(tmp_path / "run.json")]) == 0
    assert main(["evaluate", "--model", str(segformer_run / "hf_model"), "--out", str(tmp_path / "hf.json")]) == 0
    run, hf = (json.loads((tmp_path / n).read_text()) for n in ("run.json", "hf.json"))
    assert np.asarray(run["confusion"]).sum() == 2 * SEG_NET[0] * SEG_NET[1]
    assert hf["confusion"] == run["confusion"] and hf["miou"] == run["miou"]


def test_adapting_the_hf_directory_takes_its_runs_data_settings(segformer_run, tmp_path):
    from segadapt.models.scale import trained_base_size

    out = tmp_path / "h2"
    assert main(["adapt", "--h1", str(segformer_run / "hf_model"), "--filter", "ripple", "--iterations", "1",
                 "--layers", "stage1", "--set", "adapt.holdout=0", "--threads", "1", "--out", str(out)]) == 0
    h1, h2 = read_toml(segformer_run / "config.toml"), read_toml(out / "config.toml")
    for key in ("dataset", "base_size", "crop_size", "scale_min", "scale_max", "synthetic_size"):
        assert h2["data"][key] == h1["data"][key], key
    assert h2["train"]["batch_size"] == 3  # H1's recipe, not the defaults'
    # H2's own directory records the scale it was adapted at in turn
    assert trained_base_size(json.loads((out / "hf_model" / "segadapt.json").read_text())) == SEG_BASE


def test_a_scale_other_than_the_models_is_said_in_one_line(tmp_path, capsys):
    model = tiny_model_file(tmp_path / "m.safetensors", base_size=BASE)
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "frame.png")
    capsys.readouterr()
    assert main(["export", "--model", str(model), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                 "--samples", str(tmp_path / "frame.png")]) == 0
    assert json.loads((tmp_path / "m.pt.json").read_text())["base_size"] == BASE
    assert "note:" not in capsys.readouterr().err  # the model's own scale: nothing to say
    assert main(["export", "--model", str(model), "--format", "torchscript", "--out", str(tmp_path / "n.pt"),
                 "--samples", str(tmp_path / "frame.png"), "--set", "data.base_size=48"]) == 0
    err = capsys.readouterr().err
    assert json.loads((tmp_path / "n.pt.json").read_text())["base_size"] == 48
    assert [line for line in err.splitlines() if line.startswith("note:")] == [
        f"note: {model} was trained at data.base_size {BASE} (shorter side to {BASE} px); using data.base_size 48 "
        "(shorter side to 48 px) as you set"]


def test_a_geotiff_and_a_png_of_one_frame_are_predicted_at_the_models_scale(tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio")
    model = tiny_model_file(tmp_path / "m.safetensors", base_size=BASE, pixel_factor=BASE / 32)  # 32 px frames
    rng = np.random.default_rng(0)
    frame = np.kron(rng.integers(0, 256, (8, 12, 3)), np.ones((4, 4, 1))).astype(np.uint8)  # 32 x 48
    Image.fromarray(frame).save(tmp_path / "a.png")
    with rasterio.open(tmp_path / "b.tif", "w", driver="GTiff", height=32, width=48, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(5e5, 4e6, 1, 1)) as ds:
        ds.write(np.moveaxis(frame, 2, 0))
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), "--images", str(tmp_path / "a.png"), str(tmp_path / "b.tif"),
                 "--out", str(out)]) == 0
    png, tif = json.loads((out / "predictions.json").read_text())["images"]
    assert png["network_size"] == tif["network_size"] == [BASE, 36] and png["scale"] == tif["scale"]
    with rasterio.open(out / "b_mask.tif") as m:
        assert (m.read(1) == np.asarray(Image.open(out / "a_mask.png"))).mean() > 0.98
    capsys.readouterr()
    with rasterio.open(tmp_path / "c.tif", "w", driver="GTiff", height=32, width=48, count=3, dtype="uint8",
                       nodata=0, crs="EPSG:32633", transform=rasterio.transform.from_origin(5e5, 4e6, 1, 1)) as ds:
        ds.write(np.moveaxis(np.where(np.arange(48)[None, :, None] < 16, 0, np.maximum(frame, 1)), 2, 0))
    assert main(["predict", "--model", str(model), "--images", str(tmp_path / "c.tif"), "--out", str(out)]) == 0
    with rasterio.open(out / "c_mask.tif") as m:
        mask = m.read(1)
    assert (mask[:, :16] == 255).all() and (mask[:, 16:] < 11).all()  # nodata stays nodata at another scale
    assert main(["predict", "--model", str(model), "--images", str(tmp_path / "b.tif"), "--out",
                 str(tmp_path / "o2"), "--scale", "1"]) == 0
    assert "resizing every image by --scale 1 instead" in capsys.readouterr().err


@pytest.mark.parametrize("scale", [0.75, 0.3, 1.7])
def test_a_raster_read_in_windows_is_resampled_as_a_decoded_image_is_resized(scale):
    from segadapt.data.rasters import ArrayReader, Resampled
    from segadapt.data.transforms import resize_image

    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    whole = resize_image(image, scale).astype(np.float32)
    view = Resampled(ArrayReader(image), scale)
    assert (view.height, view.width) == whole.shape[:2]
    assert np.abs(view.read(0, 0, view.height, view.width)[0] - whole).max() <= 1.0  # OpenCV's fixed point
    y, x, h, w = 5, 7, view.height // 2, view.width // 3
    assert np.array_equal(view.read(y, x, h, w)[0], view.read(0, 0, view.height, view.width)[0][y:y + h, x:x + w])


def test_resampling_reads_only_what_the_output_window_samples(monkeypatch):
    """A mosaic brought down to a few pixels: reads stay at WINDOW_PIXELS, not the source window."""
    from segadapt.data.rasters import ArrayReader, Resampled

    image = np.random.default_rng(2).integers(0, 256, (200, 40, 3)).astype(np.uint8)
    whole = Resampled(ArrayReader(image), 0.1).read(0, 0, 20, 4)[0]
    reads = []

    class Counted(ArrayReader):
        def read(self, y, x, h, w):
            reads.append(h * w)
            return super().read(y, x, h, w)

    monkeypatch.setattr(Resampled, "WINDOW_PIXELS", 100)
    assert np.array_equal(Resampled(Counted(image), 0.1).read(0, 0, 20, 4)[0], whole)
    assert max(reads) <= 100 and sum(reads) < 200 * 40 / 2


def test_shift_lengths_follow_the_models_scale_or_the_datas_preset(tmp_path, capsys):
    h1 = tmp_path / "h1"
    assert main(["train", "--width", "0.0625", "--iterations", "1", "--batch-size", "2", "--threads", "1", *SIZE,
                 "--set", f"data.base_size={BASE}", "--out", str(h1)]) == 0
    capsys.readouterr()
    assert main(["shift", "--model", str(h1), "--filter", "ripple", "--split", "val", "--out",
                 str(tmp_path / "d2")]) == 0
    assert "length factor 1.33333" in capsys.readouterr().out  # 32 / 24: pixels of the images H1 sees
    # no model: the dataset's preset (CamVid's 240), not factor 1 at the stored size
    args = build_parser().parse_args(["shift", "--dataset", "camvid", "--filter", "ripple", "--out", "o"])
    assert resolve_config(args).data.base_size == 240


def test_what_a_transformers_preprocessor_says_of_the_scale():
    from segadapt.models.scale import preprocessor_base_size, trained_base_size

    assert preprocessor_base_size({"size": {"shortest_edge": 512}}, "p") == 512
    assert preprocessor_base_size({"do_resize": True, "size": {"height": 512, "width": 640}}, "p") == 512
    assert preprocessor_base_size({"size": 384}, "p") == 384
    assert preprocessor_base_size({"do_resize": False, "size": {"height": 512, "width": 512}}, "p") == 0
    assert preprocessor_base_size({"image_mean": [0.5] * 3}, "p") is None
    with pytest.raises(CheckpointError, match="p: size"):
        preprocessor_base_size({"size": {"longest_edge": 0}}, "p")
    # a model that learnt from raster windows saw them at their stored resolution
    raster = {"config": {"data": {"base_size": 240}, "shift": {"d1_raster": "d1.tif"}}}
    assert trained_base_size(raster) == 0 and trained_base_size({"arch": "factory"}) is None
