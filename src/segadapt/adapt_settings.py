"""The method's own policy for H2's settings, beside adapt(): H1's run with the sweep's adaptation budget.

`segadapt adapt`, `segadapt peer` and segadapt.adapt_model all train H2 as `segadapt experiment` does: with
H1's own run settings (batch, weight decay, seed, data) but experiment.iterations steps at experiment.adapt_lr,
and nothing of what D2 is or what H1 happened to regress carried over from H1's run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segadapt.config import AdaptConfig, RunConfig, from_dict
from segadapt.errors import ConfigError
from segadapt.model_settings import is_segadapt, trained_config


def with_adapt_budget(base: RunConfig) -> RunConfig:
    """`base` as an adaptation: the sweep's budget and lr (experiment.iterations, experiment.adapt_lr), no time
    budget, and the D2 and objective settings back at their defaults (only grad_clip, holdout and probes,
    which belong to the recipe, are kept)."""
    base.name, base.train.time_budget_s = "adapt", 0.0
    kept = base.adapt
    base.adapt = AdaptConfig(grad_clip=kept.grad_clip, holdout=kept.holdout, probes=kept.probes)
    base.shift.d2_dir, base.shift.pairs_csv = "", ""
    base.shift.d1_raster, base.shift.d2_raster, base.shift.label_raster = "", "", ""
    base.train.iterations, base.train.lr = base.experiment.iterations, base.experiment.adapt_lr
    return base


def adapt_base(meta: Mapping[str, Any], h1: str, dataset: str = "") -> RunConfig:
    """H1's own run settings (batch, weight decay, seed, data...) with the sweep's adaptation budget and lr,
    so `segadapt adapt` trains H2 as `segadapt experiment` does; older model files give their data only. An
    H1 that records no run (a transformers or factory model) takes them from the preset of `dataset`."""
    if not is_segadapt(meta):  # a transformers or factory H1: the data's preset, the data from the command line
        base = trained_config(meta, h1, dataset)
    else:
        try:
            base = from_dict(RunConfig, meta["config"], f"{h1} metadata")
        except (ConfigError, KeyError, TypeError):
            return trained_config(meta, h1)
    base.model.width, base.model.arch = meta["width"], meta["arch"]
    return with_adapt_budget(base)
