"""One entry point for every kind of H1, and the metadata that rebuilds each kind from a model file.

An H1 may be a segadapt run directory or model file, a transformers model directory (config.json +
model.safetensors), or a Python factory `package.module:function` (with a weights file and JSON kwargs).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segadapt import checkpoint as ckpt
from segadapt.errors import CheckpointError, ConfigError
from segadapt.models.factory import FactoryModel, factory_meta, load_factory

H1_FORMS = ("a segadapt run directory or model.safetensors, a transformers model directory (config.json + "
            "model.safetensors), or a Python factory package.module:function")


def load_model(path: str | Path, device: torch.device | str = "cpu",
               trusted_factories: Collection[str] = ()) -> tuple[Any, dict[str, Any]]:
    """Rebuild a model from a segadapt model file (or run directory) and its metadata, in eval mode.

    Built-in architectures come from the registry, transformers models from the recorded config; a model
    made by a Python factory is rebuilt only if that factory is in `trusted_factories` (it runs code).
    """
    p = ckpt.resolve_model_path(path)  # errors name the file, not the run directory holding it
    tensors, meta = ckpt.load_model_file(p)
    model = rebuild(meta, p, trusted_factories)
    ckpt.load_weights(model, tensors, p)
    return model.to(device).eval(), meta


def load_any(spec: str | Path, device: torch.device | str = "cpu", weights: str | Path | None = None,
             kwargs: str | Mapping[str, Any] | None = None,
             trusted_factories: Collection[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """H1 (eval mode) and its metadata from any supported spec.

    `weights` and `kwargs` belong to a factory spec. `trusted_factories`: factories a segadapt model file may
    name and have called (see load_model); the factory given as `spec` itself is trusted.
    """
    from segadapt.models.spec import model_kind

    text = str(spec)
    path = Path(text)
    kind = model_kind(text)
    factory = kind == "factory"
    if (weights or kwargs) and not factory:
        raise ConfigError(f"{text}: weights and kwargs go with a factory (package.module:function); a model "
                          "directory or file carries its own")
    if factory:
        return load_factory(text, weights, kwargs, device)
    if kind == "missing":
        raise ConfigError(f"{text}: not found; pass {H1_FORMS}")
    if kind == "hf_dir":
        from segadapt.models.hf_dir import load_hf_dir

        return load_hf_dir(path, device)
    if path.is_dir() and not (path / ckpt.MODEL_FILE).is_file():
        raise CheckpointError(f"{path}: neither a run directory (no {ckpt.MODEL_FILE}) nor a transformers model "
                              f"directory (no config.json); pass {H1_FORMS}")
    return load_model(path, device, trusted_factories=trusted_factories)


def rebuild_meta(model: nn.Module) -> dict[str, Any]:
    """The metadata keys besides arch/width/num_classes that `rebuild` needs for this model ({} for the
    built-in architectures): a loop writing a model file merges them into its metadata."""
    from segadapt.models.hf import HFSegmentation

    if isinstance(model, HFSegmentation):
        from segadapt.models.hf_dir import hf_meta

        return {"hf_config": hf_meta(model)["hf_config"]}
    if isinstance(model, FactoryModel):
        meta = factory_meta(model)
        return {"factory": meta["factory"], "factory_head": meta["factory_head"]}
    return {}


def rebuild(meta: Mapping[str, Any], source: str | Path, trusted_factories: Collection[str] = ()) -> nn.Module:
    """A freshly initialised model of the architecture a model file's metadata records.

    A transformers model is rebuilt from the recorded config (offline). A factory model is rebuilt only when
    its factory is in `trusted_factories`: calling it runs code, and a file alone must never make segadapt
    run code (as it never unpickles).
    """
    from segadapt.card import ModelCard
    from segadapt.models import ARCHS, build_model

    card = ModelCard.from_meta(meta, source)
    if card.hf_config is not None:
        from segadapt.models.hf_dir import build_from_config

        if not isinstance(card.hf_config, Mapping):
            raise CheckpointError(f"{source}: its hf_config metadata is not a JSON object; re-export the model")
        return build_from_config(card.hf_config, source)
    if card.factory is not None:
        from segadapt.models import factory

        recorded = card.factory if isinstance(card.factory, Mapping) else {}
        target = str(recorded.get("target", "?"))
        if target not in trusted_factories:
            raise CheckpointError(f"{source}: built by the Python factory {target}; loading it runs that code, so "
                                  f"trust it explicitly (--trust-factory {target}, short --factory {target})")
        return factory.rebuild(meta, source)
    if card.arch not in ARCHS and not card.arch.startswith("hf:"):  # adapted from a module built in memory
        raise CheckpointError(f"{source}: its architecture ({card.arch or 'unnamed'}) was a module built in Python, "
                              f"which no file rebuilds; load it with segadapt.load_model(path, model=<a module of "
                              f"that architecture>)")
    return build_model(card.arch, card.num_classes, card.width)


def data_norm(meta: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """(mean, std) in 0..1 pixel units that an external H1 records (a transformers preprocessor), or None:
    the data transform must normalise with them, whatever the preset says."""
    mean, std = meta.get("image_mean"), meta.get("image_std")
    if mean is None or std is None:
        return None
    return [float(v) for v in mean], [float(v) for v in std]


def arch_of(model: nn.Module, arch: str) -> str:
    """The `arch` a model file records: the config's registry name when it built this model, else the
    family ("hf", "factory"), so that a B2 or B1 of an external H1 is not labelled with the config's VGG."""
    from segadapt.models.hf import HFSegmentation

    if isinstance(model, FactoryModel):
        return "factory"
    if isinstance(model, HFSegmentation) and not (arch == "segformer_b0" or arch.startswith("hf:")):
        return "hf"
    return arch


def save_native(model: nn.Module, run_dir: Path, meta: Mapping[str, Any], source: str | Path | None = None,
                suffix: str = "") -> Path | None:
    """The model also in its own family's format, beside segadapt's model file: a transformers model as
    `run_dir/hf_model{suffix}/` (H1's config and preprocessor files copied from `source`; `meta`, the model
    file's metadata, recorded there with the scale it was trained at), a factory model as
    `run_dir/factory_weights{suffix}.safetensors` (a plain state dict its factory's module loads). None for
    the built-in architectures, whose format is segadapt's."""
    from segadapt.models.hf import HFSegmentation

    if isinstance(model, HFSegmentation):
        from segadapt.models.hf_dir import save_hf_dir

        src = Path(source) if source and Path(source).is_dir() else None
        return save_hf_dir(model, src, run_dir / f"hf_model{suffix}", meta)
    if isinstance(model, FactoryModel):
        from segadapt.models.factory import save_factory_weights

        return save_factory_weights(model, run_dir / f"factory_weights{suffix}.safetensors")
    return None
