"""The Python API: load a model, adapt it on paired images, score it, predict with it, all from a notebook.

Every function here works on objects in memory (an `nn.Module`, tensors, a list of pairs) and needs no run
directory; each is a thin layer over the library the CLI uses (models/loading.py, adapt.adapt, evaluate.py,
predict.Predictor), so the two never drift apart.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from segadapt import checkpoint as ckpt
from segadapt.card import ModelCard, card_of
from segadapt.config import DEFAULT_PRESET, AdaptConfig, TrainConfig, merge, preset
from segadapt.errors import ConfigError
from segadapt.metrics import Scores

# --- load -------------------------------------------------------------------------------------------------


def load_model(spec: str | Path, *, device: torch.device | str = "cpu", weights: str | Path | None = None,
               kwargs: str | Mapping[str, Any] | None = None, trust: Collection[str] = (),
               model: nn.Module | None = None) -> nn.Module:
    """A model in eval mode from any form segadapt reads, with its `ModelCard` attached (`card_of(model)`).

    `spec`: a segadapt run directory or model .safetensors, a transformers save_pretrained directory, or a
    factory `package.module:function` (with `weights`, a state dict file, and `kwargs`, a dict or JSON text).
    `trust`: factories a model file may name and have called (calling one runs its code). `model`: a module of
    the saved architecture to load the weights into: what rebuilds a model adapted from an in-memory module,
    which no file can rebuild by itself.
    """
    from segadapt.models.loading import load_any

    if model is not None:
        path = ckpt.resolve_model_path(spec)
        tensors, meta = ckpt.load_model_file(path)
        target = copy.deepcopy(model)
        ckpt.load_weights(target, tensors, path)
        return ModelCard.from_meta(meta, path).attach(target.to(device).eval())
    loaded, meta = load_any(spec, device, weights=weights, kwargs=kwargs, trusted_factories=trust)
    return ModelCard.from_meta(meta, spec).attach(loaded)


# --- adapt --------------------------------------------------------------------------------------------------

class TensorPairs(Dataset):
    """(x1, x2) or (x1, x2, valid) tensors held in memory, as adapt() reads pairs: X1 and X2 are normalised
    3 x H x W images of one scene (D1 and D2), `valid` an optional 1 x H x W mask of where X2 has data."""

    def __init__(self, pairs: Iterable[Sequence[torch.Tensor]] | Dataset) -> None:
        # a map-style dataset is read item by item as the loop draws them (checked on its first item); any
        # other iterable is held in memory (and every item checked)
        lazy = isinstance(pairs, Dataset) and hasattr(pairs, "__len__")
        self.items: Any = pairs if lazy else [tuple(p) for p in pairs]
        if not len(self.items):
            raise ConfigError("adapt_model: no pairs given; pass (x1, x2) or (x1, x2, valid) tensors")
        sizes = {len(p) for p in ([self.items[0]] if lazy else self.items)}
        if sizes - {2, 3} or len(sizes) > 1:
            raise ConfigError(f"adapt_model: pairs must all be (x1, x2) or all (x1, x2, valid); got lengths "
                              f"{sorted(sizes)}")
        self.with_valid = sizes == {3}
        for x1, x2, *_ in [self.items[0]] if lazy else self.items:
            if x1.ndim != 3 or x1.shape != x2.shape:
                raise ConfigError(f"adapt_model: x1 and x2 must be 3 x H x W tensors of one size; got "
                                  f"{tuple(x1.shape)} and {tuple(x2.shape)}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        x1, x2, *rest = self.items[i]
        return (x1.float(), x2.float(), *(r.float() for r in rest))


@dataclass
class AdaptResult:
    """What adapt_model returns: H2 ready to use, and what the adaptation measured."""

    model: nn.Module  # H2, in eval mode, with its ModelCard attached
    selected: nn.Module | None  # the checkpoint adapt.select preferred (None without held-out probes)
    losses: list[float]  # the loss of every logged step, in order
    final_loss: float | None
    probes: list[dict[str, float]]  # step and label-free signals of each held-out probe
    selected_step: int | None
    layers: dict[str, float]  # the taps regressed and their weights
    card: ModelCard
    run_dir: Path | None  # the run's files when `out` was given (model.safetensors, log.csv, ...)
    summary: dict[str, Any] = field(default_factory=dict)  # adapt.json's whole record


def _settings(settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Keyword settings by their config section: a bare name of AdaptConfig or TrainConfig (batch_size,
    norm, select, ...), or any "section.key" passed as `**{"data.num_workers": 2}`."""
    adapt_keys = {f.name for f in fields(AdaptConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    table: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        if not section:
            section = "adapt" if name in adapt_keys else "train" if name in train_keys else ""
        if not section:
            raise ConfigError(f"adapt_model: unknown setting {key!r}; give a key of [adapt] or [train] (e.g. "
                              f"batch_size=4, norm='adabn'), or any section.key as **{{'data.num_workers': 2}}")
        table.setdefault(section, {})[name] = value
    return table


def card_for(model: nn.Module) -> ModelCard:
    """The card a model file of `model` needs: the one it was loaded with, else what rebuilds its family
    (a registry architecture, a transformers model, a factory); any other module is "module", whose weights
    load only into a module of the same architecture (load_model(..., model=)."""
    from segadapt.models import ARCHS
    from segadapt.models.contract import conform
    from segadapt.models.loading import rebuild_meta

    known = card_of(model)
    if known is not None:
        return known
    for name, build in ARCHS.items():
        if isinstance(build, type) and type(model) is build:
            return ModelCard(arch=name, num_classes=int(model.num_classes), width=float(getattr(model, "width", 1.0)))
    native = rebuild_meta(model)
    if "hf_config" in native:
        from segadapt.models.hf_dir import hf_meta

        return ModelCard.from_meta(hf_meta(model))  # type: ignore[arg-type]
    if "factory" in native:
        from segadapt.models.factory import factory_meta

        return ModelCard.from_meta(factory_meta(model))  # type: ignore[arg-type]
    return ModelCard(arch="module", num_classes=int(conform(model).num_classes or 0))


def as_h1(model: nn.Module) -> nn.Module:
    """A module adapt() can tap: itself if it implements the model contract; a bare transformers segmentation
    model behind segadapt's transformers adapter (stage taps, presets); any other module as it is (adapt()
    serves it through forward hooks on its module paths)."""
    from segadapt.models.contract import SegmentationModel

    if isinstance(model, SegmentationModel) or not hasattr(model, "config"):
        return model
    try:
        from segadapt.models.hf import HFSegmentation, layout_of

        layout_of(model)
    except (ConfigError, ImportError):
        return model
    return HFSegmentation(model)


def adapt_model(h1: nn.Module, pairs: Iterable[Sequence[torch.Tensor]] | Dataset, *,
                layers: Sequence[str] | str | None = None, objective: Mapping[str, float] | None = None,
                iterations: int | None = None, lr: float | None = None, out: str | Path | None = None,
                quiet: bool = True, **settings: Any) -> AdaptResult:
    """Adapt `h1` to the domain of the X2 images: H2 (a copy) is trained so its features on X2 match H1's on
    the paired X1 (segadapt.adapt.adapt, the CLI's `segadapt adapt`). No D2 label is read.

    `h1`: any `nn.Module` returning class logits (the built-in VGG, a transformers model, a module whose
    submodule paths are the taps). `pairs`: (x1, x2) or (x1, x2, valid) normalised 3 x H x W tensors, as a list,
    any iterable or a Dataset. `layers`: taps or one preset name (default: the model's deepest stage; a plain
    module needs module paths). `objective`: terms and weights, e.g. {"features": 1, "output_kl": 0.5}.
    `iterations`, `lr`: the budget (default: the sweep's, experiment.iterations at experiment.adapt_lr of H1's
    run, or of the default preset). `settings`: any other key of [adapt] or [train] (batch_size=4,
    norm="adabn", select="holdout_loss", device="cpu", ...). `out`: keep the run's files there (a new folder);
    without it they go to a temporary folder removed on return.
    """
    from segadapt import progress
    from segadapt.adapt import adapt
    from segadapt.adapt_settings import adapt_base, with_adapt_budget

    teacher = as_h1(copy.deepcopy(h1))  # adapt() freezes and moves its teacher: the caller's H1 stays as it is
    card = card_for(teacher)
    meta = card.to_meta()
    cfg = adapt_base(meta, "h1") if card.records_run else with_adapt_budget(preset(DEFAULT_PRESET))
    overrides = _settings(settings)
    own: dict[str, Any] = {"iterations": iterations, "lr": lr}
    overrides.setdefault("train", {}).update({k: v for k, v in own.items() if v is not None})
    adapt_own = {"layers": [layers] if isinstance(layers, str) else list(layers or []),
                 "objective": dict(objective) if objective else None}
    overrides.setdefault("adapt", {}).update({k: v for k, v in adapt_own.items() if v})
    cfg = merge(cfg, overrides, "adapt_model")
    # segadapt's own paired datasets (PairedDataset, RasterPairs) go in as they are
    dataset = pairs if isinstance(pairs, Dataset) and hasattr(pairs, "with_valid") else TensorPairs(pairs)
    made = out is None
    run_dir = Path(tempfile.mkdtemp(prefix="segadapt-adapt-")) if made else Path(out)  # type: ignore[arg-type]
    if not made and run_dir.is_dir() and any(run_dir.iterdir()):  # never among files segadapt did not write
        raise ConfigError(f"{run_dir}: exists and is not empty; give adapt_model a new folder as out=")
    was_quiet = progress.is_quiet()
    progress.quiet(quiet)
    try:
        summary = adapt(cfg, run_dir, dataset, teacher=teacher, h1_meta=meta)
        teacher.requires_grad_(True)  # adapt() froze its teacher; H2 is a module like any other
        h2 = load_model(run_dir, model=teacher)
        chosen = run_dir / "model_selected.safetensors"
        selected = load_model(chosen, model=teacher) if chosen.is_file() else None
        losses = _logged_losses(run_dir / "log.csv")
    finally:
        progress.quiet(was_quiet)
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
    return AdaptResult(model=h2, selected=selected, losses=losses, final_loss=summary["final_loss"],
                       probes=summary["probes"], selected_step=summary["selected_step"], layers=summary["layers"],
                       card=card_of(h2) or card, run_dir=None if made else run_dir, summary=summary)


def _logged_losses(path: Path) -> list[float]:
    """The loss column of a run's log.csv (empty when nothing was logged)."""
    import csv

    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row.get("loss")]


# --- evaluate -------------------------------------------------------------------------------------------------

@dataclass
class Metrics(Scores):
    """evaluate_model's scores (pixel_acc, mean_acc, miou, class_acc, class_iou, pixels) and the confusion
    matrix they come from (rows: true class, columns: predicted)."""

    confusion: list[list[int]] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


def evaluate_model(model: nn.Module, dataset: Dataset | Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                   num_classes: int | None = None, ignore_index: int | None = None,
                   device: torch.device | str | None = None) -> Metrics:
    """Score `model` on labelled images: a segadapt dataset (its classes and ignore index are its own) or any
    iterable of (image, label) pairs: a normalised 3 x H x W tensor and an H x W tensor of class indices
    (`num_classes` then defaults to the model's, `ignore_index` to 255). `device`: default, the model's own."""
    from segadapt.evaluate import confusion, confusion_of
    from segadapt.metrics import scores
    from segadapt.runtime import model_device

    info = getattr(dataset, "info", None)
    names = list(getattr(info, "class_names", []) or [])
    classes = num_classes or (info.num_classes if info is not None else _classes_of(model))
    ignore = ignore_index if ignore_index is not None else (info.ignore_index if info is not None else 255)
    dev = torch.device(device) if device is not None else model_device(model)
    model = model.to(dev)
    if isinstance(dataset, Dataset):
        conf = confusion(model, dataset, classes, ignore, dev)
    else:
        conf = confusion_of(model, ((x[None], y[None]) for x, y in dataset), classes, ignore, dev)
    s = scores(conf)
    return Metrics(**vars(s), confusion=conf.tolist(), class_names=names)


def _classes_of(model: nn.Module) -> int:
    """The classes a model predicts: its card's or contract's count, else read off one forward."""
    from segadapt.models.contract import conform
    from segadapt.models.outputs import classes_read_off

    card = card_of(model)
    return (card.num_classes if card is not None else 0) or conform(model).num_classes or classes_read_off(model)
