import re

import pytest
import torch

from segadapt import checkpoint as ckpt
from segadapt.errors import CheckpointError
from segadapt.models.loading import load_model


def _toy() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), ckpt.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_model_file_round_trip(tmp_path):
    model = _toy()
    meta = {"arch": "toy", "num_classes": 2, "step": 3}
    ckpt.save_model(tmp_path / "model.safetensors", model, meta)
    tensors, meta2 = ckpt.load_model_file(tmp_path)  # a run directory works too
    assert meta2 == meta
    other = _toy()
    ckpt.load_weights(other, tensors, tmp_path)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "model.json").exists()


def test_training_state_restores_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    opt.step()
    path = ckpt.checkpoint_path(tmp_path, 1)
    ckpt.save_training_state(path, model, opt, 1, {"arch": "toy"})
    expected_next = torch.rand(3)

    model2 = _toy()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(123)
    meta = ckpt.load_training_state(path, model2, opt2)
    assert meta["step"] == 1
    assert torch.equal(torch.rand(3), expected_next)
    buf = [s["momentum_buffer"] for s in opt.state_dict()["state"].values()]
    buf2 = [s["momentum_buffer"] for s in opt2.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(buf, buf2))
    assert ckpt.latest_checkpoint(tmp_path) == path


def test_prune_keeps_newest(tmp_path):
    model = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (1, 2, 3):
        ckpt.save_training_state(ckpt.checkpoint_path(tmp_path, step), model, opt, step, {})
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == [
        "step_0000002.safetensors",
        "step_0000003.safetensors",
    ]


def test_garbage_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x80\x04 this is a pickle, not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        ckpt.load_model_file(bad)
    with pytest.raises(CheckpointError, match="no model found"):
        ckpt.load_model_file(tmp_path / "nope")


def test_shape_mismatch_names_the_key(tmp_path):
    small = torch.nn.Conv2d(3, 4, 3)
    big = torch.nn.Conv2d(3, 8, 3)
    with pytest.raises(CheckpointError, match="weight has shape"):
        ckpt.load_weights(big, small.state_dict(), "w.safetensors")


def test_checkpoints_are_ordered_by_step_past_the_zero_padding(tmp_path):
    model = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (9_999_998, 9_999_999, 10_000_000):
        ckpt.save_training_state(ckpt.checkpoint_path(tmp_path, step), model, opt, step, {})
    assert ckpt.latest_checkpoint(tmp_path).name == "step_10000000.safetensors"
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_10000000.safetensors", "step_9999999.safetensors"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path, bad):
    """A diverged model used to load and be scored (mIoU 0.04, exit 0) as if it were a model."""
    from segadapt.models import build_model

    model = build_model("vgg16_deeplab", 3, 0.0625)
    keys = list(model.state_dict())
    with torch.no_grad():
        model.state_dict()[keys[4]].view(-1)[0] = bad  # the first bad one, in the model's own order
        model.state_dict()[keys[-1]].fill_(bad)
    path = tmp_path / "model.safetensors"
    ckpt.save_model(path, model, {"arch": "vgg16_deeplab", "num_classes": 3, "width": 0.0625})
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: {re.escape(keys[4])} holds NaN or inf") as e:
        load_model(tmp_path)
    assert "\n" not in str(e.value)


def test_weights_files_are_as_readable_as_the_json_beside_them(tmp_path, monkeypatch):
    """safetensors writes through its own 0600 temp file and renames it onto ours: the mode must be set after."""
    import os
    import stat

    monkeypatch.setattr(ckpt, "_UMASK", 0o022)
    old = os.umask(0o022)
    try:
        model = _toy()
        ckpt.save_model(tmp_path / "model.safetensors", model, {"arch": "toy"})
        path = ckpt.checkpoint_path(tmp_path, 1)
        ckpt.save_training_state(path, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, {})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "model.safetensors", tmp_path / "model.json",
                                                                path)}
    assert modes == dict.fromkeys(modes, 0o644)
