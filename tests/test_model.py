import pytest
import torch

from segadapt.errors import ConfigError
from segadapt.models import PixelNet, VGGDeepLab, build_model


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


def test_features_match_forward(model):
    x = torch.randn(1, 3, 48, 48)
    logits = model.features(x, ["logits"])["logits"]
    up = torch.nn.functional.interpolate(logits, size=(48, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(up, model(x))


def test_early_exit_skips_layers_above_deepest_tap(model):
    calls = []
    hooks = [getattr(model, n).register_forward_hook(lambda *_, n=n: calls.append(n)) for n in ("conv4", "fc6")]
    try:
        model.features(torch.randn(1, 3, 32, 32), ["pool3", "pool1"])
        assert calls == []
        model.features(torch.randn(1, 3, 32, 32), ["pool5"])
        assert calls == ["conv4"]
    finally:
        for h in hooks:
            h.remove()


def test_unknown_tap_lists_valid_ones(model):
    with pytest.raises(ValueError, match="pool5"):
        model.features(torch.randn(1, 3, 32, 32), ["pool6"])


def test_parameter_split_at_tap(model):
    below = {id(p) for p in model.parameters_up_to("pool3")}
    assert all(id(p) in below for m in (model.conv1, model.conv2, model.conv3) for p in m.parameters())
    assert not any(id(p) in below for m in (model.conv4, model.fc6, model.classifier) for p in m.parameters())
    above = {id(p) for p in model.parameters_above("pool3")}
    assert below.isdisjoint(above) and len(below) + len(above) == len(list(model.parameters()))


def test_width_scales_parameters():
    small = sum(p.numel() for p in VGGDeepLab(21, width=0.125).parameters())
    big = sum(p.numel() for p in VGGDeepLab(21, width=0.25).parameters())
    assert 3.5 < big / small < 4.1  # channels double -> conv weights ~4x


def test_paper_width_has_deeplab_largefov_size():
    # DeepLab-LargeFOV on VGG-16: 13 convs + fc6 (3x3x512x1024) + fc7 (1024x1024) + classifier, ~20.5M parameters
    n = sum(p.numel() for p in VGGDeepLab(21, width=1.0).parameters())
    assert 20.0e6 < n < 21.0e6


def test_seeded_construction_is_deterministic():
    torch.manual_seed(3)
    a = VGGDeepLab(3, width=0.125)
    torch.manual_seed(3)
    b = VGGDeepLab(3, width=0.125)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_registry():
    assert isinstance(build_model("pixel", 4), PixelNet)
    assert build_model("pixel", 4)(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)
    with pytest.raises(ConfigError, match="vgg16_deeplab"):
        build_model("resnet", 4)
