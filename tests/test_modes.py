"""Adaptation's train/eval modes: BatchNorm statistics kept (keep) or re-estimated below the tap (adabn),
stochastic layers off, and probes that leave those modes as they found them."""

import copy

import pytest
import torch
from torch import nn

from segadapt.errors import ConfigError
from segadapt.losses import feature_regression_loss
from segadapt.models.contract import HookedModel
from segadapt.models.factory import load_factory
from segadapt.models.modes import NormPolicy, adaptation_mode, modes_restored, norms_feeding, set_norm_mode
from segadapt.objectives import Objective
from segadapt.objectives.features import Features
from segadapt.selection import HoldoutProbe

X = (4, 3, 16, 16)


def objective_of(taps: dict[str, float]) -> Objective:
    return Objective({"features": Features(taps)}, {"features": 1.0})


def _h1() -> HookedModel:
    torch.manual_seed(0)
    return load_factory("tiny_hf:small_cnn", kwargs={"width": 6})[0]


def _bn_buffers(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.startswith(prefix) and k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")}


def _adapt(h1: HookedModel, mode: str, tap: str = "block", steps: int = 3) -> HookedModel:
    """The method's loop in miniature, with a full forward each step (as a probe would run one)."""
    student = copy.deepcopy(h1)
    trainable = student.parameters_up_to(tap)
    opt = torch.optim.SGD(trainable, lr=0.1)
    policy = set_norm_mode(student, mode, [tap])
    for _ in range(steps):
        x1 = torch.randn(X)
        with torch.no_grad():
            target = h1.features(x1, [tap])
        loss, _ = feature_regression_loss(target, student.features(2 * x1 + 1, [tap]), {tap: 1.0})
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            student(x1)
        adaptation_mode(student, policy)
    return student


def test_keep_leaves_every_batchnorm_buffer_bit_identical():
    h1 = _h1()
    h2 = _adapt(h1, "keep")
    before, after = _bn_buffers(h1, "net."), _bn_buffers(h2, "net.")
    assert len(before) == 9 and all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(h1.net.stem[0].weight, h2.net.stem[0].weight)  # it did train


def test_adabn_moves_statistics_below_the_tap_and_never_above():
    h1 = _h1()
    h2 = _adapt(h1, "adabn")
    for prefix in ("net.stem.", "net.block."):  # below the tap "block": re-estimated on the D2 batches
        before, after = _bn_buffers(h1, prefix), _bn_buffers(h2, prefix)
        assert all(not torch.equal(before[k], after[k]) for k in before), prefix
    before, after = _bn_buffers(h1, "net.head."), _bn_buffers(h2, "net.head.")
    assert before and all(torch.equal(before[k], after[k]) for k in before)  # the head stays H1's


def test_norms_feeding_follow_the_graph_not_the_order():
    class SideBranch(nn.Module):
        """A BatchNorm on a branch computed before the tap that the tap does not use."""

        def __init__(self) -> None:
            super().__init__()
            self.a, self.bn_a = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
            self.side, self.bn_side = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            side = self.bn_side(self.side(x))
            return self.b(self.bn_a(self.a(x))) + side

    net = SideBranch()
    model = HookedModel(net, 4, taps=["a", "bn_a", "b"])
    assert norms_feeding(model, ["b"]) == [net.bn_a]
    assert norms_feeding(model, ["a"]) == []


def test_stochastic_layers_are_off_while_adapting():
    pytest.importorskip("transformers", reason="HF models need transformers (pip install 'segadapt[hf]')")
    from segadapt.models.hf_dir import build_from_config
    from tiny_hf import SEGFORMER

    model = build_from_config(SEGFORMER, "tiny")  # drop_path_rate 0.1: stochastic depth in every block
    adaptation_mode(model)
    drops = [m for m in model.modules() if type(m).__name__.endswith("DropPath") or isinstance(m, nn.Dropout)]
    assert drops and not any(m.training for m in drops) and model.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.features(x, ["stage2"])["stage2"], model.features(x, ["stage2"])["stage2"])


def test_unknown_mode_is_one_line():
    with pytest.raises(ConfigError, match="keep, adabn"):
        NormPolicy(_h1(), "frozen", ["block"])


def test_probes_and_evaluation_leave_the_modes_as_found():
    model = _h1()
    policy = set_norm_mode(model, "adabn", ["stem"])
    modes = [m.training for m in model.modules()]
    with modes_restored(model):
        model.eval()
    assert [m.training for m in model.modules()] == modes
    pairs = [(torch.randn(3, 16, 16), torch.randn(3, 16, 16)) for _ in range(2)]
    probe = HoldoutProbe(pairs, [0, 1], model, objective_of({"stem": 1.0}), ["stem"], 0, torch.device("cpu"))
    probe.measure(model)
    assert [m.training for m in model.modules()] == modes and policy.adapted == [model.net.stem[1]]
