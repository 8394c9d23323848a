"""The inputs of `predict` and `change` shared among the processes of a torchrun launch.

`torchrun --nnodes N --nproc_per_node M -m segadapt predict ...` starts N x M processes (ranks) with the
same command line. Every rank lists the same inputs (rank 0's list, broadcast, so a record another rank
writes meanwhile cannot change it) and takes a disjoint, deterministic share: inputs rank, rank + world,
rank + 2 x world, ... in the order given (neighbours in a folder, often alike in size, go to different
ranks). Each rank writes its own images' outputs and records, so a re-run skips whatever any rank finished;
at the end rank 0 gathers every rank's entries (over gloo: a few kilobytes) and writes the one summary.

When a rank dies, torchrun stops the others with SIGTERM: it is taken as an interrupt, so each surviving rank
leaves only finished, atomically written outputs and says which of the run's inputs are left (found from the
records, whichever rank wrote them). Without torchrun every helper is a no-op: one process takes everything.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from segadapt import distributed
from segadapt.errors import Interrupted

T = TypeVar("T")
NAMES_SHOWN = 5  # inputs named in the "left" line; the rest are counted


def start() -> tuple[int, int]:
    """Join torchrun's process group when launched by it; (rank, world size), (0, 1) alone."""
    distributed.init()
    return distributed.rank(), distributed.world_size()


def is_main() -> bool:
    return distributed.is_main()


def same_everywhere(value: T) -> T:
    """Rank 0's `value` on every rank."""
    if not distributed.active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share(items: Sequence[T]) -> list[T]:
    """This rank's items: every world-th one, starting at its rank."""
    return list(items[distributed.rank()::distributed.world_size()])


class RankLost(Exception):
    """Another rank left the process group (it failed or was killed) before the ranks met."""


def gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order (also a barrier); [value] alone. A rank gone before it got here
    raises RankLost (gloo reports the closed connection as a RuntimeError)."""
    if not distributed.active():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * distributed.world_size()
    try:
        dist.all_gather_object(out, value)
    except RuntimeError as e:
        raise RankLost(str(e)) from None
    return out


def in_order(inputs: Sequence[Path], entries: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Entries of several ranks back in the order of the inputs (entry[key] is the input's path)."""
    rank_of = {str(p): i for i, p in enumerate(inputs)}
    return sorted(entries, key=lambda e: rank_of.get(str(e.get(key)), len(rank_of)))


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Under torchrun, SIGTERM (sent when another rank failed) raises KeyboardInterrupt, so this rank stops as
    Ctrl-C stops it: between atomic writes, saying what is left."""
    if not distributed.active():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(what: str, inputs: Sequence[Path], done: Callable[[Path], bool], out: Path) -> Interrupted:
    """The one line a stopped run ends with: how many of the run's inputs are finished (by any rank) and which
    are left."""
    left = [p for p in inputs if not done(p)]
    names = ", ".join(p.name for p in left[:NAMES_SHOWN]) + (f" and {len(left) - NAMES_SHOWN} more"
                                                            if len(left) > NAMES_SHOWN else "")
    who = "interrupted: "
    if distributed.active():
        who = f"rank {distributed.rank()}: stopped (a rank failed, or Ctrl-C): "
    return Interrupted(f"{who}{len(inputs) - len(left)} of {len(inputs)} {what} are finished in {out}"
                       + (f"; left: {names}" if left else "")
                       + f"; run the same command again to continue (finished {what} are skipped)")
