"""What `segadapt predict` keeps of its own work in `<out>/.predict/`, and the two rules it decides.

A record `<stem>.json` per image holds the input it was predicted from (path, size, modification time), the
settings, its predictions.json entry, and under `files` the sha256 of each file predict wrote for it (newest
first; a second hash covers the moment between writing a record and renaming the new files into place).
`summary.owned` holds the same for predictions.json.

- Finished: an image is skipped on a re-run only while its record matches the input and settings and every
  output is still the file predict wrote (same hash).
- Owned: an existing file is replaced only when a record says predict wrote it, with that content
  (segadapt.owned_files, the rule export follows too). Anything else there, such as a ground-truth
  `scene_mask.png` beside `scene.png` in a shared folder, is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segadapt.checkpoint import write_json_atomic, write_text_atomic
from segadapt.errors import ConfigError, DataError
from segadapt.models.factory import sha256_file
from segadapt.owned_files import hashes, owned, read_record, with_files

RECORDS = ".predict"
SUMMARY_OWNED = "summary.owned"  # not <stem>.json, so no image's record can take its name


def record_path(out: Path, stem: str) -> Path:
    return out / RECORDS / f"{stem}.json"


def identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def finished(record: Mapping[str, Any], out: Path, ident: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    """Whether `record` is of this input with these settings and its outputs are the files predict wrote."""
    if record.get("identity") != ident or record.get("settings") != settings:
        return False
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return False
    for name in map(str, outputs.values()):
        path, known = out / name, hashes(record, name)
        if not known or not path.is_file() or sha256_file(path) != known[0]:
            return False
    return True


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


def check_summary(path: Path, records: str = RECORDS, writer: str = "predict") -> dict[str, str]:
    """Before a run writes anything: refuse (one line) a summary (predictions.json) that `writer` did not write;
    `records`: the folder of that command's records."""
    try:
        return owned(read_record(path.parent / records / SUMMARY_OWNED), path.parent, [path.name], writer)
    except DataError as e:
        raise ConfigError(str(e)) from None


def write_summary(path: Path, summary: Mapping[str, Any], replaced: Mapping[str, str], records: str = RECORDS) -> None:
    """predictions.json, its hash recorded first: a run stopped between the two still owns either file."""
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    owned_path = path.parent / records / SUMMARY_OWNED
    write_json_atomic(owned_path, {"files": with_files(read_record(owned_path), {path.name: digest}, replaced)})
    write_text_atomic(path, text)
