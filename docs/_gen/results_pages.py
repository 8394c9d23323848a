"""One results page per benchmark in docs/results, made at build time: the notes written for it
(docs/_gen/results_notes/<name>.md: what was run and what it shows), the machine it ran on (from the JSON), the
table (the benchmark's own <name>.md when it wrote one, else the JSON's values) and its figures (docs/figures)."""

from __future__ import annotations

import json
import re
from pathlib import Path

NOTES = Path(__file__).resolve().parent / "results_notes"
FIGURES = Path(__file__).resolve().parents[1] / "figures"
MACHINE_KEYS = ("environment", "machine", "date", "started", "threads", "cpu_count", "load_average",
                "load_avg_1min", "load_average_start", "load_average_end", "load_avg_1min_after", "wall_s")


def names(results: Path) -> list[str]:
    return sorted({p.stem for p in results.glob("*.json")})


def _notes(name: str) -> str:
    path = NOTES / f"{name}.md"
    return path.read_text() if path.exists() else f"# {name}\n\nNo notes were written for this benchmark yet.\n"


# the order of the Results section (the overview's); a benchmark not named here follows them, by name
ORDER = ("compare", "camvid-photocopy", "synthetic-ripple", "study-camvid", "camvid-photocopy-segformer",
         "objectives-synthetic-segformer", "adabn_keep", "registration", "misalign_sweep", "demo_time",
         "regression_step", "regression_step-avx2", "train_flops", "data_loader", "shift_speed", "shift_raster",
         "predict_tiling", "predict_overhead", "predict_large", "export_speed")


def titles(results: Path) -> dict[str, str]:
    """name -> page title, in the Results section's order."""
    out = {}
    found = names(results)
    for name in [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]:
        first = _notes(name).splitlines()[0]
        out[name] = first[2:].strip() if first.startswith("# ") else name
    return out


def _scalar(v: object) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        v = f"{v:.4g}"
    elif not _scalar(v):
        v = json.dumps(v)
        v = v if len(v) <= 80 else v[:77] + "..."
    return str(v).replace("|", "\\|").replace("\n", " ")


def _flat(d: dict, prefix: str = "", depth: int = 2) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict) and depth > 0:
            out.update(_flat(v, f"{prefix}{k}.", depth - 1))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _table(rows: list[tuple[str, dict]], first: str) -> list[str]:
    cols: list[str] = []
    for _, r in rows:
        cols += [c for c in r if c not in cols]
    cols = cols[:12]
    out = [f"| {first} | " + " | ".join(cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    out += [f"| {_fmt(label)} | " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for label, r in rows]
    return out + [""]


def json_tables(data: dict) -> list[str]:
    """The JSON as tables: its scalars as one key/value table, each list or table of records as a table."""
    data = {k: v for k, v in data.items() if k not in MACHINE_KEYS}
    scalars = {k: v for k, v in data.items() if _scalar(v) or (isinstance(v, list) and all(map(_scalar, v)))}
    out = ["| key | value |", "| --- | --- |"] + [f"| `{k}` | {_fmt(v)} |" for k, v in scalars.items()] + [""]
    for key, value in data.items():
        if key in scalars:
            continue
        out += [f"**{key}**", ""]
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            out += _table([(str(i), _flat(r)) for i, r in enumerate(value)], "#")
        elif isinstance(value, dict) and value and all(isinstance(r, dict) for r in value.values()):
            out += _table([(k, _flat(r)) for k, r in value.items()], "")
        elif isinstance(value, dict):
            out += ["| key | value |", "| --- | --- |"] + [f"| `{k}` | {_fmt(v)} |" for k, v in
                                                         _flat(value).items()] + [""]
        else:
            out += [f"`{_fmt(value)}`", ""]
    return out


def machine(data: dict) -> str:
    parts = []
    for key in MACHINE_KEYS:
        if key in data:
            v = data[key]
            shown = ", ".join(f"{k} {_fmt(x)}" for k, x in v.items() if x not in ("", None)) if isinstance(
                v, dict) else _fmt(v)
            parts.append(f"{key.replace('_', ' ')}: {shown}")
    return "; ".join(parts) if parts else "not recorded in the JSON"


def _own_markdown(path: Path, name: str, shown: str) -> str:
    """A benchmark's own results .md, its headings one level down, its image links pointed at docs/figures (an
    image the notes in `shown` already show is left out)."""
    text = path.read_text()
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)

    def image(m: re.Match) -> str:
        target = m.group(2)
        if not (path.parent / target).exists():  # a figure the benchmark wrote beside its table, kept in docs/figures
            kept = [f for f in (FIGURES / f"{name}-{Path(target).name}", FIGURES / Path(target).name) if f.exists()]
            target = f"../figures/{kept[0].name}" if kept else ""
        if not target:
            return f"*({m.group(1)}: not kept)*"
        return "" if f"]({target})" in shown else f"![{m.group(1)}]({target})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", image, text)


def _figures(name: str, all_names: list[str], text: str) -> list[str]:
    """docs/figures/<name>*.png not shown yet, leaving those of a longer benchmark name to that benchmark."""
    longer = [n for n in all_names if n != name and n.startswith(name)]
    found = [p for p in sorted(FIGURES.glob(f"{name}*.png"))
             if not any(p.name.startswith(n) for n in longer) and p.name not in text]
    return [f"![{p.stem}](../figures/{p.name})" for p in found]


def pages(results: Path) -> dict[str, str]:
    out = {}
    all_names = names(results)
    for name in all_names:
        data = json.loads((results / f"{name}.json").read_text())
        text = _notes(name).rstrip() + "\n\n"
        text += f"**Machine.** {machine(data) if isinstance(data, dict) else 'not recorded'}.\n\n"
        own = results / f"{name}.md"
        if own.exists():
            text += "## Tables (the benchmark's own results.md)\n\n" + _own_markdown(own, name, text) + "\n"
        elif isinstance(data, dict):
            text += "## Values (from the JSON)\n\n" + "\n".join(json_tables(data)) + "\n"
        figures = _figures(name, all_names, text)
        if figures:
            text += "## Figures\n\n" + "\n\n".join(figures) + "\n\n"
        text += f"Raw data: [`docs/results/{name}.json`]({name}.json)\n"
        out[name] = text
    return out
