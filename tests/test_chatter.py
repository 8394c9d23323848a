"""Library chatter (rasterio's warnings, transformers' load report) is held back, so an error is one stderr line;
`--debug` lets it through."""

import logging
import warnings

import numpy as np
import pytest

from segadapt.cli import main
from segadapt.errors import CheckpointError
from tiny import tiny_model_file


class Records(logging.Handler):
    """What reaches a library logger's handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    log = logging.getLogger("transformers")
    records = Records()
    log.addHandler(records)
    yield records
    log.removeHandler(records)


def test_a_plain_png_given_as_a_raster_is_one_line(tmp_path, capfd):
    pytest.importorskip("rasterio")
    import cv2

    png = tmp_path / "plain.png"
    cv2.imwrite(str(png), np.zeros((40, 40, 3), np.uint8))
    h1 = tiny_model_file(tmp_path / "h1.safetensors")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as escaped:  # pytest would keep them off stderr: count them here
        warnings.simplefilter("always")
        assert main(["adapt", "--h1", str(h1), "--d1-raster", str(png), "--d2-raster", str(png),
                     "--out", str(tmp_path / "h2")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no georeferencing" in err[0] and str(png) in err[0]
    assert not [w for w in escaped if "Georeferenced" in type(w.message).__name__]


def test_a_transformers_load_report_is_held_back_unless_debug(tmp_path, capfd, transformers_log):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from tiny_hf import SEGFORMER, hf_net

    folder = tmp_path / "hf"
    hf_net(SEGFORMER).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    weights["extra.weight"] = weights.pop(sorted(weights)[0])  # one missing key, one unexpected: a report table
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    capfd.readouterr()
    args = ["evaluate", "--model", str(folder), "--dataset", "synthetic", "--out", str(tmp_path / "e.json")]
    assert main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights missing" in err[0]
    assert not transformers_log.messages
    with pytest.raises(CheckpointError):  # --debug: the traceback, and the library's own words
        main(["--debug", *args])
    assert any("LOAD REPORT" in m for m in transformers_log.messages)
