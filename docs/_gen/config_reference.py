"""The configuration reference page, read from segadapt.config: every key's type, default, allowed values (the
checks config.py runs when a config is read) and the comment written beside it in config.py."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
import types
import typing

PROSE = (
    'Configuration is typed dataclasses (`src/segadapt/config.py`) in six tables, `[model]`, `[data]`, '
    '`[train]`, `[shift]`, `[adapt]` and `[experiment]`; values a run cannot use (0 iterations, momentum '
    '1.5, a seed numpy refuses, nan) are refused when read. One precedence for every command: `--preset` '
    "(or the settings a model or run was saved with) < `--config FILE.toml` < the command's flags "
    '(`--lr`, `--layers`, `--severity`, …, each a shortcut for one key) < `--set table.key=value`. Each '
    'command offers only the flags it uses (`segadapt doctor --help` has no `--lr`). Every run saves its '
    'resolved config as `config.toml` and prints where it is and the keys that differ from the preset '
    '(`--quiet`: neither that nor progress bars; off a terminal, progress bars are not drawn inside each '
    "other, so logs stay readable); `segadapt config --preset camvid` prints a dataset's real classes "
    '(11, ignore 11); `train.tensorboard = true` also writes TensorBoard event files (losses, per-layer '
    'regression losses, lr, val mIoU, images/s) under `<run>/tensorboard` (`pip install '
    "'segadapt[tensorboard]'`).")


def _type_name(tp: object) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    if isinstance(tp, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "")


def _comments(source: str) -> dict[int, str]:
    """line number -> the comment text on it."""
    found: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = tok.string.lstrip("#").strip()
    return found


def _field_notes(cls: type, source: str, comments: dict[int, str]) -> dict[str, str]:
    """key -> the comment lines directly above its field and the comment on its own line(s)."""
    lines = source.splitlines()
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    notes: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above: list[str] = []
        n = stmt.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments.get(n, ""))
            n -= 1
        inline = [comments[i] for i in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if i in comments]
        notes[stmt.target.id] = " ".join(above + inline)
    return notes


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _tables() -> list[tuple[str, type]]:
    from segadapt.config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    return [("", RunConfig)] + [(f.name, hints[f.name]) for f in dataclasses.fields(RunConfig)
                                if dataclasses.is_dataclass(hints[f.name])]


def _value(v: object) -> str:
    from segadapt.config import _toml_value  # the TOML writer config.toml is written with

    return _toml_value(v)


def page() -> str:
    from segadapt import config

    source = inspect.getsource(config)
    comments = _comments(source)
    out = ["# Configuration", "",
           "Generated at build time from `segadapt/config.py`: each table is a dataclass, each row one key with its "
           "type, default, the values a run accepts (checked when the config is read, so a bad value stops the "
           "command before anything runs, in one line naming the key) and the comment beside it in the code.", "",
           "Give keys in a TOML file (`--config run.toml`, tables `[model]`, `[data]`, ...) or one at a time "
           "(`--set train.lr=0.01`); every run writes its resolved config as `config.toml`, which `--config` "
           "reads back. `segadapt config --preset camvid` prints a preset resolved.", "",
           PROSE, ""]
    for table, cls in _tables():
        hints = typing.get_type_hints(cls)
        notes = _field_notes(cls, source, comments)
        limits = config._LIMITS.get(cls.__name__, {})
        out += [f"## `[{table}]`" if table else "## top level", ""]
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            out += [" ".join(cls.__doc__.split()), ""]
        out += ["| key | type | default | allowed | what it is |", "| --- | --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            key = f"{table}.{f.name}" if table else f.name
            allowed = limits[f.name][1] if f.name in limits else "any " + _type_name(hints[f.name])
            anchor = key.replace(".", "")
            out.append(f'| <span id="{anchor}"></span>`{key}` | `{_cell(_type_name(hints[f.name]))}` | '
                       f"`{_cell(_value(default))}` | {_cell(allowed)} | {_cell(notes.get(f.name, ''))} |")
        out.append("")
    out += ["Checked across keys: `data.scale_min` and `data.scale_max` need 0 < scale_min <= scale_max; an "
            f"objective table names only the terms {', '.join(f'`{t}`' for t in config.OBJECTIVE_TERMS)}, with "
            "weights >= 0 and at least one > 0.", ""]
    out += _presets(config)
    return "\n".join(out) + "\n"


def _flat(cfg: object, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_flat(v, f"{f.name}."))
        else:
            out[prefix + f.name] = v
    return out


def _presets(config) -> list[str]:
    base = _flat(config.RunConfig())
    out = ["## Presets", "",
           "`--preset NAME` starts from one of these; each row lists the keys the preset sets to something other "
           "than the defaults above. A command that names a dataset and no preset starts from that dataset's "
           "preset.", "", "| preset | keys that differ from the defaults |", "| --- | --- |"]
    for name in config.PRESETS:
        diff = {k: v for k, v in _flat(config.preset(name)).items() if v != base[k]}
        shown = "<br>".join(f"`{k} = {_cell(_value(v))}`" for k, v in diff.items())
        out.append(f"| `{name}` | {shown} |")
    return out + [""]
