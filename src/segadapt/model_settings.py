"""The settings a model is used with: what its metadata records, under the user's overrides, by one rule.

A segadapt model records the run config it was trained with (its data settings: classes, normalisation, the
scale it learnt at). An external model (a transformers directory, a factory) records at most a preprocessor's
normalisation and scale: the preset of the dataset the user names stands in for the rest, and the user must
name the data. Then, whatever the source, the model's normalisation and scale are applied unless the user set
them explicitly (`given`: the config keys set in a config file or as overrides), which is then said in one line.
Every command (through cli/common.model_config) and the Python API (segadapt.api) use this module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from segadapt.config import DataConfig, RunConfig, dataset_preset, from_dict
from segadapt.errors import SegadaptError

Apply = Callable[[RunConfig], RunConfig]  # the user's overrides on top of a starting config


def is_segadapt(meta: Mapping[str, Any]) -> bool:
    """Whether a model's metadata holds the config of a segadapt run (train or adapt), data settings included."""
    from segadapt.models.scale import recorded_config

    return recorded_config(meta) is not None


def trained_config(meta: Mapping[str, Any], model_path: str | Path, dataset: str = "") -> RunConfig:
    """The data settings and architecture a model was trained with, from its metadata. An external model
    records no data settings: the preset of `dataset` (the one the user names) stands in, with the model's
    normalisation, and the user must name the data (`require_data`)."""
    from segadapt.card import ModelCard

    card = ModelCard.from_meta(meta, model_path)
    if not card.records_run:
        trained = dataset_preset(dataset)
        trained.model.arch, trained.model.width = card.arch, card.width
        return with_model_norm(trained, meta)
    assert card.config is not None
    trained = RunConfig(data=from_dict(DataConfig, card.config["data"], f"{model_path} metadata"))
    trained.model.width, trained.model.arch = card.width, card.arch
    return trained


def require_data(meta: Mapping[str, Any], model: str | Path, data_named: bool) -> None:
    """An external model knows nothing of the data it is to see: refuse, in one line, a use that names none."""
    if is_segadapt(meta) or data_named:
        return
    kind = {"hf": "transformers", "factory": "factory"}.get(str(meta.get("arch")), "external")
    raise SegadaptError(f"{model}: a {kind} model records no dataset settings; name the data with --dataset NAME "
                        f"--root DIR (or --preset / --config FILE)")


def with_model_norm(cfg: RunConfig, meta: Mapping[str, Any], given: Collection[str] = ()) -> RunConfig:
    """data.mean/std from the normalisation a model records (a transformers preprocessor), before any dataset is
    built; values the user set explicitly (`given`) are kept, with a one-line warning when they differ."""
    from segadapt.models.loading import data_norm

    norm = data_norm(meta)
    if norm is None:
        return cfg
    if not {"data.mean", "data.std"} & set(given):
        cfg.data.mean, cfg.data.std = norm
    elif [list(cfg.data.mean), list(cfg.data.std)] != [norm[0], norm[1]]:
        print(f"warning: using your data.mean {list(cfg.data.mean)} and data.std {list(cfg.data.std)}, not the "
              f"model's preprocessor normalisation (mean {norm[0]}, std {norm[1]})", file=sys.stderr)
    return cfg


def other_dataset(cfg: RunConfig, meta: Mapping[str, Any]) -> RunConfig:
    """A model trained on a folder dataset, used on a built-in one: its folder-only keys stay behind."""
    trained = (meta.get("config") or {}).get("data", {})
    if trained.get("dataset") == "folder" and cfg.data.dataset != "folder":
        cfg.data.num_classes, cfg.data.ignore_index, cfg.data.class_names = 0, 255, []
    return cfg


def fit_to_model(cfg: RunConfig, meta: Mapping[str, Any], model_path: str | Path,
                 given: Collection[str] = ()) -> RunConfig:
    """The model's normalisation and the scale it was trained at (models/scale.py: the one rule every use
    applies), each unless the user set it explicitly (`given`), which is then said in one line."""
    from segadapt.models.scale import SCALE_KEY, settle_base_size

    cfg = with_model_norm(cfg, meta, given)
    settle_base_size(cfg.data, meta, str(model_path), SCALE_KEY in given)
    return cfg


def model_config(meta: Mapping[str, Any], model_path: str | Path, apply: Apply, given: Collection[str] = (),
                 base: Callable[[str], RunConfig] | None = None) -> RunConfig:
    """A model's settings under the user's overrides (`apply`), fitted to the model (`fit_to_model`).

    `base(dataset)`: the settings to start from (default: the data settings the model was trained with,
    `trained_config`), given the dataset the overrides name: an external model takes that dataset's preset."""
    start = base or (lambda dataset: trained_config(meta, model_path, dataset))
    dataset = apply(start("")).data.dataset
    cfg = other_dataset(apply(start(dataset)), meta)
    return fit_to_model(cfg, meta, model_path, given)
