"""Every command's flags go through the one precedence (preset < --config < flags < --set), and each command
offers only the flags it uses."""

import json

import pytest

from segadapt.cli import build_parser, main, resolve_config
from segadapt.cli.common import FLAGS
from segadapt.config import load_toml, merge, parse_override
from segadapt.data.shifted import recorded_params

# command line prefix for each command with config flags (the required arguments it needs to parse)
COMMANDS = {
    "train": ["train"],
    "evaluate": ["evaluate", "--model", "m"],
    "adapt": ["adapt"],
    "peer": ["peer"],
    "experiment": ["experiment"],
    "demo": ["demo"],
    "shift": ["shift", "--out", "o"],
    "distortion": ["distortion", "--model", "m"],
    "viz features": ["viz", "features", "--h1", "a", "--h2", "b", "--out", "o"],
    "viz reconstruct": ["viz", "reconstruct", "--model", "m", "--out", "o"],
    "viz overlays": ["viz", "overlays", "--models", "H1=a", "--out", "o"],
    "doctor": ["doctor"],
    "predict": ["predict", "--model", "m", "--images", "i.png", "--out", "o"],
    "export": ["export", "--model", "m", "--format", "onnx", "--out", "o.onnx"],
    "config": ["config"],
}
# a flag value and a different --set value of the same key, per kind of flag
VALUES = {str: ("from_flag", "from_set"), int: ("3", "5"), float: ("0.25", "0.75")}
SPECIAL = {"layers": ("pool5", '["pool3"]'), "weights": ("0.5", "[2.0]"), "filter": ("cubism", '"ripple"'),
           "severity": ("0.9", "0.2"), "dataset": ("camvid", '"voc"'), "arch": ("pixel", '"vgg16_deeplab"'),
           "device": ("cpu", '"auto"'), "workers": ("1", "0"), "h1": ("x", '"/elsewhere/h1"'),
           "norm": ("adabn", '"keep"'), "h1_kwargs": ('{"a": 1}', "'{\"b\": 2}'"),
           "trust_factory": ("pkg.mod:fn", '["other.mod:fn"]'),
           "align": ("ecc", '"features"'), "method": ("tent", '"adabn"'),
           "objective": ("features,output_kl=0.5", "{entropy = 1.0}"), "weighting": ("normalised", '"uncertainty"'),
           "select": ("agreement", '"entropy"'), "precision": ("bf16", '"fp32"')}


def _cases():
    for command, prefix in COMMANDS.items():
        parser = build_parser()
        args = parser.parse_args(prefix + (["--filter", "ripple"] if command in ("shift", "distortion") else []))
        for dest, flag in args.config_flags.items():
            yield pytest.param(command, prefix, dest, flag.key, id=f"{command}--{dest}")


@pytest.mark.parametrize("command, prefix, dest, key", list(_cases()))
def test_set_wins_over_the_flag_for_every_command(command, prefix, dest, key):
    f = FLAGS[dest]
    flag_value, set_value = SPECIAL.get(dest) or VALUES[f.type]
    if f.type is str and dest not in SPECIAL:
        set_value = f'"{set_value}"'
    extra = ["--filter", "ripple"] if command in ("shift", "distortion") and dest != "filter" else []
    argv = [*prefix, *extra, f"--{dest.replace('_', '-')}", flag_value, "--set", f"{key}={set_value}"]
    with_set = resolve_config(build_parser().parse_args(argv))
    flag_only = resolve_config(build_parser().parse_args(argv[:-2]))
    expected = merge(flag_only, parse_override(f"{key}={set_value}"))
    assert value(flag_only, key) != value(expected, key), f"{command} --{dest}: the flag did not set {key}"
    assert value(with_set, key) == value(expected, key)


def value(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("command", ["doctor", "shift"])
def test_data_commands_offer_no_optimisation_flags(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for flag in ("--lr", "--iterations", "--batch-size", "--init-weights", "--width", "--arch", "--time-budget",
                 "--layers"):
        assert flag not in out, f"segadapt {command} --help offers {flag}"


TINY = ["--width", "0.125", "--iterations", "2", "--batch-size", "2", "--threads", "1",
        "--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
        "--set", "data.synthetic_train=8", "--set", "data.synthetic_val=2"]


@pytest.fixture(scope="module")
def h1(tmp_path_factory):
    run = tmp_path_factory.mktemp("h1") / "run"
    assert main(["train", "--preset", "synthetic", *TINY, "--out", str(run)]) == 0
    return run


def test_adapt_saves_the_layers_set_wins_over(h1, tmp_path):
    out = tmp_path / "h2"
    assert main(["adapt", "--h1", str(h1), "--filter", "ripple", "--layers", "pool5", "--set",
                 'adapt.layers=["pool3"]', "--iterations", "2", "--set", "adapt.holdout=0", "--out", str(out)]) == 0
    assert load_toml(out / "config.toml").adapt.layers == ["pool3"]
    assert list(json.loads((out / "adapt.json").read_text())["layers"]) == ["pool3"]


def test_distortion_reports_the_severity_set_wins_over(h1, tmp_path):
    out = tmp_path / "d.json"
    assert main(["distortion", "--model", str(h1), "--filter", "ripple", "--severity", "0.9",
                 "--set", "shift.severity=0.2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["severity"] == 0.2


def test_shift_writes_the_severity_set_wins_over(tmp_path):
    out = tmp_path / "d2"
    assert main(["shift", "--filter", "ripple", "--severity", "0.9", "--set", "shift.severity=0.2", "--split", "val",
                 "--set", "data.synthetic_val=2", "--set", "data.synthetic_size=[32, 48]", "--out", str(out)]) == 0
    assert recorded_params(out, "val")["severity"] == 0.2


def test_viz_overlays_take_the_filter_set_wins_over(h1, tmp_path, monkeypatch):
    from segadapt.data import d2

    seen = []
    real = d2.make_shift
    monkeypatch.setattr(d2, "make_shift", lambda name, *a, **k: seen.append(name) or real(name, *a, **k))
    assert main(["viz", "overlays", "--models", f"H1={h1}", "--filter", "cubism", "--set", 'shift.filter="ripple"',
                 "--images", "1", "--out", str(tmp_path / "v")]) == 0
    assert seen == ["ripple"]
