"""A model file's metadata as a typed, versioned record: what the weights are and how to use them.

Every segadapt model file carries a JSON object beside its tensors (checkpoint.META_KEY): the architecture and
what rebuilds it, the classes, and the run config it was trained or adapted with. `ModelCard` is that object as
a dataclass. Files written before the card existed (no `card_version`) load as version 0 and read the same;
keys the card does not know are kept in `extra`, so reading and writing a file loses nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from segadapt.errors import CheckpointError

CARD_VERSION = 1
_ATTR = "segadapt_card"  # where load_model leaves a model's card on the module it returns


@dataclass
class ModelCard:
    """What a model file says of its model (see the field comments); `to_meta()` is the file's JSON object."""

    arch: str  # a registry name (vgg16_deeplab, ...), "hf" (transformers), "factory", or "module" (in-memory)
    num_classes: int = 0  # 0: not recorded (a module adapted in memory without a class count)
    width: float = 1.0  # the built-in VGG's channel multiplier; 1.0 for every other family
    class_names: list[str] = field(default_factory=list)
    ignore_index: int = 255
    palette: list[list[int]] = field(default_factory=list)
    dataset: str = ""
    step: int = 0
    config: dict[str, Any] | None = None  # the run's whole config (config.to_dict); its data section sets the scale
    pixel_factor: float | None = None  # what training frames were resized by (models/scale.py)
    image_mean: list[float] | None = None  # a transformers preprocessor's normalisation, 0..1 pixel units
    image_std: list[float] | None = None
    base_size: int | None = None  # the preprocessor's scale, where the model records no run config
    hf_config: dict[str, Any] | None = None  # rebuilds a transformers model offline
    hf_source: str | None = None
    factory: dict[str, Any] | None = None  # rebuilds a factory model (only when the factory is trusted)
    factory_head: str | None = None
    adapted_from: str | None = None  # H1, for an adapted model
    layers: dict[str, float] | None = None  # the taps regressed and their weights
    objective: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were
    version: int = CARD_VERSION  # 0: a file written before the card (no card_version key)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str | Path = "model metadata") -> ModelCard:
        """The card of a model file's JSON object, old (unversioned) or new; one line naming `source` when
        it is not a model's metadata."""
        if not isinstance(meta, Mapping) or "arch" not in meta:
            raise CheckpointError(f"{source}: no segadapt model metadata (no 'arch'); pass a model segadapt wrote")
        version = meta.get("card_version", 0)
        if not isinstance(version, int) or version > CARD_VERSION:
            raise CheckpointError(f"{source}: model card version {version!r} is newer than this segadapt reads "
                                  f"({CARD_VERSION}); upgrade segadapt")
        known = {f.name for f in fields(cls)} - {"extra", "version"}
        values = {k: meta[k] for k in known if k in meta and meta[k] is not None}
        try:
            card = cls(**values, extra={k: v for k, v in meta.items() if k not in known and k != "card_version"},
                       version=version)
            card.num_classes, card.width = int(card.num_classes), float(card.width)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: model metadata is not a model card ({e}); re-save the model") from None
        return card

    def to_meta(self) -> dict[str, Any]:
        """The JSON object a model file carries: every set field (a missing key means "not recorded", which
        the loaders test for, e.g. `"hf_config" in meta`), the unknown keys kept, and the card's version."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("extra", "version"):
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return {**out, **self.extra, "card_version": CARD_VERSION}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_meta(), indent=indent)

    @classmethod
    def from_json(cls, text: str, source: str | Path = "model card JSON") -> ModelCard:
        try:
            meta = json.loads(text)
        except ValueError as e:
            raise CheckpointError(f"{source}: not JSON ({e})") from None
        return cls.from_meta(meta, source)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelCard:
        """The card of a run directory, a model .safetensors file, or its .json sidecar."""
        from segadapt import checkpoint as ckpt

        p = Path(path)
        if p.suffix == ".json" and p.is_file():
            return cls.from_json(p.read_text(), p)
        model = ckpt.resolve_model_path(p)
        return cls.from_meta(ckpt.read_meta(model), model)

    @property
    def records_run(self) -> bool:
        """Whether the model carries a segadapt run config with its data settings (a trained or adapted model)."""
        return isinstance(self.config, Mapping) and isinstance(self.config.get("data"), Mapping)

    def attach(self, model: nn.Module) -> nn.Module:
        """Leave this card on `model` (as load_model does), for `card_of`."""
        setattr(model, _ATTR, self)
        return model


def written(meta: Mapping[str, Any], source: str | Path = "model metadata") -> dict[str, Any]:
    """The JSON object a loop writes into a model file: `meta` checked as a card and stamped with its version."""
    return ModelCard.from_meta(meta, source).to_meta()


def card_of(model: nn.Module) -> ModelCard | None:
    """The card load_model (or adapt_model) left on `model`, or None for a module built in memory."""
    card = getattr(model, _ATTR, None)
    return card if isinstance(card, ModelCard) else None
