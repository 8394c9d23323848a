"""Shift strength in network units, and the severity search that aims at a target distortion of H1."""

import json
import math

import cv2
import numpy as np
import pytest

from segadapt import experiment
from segadapt.config import RunConfig, dumps_toml, load_toml, preset
from segadapt.data import d2
from segadapt.errors import ConfigError, DataError
from segadapt.severity_search import HeldSubset, h1_measure, search_severity, subset_indices
from segadapt.shifts import FILTERS, severity_params
from segadapt.shifts.photocopy import blur_sigmas
from segadapt.shifts.units import length_scale


def test_length_scale_is_stored_short_side_over_base_size():
    assert length_scale(360, 480, 120) == 3.0
    assert length_scale(480, 360, 120, "network") == 3.0  # the shorter side, as the resize uses
    assert length_scale(360, 480, 120, "image") == 1.0
    assert length_scale(360, 480, 0, "network") == 1.0  # no resize before the network
    with pytest.raises(ConfigError, match="shift.units"):
        length_scale(10, 10, 5, "cm")


def test_scale_multiplies_every_length_of_the_severity_mapping():
    for name, keys in (("ripple", ("amplitude", "period")), ("cubism", ("tile_size",)),
                       ("photocopy", ("mask_radius",))):
        one, three = severity_params(name, 0.7, 5), severity_params(name, 0.7, 5, scale=3.0)
        assert all(three[k] == pytest.approx(3 * one[k]) for k in keys), name
        assert {k: v for k, v in three.items() if k not in (*keys, "detail_radius")} == \
            {k: v for k, v in one.items() if k not in keys}
    assert "detail_radius" not in severity_params("photocopy", 1.0)  # scale 1: exactly GEGL's parameters
    assert severity_params("photocopy", 1.0, scale=2.0)["detail_radius"] == 12.0
    assert blur_sigmas(10.0, 0.5) == blur_sigmas(10.0, 0.5, detail_radius=6.0)  # sharpness 0.5 = radius 6


def _grating(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    v = 127.5 + 100 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y)
    return np.repeat(v[..., None], 3, axis=2).astype(np.uint8)


def test_network_units_give_the_same_shift_at_two_stored_sizes():
    """One scene stored at 60x80 and at 180x240, both seen by the network at base size 60: in network units the
    ripple moves the same network pixels; in image units the large copy's ripple shrinks by 3 when resized."""
    small, big = _grating(60, 80), _grating(180, 240)

    def seen(image: np.ndarray, units: str) -> np.ndarray:
        out = d2.make_shift("ripple", 1.0, base_size=60, units=units)(image, 7)
        return cv2.resize(out, (80, 60), interpolation=cv2.INTER_AREA).astype(float)

    reference = seen(small, "network")  # factor 1: the small copy is already at the network's size
    assert np.abs(seen(small, "image") - reference).max() == 0
    network_gap = np.abs(seen(big, "network") - reference).mean()
    image_gap = np.abs(seen(big, "image") - reference).mean()
    assert network_gap < 0.25 * image_gap, (network_gap, image_gap)


def test_the_marker_records_units_base_size_and_factor(tmp_path):
    from segadapt.data.shifted import marker_path, write_shifted
    from segadapt.data.synthetic import SyntheticScenes

    source = SyntheticScenes(2, size=(32, 48))
    r = write_shifted(source, None, tmp_path, "val", "ripple", 0.5, workers=1, units="network", base_size=16)
    marker = json.loads(marker_path(tmp_path, "val").read_text())
    assert marker["params"]["units"] == "network" and marker["params"]["base_size"] == 16
    assert marker["scale"] == r["scale"] == 2.0 and marker["complete"]
    with pytest.raises(DataError, match="other parameters"):  # other units are another D2
        write_shifted(source, None, tmp_path, "val", "ripple", 0.5, workers=1, units="image", base_size=16)
    # factor 1 in either unit is the same D2: base size 0 in network units matches image units
    other = tmp_path / "other"
    write_shifted(source, None, other, "val", "ripple", 0.5, workers=1, units="image")
    assert write_shifted(source, None, other, "val", "ripple", 0.5, workers=1, units="network")["scale"] == 1.0


def test_network_units_filter_the_stored_image_at_the_factor(tmp_path):
    """D2 files keep D1's size; a factor of 2 is the severity's lengths doubled on the stored image."""
    from segadapt.data.shifted import write_shifted
    from segadapt.data.synthetic import SyntheticScenes
    from segadapt.shifts import apply_filter

    source = SyntheticScenes(1, size=(32, 48))
    write_shifted(source, None, tmp_path, "val", "cubism", 0.5, seed=3, workers=1, base_size=16)
    written = cv2.imread(str(next((tmp_path / "val" / "images").iterdir())))[..., ::-1]
    from segadapt.data.pairs import stem_seed

    expected = apply_filter("cubism", source.load_image(0), severity=0.5, seed=stem_seed(source.stem(0), 3), scale=2)
    assert written.shape == (32, 48, 3) and np.array_equal(written, expected)


def test_search_converges_on_a_monotone_measure():
    seen = []

    def measure(s):
        seen.append(s)
        return 0.9 * s**1.5

    r = search_severity(measure, 0.626, tolerance=0.03)
    assert r.reached and abs(r.distortion - 0.626) <= 0.03 and abs(0.9 * r.severity**1.5 - r.distortion) < 1e-12
    assert seen[:2] == [1.0, 0.0] and len(seen) <= 10
    assert [p.severity for p in r.probes] == seen
    warm = search_severity(lambda s: 0.9 * s**1.5, 0.626, start=r.severity)
    assert warm.reached and len(warm.probes) == 1  # the previous seed's landing is tried first


def test_search_reports_unreachable_targets_and_lands_on_the_closest():
    r = search_severity(lambda s: 0.5 * s, 0.94)
    assert not r.reached and r.severity == 1.0 and "cannot reach distortion 0.94" in r.message
    assert "at most 0.500" in r.message and "\n" not in r.message
    low = search_severity(lambda s: 0.2 + 0.5 * s, 0.05)
    assert not low.reached and low.severity == 0.0 and "cannot go as low" in low.message


def test_search_finds_a_crossing_of_a_non_monotone_measure():
    """The ends do not straddle the target (both above it): the grid inside finds a bracket."""
    r = search_severity(lambda s: math.sin(3 * s) * 0.8 + 0.3 * (s == 0.0), 0.75, tolerance=0.02)
    assert r.reached and abs(r.distortion - 0.75) <= 0.02
    assert not search_severity(lambda s: 0.3, 0.9, steps=3).reached  # a flat one: the steps bound the work


def test_subset_is_fixed_by_the_seed():
    assert subset_indices(10, 20, 0) == list(range(10))
    a = subset_indices(100, 7, 3)
    assert a == subset_indices(100, 7, 3) and a == sorted(a) and len(set(a)) == 7
    assert a != subset_indices(100, 7, 4)


def darken(name: str, severity: float, image: np.ndarray, seed: int, base_size: int = 0) -> np.ndarray:
    return (image * (1 - 0.9 * severity)).astype(np.uint8)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(d2, "_apply_filter", darken)
    monkeypatch.setitem(FILTERS, "dark", darken)
    cfg = preset("demo")
    cfg.data.synthetic_size = cfg.data.crop_size = [32, 48]
    cfg.data.synthetic_train, cfg.data.synthetic_val = 16, 4
    cfg.train.iterations, cfg.train.batch_size, cfg.train.threads = 4, 4, 1
    cfg.shift.search_images, cfg.shift.search_steps = 6, 4
    cfg.experiment.filters = ["dark"]
    cfg.experiment.target_distortion = {"dark": 0.3}
    cfg.experiment.layer_presets = ["pool5"]
    cfg.experiment.baselines = ["B0"]
    cfg.experiment.iterations = 2
    cfg.experiment.materialise_d2 = False
    cfg.experiment.figure_images = 0
    return cfg


def test_the_search_never_reads_the_val_split(tiny, monkeypatch):
    import segadapt.data
    from segadapt.models import build_model

    splits = []
    real = segadapt.data.build_source
    monkeypatch.setattr(segadapt.data, "build_source", lambda cfg, split, *a: splits.append(split) or real(cfg, split))
    tiny.shift.filter = "dark"
    model = build_model("vgg16_deeplab", 7, 0.125).eval()
    measure, info = h1_measure(model, tiny, __import__("torch").device("cpu"), "dark")
    p = measure(0.5)
    assert splits == ["train"] and info["split"] == "train" and info["images"] == 6
    assert p.severity == 0.5 and (math.isnan(p.distortion) or p.distortion >= 0)
    tiny.data.val_split = "train"
    with pytest.raises(ConfigError, match="never sees"):
        h1_measure(model, tiny, __import__("torch").device("cpu"), "dark")


def test_held_subset_keeps_stems_and_returns_copies():
    from segadapt.data.synthetic import SyntheticScenes

    source = SyntheticScenes(5, size=(16, 16))
    held = HeldSubset(source, [1, 3])
    assert len(held) == 2 and held.stem(1) == source.stem(3)
    image, _ = held.load(0)
    image[:] = 0
    assert held.load(0)[0].any()


def test_target_distortion_table_round_trips_through_toml(tmp_path):
    cfg = preset("study-camvid")
    assert cfg.experiment.target_distortion == {"photocopy": 0.325, "ripple": 0.626, "cubism": 0.94}
    cfg.experiment.target_distortion["photocopy+misalign"] = 0.5  # composed filter names need quoted keys
    cfg.shift.units = "image"
    (tmp_path / "c.toml").write_text(dumps_toml(cfg))
    assert load_toml(tmp_path / "c.toml") == cfg
    (tmp_path / "bad.toml").write_text("[experiment.target_distortion]\nripple = 2.0\n")
    with pytest.raises(ConfigError, match="target_distortion"):
        load_toml(tmp_path / "bad.toml")
    (tmp_path / "units.toml").write_text('[shift]\nunits = "inch"\n')
    with pytest.raises(ConfigError, match="shift.units"):
        load_toml(tmp_path / "units.toml")
    assert RunConfig().shift.units == "network"


def test_sweep_searches_each_seed_and_records_where_it_landed(tiny, tmp_path):
    tiny.experiment.seeds = [0, 1]
    results = experiment.run_experiment(tiny, tmp_path)
    found = results["severity_search"]
    assert [(r["seed"], r["shift"]) for r in found] == [(0, "dark"), (1, "dark")]
    assert all(0 <= r["severity"] <= 1 and r["info"]["split"] == "train" for r in found)
    assert all(len(r["probes"]) <= 4 and "val_distortion" in r for r in found)
    if 0 < found[0]["severity"] < 1:
        assert found[1]["probes"][0]["severity"] == found[0]["severity"]  # seed 1 starts at seed 0's landing
    md = (tmp_path / "results.md").read_text()
    assert "Severity searched for H1's distortion 0.3" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["severity_search"][0]["target"] == 0.3
    assert load_toml(tmp_path / "config.toml").experiment.target_distortion == {"dark": 0.3}


def test_sweep_refuses_a_target_for_a_filter_it_does_not_run(tiny, tmp_path):
    tiny.experiment.target_distortion = {"ripple": 0.5}
    with pytest.raises(ConfigError, match="not in experiment.filters"):
        experiment.run_experiment(tiny, tmp_path)
