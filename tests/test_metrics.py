import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segadapt.metrics import confusion_matrix, distortion, scores


def reference_scores(pred: np.ndarray, label: np.ndarray, k: int, ignore: int) -> tuple[float, float, float]:
    """Per-class loops over boolean masks: an independent route to the same numbers."""
    valid = label != ignore
    p, t = pred[valid], label[valid]
    ious, accs = [], []
    for c in range(k):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        if union:
            ious.append(inter / union)
        if np.sum(t == c):
            accs.append(inter / np.sum(t == c))
    return float(np.mean(p == t)), float(np.mean(accs)), float(np.mean(ious))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 7), st.integers(1, 400), st.integers(0, 2**31 - 1))
def test_miou_matches_independent_computation(k, n, seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, k + 1, n)
    label[label == k] = 255  # some ignored pixels
    pred = rng.integers(0, k, n)
    if np.all(label == 255):
        label[0] = 0
    s = scores(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), k, 255))
    acc, macc, miou = reference_scores(pred, label, k, 255)
    assert s.pixel_acc == pytest.approx(acc)
    assert s.mean_acc == pytest.approx(macc)
    assert s.miou == pytest.approx(miou)


def test_absent_classes_are_excluded_not_zero():
    label = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 1])
    s = scores(confusion_matrix(pred, label, 4, 255))
    assert s.miou == 1.0 and s.mean_acc == 1.0
    assert math.isnan(s.class_iou[2]) and math.isnan(s.class_iou[3])
    d = s.to_dict()
    assert d["class_iou"][2] is None  # JSON-safe


def test_class_only_in_prediction_counts_as_zero_iou():
    s = scores(confusion_matrix(torch.tensor([2, 0]), torch.tensor([0, 0]), 3, 255))
    assert s.class_iou[2] == 0.0
    assert s.miou == pytest.approx((0.5 + 0.0) / 2)


def test_all_ignored_is_nan_not_crash():
    s = scores(confusion_matrix(torch.tensor([1, 2]), torch.tensor([255, 255]), 3, 255))
    assert math.isnan(s.miou) and s.pixels == 0


def test_out_of_range_label_is_reported():
    with pytest.raises(ValueError, match=r"\[7\]"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3, 255)


def test_distortion_is_mean_relative_drop():
    assert distortion(0.8, 0.6, 0.4, 0.3) == pytest.approx(0.5)
    assert distortion(0.8, 0.6, 0.8, 0.6) == 0.0


def test_out_of_range_prediction_is_reported_not_counted_as_the_last_class():
    with pytest.raises(ValueError, match=r"predicted classes \[7\] outside \[0, 3\)"):
        confusion_matrix(torch.tensor([7, 0]), torch.tensor([1, 0]), 3, 255)


def test_distortion_without_a_d1_score_is_nan_not_a_crash():
    assert math.isnan(distortion(0.0, 0.5, 0.1, 0.1))
    assert math.isnan(distortion(0.5, float("nan"), 0.1, 0.1))
