"""Output-level primitives the objectives and peers share: entropy per pixel, per-class confident pixels."""

import math

import pytest
import torch

from segadapt.objectives.entropy import pixel_entropy
from segadapt.objectives.pseudo import confident_pixels


def test_entropy_is_zero_when_certain_one_when_uniform_and_has_gradients():
    logits = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2).requires_grad_(True)
    e = pixel_entropy(logits)
    assert e.shape == (1, 1, 2)
    assert e[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6) and e[0, 0, 1].item() == pytest.approx(1.0)
    e.sum().backward()
    assert torch.isfinite(logits.grad).all()
    p = torch.tensor([0.7, 0.2, 0.1])
    expected = -(p * p.log()).sum() / math.log(3)
    assert pixel_entropy(p.log().reshape(1, 3, 1, 1)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_confident_pixels_keep_the_top_share_of_each_predicted_class():
    """A hand-computed case: class 0 is predicted at confidences 0.9, 0.8, 0.6, 0.5 and class 1 at 0.55, 0.95;
    keep = 0.5 keeps the top half of each class, so rare class 1 keeps a pixel although its other one is
    below every class-0 confidence kept."""
    conf0 = torch.tensor([0.9, 0.8, 0.6, 0.5, 0.45, 0.05])  # P(class 0) per pixel
    probs = torch.stack([conf0, 1 - conf0]).reshape(1, 2, 1, 6)
    labels, mask = confident_pixels(probs, keep=0.5)
    assert labels.tolist() == [[[0, 0, 0, 0, 1, 1]]]
    assert mask.tolist() == [[[True, True, False, False, False, True]]]


def test_invalid_pixels_are_never_pseudo_labels():
    probs = torch.softmax(torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(0)), 1)
    valid = torch.ones(2, 1, 5, 7)
    valid[:, :, :, :3] = 0
    _, mask = confident_pixels(probs, keep=1.0, valid=valid)
    assert not mask[:, :, :3].any() and mask[:, :, 3:].all()
    with pytest.raises(ValueError):
        confident_pixels(probs, keep=0)
