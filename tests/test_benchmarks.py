"""Benchmarks compare like with like: every regression-step variant makes the same student update, and the
study sweep claims no recovery ratio where B2 gained nothing over B0; results name no machine's paths."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _measure  # noqa: E402
import regression_step  # noqa: E402
import study_sweep  # noqa: E402
from _paths import REPO, SHARED, recorded  # noqa: E402


def _update(student: torch.nn.Module, before: dict[str, torch.Tensor]) -> torch.Tensor:
    after = dict(student.named_parameters())
    return torch.cat([(after[k].detach() - before[k]).flatten() for k in before])


def test_regression_step_variants_make_the_same_update(tmp_path):
    torch.manual_seed(0)
    teacher, x1, x2, geometry, cache = regression_step.make_inputs(0.125, (32, 48), 2, "pool5", str(tmp_path))
    steps, students = regression_step.make_steps(teacher, x1, x2, geometry, "pool5", cache)
    before = {k: p.detach().clone() for k, p in teacher.named_parameters()}
    updates = {}
    for name, step in steps.items():
        step()
        updates[name] = _update(students[name], before)
    ref = updates["naive"]
    assert ref.abs().max() > 0, "the naive step changed nothing"
    tolerance = {"detached": 1e-5, "early": 1e-4, "segadapt": 1e-3, "cached": 5e-3}  # cached: fp16 maps
    for name, tol in tolerance.items():
        err = (updates[name] - ref).norm() / ref.norm()
        assert err < tol, f"{name} makes a different update than naive (relative error {err:.2e})"


def test_study_recovery_is_not_a_ratio_of_noise():
    """(H2 - B0) / (B2 - B0) only where B2 beats B0 by a point or more; otherwise a note says why not."""
    def results(b2: float) -> dict:
        rows = [{"seed": 0, "shift": "ripple", "method": m, "miou": v, "mean_acc": v}
                for m, v in (("B0", 0.20), ("B2", b2), ("H2:pool5", 0.21))]
        summary = [{"shift": "ripple", "method": r["method"], "miou": r["miou"], "miou_std": 0.0,
                    "mean_acc": r["mean_acc"], "mean_acc_std": 0.0, "seeds": 1} for r in rows]
        return {"rows": rows, "summary": summary, "severity_search": [], "distortion": {}}

    big = study_sweep.study_summary(results(0.24), ["ripple"], [0])["ripple"]
    assert big["recovery_of_means"] == pytest.approx(0.25) and big["recovery_note"] is None
    small = study_sweep.study_summary(results(0.204), ["ripple"], [0])["ripple"]
    assert small["recovery_of_means"] is None and small["recovery_per_seed"] == {}
    assert "nothing to recover" in small["recovery_note"]


def test_results_name_paths_relative_to_the_repository_or_shared(tmp_path):
    assert recorded(REPO / "docs" / "results") == "docs/results"
    assert recorded(SHARED / "data" / "camvid") == "../shared/data/camvid"
    assert recorded(tmp_path / "run" / "model.safetensors") == "model.safetensors"  # elsewhere: the name alone
    for f in sorted((REPO / "docs" / "results").glob("*.json")):
        absolute = re.findall(r'"(/[A-Za-z][^"]*)"', f.read_text())
        assert not absolute, f"{f.name} records machine paths {absolute[:3]}"


def test_the_camvid_sample_is_found_where_the_environment_says(tmp_path, monkeypatch):
    import _paths

    monkeypatch.delenv(_paths.CAMVID_ENV, raising=False)
    assert _paths.camvid_root() == SHARED / "data" / "camvid"
    monkeypatch.setenv(_paths.CAMVID_ENV, str(tmp_path))
    assert _paths.camvid_root() == tmp_path


def test_tests_read_the_camvid_sample_from_the_environment(tmp_path):
    """A sample elsewhere is used by the tests (here an empty folder, so the CamVid tests skip naming it)."""
    env = {**os.environ, "SEGADAPT_CAMVID": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
                          str(REPO / "tests" / "test_data.py"), "-k", "camvid_loads"],
                         capture_output=True, text=True, env=env, cwd=REPO).stdout
    assert "SKIPPED [1] tests/test_data.py" in out and f"CamVid sample not found at {tmp_path}" in out


def test_a_fraction_of_peak_never_exceeds_one():
    """The peak a step is measured against is the best rate any kernel reached in the run, the steps' own
    included: a conv step faster than torch.mm (134% of "the matmul peak" once) sets the peak itself."""
    peaks = {"fp32": {"gflop_per_s": 212.0, "kernel": "mm_2048"}, "bf16": {"gflop_per_s": 300.0, "kernel": "conv"}}
    reached = _measure.reached_peak(peaks, "fp32", {"train_step": 284.0, "infer": 150.0})
    assert reached == {"gflop_per_s": 284.0, "kernel": "train_step"}
    assert _measure.reached_peak(peaks, "bf16", {"train_step": 284.0}) == {"gflop_per_s": 300.0, "kernel": "conv"}


def test_bf16_is_timed_only_where_the_cpu_computes_it_and_the_nominal_peak_says_what_it_assumes(monkeypatch):
    from segadapt import runtime

    monkeypatch.setattr(runtime, "cpu_features", lambda: {"avx2", "fma"})
    assert _measure.timed_precisions() == ("fp32",) and _measure.timed_precisions(force_bf16=True)[1] == "bf16"
    monkeypatch.setattr(runtime, "cpu_features", lambda: {"avx512f", "avx512_bf16"})
    assert _measure.timed_precisions() == ("fp32", "bf16")
    monkeypatch.setattr(_measure, "_clock_ghz", lambda: (2.0, "test"))
    nominal = _measure.nominal_peaks(threads=2)
    assert nominal["gflop_per_s"] == {"fp32": 2 * 2.0 * 64, "bf16": 2 * 2.0 * 128}
    assert "FMA units" in nominal["assumes"]
    monkeypatch.setattr(_measure, "_clock_ghz", lambda: (None, "not readable on this platform"))
    assert _measure.nominal_peaks(threads=2)["gflop_per_s"] == {"fp32": None, "bf16": None}
