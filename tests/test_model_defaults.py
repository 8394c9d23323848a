"""Defaults follow the model (its taps, its own sizes) and the data's preset (its recipe), not the VGG/VOC
study's: adapt without --layers regresses the model's deepest stage, a preset's VGG width gives way to a
transformers config, and CamVid adapts at CamVid's rate."""

import json

import pytest
import torch

from segadapt.cli import build_parser, main, resolve_config
from segadapt.cli.adapt import adapt_base
from segadapt.cli.common import model_config
from segadapt.config import preset, read_toml, to_dict
from tiny_hf import SEGFORMER, hf_net

SIZE = ["--dataset", "synthetic", "--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
        "--set", "data.synthetic_train=4", "--set", "data.synthetic_val=2"]
STEPS = ["--iterations", "1", "--batch-size", "2", "--threads", "1", "--set", "adapt.holdout=0"]


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("segformer")
    torch.manual_seed(0)
    hf_net({**SEGFORMER, "num_labels": 7}).eval().save_pretrained(folder)
    return folder


def test_adapt_without_layers_regresses_the_models_deepest_stage(segformer_dir, tmp_path):
    out = tmp_path / "h2"
    assert main(["adapt", "--h1", str(segformer_dir), *SIZE, *STEPS, "--filter", "ripple", "--out", str(out)]) == 0
    assert read_toml(out / "config.toml")["adapt"]["layers"] == ["stage4"]
    assert json.loads((out / "adapt.json").read_text())["layers"] == {"stage4": 1.0}
    # and a transformers model's own objective, recorded: output-level terms, not the stage regression
    assert read_toml(out / "config.toml")["adapt"]["objective"] == {"output_kl": 1.0, "paired_pseudo": 1.0}


def test_the_vgg_adapts_by_its_measured_default_and_the_studys_regression_when_told(tmp_path):
    h1 = tmp_path / "h1"
    assert main(["train", *SIZE, "--width", "0.0625", "--iterations", "1", "--batch-size", "2", "--threads", "1",
                 "--out", str(h1)]) == 0
    assert main(["adapt", "--h1", str(h1), *SIZE, *STEPS, "--filter", "ripple", "--out", str(tmp_path / "h2")]) == 0
    assert read_toml(tmp_path / "h2" / "config.toml")["adapt"]["objective"] == {"output_kl": 1.0,
                                                                                "paired_pseudo": 1.0}
    assert main(["adapt", "--h1", str(h1), *SIZE, *STEPS, "--filter", "ripple", "--objective", "features",
                 "--out", str(tmp_path / "study")]) == 0
    assert read_toml(tmp_path / "study" / "config.toml")["adapt"]["objective"] == {"features": 1.0}
    # the presets that reproduce the study keep its regression
    assert preset("demo").adapt.objective == preset("study-camvid").adapt.objective == {"features": 1.0}


def test_a_model_without_stages_asks_for_layers_and_a_wrong_tap_is_one_readable_line(segformer_dir, tmp_path,
                                                                                     capsys):
    assert main(["adapt", "--h1", str(segformer_dir), *SIZE, *STEPS, "--filter", "ripple", "--layers", "pool5",
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown layer(s) pool5; HFSegmentation has stage1" in err and err.count("\n") == 1
    assert main(["adapt", "--h1", "tiny_hf:small_cnn", "--h1-kwargs", '{"classes": 7}', *SIZE, *STEPS,
                 "--filter", "ripple", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "no named stages to regress by default; pass --layers" in err and err.count("\n") == 1


def test_adapt_help_names_the_taps_of_every_family(capsys):
    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "stage1..stageN" in text and "pool1..pool5" in text and "default: its deepest stage" in text


def test_a_presets_vgg_width_gives_way_to_a_transformers_config(segformer_dir):
    def resolved(*flags):
        return resolve_config(build_parser().parse_args(["train", "--preset", "camvid", *flags]))

    assert resolved("--arch", f"hf:{segformer_dir}").model.width == 1.0  # the preset's 0.25 is VGG's
    assert resolved("--arch", f"hf:{segformer_dir}", "--width", "0.5").model.width == 0.5  # yours: refused later
    assert resolved().model.width == 0.25


def test_camvid_adapts_at_camvids_rate_whether_h1_records_a_run_or_not():
    camvid_h1 = {"arch": "vgg16_deeplab", "width": 0.25, "num_classes": 11, "config": to_dict(preset("camvid"))}
    assert adapt_base(camvid_h1, "h1").train.lr == 0.005
    external = {"arch": "hf", "width": 1.0, "num_classes": 11}
    args = build_parser().parse_args(["adapt", "--h1", "x", "--dataset", "camvid", "--filter", "ripple"])
    cfg = model_config(args, external, "x", lambda dataset: adapt_base(external, "x", dataset))
    assert (cfg.train.lr, cfg.train.iterations, cfg.adapt.grad_clip) == (0.005, 1000, 5.0)
    # the data settings are CamVid's preset's too, not the defaults' (321x321 crops, no base size)
    assert (cfg.data.base_size, cfg.data.crop_size, cfg.train.batch_size) == (240, [240, 320], 8)


def test_each_architectures_default_is_what_the_comparison_measured_best():
    """docs/results/compare.json (benchmarks/compare_camvid.py) names, per architecture whose three shifts have
    run, the label-free objective with the best mean recovery; the model contract must hand out that one."""
    from pathlib import Path

    from segadapt.models.contract import default_objective
    from segadapt.models.hf import HFSegmentation
    from segadapt.models.vgg_deeplab import VGGDeepLab

    doc = json.loads((Path(__file__).parents[1] / "docs" / "results" / "compare.json").read_text())
    measured = {a: o for a, o in doc.get("default_objectives", {}).items() if o is not None}
    for arch, model in (("vgg", VGGDeepLab), ("segformer", HFSegmentation)):
        if arch in measured:
            assert default_objective(model) == measured[arch], arch  # type: ignore[arg-type]
