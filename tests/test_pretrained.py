"""ImageNet init from a torchvision-format VGG-16 dict, on a small synthetic dict shaped like the model."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from segadapt.errors import CheckpointError
from segadapt.models import PixelNet, VGGDeepLab
from segadapt.models.pretrained import (
    TORCHVISION_CONV_INDICES,
    convert_torchvision_vgg16,
    load_vgg16_imagenet,
    read_state_dict,
)

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
    report = load_vgg16_imagenet(model, path)
    assert len(report) == 13 * 2 + 4
    assert report[0] == "features.0.weight -> conv1.0.weight"
    assert "classifier.0.weight -> fc6.0.weight" in report
    assert torch.equal(model.conv1[0].weight, sd["features.0.weight"])
    assert torch.equal(model.conv3[4].weight, sd["features.14.weight"])  # conv3_3
    assert torch.equal(model.conv5[4].bias, sd["features.28.bias"])  # conv5_3
    c5 = model.fc6[0].weight.shape[1]
    fc6 = sd["classifier.0.weight"].reshape(-1, c5, 7, 7)
    assert torch.equal(model.fc6[0].weight, fc6[::4][:, :, ::3, ::3])
    assert torch.equal(model.fc6[0].weight[1, 2, 1, 2], fc6[4, 2, 3, 6])  # filter 4 -> 1, kernel taps 0/3/6
    assert torch.equal(model.fc6[0].bias, sd["classifier.0.bias"][::4])
    assert torch.equal(model.fc7[0].weight[:, :, 0, 0], sd["classifier.3.weight"][::4, ::4])
    assert torch.equal(model.fc7[0].bias, sd["classifier.3.bias"][::4])
    assert torch.equal(model.classifier.weight, classifier_before)  # stays freshly initialised


def test_every_conv_in_order(tmp_path):
    model = VGGDeepLab(5, width=WIDTH)
    sd = fake_torchvision_vgg16(model)
    torch.save(sd, tmp_path / "vgg16.pth")
    load_vgg16_imagenet(model, tmp_path / "vgg16.pth")
    blocks = [model.conv1, model.conv2, model.conv3, model.conv4, model.conv5]
    convs = [block[i] for block in blocks for i in range(0, len(block), 2)]  # (conv, ReLU) pairs
    assert len(convs) == 13
    for idx, conv in zip(TORCHVISION_CONV_INDICES, convs):
        assert torch.equal(conv.weight, sd[f"features.{idx}.weight"])
        assert torch.equal(conv.bias, sd[f"features.{idx}.bias"])


def test_real_vgg16_shapes_convert_at_paper_width():
    """The true torchvision shapes (fc6 is 4096 x 25088), on the meta device so nothing is allocated."""
    cfg = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    with torch.device("meta"):
        model = VGGDeepLab(21, width=1.0)
        sd = {}
        for idx, cin, cout in zip(TORCHVISION_CONV_INDICES, [3, *cfg[:-1]], cfg):
            sd[f"features.{idx}.weight"] = torch.empty(cout, cin, 3, 3)
            sd[f"features.{idx}.bias"] = torch.empty(cout)
        sd["classifier.0.weight"], sd["classifier.0.bias"] = torch.empty(4096, 25088), torch.empty(4096)
        sd["classifier.3.weight"], sd["classifier.3.bias"] = torch.empty(4096, 4096), torch.empty(4096)
    out = convert_torchvision_vgg16(sd, model, "vgg16.pth")
    assert len(out) == 30
    assert out["fc6.0.weight"][1].shape == (1024, 512, 3, 3)
    assert out["fc7.0.weight"][1].shape == (1024, 1024, 1, 1)


def test_safetensors_input(tmp_path):
    model = VGGDeepLab(5, width=WIDTH)
    sd = fake_torchvision_vgg16(model)
    save_file(sd, str(tmp_path / "vgg16.safetensors"))
    load_vgg16_imagenet(model, tmp_path / "vgg16.safetensors")
    assert torch.equal(model.conv2[0].weight, sd["features.5.weight"])
    (tmp_path / "vgg16.safetensors").rename(tmp_path / "misnamed.pth")  # recognised by content, not suffix
    load_vgg16_imagenet(VGGDeepLab(5, width=WIDTH), tmp_path / "misnamed.pth")


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


def test_other_files_are_refused_with_the_fix(tmp_path):
    model = VGGDeepLab(5, width=WIDTH)
    with pytest.raises(CheckpointError, match="not found"):
        load_vgg16_imagenet(model, tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors: unreadable"):
        load_vgg16_imagenet(model, tmp_path / "junk.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"<html>404</html>")
    with pytest.raises(CheckpointError, match="junk.pth: neither a torch.save file nor safetensors"):
        load_vgg16_imagenet(model, tmp_path / "junk.pth")
    torch.save({"state_dict": fake_torchvision_vgg16(model), "epoch": 3}, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match=r"ckpt\.pth: entries .*state_dict.* are not tensors"):
        load_vgg16_imagenet(model, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match="vgg16_deeplab"):
        load_vgg16_imagenet(PixelNet(5), tmp_path / "ckpt.pth")


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
    with pytest.raises(CheckpointError, match="evil.pth: refused") as err:
        load_vgg16_imagenet(VGGDeepLab(5, width=WIDTH), tmp_path / "evil.pth")
    assert not marker.exists()
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)  # one clean line


def test_a_truncated_download_is_called_corrupt_not_refused(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"corrupt or truncated torch\.save file \(.*\); download or export"):
        read_state_dict(path)


def test_non_finite_imagenet_weights_are_refused_naming_the_key(tmp_path):
    model = VGGDeepLab(5, width=WIDTH)
    sd = fake_torchvision_vgg16(model)
    sd["classifier.3.weight"][0, 0] = float("nan")  # row 0, column 0: kept by fc7's every-4th subsampling
    sd["classifier.6.weight"][:] = float("inf")  # fc8 is never loaded: not a reason to refuse
    torch.save(sd, tmp_path / "vgg16.pth")
    with pytest.raises(CheckpointError, match=r"vgg16\.pth: classifier\.3\.weight holds NaN or inf"):
        load_vgg16_imagenet(model, tmp_path / "vgg16.pth")


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_a_plain_pickle_is_refused_without_torchs_protocol_warning(tmp_path, protocol):
    """torch's weights-only unpickler warns about any pickle protocol but 2 before refusing: two lines of
    someone else's advice ahead of segadapt's one."""
    import pickle
    import warnings

    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"features.0.weight": torch.zeros(2)}, protocol=protocol))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="legacy.pth: refused"):
            read_state_dict(path)
    assert not caught, [str(w.message) for w in caught]


def test_init_weights_given_a_plain_pickle_prints_exactly_one_line(tmp_path):
    import pickle
    import subprocess
    import sys

    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"features.0.weight": torch.zeros(2)}))  # Python's default protocol
    cmd = [sys.executable, "-m", "segadapt", "train", "--preset", "synthetic", "--width", "1", "--iterations", "1",
           "--init-weights", str(path), "--out", str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"segadapt: error: {path}: refused: not a plain state dict"), line
