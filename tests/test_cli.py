import json
import subprocess
import sys

import pytest

from segadapt.cli import main

TINY = [
    "--width", "0.125", "--iterations", "3", "--batch-size", "2", "--threads", "1",
    "--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
    "--set", "data.synthetic_train=8", "--set", "data.synthetic_val=2",
]


def test_train_then_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "synthetic", *TINY, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"config: {run / 'config.toml'}" in out and "train.iterations = 3" in out  # where, and what differs
    assert f"run: {run}" in out
    assert main(["evaluate", "--model", str(run)]) == 0
    result = json.loads((run / "eval_synthetic_val.json").read_text())
    assert result["images"] == 2 and len(result["class_iou"]) == 7
    assert main(["train", *TINY, "--out", str(run)]) == 2  # refuses to overwrite a run
    assert "already holds a run" in capsys.readouterr().err


def test_resume_can_extend_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--iterations", "5"]) == 0
    assert json.loads((run / "model.json").read_text())["step"] == 5
    # what it learns with stays: a new lr or momentum would be overruled by the checkpoint's optimizer state
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--iterations", "7", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.lr 0.02 -> 0.5" in err and "\n" not in err
    assert main(["train", "--resume", str(run), "--preset", "camvid"]) == 2
    assert "drop --preset" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--iterations", "4"]) == 2
    assert "already at step 5" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished at step 5" in capsys.readouterr().out
    assert json.loads((run / "model.json").read_text())["step"] == 5


def test_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    code = main(["train", "--dataset", "camvid", "--root", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("segadapt: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "missing" in err


@pytest.fixture(scope="module")
def h1_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("h1") / "run"
    assert main(["train", "--preset", "synthetic", *TINY, "--out", str(run)]) == 0
    return run


ADAPT = ["adapt", "--h1", "{h1}", "--filter", "ripple", "--iterations", "2"]
# case -> (arguments, with {tmp} and {h1} filled in; a piece of the one-line error)
BAD_INPUT = {
    "config is a folder": (["config", "--config", "{tmp}/dir.toml"], "is a directory"),
    "config is binary": (["config", "--config", "{tmp}/bin.toml"], "not a UTF-8 text file"),
    "--out is a folder": (["evaluate", "--model", "{h1}", "--out", "{tmp}/emptydir"], "is a folder; give the path"),
    "--out is a file": (["shift", *TINY[-4:], "--split", "val", "--filter", "ripple", "--out", "{tmp}/afile"],
                        "a file is where a folder is needed"),
    "unknown layer": ([*ADAPT, "--layers", "pool9", "--out", "{tmp}/a"], "unknown layer(s) pool9"),
    "weights not numbers": ([*ADAPT, "--weights", "abc", "--out", "{tmp}/a"], "--weights abc: expected float"),
    "negative weight": ([*ADAPT, "--layers", "pool5", "--weights", "-1", "--out", "{tmp}/a"], "each must be >= 0"),
    "binary pairs csv": ([*ADAPT, "--pairs", "{tmp}/bin.csv", "--out", "{tmp}/a"], "not a UTF-8 CSV"),
    "resume point as model": (["evaluate", "--model", "{h1}/checkpoints/step_0000003.safetensors"],
                              "a resume point, not a model"),
    "images not numbers": (["viz", "overlays", "--models", "H1={h1}", "--images", "abc", "--out", "{tmp}/v"],
                           "--images abc"),
    "duplicate model names": (["viz", "overlays", "--models", "H1={h1},H1={h1}", "--out", "{tmp}/v"],
                              "each NAME once"),
    "negative doctor limit": (["doctor", "synthetic", "--limit", "-1"], "--limit -1"),
    "unknown sweep filter": (["experiment", "--preset", "demo", "--set", 'experiment.filters=["nope"]',
                              "--out", "{tmp}/ex"], "experiment.filters: unknown 'nope'"),
    "mean of two numbers": (["config", "--set", "data.mean=[1,2]"], "data.mean"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gets_one_line_and_leaves_nothing(case, tmp_path, h1_run, capsys):
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "afile").write_text("x")
    for name in ("bin.toml", "bin.csv"):
        (tmp_path / name).write_bytes(bytes(range(128, 256)))
    template, expected = BAD_INPUT[case]
    args = [a.format(tmp=tmp_path, h1=h1_run) for a in template]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("segadapt: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial output


def test_overlays_refuse_a_model_of_other_classes(tmp_path, h1_run, camvid_copy, capsys):
    root = tmp_path / "camvid"
    camvid_copy(root, 1)
    args = ["viz", "overlays", "--models", f"H1={h1_run}", "--images", "1", "--dataset", "camvid", "--root",
            str(root), "--out", str(tmp_path / "v")]
    assert main(args) == 2
    assert "model predicts 7 classes but camvid has 11" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_bad_model_file(tmp_path, capsys):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a model")
    assert main(["evaluate", "--model", str(bad)]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "segadapt.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "evaluate" in out.stdout and "demo" in out.stdout


def test_adapt_then_evaluate(tmp_path, monkeypatch, capsys):
    from segadapt.data import d2

    monkeypatch.setattr(d2, "_apply_filter", lambda name, sev, img, seed, base_size=0: img[:, ::-1].copy())
    h1 = tmp_path / "h1"
    assert main(["train", *TINY, "--out", str(h1)]) == 0
    h2 = tmp_path / "h2"
    code = main(["adapt", "--h1", str(h1), "--layers", "pool2,pool3", "--weights", "0.5,1", "--filter", "mirror",
                 "--iterations", "2", "--batch-size", "2", "--threads", "1", "--out", str(h2)])
    assert code == 0
    assert json.loads((h2 / "model.json").read_text())["layers"] == {"pool2": 0.5, "pool3": 1.0}
    assert main(["evaluate", "--model", str(h2)]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_adapt_from_image_folder_reports_missing_pair(tmp_path, capsys):
    from PIL import Image

    h1 = tmp_path / "h1"
    assert main(["train", *TINY, "--out", str(h1)]) == 0
    d2 = tmp_path / "d2"
    d2.mkdir()
    Image.new("RGB", (48, 32)).save(d2 / "synthetic_train_000000.png")  # only one of the 8 D1 scenes
    assert main(["adapt", "--h1", str(h1), "--d2-dir", str(d2), "--out", str(tmp_path / "h2")]) == 2
    assert "no D2 image with stem 'synthetic_train_000001'" in capsys.readouterr().err


def test_distortion_command(tmp_path, capsys):
    h1 = tmp_path / "h1"
    assert main(["train", *TINY, "--out", str(h1)]) == 0
    out = tmp_path / "d.json"
    assert main(["distortion", "--model", str(h1), "--filter", "photocopy", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    d1, d2 = r["d1"], r["d2"]
    expected = 0.5 * (abs(d1["mean_acc"] - d2["mean_acc"]) / d1["mean_acc"] + abs(d1["miou"] - d2["miou"]) / d1["miou"])
    assert abs(r["distortion"] - expected) < 1e-12
    assert "distortion = " in capsys.readouterr().out


def test_shift_writes_paired_dataset_and_resumes(tmp_path, camvid_copy, capsys):
    import numpy as np
    from PIL import Image

    # a 3-image CamVid-layout copy keeps the test fast; the real sample is only read
    root = tmp_path / "camvid"
    stems = camvid_copy(root, 3)
    out = tmp_path / "d2"
    args = ["shift", "--dataset", "camvid", "--root", str(root), "--split", "val", "--filter", "ripple",
            "--workers", "2", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.stem for p in (out / "val" / "images").iterdir()) == stems
    for s in stems:  # labels are D1's, unchanged; images are shifted
        assert (out / "val" / "labels" / f"{s}.png").read_bytes() == (root / "val" / "labels" / f"{s}.png").read_bytes()
        a = np.asarray(Image.open(out / "val" / "images" / f"{s}.jpg")).astype(int)
        b = np.asarray(Image.open(root / "val" / "images" / f"{s}.jpg")).astype(int)
        assert a.shape == b.shape and np.abs(a - b).mean() > 2
    # resume: a deleted image is rewritten, existing ones are kept as they are
    kept = (out / "val" / "images" / f"{stems[0]}.jpg").stat().st_mtime_ns
    (out / "val" / "images" / f"{stems[1]}.jpg").unlink()
    assert main(args) == 0
    assert (out / "val" / "images" / f"{stems[1]}.jpg").exists()
    assert (out / "val" / "images" / f"{stems[0]}.jpg").stat().st_mtime_ns == kept
    assert not list(out.rglob("*.tmp"))
    # a run stopped between an image and its label: the label alone is written on resume
    (out / "val" / "labels" / f"{stems[2]}.png").unlink()
    assert main(args) == 0
    assert (out / "val" / "labels" / f"{stems[2]}.png").read_bytes() == (
        root / "val" / "labels" / f"{stems[2]}.png").read_bytes()
    # other parameters into the same folder are refused
    assert main([*args[:-2], "--severity", "0.9", "--out", str(out)]) == 2
    assert "other parameters" in capsys.readouterr().err


def test_adapt_starts_from_h1_settings_and_says_what_to_run_next(tmp_path, h1_run, capsys):
    out = tmp_path / "a"
    assert main(["adapt", "--h1", str(h1_run), "--filter", "ripple", "--iterations", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = (out / "config.toml").read_text()
    assert 'name = "adapt"' in saved and "batch_size = 2" in saved  # H1 ran with --batch-size 2
    assert f"segadapt distortion --model {out} --filter ripple" in printed
    assert main(["evaluate", "--model", str(out), "--set", "data.synthetic_val=3"]) == 0
    assert (out / "eval_synthetic_val.json").is_file()


def test_shift_seed_is_recorded_and_distortion_refuses_a_mislabelled_d2(tmp_path, h1_run, capsys):
    d2 = tmp_path / "d2"
    args = ["shift", *TINY[-4:], "--split", "val", "--filter", "ripple", "--severity", "0.5", "--seed", "5"]
    assert main([*args, "--out", str(d2)]) == 0
    assert json.loads((d2 / ".segadapt-shift-val.json").read_text())["params"]["seed"] == 5
    capsys.readouterr()
    bad = ["distortion", "--model", str(h1_run), "--filter", "cubism", "--severity", "0.1",
           "--set", f"shift.d2_dir={d2}", "--set", "data.synthetic_val=2"]
    assert main(bad) == 2
    assert "holds ripple at severity 0.5, not cubism at 0.1" in capsys.readouterr().err


def test_adapt_takes_d2_and_layers_from_its_own_flags_not_from_h1s_run(tmp_path, capsys):
    """H1's config may name a D2 folder, layers or a teacher cache from its own sweep: none of it carries over."""
    h1 = tmp_path / "h1"
    assert main(["train", "--preset", "synthetic", *TINY, "--set", f"shift.d2_dir={tmp_path / 'elsewhere'}",
                 "--set", 'adapt.layers=["pool1"]', "--set", "adapt.grad_clip=5", "--out", str(h1)]) == 0
    out = tmp_path / "a"
    assert main(["adapt", "--h1", str(h1), "--filter", "ripple", "--iterations", "2", "--out", str(out)]) == 0
    saved = (out / "config.toml").read_text()
    assert 'd2_dir = ""' in saved and 'layers = ["pool5"]' in saved and "grad_clip = 5.0" in saved


def test_a_folder_trained_model_scores_on_a_builtin_dataset_with_its_classes(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (tmp_path / "fold" / split / sub).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (48, 32)).save(tmp_path / "fold" / split / "images" / f"s{k}.png")
            Image.new("L", (48, 32)).save(tmp_path / "fold" / split / "masks" / f"s{k}.png")
    run = tmp_path / "hf"
    assert main(["train", "--preset", "synthetic", *TINY, "--dataset", "folder", "--root", str(tmp_path / "fold"),
                 "--set", "data.num_classes=7", "--out", str(run)]) == 0
    assert main(["evaluate", "--model", str(run), "--dataset", "synthetic"]) == 0
    assert main(["evaluate", "--model", str(run), "--dataset", "synthetic", "--root", str(tmp_path)]) == 2
    assert "the synthetic scenes are generated" in capsys.readouterr().err
