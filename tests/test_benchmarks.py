"""The regression-step benchmark compares like with like: every variant makes the same student update."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import regression_step  # noqa: E402


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
