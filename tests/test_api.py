"""The library-first Python API (segadapt.load_model, adapt_model, evaluate_model, Predictor, ModelCard) and the
pieces under it a notebook user meets: the model-spec parser and the contract's forward on wrapped models."""

from pathlib import Path

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


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The README's "Python API" example, as the README shows it (its first Python block under that heading)."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 9)]


def test_notebook_example_runs_in_ten_lines():
    """The README's example: adapt an in-memory module on in-memory pairs, score it, predict one image."""
    code = readme_example().strip()
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README example", "exec"), scope)
    result, h1, h2 = scope["result"], scope["h1"], scope["h2"]
    assert isinstance(h2, torch.nn.Module) and h2 is not h1
    assert result.losses and all(v == v for v in result.losses) and result.layers == {"pool5": 1.0}
    changed = [k for k, v in h2.state_dict().items() if not torch.equal(v, h1.state_dict()[k])]
    assert changed and all(h1p.requires_grad for h1p in h1.parameters())  # H2 trained; the caller's H1 untouched
    assert all(p.requires_grad for p in h2.parameters()) and not h2.training  # H2: an ordinary module, in eval
    assert scope["mask"].shape == (40, 56) and scope["mask"].max() < 3


def _pairs(n: int = 12, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    x1 = torch.randn(n, 3, size, size)
    return [(a, a + 0.3 * torch.randn_like(a)) for a in x1]


FAST = {"batch_size": 4, "device": "cpu", "holdout": 4, "probes": 1, "threads": 1}


def test_adapt_model_probes_a_transformers_model_wrapped_in_hookedmodel():
    """The issue's crash: a transformers model behind HookedModel trained, then failed at the first probe."""
    pytest.importorskip("transformers")
    import segadapt

    torch.manual_seed(0)
    h1 = HookedModel(hf_net(SEGFORMER), NUM_CLASSES)
    result = segadapt.adapt_model(h1, _pairs(), layers=["segformer.stages.1"] if "segformer.stages.1" in h1.TAPS
                                  else [h1.TAPS[3]], iterations=2, **FAST)
    assert result.probes and "agreement" in result.probes[0] and result.selected is not None
    assert result.model(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES, 32, 32)


def test_adapt_model_taps_a_bare_transformers_model_by_its_stages():
    pytest.importorskip("transformers")
    import segadapt

    torch.manual_seed(0)
    result = segadapt.adapt_model(hf_net(SEGFORMER), _pairs(), iterations=2, **FAST)
    assert list(result.layers) == ["stage4"] and result.card.arch == "hf"  # the adapter's default: the last stage


def test_load_model_reads_what_adapt_model_wrote(tmp_path):
    """A run made by adapt_model loads by its path (a built-in architecture: rebuilt from the card) and, for a
    module built in Python, into a module of its architecture; never a bare KeyError."""
    import segadapt
    from segadapt.errors import CheckpointError, ConfigError
    from segadapt.models import build_model

    torch.manual_seed(0)
    vgg = build_model("vgg16_deeplab", NUM_CLASSES, 0.0625)
    result = segadapt.adapt_model(vgg, _pairs(), iterations=2, out=tmp_path / "vgg", **FAST)
    with pytest.raises(ConfigError, match="not empty"):  # a second run never writes over the first
        segadapt.adapt_model(vgg, _pairs(), iterations=1, out=tmp_path / "vgg", **FAST)
    loaded = segadapt.load_model(tmp_path / "vgg")
    card = segadapt.card_of(loaded)
    assert card is not None and card.arch == "vgg16_deeplab" and card.width == 0.0625 and card.layers == {"pool5": 1.0}
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])

    hooked = HookedModel(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                             torch.nn.Conv2d(4, NUM_CLASSES, 1)), NUM_CLASSES)
    segadapt.adapt_model(hooked, _pairs(), layers=["1"], iterations=2, out=tmp_path / "plain", **FAST)
    with pytest.raises(CheckpointError, match="model=") as err:
        segadapt.load_model(tmp_path / "plain")
    assert "\n" not in str(err.value)
    again = segadapt.load_model(tmp_path / "plain", model=hooked)
    assert segadapt.card_of(again).arch == "module"
    assert not torch.equal(again.net[0].weight, hooked.net[0].weight)  # the adapted weights, not the template's


OLD_META = {  # a model file's metadata as segadapt wrote it before the card existed (no card_version)
    "arch": "vgg16_deeplab", "width": 0.25, "num_classes": 11, "class_names": ["sky"] * 11, "ignore_index": 11,
    "palette": [[0, 0, 0]] * 11, "dataset": "camvid", "step": 2000, "pixel_factor": None,
    "config": {"data": {"dataset": "camvid", "base_size": 240}}, "adapted_from": "/runs/h1",
    "layers": {"pool5": 1.0}, "objective": {"features": 1.0}, "h1_sha256": "abc",
}


def test_model_card_reads_old_metadata_and_round_trips(tmp_path):
    from segadapt.card import CARD_VERSION, ModelCard
    from segadapt.checkpoint import save_model
    from segadapt.errors import CheckpointError
    from segadapt.models import build_model

    card = ModelCard.from_meta(OLD_META)
    assert card.version == 0 and card.arch == "vgg16_deeplab" and card.width == 0.25 and card.records_run
    assert card.extra == {"h1_sha256": "abc"} and card.pixel_factor is None
    meta = card.to_meta()
    assert meta["card_version"] == CARD_VERSION and {k: v for k, v in meta.items() if k != "card_version"} == {
        k: v for k, v in OLD_META.items() if v is not None}  # nothing lost, nothing added but the version
    again = ModelCard.from_json(card.to_json())
    assert again.to_meta() == meta and again.version == CARD_VERSION
    save_model(tmp_path / "model.safetensors", build_model("vgg16_deeplab", 11, 0.0625), OLD_META | {"width": 0.0625})
    assert ModelCard.from_file(tmp_path).step == 2000 and ModelCard.from_file(tmp_path / "model.json").width == 0.0625
    with pytest.raises(CheckpointError, match="newer"):
        ModelCard.from_meta({**OLD_META, "card_version": CARD_VERSION + 1})


def test_predictor_from_path_needs_no_data_config(tmp_path):
    """A model file alone sets the predictor's classes, normalisation and scale (no DataConfig from a CLI)."""
    import numpy as np

    import segadapt
    from tiny import tiny_model_file

    tiny_model_file(tmp_path / "m.safetensors", base_size=24)
    pred = segadapt.Predictor.from_path(tmp_path / "m.safetensors")
    assert pred.num_classes == 11 and pred.base_size == 24 and pred.class_names[0] == "sky"
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = pred.predict(image, probabilities=True)
    assert out.mask.shape == (30, 40) and out.probabilities.shape == (11, 30, 40)
    assert np.allclose(out.probabilities.sum(0), 1, atol=1e-4)
    assert np.array_equal(out.mask, out.probabilities.argmax(0))


def test_evaluate_model_on_a_segadapt_dataset_matches_evaluate():
    import segadapt
    from segadapt.config import preset
    from segadapt.data import build_dataset
    from segadapt.evaluate import evaluate
    from segadapt.models import build_model

    cfg = preset("synthetic")
    cfg.data.synthetic_size, cfg.data.synthetic_val = [32, 48], 3
    ds = build_dataset(cfg.data, "val", train=False)
    torch.manual_seed(0)
    model = build_model("vgg16_deeplab", ds.info.num_classes, 0.0625)
    m = segadapt.evaluate_model(model, ds)
    s, conf = evaluate(model, ds, ds.info.num_classes, ds.info.ignore_index, torch.device("cpu"))
    assert m.miou == s.miou and m.confusion == conf.tolist() and m.class_names == list(ds.info.class_names)


def test_adapt_model_takes_a_generator_of_masked_pairs_and_refuses_mixed_ones():
    """(x1, x2, valid) triples from any iterable: the mask reaches the loss (a run with X2 valid nowhere
    but one corner differs from the unmasked one); pairs and triples mixed are one ConfigError line."""
    import segadapt
    from segadapt.errors import ConfigError
    from segadapt.models import build_model

    def triples(corner: bool):
        for x1, x2 in _pairs(8):
            valid = torch.zeros(1, 32, 32) if corner else torch.ones(1, 32, 32)
            valid[:, :8, :8] = 1
            yield x1, x2, valid

    torch.manual_seed(0)
    h1 = build_model("vgg16_deeplab", NUM_CLASSES, 0.0625)
    settings = {**FAST, "holdout": 0, "seed": 3}
    full = segadapt.adapt_model(h1, triples(False), iterations=2, **settings)
    corner = segadapt.adapt_model(h1, triples(True), iterations=2, **settings)
    assert full.losses and corner.losses and full.losses[0] != corner.losses[0]
    x = torch.stack([a for a, _ in _pairs(8)])
    lazy = segadapt.adapt_model(h1, torch.utils.data.TensorDataset(x, x + 0.1), iterations=1, **settings)
    assert lazy.losses  # a map-style Dataset of pairs, read as the loop draws them
    with pytest.raises(ConfigError, match="all"):
        segadapt.adapt_model(h1, [(torch.zeros(3, 8, 8),) * 2, (torch.zeros(3, 8, 8),) * 3], iterations=1)
    with pytest.raises(ConfigError, match="unknown setting 'batch'"):  # a typo is one line, not a silent default
        segadapt.adapt_model(h1, _pairs(4), batch=4)


def test_public_api_is_at_the_top_level_typed_and_documented():
    """`import segadapt` stays cheap (the API loads on first use) and every public name is documented."""
    import inspect
    import subprocess
    import sys

    import segadapt

    code = "import segadapt, sys; print('segadapt.api' in sys.modules, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]
    for name in segadapt.__all__:
        obj = getattr(segadapt, name)
        if callable(obj):
            assert inspect.getdoc(obj), name
    for fn in (segadapt.load_model, segadapt.adapt_model, segadapt.evaluate_model):
        assert "return" in fn.__annotations__


def test_load_model_reads_every_form_and_attaches_its_card(tmp_path):
    import segadapt
    from segadapt.errors import CheckpointError
    from tiny_hf import factory_model_file, hf_model_file

    spec = segadapt.load_model("tiny_hf:small_cnn", kwargs={"classes": NUM_CLASSES})
    assert segadapt.card_of(spec).arch == "factory" and not spec.training
    adapted = factory_model_file(tmp_path / "f")
    with pytest.raises(CheckpointError, match="trust"):  # a file alone never makes segadapt call code
        segadapt.load_model(adapted)
    trusted = segadapt.load_model(adapted, trust=["tiny_hf:small_cnn"])
    assert segadapt.card_of(trusted).factory["target"] == "tiny_hf:small_cnn"
    pytest.importorskip("transformers")
    hf = segadapt.load_model(hf_model_file(tmp_path / "hf"))
    card = segadapt.card_of(hf)
    assert card.arch == "hf" and card.hf_config and card.records_run
    assert hf(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES, 32, 32)


def test_distortion_protocol_is_a_library_call():
    """D1 and D2 scores of a model and the study's distortion between them, with no command line."""
    from segadapt.config import preset
    from segadapt.data import build_source
    from segadapt.distortion import measure_distortion
    from segadapt.errors import SegadaptError
    from segadapt.metrics import distortion
    from segadapt.models import build_model

    cfg = preset("synthetic")
    cfg.data.synthetic_size, cfg.data.synthetic_val = [32, 48], 3
    cfg.shift.filter, cfg.shift.severity = "ripple", 1.0
    classes = build_source(cfg.data, "val").info.num_classes
    torch.manual_seed(0)
    model = build_model("vgg16_deeplab", classes, 0.0625)
    r = measure_distortion(model, cfg, torch.device("cpu"), "val", model_classes=classes)
    expected = distortion(r.d1.mean_acc, r.d1.miou, r.d2.mean_acc, r.d2.miou)
    assert r.distortion == expected or (r.distortion != r.distortion and expected != expected)  # nan: D1 scored 0
    assert r.d1.pixels == r.d2.pixels > 0 and r.to_dict("m")["severity"] == 1.0 and r.search is None
    with pytest.raises(SegadaptError, match="classes"):
        measure_distortion(model, cfg, torch.device("cpu"), "val", model_classes=classes + 1)
