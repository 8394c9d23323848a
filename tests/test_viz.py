"""Feature grids, overlays and the HTML report: files a person can open, with the numbers they claim."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from segadapt.data.palettes import CAMVID
from segadapt.models import VGGDeepLab
from segadapt.viz.features import pick_channel, regression_errors, write_feature_grids
from segadapt.viz.overlays import colorize, overlay_figure
from segadapt.viz.report import write_report


def tiny_models():
    torch.manual_seed(0)
    h1 = VGGDeepLab(3, width=0.0625).eval()
    h2 = VGGDeepLab(3, width=0.0625).eval()
    h2.load_state_dict(h1.state_dict())
    with torch.no_grad():
        h2.stages_up_to("pool1")[0][0].weight.mul_(1.5)  # H2 differs from H1 below pool1
    return h1, h2


def test_pick_channel_is_the_most_variable():
    maps = torch.zeros(2, 4, 5, 5)
    maps[:, 2] = torch.randn(2, 5, 5) * 3
    maps[:, 1] = torch.randn(2, 5, 5) * 0.1
    assert pick_channel(maps) == 2
    assert pick_channel([maps[:1], maps[1:, :, :3]]) == 2  # images of different sizes


def test_feature_grids_report_errors_and_write_pngs(tmp_path):
    h1, h2 = tiny_models()
    x1 = torch.randn(2, 3, 32, 48)
    x2 = x1 + 0.5 * torch.randn_like(x1)
    denorm = lambda x: (x.clamp(-1, 1).add(1).mul(127).byte().permute(1, 2, 0).numpy())  # noqa: E731
    same, pairs = list(zip(x1, x1)), list(zip(x1, x2))
    s = write_feature_grids(h1, h1, same, ["pool1", "pool3"], tmp_path / "same", denorm)
    assert all(v == 0 for e in s["errors"].values() for k in ("before", "after") for v in e[k])
    s = write_feature_grids(h1, h2, pairs, ["pool1", "pool3"], tmp_path / "f", denorm, names=["a", "b"],
                            channels={"pool3": 1})
    assert s["channels"]["pool3"] == 1 and s["files"] == ["features_a.png", "features_b.png"]
    assert all(v > 0 for e in s["errors"].values() for v in e["before"])
    for f in s["files"]:
        with Image.open(tmp_path / "f" / f) as im:
            assert im.size[0] > 500 and im.size[1] > 200
    assert json.loads((tmp_path / "f" / "features.json").read_text())["taps"] == ["pool1", "pool3"]
    with pytest.raises(ValueError, match="channel 99 out of range for pool1"):
        write_feature_grids(h1, h2, pairs, ["pool1"], tmp_path / "g", denorm, channels={"pool1": 99})


def test_feature_grids_take_pairs_of_different_sizes(tmp_path):
    """Evaluation keeps aspect ratios, so a split's images differ in size (VOC: landscape and portrait)."""
    h1, h2 = tiny_models()
    wide, tall = torch.randn(3, 32, 48), torch.randn(3, 48, 32)
    denorm = lambda x: (x.clamp(-1, 1).add(1).mul(127).byte().permute(1, 2, 0).numpy())  # noqa: E731
    s = write_feature_grids(h1, h2, [(wide, wide * 0.5), (tall, tall * 0.5)], ["pool1", "pool5"], tmp_path, denorm)
    assert len(s["files"]) == 2 and all(len(e["after"]) == 2 for e in s["errors"].values())
    assert pick_channel([torch.zeros(1, 2, 1, 1), torch.ones(1, 2, 1, 1)]) in (0, 1)  # one pixel: no nan


def test_regression_errors_are_the_loss_measure():
    a, b = torch.zeros(1, 2, 3, 3), torch.full((1, 2, 3, 3), 2.0)
    e = regression_errors({"t": {"h1_x1": a, "h1_x2": b, "h2_x2": a + 1}})
    assert e["t"] == {"before": [4.0], "after": [1.0]}


def test_colorize_uses_palette_and_blacks_out_ignored():
    mask = np.array([[0, 3], [11, 255]])
    rgb = colorize(mask, CAMVID, ignore_index=11)
    assert rgb[0, 0].tolist() == list(CAMVID[0]) and rgb[0, 1].tolist() == list(CAMVID[3])
    assert rgb[1, 0].tolist() == [0, 0, 0] and rgb[1, 1].tolist() == [0, 0, 0]


def test_overlay_has_one_panel_per_model_and_a_legend(tmp_path):
    image = np.full((24, 32, 3), 100, np.uint8)
    mask = np.zeros((24, 32), np.int64)
    mask[12:] = 1
    path = overlay_figure(image, mask, {"H1": mask * 0, "H2": mask}, ["road", "car"], CAMVID[:2], 255,
                          tmp_path / "o.png")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    # the car colour (legend + ground truth + H2 panel) appears; H1's panel is all road
    car = np.all(arr == np.array(CAMVID[1], np.uint8), axis=-1)
    assert car.sum() > 100


def fake_sweep(tmp_path):
    from segadapt.experiment import write_results

    rows = [{"seed": 0, "shift": "none", "method": "H1", "mean_acc": 0.8, "miou": 0.6, "pixel_acc": 0.9}]
    for m, v in (("B0", 0.3), ("B2", 0.5), ("H2:pool5", 0.52)):
        rows.append({"seed": 0, "shift": "ripple", "method": m, "mean_acc": v + 0.1, "miou": v, "pixel_acc": v + 0.2})
    from segadapt.experiment import summarise

    results = summarise(rows, ["ripple"]) | {"selection": [], "environment": {"torch": "x"}}
    write_results(results, tmp_path)
    fig = tmp_path / "figures" / "ripple" / "overlays"
    fig.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(fig / "overlay_a.png")
    return results


def test_report_embeds_table_plots_and_figures(tmp_path):
    fake_sweep(tmp_path)
    page = write_report(tmp_path).read_text()
    assert "H2:pool5" in page and "0.520" in page and "Distortion per shift" in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 3  # methods, layers, one overlay
    assert "Segmentations" in page and "ripple: overlay_a" in page


def test_report_refuses_a_directory_without_results(tmp_path):
    from segadapt.errors import SegadaptError

    with pytest.raises(SegadaptError, match="no results.json"):
        write_report(tmp_path)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.setAttribute("data-loaded", imgs.filter(i => i.complete && i.naturalWidth > 0).length);
  document.body.setAttribute("data-total", imgs.length);
});</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); CI installs it")
def test_report_images_load_in_headless_chromium(tmp_path):
    fake_sweep(tmp_path)
    page = write_report(tmp_path).read_text()
    probe = tmp_path / "probe.html"  # the report plus a script that counts the images that decoded
    probe.write_text(page.replace("</body>", PROBE))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom",
         probe.as_uri()], capture_output=True, text=True, timeout=120,
    )
    m = re.search(r'data-loaded="(\d+)" data-total="(\d+)"', out.stdout)
    assert m, out.stderr[-2000:]
    assert int(m.group(2)) == 3 and m.group(1) == m.group(2)


ENTRY = {"shift": "ripple", "method": "B0", "seeds": 1, "mean_acc": 0.4, "miou": 0.3, "pixel_acc": 0.5}


@pytest.mark.parametrize(("content", "expected"), [
    ({}, "missing 'summary'"),
    ([], "holds a list, not"),
    ({"summary": [{"shift": "ripple", "method": "B0", "seeds": 1}]}, "summary[0] lacks 'mean_acc', 'miou'"),
])
def test_viz_report_on_a_malformed_results_json_is_one_line(tmp_path, content, expected):
    """{} and [] used to raise KeyError/TypeError with a traceback: they are one line naming what is missing."""
    import sys

    (tmp_path / "results.json").write_text(json.dumps(content))
    r = subprocess.run([sys.executable, "-m", "segadapt", "viz", "report", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"segadapt: error: {tmp_path}/results.json: ") and expected in line, line
    assert "re-run segadapt experiment" in line and not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(("content", "expected"), [
    ({"summary": {"a": 1}}, "'summary' is an object, not a list"),
    ({"summary": [ENTRY, 3]}, "summary[1] is a number, not an object"),
    ({"summary": [ENTRY | {"miou": "high"}]}, "summary[0].miou is 'high', not a number"),
    ({"summary": [ENTRY | {"seeds": 2}]}, "summary[0] lacks 'mean_acc_std', 'miou_std', 'pixel_acc_std'"),
    ({"summary": [ENTRY | {"shift": 7}]}, "summary[0].shift is 7, not a string"),
    ({"summary": [ENTRY], "distortion": [0.1]}, "'distortion' is a list, not an object"),
    ({"summary": [ENTRY], "distortion": {"ripple": "x"}}, "distortion.ripple is 'x', not a number"),
    ({"summary": [ENTRY], "selection": [{"seed": 0}]}, "selection[0] lacks 'shift', 'method'"),
    ({"summary": [ENTRY], "environment": "cpu"}, "'environment' is a string, not an object"),
])
def test_report_names_what_is_wrong_in_results_json(tmp_path, content, expected):
    from segadapt.errors import SegadaptError

    (tmp_path / "results.json").write_text(json.dumps(content))
    with pytest.raises(SegadaptError, match=re.escape(expected)) as e:
        write_report(tmp_path)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{tmp_path}/results.json: ")


def test_report_accepts_what_experiment_writes_with_nan_as_null(tmp_path):
    """A score nothing was labelled for is nan, stored as null: shown as n/a, never compared with numbers."""
    summary = [ENTRY | {"miou": None}, ENTRY | {"method": "B2"}]
    (tmp_path / "results.json").write_text(json.dumps({"summary": summary, "distortion": {"ripple": None}}))
    page = write_report(tmp_path).read_text()
    assert "n/a" in page and '<tr class="best"><td>B2</td>' in page


BACKEND_CHECK = """
import importlib, pkgutil, sys
import matplotlib
matplotlib.use("pdf")  # a user's own choice, which segadapt must leave alone
import segadapt
for m in pkgutil.walk_packages(segadapt.__path__, "segadapt."):
    if ".cli" not in m.name and m.name != "segadapt.__main__":
        importlib.import_module(m.name)
assert matplotlib.get_backend() == "pdf", "import switched the backend to " + matplotlib.get_backend()
from segadapt.viz.plots import save_figure, subplots
fig, ax = subplots(figsize=(2, 2))
ax.plot([0, 1], [1, 0])
save_figure(fig, __import__("pathlib").Path(sys.argv[1]))
assert matplotlib.get_backend() == "pdf", "writing a figure switched the backend to " + matplotlib.get_backend()
"""


def test_segadapt_never_switches_matplotlibs_backend(tmp_path):
    """Importing any module, or writing a figure, keeps the backend a notebook user chose; PNGs still come out."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = tmp_path / "f.png"
    result = subprocess.run([sys.executable, "-c", BACKEND_CHECK, str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
