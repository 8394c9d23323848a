"""Hugging Face `transformers` segmentation networks behind the segadapt contract.

Supported: SegFormer (`SegformerForSemanticSegmentation`) and UperNet with a ConvNeXt backbone
(`UperNetForSemanticSegmentation`). Taps are the friendly stage aliases `stage1..stageN` (the maps the
decode head reads: SegFormer's encoder outputs, UperNet's normed backbone stages) plus any module path of
`named_modules()` whose output is a feature map; token sequences (N, L, C) come back as NCHW maps on the
grid of the stage that made them. Loading and saving model directories lives in models/hf_dir.py.

transformers is imported only when a model is built, so the rest of segadapt never pays for (or needs) it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segadapt.chatter import hushed
from segadapt.config import OUTPUT_OBJECTIVE
from segadapt.errors import ConfigError
from segadapt.losses import LayerPresets
from segadapt.models.contract import ParamGroups, as_list, check_taps, head_split
from segadapt.models.taps import capture, execution_order, parameters_reached
from segadapt.models.vgg_deeplab import W_INC

INSTALL_HINT = "pip install 'segadapt[hf]'"
SUPPORTED = "SegFormer (model_type segformer) and UperNet with a ConvNeXt backbone (upernet + convnext)"


def require_transformers() -> Any:
    """The transformers module, or one line saying how to install it."""
    try:
        with hushed():
            import transformers
    except ImportError:
        raise ConfigError(f"Hugging Face models need the transformers package: {INSTALL_HINT}") from None
    return transformers


@dataclass(frozen=True)
class Layout:
    """Where one family keeps its stages in `named_modules()`, so taps need no per-version code elsewhere."""

    stages: tuple[str, ...]  # module whose output is stage k (alias stage{k+1})
    norms: tuple[str, ...]  # module applied to that output to give the map the head reads ("" = none)
    grids: tuple[str, ...]  # modules returning (tokens, height, width): the grids token sequences live on
    head: tuple[str, ...]  # the decode head(s): H1's classifier, never adapted


def layout_of(net: nn.Module) -> Layout:
    """The stage layout of a supported transformers model; anything else is one ConfigError line."""
    config = getattr(net, "config", None)
    kind = getattr(config, "model_type", type(net).__name__)
    modules = dict(net.named_modules())
    if kind == "segformer":
        n = int(config.num_encoder_blocks)
        if "segformer.stages.0" in modules:  # transformers 5: a stage module returns the NCHW map
            stages = tuple(f"segformer.stages.{i}" for i in range(n))
            grids = tuple(f"segformer.stages.{i}.patch_embeddings" for i in range(n))
        else:  # transformers 4: the encoder's loop reshapes each stage's normed tokens itself
            stages = tuple(f"segformer.encoder.layer_norm.{i}" for i in range(n))
            grids = tuple(f"segformer.encoder.patch_embeddings.{i}" for i in range(n))
        layout = Layout(stages, ("",) * n, grids, ("decode_head",))
    elif kind == "upernet" and getattr(config.backbone_config, "model_type", "") == "convnext":
        n = len(net.backbone.encoder.stages)
        norms = tuple(f"backbone.hidden_states_norms.stage{i + 1}" for i in range(n))
        stages = tuple(f"backbone.encoder.stages.{i}" for i in range(n))
        heads = tuple(h for h in ("decode_head", "auxiliary_head") if h in modules)
        layout = Layout(stages, tuple(p if p in modules else "" for p in norms), (), heads)
    else:
        raise ConfigError(f"{type(net).__name__} (model_type {kind}) is not supported; segadapt wraps {SUPPORTED}")
    absent = [p for p in (*layout.stages, *layout.grids, *layout.head) if p not in modules]
    if absent:
        raise ConfigError(f"{type(net).__name__}: modules {absent[:2]} not found; this transformers version lays "
                          f"out {kind} differently from the ones segadapt knows ({INSTALL_HINT} for a tested one)")
    return layout


def _grid(output: Any) -> tuple[int, int]:
    """(height, width) from a patch embedding's (tokens, height, width) output."""
    return int(output[1]), int(output[2])


def as_map(output: Any, grids: Sequence[tuple[int, int]]) -> torch.Tensor | None:
    """`output` as an NCHW feature map: 4-D tensors as they are, (N, L, C) tokens on the latest grid of L
    cells (the stage running now), None for anything else (tuples, pooled vectors, reduced key sequences)."""
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    if output.ndim == 4:
        return output
    if output.ndim == 3:
        n, length, channels = output.shape
        for h, w in reversed(grids):
            if h * w == length:
                return output.transpose(1, 2).reshape(n, channels, h, w)
    return None


def stage_weights(n: int) -> tuple[float, ...]:
    """Increasing layer weights for n stages, from the study's five-level W_INC = (0.2, 0.4, 0.6, 0.8, 0.9).

    The study's five levels sit at output strides 2, 4, 8, 8, 8 (VGG pool1..pool5); these encoders' four
    stages start at stride 4, so pool1 (stride 2) has no counterpart and the four stages take the deepest four
    weights by depth order: (0.4, 0.6, 0.8, 0.9). Other stage counts keep the same rule (the last n weights);
    more than five stages ramp linearly over the same range.
    """
    if n <= len(W_INC):
        return tuple(W_INC[-n:])
    return tuple(round(W_INC[0] + (W_INC[-1] - W_INC[0]) * i / (n - 1), 4) for i in range(n))


class HFSegmentation(nn.Module):
    """A transformers semantic-segmentation model as a `SegmentationModel`; the network itself is `self.net`
    (state-dict keys carry a `net.` prefix). `example` is the probe input that lists taps in execution order
    and reads `parameters_up_to` off the autograd graph."""

    # adapt's objective when none is given: output-level terms with the head trained (on a synthetic SegFormer the
    # stage regressions ended below B0, these recovered 0.92 of B2's gain: docs/results/objectives-synthetic-segformer)
    DEFAULT_OBJECTIVE = OUTPUT_OBJECTIVE

    def __init__(self, net: nn.Module, example: Sequence[int] = (1, 3, 64, 64)) -> None:
        super().__init__()
        self.net, self.layout, self.example = net, layout_of(net), tuple(example)
        self.num_classes = int(net.config.num_labels)
        # SegFormer's attention is global: every map cell depends on the whole input (see contract.py)
        self.translation_equivariant = net.config.model_type != "segformer"
        self.aliases = {f"stage{i + 1}": i for i in range(len(self.layout.stages))}
        self.TAPS = self._list_taps()

    def _list_taps(self) -> tuple[str, ...]:
        """Aliases and map-valued module paths, input to output, from one probe pass."""
        at_stage = {path: f"stage{i + 1}" for i, path in enumerate(self.layout.stages)}
        grids: list[tuple[int, int]] = []
        taps: list[str] = []
        for name, output in execution_order(self.net, self._probe_input()):
            if name in self.layout.grids:
                grids.append(_grid(output))
            if name in at_stage:
                taps.append(at_stage[name])
            if as_map(output, grids) is not None:
                taps.append(name)
        return tuple(taps)

    def _probe_input(self) -> torch.Tensor:
        p = next(self.net.parameters())
        return torch.zeros(self.example, device=p.device, dtype=p.dtype)

    def features(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """The requested maps; the forward pass is abandoned once the last of them is computed."""
        names = list(taps)
        check_taps(self, names)
        modules = dict(self.net.named_modules())
        targets = {t: modules[self.layout.stages[self.aliases[t]] if t in self.aliases else t] for t in names}
        grids: list[tuple[int, int]] = []
        watch = [(modules[g], lambda out: grids.append(_grid(out))) for g in self.layout.grids]

        def convert(name: str, output: Any) -> torch.Tensor:
            if name in self.aliases and self.layout.norms[self.aliases[name]]:
                output = modules[self.layout.norms[self.aliases[name]]](output)
            fmap = as_map(output, grids)
            if fmap is None:
                raise ConfigError(f"tap {name}: its output is not a feature map here; choose a stage alias")
            return fmap

        return capture(self.net, x, targets, convert, watch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits at the input's size: bilinear, align_corners=False, as transformers' post-processing."""
        logits = self.net(pixel_values=x).logits
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def parameters_up_to(self, taps: str | Sequence[str]) -> list[nn.Parameter]:
        """Exactly the parameters the maps of `taps` depend on (autograd graph of one probe pass)."""
        names = as_list(taps)
        check_taps(self, names)
        x = self._probe_input()
        return parameters_reached(self.net, lambda: self.features(x, names))

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for h in self.layout.head for p in self.net.get_submodule(h).parameters()]

    def param_groups(self, lr: float, head_lr_mult: float) -> ParamGroups:
        return head_split(self, self.head_parameters(), lr, head_lr_mult)

    def layer_presets(self) -> LayerPresets:
        """Each stage alone, and all stages with increasing (all, all_inc) or decreasing (all_dec) weights."""
        stages = tuple(self.aliases)
        inc = stage_weights(len(stages))
        presets: LayerPresets = {s: ((s,), (1.0,)) for s in stages}
        presets |= {"all_inc": (stages, inc), "all_dec": (stages, tuple(reversed(inc)))}
        presets["all"] = presets["all_inc"]
        return presets
