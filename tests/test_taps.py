import pytest
import torch
from torch import nn

from segadapt.models import VGGDeepLab
from segadapt.models.taps import parameters_used, tap_features


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)
        self.head_calls = 0

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        self.head_calls += 1
        return self.head(x)


def test_generic_taps_stop_after_last_tap():
    m = Toy()
    out = tap_features(m, torch.randn(1, 3, 8, 8), ["a", "b"])
    assert set(out) == {"a", "b"} and out["b"].shape == (1, 4, 8, 8)
    assert m.head_calls == 0  # forward abandoned before the head
    assert not m.a._forward_hooks and not m.b._forward_hooks  # hooks removed


def test_gradients_flow_through_taps():
    m = Toy()
    tap_features(m, torch.randn(1, 3, 8, 8), ["b"])["b"].sum().backward()
    assert m.a.weight.grad is not None and m.head.weight.grad is None


def test_parameters_used_excludes_layers_above():
    m = Toy()
    used = {id(p) for p in parameters_used(m, torch.randn(1, 3, 8, 8), ["a"])}
    assert used == {id(m.a.weight), id(m.a.bias)}


def test_unknown_layer_suggests_names():
    with pytest.raises(ValueError, match="did you mean"):
        tap_features(Toy(), torch.randn(1, 3, 8, 8), ["hed"])


def test_hooks_agree_with_builtin_vgg_taps():
    torch.manual_seed(0)
    m = VGGDeepLab(4, width=0.125).eval()
    x = torch.randn(1, 3, 40, 40)
    hooked = tap_features(m, x, ["pool3", "pool5"])
    builtin = m.features(x, ["pool3", "pool5"])
    for k in builtin:
        assert torch.equal(hooked[k], builtin[k])
