"""The model contract, checked the same way for every architecture in the registry (and the hook adapter).

A new entry in segadapt.models.ARCHS gets these tests for free; a model that breaks the contract (features
that run past the deepest tap, trainable parameters that are not what feeds it, optimiser groups that miss
or repeat a parameter) fails here rather than deep inside adaptation.
"""

import pytest
import torch
from torch import nn

from segadapt import checkpoint as ckpt
from segadapt.errors import ConfigError
from segadapt.models import ARCHS, NEEDS_TRANSFORMERS, HookedModel, SegmentationModel, build_model
from segadapt.models.contract import check_taps, deepest, measure_geometry, output_stride, preset_taps, tap_geometry
from segadapt.models.loading import load_model, rebuild_meta
from segadapt.models.vgg_deeplab import POOLS
from tiny_hf import SEGFORMER, UPERNET

NUM_CLASSES = 3
HF_REASON = "transformers models need the transformers package (pip install 'segadapt[hf]')"
X = (2, 3, 32, 48)


class Small(nn.Module):
    """A plain module with no contract of its own: served through HookedModel."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


def _hooked() -> HookedModel:
    return HookedModel(Small(), NUM_CLASSES, taps=["stem", "body", "head"], head="head")


def _registry(name: str):
    def build() -> SegmentationModel:
        if name in NEEDS_TRANSFORMERS:
            pytest.importorskip("transformers", reason=HF_REASON)
        return build_model(name, NUM_CLASSES, 0.125)

    return build


def _hf(raw: dict):
    def build() -> SegmentationModel:
        pytest.importorskip("transformers", reason=HF_REASON)
        from segadapt.models.hf_dir import build_from_config

        return build_from_config(raw, "tiny config")

    return build


def _factory() -> SegmentationModel:
    from segadapt.models.factory import load_factory

    return load_factory("tiny_hf:small_cnn", kwargs={"classes": NUM_CLASSES})[0]


MODELS = {**{name: _registry(name) for name in ARCHS}, "hooked": _hooked, "hf_segformer": _hf(SEGFORMER),
          "hf_upernet": _hf(UPERNET), "factory": _factory}


@pytest.fixture(params=sorted(MODELS))
def model(request) -> SegmentationModel:
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def test_implements_the_protocol(model):
    assert isinstance(model, SegmentationModel)
    assert model.num_classes == NUM_CLASSES and len(model.TAPS) >= 1


def test_forward_gives_logits_at_input_size(model):
    out = model(torch.randn(X))
    assert out.shape == (X[0], NUM_CLASSES, X[2], X[3])


def test_features_return_each_tap_asked_for(model):
    taps = list(model.TAPS[:2])
    f = model.features(torch.randn(X), taps)
    assert list(f) == taps and all(v.shape[0] == X[0] for v in f.values())


def test_features_stop_after_the_deepest_tap(model):
    if len(model.TAPS) < 2:
        pytest.skip("one tap: nothing after it")
    later = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]  # the last conv: above the first tap
    calls = []
    handle = later.register_forward_hook(lambda *_: calls.append(1))
    model.features(torch.randn(X), [model.TAPS[0]])
    handle.remove()
    assert calls == []


def _sample(taps: tuple[str, ...], most: int = 40) -> list[str]:
    """Every tap of a small model; for a wrapped network (a module path per layer) its short names (stage
    aliases) and an even spread of module paths, which keeps the check exhaustive in kind but not slow."""
    if len(taps) <= most:
        return list(taps)
    short = [t for t in taps if "." not in t]
    paths = [t for t in taps if "." in t]
    return short + paths[:: max(1, len(paths) // (most - len(short)))]


def test_parameters_up_to_are_exactly_what_feeds_the_tap(model):
    x = torch.randn(X)
    for tap in _sample(model.TAPS):
        model.zero_grad(set_to_none=True)
        model.features(x, [tap])[tap].sum().backward()
        fed = {id(p) for p in model.parameters() if p.grad is not None}
        assert {id(p) for p in model.parameters_up_to(tap)} == fed, tap


def test_param_groups_hold_every_parameter_once(model):
    groups = model.param_groups(0.1, 10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert {g["lr"] for g in groups} <= {0.1, 1.0}


def test_layer_presets_name_known_taps(model):
    for preset, (taps, weights) in model.layer_presets().items():
        assert len(taps) == len(weights) and set(taps) <= set(model.TAPS), preset
        assert deepest(model, taps) in taps


def test_unknown_tap_is_one_line_listing_the_valid_ones(model):
    with pytest.raises(ConfigError) as e:
        check_taps(model, ["no_such_layer"])
    assert "no_such_layer" in str(e.value) and model.TAPS[0] in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_registry_models_round_trip_through_a_model_file(arch, tmp_path):
    torch.manual_seed(0)
    m = _registry(arch)().eval()
    ckpt.save_model(tmp_path / ckpt.MODEL_FILE, m, {"arch": arch, "num_classes": NUM_CLASSES, "width": 0.125})
    back, meta = load_model(tmp_path)
    x = torch.randn(X)
    assert meta["arch"] == arch and torch.equal(back(x), m(x))


@pytest.mark.parametrize("name", ["hf_segformer", "hf_upernet", "factory"])
def test_wrapped_models_round_trip_through_a_model_file(name, tmp_path):
    """A model file records what rebuilds a wrapped network (HF config, factory spec), not just an arch name."""
    torch.manual_seed(0)
    m = MODELS[name]().eval()
    meta = {"arch": name, "num_classes": NUM_CLASSES, "width": 1.0, **rebuild_meta(m)}
    ckpt.save_model(tmp_path / ckpt.MODEL_FILE, m, meta)
    back, _ = load_model(tmp_path, trusted_factories=["tiny_hf:small_cnn"])
    x = torch.randn(X)
    assert type(back) is type(m) and torch.equal(back(x), m(x))


def test_tap_geometry_matches_the_maps(model):
    """Channels and stride of each preset tap (or each tap of a model without presets) agree with the maps its
    features give; measuring leaves the model's modes and gradients as they were."""
    taps = preset_taps(model) or list(model.TAPS[:3])
    model.train()
    geometry = tap_geometry(model, taps)
    assert model.training and all(p.grad is None for p in model.parameters())
    maps = model.features(torch.zeros(X), taps)
    for t in taps:
        g = geometry[t]
        assert g.channels == maps[t].shape[1], t
        assert (X[2] + g.stride - 1) // g.stride >= maps[t].shape[2] >= X[2] // g.stride - 1, t
        assert g.receptive_field is None or g.receptive_field >= g.stride


def test_vgg_geometry_is_its_layer_table():
    """The VGG's table, not a probe: pool5 sees 227 px at stride 8 (radius 113, as the loss docs say); the
    measured strides and channels agree, and a measured field never exceeds the table's."""
    vgg = build_model("vgg16_deeplab", NUM_CLASSES, 0.125).eval()
    table = tap_geometry(vgg, POOLS)
    assert [g.stride for g in table.values()] == [2, 4, 8, 8, 8] and table["pool5"].radius == 113
    measured = measure_geometry(vgg.features, POOLS, torch.device("cpu"))
    for t in POOLS:
        assert (measured[t].channels, measured[t].stride) == (table[t].channels, table[t].stride)
        assert 0 < measured[t].receptive_field <= table[t].receptive_field
    assert output_stride(vgg) == 8


def test_measured_geometry_of_a_plain_network():
    """Three centred 3x3 convolutions: fields of 3, 5 and 5 px (ReLU and 1x1 add none), stride 1; no presets,
    so predict aligns tiles to no grid."""
    hooked = _hooked()
    g = tap_geometry(hooked, ["stem", "body", "head"])
    assert [(x.channels, x.stride, x.receptive_field) for x in g.values()] == [(4, 1, 3), (4, 1, 5),
                                                                                 (NUM_CLASSES, 1, 5)]
    assert output_stride(hooked) == 1


def test_global_attention_has_no_bounded_field():
    segformer = _hf(SEGFORMER)().eval()
    g = tap_geometry(segformer, preset_taps(segformer))
    assert [x.stride for x in g.values()] == [4, 8, 16, 32] and g["stage4"].receptive_field is None
