"""White-noise reconstruction: the loss really falls, the result is a valid image, the model is untouched."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from segadapt.errors import ConfigError
from segadapt.models import VGGDeepLab
from segadapt.viz.reconstruct import (
    ReconstructConfig,
    gram,
    normalize_image,
    reconstruct,
    reconstruct_image,
    to_uint8_image,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_model() -> VGGDeepLab:
    torch.manual_seed(0)
    return VGGDeepLab(3, width=0.0625).eval()


def scene() -> np.ndarray:
    """A 32x32 image with structure (stripes and a square) for the features to describe."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, ::4] = (200, 60, 30)
    img[8:24, 8:24] = (20, 180, 220)
    return img


def test_gram_is_normalised_by_size():
    ones_small, ones_big = torch.ones(1, 4, 3, 3), torch.ones(1, 4, 11, 7)
    assert torch.allclose(gram(ones_small), torch.full((1, 4, 4), 0.25))
    assert torch.allclose(gram(ones_big), gram(ones_small))  # same statistics, any map size
    f = torch.randn(2, 3, 5, 6)
    g = gram(f)
    assert torch.allclose(g, g.transpose(1, 2)) and g.shape == (2, 3, 3)


def test_loss_falls_by_an_order_of_magnitude_and_the_model_is_unchanged():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x1 = normalize_image(scene(), MEAN, STD)
    cfg = ReconstructConfig(taps=["pool1", "pool2"], steps=150, optimizer="adam", lr=0.05)
    xhat, losses = reconstruct(model, x1, cfg, "cpu", MEAN, STD)
    assert len(losses) == cfg.steps + 1
    assert losses[-1]["total"] < losses[0]["total"] / 10, (losses[0]["total"], losses[-1]["total"])
    assert xhat.shape == x1.shape and torch.isfinite(xhat).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_reconstruction_moves_towards_the_image():
    """X̂ ends closer to X1 in feature space than the noise it started from (pool1 content only)."""
    model = tiny_model()
    x1 = normalize_image(scene(), MEAN, STD)
    cfg = ReconstructConfig(taps=["pool1"], style_weight=0.0, steps=100, lr=0.05)
    xhat, _ = reconstruct(model, x1, cfg, "cpu", MEAN, STD)
    noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        f1 = model.features(x1, ["pool1"])["pool1"]
        d_end = (model.features(xhat, ["pool1"])["pool1"] - f1).pow(2).mean()
        d_start = (model.features(noise, ["pool1"])["pool1"] - f1).pow(2).mean()
    assert d_end < d_start / 10


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_other_optimizers_also_reduce_the_loss(optimizer):
    x1 = normalize_image(scene(), MEAN, STD)
    cfg = ReconstructConfig(taps=["pool1"], steps=30, optimizer=optimizer)
    _, losses = reconstruct(tiny_model(), x1, cfg, "cpu", MEAN, STD)
    assert losses[-1]["total"] < losses[0]["total"] / 2


def test_writes_a_valid_image_and_loss_curve(tmp_path):
    summary = reconstruct_image(tiny_model(), scene(), tmp_path, ReconstructConfig(taps=["pool2"], steps=20),
                                MEAN, STD, name="street")
    out = Image.open(summary["reconstruction"])
    assert out.mode == "RGB" and out.size == (32, 32)
    pixels = np.asarray(out)
    assert pixels.dtype == np.uint8 and pixels.std() > 0  # not blank
    for key in ("x1", "comparison", "loss_png"):
        Image.open(summary[key]).verify()
    with open(summary["loss_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 21 and float(rows[-1]["total"]) == pytest.approx(summary["last_loss"], rel=1e-4)
    assert summary["ratio"] < 1


def test_image_round_trip_is_exact():
    img = scene()
    assert np.array_equal(to_uint8_image(normalize_image(img, MEAN, STD), MEAN, STD), img)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="optimizer"):
        ReconstructConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="pool9"):
        reconstruct(tiny_model(), normalize_image(scene(), MEAN, STD), ReconstructConfig(taps=["pool9"], steps=1))
