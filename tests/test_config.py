import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from segadapt.cli import build_parser, resolve_config
from segadapt.config import RunConfig, dumps_toml, load_toml, merge, parse_override, preset, to_dict, tomllib
from segadapt.errors import ConfigError


def test_voc_preset_has_the_study_values():
    cfg = preset("voc")
    assert (cfg.train.lr, cfg.train.momentum, cfg.train.poly_power) == (2.5e-4, 0.9, 0.9)
    assert (cfg.train.batch_size, cfg.train.iterations, cfg.model.width) == (10, 20000, 1.0)


def test_toml_round_trip(tmp_path):
    cfg = preset("camvid")
    cfg.data.class_names = ['a "quoted" name', "b"]
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(cfg))
    assert load_toml(path) == cfg


# Every control character TOML forbids raw, plus the two it escapes by hand and text beyond ASCII.
_AWKWARD = "".join(map(chr, range(0x20))) + '\x7f "quoted" back\\slash é 雪'


def _every_string_field(node: Any) -> Iterator[tuple[Any, str, Any]]:
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from _every_string_field(value)
        elif isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            yield node, f.name, value


def test_every_string_key_round_trips_every_control_character():
    """A pretty-printed --h1-kwargs (newlines, carriage returns) once made config.toml unreadable on --resume."""
    cfg = RunConfig()
    fields = list(_every_string_field(cfg))
    assert len(fields) > 20  # the walk reaches the nested tables
    for node, name, value in fields:
        setattr(node, name, [_AWKWARD, "b"] if isinstance(value, list) else _AWKWARD)
    text = dumps_toml(cfg)
    assert not any(ord(c) < 0x20 and c != "\n" for c in text)  # a raw control character is invalid TOML
    assert tomllib.loads(text) == to_dict(cfg)


def test_pretty_printed_kwargs_survive_the_saved_config(tmp_path):
    cfg = preset("camvid")
    cfg.adapt.h1_kwargs = '{\r\n  "width": 0.25,\n\t"num_classes": 11\n}'
    path = tmp_path / "config.toml"
    path.write_text(dumps_toml(cfg))
    assert load_toml(path) == cfg


def test_partial_toml_keeps_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.1\n")
    cfg = load_toml(path)
    assert cfg.train.lr == 0.1 and cfg.train.momentum == RunConfig().train.momentum


@pytest.mark.parametrize(
    "text, match",
    [
        ("[train]\nlrr = 0.1\n", "unknown key.*lrr"),
        ("[train]\nlr = 'fast'\n", "train.lr"),
        ("[train\n", "not valid TOML"),
    ],
)
def test_bad_toml_names_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_toml(path)
    assert "bad.toml" in str(e.value)


def test_overrides_and_precedence(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.1\niterations = 5\n")
    args = build_parser().parse_args(
        ["train", "--preset", "voc", "--config", str(path), "--iterations", "7", "--set", "data.crop_size=[64, 80]"]
    )
    cfg = resolve_config(args)
    assert cfg.train.lr == 0.1  # from file over preset
    assert cfg.train.iterations == 7  # flag over file
    assert cfg.data.crop_size == [64, 80]
    assert cfg.data.dataset == "voc"


def test_int_is_accepted_for_float_and_override_parsing():
    assert merge(RunConfig(), parse_override("train.lr=1")).train.lr == 1.0
    assert parse_override("data.root=some/path") == {"data": {"root": "some/path"}}
    with pytest.raises(ConfigError):
        parse_override("nonsense")


@pytest.mark.parametrize(("flags", "match"), [
    (["--iterations", "0"], r"train\.iterations: 0 is out of range; it must be >= 1"),
    (["--set", "train.momentum=1.5"], r"train\.momentum: 1\.5 .* in \[0, 1\)"),
    (["--lr", "-0.1"], r"train\.lr: -0\.1 .* > 0"),
    (["--set", "data.crop_size=[0,5]"], r"data\.crop_size"),
    (["--set", "experiment.seeds=[]"], r"experiment\.seeds"),
    (["--set", "train.channels_last=fast"], r"train\.channels_last: 'fast' .* true, false or \"auto\""),
    (["--set", "train.threads=99999999999"], r"train\.threads: 99999999999 is out of range"),
    (["--set", "data.base_size=100000000"], r"data\.base_size: 100000000 is out of range"),
])
def test_values_a_run_cannot_use_are_refused_up_front(flags, match):
    args = build_parser().parse_args(["train", "--preset", "synthetic", *flags])
    with pytest.raises(ConfigError, match=match):
        resolve_config(args)


def test_out_of_range_value_in_a_toml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nbatch_size = 0\n")
    with pytest.raises(ConfigError, match=r"bad\.toml\.train\.batch_size: 0 is out of range"):
        load_toml(path)


@pytest.mark.parametrize("name", ["mps", "meta", "cpu:3", "tpu", "cuda:0"])
def test_devices_other_than_cpu_and_cuda_are_refused_up_front(name):
    """mps or meta would fail mid-run with a traceback; cuda without a GPU is named as such."""
    import torch

    from segadapt.runtime import select_device

    if name == "cuda:0" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="device"):
        select_device(name)
    assert select_device("cpu").type == "cpu"


@pytest.mark.parametrize(("override", "key"), [
    ("model.width=1e308", "model.width"),  # OverflowError when the channel counts were computed
    ("model.width=1e400", "model.width"),  # TOML reads this as inf
    pytest.param(f"model.width={10**400}", "model.width", id="width-int-past-float"),  # too large for a float
    ("train.seed=99999999999999999999999", "train.seed"),  # ValueError from torch.manual_seed
    ("train.seed=-1", "train.seed"),
    ("data.synthetic_seed=-1", "data.synthetic_seed"),  # numpy's generators take no negative seeds
    (f"shift.seed={2**32}", "shift.seed"),
    ("experiment.seeds=[0, 99999999999999999999999]", "experiment.seeds"),
    ("shift.severity=nan", "shift.severity"),
    ("train.lr=inf", "train.lr"),
    ("train.time_budget_s=inf", "train.time_budget_s"),
    ("adapt.grad_clip=inf", "adapt.grad_clip"),
    ("shift.photometric=inf", "shift.photometric"),
    ("data.mean=[nan, 0.4, 0.4]", "data.mean"),
    ("adapt.weights=[1.0, -inf]", "adapt.weights"),
    ("train.batch_size=100000000000", "train.batch_size"),
    ("data.num_workers=100000", "data.num_workers"),
    (f"train.iterations={2**63}", "train.iterations"),  # past int64: torch and numpy cannot hold the step
])
def test_values_that_passed_the_check_and_then_crashed_are_refused(override, key):
    with pytest.raises(ConfigError, match=rf"^config\.{key}(\[\])?: ") as e:
        merge(RunConfig(), parse_override(override))
    assert "\n" not in str(e.value)


def test_the_largest_accepted_values_still_pass():
    cfg = merge(RunConfig(), {"model": {"width": 4}, "train": {"seed": 2**32 - 1, "batch_size": 65536},
                              "data": {"num_workers": 256}, "experiment": {"seeds": [0, 2**32 - 1]}})
    assert cfg.model.width == 4.0 and cfg.train.seed == 2**32 - 1


def test_channels_last_takes_true_false_or_auto():
    for raw, value in (("true", True), ("false", False), ("auto", "auto")):
        args = build_parser().parse_args(["train", "--preset", "synthetic", "--set", f"train.channels_last={raw}"])
        assert resolve_config(args).train.channels_last == value
