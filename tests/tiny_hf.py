"""Tiny transformers configs and factory networks shared by the HF, factory and contract tests (no download)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 3

SEGFORMER = {
    "model_type": "segformer", "depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32],
    "num_attention_heads": [1, 2, 2, 4], "decoder_hidden_size": 16, "num_labels": NUM_CLASSES,
    "drop_path_rate": 0.1,
}
UPERNET = {
    "model_type": "upernet", "hidden_size": 16, "auxiliary_channels": 8, "pool_scales": [1, 2],
    "use_auxiliary_head": True, "num_labels": NUM_CLASSES,
    "backbone_config": {"model_type": "convnext", "depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32],
                        "out_features": ["stage1", "stage2", "stage3", "stage4"], "drop_path_rate": 0.1},
}


def hf_net(raw: dict):
    """The transformers model itself (not wrapped), randomly initialised from `raw`."""
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    return AutoModelForSemanticSegmentation.from_config(AutoConfig.for_model(**raw))


class SmallCNN(nn.Module):
    """conv-BN-ReLU stem at stride 2, a BN block, a 1x1 head: logits at half resolution."""

    def __init__(self, classes: int = NUM_CLASSES, width: int = 8, as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, classes, 1))

    def forward(self, x: torch.Tensor):
        logits = self.head(self.block(self.stem(x)))
        return {"out": logits, "aux": F.avg_pool2d(logits, 2)} if self.as_dict else logits


def small_cnn(classes: int = NUM_CLASSES, width: int = 8) -> SmallCNN:
    """A factory returning a module whose output is a tensor."""
    return SmallCNN(classes, width)


def trained_looking_cnn(classes: int = NUM_CLASSES, width: int = 8) -> SmallCNN:
    """A SmallCNN (seed 0) whose BatchNorm running statistics differ from a fresh one's, so a test can tell
    whether they were kept or re-estimated."""
    torch.manual_seed(0)
    net = SmallCNN(classes, width)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def dict_cnn(classes: int = NUM_CLASSES, width: int = 8) -> SmallCNN:
    """A factory returning a module whose output is torchvision's {"out": ..., "aux": ...}."""
    return SmallCNN(classes, width, as_dict=True)


def not_a_module() -> int:
    return 3


def _data_config(base_size: int) -> dict:
    from segadapt.config import preset, to_dict

    cfg = preset("synthetic")
    cfg.data.base_size = base_size
    return to_dict(cfg)


def hf_model_file(folder, raw: dict = SEGFORMER, base_size: int = 0, seed: int = 0):
    """A random transformers model of `raw` as a segadapt model file in `folder` (as `train --arch hf:DIR`
    writes it; the synthetic preset's data settings, predicted at `base_size`); returns the folder."""
    from segadapt.checkpoint import MODEL_FILE, save_model
    from segadapt.models.hf_dir import build_from_config, hf_meta

    torch.manual_seed(seed)
    model = build_from_config(raw, "tiny_hf")
    save_model(folder / MODEL_FILE, model, {**hf_meta(model), "config": _data_config(base_size)})
    return folder


def factory_model_file(folder, base_size: int = 0):
    """An adapted factory model as `adapt` writes it: a segadapt model file in `folder` naming the factory
    tiny_hf:small_cnn (width 6), so loading it needs --trust-factory tiny_hf:small_cnn; returns the folder."""
    from safetensors.torch import save_file

    from segadapt.checkpoint import MODEL_FILE, save_model
    from segadapt.models.factory import load_factory

    folder.mkdir(parents=True, exist_ok=True)
    save_file(trained_looking_cnn(NUM_CLASSES, 6).state_dict(), str(folder / "h1.safetensors"))
    model, meta = load_factory("tiny_hf:small_cnn", folder / "h1.safetensors", {"width": 6})
    save_model(folder / MODEL_FILE, model, {**meta, "config": _data_config(base_size)})
    return folder
