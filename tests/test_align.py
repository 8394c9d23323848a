"""Pairs that are not pixel-aligned: the misalign shift and its ground truth, registration (accuracy on CamVid,
failures flagged), the per-pair cache, registered PairedDataset items and the masked regression loss."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segadapt.adapt import adapt
from segadapt.config import preset
from segadapt.data import JointTransform
from segadapt.data.align import AlignSettings, Registration, corner_error, describe, register, valid_mask, warp_into
from segadapt.data.align_cache import pair_key, register_dataset, register_pairs, settings_of
from segadapt.data.base import read_image
from segadapt.data.d2 import make_shift
from segadapt.data.pairs import PairedDataset, ShiftedSource, image_folder, stem_seed
from segadapt.data.shifted import recorded_transforms, write_shifted
from segadapt.data.synthetic import SyntheticScenes
from segadapt.errors import ConfigError, DataError
from segadapt.losses import feature_regression_loss, tap_mask
from segadapt.models import VGGDeepLab
from segadapt.shifts import apply_filter
from segadapt.shifts.compose import geometry, moves_labels, parse, warp_labels
from segadapt.shifts.misalign import affine_matrix, draw_transform, warp_image

SPEC = "photocopy+misalign"  # at severity 0.5: offsets 12-24 px and rotations up to 3 degrees at 480x360


def camvid_frames(root: Path, n: int, split: str = "val") -> list[Path]:
    files = sorted((root / split / "images").glob("*.jpg"))
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, n).round()]


# --- the misalign shift ---------------------------------------------------------------------------------

def test_misalign_moves_the_image_by_its_recorded_transform():
    img = np.zeros((90, 120, 3), np.uint8)
    img[30:33, 40:43] = 255  # a bright 3x3 spot centred at (41, 31)
    for seed in range(5):
        out = apply_filter("misalign", img, severity=1.0, seed=seed)
        truth = geometry("misalign", 90, 120, 1.0, seed)
        expected = truth @ np.array([41.0, 31.0, 1.0])
        ys, xs = np.nonzero(out[..., 0] > 60)
        weights = out[ys, xs, 0].astype(float)
        found = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
        assert np.linalg.norm(found - expected[:2]) < 0.6, (seed, found, expected)
        assert not np.array_equal(truth, np.eye(3))


def test_misalign_ranges_scale_with_severity_and_zero_is_the_identity():
    img = (np.arange(60 * 80 * 3) % 251).astype(np.uint8).reshape(60, 80, 3)
    assert np.array_equal(apply_filter("misalign", img, severity=0.0, seed=3), img)
    h, w = 360, 480
    offsets, angles = [], []
    for seed in range(200):
        t = draw_transform(h, w, 0.04, 3.0, 0.02, seed)  # severity 0.5
        offsets.append(np.hypot(t.dx, t.dy))
        angles.append(abs(t.angle))
        assert np.allclose(t.matrix, affine_matrix(h, w, t.dx, t.dy, t.angle, t.scale))
    assert min(offsets) >= 12 - 1e-9 and max(offsets) <= 24 + 1e-9 and max(angles) <= 3
    assert max(offsets) > 23 and max(angles) > 2.8  # the ranges are used, not just bounded
    big = draw_transform(h, w, 0.08, 6.0, 0.04, 7)
    small = draw_transform(h, w, 0.04, 3.0, 0.02, 7)
    assert np.hypot(big.dx, big.dy) == pytest.approx(2 * np.hypot(small.dx, small.dy))


def test_composition_parsing_order_and_own_severity():
    assert [(p.name, p.severity) for p in parse("photocopy+misalign=0.25")] == [("photocopy", None), ("misalign", 0.25)]
    assert moves_labels("photocopy+misalign") and not moves_labels("photocopy") and not moves_labels("ripple")
    with pytest.raises(ConfigError, match="misalign last"):
        parse("misalign+photocopy")
    with pytest.raises(ConfigError, match="twice"):
        parse("photocopy+photocopy")
    with pytest.raises(ConfigError, match="unknown filter 'swirl'"):
        parse("photocopy+swirl")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        parse("misalign=2")
    img = SyntheticScenes(1, size=(48, 64)).load_image(0)
    # photometric first, then the warp: the composition is the warp of the photocopy
    both = apply_filter("photocopy+misalign=0.5", img, severity=1.0, seed=4)
    by_hand = warp_image(apply_filter("photocopy", img, severity=1.0, seed=4), geometry("misalign", 48, 64, 0.5, 4))
    assert np.array_equal(both, by_hand)


def test_shift_writes_moved_labels_and_ground_truth_transforms(tmp_path):
    src = SyntheticScenes(3, size=(48, 64))
    write_shifted(src, None, tmp_path / "d2", "train", "photocopy+misalign", 1.0, seed=2, workers=1)
    truths = recorded_transforms(tmp_path / "d2", "train")
    assert set(truths) == {src.stem(i) for i in range(3)}
    for i in range(3):
        seed = stem_seed(src.stem(i), 2)
        assert np.allclose(truths[src.stem(i)], geometry("photocopy+misalign", 48, 64, 1.0, seed))
        image, mask = src.load(i)
        written = read_image(tmp_path / "d2" / "train" / "labels" / f"{src.stem(i)}.png")[..., 0]
        moved = warp_labels("photocopy+misalign", mask, 1.0, seed, src.info.ignore_index)
        assert np.array_equal(written, moved) and not np.array_equal(moved, mask)
        assert (moved == src.info.ignore_index).any()  # where nothing maps: ignored, never scored
    # a photometric filter keeps D1's labels and records no transform
    write_shifted(src, None, tmp_path / "pc", "train", "photocopy", 1.0, workers=1)
    assert recorded_transforms(tmp_path / "pc", "train") == {}
    on_the_fly = ShiftedSource(src, lambda im, s: im, mask_shift=lambda m, s: m + 1)
    assert np.array_equal(on_the_fly.load(0)[1], src.load(0)[1] + 1)


# --- registration ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, n", [("ecc", 20), ("features", 8)])
def test_registration_recovers_misalignment_on_camvid(camvid_root, method, n):
    """The issue's bar, on a spread of val frames: mean corner error <= 1 px on >= 95% of pairs (the benchmark
    checks 100 pairs per method)."""
    errors = []
    for path in camvid_frames(camvid_root, n):
        x1 = read_image(path)
        seed = stem_seed(path.stem, 0)
        x2 = apply_filter(SPEC, x1, severity=0.5, seed=seed)
        reg = register(x1, x2, AlignSettings(method=method))
        truth = geometry(SPEC, *x1.shape[:2], 0.5, seed)
        errors.append(corner_error(reg.transform, truth, *x1.shape[:2]) if reg.ok else np.inf)
    assert np.mean(np.array(errors) <= 1.0) >= 0.95, errors


@pytest.mark.parametrize("method, base_size", [("ecc", 0), ("features", 0), ("ecc", 120)])
def test_unrelated_pairs_fail_the_quality_check(camvid_root, method, base_size):
    frames = camvid_frames(camvid_root, 8, "train")
    for a, b in zip(frames[:3], frames[4:7]):
        reg = register(read_image(a), apply_filter("photocopy", read_image(b), severity=1.0),
                       AlignSettings(method, base_size=base_size))
        assert not reg.ok and reg.reason, (a.name, b.name, reg.quality)


def test_a_shift_in_network_units_registers_at_the_networks_resolution(camvid_root):
    """A photocopy in network units (base size 120 on 480x360 frames: its grain 3x coarser than at the stored
    size) leaves too little local contrast in common at the stored size to pass the check; at the network's
    size ECC registers it, to about a network pixel, and gives the transform for the stored sizes."""
    spec, base, scale = "photocopy+misalign=1", 120, 3.0
    stored_ok, errors = 0, []
    for path in camvid_frames(camvid_root, 8):
        x1 = read_image(path)
        seed = stem_seed(path.stem, 0)
        x2 = apply_filter(spec, x1, severity=1.0, seed=seed, scale=scale)
        truth = geometry(spec, *x1.shape[:2], 1.0, seed)
        stored_ok += register(x1, x2, AlignSettings("ecc")).ok
        reg = register(x1, x2, AlignSettings("ecc", base_size=base))
        assert reg.size1 == x1.shape[:2] and reg.size2 == x2.shape[:2]
        errors.append(corner_error(reg.transform, truth, *x1.shape[:2]) / scale if reg.ok else np.inf)
    assert stored_ok <= 2
    assert np.mean(np.array(errors) <= 1.0) >= 0.75, errors


def test_registration_handles_different_sizes_and_reports_the_motion(camvid_root):
    x1 = read_image(camvid_frames(camvid_root, 1)[0])
    truth = affine_matrix(360, 480, 9.0, -6.0, 1.5, 1.0)
    x2 = warp_image(x1, truth)
    half = x2[::2, ::2].copy()  # another camera: half the resolution
    scale = np.diag([0.5, 0.5, 1.0])  # half-resolution pixel k is full-resolution pixel 2k
    reg = register(x1, half, AlignSettings("ecc"))
    assert reg.ok and reg.size1 == (360, 480) and reg.size2 == (180, 240)
    assert corner_error(reg.transform, scale @ truth, 360, 480) < 1.0
    m = describe(truth, (360, 480))
    assert m["dx"] == pytest.approx(9.0) and m["dy"] == pytest.approx(-6.0)
    assert m["rotation"] == pytest.approx(1.5) and m["scale"] == pytest.approx(1.0)


def test_warp_back_and_validity_mask():
    img = SyntheticScenes(1, size=(48, 64)).load_image(0)
    truth = affine_matrix(48, 64, 5.0, 3.0, 0.0, 1.0)
    x2 = warp_image(img, truth)
    back = warp_into(x2, truth, (48, 64))
    valid = valid_mask(truth, (48, 64), (48, 64))
    assert valid[:-4, :-6].all() and not valid[-3:, :].any() and not valid[:, -5:].any()
    assert np.abs(back[valid].astype(int) - img[valid]).max() <= 1
    assert np.array_equal(valid_mask(np.eye(3), (48, 64), (48, 64)), np.ones((48, 64), bool))


# --- cache and dataset -------------------------------------------------------------------------------------

class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x1: np.ndarray, x2: np.ndarray, settings: AlignSettings) -> Registration:
        self.calls += 1
        return register(x1, x2, settings)


def misaligned_pairs(n: int = 6, size: tuple[int, int] = (64, 96), scale: tuple[float, float] = (0.9, 1.1),
                     ) -> PairedDataset:
    d1 = SyntheticScenes(n, size=size)
    return PairedDataset(d1, ShiftedSource(d1, make_shift("misalign", 0.5), name="misalign"),
                         JointTransform(train=True, crop_size=size, scale_range=scale))


def test_registration_runs_once_per_pair_and_is_cached(tmp_path):
    pairs = misaligned_pairs()
    cfg = preset("synthetic").adapt
    cfg.align = "ecc"
    count = Counting()
    view, stats = register_dataset(pairs, cfg, tmp_path / "align", registrar=count)
    assert count.calls == len(pairs) and stats["pairs"] == len(pairs)
    for _epoch in range(2):  # items never register again
        for k in range(len(view)):
            view[k]
    assert count.calls == len(pairs)
    again = Counting()
    register_dataset(pairs, cfg, tmp_path / "align", registrar=again)
    assert again.calls == 0  # a second run (or a resume) reads the cache
    cfg.align_min_corr = 0.25  # other settings: registered afresh, not read from another setting's files
    register_dataset(pairs, cfg, tmp_path / "align", registrar=again)
    assert again.calls == len(pairs)
    i, j = pairs.pairs[0]
    (tmp_path / "align" / f"{pair_key(pairs.d1, i, pairs.d2, j, settings_of(cfg))}.json").write_text("{broken")
    register_dataset(pairs, cfg, tmp_path / "align", registrar=again)  # a damaged file is registered again
    assert again.calls == len(pairs) + 1


def test_registered_items_are_aligned_masked_and_failed_pairs_skipped():
    pairs = misaligned_pairs(4)
    settings = AlignSettings("ecc")
    regs = register_pairs(pairs.d1, pairs.d2, pairs.pairs, settings, None)
    assert all(r.ok for r in regs)
    regs[2] = Registration(False, np.eye(3).tolist(), "ecc", (64, 96), (64, 96), "forced failure")
    view = pairs.registered(regs)
    assert len(view) == 3 and [p for p, _ in view.skipped] == [pairs.pairs[2]] and view.with_valid
    torch.manual_seed(0)
    x1, x2, valid = view[0]
    assert valid.shape == (1, 64, 96) and 0.5 < float(valid.mean()) < 1.0
    ok = valid[0] > 0
    # the shared geometry lines X2 up with X1 where it has a source
    err_aligned = (x1 - x2).abs().mean(0)[ok].mean()
    torch.manual_seed(0)
    raw_x1, raw_x2 = pairs[0]
    assert err_aligned < 0.5 * (raw_x1 - raw_x2).abs().mean()


def test_align_none_keeps_items_and_identity_registration_changes_no_pixel():
    pairs = misaligned_pairs(3, scale=(1.0, 1.3))  # no padding: every pixel of the crop has a source
    torch.manual_seed(1)
    plain = [pairs[k] for k in range(3)]
    assert all(len(item) == 2 for item in plain) and not pairs.with_valid
    identity = [Registration(True, np.eye(3).tolist(), "ecc", (64, 96), (64, 96)) for _ in range(3)]
    torch.manual_seed(1)
    view = pairs.registered(identity)
    for (a1, a2), (b1, b2, valid) in zip(plain, (view[k] for k in range(3))):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
        assert bool((valid == 1).all())


def test_registered_pair_of_different_sizes_is_accepted(tmp_path):
    import cv2

    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    img = SyntheticScenes(1, size=(96, 128)).load_image(0)
    cv2.imwrite(str(tmp_path / "d1" / "a.png"), img[..., ::-1])
    cv2.imwrite(str(tmp_path / "d2" / "a.png"), cv2.resize(img, (96, 72))[..., ::-1])
    pairs = PairedDataset(image_folder(tmp_path / "d1"), image_folder(tmp_path / "d2"),
                          JointTransform(train=True, crop_size=(64, 96)))
    with pytest.raises(DataError, match="registered"):
        pairs[0]
    view = pairs.registered(register_pairs(pairs.d1, pairs.d2, pairs.pairs, AlignSettings("ecc"), None))
    x1, x2, valid = view[0]
    assert x1.shape == x2.shape == (3, 64, 96) and valid.shape == (1, 64, 96)


# --- the masked loss ------------------------------------------------------------------------------------

def test_masked_loss_ignores_invalid_elements():
    torch.manual_seed(0)
    target = {"a": torch.randn(2, 3, 4, 6), "b": torch.randn(2, 5, 2, 3)}
    valid = torch.ones(2, 1, 16, 24)
    valid[0, :, :, 12:] = 0  # the right half of image 0 has no source
    pred = {k: v.clone().requires_grad_(True) for k, v in target.items()}
    with torch.no_grad():
        pred["a"][1] += 1.0  # image 1 entirely valid: error 1 per element there
    weights = {"a": 1.0, "b": 0.5}
    loss, per_layer = feature_regression_loss(target, pred, weights, valid)
    assert per_layer["a"] == pytest.approx(1.0 * 72 / (72 + 36))  # image 0 keeps 3 of its 6 columns
    loss.backward()
    grads = {k: v.grad.clone() for k, v in pred.items()}
    # anything at invalid elements (pred and target alike) changes neither the loss nor the gradient
    pred2 = {k: v.detach().clone() for k, v in pred.items()}
    target2 = {k: v.clone() for k, v in target.items()}
    pred2["a"][0, :, :, 3:] = 1e6
    target2["a"][0, :, :, 3:] = -7.0
    pred2 = {k: v.requires_grad_(True) for k, v in pred2.items()}
    loss2, _ = feature_regression_loss(target2, pred2, weights, valid)
    loss2.backward()
    assert float(loss2.detach()) == pytest.approx(float(loss.detach()))
    assert all(torch.equal(pred2[k].grad, grads[k]) for k in grads)
    # all valid: the plain mean
    full, _ = feature_regression_loss(target, pred, weights, torch.ones(2, 1, 16, 24))
    plain, _ = feature_regression_loss(target, pred, weights)
    assert float(full.detach()) == pytest.approx(float(plain.detach()))


def test_tap_mask_is_min_pooling_of_the_footprint():
    valid = torch.ones(1, 1, 8, 8)
    valid[0, 0, 0, 0] = 0  # one pixel without a source spoils its 4x4 cell, and only it
    m = tap_mask(valid, (2, 2))
    assert m.tolist() == [[[[0.0, 1.0], [1.0, 1.0]]]]
    assert tap_mask(torch.ones(1, 1, 15, 20), (8, 10)).min() == 1  # uneven sizes (ceil-mode pools)


# --- end to end ------------------------------------------------------------------------------------------

def test_adapt_with_registration_skips_and_counts_failed_pairs(tmp_path):
    pairs = misaligned_pairs(10)
    # one D2 image replaced by an unrelated scene: its registration must fail and the pair be skipped
    other = SyntheticScenes(1, size=(64, 96), seed=99).load_image(0)
    d2 = pairs.d2
    swapped_stem = pairs.d1.stem(3)

    class OneUnrelated(ShiftedSource):
        def load_image(self, i):
            return other.copy() if self.stem(i) == swapped_stem else super().load_image(i)

    pairs = PairedDataset(pairs.d1, OneUnrelated(pairs.d1, d2.shift, name="misalign"), pairs.transform)
    cfg = preset("synthetic")
    cfg.adapt.layers, cfg.adapt.align, cfg.adapt.holdout, cfg.adapt.probes = ["pool3"], "ecc", 2, 1
    cfg.train.iterations, cfg.train.batch_size, cfg.train.lr, cfg.train.threads = 3, 4, 0.01, 1
    torch.manual_seed(0)
    teacher = VGGDeepLab(7, width=0.125)
    result = adapt(cfg, tmp_path, pairs, teacher=teacher,
                   h1_meta={"arch": "vgg16_deeplab", "width": 0.125, "num_classes": 7})
    reg = result["registration"]
    assert reg["pairs"] == 10 and reg["failed"] == 1 and reg["ok"] == 9
    assert swapped_stem in reg["failures"][0]["x2"] and reg["failures"][0]["reason"]
    assert json.loads((tmp_path / "adapt.json").read_text())["registration"]["failed"] == 1
    assert len(list((tmp_path / "align").glob("*.json"))) == 10  # the default cache: under the run


def test_doctor_reports_each_pairs_offset_and_quality(tmp_path):
    import cv2

    from segadapt.data import build_source
    from segadapt.doctor import diagnose

    src = SyntheticScenes(3, size=(64, 96))
    for i in range(3):  # D1 as a folder dataset on disk, so that `segadapt shift` keeps its layout
        image, mask = src.load(i)
        for sub, data in (("images", image[..., ::-1]), ("masks", mask.astype(np.uint8))):
            (tmp_path / "d1" / "train" / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / "d1" / "train" / sub / f"{src.stem(i)}.png"), data)
    cfg = preset("synthetic")
    cfg.data.dataset, cfg.data.root, cfg.data.num_classes = "folder", str(tmp_path / "d1"), 7
    cfg.adapt.align = "ecc"
    d1 = build_source(cfg.data, "train")
    write_shifted(d1, tmp_path / "d1", tmp_path / "d2", "train", "misalign", 0.5, workers=1)
    report = diagnose(cfg, ["train"], d2_dir=str(tmp_path / "d2"))
    rows = report.to_dict()["pairs"]["registration"]
    truths = recorded_transforms(tmp_path / "d2", "train")
    assert len(rows) == 3 and all(r["ok"] for r in rows)
    for r in rows:
        truth = describe(truths[Path(r["x1"]).stem], (64, 96))
        assert r["dx"] == pytest.approx(truth["dx"], abs=0.5) and r["dy"] == pytest.approx(truth["dy"], abs=0.5)
        assert {"corr", "overlap", "rotation", "scale"} <= set(r)
        assert r["truth_corner_error"] < 1.0  # the shift's recorded truth, compared for the user
    text = report.format()
    assert "registration (ecc): 3 of 3 pairs pass" in text and text.count(" dx ") == 3


def test_registration_with_the_teacher_cache(tmp_path):
    """Registered items keep X1's frame, so a teacher cache of D1 frames slices the right maps for them."""
    pairs = misaligned_pairs(8, scale=(1.0, 1.0))
    cfg = preset("synthetic")
    cfg.adapt.layers, cfg.adapt.align, cfg.adapt.holdout, cfg.adapt.probes = ["pool3"], "ecc", 0, 0
    cfg.adapt.teacher_cache = str(tmp_path / "cache")
    cfg.adapt.objective = {"features": 1.0}  # the cache holds feature maps: the regression reads them
    cfg.train.iterations, cfg.train.batch_size, cfg.train.lr, cfg.train.threads = 2, 4, 0.01, 1
    torch.manual_seed(0)
    teacher = VGGDeepLab(7, width=0.125)
    result = adapt(cfg, tmp_path / "run", pairs, teacher=teacher,
                   h1_meta={"arch": "vgg16_deeplab", "width": 0.125, "num_classes": 7})
    assert result["registration"]["ok"] == 8 and result["step"] == 2
    view = pairs.registered(register_pairs(pairs.d1, pairs.d2, pairs.pairs, AlignSettings("ecc"), None))
    _, x2, geometry, valid = view.aligned(8, load_x1=False)[0]
    assert geometry.shape == (4,) and valid.shape == (1, 64, 96) and x2.shape == (3, 64, 96)
