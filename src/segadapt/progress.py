"""Progress bars that stay readable in a log: one place decides whether a bar is drawn.

tqdm draws a bar opened while another runs (validation inside training, an image's tiles inside the list
of images) on the line below, moving the cursor between the two with escape codes. On a terminal that is a
tidy stack; in a log file, a pipe or CI the codes come out as garbage between the lines. So off a terminal
only the outermost bar is drawn. `quiet()` (the commands' --quiet) turns every bar off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

_QUIET = [False]


def quiet(on: bool = True) -> None:
    """No progress bars from now on (--quiet): a scheduled job's log gets the results only."""
    _QUIET[0] = on


def is_quiet() -> bool:
    """Whether bars are off (so a library call that silences them can put the setting back)."""
    return _QUIET[0]


def _terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def drawing() -> bool:
    """Whether a bar is being drawn now (one opened and not yet closed)."""
    return any(not getattr(b, "disable", True) for b in list(getattr(tqdm, "_instances", ())))


def bar(iterable: Iterable[Any] | None = None, *, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (tqdm's arguments), off when quiet, and off when it would be drawn inside another
    bar on something other than a terminal."""
    nested = drawing() and not _terminal(kwargs.get("file") or sys.stderr)
    return tqdm(iterable, disable=disable or _QUIET[0] or nested, **kwargs)
