"""ImageNet init from a torchvision-format VGG-16 dict, on a small synthetic dict shaped like the model."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from segadapt.errors import CheckpointError
from segadapt.models import VGGDeepLab
from segadapt.models.pretrained import TORCHVISION_CONV_INDICES, load_vgg16_imagenet

WIDTH = 0.125


def fake_torchvision_vgg16(model: VGGDeepLab) -> dict[str, torch.Tensor]:
    """A torchvision-layout dict whose conv shapes fit `model` and whose fc6/fc7 are 4x wider, as in VGG."""
    sd = model.state_dict()
    convs = [k for k in sd if k.startswith("conv") and k.endswith(".weight")]
    out = {}
    for idx, key in zip(TORCHVISION_CONV_INDICES, convs):
        out[f"features.{idx}.weight"] = torch.randn_like(sd[key])
        out[f"features.{idx}.bias"] = torch.randn_like(sd[key.replace("weight", "bias")])
    c5, fc = sd["fc6.0.weight"].shape[1], sd["fc6.0.weight"].shape[0]
    out["classifier.0.weight"] = torch.randn(4 * fc, c5 * 49)
    out["classifier.0.bias"] = torch.randn(4 * fc)
    out["classifier.3.weight"] = torch.randn(4 * fc, 4 * fc)
    out["classifier.3.bias"] = torch.randn(4 * fc)
    out["classifier.6.weight"] = torch.randn(1000, 4 * fc)
    return out


def test_keys_land_in_the_right_layers(tmp_path):
    model = VGGDeepLab(5, width=WIDTH)
    sd = fake_torchvision_vgg16(model)
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    classifier_before = model.classifier.weight.clone()
    mapped = load_vgg16_imagenet(model, path)
    assert len(mapped) == 13 * 2 + 4
    assert torch.equal(model.conv1[0].weight, sd["features.0.weight"])
    assert torch.equal(model.conv3[4].weight, sd["features.14.weight"])  # conv3_3
    assert torch.equal(model.conv5[4].bias, sd["features.28.bias"])  # conv5_3
    c5 = model.fc6[0].weight.shape[1]
    fc6 = sd["classifier.0.weight"].reshape(-1, c5, 7, 7)
    assert torch.equal(model.fc6[0].weight, fc6[::4][:, :, ::3, ::3])
    assert torch.equal(model.fc7[0].weight[:, :, 0, 0], sd["classifier.3.weight"][::4, ::4])
    assert torch.equal(model.classifier.weight, classifier_before)  # stays freshly initialised


def test_safetensors_input(tmp_path):
    model = VGGDeepLab(5, width=WIDTH)
    sd = fake_torchvision_vgg16(model)
    save_file(sd, str(tmp_path / "vgg16.safetensors"))
    load_vgg16_imagenet(model, tmp_path / "vgg16.safetensors")
    assert torch.equal(model.conv2[0].weight, sd["features.5.weight"])


def test_width_mismatch_names_key_and_fix(tmp_path):
    sd = fake_torchvision_vgg16(VGGDeepLab(5, width=WIDTH))
    torch.save(sd, tmp_path / "vgg16.pth")
    with pytest.raises(CheckpointError, match=r"features\.0\.weight has shape .* --width 1\.0"):
        load_vgg16_imagenet(VGGDeepLab(5, width=2 * WIDTH), tmp_path / "vgg16.pth")


def test_missing_key_is_named(tmp_path):
    sd = fake_torchvision_vgg16(VGGDeepLab(5, width=WIDTH))
    del sd["features.28.bias"]
    torch.save(sd, tmp_path / "vgg16.pth")
    with pytest.raises(CheckpointError, match=r"features\.28\.bias missing"):
        load_vgg16_imagenet(VGGDeepLab(5, width=WIDTH), tmp_path / "vgg16.pth")


class Malicious:
    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = Malicious()
    evil.marker = marker
    torch.save({"features.0.weight": evil}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_vgg16_imagenet(VGGDeepLab(5, width=WIDTH), tmp_path / "evil.pth")
    assert not marker.exists()
