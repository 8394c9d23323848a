"""Library chatter held back: Python warnings (rasterio's NotGeoreferencedWarning, torch's), the log records of
transformers (its weight "LOAD REPORT" table) and rasterio, and text printed while a library call runs.

Let through, that text lands on the terminal before segadapt's one-line error or between its progress lines,
so the line the user needs is no longer one line. Every call into a chatty library runs inside `hushed()`;
`segadapt --debug` (`show(True)`) lets the text through as the library wrote it. transformers' own progress
bars are off inside `hushed()` either way: they would garble segadapt's progress display.
The block swaps sys.stdout and sys.stderr, so it wraps single library calls, never segadapt's own output.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator

LOGGERS = ("transformers", "rasterio")  # library loggers whose records are held back
_shown = False


def show(on: bool) -> None:
    """Let library chatter through (the CLI's --debug) or hold it back (the default)."""
    global _shown
    _shown = on


@contextlib.contextmanager
def _loggers_into(stream: io.StringIO) -> Iterator[None]:
    """LOGGERS' records go to `stream` only; handlers a library adds meanwhile (transformers configures its
    own on first use) are kept when the block ends."""
    ours = logging.StreamHandler(stream)
    saved = []
    for name in LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, list(log.handlers), log.propagate))
        log.handlers, log.propagate = [ours], False
    try:
        yield
    finally:
        for log, handlers, propagate in saved:
            added = [h for h in log.handlers if h is not ours and h not in handlers]
            log.handlers, log.propagate = handlers + added, propagate


@contextlib.contextmanager
def _transformers_bars_off() -> Iterator[None]:
    module = sys.modules.get("transformers")
    bars = getattr(getattr(module, "utils", None), "logging", None)
    if bars is None or not bars.is_progress_bar_enabled():
        yield
        return
    bars.disable_progress_bar()
    try:
        yield
    finally:
        bars.enable_progress_bar()


@contextlib.contextmanager
def hushed() -> Iterator[None]:
    """Run a library call with its chatter held back (shown under --debug). Errors still propagate."""
    with _transformers_bars_off():
        if _shown:
            yield
            return
        held = io.StringIO()
        with (warnings.catch_warnings(), _loggers_into(held), contextlib.redirect_stdout(held),
              contextlib.redirect_stderr(held)):
            warnings.simplefilter("ignore")
            yield
