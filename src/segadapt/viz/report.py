"""A sweep's results shown: results.md's tables (`results_markdown`), and report.html, one self-contained file
(figures embedded) that opens in any browser.

It reads only what the sweep wrote (results.json, the plots, figures/<shift>/...), so it can be rebuilt
with `segadapt viz report DIR` after the fact, e.g. once more figures have been added.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

from segadapt.checkpoint import write_text_atomic
from segadapt.errors import SegadaptError
from segadapt.protocol import BASELINE_MEANINGS, METRICS, SweepResults


def method_legend(methods: Collection[str]) -> str:
    """The results table's footnote (results.md and report.html): the baselines that ran, then the H2 rows."""
    said = [f"{b}: {meaning}." for b, meaning in BASELINE_MEANINGS.items() if b in methods]
    h2 = ["H2:<layers>: H1 adapted by feature regression on those layers, without D2 labels."]
    if any(m.startswith("H2:") and "+" in m for m in methods):  # experiment.objectives' rows
        h2.append("H2:<layers>+<terms>: adapted by those adapt.objective terms instead (term=weight where the "
                  "weight is not 1); feature terms regress <layers>, and nothing above them trains unless "
                  "adapt.train_head is set.")
    return " ".join([*said, *h2])

SECTIONS = (
    ("features", ("*.png",), "Feature maps before and after adaptation",
     "Per tap: the channel of H1 with the highest activation variance on X1. Rows give the mean squared "
     "difference to H1(X1) over all channels, before (H1 on X2) and after adaptation (H2 on X2)."),
    ("reconstruction", ("*_comparison.png", "*_loss.png"), "The image as the network sees it",
     "Reconstructed from noise by matching the network's features on a D1 image (content loss) and "
     "their Gram matrices (style loss), through H1 and through the adapted H2."),
    ("overlays", ("*.png",), "Segmentations",
     "Image, ground truth and predictions on D2 (val), in the dataset's colours."),
)

CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.3em 0}
figure{margin:0.5em 0 1.5em}figcaption{font-size:0.85em;color:#555}.best{font-weight:bold}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_img(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _number(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"  # v != v: nan


def _fmt(e: dict[str, Any], m: str) -> str:
    if e[m] is None:  # results.json stores nan as null
        return "n/a"
    return f"{e[m]:.3f} ± {_number(e[m + '_std'])}" if e.get("seeds", 1) > 1 else f"{e[m]:.3f}"


def _results_table(results: dict[str, Any], shift: str) -> str:
    entries = [e for e in results["summary"] if e["shift"] == shift]
    best = max((e["miou"] for e in entries if e["miou"] is not None), default=None)  # null: nan, not a score
    rows = ["<tr><th>method</th><th>mean accuracy</th><th>mIoU</th><th>pixel accuracy</th><th>seeds</th></tr>"]
    for e in entries:
        cls = ' class="best"' if e["miou"] == best else ""
        rows.append(f"<tr{cls}><td>{html.escape(e['method'])}</td><td>{_fmt(e, 'mean_acc')}</td>"
                    f"<td>{_fmt(e, 'miou')}</td><td>{_fmt(e, 'pixel_acc')}</td><td>{e['seeds']}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _selection_table(results: dict[str, Any]) -> str:
    sel = results.get("selection") or []
    if not sel:
        return ""
    head = ("<tr><th>seed / shift / method</th><th>selected step</th><th>mIoU there</th><th>best mIoU (step)</th>"
            "<th>final mIoU</th><th>regret (points)</th><th>regret by loss / agreement / entropy</th>"
            "<th>rank corr, held-out loss</th><th>rank corr, agreement</th><th>rank corr, entropy</th></tr>")
    rows = [
        f"<tr><td>{r['seed']} / {html.escape(r['shift'])} / {html.escape(r['method'])}</td>"
        f"<td>{r['selected_step']}</td>"
        f"<td>{_number(r['selected_miou'])}</td><td>{_number(r['best_miou'])} ({r['best_step']})</td>"
        f"<td>{_number(r['final_miou'])}</td><td>{_number(r['regret_points'], 2)}</td>"
        f"<td>{' / '.join(_number(r.get(f'regret_{k}'), 2) for k in ('loss', 'agreement', 'entropy'))}</td>"
        f"<td>{_number(r.get('rank_corr_loss'), 2)}</td><td>{_number(r.get('rank_corr_agreement'), 2)}</td>"
        f"<td>{_number(r.get('rank_corr_entropy'), 2)}</td></tr>"
        for r in sel
    ]
    across = results.get("selection_across_presets") or {}
    note = ("<p>Across layer presets, rank correlation of (low) final entropy with final mIoU: "
            + ", ".join(f"{html.escape(k)}: {_number(v, 2)}" for k, v in across.items()) + "</p>") if across else ""
    return ("<h2>Label-free checkpoint selection</h2><p>The checkpoint adapt.select's signal chose (the "
            "highest agreement of H2's labels with H1's unless set otherwise; no D2 labels) against mIoU on D2, "
            "which only this report reads. "
            "Regret: mIoU points below the best probe, for the choice each signal would make. Rank correlations: "
            "+1 means the signal orders checkpoints exactly as mIoU does.</p><table>" + head + "".join(rows)
            + "</table>" + note)


_SELECTION_FIELDS = {"seed": "whole", "shift": "string", "method": "string", "selected_step": "whole",
                     "best_step": "whole", "selected_miou": "score", "best_miou": "score", "final_miou": "score",
                     "regret_points": "score"}


def _what(v: Any) -> str:
    """A JSON value's kind, as someone reading the file would call it."""
    if isinstance(v, bool):
        return "true/false"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _fits(v: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(v, str)
    if isinstance(v, bool):
        return False
    if kind == "whole":
        return isinstance(v, int)
    return v is None or isinstance(v, (int, float))  # a score: experiment writes nan as null


_KIND_NAMES = {"string": "a string", "whole": "a whole number", "score": "a number"}


def _check_entries(entries: Any, name: str, fields: dict[str, str], optional: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with a list of objects holding `fields`; an empty list when nothing is."""
    if not isinstance(entries, list):
        return [f"{name!r} is {_what(entries)}, not a list"]
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            return [f"{name}[{i}] is {_what(e)}, not an object"]
        want = dict(fields)
        if name == "summary" and isinstance(e.get("seeds"), int) and e["seeds"] > 1:  # a mean: std shown too
            want |= {f"{m}_std": "score" for m in METRICS}
        missing = [k for k in want if k not in e]
        if missing:
            return [f"{name}[{i}] lacks {', '.join(map(repr, missing))}"]
        for k, kind in [*want.items(), *((k, "score") for k in optional if k in e)]:
            if not _fits(e[k], kind):
                return [f"{name}[{i}].{k} is {e[k]!r}, not {_KIND_NAMES[kind]}"]
    return []


def _check_mapping(value: Any, name: str, scores: bool) -> list[str]:
    if not isinstance(value, dict):
        return [f"{name!r} is {_what(value)}, not an object"]
    bad = next((k for k, v in value.items() if scores and not _fits(v, "score")), None)
    return [f"{name}.{bad} is {value[bad]!r}, not a number"] if bad is not None else []


def check_results(results: Any, results_file: Path) -> None:
    """Refuse a results.json that is not what `segadapt experiment` writes, naming the first thing wrong,
    so that an edited or truncated file is one line instead of a KeyError halfway through the page."""
    if not isinstance(results, dict):
        problems = [f"holds {_what(results)}, not the object `segadapt experiment` writes"]
    elif "summary" not in results:
        problems = ["missing 'summary' (the results table)"]
    else:
        summary = {"shift": "string", "method": "string", "seeds": "whole", **{m: "score" for m in METRICS}}
        problems = _check_entries(results["summary"], "summary", summary)
        if results.get("selection") is not None:
            problems += _check_entries(results["selection"], "selection", _SELECTION_FIELDS,
                                       ("rank_corr_loss", "rank_corr_entropy", "rank_corr_agreement",
                                        "regret_loss", "regret_agreement", "regret_entropy"))
        for key, scores in (("distortion", True), ("selection_across_presets", True), ("environment", False)):
            if results.get(key) is not None:
                problems += _check_mapping(results[key], key, scores)
    if problems:
        raise SegadaptError(f"{results_file}: {problems[0]}; re-run segadapt experiment to rewrite it")


def write_report(sweep_dir: Path) -> Path:
    """Build <sweep_dir>/report.html from the sweep's files; returns its path."""
    results_file = sweep_dir / "results.json"
    if not results_file.is_file():
        raise SegadaptError(f"{sweep_dir}: no results.json; pass the output directory of `segadapt experiment`")
    try:
        results = json.loads(results_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SegadaptError(f"{results_file}: not valid JSON ({e}); rerun the sweep to rewrite it") from None
    check_results(results, results_file)

    parts = [f"<h1>segadapt sweep: {html.escape(sweep_dir.name)}</h1>"]
    h1 = next((e for e in results["summary"] if e["method"] == "H1"), None)
    if h1:
        parts.append(f"<p>H1 on D1 (val): mean accuracy {_fmt(h1, 'mean_acc')}, mIoU {_fmt(h1, 'miou')}.</p>")
    shifts = [s for s in dict.fromkeys(e["shift"] for e in results["summary"]) if s != "none"]
    dist = results.get("distortion", {})
    if dist:
        parts.append("<h2>Distortion per shift</h2><table><tr><th>shift</th><th>distortion of H1</th></tr>"
                     + "".join(f"<tr><td>{html.escape(s)}</td><td>{_number(d)}</td></tr>" for s, d in dist.items())
                     + "</table><p>0.5·(|acc1 − acc2|/acc1 + |mIoU1 − mIoU2|/mIoU1), H1 on D1 against H1 on D2.</p>")
    for s in shifts:
        parts += [f"<h2>Results: {html.escape(s)}</h2>", _results_table(results, s)]
    parts.append(f"<p>{html.escape(method_legend({e['method'] for e in results['summary']}))} "
                 "Scored on D2's val split.</p>")
    for name, caption in (("methods.png", "(a) methods against baselines per shift"),
                          ("layers.png", "(b) performance against the transferred feature map")):
        if (sweep_dir / name).is_file():
            parts.append(_figure(sweep_dir / name, caption))
    parts.append(_selection_table(results))
    for key, patterns, title, text in SECTIONS:
        files = sorted(f for pattern in patterns for s in shifts  # only this sweep's shifts, not stale ones
                       for f in (sweep_dir / "figures" / s).glob(f"{key}/{pattern}"))
        if files:
            parts += [f"<h2>{title}</h2>", f"<p>{html.escape(text)}</p>"]
            parts += [_figure(f, f"{f.parent.parent.name}: {f.stem}") for f in files]
    env = results.get("environment", {})
    if env:
        parts.append("<p><small>" + html.escape(", ".join(f"{k} {v}" for k, v in env.items() if v != "")) +
                     "</small></p>")
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>segadapt report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(p for p in parts if p) + "</body></html>\n")
    out = sweep_dir / "report.html"
    write_text_atomic(out, page)
    return out


# --- results.md -------------------------------------------------------------------------------------

def results_markdown(results: SweepResults, figures: list[str]) -> str:
    """results.md: H1, then per shift its distortion, severity search and results table, the legend, the
    label-free selection table and the plots."""
    def fmt(e: dict[str, Any], m: str) -> str:
        if math.isnan(e[m]):
            return "n/a"
        return f"{e[m]:.3f} ± {e[m + '_std']:.3f}" if e["seeds"] > 1 else f"{e[m]:.3f}"

    lines = ["# segadapt experiment", ""]
    h1 = next((e for e in results["summary"] if e["method"] == "H1"), None)
    if h1:
        lines += [f"H1 on D1 (val): mean accuracy {fmt(h1, 'mean_acc')}, mIoU {fmt(h1, 'miou')}", ""]
    shifts = [s for s in dict.fromkeys(e["shift"] for e in results["summary"]) if s != "none"]
    for s in shifts:
        lines += [f"## Shift: {s}", ""]
        if results["distortion"].get(s) is not None:
            lines += [f"Distortion of H1: {results['distortion'][s]:.3f}", ""]
        lines += _search_markdown(results, s)
        lines += ["| method | mean accuracy | mIoU | pixel accuracy |", "| --- | --- | --- | --- |"]
        for e in results["summary"]:
            if e["shift"] == s:
                name = e["method"] + (f" ({e['diverged']} of {e['seeds']} diverged)" if e.get("diverged") else "")
                lines.append(f"| {name} | {fmt(e, 'mean_acc')} | {fmt(e, 'miou')} | {fmt(e, 'pixel_acc')} |")
        lines.append("")
    lines += [method_legend({e["method"] for e in results["summary"]}), ""]
    lines += _selection_markdown(results)
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _search_markdown(results: SweepResults, shift: str) -> list[str]:
    found = [r for r in results.get("severity_search") or [] if r["shift"] == shift]
    if not found:
        return []
    first = found[0]
    lines = [f"Severity searched for H1's distortion {first['target']:g} ± {first['tolerance']:g} on "
             f"{first['info'].get('images')} {first['info'].get('split')} images "
             f"({first['info'].get('units')} units):", "",
             "| seed | severity | distortion (search images) | distortion (val) | reached | note |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in found:
        val = r.get("val_distortion")
        lines.append(f"| {r['seed']} | {r['severity']:.4f} | {r['distortion']:.3f} | "
                     f"{'n/a' if val is None else f'{val:.3f}'} | {'yes' if r['reached'] else 'no'} | "
                     f"{'' if r['reached'] else r['message']} |")
    return lines + [""]


def _selection_markdown(results: SweepResults) -> list[str]:
    sel = results.get("selection") or []
    if not sel:
        return []
    lines = [
        "## Label-free checkpoint selection", "",
        "Each adaptation was probed during training on held-out pairs; adapt.select's signal (the agreement of "
        "H2's labels with H1's unless set otherwise) made the label-free choice (model_selected.safetensors). "
        "mIoU on D2 judges it here. Regret: mIoU points below the best probe, for the choice each signal would "
        "make. Rank correlations: +1 means the signal orders checkpoints exactly as mIoU does.", "",
        "| seed | shift | method | selected step | mIoU there | best mIoU (step) | final mIoU | regret (points) "
        "| regret by loss / agreement / entropy | rank corr, held-out loss | rank corr, agreement "
        "| rank corr, entropy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sel:
        regrets = " / ".join(_points(r.get(f"regret_{k}")) for k in ("loss", "agreement", "entropy"))
        lines.append(
            f"| {r['seed']} | {r['shift']} | {r['method']} | {r['selected_step']} | {r['selected_miou']:.3f} | "
            f"{r['best_miou']:.3f} ({r['best_step']}) | {r['final_miou']:.3f} | {r['regret_points']:.2f} | "
            f"{regrets} | {_corr(r.get('rank_corr_loss'))} | {_corr(r.get('rank_corr_agreement'))} | "
            f"{_corr(r.get('rank_corr_entropy'))} |"  # a signal the probes did not hold (no pairs term): n/a
        )
    across = results.get("selection_across_presets") or {}
    if across:
        lines += ["", "Across layer presets, rank correlation of (low) final entropy with final mIoU: "
                  + ", ".join(f"{k}: {_corr(v)}" for k, v in across.items())]
    return lines + [""]


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _corr(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
