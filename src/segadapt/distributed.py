"""Multi-process training (DistributedDataParallel) under `torchrun`: a few small helpers.

`torchrun --nproc_per_node N -m segadapt train ...` starts N processes and sets RANK, WORLD_SIZE and
LOCAL_RANK; `init()` joins them into one process group (gloo for CPU tensors, NCCL for CUDA ones). Without
those variables (or with WORLD_SIZE=1) nothing is initialised and every helper is a no-op, so a plain
single-process run behaves exactly as it always did.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """Processes torchrun started (1 when not run under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine: which GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    """True once a process group with more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init() -> bool:
    """Join torchrun's process group once (later calls return at once); False for single-process runs.

    With CUDA present the group gets both backends ("cpu:gloo,cuda:nccl"), so CUDA tensors go through NCCL
    while small CPU objects (a run directory's name) still go through gloo; without CUDA it is gloo alone.
    """
    if active():
        return True
    if env_world_size() <= 1 or not dist.is_available():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://")
    atexit.register(cleanup)
    return True


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 writes the files and draws the progress bars; the others only compute."""
    return rank() == 0


def rank_seed(seed: int) -> int:
    """A per-rank seed for augmentation (and dropout in train); rank 0 (and a single process) keeps `seed`."""
    return seed + 1_000_003 * rank()


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """Sum (by default) `tensor` over all ranks in place; unchanged in a single process.

    init() gives CPU tensors gloo; a group with NCCL alone (made by a caller) reduces CUDA tensors only, so
    there a CPU tensor (a flag, a logged scalar) makes a round trip to this process's GPU.
    """
    if not active():
        return tensor
    if tensor.device.type != "cuda" and "gloo" not in str(dist.get_backend()):
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=op)
        tensor.copy_(on_gpu.cpu())
    else:
        dist.all_reduce(tensor, op=op)
    return tensor


def any_rank(flag: bool) -> bool:
    """`flag` or'ed over the ranks (one tiny all-reduce): a decision to stop must be the same on every rank,
    or the ranks that go on wait forever in DDP's next all-reduce."""
    if not active():
        return flag
    return bool(all_reduce(torch.tensor([float(flag)])).item())


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average named scalars over all ranks (for logs that should describe the global batch)."""
    if not active() or not values:
        return values
    buf = all_reduce(torch.tensor(list(values.values()), dtype=torch.float64))
    return {k: v / world_size() for k, v in zip(values, buf.tolist())}


def broadcast_str(text: str) -> str:
    """Rank 0's string on every rank (e.g. the run directory rank 0 chose)."""
    if not active():
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others will read)."""
    if active():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group; registered at exit by `init()`, safe to call twice."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
