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


class Interrupted(SegadaptError):
    """The user pressed Ctrl-C; the CLI exits with 130 (128 + SIGINT), the shell convention, not 2."""
