"""H1 from a Python factory: `package.module:function` + weights + JSON kwargs, the factories in tiny_hf.py."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from segadapt import checkpoint as ckpt
from segadapt.errors import CheckpointError, ConfigError
from segadapt.models.contract import SegmentationModel, check_taps
from segadapt.models.factory import (
    META_KEY,
    FactoryModel,
    is_factory_spec,
    load_factory,
    parse_kwargs,
    save_factory_weights,
)
from segadapt.models.loading import load_any, load_model, rebuild_meta
from tiny_hf import NUM_CLASSES, SmallCNN, trained_looking_cnn

X = (2, 3, 32, 48)


@pytest.fixture
def weights(tmp_path):
    """A trained-looking SmallCNN(width=6) saved as a plain safetensors state dict, and the module itself."""
    net = trained_looking_cnn(NUM_CLASSES, 6)
    save_file(net.state_dict(), str(tmp_path / "h1.safetensors"))
    return tmp_path / "h1.safetensors", net.eval()


def test_loads_from_a_string_spec_weights_and_kwargs(weights):
    path, net = weights
    model, meta = load_factory("tiny_hf:small_cnn", path, '{"width": 6}')
    x = torch.randn(X)
    want = F.interpolate(net(x), size=X[2:], mode="bilinear", align_corners=False)  # logits at half resolution
    assert isinstance(model, SegmentationModel) and not model.training
    assert torch.allclose(model(x), want) and model(x).shape == (2, NUM_CLASSES, *X[2:])
    assert meta["num_classes"] == NUM_CLASSES and meta["arch"] == "factory"
    assert meta["factory"]["target"] == "tiny_hf:small_cnn" and meta["factory"]["kwargs"] == {"width": 6}
    assert len(meta["factory"]["weights_sha256"]) == 64


def test_taps_are_module_paths_in_execution_order(weights):
    model = load_factory("tiny_hf:small_cnn", weights[0], {"width": 6})[0]
    assert model.TAPS.index("stem") < model.TAPS.index("block") < model.TAPS.index("head")
    assert model.features(torch.randn(X), ["block"])["block"].shape == (2, 6, 16, 24)
    with pytest.raises(ConfigError, match="did you mean block"):
        check_taps(model, ["blok"])


def test_dict_output_uses_out(weights):
    model = load_factory("tiny_hf:dict_cnn", weights[0], {"width": 6})[0]
    x = torch.randn(X)
    assert torch.allclose(model(x), F.interpolate(weights[1](x), size=X[2:], mode="bilinear", align_corners=False))


def test_pth_state_dicts_load_with_weights_only_and_pickled_code_is_refused(weights, tmp_path):
    path, net = weights
    torch.save(net.state_dict(), tmp_path / "h1.pth")
    model = load_factory("tiny_hf:small_cnn", tmp_path / "h1.pth", {"width": 6})[0]
    x = torch.randn(X)
    assert torch.allclose(model(x), load_factory("tiny_hf:small_cnn", path, {"width": 6})[0](x))
    torch.save(net, tmp_path / "whole.pth")  # a pickled module: loading it would run code
    with pytest.raises(CheckpointError, match="refused"):
        load_factory("tiny_hf:small_cnn", tmp_path / "whole.pth", {"width": 6})


def test_weights_that_do_not_fit_name_the_factory(weights):
    with pytest.raises(CheckpointError, match="do not fit tiny_hf:small_cnn") as e:
        load_factory("tiny_hf:small_cnn", weights[0], {"width": 8})
    assert "wrong shape" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("spec,message", [
    ("tiny_hf", "package.module:function"),
    ("tiny_hf:small_cnn:x", "package.module:function"),
    ("../tiny_hf:small_cnn", "package.module:function"),
    ("tiny_hf:small_cnn()", "package.module:function"),
    ("no_such_module_xyz:build", "PYTHONPATH"),
    ("tiny_hf:nothing_here", "no callable nothing_here"),
    ("tiny_hf:not_a_module", "not a torch.nn.Module"),
])
def test_bad_specs_are_one_clear_line(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        load_factory(spec)
    assert "\n" not in str(e.value)


def test_bad_kwargs_are_one_clear_line():
    for bad in ("{width: 6}", "[6]", '{"width": 6'):
        with pytest.raises(ConfigError, match="JSON"):
            parse_kwargs(bad)
    with pytest.raises(ConfigError, match=r"tiny_hf:small_cnn\(\*\*\{\"depth\": 3\}\) failed: TypeError"):
        load_factory("tiny_hf:small_cnn", kwargs={"depth": 3})


def test_spec_form():
    assert is_factory_spec("pkg.sub.mod:make_net") and is_factory_spec("mod:f")
    assert not is_factory_spec("runs/h1") and not is_factory_spec("model.safetensors") and not is_factory_spec("a:b.c")


def test_adapted_weights_are_a_state_dict_the_factory_module_loads(weights, tmp_path):
    model = load_factory("tiny_hf:small_cnn", weights[0], {"width": 6})[0]
    with torch.no_grad():
        model.net.stem[0].weight.add_(0.1)  # an "adapted" H2
    out = save_factory_weights(model, tmp_path / "h2.safetensors")
    fresh = SmallCNN(NUM_CLASSES, 6).eval()
    fresh.load_state_dict(load_file(str(out)))  # strict: no net. prefix, nothing missing
    x = torch.randn(X)
    assert torch.equal(fresh(x), model.net(x))
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()[META_KEY])["target"] == "tiny_hf:small_cnn"
    again = load_factory("tiny_hf:small_cnn", out, {"width": 6})[0]  # and it is an H1 again
    assert torch.equal(again(x), model(x))


def test_segadapt_prefixed_weights_are_accepted(weights, tmp_path):
    model = load_factory("tiny_hf:small_cnn", weights[0], {"width": 6})[0]
    ckpt.save_model(tmp_path / "model.safetensors", model, {"arch": "factory", "num_classes": 3, "width": 1.0})
    again = load_factory("tiny_hf:small_cnn", tmp_path / "model.safetensors", {"width": 6})[0]
    x = torch.randn(X)
    assert torch.equal(again(x), model(x))


def test_a_model_file_names_its_factory_but_runs_it_only_when_trusted(weights, tmp_path):
    model, meta = load_factory("tiny_hf:small_cnn", weights[0], {"width": 6})
    ckpt.save_model(tmp_path / ckpt.MODEL_FILE, model, {**meta, "step": 5})
    with pytest.raises(CheckpointError, match="--factory tiny_hf:small_cnn") as e:
        load_model(tmp_path)
    assert "runs that code" in str(e.value)
    back, back_meta = load_model(tmp_path, trusted_factories=["tiny_hf:small_cnn"])
    x = torch.randn(X)
    assert isinstance(back, FactoryModel) and torch.equal(back(x), model(x)) and back_meta["step"] == 5
    assert rebuild_meta(model)["factory"] == meta["factory"]


def test_load_any_dispatches_every_kind(weights, tmp_path):
    model, meta = load_any("tiny_hf:small_cnn", weights=weights[0], kwargs='{"width": 6}')
    assert isinstance(model, FactoryModel)
    ckpt.save_model(tmp_path / "run" / ckpt.MODEL_FILE, model, meta)
    assert isinstance(load_any(tmp_path / "run", trusted_factories=["tiny_hf:small_cnn"])[0], FactoryModel)
    with pytest.raises(ConfigError, match="not found"):
        load_any(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="go with a factory"):
        load_any(tmp_path / "run", weights=weights[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a run directory"):
        load_any(tmp_path / "empty")


def test_missing_transformers_is_one_install_line(monkeypatch):
    import sys

    from segadapt.models.hf import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(ConfigError) as e:
        require_transformers()
    assert "pip install 'segadapt[hf]'" in str(e.value) and "\n" not in str(e.value)
