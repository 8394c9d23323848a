"""predict --runtime torch | onnxruntime | auto: the same network, outputs equal within float rounding."""

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from segadapt.cli import main
from segadapt.predict_runtime import Auto
from tiny import tiny_model_file


def test_auto_keeps_the_runtime_that_was_faster_on_the_first_batch(capsys):
    calls = {"slow": 0, "fast": 0}

    def slow(x):
        calls["slow"] += 1
        time.sleep(0.02)
        return x + 1

    def fast(x):
        calls["fast"] += 1
        return x + 1

    auto = Auto({"slow": slow, "fast": fast})
    x = torch.zeros(2, 3, 4, 4)
    assert torch.equal(auto(x), x + 1) and auto(x).shape == x.shape
    assert auto.report["chosen"] == "fast" and auto.report["seconds"]["slow"] > auto.report["seconds"]["fast"]
    assert calls == {"slow": 2, "fast": 3}  # each timed twice on the first batch, then the faster alone
    assert "runtime: fast" in capsys.readouterr().err


def test_each_runtime_gives_the_same_masks_and_auto_records_its_choice(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_model_file(tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((72, 96, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    conf = {}
    for runtime in ("torch", "onnxruntime", "auto"):
        out = tmp_path / runtime
        assert main(["predict", "--model", str(model), "--images", str(tmp_path / "a.png"), "--out", str(out),
                     "--tile", "48", "--confidence", "--runtime", runtime]) == 0
        conf[runtime] = np.asarray(Image.open(out / "a_confidence.png"), np.int16)
        summary = json.loads((out / "predictions.json").read_text())
        assert summary["runtime"]["asked"] == runtime
        assert runtime != "onnxruntime" or summary["runtime"]["chosen"] == "onnxruntime"
    auto = json.loads((tmp_path / "auto" / "predictions.json").read_text())["runtime"]
    assert auto["chosen"] in ("torch", "onnxruntime") and set(auto["seconds"]) == {"torch", "onnxruntime"}
    masks = {r: np.asarray(Image.open(tmp_path / r / "a_mask.png")) for r in conf}
    for r in ("onnxruntime", "auto"):
        assert (masks[r] == masks["torch"]).mean() > 0.999
        assert np.abs(conf[r] - conf["torch"]).max() <= 1  # confidence as 8-bit: within one level
