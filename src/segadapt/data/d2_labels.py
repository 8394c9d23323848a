"""A few labelled D2 images (adapt.d2_labels), the semi-supervised case: read and checked once, before
adaptation starts, then drawn into every step.

The folder is in the layout `segadapt shift` writes (D1's dataset layout; a synthetic D1, which has no files:
<dir>/<train split>/images and labels), so a user can label a few D2 images, or copy a few from a shift
output, into it. Every mask is read up front, so a mask of the wrong size or with class values H1 does not
predict is one line naming the file, not a failure at step 900.
"""

from __future__ import annotations

from pathlib import Path

import torch

from segadapt import distributed
from segadapt.config import RunConfig
from segadapt.data.base import SegmentationDataset, SegmentationSource
from segadapt.data.d2 import shifted_dir_source
from segadapt.data.datasets import make_transform
from segadapt.errors import DataError


def d2_label_source(cfg: RunConfig, classes: int) -> SegmentationSource:
    """The labelled D2 images of adapt.d2_labels (their train split), every one checked (size, class values)
    against H1's `classes`."""
    try:
        source = shifted_dir_source(cfg, Path(cfg.adapt.d2_labels), cfg.data.train_split)
    except DataError as e:
        raise DataError(f"adapt.d2_labels: {e}") from None
    if source.info.num_classes != classes:
        raise DataError(f"adapt.d2_labels = {cfg.adapt.d2_labels}: {source.info.name} has "
                        f"{source.info.num_classes} classes but H1 predicts {classes}; label D2 with H1's classes")
    for i in range(len(source)):
        source.load(i)  # raises one line naming the mask (data.base.check_pair)
    return source


class LabelledDraws:
    """`per_step` augmented labelled D2 samples for each step, drawn under a forked RNG seeded by the run's
    seed, the rank and the step alone: the run's own random stream is untouched, and a resumed run draws
    what the uninterrupted one would have."""

    def __init__(self, source: SegmentationSource, cfg: RunConfig, per_step: int) -> None:
        self.dataset = SegmentationDataset(source, make_transform(cfg.data, True, source.info.ignore_index))
        self.ignore_index = source.info.ignore_index
        self.per_step, self.seed = per_step, distributed.rank_seed(cfg.train.seed)

    def batch(self, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed << 24) + step)
            picks = torch.randint(len(self.dataset), (self.per_step,)).tolist()
            items = [self.dataset[i] for i in picks]
        return (torch.stack([x for x, _ in items]).to(device), torch.stack([y for _, y in items]).to(device))
