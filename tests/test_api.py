"""The library-first Python API (segadapt.load_model, adapt_model, evaluate_model, Predictor, ModelCard) and the
pieces under it a notebook user meets: the model-spec parser and the contract's forward on wrapped models."""

import pytest
import torch

from segadapt.models import HookedModel
from segadapt.models.spec import model_kind
from tiny_hf import NUM_CLASSES, SEGFORMER, hf_net


def test_model_spec_parser_names_each_kind(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    odd = tmp_path / "pkg.mod:fn"  # an existing path wins over the factory form
    odd.mkdir()
    assert model_kind(run) == "segadapt" and model_kind(run / "model.safetensors") == "segadapt"
    assert model_kind(hf) == "hf_dir"
    assert model_kind("tiny_hf:small_cnn") == "factory"
    assert model_kind(str(odd)) == "segadapt"
    assert model_kind(tmp_path / "nowhere") == "missing"


def test_hooked_transformers_model_forward_is_logits_at_input_size():
    """A transformers model returns a SemanticSegmenterOutput (a Mapping with .logits at 1/4 size); behind
    HookedModel the contract's forward is plain logits at the input's size, which every probe reads."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    net = hf_net(SEGFORMER).eval()
    hooked = HookedModel(net, NUM_CLASSES)
    x = torch.randn(2, 3, 32, 48)
    out = hooked(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, NUM_CLASSES, 32, 48)
