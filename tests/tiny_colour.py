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


def colour_model_file(folder, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), factory: str = "colour_net"):
    """A segadapt model file in `folder` naming the factory tiny_colour:`factory` (--trust-factory it): the
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
    state = net.state_dict() if factory == "colour_net" else {f"net.{k}": v for k, v in net.state_dict().items()}
    save_file(state, str(folder / "colour.safetensors"))
    model, meta = load_factory(f"tiny_colour:{factory}", folder / "colour.safetensors")
    cfg = preset("synthetic")
    cfg.data.base_size, cfg.data.mean, cfg.data.std = 0, list(mean), list(std)
    save_model(folder / MODEL_FILE, model, {**meta, "class_names": list(CLASSES),
                                             "palette": [list(c) for c in PALETTE], "config": to_dict(cfg)})
    return folder


class CrashOnRank(nn.Module):
    """colour_net, except that rank CRASH_RANK exits (as if killed) while the file CRASH_FLAG exists, once the
    file CRASH_AFTER exists (when set; so the other ranks' progress is known), once the ranks have met: one
    rank's failure, on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.net = colour_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os

        flag = os.environ.get("CRASH_FLAG")
        ready = torch.distributed.is_initialized()  # not while the model is loaded and probed: the run is on
        if ready and flag and os.path.exists(flag) and os.environ.get("RANK") == os.environ.get("CRASH_RANK", "1"):
            import time

            after = os.environ.get("CRASH_AFTER")
            for _ in range(600):
                if not after or os.path.exists(after):
                    break
                time.sleep(0.1)
            os._exit(9)
        return self.net(x)


def crash_on_rank() -> nn.Module:
    return CrashOnRank()
