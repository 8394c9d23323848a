"""User strings that become paths: names checked before they are joined into one, and removals that cannot
reach outside the folder a command owns.

A name (a run's name, a filter label, a layer preset, a model's label in a figure) becomes one path
component, so it may hold letters, digits and `._+=-`, must not start with a dot (no `..`, no hidden files)
and is at most 100 characters. A path given whole (--out, --root) may be anywhere the user chooses; it is
only refused when no file system could hold it (a NUL byte, an over-long name).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from segadapt.errors import ConfigError, SegadaptError

_NAME = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,99}")


def check_name(value: str, what: str) -> str:
    """`value` if it is safe as one path component, else one line saying what a name may hold."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        shown = repr(value) if len(str(value)) <= 60 else repr(str(value)[:57] + "...")
        raise ConfigError(f"{what} {shown}: not usable as a file name; use up to 100 letters, digits and . _ + = - "
                          "(not starting with a dot)")
    return value


def check_path(value: str, what: str) -> Path:
    """A user-given path as a Path, normalised (`a/../../b` is `../b`: creating its parents must not make
    `a`); refused in one line when it cannot name a file at all."""
    if "\x00" in value:
        raise ConfigError(f"{what}: the path contains a NUL byte; give a plain path")
    if any(len(part.encode()) > 255 for part in Path(value).parts):
        raise ConfigError(f"{what}: a path component is longer than 255 bytes; give a shorter path")
    return Path(os.path.normpath(value))


def remove_tree(path: Path, owner: Path) -> None:
    """Remove `path` (a folder or file) only if it lies strictly inside `owner`, resolved (links followed):
    a name that slipped through could otherwise point a removal at the user's own files."""
    target, root = Path(os.path.realpath(path)), Path(os.path.realpath(owner))
    if target == root or root not in target.parents:
        raise SegadaptError(f"{path}: refusing to remove a path outside {owner}")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
