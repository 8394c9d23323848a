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
