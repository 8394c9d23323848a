"""Bring your own model, through the command line: every command that takes an H1 or a model runs on a tiny
transformers SegFormer or UperNet-ConvNeXt written with save_pretrained here, or on a factory model of
tiny_hf.py; the adapted model comes back in H1's own format (nothing is downloaded)."""

import json
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from segadapt import checkpoint as ckpt
from segadapt.cli import main
from segadapt.config import DataConfig, from_dict, preset, read_toml
from segadapt.data import build_source, make_transform
from segadapt.models.loading import load_model
from tiny_hf import SEGFORMER, UPERNET, SmallCNN, hf_net, trained_looking_cnn

transformers = pytest.importorskip("transformers", reason="HF models need transformers (pip install 'segadapt[hf]')")

CLASSES = 7  # the synthetic scenes' classes
SIZE = ["--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
        "--set", "data.synthetic_train=8", "--set", "data.synthetic_val=2"]
DATA = ["--dataset", "synthetic", *SIZE]
STEPS = ["--iterations", "2", "--batch-size", "2", "--threads", "1", "--set", "adapt.holdout=2",
         "--set", "adapt.probes=1"]
PREPROCESSOR = {"image_processor_type": "SegformerImageProcessor", "do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": True, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3]}
FAMILIES = {"segformer": SEGFORMER, "upernet": UPERNET}
KWARGS = json.dumps({"classes": CLASSES, "width": 6})


def _hf_dir(folder, raw):
    torch.manual_seed(0)
    hf_net({**raw, "num_labels": CLASSES}).eval().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return folder


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    return {name: _hf_dir(tmp_path_factory.mktemp(name), raw) for name, raw in FAMILIES.items()}


@pytest.fixture(scope="module")
def adapted(hf_dirs, tmp_path_factory):
    """family -> the run directory of `segadapt adapt` on that family's directory (the study's regression at
    stage2, 2 steps; not a transformers model's default objective, which trains the head too)."""
    runs = {}
    for name, folder in hf_dirs.items():
        run = tmp_path_factory.mktemp(f"adapt-{name}") / "run"
        assert main(["adapt", "--h1", str(folder), *DATA, *STEPS, "--filter", "ripple", "--layers", "stage2",
                     "--objective", "features", "--out", str(run)]) == 0
        runs[name] = run
    return runs


@pytest.fixture(scope="module")
def factory_weights(tmp_path_factory):
    """SmallCNN(7 classes, width 6) with BatchNorm statistics unlike a fresh one's, as .safetensors and .pth."""
    folder = tmp_path_factory.mktemp("factory")
    net = trained_looking_cnn(CLASSES, 6)
    save_file(net.state_dict(), str(folder / "h1.safetensors"))
    torch.save(net.state_dict(), folder / "h1.pth")
    return {"safetensors": folder / "h1.safetensors", "pth": folder / "h1.pth"}


def _val_images(run):
    """The val images as evaluate feeds them to the model: the run's own data transform (H1's mean/std)."""
    data = from_dict(DataConfig, json.loads((run / "model.json").read_text())["config"]["data"])
    source = build_source(data, "val")
    tf = make_transform(data, False, source.info.ignore_index)
    return torch.stack([tf.apply(source.load_image(i), None, None)[0] for i in range(len(source))])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_adapting_an_hf_directory_writes_a_from_pretrained_model_with_h1s_head(family, hf_dirs, adapted, capsys):
    h1_dir, run = hf_dirs[family], adapted[family]
    cfg = read_toml(run / "config.toml")
    assert cfg["adapt"]["h1"] == str(h1_dir.resolve()) and cfg["adapt"]["norm"] == "keep"
    assert cfg["data"]["mean"] == pytest.approx([0.4, 0.5, 0.6])  # H1's preprocessor, not ImageNet's
    for name in ("hf_model", "hf_model_selected"):
        assert (run / name / "config.json").is_file()
    for name in ("config.json", "preprocessor_config.json"):
        assert (run / "hf_model" / name).read_bytes() == (h1_dir / name).read_bytes()

    back = transformers.AutoModelForSemanticSegmentation.from_pretrained(run / "hf_model", local_files_only=True)
    assert main(["evaluate", "--model", str(run)]) == 0
    assert f"wrote {run / 'eval_synthetic_val.json'}" in capsys.readouterr().out
    used, meta = load_model(run)  # what evaluate scored
    assert meta["arch"] == "hf" and meta["image_mean"] == pytest.approx([0.4, 0.5, 0.6])
    x = _val_images(run)
    with torch.no_grad():
        theirs = F.interpolate(back.eval()(pixel_values=x).logits, size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        assert torch.allclose(theirs, used(x), atol=1e-5, rtol=0)

    h1_sd, h2_sd = load_file(str(h1_dir / "model.safetensors")), load_file(str(run / "hf_model" / "model.safetensors"))
    heads = [k for k in h1_sd if k.startswith(("decode_head.", "auxiliary_head."))]
    assert heads and all(torch.equal(h1_sd[k], h2_sd[k]) for k in heads)
    stage1 = [k for k in h1_sd if k.startswith(("segformer.encoder.block.0", "segformer.stages.0",
                                                 "backbone.encoder.stages.0"))]
    assert any(not torch.equal(h1_sd[k], h2_sd[k]) for k in stage1)  # what was adapted did change


def test_every_command_runs_on_an_hf_h1(hf_dirs, adapted, factory_weights, tmp_path, capsys):
    seg, run = str(hf_dirs["segformer"]), str(adapted["segformer"])
    assert main(["evaluate", "--model", seg, *DATA, "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["images"] == 2
    assert main(["distortion", "--model", seg, *DATA, "--filter", "ripple", "--out", str(tmp_path / "d.json")]) == 0
    assert main(["viz", "features", "--h1", seg, "--h2", run, *DATA, "--filter", "ripple", "--images", "1",
                 "--out", str(tmp_path / "f")]) == 0
    assert "stage1 (channel" in capsys.readouterr().out  # the model's stages are the default rows
    assert main(["viz", "reconstruct", "--model", seg, *DATA, "--steps", "2", "--out", str(tmp_path / "r")]) == 0
    assert main(["viz", "overlays", "--models", f"H1={seg},H2={run},F=tiny_hf:small_cnn", "--model-weights",
                 f"F={factory_weights['safetensors']}", "--model-kwargs", f"F={KWARGS}", *DATA, "--images", "1",
                 "--out", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o").glob("overlay_*.png"))) == 1
    capsys.readouterr()
    # an external H1 knows no dataset: a command that names none is refused in one line
    assert main(["evaluate", "--model", seg]) == 2
    err = capsys.readouterr().err
    assert "records no dataset settings" in err and "--dataset" in err and err.count("\n") == 1
    assert main(["viz", "features", "--h1", "tiny_hf:small_cnn", "--h1-weights", str(factory_weights["pth"]),
                 "--h1-kwargs", KWARGS, "--h2", run, *DATA, "--out", str(tmp_path / "f2")]) == 2
    assert "no named stages; pass --layers" in capsys.readouterr().err
    # the library entry point reads a directory too, with the preprocessor's normalisation
    from segadapt.viz.reconstruct import ReconstructConfig, reconstruct_image

    r = reconstruct_image(seg, torch.zeros(1, 3, 32, 48), tmp_path / "lib", ReconstructConfig(taps=["stage1"], steps=1))
    assert r["steps"] == 1 and r["size"] == [32, 48]


def test_an_adapted_hf_model_predicts_and_exports(adapted, tmp_path):
    """Deploying H2: the adapted SegFormer's model file goes through predict and both exports."""
    from PIL import Image

    from segadapt.data.synthetic import SyntheticScenes

    run = adapted["segformer"]
    image, _ = SyntheticScenes(1, (32, 48), split="val").load(0)
    Image.fromarray(image).save(tmp_path / "scene.png")
    assert main(["predict", "--model", str(run), "--images", str(tmp_path / "scene.png"),
                 "--out", str(tmp_path / "pred")]) == 0
    mask = Image.open(tmp_path / "pred" / "scene_mask.png")
    assert mask.size == (48, 32) and mask.mode == "P"
    for fmt, name in (("torchscript", "h2.pt"), ("onnx", "h2.onnx")):
        if fmt == "onnx":
            pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra")
        assert main(["export", "--model", str(run), "--format", fmt, "--out", str(tmp_path / name),
                     "--samples", str(tmp_path / "scene.png")]) == 0
        assert json.loads((tmp_path / f"{name}.json").read_text())["verification"]["agreement"] >= 0.999


def test_the_sweep_runs_on_an_hf_h1_with_b1_of_its_architecture(hf_dirs, tmp_path, capsys):
    from segadapt.experiment import sweep_h1
    from segadapt.models.hf_dir import load_hf_dir

    seg = str(hf_dirs["segformer"])
    sweep = tmp_path / "sweep"
    assert main(["experiment", "--h1", seg, *DATA, "--iterations", "2", "--batch-size", "2", "--threads", "1",
                 "--set", "experiment.iterations=2", "--set", 'experiment.layer_presets=["stage2"]',
                 "--set", "experiment.figure_images=1", "--set", "experiment.reconstruct_steps=1",
                 "--set", "adapt.holdout=2", "--set", "adapt.probes=1", "--out", str(sweep)]) == 0
    results = json.loads((sweep / "results.json").read_text())
    # the sweep adapts by the architecture's default objective, named in the row
    assert {e["method"] for e in results["summary"]} == {"H1", "B0", "B1", "B2", "H2:stage2+output_kl+paired_pseudo"}
    b1 = json.loads((sweep / "seed0" / "ripple" / "B1" / "model.json").read_text())
    assert b1["arch"] == "hf" and b1["hf_config"]["model_type"] == "segformer"  # a fresh SegFormer, not a VGG
    h1_sd = load_file(str(hf_dirs["segformer"] / "model.safetensors"))
    b1_sd, _ = ckpt.load_model_file(sweep / "seed0" / "ripple" / "B1")
    assert not torch.equal(b1_sd["net.decode_head.classifier.weight"], h1_sd["decode_head.classifier.weight"])
    assert (sweep / "figures" / "ripple" / "features").is_dir()
    assert read_toml(sweep / "config.toml")["data"]["mean"] == pytest.approx([0.4, 0.5, 0.6])
    # presets left at the VGG default become the model's own; another model's are refused before anything trains
    cfg = preset("synthetic")
    cfg.adapt.h1 = seg
    assert sweep_h1(cfg, torch.device("cpu"), load_hf_dir(seg))[0].experiment.layer_presets == [
        "stage1", "stage2", "stage3", "stage4", "all_inc", "all_dec"]
    capsys.readouterr()
    assert main(["experiment", "--h1", seg, *DATA, "--set", 'experiment.layer_presets=["pool5"]',
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "unknown 'pool5'" in err and "stage1" in err and err.count("\n") == 1


@pytest.mark.parametrize("family, code", [("segformer", 2), ("upernet", 0)])
def test_teacher_cache_refuses_global_attention_and_serves_convnext(family, code, hf_dirs, tmp_path, capsys):
    """A crop smaller than the frame: a window of the frame's maps is a crop's maps only for convolutions."""
    cache = tmp_path / "cache"
    args = ["adapt", "--h1", str(hf_dirs[family]), "--dataset", "synthetic", *STEPS, "--filter", "ripple",
            "--layers", "stage2", "--objective", "features",  # a cache holds maps, for the feature regression
            "--set", "data.synthetic_size=[64, 96]", "--set", "data.crop_size=[32, 48]",
            "--set", "data.synthetic_train=8", "--set", "data.synthetic_val=2",
            "--set", f"adapt.teacher_cache={cache}", "--out", str(tmp_path / "run")]
    assert main(args) == code
    err = capsys.readouterr().err
    if code:
        assert "not translation-equivariant" in err and "SegformerForSemanticSegmentation" in err
        assert err.count("\n") == 1 and not (tmp_path / "run").exists()
    else:
        assert (cache / "cache.json").is_file() and (tmp_path / "run" / "hf_model").is_dir()


@pytest.mark.parametrize("factory, weights", [("small_cnn", "safetensors"), ("dict_cnn", "pth")])
def test_a_factory_h1_adapts_and_comes_back_as_a_state_dict(factory, weights, factory_weights, tmp_path, capsys):
    spec, run = f"tiny_hf:{factory}", tmp_path / "run"
    assert main(["adapt", "--h1", spec, "--h1-weights", str(factory_weights[weights]), "--h1-kwargs", KWARGS,
                 *DATA, *STEPS, "--filter", "ripple", "--layers", "block", "--out", str(run)]) == 0
    cfg = read_toml(run / "config.toml")["adapt"]
    assert cfg["h1"] == spec and cfg["h1_weights"] == str(factory_weights[weights].resolve())  # a spec, not a path
    native = load_file(str(run / "factory_weights.safetensors"))
    fresh = SmallCNN(CLASSES, 6, as_dict=factory == "dict_cnn").eval()
    fresh.load_state_dict(native)  # strict: the factory's own module takes it as it is
    h1_sd = SmallCNN(CLASSES, 6).state_dict() | load_file(str(factory_weights["safetensors"]))
    assert all(torch.equal(native[k], h1_sd[k]) for k in h1_sd if k.startswith("head."))
    assert any(not torch.equal(native[k], h1_sd[k]) for k in h1_sd if k.startswith("stem."))
    assert json.loads((run / "model.json").read_text())["factory"]["target"] == spec

    capsys.readouterr()
    assert main(["evaluate", "--model", str(run)]) == 2  # a model file alone never makes segadapt run code
    assert f"--trust-factory {spec}" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(run), "--trust-factory", spec]) == 0
    used, _ = load_model(run, trusted_factories=[spec])
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        out = fresh(x)
        out = out["out"] if isinstance(out, dict) else out
        assert torch.equal(F.interpolate(out, size=(32, 48), mode="bilinear", align_corners=False), used(x))
    if factory == "small_cnn":  # an external H1's adaptation resumes from its own spec, weights and kwargs
        assert main(["adapt", "--resume", str(run), "--iterations", "3"]) == 0
        assert json.loads((run / "model.json").read_text())["step"] == 3


def test_norm_keep_holds_h1s_batchnorm_statistics_and_adabn_moves_them(factory_weights, tmp_path, capsys):
    h1_sd = load_file(str(factory_weights["safetensors"]))
    stats = {}
    for norm in ("keep", "adabn"):
        run = tmp_path / norm
        assert main(["adapt", "--h1", "tiny_hf:small_cnn", "--h1-weights", str(factory_weights["safetensors"]),
                     "--h1-kwargs", KWARGS, *DATA, *STEPS, "--filter", "ripple", "--layers", "block",
                     "--norm", norm, "--out", str(run)]) == 0
        stats[norm] = load_file(str(run / "factory_weights.safetensors"))
    running = [k for k in h1_sd if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(stats["keep"][k], h1_sd[k]) for k in running)
    below = [k for k in running if k.startswith(("stem.", "block."))]
    assert all(not torch.equal(stats["adabn"][k], h1_sd[k]) for k in below)  # re-estimated on D2
    assert all(torch.equal(stats["adabn"][k], h1_sd[k]) for k in running if k.startswith("head."))
    capsys.readouterr()
    assert main(["adapt", "--h1", "tiny_hf:small_cnn", "--h1-weights", str(factory_weights["safetensors"]),
                 "--h1-kwargs", KWARGS, *DATA, "--norm", "frozen", "--out", str(tmp_path / "bad")]) == 2
    assert "adapt.norm" in capsys.readouterr().err


def test_train_builds_transformers_models_from_scratch(hf_dirs, tmp_path):
    small = ["--iterations", "2", "--batch-size", "2", "--threads", "1", *SIZE]
    run = tmp_path / "segformer"
    assert main(["train", "--arch", "segformer_b0", "--width", "0.125", *small, "--out", str(run)]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["arch"] == "segformer_b0" and meta["hf_config"]["hidden_sizes"] == [4, 8, 20, 32]
    assert (run / "hf_model" / "config.json").is_file() and (run / "hf_model" / "preprocessor_config.json").is_file()

    config_only = tmp_path / "upernet-config"
    config_only.mkdir()
    shutil.copy(hf_dirs["upernet"] / "config.json", config_only)  # a config, no weights: a fresh model of it
    run = tmp_path / "upernet"
    assert main(["train", "--arch", f"hf:{config_only}", "--width", "1", *small, "--out", str(run)]) == 0
    shutil.rmtree(config_only)  # the model file rebuilds from its recorded config
    assert main(["evaluate", "--model", str(run)]) == 0
    assert json.loads((run / "model.json").read_text())["hf_config"]["model_type"] == "upernet"


def test_missing_transformers_is_one_line_with_the_install_command(hf_dirs, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    for argv in (["evaluate", "--model", str(hf_dirs["segformer"]), *DATA],
                 ["train", "--arch", "segformer_b0", *SIZE, "--out", str(tmp_path / "t")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "pip install 'segadapt[hf]'" in err and err.count("\n") == 1
