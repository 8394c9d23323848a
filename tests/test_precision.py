"""train.precision and --precision: bf16 autocast only where the CPU computes bf16 natively and a timed step on
the job's own model and batch is faster; the choice recorded in config.toml and kept by a resume."""

import csv
import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from segadapt import run as run_module
from segadapt import runtime, speed
from segadapt.config import RunConfig, dumps_toml, from_dict, load_toml, to_dict
from segadapt.errors import ConfigError
from segadapt.train import train
from tiny import tiny_model_file, tiny_train_config

CPU = torch.device("cpu")


def tiny(iterations: int = 2, checkpoint_every: int = 0) -> RunConfig:
    cfg = tiny_train_config(iterations, 0.0625, checkpoint_every, batch=2)
    cfg.train.channels_last = True
    return cfg


def cpu_with(monkeypatch, *features: str) -> None:
    monkeypatch.setattr(runtime, "cpu_features", lambda: set(features))


def timing_refused(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("timed where nothing was to be chosen")

    monkeypatch.setattr(run_module, "fastest_training", refuse)


def test_native_bf16_is_read_from_the_cpu_features(monkeypatch):
    cpu_with(monkeypatch, "avx2", "fma")
    assert runtime.cpu_native_bf16() is None
    cpu_with(monkeypatch, "avx512f", "avx512_bf16")
    assert runtime.cpu_native_bf16() == "avx512_bf16"
    cpu_with(monkeypatch, "amx_tile", "amx_bf16")
    assert runtime.cpu_native_bf16() == "amx_bf16"
    cpu_with(monkeypatch, "asimd", "bf16")  # Arm's /proc/cpuinfo Features
    assert runtime.cpu_native_bf16() == "bf16"


def test_auto_on_a_cpu_without_native_bf16_keeps_fp32_without_timing(tmp_path, monkeypatch):
    cpu_with(monkeypatch, "avx2", "avx512f")
    timing_refused(monkeypatch)
    cfg = tiny()
    assert cfg.train.precision == "auto"
    train(cfg, tmp_path / "run")
    assert load_toml(tmp_path / "run" / "config.toml").train.precision == "fp32"


def test_auto_on_a_cpu_with_native_bf16_times_both_and_records_the_pick(tmp_path, monkeypatch, capsys):
    cpu_with(monkeypatch, "avx512_bf16")
    timed: list[dict] = []
    real = run_module.fastest_training

    def spy(*args, **kwargs):
        picked, seconds = real(*args, **kwargs)
        timed.append({"picked": picked, "seconds": seconds})
        return picked, seconds

    monkeypatch.setattr(run_module, "fastest_training", spy)
    train(tiny(), tmp_path / "run")
    assert len(timed) == 1
    assert {v.precision for v in timed[0]["seconds"]} == {"fp32", "bf16"}
    assert all(v.channels_last for v in timed[0]["seconds"])  # a fixed layout is not timed
    recorded = load_toml(tmp_path / "run" / "config.toml").train
    assert recorded.precision == timed[0]["picked"].precision and recorded.channels_last is True
    assert "precision: " in capsys.readouterr().out


def test_deterministic_runs_keep_fp32_without_timing(tmp_path, monkeypatch):
    cpu_with(monkeypatch, "avx512_bf16")
    timing_refused(monkeypatch)
    cfg = tiny()
    cfg.train.deterministic = True
    train(cfg, tmp_path / "run")
    assert load_toml(tmp_path / "run" / "config.toml").train.precision == "fp32"


def test_a_resumed_run_keeps_the_recorded_precision_untimed(tmp_path, monkeypatch):
    """A run that settled on bf16 resumes in bf16, also when resumed with "auto" (as the sweep resumes its
    methods), and is not timed again."""
    cpu_with(monkeypatch, "avx512_bf16")
    monkeypatch.setattr(run_module, "fastest_training",
                        lambda model, shape, device, variants, repeats=2: (speed.Variant(True, "bf16"), {}))
    run = tmp_path / "run"
    train(tiny(iterations=2, checkpoint_every=1), run)
    assert load_toml(run / "config.toml").train.precision == "bf16"
    timing_refused(monkeypatch)
    used: list[str] = []
    real_autocast = speed.autocast
    monkeypatch.setattr("segadapt.train.autocast", lambda device, precision: used.append(precision)
                        or real_autocast(device, precision))
    train(tiny(iterations=4, checkpoint_every=1), run, resume=True)
    assert load_toml(run / "config.toml").train.precision == "bf16"
    assert used and set(used) == {"bf16"}


def test_a_run_from_before_train_precision_resumes_in_fp32(tmp_path, monkeypatch):
    """Its config.toml has no precision (read as "auto"); it trained in fp32 on CPU and goes on so, untimed."""
    run = tmp_path / "run"
    train(tiny(iterations=2, checkpoint_every=1), run)
    toml = run / "config.toml"
    toml.write_text("\n".join(ln for ln in toml.read_text().splitlines() if not ln.startswith("precision")))
    assert load_toml(toml).train.precision == "auto"
    cpu_with(monkeypatch, "avx512_bf16")
    timing_refused(monkeypatch)
    train(tiny(iterations=3, checkpoint_every=1), run, resume=True)
    assert load_toml(toml).train.precision == "fp32"


def test_bf16_training_runs_in_bf16_with_finite_losses(tmp_path):
    from segadapt.data import build_dataset
    from segadapt.train import create_model

    cfg = tiny(iterations=3)
    cfg.train.precision = "bf16"
    model = create_model(cfg, build_dataset(cfg.data, cfg.data.val_split, train=False).info.num_classes)
    dtypes: list[torch.dtype] = []
    model.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype) if m.training else None)
    train(cfg, tmp_path / "run", model=model)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    with (tmp_path / "run" / "log.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert load_toml(tmp_path / "run" / "config.toml").train.precision == "bf16"


def test_precision_round_trips_and_is_bounded(tmp_path):
    cfg = RunConfig()
    for value in ("auto", "fp32", "bf16"):
        cfg.train.precision = value
        (tmp_path / "config.toml").write_text(dumps_toml(cfg))
        assert load_toml(tmp_path / "config.toml").train.precision == value
    with pytest.raises(ConfigError, match=r"train\.precision.*one of auto, fp32, bf16"):
        from_dict(RunConfig, {**to_dict(RunConfig()), "train": {"precision": "fp16"}})


def test_precision_flag_reaches_the_config():
    from segadapt.cli import build_parser
    from segadapt.cli.common import resolve_config

    args = build_parser().parse_args(["train", "--preset", "synthetic", "--precision", "bf16"])
    assert resolve_config(args).train.precision == "bf16"


def labeller(fp32_s: float, bf16_s: float, disagree: float):
    """predict(precision) for choose_inference_precision: 1000 pixels, `disagree` of them labelled otherwise in
    bf16, each call taking the given seconds."""
    def predict(precision: str) -> torch.Tensor:
        time.sleep(fp32_s if precision == "fp32" else bf16_s)
        labels = torch.zeros(1000, dtype=torch.long)
        if precision == "bf16":
            labels[: round(disagree * 1000)] = 1
        return labels

    return predict


def test_inference_auto_without_native_bf16_is_fp32_untimed(monkeypatch):
    cpu_with(monkeypatch, "avx2")

    def never(precision):
        raise AssertionError("timed")

    assert speed.choose_inference_precision("auto", CPU, never).precision == "fp32"


def test_inference_auto_keeps_bf16_only_if_faster_and_agreeing(monkeypatch):
    cpu_with(monkeypatch, "avx512_bf16")
    fast = speed.choose_inference_precision("auto", CPU, labeller(0.03, 0.0, 0.001))
    assert fast.precision == "bf16" and fast.agreement == pytest.approx(0.999)
    assert fast.to_dict()["agreement_with_fp32"] == pytest.approx(0.999)
    off = speed.choose_inference_precision("auto", CPU, labeller(0.03, 0.0, 0.01))
    assert off.precision == "fp32" and off.agreement == pytest.approx(0.99) and "99.5%" in off.note
    slow = speed.choose_inference_precision("auto", CPU, labeller(0.0, 0.03, 0.0))
    assert slow.precision == "fp32" and "not faster" in slow.note


def test_predict_in_bf16_reports_its_agreement_with_fp32(tmp_path, capsys):
    from segadapt.cli import main

    model = tiny_model_file(tmp_path / "m.safetensors")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--model", str(model), "--images", str(image), "--out", str(tmp_path / "out"),
                 "--precision", "bf16"]) == 0
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["precision"]["precision"] == "bf16"
    assert 0.0 <= summary["precision"]["agreement_with_fp32"] <= 1.0
    assert "masks agree with fp32" in capsys.readouterr().out


def test_evaluate_in_bf16_records_the_precision_and_its_agreement(tmp_path, capsys):
    from segadapt.cli import main

    train(tiny(iterations=2), tmp_path / "run")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--precision", "bf16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["precision"]["precision"] == "bf16"
    assert 0.0 <= result["precision"]["agreement_with_fp32"] <= 1.0
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--out", str(out)]) == 0  # auto, no native bf16
    assert json.loads(out.read_text())["precision"] == {"precision": "fp32", "seconds": {},
                                                        "agreement_with_fp32": None, "note": ""}


def test_a_peer_runs_in_bf16_with_finite_losses(tmp_path):
    from segadapt.peers import run_peer
    from test_peers import bn_cnn, d2_images, peer_cfg

    cfg = peer_cfg("tent")
    cfg.train.precision = "bf16"
    run_peer(cfg, tmp_path, d2_images(4), teacher=bn_cnn(), h1_meta={"arch": "factory"})
    with (tmp_path / "log.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]
    assert losses and all(math.isfinite(v) for v in losses)
    assert load_toml(tmp_path / "config.toml").train.precision == "bf16"
