"""segadapt export: ONNX and TorchScript files with the normalisation inside, checked against PyTorch."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segadapt.cli import main
from segadapt.data.base import read_image
from segadapt.export import Normalised, samples_at_scale
from tiny import tiny_model_file
from tiny_hf import factory_model_file, hf_model_file


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "model.safetensors", base_size=120)


@pytest.fixture(scope="module")
def frames(camvid_root):
    files = sorted((camvid_root / "val" / "images").glob("*.jpg"))
    first, second = read_image(files[0]), read_image(files[50])
    return [first, second[:301, :397]]  # two sizes: the exported graph must not have fixed H/W


def reference(model_file, image):
    from segadapt.predict import load

    model, meta = load(model_file)
    cfg = meta["config"]["data"]
    x = samples_at_scale([image], cfg["base_size"])[0]
    with torch.no_grad():
        return Normalised(model, cfg["mean"], cfg["std"]).eval()(x), x


def test_onnx_export_agrees_with_pytorch_at_any_size(tmp_path, model_file, frames, camvid_root, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    files = sorted((camvid_root / "val" / "images").glob("*.jpg"))
    assert main(["export", "--model", str(model_file), "--format", "onnx", "--out", str(out),
                 "--samples", str(files[0]), str(files[7])]) == 0
    assert "argmax agreement" in capsys.readouterr().out
    report = json.loads((tmp_path / "model.onnx.json").read_text())
    assert report["verification"]["agreement"] >= 0.999 and report["base_size"] == 120
    info = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["segadapt"])
    assert info["class_names"][0] == "sky" and info["mean"] == [0.485, 0.456, 0.406]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for image in frames:
        logits, x = reference(model_file, image)
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == tuple(logits.shape)
        assert (got.argmax(1) == logits.numpy().argmax(1)).mean() >= 0.999
        assert np.abs(got - logits.numpy()).max() < 1e-3
    two = torch.cat([x, x.flip(3)])  # a batch of two: N is free as well
    assert session.run(None, {"image": two.numpy()})[0].shape[0] == 2


def test_torchscript_export_reloads_and_agrees(tmp_path, model_file, frames):
    out = tmp_path / "model.pt"
    assert main(["export", "--model", str(model_file), "--format", "torchscript", "--out", str(out)]) == 0
    extra = {"segadapt.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["segadapt.json"])["base_size"] == 120
    for image in frames:
        logits, x = reference(model_file, image)
        with torch.no_grad():
            got = loaded(x)
        assert (got.argmax(1) == logits.argmax(1)).float().mean() >= 0.999
        assert (got - logits).abs().max() < 1e-4


def test_a_failed_check_leaves_no_file(tmp_path, model_file, monkeypatch, capsys):
    import segadapt.export as export

    real = export.compare
    monkeypatch.setattr(export, "compare", lambda *a: {**real(*a), "agreement": 0.5})
    out = tmp_path / "model.pt"
    assert main(["export", "--model", str(model_file), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "export check failed" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_runtime_is_one_line_naming_the_extra(tmp_path, model_file, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_onnxruntime(name, *args, **kw):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    assert main(["export", "--model", str(model_file), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'segadapt[export]'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def export_cmd(model, fmt, out, *flags):
    return main(["export", "--model", str(model), "--format", fmt, "--out", str(out), *flags])


def test_logits_that_agree_in_argmax_but_not_in_size_are_refused(tmp_path, model_file, monkeypatch, capsys):
    """Argmax alone passes a graph whose logits are off by a factor; the relative bound does not."""
    import segadapt.export as export

    real = export._write_torchscript
    def scaled(*a):
        run = real(*a)
        return lambda x: run(x) * 1.5  # the same argmax everywhere, logits half as large again

    monkeypatch.setattr(export, "_write_torchscript", scaled)
    out = tmp_path / "model.pt"
    assert export_cmd(model_file, "torchscript", out) == 2
    err = capsys.readouterr().err
    assert "export check failed" in err and "100.000% of pixels" in err and "of the logits' scale" in err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(export, "_write_torchscript", real)
    assert export_cmd(model_file, "torchscript", out) == 0
    v = json.loads((tmp_path / "model.pt.json").read_text())["verification"]
    assert v["logit_tolerance"] == export.LOGIT_TOLERANCE and v["relative_logit_diff"] <= v["logit_tolerance"]
    assert v["max_abs_logit"] > 0 and "of the logits' scale" in capsys.readouterr().out


def test_a_failed_or_stopped_export_removes_the_folders_it_made(tmp_path, model_file, monkeypatch, capsys):
    import segadapt.export as export

    real = export.compare
    monkeypatch.setattr(export, "compare", lambda *a: {**real(*a), "agreement": 0.5})
    assert export_cmd(model_file, "torchscript", tmp_path / "new" / "deeper" / "model.pt") == 2
    assert list(tmp_path.iterdir()) == []

    def stop(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "compare", stop)
    assert export_cmd(model_file, "torchscript", tmp_path / "new" / "model.pt") == 130
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    assert export_cmd(model_file, "torchscript", tmp_path / "mine" / "model.pt") == 130
    assert list(tmp_path.iterdir()) == [tmp_path / "mine"] and list((tmp_path / "mine").iterdir()) == []


def test_a_sample_too_small_for_the_network_is_one_line(tmp_path, capsys):
    """A tiny SegFormer's first kernel is 8x8: a 1x1 sample frame cannot run, named in one line, exit 2."""
    from PIL import Image

    hf_model_file(tmp_path / "seg")
    Image.fromarray(np.full((1, 1, 3), 128, np.uint8)).save(tmp_path / "dot.png")
    assert export_cmd(tmp_path / "seg", "torchscript", tmp_path / "out" / "m.pt", "--samples",
                      str(tmp_path / "dot.png")) == 2
    err = capsys.readouterr().err
    assert f"cannot run on {tmp_path / 'dot.png'} (1x1" in err and "give larger --samples" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert len([ln for ln in err.splitlines() if ln.startswith("segadapt:")]) == 1


def test_an_adapted_factory_model_exports_with_trust_factory(tmp_path, capsys):
    factory_model_file(tmp_path / "h2")
    assert export_cmd(tmp_path / "h2", "torchscript", tmp_path / "h2.pt") == 2
    assert "--trust-factory tiny_hf:small_cnn" in capsys.readouterr().err
    assert export_cmd(tmp_path / "h2", "torchscript", tmp_path / "h2.pt", "--trust-factory", "tiny_hf:small_cnn") == 0
    assert export_cmd(tmp_path / "h2", "torchscript", tmp_path / "h2b.pt",
                      "--set", 'adapt.trust_factories=["tiny_hf:small_cnn"]') == 0


def test_onnx_export_writes_nothing_in_the_home_folder(tmp_path, model_file):
    """onnxruntime's telemetry writes a device id under ~/.cache at import unless it is turned off; run in a
    fresh process (an import in this one would already have happened) with an empty HOME."""
    import os
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    import segadapt

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "ORT_"))}
    src = str(Path(segadapt.__file__).parents[1])
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "segadapt", "export", "--model", str(model_file), "--format", "onnx",
                           "--out", str(tmp_path / "m.onnx")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.onnx").is_file() and list(home.rglob("*")) == []


def test_export_replaces_only_a_file_it_wrote(tmp_path, model_file, capsys):
    """A file at --out (or at its report's name) that export did not write is refused and left as it was;
    export's own earlier file is replaced, and its report names the new file's sha256."""
    out = tmp_path / "model.pt"
    argv = ["export", "--model", str(model_file), "--format", "torchscript", "--out", str(out)]
    out.write_bytes(b"my own model")
    assert main(argv) == 2
    assert out.read_bytes() == b"my own model" and not out.with_name("model.pt.json").exists()
    assert f"{out}: exists and was not written by segadapt" in capsys.readouterr().err
    out.unlink()
    out.with_name("model.pt.json").write_text('{"my": "notes"}')
    assert main(argv) == 2 and not out.exists()
    assert "model.pt.json: exists and is not a report segadapt export wrote" in capsys.readouterr().err
    out.with_name("model.pt.json").unlink()
    assert main(argv) == 0 and main(argv) == 0  # its own file, replaced
    from segadapt.models.factory import sha256_file

    report = json.loads(out.with_name("model.pt.json").read_text())
    assert report["files"]["model.pt"][0] == sha256_file(out)
