"""What the commands print: a config with a built-in dataset's real classes, a short summary before a run
(config.toml's path and what differs from the preset; nothing with --quiet), and progress bars that stay
readable off a terminal (no bar drawn inside another there)."""

import sys

import pytest

from segadapt.cli import main
from segadapt.config import RunConfig, from_dict, read_toml
from segadapt.data.datasets import CAMVID_CLASSES
from segadapt.errors import ConfigError

TINY = ["--width", "0.0625", "--iterations", "4", "--batch-size", "2", "--threads", "1",
        "--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
        "--set", "data.synthetic_train=4", "--set", "data.synthetic_val=2"]


def test_config_prints_camvids_classes_and_reads_them_back(tmp_path, capsys):
    from segadapt.data.datasets import check_class_keys

    assert main(["config", "--preset", "camvid"]) == 0
    (tmp_path / "c.toml").write_text(capsys.readouterr().out)
    printed = read_toml(tmp_path / "c.toml")
    assert printed["model"]["num_classes"] == printed["data"]["num_classes"] == 11
    assert printed["data"]["ignore_index"] == 11 and printed["data"]["class_names"] == list(CAMVID_CLASSES)
    cfg = from_dict(RunConfig, printed)
    check_class_keys(cfg.data)  # what config printed, a run accepts
    cfg.data.dataset = "voc"
    with pytest.raises(ConfigError, match="voc brings its own \\(21 classes, ignore index 255\\)"):
        check_class_keys(cfg.data)


def test_a_run_prints_where_its_config_is_and_what_differs_from_the_preset(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "synthetic", *TINY, "--out", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"config: {run / 'config.toml'} (preset synthetic, and 8 keys that differ from it:)"
    assert out[1:9] == ["  model.width = 0.0625", "  data.crop_size = [32, 48]", "  data.synthetic_size = [32, 48]",
                        "  data.synthetic_train = 4", "  data.synthetic_val = 2", "  train.iterations = 4",
                        "  train.batch_size = 2", "  train.threads = 1"]
    assert read_toml(run / "config.toml")["train"]["iterations"] == 4  # every key is still saved
    assert main(["adapt", "--h1", str(run), "--filter", "ripple", "--iterations", "1", "--set", "adapt.holdout=0",
                 "--quiet", "--out", str(tmp_path / "h2")]) == 0
    printed = capsys.readouterr()
    assert "config:" not in printed.out and "adapt " not in printed.err  # no summary, no progress bar
    assert printed.out.startswith("adaptation loss")


def test_progress_bars_are_not_drawn_inside_each_other_off_a_terminal(tmp_path, capsys):
    assert not sys.stderr.isatty()
    assert main(["train", *TINY, "--set", "train.eval_every=2", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "train:" in err and "\x1b[A" not in err  # the training bar, without cursor moves for validation's
