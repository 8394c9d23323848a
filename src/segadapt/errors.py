"""Errors that reach the user as one clear line instead of a traceback."""

from __future__ import annotations


class SegadaptError(Exception):
    """A problem the user can fix; the message names the file (if any) and the fix."""


class DataError(SegadaptError):
    """A dataset file is missing, unreadable or inconsistent."""


class ConfigError(SegadaptError):
    """A config file or override is invalid."""


class CheckpointError(SegadaptError):
    """A weights/checkpoint file cannot be used."""


class Diverged(SegadaptError):
    """A loss, gradient or weights became non-finite: the run diverged (at this learning rate, typically).
    Its own class so that a sweep can record the method as diverged and go on with the others."""


class Interrupted(SegadaptError):
    """The user stopped the command (Ctrl-C, SIGINT); the message says what was saved and how to continue.

    Not a mistake to fix, so the CLI maps it to exit code 130 (128 + SIGINT, the shell's convention for a
    run stopped by Ctrl-C) rather than 2. It stays a SegadaptError so that handlers written for those still
    print it as one line and keep a run directory that holds a checkpoint."""
