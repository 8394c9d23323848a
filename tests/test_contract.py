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
from segadapt.models import ARCHS, HookedModel, SegmentationModel, build_model
from segadapt.models.contract import check_taps, deepest

NUM_CLASSES = 3
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


MODELS = {**{name: (lambda name=name: build_model(name, NUM_CLASSES, 0.125)) for name in ARCHS}, "hooked": _hooked}


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


def test_parameters_up_to_are_exactly_what_feeds_the_tap(model):
    x = torch.randn(X)
    for tap in model.TAPS:
        model.zero_grad(set_to_none=True)
        model.features(x, [tap])[tap].sum().backward()
        fed = {id(p) for p in model.parameters() if p.grad is not None}
        assert {id(p) for p in model.parameters_up_to(tap)} == fed, tap


def test_param_groups_hold_every_parameter_once(model):
    groups = model.param_groups(0.1, 10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(g["base_lr"] == g["lr"] for g in groups)
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
    m = build_model(arch, NUM_CLASSES, 0.125).eval()
    ckpt.save_model(tmp_path / ckpt.MODEL_FILE, m, {"arch": arch, "num_classes": NUM_CLASSES, "width": 0.125})
    back, meta = ckpt.load_model(tmp_path)
    x = torch.randn(X)
    assert meta["arch"] == arch and torch.equal(back(x), m(x))
