import numpy as np
import pytest

from segadapt.errors import ConfigError
from segadapt.shifts import apply_filter, ripple, ripple_mask


def scene() -> tuple[np.ndarray, np.ndarray]:
    """Vertical stripes whose colour encodes their label."""
    label = (np.arange(96)[None, :] // 8 % 4).repeat(64, 0)
    img = np.stack([label * 60, 255 - label * 60, np.full_like(label, 90)], -1).astype(np.uint8)
    return img, label


def test_zero_amplitude_is_identity():
    img, _ = scene()
    assert np.array_equal(ripple(img, amplitude=0.0), img)


def test_ripple_moves_pixels_and_mask_alike():
    img, label = scene()
    params = dict(amplitude=5.0, period=30.0, angle=90.0, abyss_policy="clamp")  # horizontal displacement
    moved = ripple(img, sampler="nearest", linear_light=False, **params)
    moved_label = ripple_mask(label, **params)
    assert not np.array_equal(moved, img)
    decoded = np.rint(moved[..., 0] / 60).astype(int)
    assert (decoded == moved_label).mean() > 0.99


def test_mask_outside_becomes_ignore():
    _, label = scene()
    out = ripple_mask(label, amplitude=10.0, period=40.0, angle=90.0, ignore_index=255)
    assert (out == 255).any() and set(np.unique(out)) <= {0, 1, 2, 3, 255}


def test_severity_is_deterministic_and_monotone():
    img = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    a = apply_filter("ripple", img, severity=0.5, seed=3)
    assert np.array_equal(a, apply_filter("ripple", img, severity=0.5, seed=3))
    errs = [np.abs(apply_filter("ripple", img, severity=s, seed=3).astype(int) - img).mean() for s in (0.0, 0.3, 1.0)]
    assert errs[0] < 1.0 and errs[0] < errs[1] < errs[2]


def test_unknown_filter_and_bad_params():
    img, _ = scene()
    with pytest.raises(ConfigError, match="ripple"):
        apply_filter("swirl", img)
    with pytest.raises(ValueError, match="wave_type"):
        ripple(img, wave_type="square")
