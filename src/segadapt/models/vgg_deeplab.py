"""VGG-16 DeepLab-LargeFOV (DeepLab v1), output stride 8, with named feature taps and early exit.

Layout, as in the reference study:
    conv1(2x64) pool1/2 | conv2(2x128) pool2/2 | conv3(3x256) pool3/2 | conv4(3x512) pool4/1 |
    conv5(3x512, dilation 2) pool5/1 | fc6(3x3, 1024, dilation 12) | fc7(1x1, 1024) | classifier(1x1)
pool4 and pool5 keep stride 1 so the logits are at 1/8 of the input; they are upsampled bilinearly.
The taps pool1..pool5 are the post-pooling maps the study regresses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segadapt.config import OUTPUT_OBJECTIVE
from segadapt.losses import LayerPresets
from segadapt.models.contract import ParamGroups, TapGeometry, as_list, check_taps, deepest, head_split

# (name, out channels, convs, dilation, pool stride): conv1..conv5 and the pooling after each
VGG_BLOCKS = (
    ("1", 64, 2, 1, 2),
    ("2", 128, 2, 1, 2),
    ("3", 256, 3, 1, 2),
    ("4", 512, 3, 1, 1),
    ("5", 512, 3, 2, 1),
)
FC_CHANNELS = 1024

# the study's layer presets: each pool alone, and all five with increasing or decreasing weights
POOLS = ("pool1", "pool2", "pool3", "pool4", "pool5")
W_INC = (0.2, 0.4, 0.6, 0.8, 0.9)
W_DEC = tuple(reversed(W_INC))
LAYER_PRESETS: LayerPresets = {
    **{p: ((p,), (1.0,)) for p in POOLS},
    "all_inc": (POOLS, W_INC),
    "all_dec": (POOLS, W_DEC),
}
LAYER_PRESETS["all"] = LAYER_PRESETS["all_inc"]


def scaled(channels: int, width: float) -> int:
    """Channel count at a width multiplier; at least 4 so tiny CPU models still have some capacity."""
    return max(4, int(round(channels * width)))


def _check_size(num_classes: int, width: float) -> None:
    if num_classes < 1 or not width > 0:
        raise ValueError(f"need num_classes >= 1 and width > 0; got num_classes={num_classes}, width={width}")


def conv_block(cin: int, cout: int, n: int, dilation: int = 1) -> nn.Sequential:
    """n x (conv3x3 + ReLU); in-place ReLU is safe because only the pooled maps after a block are tapped."""
    layers: list[nn.Module] = []
    for i in range(n):
        conv = nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=dilation, dilation=dilation)
        layers += [conv, nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def pool(stride: int) -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=stride, padding=1)


class VGGDeepLab(nn.Module):
    """DeepLab-LargeFOV; `width` scales every channel count (1.0 = paper, 0.25 trains on a CPU)."""

    TAPS = ("pool1", "pool2", "pool3", "pool4", "pool5", "fc6", "fc7", "logits")
    # adapt's objective when none is given: output-level terms, the head trained; on CamVid they recovered more of
    # B2's gain than the study's pool5 regression on each of three shifts (docs/results/compare)
    DEFAULT_OBJECTIVE = OUTPUT_OBJECTIVE

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        _check_size(num_classes, width)
        self.num_classes, self.width = num_classes, width
        c1, c2, c3, c4, c5 = (scaled(ch, width) for _, ch, *_ in VGG_BLOCKS)
        fc = scaled(FC_CHANNELS, width)
        self.conv1, self.pool1 = conv_block(3, c1, 2), pool(2)
        self.conv2, self.pool2 = conv_block(c1, c2, 2), pool(2)
        self.conv3, self.pool3 = conv_block(c2, c3, 3), pool(2)
        self.conv4, self.pool4 = conv_block(c3, c4, 3), pool(1)  # stride 1 from here on: output stride 8
        self.conv5, self.pool5 = conv_block(c4, c5, 3, dilation=2), pool(1)
        self.fc6 = nn.Sequential(  # LargeFOV: 3x3 at dilation 12 instead of VGG's 7x7 fully-connected layer
            nn.Conv2d(c5, fc, 3, padding=12, dilation=12), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        self.fc7 = nn.Sequential(nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.classifier = nn.Conv2d(fc, num_classes, 1)  # fc8
        self._init_weights()

    def _init_weights(self) -> None:
        # He (fan-in, ReLU) keeps activation variance steady through 15 plain conv layers without batchnorm,
        # so the CPU configs train from scratch; the small classifier init starts near uniform predictions.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)

    def stages(self) -> Iterator[tuple[str, nn.Module]]:
        """(tap name or "", module) in execution order; a tap is the output of its named stage."""
        for name, *_ in VGG_BLOCKS:
            yield "", getattr(self, f"conv{name}")
            yield f"pool{name}", getattr(self, f"pool{name}")
        yield "fc6", self.fc6
        yield "fc7", self.fc7
        yield "logits", self.classifier

    def _check(self, taps: Sequence[str]) -> int:
        unknown = [t for t in taps if t not in self.TAPS]
        if unknown or not taps:
            raise ValueError(f"unknown tap(s) {unknown or list(taps)}; valid taps: {', '.join(self.TAPS)}")
        return max(self.TAPS.index(t) for t in taps)

    def features(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """The requested maps; computation stops after the deepest one, so nothing above it runs."""
        deepest = self.TAPS[self._check(taps)]
        out: dict[str, torch.Tensor] = {}
        for tap, module in self.stages():
            x = module(x)
            if tap in taps:
                out[tap] = x
            if tap == deepest:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.features(x, ["logits"])["logits"]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def stages_up_to(self, tap: str) -> list[nn.Module]:
        """Modules whose parameters influence `tap`: what adaptation may train when `tap` is the deepest."""
        self._check([tap])
        mods: list[nn.Module] = []
        for name, module in self.stages():
            mods.append(module)
            if name == tap:
                break
        return mods

    modules_up_to = stages_up_to

    def parameters_up_to(self, taps: str | Sequence[str]) -> list[nn.Parameter]:
        """Parameters of the stages up to the deepest of `taps` (read off the layer table, no probe pass)."""
        return [p for m in self.stages_up_to(deepest(self, as_list(taps))) for p in m.parameters()]

    def parameters_above(self, tap: str) -> list[nn.Parameter]:
        """Parameters that cannot affect `tap`; adaptation freezes these (they get no gradient anyway)."""
        below = {id(p) for p in self.parameters_up_to(tap)}
        return [p for p in self.parameters() if id(p) not in below]

    def classifier_parameters(self) -> list[nn.Parameter]:
        """fc8, which DeepLab trains at 10x the backbone LR because it starts from scratch."""
        return list(self.classifier.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return self.parameters_up_to("fc7")

    def param_groups(self, lr: float, head_lr_mult: float) -> ParamGroups:
        return head_split(self, self.classifier_parameters(), lr, head_lr_mult)

    @classmethod
    def layer_presets(cls) -> LayerPresets:
        """The study's table (a class method: the sweep checks names before any model is built)."""
        return LAYER_PRESETS

    def tap_geometry(self, taps: Sequence[str]) -> dict[str, TapGeometry]:
        """Read off the layer table, no probe pass. Every conv and pool is centred (padding = half the dilated
        kernel), so cell j of a tap sees input pixels j*stride - r .. j*stride + r, r = (field - 1) / 2."""
        check_taps(self, list(taps))
        out: dict[str, TapGeometry] = {}
        stride, size, channels = 1, 1, 3
        for name, module in self.stages():
            for m in module.modules():
                if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                    k, s, d = (_first(getattr(m, a)) for a in ("kernel_size", "stride", "dilation"))
                    size += d * (k - 1) * stride
                    stride *= s
                if isinstance(m, nn.Conv2d):
                    channels = m.out_channels
            if name in taps:
                out[name] = TapGeometry(channels, stride, size)
        return out


def _first(v: int | tuple[int, ...]) -> int:
    return v if isinstance(v, int) else int(v[0])


class PixelNet(nn.Module):
    """Per-pixel baseline of three 1x1 convolutions: it sees one pixel's colour, no context.

    It exists to show that a dataset needs spatial context: a good dataset makes it score clearly worse
    than VGGDeepLab. Width below 1 does not shrink it, so the CPU configs do not handicap the baseline.
    """

    TAPS = ("logits",)

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3, hidden: int = 64) -> None:
        super().__init__()
        _check_size(num_classes, width)
        self.num_classes, self.width = num_classes, width
        h = scaled(hidden, max(width, 1.0))
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, h, 1), nn.ReLU(inplace=True), nn.Conv2d(h, h, 1), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Conv2d(h, num_classes, 1)

    def features(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        if not taps or any(t != "logits" for t in taps):
            raise ValueError(f"unknown tap(s) {list(taps)}; valid taps: logits")
        return {"logits": self.classifier(self.body(x))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, ["logits"])["logits"]  # stride 1: the logits are already input-sized

    def parameters_up_to(self, taps: str | Sequence[str]) -> list[nn.Parameter]:
        deepest(self, as_list(taps))  # the one tap is the output: everything feeds it
        return list(self.parameters())

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.body.parameters())

    def param_groups(self, lr: float, head_lr_mult: float) -> ParamGroups:
        return head_split(self, self.classifier_parameters(), lr, head_lr_mult)

    def layer_presets(self) -> LayerPresets:
        return {}
