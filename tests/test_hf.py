"""transformers segmentation models as H1: tiny SegFormer and UperNet-ConvNeXt built from configs here,
written with save_pretrained into tmp_path and read back offline (nothing is downloaded)."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from segadapt import checkpoint as ckpt
from segadapt.errors import CheckpointError, ConfigError
from segadapt.losses import feature_regression_loss
from segadapt.models import build_model
from segadapt.models.contract import check_taps
from segadapt.models.hf import HFSegmentation, stage_weights
from segadapt.models.hf_dir import is_hf_dir, load_hf_dir, save_hf_dir, segformer_b0
from segadapt.models.loading import load_model
from segadapt.models.modes import set_norm_mode
from tiny_hf import NUM_CLASSES, SEGFORMER, UPERNET, hf_net

transformers = pytest.importorskip("transformers", reason="HF models need transformers (pip install 'segadapt[hf]')")

X = (2, 3, 64, 96)
PREPROCESSOR = {"image_processor_type": "SegformerImageProcessor", "do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": True, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3]}
FAMILIES = {"segformer": SEGFORMER, "upernet": UPERNET}


def _save(raw: dict, folder, preprocessor: dict | None = None):
    torch.manual_seed(0)
    net = hf_net(raw).eval()
    net.save_pretrained(folder)
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return net


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    """(family, directory, the transformers model that wrote it)."""
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, _save(FAMILIES[request.param], folder, PREPROCESSOR)


@pytest.fixture
def h1(saved) -> HFSegmentation:
    return load_hf_dir(saved[1])[0]


def test_loads_offline_with_the_preprocessor_normalisation(saved):
    family, folder, _ = saved
    model, meta = load_hf_dir(folder)
    assert is_hf_dir(folder) and isinstance(model, HFSegmentation) and not model.training
    assert model.num_classes == NUM_CLASSES and meta["num_classes"] == NUM_CLASSES
    assert meta["image_mean"] == pytest.approx([0.4, 0.5, 0.6]) and meta["image_std"] == pytest.approx([0.2, 0.25, 0.3])
    assert meta["hf_config"]["model_type"] == family


def test_mean_and_std_convert_from_0_255_pixels(tmp_path):
    _save(SEGFORMER, tmp_path, {"do_rescale": False, "image_mean": [123.675, 116.28, 103.53],
                                "image_std": [58.395, 57.12, 57.375]})
    meta = load_hf_dir(tmp_path)[1]
    assert meta["image_mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-6)
    assert meta["image_std"] == pytest.approx([0.229, 0.224, 0.225], abs=1e-6)


def test_stage_aliases_are_the_maps_the_decode_head_reads(saved, h1):
    family, _, net = saved
    x = torch.randn(X)
    got = h1.features(x, ["stage1", "stage2", "stage3", "stage4"])
    with torch.no_grad():
        if family == "segformer":
            want = net.segformer(x, output_hidden_states=True).hidden_states
        else:
            want = net.backbone(x).feature_maps
    for i, (tap, fmap) in enumerate(got.items()):
        stride = 2 ** (i + 2)
        assert fmap.shape == (2, (8, 16, 24, 32)[i], 64 // stride, 96 // stride)
        assert torch.allclose(fmap, want[i], atol=1e-6), tap


def test_token_sequences_come_back_as_nchw_maps(h1, saved):
    if saved[0] != "segformer":
        pytest.skip("ConvNeXt's maps are NCHW throughout")
    block = "segformer.stages.1.blocks.0"  # its forward returns (N, H*W, C) tokens
    raw = {}
    handle = h1.net.get_submodule(block).register_forward_hook(lambda _m, _i, out: raw.setdefault("t", out))
    fmap = h1.features(torch.randn(X), [block])[block]
    handle.remove()
    n, length, c = raw["t"].shape
    assert fmap.shape == (2, c, 8, 12) and length == 8 * 12
    assert torch.equal(fmap, raw["t"].transpose(1, 2).reshape(2, c, 8, 12))


def test_features_stop_after_the_deepest_tap(saved, h1):
    family = saved[0]
    later = ["segformer.stages.2", "decode_head"] if family == "segformer" else ["backbone.encoder.stages.2",
                                                                                 "decode_head", "auxiliary_head"]
    calls = []
    handles = [h1.net.get_submodule(m).register_forward_hook(lambda *_, m=m: calls.append(m)) for m in later]
    h1.features(torch.randn(X), ["stage1", "stage2"])
    for h in handles:
        h.remove()
    assert calls == []


def test_unknown_tap_is_one_line_naming_the_aliases(h1):
    with pytest.raises(ConfigError) as e:
        check_taps(h1, ["stage5"])
    msg = str(e.value)
    assert "\n" not in msg and "stage5" in msg and all(f"stage{i}" in msg for i in range(1, 5))
    assert "module paths" in msg and "all_inc" in msg
    with pytest.raises(ConfigError):
        h1.features(torch.randn(X), ["decode_head.no_such"])


def test_logits_are_hf_logits_upsampled_bilinearly(saved, h1):
    _, _, net = saved
    x = torch.randn(X)
    with torch.no_grad():
        own = F.interpolate(h1.net(pixel_values=x).logits, size=X[2:], mode="bilinear", align_corners=False)
        writer = F.interpolate(net(pixel_values=x).logits, size=X[2:], mode="bilinear", align_corners=False)
        got = h1(x)
    assert got.shape == (2, NUM_CLASSES, *X[2:]) and torch.equal(got, own)
    assert torch.allclose(got, writer, atol=1e-6)  # the model that wrote the directory, up to float rounding


def test_saved_back_loads_with_transformers_and_gives_identical_logits(saved, h1, tmp_path):
    _, folder, _ = saved
    with torch.no_grad():
        next(h1.net.get_submodule(h1.layout.stages[0]).parameters()).add_(0.01)  # an "adapted" H2
    dst = save_hf_dir(h1, folder, tmp_path / "hf_model")
    back = transformers.AutoModelForSemanticSegmentation.from_pretrained(dst, local_files_only=True).eval()
    x = torch.randn(X)
    with torch.no_grad():
        assert torch.equal(back(pixel_values=x).logits, h1.net(pixel_values=x).logits)
    for name in ("config.json", "preprocessor_config.json"):
        assert (dst / name).read_bytes() == (folder / name).read_bytes()
    assert torch.equal(load_hf_dir(dst)[0](x), h1(x))


def test_a_segadapt_model_file_of_an_hf_h1_rebuilds_without_the_directory(saved, h1, tmp_path):
    _, folder, _ = saved
    meta = load_hf_dir(folder)[1]
    ckpt.save_model(tmp_path / ckpt.MODEL_FILE, h1, {**meta, "step": 3})
    back, back_meta = load_model(tmp_path)
    x = torch.randn(X)
    assert isinstance(back, HFSegmentation) and back_meta["step"] == 3
    assert all(torch.equal(v, h1.state_dict()[k]) for k, v in back.state_dict().items())
    assert torch.allclose(back(x), h1(x), atol=1e-6)  # bit-equal weights; kernels may round differently


def _adapt_steps(h1: HFSegmentation, taps: list[str], norm: str, steps: int = 3) -> HFSegmentation:
    """A few steps of the method on random pairs: H2 regresses H1's maps at `taps`."""
    torch.manual_seed(1)
    student = copy.deepcopy(h1)
    trainable = student.parameters_up_to(taps)
    ids = {id(p) for p in trainable}
    for p in student.parameters():
        p.requires_grad_(id(p) in ids)
    opt = torch.optim.SGD(trainable, lr=0.5, momentum=0.9)
    set_norm_mode(student, norm, taps)
    for _ in range(steps):
        x1 = torch.randn(X)
        x2 = x1 + 0.3 * torch.randn(X)
        with torch.no_grad():
            target = h1.features(x1, taps)
        loss, _ = feature_regression_loss(target, student.features(x2, taps), dict.fromkeys(taps, 1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            student(x2)  # a whole forward in adaptation mode (a probe, say) must not move the head's statistics
    return student


@pytest.mark.parametrize("norm", ["keep", "adabn"])
def test_decode_head_stays_bit_identical_while_adapting_stage2(h1, norm):
    h2 = _adapt_steps(h1, ["stage2"], norm)
    before, after = h1.state_dict(), h2.state_dict()
    heads = tuple(f"net.{h}." for h in h1.layout.head)
    later = tuple(f"net.{s}." for s in h1.layout.stages[2:])
    first = f"net.{h1.layout.stages[0]}."
    assert any(k.startswith(heads) for k in before)
    for k in before:
        if k.startswith(heads + later):
            assert torch.equal(before[k], after[k]), k  # weights and BatchNorm statistics alike
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(first))


def test_parameters_up_to_stage2_hold_no_head_or_later_stage(h1):
    ids = {id(p) for p in h1.parameters_up_to(["stage1", "stage2"])}
    assert not ids & {id(p) for p in h1.head_parameters()}
    assert not ids & {id(p) for p in h1.net.get_submodule(h1.layout.stages[2]).parameters()}
    assert {id(p) for p in h1.net.get_submodule(h1.layout.stages[1]).parameters()} <= ids


def test_head_group_is_the_decode_head(h1):
    groups = h1.param_groups(0.01, 10.0)
    head = next(g for g in groups if g["lr"] == pytest.approx(0.1))
    assert {id(p) for p in head["params"]} == {id(p) for p in h1.head_parameters()}


def test_presets_weigh_the_four_stages_like_the_study():
    assert stage_weights(4) == (0.4, 0.6, 0.8, 0.9) and stage_weights(5) == (0.2, 0.4, 0.6, 0.8, 0.9)
    presets = segformer_b0(3, 0.125).layer_presets()
    assert presets["all"] == presets["all_inc"] == (("stage1", "stage2", "stage3", "stage4"), (0.4, 0.6, 0.8, 0.9))
    assert presets["all_dec"][1] == (0.9, 0.8, 0.6, 0.4) and presets["stage3"] == (("stage3",), (1.0,))


def test_segformer_b0_is_the_published_architecture():
    cfg = segformer_b0(150).net.config
    assert (cfg.hidden_sizes, cfg.depths, cfg.num_attention_heads) == ([32, 64, 160, 256], [2, 2, 2, 2], [1, 2, 5, 8])
    assert (cfg.sr_ratios, cfg.decoder_hidden_size, cfg.num_labels) == ([8, 4, 2, 1], 256, 150)
    assert build_model("segformer_b0", 4, 0.25).net.config.hidden_sizes == [8, 16, 40, 64]


def test_hf_arch_is_a_fresh_model_of_a_directory_config(saved):
    _, folder, net = saved
    model = build_model(f"hf:{folder}", 5)
    assert isinstance(model, HFSegmentation) and model.num_classes == 5
    assert type(model.net) is type(net)
    with pytest.raises(ConfigError, match="config.json"):
        build_model(f"hf:{folder}/nowhere", 5)


def test_unsupported_model_types_are_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "beit"}))
    with pytest.raises(CheckpointError) as e:
        load_hf_dir(tmp_path)
    assert "config.json" in str(e.value) and "SegFormer" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "config.json").write_text(json.dumps({**UPERNET, "backbone_config": {"model_type": "resnet"}}))
    with pytest.raises(CheckpointError, match="resnet backbone"):
        load_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**UPERNET, "use_pretrained_backbone": True}))
    with pytest.raises(CheckpointError, match="download"):
        load_hf_dir(tmp_path)


@pytest.mark.parametrize(("change", "cause"), [
    ({"depths": [1, 1]}, "IndexError"),  # shorter than num_encoder_blocks
    ({"num_attention_heads": [0, 2, 2, 4]}, "ZeroDivisionError"),
    ({"hidden_sizes": "8,16,24,32"}, "hidden_sizes"),  # a string where a list belongs
])
def test_a_config_transformers_cannot_build_is_one_line_from_the_cli(tmp_path, capsys, change, cause):
    """transformers checks configs only in part; what it raises while building is the file's fault, whatever
    its class: one line, exit 2, nothing written."""
    from segadapt.cli import main

    _save(SEGFORMER, tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**SEGFORMER, **change}))
    with pytest.raises(CheckpointError, match=cause) as e:
        load_hf_dir(tmp_path / "hf")
    assert str(tmp_path / "hf") in str(e.value) and "\n" not in str(e.value)
    capsys.readouterr()
    code = main(["evaluate", "--model", str(tmp_path / "hf"), "--dataset", "synthetic", "--set",
                 "data.synthetic_val=1", "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("segadapt: error:") == 1 and cause in err
    assert not (tmp_path / "e.json").exists()


def test_pickled_or_partial_weights_are_refused(tmp_path):
    _save(SEGFORMER, tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    dropped = sorted(sd)[0]
    save_file({k: v for k, v in sd.items() if k != dropped}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing or of the wrong shape"):
        load_hf_dir(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled"):
        load_hf_dir(tmp_path)


def test_adapt_runs_end_to_end_on_an_hf_h1(saved, tmp_path):
    """The method's loop as it is today, fed an HF H1: H2 is a model file that rebuilds, with H1's head."""
    from segadapt.adapt import adapt
    from segadapt.config import preset
    from segadapt.data import JointTransform
    from segadapt.data.pairs import PairedDataset, ShiftedSource
    from segadapt.data.synthetic import SyntheticScenes

    h1, meta = load_hf_dir(saved[1])
    d1 = SyntheticScenes(8, size=(32, 48))
    pairs = PairedDataset(d1, ShiftedSource(d1, lambda image, seed: image // 2),
                          JointTransform(train=True, crop_size=(32, 48), scale_range=(0.9, 1.1)))
    cfg = preset("synthetic")
    cfg.adapt.layers, cfg.adapt.objective = ["stage2"], {"features": 1.0}  # the study's regression (not the default)
    cfg.train.iterations, cfg.train.batch_size, cfg.train.lr, cfg.train.threads = 4, 4, 0.01, 1
    before = {k: v.clone() for k, v in h1.state_dict().items()}
    adapt(cfg, tmp_path, pairs, teacher=h1, h1_meta=meta)
    h2, h2_meta = load_model(tmp_path)
    after = h2.state_dict()
    heads = tuple(f"net.{h}." for h in h1.layout.head)
    assert isinstance(h2, HFSegmentation) and h2_meta["image_mean"] == meta["image_mean"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(heads))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(f"net.{h1.layout.stages[0]}."))
