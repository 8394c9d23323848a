"""Label-free checkpoint selection: held-out split, probes during adaptation, agreement with mIoU."""

import csv
import math

import pytest
import torch

from segadapt.adapt import adapt
from segadapt.config import preset
from segadapt.data import JointTransform
from segadapt.data.pairs import PairedDataset, ShiftedSource
from segadapt.data.synthetic import SyntheticScenes
from segadapt.models import VGGDeepLab
from segadapt.models.loading import load_model
from segadapt.selection import agreement, probe_steps, spearman, split_holdout


def make_pairs(n: int) -> PairedDataset:
    d1 = SyntheticScenes(n, size=(32, 48))
    d2 = ShiftedSource(d1, lambda image, seed: image // 2)
    return PairedDataset(d1, d2, JointTransform(train=True, crop_size=(32, 48), scale_range=(0.9, 1.1)))


def test_holdout_is_disjoint_seeded_and_at_most_a_fifth():
    held, fit = split_holdout(50, 16, seed=3)
    assert len(held) == 10 and not set(held) & set(fit) and sorted(held + fit) == list(range(50))
    assert split_holdout(50, 16, seed=3) == (held, fit) and split_holdout(50, 16, seed=4) != (held, fit)
    assert split_holdout(4, 16, seed=0)[0] == []


def test_probe_steps_end_at_the_last_step():
    assert probe_steps(300, 3) == {100, 200, 300}
    assert probe_steps(2, 5) == {1, 2} and probe_steps(10, 0) == set()


def test_spearman_and_agreement():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    points = [
        {"step": 10, "holdout_loss": 3.0, "entropy": 0.5, "miou": 0.30},
        {"step": 20, "holdout_loss": 1.0, "entropy": 0.4, "miou": 0.40},
        {"step": 30, "holdout_loss": 2.0, "entropy": 0.3, "miou": 0.45},
    ]
    a = agreement(points)
    assert a["selected_step"] == 20 and a["best_step"] == 30 and a["regret_points"] == pytest.approx(5.0)
    assert a["rank_corr_entropy"] == pytest.approx(1.0) and a["final_miou"] == 0.45


def test_adapt_probes_without_labels_and_keeps_the_selected_checkpoint(tmp_path):
    torch.manual_seed(0)
    teacher = VGGDeepLab(7, width=0.125)
    cfg = preset("synthetic")
    cfg.adapt.layers = ["pool2"]
    cfg.adapt.objective = {"features": 1.0}  # the study's regression
    cfg.train.iterations, cfg.train.batch_size, cfg.train.lr, cfg.train.threads = 6, 4, 0.01, 1
    cfg.adapt.holdout, cfg.adapt.probes = 4, 3
    seen = []
    result = adapt(cfg, tmp_path, make_pairs(20), teacher=teacher, h1_meta={"arch": "vgg16_deeplab", "width": 0.125,
                   "num_classes": 7}, on_probe=lambda step, m: seen.append(step) or {"extra": float(step)})
    assert seen == [2, 4, 6]
    rows = list(csv.DictReader((tmp_path / "selection.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(0 <= float(r["entropy"]) <= 1 and float(r["holdout_loss"]) >= 0 for r in rows)
    best = min(rows, key=lambda r: float(r["holdout_loss"]))
    assert result["selected_step"] == int(best["step"])
    _, meta = load_model(tmp_path / "model_selected.safetensors")
    assert meta["step"] == int(best["step"])
