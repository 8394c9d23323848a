"""The sweep's protocol, apart from how it is run (experiment.py) and how it is shown (viz/report.py, viz/plots.py).

The comparison rows a sweep may run (experiment.baselines) and what each means, the metrics every row is
scored by, and the typed shape of the results that the sweep hands to the renderers and writes as results.json.
"""

from __future__ import annotations

from typing import Any, TypedDict

# the baselines of the study, then the label-free peers a user would run instead (segadapt.peers), which read
# no D2 label either
BASELINE_MEANINGS = {"B0": "H1 on D2", "B1": "trained from scratch on D2 with D1 labels",
                     "B2": "H1 fine-tuned on D2 with D1 labels",
                     "adabn": "H1 with its BatchNorm statistics re-estimated on D2 images (AdaBN; no gradient step)",
                     "tent": "H1's normalisation scales and shifts trained to minimise its prediction entropy on D2 "
                             "images (TENT)",
                     "self_training": "H1 fine-tuned on D2 images with its own most confident predictions as labels"}
BASELINES = tuple(BASELINE_MEANINGS)  # B0, B1, B2 and the peers
METRICS = ("mean_acc", "miou", "pixel_acc")


class SummaryEntry(TypedDict):
    """One (shift, method) over its seeds: each metric's mean and std (nan, null in JSON, where none scored)."""

    shift: str
    method: str
    seeds: int
    diverged: int
    mean_acc: float
    mean_acc_std: float
    miou: float
    miou_std: float
    pixel_acc: float
    pixel_acc_std: float


class SweepResults(TypedDict, total=False):
    """What a sweep found, as results.json holds it: per-seed rows, their summary, each shift's distortion of H1,
    the severity searches, label-free checkpoint selection, the machine, and the report's path once written."""

    rows: list[dict[str, Any]]
    summary: list[SummaryEntry]
    distortion: dict[str, float | None]
    severity_search: list[dict[str, Any]]
    selection: list[dict[str, Any]]
    selection_across_presets: dict[str, float | None]
    environment: dict[str, Any]
    report: str
