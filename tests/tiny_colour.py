"""A factory model whose prediction is a known function of colour: the class is the dominant RGB channel
(red, green, blue), with probabilities near 1, so tests know every pixel's class exactly."""

from __future__ import annotations

import torch
from torch import nn

CLASSES = ("red", "green", "blue")
PALETTE = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
SHARPNESS = 40.0  # logits per unit of channel value (0..1): a 0.5 channel gap is a near-certain class


def colour_net() -> nn.Module:
    """One 1x1 convolution (weights set by colour_model_file)."""
    return nn.Conv2d(3, 3, 1)


def colour_model_file(folder, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """A segadapt model file in `folder` naming the factory tiny_colour:colour_net (--trust-factory it): the
    logits are SHARPNESS x each channel in 0..1, undoing the normalisation by `mean` and `std`."""
    from safetensors.torch import save_file

    from segadapt.checkpoint import MODEL_FILE, save_model
    from segadapt.config import preset, to_dict
    from segadapt.models.factory import load_factory

    folder.mkdir(parents=True, exist_ok=True)
    net = colour_net()
    with torch.no_grad():  # x = (v - m) / s, so v = s x + m
        net.weight.zero_()
        for c in range(3):
            net.weight[c, c] = SHARPNESS * std[c]
            net.bias[c] = SHARPNESS * mean[c]
    save_file(net.state_dict(), str(folder / "colour.safetensors"))
    model, meta = load_factory("tiny_colour:colour_net", folder / "colour.safetensors")
    cfg = preset("synthetic")
    cfg.data.base_size, cfg.data.mean, cfg.data.std = 0, list(mean), list(std)
    save_model(folder / MODEL_FILE, model, {**meta, "class_names": list(CLASSES),
                                             "palette": [list(c) for c in PALETTE], "config": to_dict(cfg)})
    return folder
