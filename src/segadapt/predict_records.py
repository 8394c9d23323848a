"""What `segadapt predict` keeps of its own work in `<out>/.predict/`, and the two rules it decides.

A record `<stem>.json` per image holds the input it was predicted from (path, size, modification time), the
settings, its predictions.json entry, and under `files` the sha256 of each file predict wrote for it (newest
first; a second hash covers the moment between writing a record and renaming the new files into place).
`summary.owned` holds the same for predictions.json.

- Finished: an image is skipped on a re-run only while its record matches the input and settings and every
  output is still the file predict wrote (same hash).
- Owned: an existing file is replaced only when a record says predict wrote it, with that content. Anything
  else there, such as a ground-truth `scene_mask.png` beside `scene.png` in a shared folder, is refused in
  one line naming it, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from segadapt.checkpoint import write_json_atomic, write_text_atomic
from segadapt.errors import ConfigError, DataError
from segadapt.models.factory import sha256_file

RECORDS = ".predict"
SUMMARY_OWNED = "summary.owned"  # not <stem>.json, so no image's record can take its name
KEEP_HASHES = 2  # the newest file's and the one it replaced (until the rename is known to have happened)


def record_path(out: Path, stem: str) -> Path:
    return out / RECORDS / f"{stem}.json"


def read_record(path: Path) -> dict[str, Any]:
    """A record as written, or {} when absent or unreadable (then nothing is finished and nothing owned)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _hashes(record: Mapping[str, Any], name: str) -> list[str]:
    files = record.get("files")
    hashes = files.get(name) if isinstance(files, dict) else None
    return [h for h in hashes if isinstance(h, str)] if isinstance(hashes, list) else []


def finished(record: Mapping[str, Any], out: Path, ident: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    """Whether `record` is of this input with these settings and its outputs are the files predict wrote."""
    if record.get("identity") != ident or record.get("settings") != settings:
        return False
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return False
    for name in map(str, outputs.values()):
        path, known = out / name, _hashes(record, name)
        if not known or not path.is_file() or sha256_file(path) != known[0]:
            return False
    return True


def owned(record: Mapping[str, Any], out: Path, names: Iterable[str], writer: str) -> dict[str, str]:
    """name -> sha256 of each file among `names` that exists in `out` and that predict wrote (per `record`);
    any other file there is refused, naming it: predict never replaces a file it did not write."""
    found: dict[str, str] = {}
    for name in names:
        path = out / name
        if not (path.exists() or path.is_symlink()):
            continue
        digest = sha256_file(path) if path.is_file() and not path.is_symlink() else ""
        if not digest or digest not in _hashes(record, name):
            raise DataError(f"{path}: exists and was not written by segadapt predict (or changed since), and "
                            f"{writer} would replace it; move it away or give another --out")
        found[name] = digest
    return found


def with_files(record: Mapping[str, Any], written: Mapping[str, str], replaced: Mapping[str, str]) -> dict:
    """`record`'s `files` updated for new outputs `written` (name -> sha256) that replace the owned files
    `replaced`; names not written now keep their hashes (an overlay from an earlier run is still predict's)."""
    earlier = record.get("files")
    files = {str(k): _hashes(record, k) for k in earlier} if isinstance(earlier, dict) else {}
    for name, digest in written.items():
        old = replaced.get(name)
        files[name] = ([digest] + ([old] if old and old != digest else []))[:KEEP_HASHES]
    return files


def recorded_names(out: Path) -> set[str]:
    """Every file name the records in `out` say predict wrote (left out of the inputs on a re-run)."""
    names: set[str] = set()
    folder = out / RECORDS
    if not folder.is_dir():
        return names
    for path in folder.glob("*.json"):
        record = read_record(path)
        files, outputs = record.get("files"), record.get("outputs")
        names.update(map(str, files) if isinstance(files, dict) else ())
        names.update(map(str, outputs.values()) if isinstance(outputs, dict) else ())
    return names


def check_summary(path: Path) -> dict[str, str]:
    """Before a run writes anything: refuse (one line) a predictions.json that predict did not write."""
    try:
        return owned(read_record(path.parent / RECORDS / SUMMARY_OWNED), path.parent, [path.name], "predict")
    except DataError as e:
        raise ConfigError(str(e)) from None


def write_summary(path: Path, summary: Mapping[str, Any], replaced: Mapping[str, str]) -> None:
    """predictions.json, its hash recorded first: a run stopped between the two still owns either file."""
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    owned_path = path.parent / RECORDS / SUMMARY_OWNED
    write_json_atomic(owned_path, {"files": with_files(read_record(owned_path), {path.name: digest}, replaced)})
    write_text_atomic(path, text)
