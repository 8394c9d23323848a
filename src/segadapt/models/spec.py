"""Which kind of model a string names: the one parser every command and the Python API share.

A model is named by a path or by a factory spec. The order matters: an existing path always wins (a folder
may be called `a.b:c`), a directory with a transformers config.json is a save_pretrained directory (segadapt
run directories hold config.toml, never config.json), any other existing path is a segadapt run directory or
model file, and a `package.module:function` that is not a path names a factory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from segadapt.models.factory import is_factory_spec

ModelKind = Literal["segadapt", "hf_dir", "factory", "missing"]
HF_CONFIG_FILE = "config.json"  # what transformers' save_pretrained writes (models/hf_dir.CONFIG_FILE)


def model_kind(spec: str | Path) -> ModelKind:
    """"segadapt" (run directory or model file), "hf_dir" (transformers save_pretrained directory), "factory"
    (package.module:function, not a path) or "missing" (neither an existing path nor a factory spec)."""
    text = str(spec)
    path = Path(text)
    if not path.exists():
        return "factory" if is_factory_spec(text) else "missing"
    if path.is_dir() and (path / HF_CONFIG_FILE).is_file():
        return "hf_dir"
    return "segadapt"
