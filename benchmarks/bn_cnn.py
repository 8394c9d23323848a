"""A small BatchNorm CNN, given to segadapt as a Python factory (`bn_cnn:build`, with benchmarks/ on PYTHONPATH).

It stands in for the BatchNorm networks users bring (ResNet encoders, smp models) in benchmarks/adabn_keep.py:
every convolution is followed by BatchNorm, so how the running statistics are treated while adapting
(adapt.norm = keep or adabn) matters. Output stride 8, logits at 1/8 resolution (segadapt upsamples them).
"""

from __future__ import annotations

from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class BNNet(nn.Module):
    """stem (stride 2) -> layer1 (4) -> layer2 (8) -> layer3 (8, dilated) -> head (1x1 classifier)."""

    def __init__(self, classes: int = 11, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _block(3, w, stride=2)
        self.layer1 = nn.Sequential(_block(w, 2 * w, stride=2), _block(2 * w, 2 * w))
        self.layer2 = nn.Sequential(_block(2 * w, 4 * w, stride=2), _block(4 * w, 4 * w))
        self.layer3 = nn.Sequential(_block(4 * w, 4 * w, dilation=2), _block(4 * w, 4 * w, dilation=4))
        self.head = nn.Sequential(_block(4 * w, 4 * w), nn.Conv2d(4 * w, classes, 1))

    def forward(self, x):
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def build(classes: int = 11, width: int = 16) -> BNNet:
    """The factory segadapt calls: `--h1 bn_cnn:build --h1-kwargs '{"classes": 11}'`."""
    return BNNet(classes, width)
