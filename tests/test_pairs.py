"""Paired (X1, X2) data: shared geometry, independent photometric jitter, clear errors, CSV and folders."""

import cv2
import numpy as np
import pytest
import torch

from segadapt.data import JointTransform
from segadapt.data.pairs import PairedDataset, ShiftedSource, csv_pairs, image_folder
from segadapt.data.synthetic import SyntheticScenes
from segadapt.errors import DataError


def identity(image: np.ndarray, seed: int) -> np.ndarray:
    return image.copy()


def train_tf() -> JointTransform:
    return JointTransform(train=True, crop_size=(24, 32), scale_range=(0.6, 1.6))


def test_geometry_is_shared_so_identical_scenes_give_identical_crops():
    d1 = SyntheticScenes(6, size=(40, 56))
    pairs = PairedDataset(d1, ShiftedSource(d1, identity), train_tf())
    torch.manual_seed(0)
    crops = [pairs[k] for k in range(6)]
    assert all(torch.equal(x1, x2) for x1, x2 in crops)
    # and the augmentation is really random: two draws of one pair differ
    assert not torch.equal(pairs[0][0], pairs[0][0])


def test_photometric_jitter_is_drawn_per_image():
    d1 = SyntheticScenes(2, size=(40, 56))
    pairs = PairedDataset(d1, ShiftedSource(d1, identity), train_tf(), photometric=0.3)
    torch.manual_seed(0)
    x1, x2 = pairs[0]
    assert not torch.equal(x1, x2)
    # brightness/contrast only: the same geometry still lines up (strong correlation of the two crops)
    corr = torch.corrcoef(torch.stack([x1.flatten(), x2.flatten()]))[0, 1]
    assert corr > 0.9


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def test_size_mismatch_names_both_files(tmp_path):
    _write(tmp_path / "d1" / "a.png", np.zeros((20, 30, 3), np.uint8))
    _write(tmp_path / "d2" / "a.png", np.zeros((22, 30, 3), np.uint8))
    pairs = PairedDataset(image_folder(tmp_path / "d1"), image_folder(tmp_path / "d2"), train_tf())
    with pytest.raises(DataError, match=r"d2/a\.png.*differs from its pair .*d1/a\.png"):
        pairs[0]


def test_csv_pairs_relative_paths_and_no_labels(tmp_path):
    for name in ("x1.png", "x2.png"):
        _write(tmp_path / "img" / name, np.full((20, 30, 3), 100, np.uint8))
    (tmp_path / "pairs.csv").write_text("x1,x2\nimg/x1.png,img/x2.png\n")
    d1, d2 = csv_pairs(tmp_path / "pairs.csv")
    x1, x2 = PairedDataset(d1, d2, train_tf())[0]
    assert x1.shape == x2.shape == (3, 24, 32)
    with pytest.raises(DataError, match="no labels"):
        d2.load(0)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="columns x1,x2"):
        csv_pairs(tmp_path / "bad.csv")
    # a spreadsheet's "CSV UTF-8" (with a BOM) and spaces after the commas are read as meant
    (tmp_path / "excel.csv").write_text("\ufeffx1, x2\nimg/x1.png, img/x2.png\n", encoding="utf-8")
    d1, d2 = csv_pairs(tmp_path / "excel.csv")
    assert d1.image_path(0) == tmp_path / "img" / "x1.png" and d2.image_path(0) == tmp_path / "img" / "x2.png"


def test_duplicate_stems_in_d2_are_an_error_and_folders_are_not_images(tmp_path):
    _write(tmp_path / "d1" / "s.png", np.zeros((20, 30, 3), np.uint8))
    _write(tmp_path / "d2" / "s.png", np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "d2" / "z.png").mkdir()  # a folder with an image's name
    assert len(image_folder(tmp_path / "d2")) == 1
    _write(tmp_path / "d2" / "s.jpg", np.full((20, 30, 3), 255, np.uint8))
    with pytest.raises(DataError, match=r"a second D2 image with stem 's'"):
        PairedDataset(image_folder(tmp_path / "d1"), image_folder(tmp_path / "d2"), train_tf())
