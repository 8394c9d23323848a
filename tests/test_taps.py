import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segadapt.models import VGGDeepLab
from segadapt.models.taps import parameters_used, tap_features


class Toy(nn.Module):
    """conv -> in-place ReLU -> conv (+ a root-owned scale) -> BN -> head; counts head calls."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1))  # used functionally by the root module
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)
        self.unused = nn.Linear(2, 2)
        self.head_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.act(self.b(self.act(self.a(x)))) * self.scale)
        self.head_calls += 1
        return self.head(x)


def test_generic_taps_stop_after_last_tap():
    m = Toy()
    out = tap_features(m, torch.randn(1, 3, 8, 8), ["b", "a"])
    assert list(out) == ["b", "a"] and out["b"].shape == (1, 4, 8, 8)
    assert m.head_calls == 0  # forward abandoned before the head
    assert not any(mod._forward_hooks for mod in m.modules())  # hooks removed


def test_capture_survives_a_later_inplace_relu():
    torch.manual_seed(0)
    m = Toy()
    x = torch.randn(1, 3, 8, 8)
    a = tap_features(m, x, ["a", "b"])["a"]
    assert (a < 0).any()  # still the raw conv output, not overwritten by ReLU(inplace=True)
    assert torch.allclose(a, m.a(x))


def test_shared_module_is_tapped_at_its_first_call():
    torch.manual_seed(0)
    m = Toy()
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(tap_features(m, x, ["act"])["act"], F.relu(m.a(x)))


def test_gradients_flow_through_taps():
    m = Toy()
    tap_features(m, torch.randn(1, 3, 8, 8), ["b"])["b"].sum().backward()
    assert m.a.weight.grad is not None and m.head.weight.grad is None


def test_works_under_inference_mode():
    m = Toy().eval()
    with torch.inference_mode():
        out = tap_features(m, torch.randn(1, 3, 8, 8), ["bn"])
    assert not out["bn"].requires_grad and m.head_calls == 0


def test_hooks_removed_when_forward_fails():
    m = Toy()
    with pytest.raises(RuntimeError):
        tap_features(m, torch.randn(1, 5, 8, 8), ["head"])  # wrong channel count
    assert not any(mod._forward_hooks for mod in m.modules())


def test_unknown_or_unused_layer():
    with pytest.raises(ValueError, match="did you mean head"):
        tap_features(Toy(), torch.randn(1, 3, 8, 8), ["hed"])
    with pytest.raises(ValueError, match="never ran"):
        tap_features(Toy(), torch.randn(1, 3, 8, 8), ["unused"])


def test_parameters_used_follow_the_graph():
    m = Toy()
    x = torch.randn(1, 3, 8, 8)
    assert parameters_used(m, x, ["a"]) == [m.a.weight, m.a.bias]
    below_bn = {id(p) for p in parameters_used(m, x, ["bn"])}
    expected = [m.a.weight, m.a.bias, m.b.weight, m.b.bias, m.scale, m.bn.weight, m.bn.bias]
    assert below_bn == {id(p) for p in expected}  # includes the root-owned scale, excludes head/unused


def test_parameters_used_leaves_the_model_as_found():
    m = Toy().train()
    m.a.requires_grad_(False)
    stats = m.bn.running_mean.clone()
    with torch.inference_mode():
        used = parameters_used(m, torch.randn(1, 3, 8, 8), ["b"])
    assert {id(p) for p in used} == {id(m.a.weight), id(m.a.bias), id(m.b.weight), id(m.b.bias)}
    assert not m.a.weight.requires_grad and m.b.weight.requires_grad
    assert m.training and m.bn.training and torch.equal(m.bn.running_mean, stats)


def test_hooks_agree_with_builtin_vgg_taps():
    torch.manual_seed(0)
    m = VGGDeepLab(4, width=0.125).eval()
    x = torch.randn(1, 3, 40, 40)
    hooked = tap_features(m, x, ["pool3", "pool5"])
    builtin = m.features(x, ["pool3", "pool5"])
    for k in builtin:
        assert torch.equal(hooked[k], builtin[k])
    used = {id(p) for p in parameters_used(m, x, ["pool3"])}
    assert used == {id(p) for p in m.parameters_up_to("pool3")}
