"""Non-finite guards: a loss or gradient that is not finite stops the run before the weights change, in one
line naming the step, the batch's samples and the last good checkpoint; non-finite weights are never saved."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from segadapt import checkpoint as ckpt
from segadapt import distributed
from segadapt.data.base import SegmentationSource
from segadapt.errors import Diverged


def sample_name(dataset: Any, index: int) -> str | None:
    """A file path (or stem) for one sample, when the dataset can tell: `describe(i)`, a source, or pairs."""
    try:
        describe = getattr(dataset, "describe", None)
        if callable(describe):
            return str(describe(index))
        if isinstance(dataset, Subset):
            return sample_name(dataset.dataset, dataset.indices[index])
        source = getattr(dataset, "source", None)
        if isinstance(source, SegmentationSource):
            return source.name(index)
        pairs, d1, d2 = (getattr(dataset, k, None) for k in ("pairs", "d1", "d2"))
        if pairs is not None and isinstance(d1, SegmentationSource) and isinstance(d2, SegmentationSource):
            i, j = pairs[index]
            return f"{d1.name(i)} / {d2.name(j)}"
    except Exception:  # naming is a courtesy in an error path: never let it hide the real error
        return None
    return None


def describe_batch(dataset: Any, indices: Sequence[int]) -> str:
    """"dataset indices [3, 17] (name3, name17)": enough to find and inspect the samples of a bad batch."""
    names = [sample_name(dataset, i) for i in indices]
    text = f"dataset indices {list(indices)}"
    if any(names):
        text += f" ({', '.join(n or '?' for n in names)})"
    if distributed.active():
        text += f" on rank {distributed.rank()}"
    return text


def global_loss(loss: torch.Tensor) -> tuple[float, list[int]]:
    """The loss averaged over processes, and the ranks whose own loss is not finite.

    Every rank gets the same answer (one small all-reduce), so all of them stop at the same step instead
    of some waiting forever in DDP's gradient all-reduce. One process: the loss itself, and [0] if bad.
    """
    value = loss.detach().float()
    world = distributed.world_size()
    if world == 1:
        v = value.item()
        return v, [] if math.isfinite(v) else [0]
    finite = torch.isfinite(value)
    buf = torch.zeros(world + 1, device=value.device)
    buf[0] = torch.where(finite, value, torch.zeros_like(value))
    buf[1 + distributed.rank()] = (~finite).float()
    vals = distributed.all_reduce(buf).tolist()
    bad = [r for r in range(world) if vals[1 + r]]
    return (float("nan") if bad else vals[0] / world), bad


def grads_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """Whether every gradient element is finite: checked before optimizer.step() so weights never turn NaN.

    Max-abs rather than a norm: it overflows for no finite value, and NaN propagates through amax.
    """
    peaks = [p.grad.detach().abs().amax().float() for p in params if p.grad is not None]
    return not peaks or bool(torch.isfinite(torch.stack(peaks).amax()))



def refuse_nonfinite(model: torch.nn.Module, step: int, run_dir: Path) -> None:
    """Before a resume point is written: weights that are not finite never replace a good checkpoint."""
    if not weights_finite(model):
        raise Diverged(f"weights are not finite at step {step}; not saving them "
                            f"(last good checkpoint: {ckpt.latest_checkpoint(run_dir)})")


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def nonfinite_error(
    what: str, value: float | str, step: int, bad_ranks: Sequence[int], batch: str, run_dir: Path, fix: str
) -> Diverged:
    """One line: what went non-finite, at which step, on which samples, the fix, and the last good checkpoint."""
    last = ckpt.latest_checkpoint(run_dir)
    saved = f"last good checkpoint: {last}" if last else "no checkpoint saved yet"
    if distributed.active() and bad_ranks and distributed.rank() not in bad_ranks:
        where = f"on rank(s) {list(bad_ranks)}, whose error names the batch"
    else:
        where = f"on the batch of {batch}"
    return Diverged(f"{what} became {value} at step {step} {where}; {fix} ({saved})")


