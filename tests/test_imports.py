"""segadapt's import graph, read from the source (imports inside functions included): no cycles, none into cli.

An import inside a function hides a cycle from Python (it runs late) but not from a reader: the two modules
still need each other. So every `import` and `from ... import` anywhere in a module counts, relative ones
resolved, and importing `a.b.c` also runs the packages `a.b` and `a` (those the importer is not inside).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "segadapt"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, whether it is a package's __init__)."""
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _known(name: str) -> str | None:
    """The module a dotted name lies in (`segadapt.data.base.spread_indices` -> `segadapt.data.base`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(name: str, text: str | None = None) -> set[str]:
    """The segadapt modules `name` imports anywhere in its file (or in `text`), with the packages those
    imports run."""
    path, is_package = MODULES[name]
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str | None] = set()
    root = False  # a name taken from the top-level package itself (`from segadapt import __version__`)
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            targets.update(_known(a.name) for a in node.names if a.name.split(".")[0] == PACKAGE)
            root |= any(a.name == PACKAGE for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                full = f"{module}.{alias.name}"
                targets.add(full if full in MODULES else _known(module))
                root |= module == PACKAGE and full not in MODULES
    inside = {name, *_ancestors(name)}  # already running when `name` runs, unless named outright (root)
    out = {t for t in targets if t}
    out |= {a for t in list(out) for a in _ancestors(t) if a in MODULES}
    return (out - inside) | ({PACKAGE} if root and name != PACKAGE else set())


GRAPH = {name: _imports(name) for name in MODULES}


def _imports_root(line: str) -> bool:
    """Whether a module of segadapt holding just `line` takes a name from the package itself."""
    return PACKAGE in _imports("segadapt.run", line)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _part(name: str) -> str:
    """The top-level part of segadapt a module belongs to: `segadapt.data.d2` -> `segadapt.data`."""
    return ".".join(name.split(".")[:2])


def test_the_graph_is_read():
    """The parser sees lazy and relative imports (a broken parser would find no cycle anywhere)."""
    assert "segadapt.data.base" in GRAPH["segadapt.data.d2"]
    assert "segadapt.models.vgg_deeplab" in GRAPH["segadapt.models"]
    assert any(_part(t) == "segadapt.shifts" for t in GRAPH["segadapt.data.d2"])  # imported inside functions
    assert "segadapt.cli.common" in GRAPH["segadapt.cli.adapt"]


def test_cycle_finder():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_parts():
    """Nor between segadapt's parts (data, shifts, models, config, ...): data may use shifts, or shifts data,
    not both."""
    parts: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        parts.setdefault(_part(name), set()).update(_part(t) for t in targets if _part(t) != _part(name))
    parts.pop(PACKAGE, None)  # the top-level package re-exports the API; nothing inside imports it
    cycle = _cycle({p: t - {PACKAGE} for p, t in parts.items()})
    assert cycle is None, "import cycle between parts: " + " -> ".join(cycle)


def test_nothing_outside_cli_imports_cli():
    cli = f"{PACKAGE}.cli"
    entry = f"{PACKAGE}.__main__"  # `python -m segadapt` is the CLI's entry point
    wrong = sorted(f"{name} -> {t}" for name, targets in GRAPH.items() if _part(name) not in (cli, entry)
                   for t in targets if _part(t) == cli)
    assert not wrong, "the library imports the CLI: " + ", ".join(wrong)


def test_shifts_use_no_data_code():
    wrong = sorted(f"{name} -> {t}" for name, targets in GRAPH.items() if _part(name) == f"{PACKAGE}.shifts"
                   for t in targets if _part(t) == f"{PACKAGE}.data")
    assert not wrong, "shifts import data code: " + ", ".join(wrong)


def test_nothing_inside_imports_the_top_level_package():
    """segadapt/__init__ re-exports the public API; a module taking a name from it would close a cycle through
    it (segadapt.version holds the version for that reason)."""
    assert _imports_root("from segadapt import __version__") and not _imports_root("from segadapt import data")
    wrong = sorted(name for name, targets in GRAPH.items() if PACKAGE in targets)
    assert not wrong, f"import {PACKAGE} itself: " + ", ".join(wrong)


def test_the_cli_starts_without_torch():
    """`segadapt --help` and a mistyped flag answer at once: the parsers and the output-folder helpers load no
    torch (run_dir.py, which needs it, is imported when a command first writes)."""
    import subprocess
    import sys

    code = "import sys, segadapt.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SRC,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False", out.stderr[-2000:]
