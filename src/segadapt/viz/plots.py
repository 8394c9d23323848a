"""Result plots: methods against baselines per shift, and performance against the regressed layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from segadapt.checkpoint import atomic_path


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **grid: Any) -> tuple[Figure, Any]:
    """A figure for a file, and its axes (as pyplot.subplots returns them). Built without pyplot, so no backend
    is chosen or switched: a user's interactive one stays as it was, and saving renders with Agg."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **grid)


def save_figure(fig: Figure, path: Path, dpi: int = 120, tight: bool = True) -> Path:
    """Write a PNG atomically. The figure belongs to no pyplot window, so it is freed with its last reference.

    `tight` crops the canvas to its content; grids laid out with tight_layout pass False.
    """
    with atomic_path(path) as tmp:  # the temp name has no .png suffix: say the format
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return path


def plot_methods(results: dict[str, Any], path: Path) -> Path | None:
    """(a) mean accuracy and mIoU bars of every method, grouped by shift."""
    entries = [e for e in results["summary"] if e["shift"] != "none"]
    if not entries:
        return None
    shifts = list(dict.fromkeys(e["shift"] for e in entries))
    methods = list(dict.fromkeys(e["method"] for e in entries))
    lookup = {(e["shift"], e["method"]): e for e in entries}
    fig, axes = subplots(1, 2, figsize=(max(8, 1.2 * len(methods) * len(shifts)), 4), sharey=True)
    width = 0.8 / len(methods)
    x = np.arange(len(shifts))
    for ax, metric, title in zip(axes, ("mean_acc", "miou"), ("mean accuracy", "mIoU")):
        for k, m in enumerate(methods):
            vals = [lookup[(s, m)][metric] if (s, m) in lookup else np.nan for s in shifts]
            errs = [lookup[(s, m)][f"{metric}_std"] if (s, m) in lookup else 0 for s in shifts]
            bars = ax.bar(x + (k - (len(methods) - 1) / 2) * width, vals, width, yerr=errs, label=m)
            ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=2)
        h1 = next((e for e in results["summary"] if e["method"] == "H1"), None)
        if h1:
            ax.axhline(h1[metric], color="k", ls="--", lw=1, label="H1 on D1")
        ax.set_xticks(x, shifts)
        ax.set_title(title)
        ax.set_ylim(0, 1)  # bars keep a zero baseline (their lengths compare); the labels give the values
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def _zoom(values: list[float]) -> tuple[float, float]:
    """y limits around the values (within 0..1): a fixed 0..1 axis flattens the few points that separate
    the methods into one line."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    pad = max(0.02, 0.15 * (hi - lo))
    return max(0.0, lo - pad), min(1.0, hi + 2 * pad)


def plot_layers(results: dict[str, Any], path: Path) -> Path | None:
    """(b) mIoU and mean accuracy of H2 against the transferred feature map, baselines as lines."""
    entries = [e for e in results["summary"] if e["method"].startswith("H2:")]
    if not entries:
        return None
    shifts = list(dict.fromkeys(e["shift"] for e in entries))
    layers = list(dict.fromkeys(e["method"][3:] for e in entries))
    lookup = {(e["shift"], e["method"]): e for e in results["summary"]}
    fig, axes = subplots(1, 2, figsize=(10, 4))  # each panel zooms on its own values
    for ax, metric, title in zip(axes, ("miou", "mean_acc"), ("mIoU", "mean accuracy")):
        for s in shifts:
            ys = [lookup.get((s, f"H2:{layer}"), {}).get(metric, np.nan) for layer in layers]
            line = ax.plot(layers, ys, marker="o", label=f"H2 ({s})")[0]
            for layer, y in zip(layers, ys):
                if np.isfinite(y):
                    ax.annotate(f"{y:.3f}", (layer, y), textcoords="offset points", xytext=(0, 5), ha="center",
                                fontsize=6, color=line.get_color())
            for base, style in (("B0", ":"), ("B2", "--")):
                if (s, base) in lookup:
                    ax.axhline(lookup[(s, base)][metric], color=line.get_color(), ls=style, lw=1, label=f"{base} ({s})")
        ax.set_title(f"{title} vs transferred feature map")
        ax.set_xlabel("regressed layers")
        ax.set_ylim(*_zoom([e[metric] for e in results["summary"] if e["shift"] in shifts
                            and (e["method"].startswith("H2:") or e["method"] in ("B0", "B2"))]))
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)
