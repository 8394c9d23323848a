"""predict and change across processes (torchrun, gloo): disjoint shares, one summary, re-runs after a failure."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segadapt import ranks
from segadapt.cli import main
from tiny import tiny_model_file
from tiny_colour import colour_model_file

NAMES = [f"img{i}.png" for i in range(5)]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    here = Path(__file__).parent
    env["PYTHONPATH"] = os.pathsep.join([str(here.parent / "src"), str(here), env.get("PYTHONPATH", "")])
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _torchrun(args, cwd, launch=("--standalone", "--nproc_per_node", "2"), **extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "segadapt", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(**extra), capture_output=True, text=True, timeout=300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in NAMES:
        Image.fromarray((rng.random((24 + 8 * (name < "img2"), 32, 3)) * 255).astype(np.uint8)).save(folder / name)
    return folder


def _masks(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*_mask.png"))}


def test_shares_are_disjoint_deterministic_and_cover_everything(monkeypatch):
    from segadapt import distributed

    items = list(range(11))
    seen = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        seen.append(ranks.share(items))
    assert sorted(sum(seen, [])) == items and seen[1] == [1, 4, 7, 10]


def test_two_processes_predict_byte_identical_masks_and_one_summary(tmp_path):
    model = tiny_model_file(tmp_path / "m.safetensors")
    images = _images(tmp_path / "images")
    one, two = tmp_path / "one", tmp_path / "two"
    os.environ["OMP_NUM_THREADS"] = "1"
    assert main(["predict", "--model", str(model), "--images", str(images), "--out", str(one)]) == 0
    r = _torchrun(["predict", "--model", str(model), "--images", str(images), "--out", str(two)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(_masks(one)) == 5 and _masks(two) == _masks(one)
    summary = json.loads((two / "predictions.json").read_text())
    assert [Path(e["input"]).name for e in summary["images"]] == NAMES and not summary["failed"]
    first = json.loads((one / "predictions.json").read_text())["images"]
    assert [e["class_fractions"] for e in summary["images"]] == [e["class_fractions"] for e in first]
    # two "nodes" on this machine: two torchrun launches meeting at 127.0.0.1
    nodes = tmp_path / "nodes"
    port = _free_port()
    cmd = ["predict", "--model", str(model), "--images", str(images), "--out", str(nodes)]
    launches = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                 "--node_rank", str(k), "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "segadapt",
                 *cmd] for k in (0, 1)]
    procs = [subprocess.Popen(c, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in launches]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert _masks(nodes) == _masks(one)
    assert len(json.loads((nodes / "predictions.json").read_text())["images"]) == 5


def test_a_failed_rank_leaves_the_others_outputs_and_a_rerun_completes_the_rest(tmp_path):
    model = colour_model_file(tmp_path / "crash", factory="crash_on_rank")
    images = _images(tmp_path / "images")
    out = tmp_path / "out"
    flag = tmp_path / "crash-now"
    flag.touch()
    args = ["predict", "--model", str(model), "--images", str(images), "--out", str(out),
            "--trust-factory", "tiny_colour:crash_on_rank"]
    r = _torchrun(args, tmp_path, CRASH_FLAG=str(flag), CRASH_RANK="1", CRASH_AFTER=str(out / "img4_mask.png"))
    assert r.returncode != 0
    # rank 0 (img0, img2, img4) finished its share; rank 1 (img1, img3) died at its first image
    assert sorted(_masks(out)) == ["img0_mask.png", "img2_mask.png", "img4_mask.png"]
    assert "3 of 5 images are finished" in r.stderr and "left: img1.png, img3.png" in r.stderr
    flag.unlink()
    r = _torchrun(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(_masks(out)) == 5 and "(3 already finished, kept)" in r.stdout
    assert not list(out.glob(".*.tmp"))  # the killed rank's temp file, removed by the re-run
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 5


def test_two_processes_share_the_pairs_of_change(tmp_path):
    model = colour_model_file(tmp_path / "colour")
    a, b = _images(tmp_path / "a"), _images(tmp_path / "b")
    args = ["change", "--model1", str(model), "--images1", str(a), "--model2", str(model), "--images2", str(b),
            "--trust-factory", "tiny_colour:colour_net", "--no-figure"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    r = _torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in NAMES:
        stem = name[:-4]
        assert (tmp_path / "two" / f"{stem}_change.png").read_bytes() == (tmp_path / "one" /
                                                                          f"{stem}_change.png").read_bytes()
    assert len(json.loads((tmp_path / "two" / "changes.json").read_text())["pairs"]) == 5


@pytest.fixture(autouse=True)
def _threads():
    before = os.environ.get("OMP_NUM_THREADS")
    yield
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before


def test_two_processes_write_the_same_shifted_dataset_as_one(tmp_path):
    args = ["shift", "--filter", "ripple", "--severity", "0.5", "--split", "val", "--workers", "1",
            "--set", "data.synthetic_val=5", "--set", "data.synthetic_size=[32, 48]"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    r = _torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len([k for k in one if k.endswith(".png")]) >= 5 and one == two  # images, labels and the marker


def _mosaic(path: Path, size=(300, 80)) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(1)
    data = (rng.random((3, *size)) * 150).astype(np.uint8)  # one channel well above the others: no near-ties
    np.put_along_axis(data, rng.integers(0, 3, (1, *size)), 220, axis=0)
    data[:, :20, :30] = 0  # nodata
    with rasterio.open(path, "w", driver="GTiff", height=size[0], width=size[1], count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000.0, 4100000.0, 0.5, 0.5), nodata=0) as ds:
        ds.write(data)
    return path


def test_row_bands_of_one_mosaic_across_ranks_give_the_one_process_outputs(tmp_path):
    model = colour_model_file(tmp_path / "colour")  # a 1x1 network: the bands' seams cannot show
    mosaic = _mosaic(tmp_path / "mosaic.tif", (1200, 40))  # taller than both bands with their context rows
    args = ["predict", "--model", str(model), "--images", str(mosaic), "--trust-factory", "tiny_colour:colour_net",
            "--confidence", "--entropy", "--overlay", "--tile", "64",
            "--precision", "fp32"]  # the ranks are subprocesses: on a bf16 CPU "auto" could time its way to bf16
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    r = _torchrun([*args, "--out", str(tmp_path / "two"), "--row-bands"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import rasterio

    for kind in ("mask", "confidence", "entropy", "overlay"):  # same pixels, georeferencing, nodata, colours
        name = f"mosaic_{kind}.tif"
        with rasterio.open(tmp_path / "one" / name) as a, rasterio.open(tmp_path / "two" / name) as b:
            pa, pb = dict(a.profile), dict(b.profile)
            assert str(pa.pop("nodata")) == str(pb.pop("nodata")) and pa == pb, name  # NaN != NaN
            if kind == "entropy":  # a sum over classes: its rounding follows the thread count (2 here, 1 a rank)
                assert np.allclose(a.read(), b.read(), rtol=1e-5, atol=1e-7, equal_nan=True)
            else:
                assert np.array_equal(a.read(), b.read(), equal_nan=True), name
            assert kind != "mask" or a.colormap(1) == b.colormap(1)
    entry = json.loads((tmp_path / "two" / "predictions.json").read_text())["images"][0]
    first = json.loads((tmp_path / "one" / "predictions.json").read_text())["images"][0]
    assert entry["row_bands"] == 2 and entry["class_fractions"] == pytest.approx(first["class_fractions"])
    assert entry["nodata_fraction"] == first["nodata_fraction"]
    assert not (tmp_path / "two" / ".predict" / "bands" / "mosaic").exists()  # removed once assembled
    r = _torchrun([*args, "--out", str(tmp_path / "two"), "--row-bands"], tmp_path)
    assert r.returncode == 0 and "(1 already finished, kept)" in r.stdout
