"""Which files segadapt wrote: a record (JSON) holds the sha256 of each file a command wrote, and a file is
replaced only when a record says segadapt wrote it with that content. Anything else at an output's name (a
user's ground-truth `scene_mask.png` beside `scene.png`, a model file of theirs named like an export) is
refused in one line naming it, never overwritten.

A record keeps the newest hash and the one it replaced (KEEP_HASHES): it is written before the new file is
renamed into place, so a command stopped between the two still owns whichever file is there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from segadapt.errors import DataError
from segadapt.models.factory import sha256_file

KEEP_HASHES = 2  # the newest file's and the one it replaced (until the rename is known to have happened)


def read_record(path: Path) -> dict[str, Any]:
    """A record as written, or {} when absent or unreadable (then nothing is finished and nothing owned)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def hashes(record: Mapping[str, Any], name: str) -> list[str]:
    files = record.get("files")
    hashes = files.get(name) if isinstance(files, dict) else None
    return [h for h in hashes if isinstance(h, str)] if isinstance(hashes, list) else []


def owned(record: Mapping[str, Any], out: Path, names: Iterable[str], writer: str) -> dict[str, str]:
    """name -> sha256 of each file among `names` that exists in `out` and that segadapt wrote (per `record`);
    any other file there is refused, naming it (`writer`: the command that would replace it)."""
    found: dict[str, str] = {}
    for name in names:
        path = out / name
        if not (path.exists() or path.is_symlink()):
            continue
        digest = sha256_file(path) if path.is_file() and not path.is_symlink() else ""
        if not digest or digest not in hashes(record, name):
            raise DataError(f"{path}: exists and was not written by segadapt (or changed since), and "
                            f"{writer} would replace it; move it away or give another --out")
        found[name] = digest
    return found


def with_files(record: Mapping[str, Any], written: Mapping[str, str], replaced: Mapping[str, str]) -> dict:
    """`record`'s `files` updated for new outputs `written` (name -> sha256) that replace the owned files
    `replaced`; names not written now keep their hashes (an overlay from an earlier run is still segadapt's)."""
    earlier = record.get("files")
    files = {str(k): hashes(record, k) for k in earlier} if isinstance(earlier, dict) else {}
    for name, digest in written.items():
        old = replaced.get(name)
        files[name] = ([digest] + ([old] if old and old != digest else []))[:KEEP_HASHES]
    return files
