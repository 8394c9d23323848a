import copy
import csv

import numpy as np
import pytest
import torch
from torch import nn

from segadapt.adapt import adapt
from segadapt.config import preset
from segadapt.data import JointTransform
from segadapt.data.pairs import PairedDataset, ShiftedSource
from segadapt.data.synthetic import SyntheticScenes
from segadapt.errors import CheckpointError, ConfigError, DataError, SegadaptError
from segadapt.losses import resolve_layers
from segadapt.models import VGGDeepLab
from segadapt.models.loading import load_model
from segadapt.models.vgg_deeplab import LAYER_PRESETS, POOLS, W_INC


def darken(image: np.ndarray, seed: int) -> np.ndarray:
    return (image * 0.5).astype(np.uint8)


class LabelsForbidden(ShiftedSource):
    """A D2 whose labels raise: adaptation must never ask for them."""

    def load(self, i):
        raise AssertionError("adaptation read a D2 label")


def make_pairs(n: int = 8) -> PairedDataset:
    d1 = SyntheticScenes(n, size=(32, 48))
    d2 = LabelsForbidden(d1, darken)
    return PairedDataset(d1, d2, JointTransform(train=True, crop_size=(32, 48), scale_range=(0.9, 1.1)))


def tiny_cfg(layers: list[str], iterations: int = 8):
    cfg = preset("synthetic")
    cfg.adapt.layers = layers
    cfg.adapt.objective = {"features": 1.0}  # the study's regression, whatever the VGG's default
    cfg.train.iterations, cfg.train.batch_size, cfg.train.lr, cfg.train.log_every = iterations, 4, 0.01, 1
    cfg.train.threads = 1
    return cfg


@pytest.fixture
def h1() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    return VGGDeepLab(7, width=0.125), {"arch": "vgg16_deeplab", "width": 0.125, "num_classes": 7}


def test_layers_above_deepest_tap_stay_bit_identical(tmp_path, h1):
    teacher, meta = h1
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    adapt(tiny_cfg(["pool3"]), tmp_path, make_pairs(), teacher=teacher, h1_meta=meta)
    h2, _ = load_model(tmp_path)
    after = h2.state_dict()
    for k, v in before.items():
        if k.startswith(("conv4", "conv5", "fc6", "fc7", "classifier")):
            assert torch.equal(after[k], v), k
    assert not torch.equal(after["conv1.0.weight"], before["conv1.0.weight"])  # below the tap: trained
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())  # H1 untouched


def test_regression_reduces_feature_error_without_labels(tmp_path, h1):
    teacher, meta = h1
    result = adapt(tiny_cfg(["pool1", "pool2"], iterations=30), tmp_path, make_pairs(), teacher=teacher, h1_meta=meta)
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert {"loss_pool1", "loss_pool2"} <= set(rows[0])
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.7 * first
    assert result["layers"] == {"pool1": 1.0, "pool2": 1.0}


def test_any_module_with_hook_taps(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.mid = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Conv2d(4, 7, 1)

        def forward(self, x):
            return self.head(torch.relu(self.mid(torch.relu(self.stem(x)))))

    torch.manual_seed(0)
    net = Net()
    head_before = net.head.weight.clone()
    cfg = tiny_cfg(["stem"])
    cfg.train.channels_last = False
    from segadapt import checkpoint as ckpt

    # a user model is not in the registry: check the weights directly
    adapt(cfg, tmp_path, make_pairs(), teacher=net, h1_meta={"arch": "custom"})
    tensors, _ = ckpt.load_model_file(tmp_path)
    assert torch.equal(tensors["head.weight"], head_before)
    assert torch.equal(tensors["mid.weight"], net.mid.weight)
    assert not torch.equal(tensors["stem.weight"], net.stem.weight)


def test_layer_presets():
    assert resolve_layers("all_inc", presets=LAYER_PRESETS) == dict(zip(POOLS, W_INC))
    assert list(resolve_layers("all_dec", presets=LAYER_PRESETS).values()) == list(reversed(W_INC))
    assert resolve_layers(layers=["pool3", "pool5"], weights=[0.5, 1.0]) == {"pool3": 0.5, "pool5": 1.0}
    with pytest.raises(ConfigError, match="one weight per layer"):
        resolve_layers(layers=["pool3", "pool5"], weights=[0.5])


def test_missing_pair_names_the_file():
    d1 = SyntheticScenes(3, size=(16, 16))
    d2 = SyntheticScenes(2, size=(16, 16))
    with pytest.raises(DataError, match="synthetic_train_000002"):
        PairedDataset(d1, d2, JointTransform(train=False))


def test_teacher_runs_in_inference_mode_and_student_with_grad(tmp_path, h1):
    teacher, meta = h1
    modes: dict[str, list[bool]] = {"teacher": [], "student": []}

    def record(module, args):
        # adapt() works on copies (NHWC layout); the frozen one is the teacher, conv1 trains in the student
        role = "student" if next(module.parameters()).requires_grad else "teacher"
        modes[role].append(torch.is_inference_mode_enabled())

    teacher.conv1.register_forward_pre_hook(record)  # deepcopies carry the hook along
    cfg = tiny_cfg(["pool2"], iterations=2)
    cfg.adapt.holdout = 0  # the selection probe runs the student in inference mode too
    adapt(cfg, tmp_path, make_pairs(), teacher=teacher, h1_meta=meta)
    assert modes["teacher"] and all(modes["teacher"])
    assert modes["student"] and not any(modes["student"][-2:])


def test_gradient_clipping_tames_a_learning_rate_that_diverges(tmp_path, h1):
    teacher, meta = h1
    cfg = tiny_cfg(["pool5"], iterations=12)
    cfg.train.lr = 50.0
    with pytest.raises(SegadaptError, match="adapt.grad_clip"):
        adapt(cfg, tmp_path / "raw", make_pairs(), teacher=teacher, h1_meta=meta)
    cfg.adapt.grad_clip = 0.05
    result = adapt(cfg, tmp_path / "clipped", make_pairs(), teacher=teacher, h1_meta=meta)
    assert np.isfinite(result["final_loss"])


def test_time_budget_stops_adaptation(tmp_path, h1):
    teacher, meta = h1
    cfg = tiny_cfg(["pool5"], iterations=50)
    cfg.train.time_budget_s = 1e-6
    cfg.adapt.probes = 0
    result = adapt(cfg, tmp_path, make_pairs(), teacher=teacher, h1_meta=meta)
    assert result["step"] == 1 and (tmp_path / "model.safetensors").exists()


def test_resume_from_a_checkpoint_ends_like_the_uninterrupted_run(tmp_path, h1):
    """Weights, optimizer, RNG, probes and the label-free selection all carry over a resume."""
    from segadapt import checkpoint as ckpt

    teacher, meta = h1
    cfg = tiny_cfg(["pool3"], iterations=8)
    cfg.train.checkpoint_every, cfg.adapt.holdout, cfg.adapt.probes = 3, 2, 4
    a = adapt(cfg, tmp_path / "a", make_pairs(10), teacher=teacher, h1_meta=meta)
    b = tmp_path / "b"
    adapt(cfg, b, make_pairs(10), teacher=teacher, h1_meta=meta)
    # make b look like a run killed right after its step-6 checkpoint
    ckpt.checkpoint_path(b, 8).unlink()
    for name in ("model.safetensors", "model_selected.safetensors", "selection.csv", "adapt.json"):
        (b / name).unlink()
    r = adapt(cfg, b, make_pairs(10), teacher=teacher, h1_meta=meta, resume=True)
    for name in ("model.safetensors", "model_selected.safetensors"):
        wa, _ = ckpt.load_model_file(tmp_path / "a" / name)
        wb, _ = ckpt.load_model_file(b / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert r["probes"] == a["probes"] and r["selected_step"] == a["selected_step"]
    assert [row["step"] for row in csv.DictReader((b / "log.csv").open())] == [str(s) for s in range(1, 9)]
    assert (tmp_path / "a" / "selection.csv").read_text() == (b / "selection.csv").read_text()
    # resuming onto another teacher would mix two regressions: refused
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.conv1[0].bias.add_(0.1)
    cfg.train.iterations = 10
    with pytest.raises(CheckpointError, match="H1's weights changed"):
        adapt(cfg, b, make_pairs(10), teacher=other, h1_meta=meta, resume=True)


def test_student_regresses_without_dropout(tmp_path, h1):
    """At fc7 a student with dropout on could not match the eval-mode teacher even at equal weights."""
    teacher, meta = h1
    cfg = tiny_cfg(["fc7"], iterations=2)
    cfg.train.lr, cfg.adapt.probes = 1e-12, 0  # weights stay (almost) H1's
    same = PairedDataset(SyntheticScenes(8, size=(32, 48)), ShiftedSource(SyntheticScenes(8, size=(32, 48)),
                         lambda image, seed: image), JointTransform(train=True, crop_size=(32, 48)))
    result = adapt(cfg, tmp_path, same, teacher=teacher, h1_meta=meta)
    assert result["final_loss"] < 1e-6


def test_a_seed_gives_the_same_h2_as_before_the_model_contract(tmp_path, h1):
    """The step losses of a tiny pool3 regression, recorded at 724524b (before the run object and the model
    contract): the augmentation stream, and so every published H2 number, must not move with a refactor."""
    teacher, meta = h1
    adapt(tiny_cfg(["pool3"], iterations=3), tmp_path, make_pairs(), teacher=teacher, h1_meta=meta)
    losses = [float(r["loss"]) for r in csv.DictReader((tmp_path / "log.csv").open())]
    assert losses == pytest.approx([2.17854, 1.20033, 1.44212], rel=1e-4)


def test_auto_layout_in_adapt_is_recorded_and_adapts_as_the_layout_it_picked(tmp_path, h1):
    """channels_last = "auto" is timed on a copy of H1 (H1 itself is left as given) and written into the run's
    config; the adaptation then equals one given that layout from the start."""
    from segadapt import checkpoint as ckpt
    from segadapt.config import load_toml

    teacher, meta = h1
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = tiny_cfg(["pool3"], iterations=3)
    cfg.train.channels_last = "auto"
    adapt(cfg, tmp_path / "auto", make_pairs(), teacher=teacher, h1_meta=meta)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    picked = load_toml(tmp_path / "auto" / "config.toml").train.channels_last
    assert isinstance(picked, bool)
    fixed = tiny_cfg(["pool3"], iterations=3)
    fixed.train.channels_last = picked
    adapt(fixed, tmp_path / "fixed", make_pairs(), teacher=teacher, h1_meta=meta)
    wa, _ = ckpt.load_model_file(tmp_path / "auto")
    wb, _ = ckpt.load_model_file(tmp_path / "fixed")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_too_few_pairs_to_hold_out_any_is_said(tmp_path, h1, capsys):
    """Four pairs: a fifth of them is none, so there is no label-free selection; the run says so instead of
    leaving the user to find model_selected.safetensors missing."""
    teacher, meta = h1
    adapt(tiny_cfg(["pool1"], iterations=2), tmp_path, make_pairs(4), teacher=teacher, h1_meta=meta)
    assert "too few to hold any out" in capsys.readouterr().out
    assert not (tmp_path / "model_selected.safetensors").exists() and (tmp_path / "model.safetensors").is_file()
