import random

import numpy as np
import torch

from segadapt.data import GeoParams, JointTransform

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # identity normalisation (x/255) so pixel values are readable


def coded_pair(h: int = 40, w: int = 60, block: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel encodes the label, so misalignment is visible after any transform."""
    rng = np.random.default_rng(0)
    label = np.kron(rng.integers(0, 5, (h // block, w // block)), np.ones((block, block), np.int64))
    img = np.stack([label * 50, np.zeros_like(label), np.full_like(label, 7)], -1).astype(np.uint8)
    return img, label


def test_geometry_is_shared_by_image_and_mask():
    img, label = coded_pair(80, 120, block=10)
    t = JointTransform(train=True, crop_size=(24, 32), scale_range=(0.6, 1.8), mean=MEAN, std=STD)
    torch.manual_seed(0)
    for _ in range(20):
        x, m = t(img, label)
        assert x.shape == (3, 24, 32) and m.shape == (24, 32)
        red = (x[0] * 255).round().long()
        # bilinear resampling blends labels at block edges: compare inside blocks, where the 3x3
        # neighbourhood of the mask is uniform
        pad = torch.nn.functional.pad(m[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        interior = torch.ones_like(m, dtype=torch.bool)
        for dy in range(3):
            for dx in range(3):
                interior &= pad[dy : dy + 24, dx : dx + 32].long() == m
        interior &= m != 255
        # the crop cuts off the neighbours of border pixels
        interior[0, :] = interior[-1, :] = interior[:, 0] = interior[:, -1] = False
        assert interior.float().mean() > 0.3
        assert torch.equal(red[interior], m[interior] * 50)


def test_padding_uses_ignore_index():
    img, label = coded_pair(8, 12)
    t = JointTransform(train=True, crop_size=(20, 30), scale_range=(1, 1), hflip=False, mean=MEAN, std=STD)
    _, m = t(img, label)
    assert (m[8:, :] == 255).all() and (m[:, 12:] == 255).all()
    assert (m[:8, :12] != 255).all()


def test_same_params_give_same_geometry_on_two_images():
    img, label = coded_pair()
    other = 255 - img  # a "shifted" version of the same scene
    t = JointTransform(train=True, crop_size=(24, 32), mean=MEAN, std=STD)
    torch.manual_seed(1)
    p = t.sample_params(*img.shape[:2])
    a, ma = t.apply(img, label, p)
    b, mb = t.apply(other, None, p)
    assert mb is None
    # pixel-for-pixel the same crop (up to each image's own uint8 rounding after resizing)
    assert torch.allclose(a + b, torch.ones_like(a), atol=1.5 / 255)


def test_augmentation_reproducible_with_torch_seed():
    img, label = coded_pair()
    t = JointTransform(train=True, crop_size=(24, 32))
    torch.manual_seed(5)
    a = t(img, label)
    torch.manual_seed(5)
    b = t(img, label)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eval_keeps_size_and_base_size_resizes_short_side():
    img, label = coded_pair(40, 60)
    x, m = JointTransform(train=False)(img, label)
    assert x.shape == (3, 40, 60) and m.shape == (40, 60)
    x, m = JointTransform(train=False, base_size=20)(img, label)
    assert x.shape == (3, 20, 30) and m.shape == (20, 30)


def test_normalize_round_trip():
    img, _ = coded_pair()
    t = JointTransform(train=False)
    assert np.array_equal(t.denormalize(t.normalize(img)), img)


def test_flip_mirrors_image_and_mask_together():
    img, label = coded_pair(24, 32)
    t = JointTransform(train=True, crop_size=(24, 32), scale_range=(1, 1), mean=MEAN, std=STD)
    x, m = t.apply(img, label, GeoParams(scale=1.0, top=0.0, left=0.0, flip=True))
    assert torch.equal(m, torch.from_numpy(label[:, ::-1].copy()))
    assert torch.equal((x[0] * 255).round().long(), m * 50)


def test_draws_come_from_torch_not_numpy_or_random():
    t = JointTransform(train=True, crop_size=(24, 32))
    torch.manual_seed(3)
    a = t.sample_params()
    torch.manual_seed(3)
    np.random.seed(99)
    random.seed(99)
    assert t.sample_params(40, 60) == a
