import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segadapt.config import DataConfig
from segadapt.data import build_dataset, build_source, spread_indices
from segadapt.data.base import MAX_IMAGE_PIXELS, read_image, read_mask
from segadapt.data.palettes import CAMVID
from segadapt.data.palettes import voc as voc_palette
from segadapt.errors import ConfigError, DataError
from tiny import png_declaring


def write_pair(root, split, stem, size=(16, 12), labels=(0, 1), mask_size=None, mask_mode="L"):
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    w, h = size
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)
    Image.fromarray(img).save(root / split / "images" / f"{stem}.png")
    mw, mh = mask_size or size
    mask = np.resize(np.array(labels, np.uint8), (mh, mw))
    if mask_mode == "RGB":
        Image.fromarray(np.stack([mask * 40] * 3, -1)).save(root / split / "masks" / f"{stem}.png")
    else:
        Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{stem}.png")


def folder_cfg(root, **kw) -> DataConfig:
    return DataConfig(dataset="folder", root=str(root), num_classes=3, ignore_index=255, **kw)


def test_folder_dataset_pairs_by_stem(tmp_path):
    for stem in ("b", "a"):
        write_pair(tmp_path, "train", stem, labels=(0, 2, 255))
    src = build_source(folder_cfg(tmp_path), "train")
    assert [src.stem(i) for i in range(len(src))] == ["a", "b"]
    img, mask = src.load(0)
    assert img.shape == (12, 16, 3) and mask.dtype == np.int64 and set(np.unique(mask)) == {0, 2, 255}
    assert src.info.class_names == ("class_0", "class_1", "class_2")


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda r: write_pair(r, "train", "x", mask_size=(8, 8)), "mask is 8x8 but image x.png is 16x12"),
        (lambda r: write_pair(r, "train", "x", labels=(0, 7)), r"label values \[7\]"),
        (lambda r: write_pair(r, "train", "x", mask_mode="RGB"), "colour image; masks must hold class indic"),
    ],
)
def test_bad_masks_are_one_clear_error(tmp_path, setup, match):
    setup(tmp_path)
    src = build_source(folder_cfg(tmp_path), "train")
    with pytest.raises(DataError, match=match) as e:
        src.load(0)
    assert "x.png" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_corrupt_or_empty_image(tmp_path, content):
    write_pair(tmp_path, "train", "x")
    (tmp_path / "train" / "images" / "x.png").write_bytes(content)
    with pytest.raises(DataError, match="x.png: unreadable or corrupt image"):
        build_source(folder_cfg(tmp_path), "train").load(0)


def test_empty_or_corrupt_mask(tmp_path):
    write_pair(tmp_path, "train", "x")
    (tmp_path / "train" / "masks" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="x.png: unreadable or corrupt mask"):
        build_source(folder_cfg(tmp_path), "train").load(0)


def test_sixteen_bit_masks_keep_their_indices(tmp_path):
    write_pair(tmp_path, "train", "x")
    Image.fromarray(np.full((12, 16), 2, np.uint16)).save(tmp_path / "train" / "masks" / "x.png")
    _, mask = build_source(folder_cfg(tmp_path), "train").load(0)
    assert mask.dtype == np.int64 and (mask == 2).all()


def test_missing_split_and_empty_image_dir(tmp_path):
    write_pair(tmp_path, "train", "x")
    with pytest.raises(DataError, match=r"val.images: image directory not found"):
        build_source(folder_cfg(tmp_path), "val")
    (tmp_path / "test" / "images").mkdir(parents=True)
    (tmp_path / "test" / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"test.images: no images found"):
        build_source(folder_cfg(tmp_path), "test")


def test_image_without_mask_is_caught_when_opening(tmp_path):
    write_pair(tmp_path, "train", "x")
    (tmp_path / "train" / "masks" / "x.png").unlink()
    with pytest.raises(DataError, match=r"x.png: image has no mask; expected .*masks/x.png"):
        build_source(folder_cfg(tmp_path), "train")


def test_grey_and_rgba_images_become_rgb(tmp_path):
    write_pair(tmp_path, "train", "g")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "train" / "images" / "g.png")
    write_pair(tmp_path, "train", "r")
    Image.fromarray(np.zeros((12, 16, 4), np.uint8)).save(tmp_path / "train" / "images" / "r.png")
    src = build_source(folder_cfg(tmp_path), "train")
    assert all(src.load(i)[0].shape == (12, 16, 3) for i in range(2))


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="synthetic, camvid, voc, folder"):
        build_source(DataConfig(dataset="kitti", root=str(tmp_path)), "train")
    with pytest.raises(DataError, match="data.num_classes"):
        build_source(DataConfig(dataset="folder", root=str(tmp_path)), "train")
    with pytest.raises(DataError, match="directory not found"):
        build_source(folder_cfg(tmp_path / "nowhere"), "train")


def test_voc_reads_palette_indices(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(root / "JPEGImages" / "2007_000001.jpg")
    mask = np.zeros((10, 14), np.uint8)
    mask[2:5, 3:9] = 15  # person
    mask[0] = 255  # boundary
    png = Image.fromarray(mask, mode="P")
    png.putpalette([v for c in voc_palette(256) for v in c])
    png.save(root / "SegmentationClass" / "2007_000001.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n")
    src = build_source(DataConfig(dataset="voc", root=str(root)), "val")
    _, m = src.load(0)
    assert set(np.unique(m)) == {0, 15, 255}
    assert src.info.num_classes == 21 and src.info.palette[15] == (192, 128, 128)
    # a list saved with a BOM, a path with an extension, and a bare name with a dot all name their image
    for name in ("img.v2", "2007_000002"):
        Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        png.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(
        "\ufeff2007_000001\nimg.v2\nJPEGImages/2007_000002.jpg\n", encoding="utf-8")
    src = build_source(DataConfig(dataset="voc", root=str(root)), "val")
    assert [src.stem(i) for i in range(len(src))] == ["2007_000001", "img.v2", "2007_000002"]


def test_voc_train_aug_list_at_root_and_aug_masks(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(np.full((6, 8), 20, np.uint8), mode="L").save(root / "SegmentationClassAug" / "a.png")
    (root / "train_aug.txt").write_text("/JPEGImages/a.jpg /SegmentationClassAug/a.png\n\n")
    src = build_source(DataConfig(dataset="voc", root=str(root)), "train_aug")
    assert len(src) == 1 and src.stem(0) == "a" and (src.load(0)[1] == 20).all()
    with pytest.raises(DataError, match="val.txt: split list not found"):
        build_source(DataConfig(dataset="voc", root=str(root)), "val")


def test_palettes():
    assert len(CAMVID) == 11 and CAMVID[3] == (128, 64, 128)
    assert voc_palette(3) == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert len(set(voc_palette(256))) == 256


def test_folder_dataset_batches(tmp_path):
    for stem in ("a", "b", "c"):
        write_pair(tmp_path, "train", stem, size=(40, 30), labels=(0, 1, 2))
    cfg = folder_cfg(tmp_path, crop_size=[16, 24])
    x, y = next(iter(torch.utils.data.DataLoader(build_dataset(cfg, "train", train=True), batch_size=3)))
    assert x.shape == (3, 3, 16, 24) and x.dtype == torch.float32 and y.shape == (3, 16, 24)
    ev = build_dataset(cfg, "train", train=False)
    assert ev[0][0].shape == (3, 30, 40) and ev.info.num_classes == 3


def test_camvid_loads_and_batches(camvid_root):
    cfg = DataConfig(dataset="camvid", root=str(camvid_root), base_size=120, crop_size=[96, 128])
    src = build_source(cfg, "val")
    assert len(src) == 101 and src.info.ignore_index == 11 and src.info.num_classes == 11
    img, mask = src.load(0)
    assert img.shape == (360, 480, 3) and mask.shape == (360, 480)
    assert mask.dtype == np.int64 and mask.min() >= 0 and mask.max() <= 11 and img.dtype == np.uint8
    ds = build_dataset(cfg, "train", train=True)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True)))
    assert x.shape == (2, 3, 96, 128) and y.shape == (2, 96, 128) and y.dtype == torch.int64
    ev = build_dataset(cfg, "val", train=False)
    assert ev[0][0].shape == (3, 120, 160)


@pytest.mark.parametrize(("n", "k", "expected"), [
    (10, 3, [0, 4, 9]),        # 4.5 rounds half to even
    (101, 5, [0, 25, 50, 75, 100]),
    (4, 9, [0, 1, 2, 3]),      # asking for more than there is gives everything once
    (5, 0, []),
    (0, 3, []),
    (7, 1, [0]),
])
def test_spread_indices_cover_the_split(n, k, expected):
    assert spread_indices(n, k) == expected


def test_two_masks_for_one_stem_are_an_error_not_a_guess(tmp_path):
    write_pair(tmp_path, "train", "a")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "train" / "masks" / "a.bmp")
    with pytest.raises(DataError, match=r"a second mask for stem 'a'"):
        build_source(folder_cfg(tmp_path), "train")


@pytest.mark.parametrize("size", [(60000, 60000), (10000, 10000)])  # past PIL's refusal; past ours, PIL only warns
@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_a_header_declaring_a_huge_image_is_refused_before_decoding(tmp_path, reader, size, recwarn):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(*size))
    with pytest.raises(DataError, match=r"bomb.png: (image|mask) too large to decode .*cut it into tiles") as e:
        reader(path)
    assert "\n" not in str(e.value) and f"{MAX_IMAGE_PIXELS:,}" in str(e.value)
    assert not recwarn.list  # PIL's size warning would be a second line on stderr


def test_train_on_a_huge_declared_image_stops_in_one_line_and_leaves_no_run(tmp_path):
    write_pair(tmp_path, "train", "a")
    write_pair(tmp_path, "val", "a")
    (tmp_path / "train" / "images" / "a.png").write_bytes(png_declaring(60000, 60000))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "segadapt", "train", "--dataset", "folder", "--root", str(tmp_path),
           "--set", "data.num_classes=3", "--set", "data.crop_size=[12, 16]", "--width", "0.0625",
           "--iterations", "1", "--batch-size", "1", "--threads", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not out.exists()  # tqdm's bar may come first; the error is one line
    assert r.stderr.strip().splitlines()[-1].startswith(f"segadapt: error: {tmp_path}/train/images/a.png: image too")
