import math

import pytest
import torch
import torch.nn.functional as F

from segadapt.errors import ConfigError
from segadapt.models import ARCHS, PixelNet, VGGDeepLab, build_model


@pytest.fixture(scope="module")
def model() -> VGGDeepLab:
    torch.manual_seed(0)
    return VGGDeepLab(num_classes=5, width=0.125).eval()


def test_output_is_input_sized_and_stride_8(model):
    x = torch.randn(2, 3, 64, 80)
    assert model(x).shape == (2, 5, 64, 80)
    f = model.features(x, ["pool1", "pool2", "pool3", "pool4", "pool5", "fc7", "logits"])
    assert f["pool1"].shape[-2:] == (32, 40)
    assert f["pool2"].shape[-2:] == (16, 20)
    for tap in ("pool3", "pool4", "pool5", "fc7", "logits"):  # output stride 8: pool4/pool5 keep resolution
        assert f[tap].shape[-2:] == (8, 10), tap
    assert f["logits"].shape[1] == 5


@pytest.mark.parametrize("size", [(65, 70), (33, 41)])
def test_logits_are_ceil_one_eighth_for_odd_sizes(model, size):
    x = torch.randn(1, 3, *size)
    assert model.features(x, ["logits"])["logits"].shape[-2:] == tuple(math.ceil(s / 8) for s in size)
    assert model(x).shape[-2:] == size


def test_channels_follow_width(model):
    f = model.features(torch.randn(1, 3, 32, 32), list(VGGDeepLab.TAPS))
    assert list(f) == list(VGGDeepLab.TAPS)
    assert [f[t].shape[1] for t in VGGDeepLab.TAPS] == [8, 16, 32, 64, 64, 128, 128, 5]


def test_features_match_forward(model):
    x = torch.randn(1, 3, 48, 48)
    logits = model.features(x, ["logits"])["logits"]
    up = F.interpolate(logits, size=(48, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(up, model(x))


def test_returns_exactly_the_requested_taps_unmodified_by_later_layers(model):
    x = torch.randn(1, 3, 32, 32)
    both = model.features(x, ["logits", "pool1", "fc6"])
    assert set(both) == {"pool1", "fc6", "logits"}
    assert torch.equal(both["pool1"], model.features(x, ["pool1"])["pool1"])  # no in-place op touched it
    assert torch.equal(both["fc6"], model.features(x, ["fc6"])["fc6"])
    assert (both["fc6"] >= 0).all()  # fc6/fc7 taps are post-ReLU


def test_early_exit_skips_layers_above_deepest_tap(model):
    calls = []
    names = ("conv4", "fc6")
    hooks = [getattr(model, n).register_forward_hook(lambda *_, n=n: calls.append(n)) for n in names]
    try:
        model.features(torch.randn(1, 3, 32, 32), ["pool3", "pool1"])
        assert calls == []
        model.features(torch.randn(1, 3, 32, 32), ["pool5"])
        assert calls == ["conv4"]
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("taps", [["pool6"], ["pool1", "conv1"], []])
def test_unknown_tap_lists_valid_ones(model, taps):
    with pytest.raises(ValueError, match="pool1, pool2, pool3, pool4, pool5, fc6, fc7, logits"):
        model.features(torch.randn(1, 3, 32, 32), taps)


def test_parameter_split_at_tap(model):
    below = {id(p) for p in model.parameters_up_to("pool3")}
    assert all(id(p) in below for m in (model.conv1, model.conv2, model.conv3) for p in m.parameters())
    assert not any(id(p) in below for m in (model.conv4, model.fc6, model.classifier) for p in m.parameters())
    above = {id(p) for p in model.parameters_above("pool3")}
    assert below.isdisjoint(above) and len(below) + len(above) == len(list(model.parameters()))
    assert model.stages_up_to("pool2") == [model.conv1, model.pool1, model.conv2, model.pool2]
    assert len(model.parameters_up_to("logits")) == len(list(model.parameters()))
    assert model.parameters_above("logits") == []


def test_parameters_up_to_tap_are_exactly_those_with_gradient(model):
    model.zero_grad(set_to_none=True)
    model.features(torch.randn(1, 3, 32, 32), ["pool4"])["pool4"].sum().backward()
    with_grad = {id(p) for p in model.parameters() if p.grad is not None}
    assert with_grad == {id(p) for p in model.parameters_up_to("pool4")}
    model.zero_grad(set_to_none=True)


def test_classifier_backbone_split(model):
    head, body = model.classifier_parameters(), model.backbone_parameters()
    assert {id(p) for p in head} == {id(model.classifier.weight), id(model.classifier.bias)}
    assert {id(p) for p in head} | {id(p) for p in body} == {id(p) for p in model.parameters()}
    assert len(head) + len(body) == len(list(model.parameters()))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = VGGDeepLab(3, width=0.125)
    x = torch.randn(1, 3, 32, 32)
    assert not torch.equal(m.features(x, ["fc7"])["fc7"], m.features(x, ["fc7"])["fc7"])
    m.eval()
    assert torch.equal(m.features(x, ["fc7"])["fc7"], m.features(x, ["fc7"])["fc7"])


def test_width_scales_parameters():
    small = sum(p.numel() for p in VGGDeepLab(21, width=0.125).parameters())
    big = sum(p.numel() for p in VGGDeepLab(21, width=0.25).parameters())
    assert 3.5 < big / small < 4.1  # channels double -> conv weights ~4x


def test_paper_width_has_deeplab_largefov_size():
    # 13 VGG convs + fc6 (3x3x512x1024) + fc7 (1024x1024) + classifier: about 20.5M parameters
    n = sum(p.numel() for p in VGGDeepLab(21, width=1.0).parameters())
    assert 20.0e6 < n < 21.0e6


def test_init_scales():
    torch.manual_seed(0)
    m = VGGDeepLab(3, width=0.25)
    assert all(not b.any() for n, b in m.named_parameters() if n.endswith("bias"))
    assert m.classifier.weight.std().item() == pytest.approx(0.01, rel=0.2)
    w = m.conv3[2].weight  # He fan-in: std = sqrt(2 / (cin * 9))
    assert w.std().item() == pytest.approx(math.sqrt(2 / (w.shape[1] * 9)), rel=0.1)


def test_seeded_construction_is_deterministic():
    torch.manual_seed(3)
    a = VGGDeepLab(3, width=0.125)
    torch.manual_seed(3)
    b = VGGDeepLab(3, width=0.125)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pixelnet_sees_one_pixel():
    torch.manual_seed(0)
    m = PixelNet(4, width=0.25, in_channels=3).eval()
    x = torch.randn(1, 3, 16, 16)
    logits = m.features(x, ["logits"])["logits"]
    assert logits.shape == (1, 4, 16, 16) and torch.equal(logits, m(x))
    y = x.clone()
    y[..., 0, 0] += 5.0  # changing one pixel changes that pixel's logits only
    changed = (m(y) != logits).any(dim=1)[0]
    assert changed[0, 0] and changed.sum() == 1
    assert PixelNet(2, in_channels=1)(torch.randn(1, 1, 4, 4)).shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match="logits"):
        m.features(x, ["pool3"])


def test_registry():
    assert set(ARCHS) == {"vgg16_deeplab", "pixel", "segformer_b0"}
    assert isinstance(build_model("pixel", 4), PixelNet)
    assert isinstance(build_model("vgg16_deeplab", 4, width=0.125), VGGDeepLab)
    assert build_model("pixel", 4)(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)
    with pytest.raises(ConfigError, match="vgg16_deeplab"):
        build_model("resnet", 4)
    with pytest.raises(ConfigError, match="width"):
        build_model("vgg16_deeplab", 4, width=0.0)
