"""The run directory (run_dir.py, filled by run.py): its kind and finished marker, one writer at a time, full
disks, machine limits, TensorBoard logs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segadapt import checkpoint as ckpt
from segadapt.cli import main
from segadapt.config import load_toml

TINY = ["--preset", "synthetic", "--width", "0.0625", "--iterations", "3", "--batch-size", "2", "--threads", "1",
        "--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
        "--set", "data.synthetic_train=8", "--set", "data.synthetic_val=2"]
RUN_FILE, LOCK_FILE = "run.json", ".lock"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "segadapt", *args]


def one_error_line(err: str, expected: str) -> None:
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("segadapt:")]
    assert len(lines) == 1 and "Traceback" not in err and expected in lines[0], err[-1500:]


def test_run_json_records_kind_and_finished_state(tmp_path):
    from segadapt import run_dir as runs

    assert main(["train", *TINY, "--out", str(tmp_path / "h1")]) == 0
    assert runs.read_info(tmp_path / "h1") | {"segadapt": ""} == {"kind": "train", "state": "finished", "step": 3,
                                                                   "segadapt": ""}
    assert main(["adapt", "--h1", str(tmp_path / "h1"), "--iterations", "2", "--set", "adapt.holdout=0",
                 "--out", str(tmp_path / "h2")]) == 0
    assert runs.run_kind(tmp_path / "h2") == "adapt"
    assert not (tmp_path / "h1" / LOCK_FILE).exists()  # released at the end


def test_a_run_older_than_run_json_is_told_by_its_checkpoint(tmp_path):
    from segadapt import run_dir as runs

    assert main(["train", *TINY, "--out", str(tmp_path / "h1")]) == 0
    (tmp_path / "h1" / RUN_FILE).unlink()
    assert runs.run_kind(tmp_path / "h1") == "train"
    assert runs.finished_step(tmp_path / "h1") == 3  # model file there: finished, as segadapt used to judge it


def test_a_failure_after_the_model_file_leaves_a_run_that_resumes_to_its_metrics(tmp_path, monkeypatch, capsys):
    """The finished marker is the last file written: a crash between model.safetensors and metrics.json must
    not make --resume say "already finished" and leave the metrics unwritten."""
    real = ckpt.write_json_atomic

    def fail_on_metrics(path, data):
        if Path(path).name == "metrics.json":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt, "write_json_atomic", fail_on_metrics)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 2
    assert (run / "model.safetensors").exists() and not (run / "metrics.json").exists()
    monkeypatch.setattr(ckpt, "write_json_atomic", real)
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished" not in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["step"] == 3
    assert json.loads((run / RUN_FILE).read_text())["state"] == "finished"


def test_a_second_writer_of_one_run_directory_is_refused(tmp_path):
    run = tmp_path / "same"
    slow = [a if a != "3" else "400" for a in TINY]
    first = subprocess.Popen(cli("train", *slow, "--out", str(run)), env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / LOCK_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(cli("train", *TINY, "--out", str(run)), env=ENV, capture_output=True, text=True)
        assert second.returncode == 2
        one_error_line(second.stderr, f"in use by another segadapt process (pid {first.pid})")
        assert first.poll() is None, "the refused writer stopped the first"
    finally:
        first.kill()
        first.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_FILE).write_text(f"{dead.pid}\n")
    assert main(["train", *TINY, "--out", str(run)]) == 0


def test_a_folder_left_before_the_first_checkpoint_can_be_run_again(tmp_path):
    """config.toml, log.csv and an empty checkpoints/ (a start that failed) are not a run to protect."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text("")
    (run / "log.csv").write_text("step\n")
    assert main(["train", *TINY, "--out", str(run)]) == 0


# --- full disks ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A small tmpfs (root only), resized by calling the yielded function with a size."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the patched-writer test covers full disks")

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)

    yield disk, grow
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


ADAPT = ["--filter", "ripple", "--iterations", "2", "--set", "adapt.holdout=0", "--threads", "1"]
SHIFT = ["shift", "--filter", "cubism", "--split", "train", "--workers", "1", "--set", "data.synthetic_train=60",
         "--set", "data.synthetic_size=[96, 128]"]
SWEEP = [*TINY, "--set", "experiment.iterations=2", "--set", 'experiment.layer_presets=["pool5"]',
         "--set", 'experiment.baselines=["B0"]', "--set", "experiment.figure_images=0"]


# disk sizes: below the first resume point (nothing saved: the folder goes, a re-run works), and between
# it and the model file (a checkpoint survives: --resume finishes the run)
@pytest.mark.parametrize("command, size", [("train", "600k"), ("train", "800k"), ("adapt", "500k"),
                                           ("adapt", "700k"), ("shift", "1m"), ("experiment", "600k")])
def test_a_full_disk_is_one_line_and_the_folder_can_be_resumed_or_rerun(command, size, tmp_path, small_disk):
    disk, grow = small_disk
    grow(size)
    h1 = tmp_path / "h1"
    if command == "adapt":
        assert subprocess.run(cli("train", *TINY, "--out", str(h1)), env=ENV, capture_output=True).returncode == 0
    argv = {"train": ["train", *TINY], "adapt": ["adapt", "--h1", str(h1), *ADAPT], "shift": SHIFT,
            "experiment": ["experiment", *SWEEP]}[command] + ["--out", str(disk / "out")]
    full = subprocess.run(cli(*argv), env=ENV, capture_output=True, text=True)
    assert full.returncode == 2
    one_error_line(full.stderr, "no space left on device")
    assert "None" not in full.stderr
    grow("64m")
    out = disk / "out"
    resumable = ckpt.latest_checkpoint(out) is not None and command in ("train", "adapt")
    again = cli(command, "--resume", str(out)) if resumable else cli(*argv)
    done = subprocess.run(again, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1500:]
    assert not list(out.rglob("*.tmp"))


def test_a_full_disk_during_a_checkpoint_is_one_line_without_a_mount(tmp_path, monkeypatch, capsys):
    """Where no tmpfs can be mounted: safetensors' own error for a full disk (as it raises it) is one line."""
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", full)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    one_error_line(err, "no space left on device (needs about")
    assert not run.exists()  # nothing was saved: nothing to resume, the folder is gone and can be re-run


# --- limits of the machine ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["--workers", "100000"], "data.num_workers"),
    (["--workers", "200"], "worker processes only compete"),
    (["--batch-size", "60000", "--set", "data.crop_size=[1024, 1024]"], "more than this machine's"),
])
def test_limits_of_the_machine_are_one_line_before_anything_runs(argv, expected, tmp_path, capsys):
    code = main(["train", *TINY, *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


# --- TensorBoard ---------------------------------------------------------------------------------


def test_tensorboard_event_files_beside_the_log(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["train", *TINY, "--set", "train.tensorboard=true", "--set", "train.log_every=1",
                 "--out", str(run)]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "images_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    h2 = tmp_path / "h2"
    assert main(["adapt", "--h1", str(run), *ADAPT, "--objective", "features",
                 "--layers", "pool2,pool4", "--set", "train.tensorboard=true",
                 "--set", "train.log_every=1", "--out", str(h2)]) == 0
    events = EventAccumulator(str(h2 / "tensorboard"))
    events.Reload()
    assert {"loss/pool2", "loss/pool4"} <= set(events.Tags()["scalars"])
    assert load_toml(h2 / "config.toml").train.tensorboard


def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("tensorboard"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(["train", *TINY, "--set", "train.tensorboard=true", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'segadapt[tensorboard]'" in err
    assert not (tmp_path / "run").exists()


def test_one_registry_holds_a_folders_lock_and_its_clean_up(tmp_path):
    """A command's claim (clean-up on failure) and a Run's nested lock of the same folder are one entry: a
    failure removes what the command added and the parents it made; the end of the command unlocks it."""
    from segadapt import run_dir

    out = run_dir.claim(tmp_path / "new" / "out", lock_it=True)
    run_dir.lock(out)  # the Run inside the command locks it again
    assert list(run_dir._HELD) == [out.resolve()] and run_dir._HELD[out.resolve()].locks == 2
    assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
    (out / "log.csv").write_text("step\n")
    run_dir.discard_partial_outputs()
    assert not (tmp_path / "new").exists()
    run_dir.unlock_all()
    assert not run_dir._HELD


def test_a_lock_held_by_a_live_process_is_refused_and_a_dead_ones_taken_over(tmp_path):
    from segadapt import run_dir
    from segadapt.errors import SegadaptError

    (tmp_path / LOCK_FILE).write_text(f"{os.getppid()}\n")  # the test runner's parent: alive
    with pytest.raises(SegadaptError, match="in use by another segadapt process"):
        run_dir.lock(tmp_path)
    assert not run_dir._HELD  # a refused lock leaves no entry behind
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(gone.stdout)
    run_dir.lock(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    run_dir.unlock(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists() and not run_dir._HELD
