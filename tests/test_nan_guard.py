"""A non-finite loss or gradient stops training with one line naming the step, the batch and the last good
checkpoint; the weights are never updated with it and the checkpoint on disk stays as it was saved."""

import itertools
import re

import pytest
import torch
from safetensors.torch import load_file

from segadapt import checkpoint as ckpt
from segadapt.adapt import adapt
from segadapt.config import preset
from segadapt.data import JointTransform, SegmentationDataset, build_dataset
from segadapt.data.pairs import PairedDataset
from segadapt.data.sampler import EpochSampler
from segadapt.data.synthetic import SyntheticScenes
from segadapt.errors import SegadaptError
from segadapt.models import VGGDeepLab
from segadapt.train import train
from tiny import tiny_train_config

BATCH = 4


def tiny_config(iterations: int = 10):
    return tiny_train_config(iterations, width=0.0625, checkpoint_every=2, batch=BATCH)


def batch_at(step: int, n: int, seed: int = 0) -> list[int]:
    """Dataset indices of the batch of (1-based) `step`, from the sampler's deterministic order."""
    order = list(itertools.islice(iter(EpochSampler(n, seed)), step * BATCH))
    return order[(step - 1) * BATCH:]


class Poisoned(SegmentationDataset):
    """One sample's image is all NaN (a corrupt float file, say)."""

    def __init__(self, base: SegmentationDataset, bad: int) -> None:
        super().__init__(base.source, base.transform)
        self.bad = bad

    def __getitem__(self, i):
        image, mask = super().__getitem__(i)
        return (torch.full_like(image, float("nan")) if i == self.bad else image), mask


def record_saves(monkeypatch) -> dict[int, dict[str, torch.Tensor]]:
    """The weights each checkpoint held when it was written, to compare with what is on disk afterwards."""
    saved: dict[int, dict[str, torch.Tensor]] = {}
    real = ckpt.save_training_state

    def spy(path, model, optimizer, step, meta, **kwargs):
        saved[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        real(path, model, optimizer, step, meta, **kwargs)

    monkeypatch.setattr(ckpt, "save_training_state", spy)
    return saved


def test_nan_sample_stops_with_step_batch_and_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config()
    bad_batch = batch_at(5, 24)
    base = build_dataset(cfg.data, "train", train=True)
    saved = record_saves(monkeypatch)
    with pytest.raises(SegadaptError) as err:
        train(cfg, tmp_path, train_set=Poisoned(base, bad_batch[1]))
    msg = str(err.value)
    last = ckpt.checkpoint_path(tmp_path, 4)
    assert "\n" not in msg
    assert "loss became nan at step 5" in msg
    assert f"dataset indices {bad_batch}" in msg
    assert f"synthetic_train_{bad_batch[1]:06d}" in msg  # names the samples, not just their indices
    assert f"last good checkpoint: {last}" in msg
    on_disk = {k[len("model."):]: v for k, v in load_file(str(last)).items() if k.startswith("model.")}
    assert set(on_disk) == set(saved[4])
    assert all(torch.isfinite(v).all() and torch.equal(v, saved[4][k]) for k, v in on_disk.items())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_0000002.safetensors", "step_0000004.safetensors"]
    assert not (tmp_path / "model.safetensors").exists()


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class GradientBomb(VGGDeepLab):
    def __init__(self, at_call: int) -> None:
        super().__init__(7, width=0.0625)
        self.at_call, self.calls = at_call, 0

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at_call:
                out = _NanGradient.apply(out)
        return out


def test_nan_gradient_never_reaches_the_weights(tmp_path, monkeypatch):
    cfg = tiny_config()
    saved = record_saves(monkeypatch)
    model = GradientBomb(at_call=3)
    with pytest.raises(SegadaptError, match=r"gradients became non-finite at step 3 on the batch of dataset") as err:
        train(cfg, tmp_path, model=model)
    assert f"dataset indices {batch_at(3, 24)}" in str(err.value)
    assert "weights were not updated" in str(err.value)
    # step 3 was refused: the model still holds the step-2 weights, which are finite and on disk unchanged
    weights = model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert all(torch.equal(weights[k], v) for k, v in saved[2].items())
    disk = load_file(str(ckpt.checkpoint_path(tmp_path, 2)))
    assert all(torch.equal(disk[f"model.{k}"], v) for k, v in saved[2].items())


class PoisonedPairs(PairedDataset):
    def __init__(self, n: int, bad: int) -> None:
        d1 = SyntheticScenes(n, size=(32, 48))
        super().__init__(d1, d1, JointTransform(train=True, crop_size=(32, 48), scale_range=(0.9, 1.1)))
        self.bad = bad

    def __getitem__(self, k):
        x1, x2 = super().__getitem__(k)
        return x1, (torch.full_like(x2, float("nan")) if k == self.bad else x2)


def test_adapt_nan_names_step_and_pairs(tmp_path):
    torch.manual_seed(0)
    teacher = VGGDeepLab(7, width=0.0625)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = preset("synthetic")
    cfg.adapt.layers, cfg.adapt.holdout = ["pool2"], 0  # no held-out pairs: the sampler indexes all pairs
    cfg.adapt.objective = {"features": 1.0}  # the regression's own wording is checked
    cfg.train.iterations, cfg.train.batch_size, cfg.train.lr, cfg.train.threads = 6, BATCH, 0.01, 1
    bad_batch = batch_at(2, 12)
    with pytest.raises(SegadaptError) as err:
        adapt(cfg, tmp_path, PoisonedPairs(12, bad_batch[0]), teacher=teacher,
              h1_meta={"arch": "vgg16_deeplab", "width": 0.0625, "num_classes": 7})
    msg = str(err.value)
    assert "\n" not in msg
    assert re.search(r"regression loss became nan at step 2 on the batch of dataset indices", msg)
    assert f"dataset indices {bad_batch}" in msg
    stem = f"synthetic_train_{bad_batch[0]:06d}"
    assert f"{stem} / {stem}" in msg  # X1 / X2 of the bad pair
    assert "adapt.grad_clip" in msg and "no checkpoint saved yet" in msg
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())
