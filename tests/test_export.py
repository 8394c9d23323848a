"""segadapt export: ONNX and TorchScript files with the normalisation inside, checked against PyTorch."""

import json

import numpy as np
import pytest
import torch

from segadapt.cli import main
from segadapt.data.base import read_image
from segadapt.export import Normalised, samples_at_scale
from tiny import tiny_model_file


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
