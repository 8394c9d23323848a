"""The study's distortion protocol, beside evaluate(): how much a shift D2 of D1 hurts a model.

The model is scored on a labelled split of D1 and on the same split shifted (by the config's filter and
severity, on the fly, or a `segadapt shift` output in shift.d2_dir); the distortion is the mean relative drop
of mean accuracy and mIoU (metrics.distortion). With shift.target_distortion the severity is first searched on
D1 *train* images (severity_search.py), never on the scored split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from segadapt.config import RunConfig
from segadapt.errors import SegadaptError
from segadapt.metrics import Scores

if TYPE_CHECKING:
    from segadapt.severity_search import SearchResult


@dataclass
class Distortion:
    """D1's and D2's scores of one model, the distortion between them, and the shift that made D2."""

    filter: str
    severity: float
    units: str
    split: str
    d1: Scores
    d2: Scores
    distortion: float  # nan where D1's scores are 0
    search: SearchResult | None = None  # how the severity was found, with shift.target_distortion

    def to_dict(self, model: str | Path) -> dict[str, Any]:
        """The record `segadapt distortion --out` writes (nan as null)."""
        from segadapt.experiment import json_safe
        from segadapt.selection import finite_or_none

        return {"model": str(model), "filter": self.filter, "severity": self.severity, "split": self.split,
                "d1": {"mean_acc": self.d1.mean_acc, "miou": self.d1.miou},
                "d2": {"mean_acc": self.d2.mean_acc, "miou": self.d2.miou},
                "units": self.units, "distortion": finite_or_none(self.distortion),
                **({"search": json_safe(self.search.to_dict())} if self.search else {})}


def check_classes(model: str | Path, model_classes: int, cfg: RunConfig, num_classes: int) -> None:
    """A model scored on a dataset of other classes: one line, before any scoring."""
    if model_classes != num_classes:
        raise SegadaptError(f"{model}: model predicts {model_classes} classes but {cfg.data.dataset} has "
                            f"{num_classes}; evaluate on a dataset with the same classes")


def searched_severity(model: nn.Module, cfg: RunConfig, device: torch.device) -> SearchResult:
    """The severity at which `model`'s distortion on D1 train images is shift.target_distortion; set in `cfg`."""
    from segadapt.severity_search import search_for

    found = search_for(model, cfg, device, cfg.shift.filter, cfg.shift.target_distortion)
    cfg.shift.severity = found.severity
    return found


def measure_distortion(model: nn.Module, cfg: RunConfig, device: torch.device, split: str, *,
                       model_classes: int, name: str | Path = "model") -> Distortion:
    """`model` on D1's `split` and on its shift (cfg.shift), with the severity searched first when
    shift.target_distortion > 0 (cfg.shift.severity is then the one found)."""
    from segadapt.data import build_source
    from segadapt.data.d2 import d2_source, same_shift
    from segadapt.evaluate import score
    from segadapt.metrics import distortion

    model = model.to(device)
    found = searched_severity(model, cfg, device) if cfg.shift.target_distortion > 0 else None
    same_shift(cfg, split)
    d1 = build_source(cfg.data, split)
    check_classes(name, model_classes, cfg, d1.info.num_classes)
    s1 = score(model, d1, cfg, device)
    s2 = score(model, d2_source(cfg, split, labelled=True), cfg, device)
    sh = cfg.shift
    return Distortion(sh.filter, sh.severity, sh.units, split, s1, s2,
                      distortion(s1.mean_acc, s1.miou, s2.mean_acc, s2.miou), found)
