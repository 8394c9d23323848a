"""Crash safety, end to end in real processes: SIGKILL at a random step, then --resume, must finish exactly
like an uninterrupted run; SIGINT saves a resume point and exits cleanly."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from segadapt import checkpoint as ckpt

STEPS = 120
ARGS = [
    "--preset", "synthetic", "--width", "0.0625", "--iterations", str(STEPS), "--batch-size", "4",
    "--threads", "1", "--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
    "--set", "data.synthetic_train=24", "--set", "data.synthetic_val=4", "--set", "train.checkpoint_every=5",
    "--set", "train.deterministic=true", "--set", "train.log_every=5",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from segadapt.cli import main; sys.exit(main())", *args]


def start(run: Path) -> subprocess.Popen:
    return subprocess.Popen(cli("train", *ARGS, "--out", str(run)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> int:
    """Poll until a resume point at or after `step` exists; returns its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = ckpt.latest_checkpoint(run) if run.exists() else None
        if last is not None and ckpt.step_of(last) >= step:
            return ckpt.step_of(last)
        assert proc.poll() is None, f"run ended before step {step}: {proc.stderr.read() if proc.stderr else ''}"
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step {step} after {timeout}s")


def same_weights(a: Path, b: Path) -> bool:
    wa, _ = ckpt.load_model_file(a)
    wb, _ = ckpt.load_model_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def reference(tmp_path: Path) -> Path:
    ref = tmp_path / "ref"
    subprocess.run(cli("train", *ARGS, "--out", str(ref)), env=ENV, check=True, capture_output=True)
    return ref


def test_sigkill_at_a_random_step_then_resume_matches_uninterrupted_run(tmp_path):
    ref = reference(tmp_path)
    run = tmp_path / "killed"
    proc = start(run)
    kill_after = random.Random().randrange(10, STEPS - 20)  # a different step each run, printed on failure
    reached = wait_for_checkpoint(run, proc, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.safetensors").exists(), f"run finished before the kill (step {reached})"
    done = subprocess.run(cli("train", "--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert same_weights(ref, run), f"killed after checkpoint {reached}"
    m_ref, m_run = (json.loads((d / "metrics.json").read_text()) for d in (ref, run))
    assert m_ref["val"] == m_run["val"] and m_run["step"] == STEPS
    assert not list(run.rglob("*.tmp")), "a temporary file survived the kill"


def test_sigint_saves_a_resume_point_and_exits_cleanly(tmp_path):
    ref = reference(tmp_path)
    run = tmp_path / "interrupted"
    proc = start(run)
    wait_for_checkpoint(run, proc, 10)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130  # 128 + SIGINT, the shell's convention for a Ctrl-C
    lines = err.strip().splitlines()
    assert lines[-1].startswith("segadapt: error: interrupted at step") and "--resume" in lines[-1]
    assert "Traceback" not in err
    step = int(lines[-1].split("interrupted at step ")[1].split(";")[0])
    assert ckpt.checkpoint_path(run, step).exists()  # the step it stopped at, not only the last periodic one
    done = subprocess.run(cli("train", "--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert same_weights(ref, run)


def test_adapt_sigint_then_resume_matches_uninterrupted_run(tmp_path):
    h1 = tmp_path / "h1"
    small = [a if a != str(STEPS) else "6" for a in ARGS]
    subprocess.run(cli("train", *small, "--out", str(h1)), env=ENV, check=True, capture_output=True)
    adapt_args = ["adapt", "--h1", str(h1), "--filter", "ripple", "--iterations", str(STEPS), "--batch-size", "4",
                  "--threads", "1", "--set", "train.checkpoint_every=5", "--set", "train.deterministic=true",
                  "--set", "adapt.probes=3", "--set", "adapt.holdout=4"]
    ref = tmp_path / "ref"
    subprocess.run(cli(*adapt_args, "--out", str(ref)), env=ENV, check=True, capture_output=True)
    run = tmp_path / "interrupted"
    proc = subprocess.Popen(cli(*adapt_args, "--out", str(run)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(run, proc, 10)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    last = err.strip().splitlines()[-1]
    assert last.startswith("segadapt: error: interrupted at step") and "adapt --resume" in last, err[-2000:]
    assert not (run / "model.safetensors").exists()
    done = subprocess.run(cli("adapt", "--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert same_weights(ref, run)
    assert same_weights(ref / "model_selected.safetensors", run / "model_selected.safetensors")
    refused = subprocess.run(cli("adapt", "--resume", str(run), "--filter", "cubism"), env=ENV,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "drop --filter" in refused.stderr
    again = subprocess.run(cli("adapt", "--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and "already finished at step" in again.stdout
    wrong = subprocess.run(cli("train", "--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert wrong.returncode == 2 and "an adaptation run; continue it with segadapt adapt --resume" in wrong.stderr
