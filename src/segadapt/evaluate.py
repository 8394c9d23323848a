"""Run a model over a labelled dataset and score it (pixel acc, mean acc, per-class IoU, mIoU)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from segadapt import distributed, progress
from segadapt.config import RunConfig
from segadapt.data import SegmentationDataset, SegmentationSource, build_dataset, make_transform
from segadapt.metrics import Scores, confusion_matrix, scores
from segadapt.models.modes import modes_restored
from segadapt.speed import PrecisionChoice, autocast, choose_inference_precision

BATCH_PIXELS = 1 << 20  # an evaluation batch's pixels: 170 demo frames, 6 CamVid frames at 360x480, one big tile


def same_size_batches(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], max_pixels: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, masks) batches joined from consecutive ones of one spatial size, each at most `max_pixels`
    pixels unless a single image is larger; the order of the images is kept."""
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    count = 0
    for x, y in pairs:
        n = x.shape[0]
        size = x.shape[-2] * x.shape[-1]
        if images and (x.shape[-2:] != images[0].shape[-2:] or (count + n) * size > max_pixels):
            yield torch.cat(images), torch.cat(masks)
            images, masks, count = [], [], 0
        images.append(x)
        masks.append(y)
        count += n
    if images:
        yield torch.cat(images), torch.cat(masks)


@torch.inference_mode()
def confusion(
    model: torch.nn.Module,
    dataset: Dataset,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    num_workers: int = 0,
    desc: str = "evaluate",
    shard: bool = False,
    batch_pixels: int = BATCH_PIXELS,
    precision: str = "fp32",
) -> torch.Tensor:
    """Summed confusion matrix over the dataset. Consecutive images of one size go through the model together
    (up to `batch_pixels` pixels a batch) in channels-last layout: one image at a time in NCHW is 4-5x slower
    on CPU for small frames, which made scoring a third of the demo's time.

    With `shard` under torchrun each rank scores every world-th image (rank r: r, r+N, ...) and the
    integer matrices are all-reduced, so every rank gets the matrix of the whole set, exactly as one
    process would, in 1/N of the time. Without a process group `shard` changes nothing. `precision`: fp32, or
    bf16 autocast (see `inference_precision`).
    """
    if shard and distributed.active():
        dataset = Subset(dataset, range(distributed.rank(), len(dataset), distributed.world_size()))
    # own generator: a DataLoader draws a base seed from it, which must not advance the global RNG that a
    # training run checkpoints (a resume would then draw other augmentations than the uninterrupted run)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers, generator=torch.Generator())
    bar = progress.bar(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
                       disable=not distributed.is_main())
    conf = confusion_of(model, bar, num_classes, ignore_index, device, batch_pixels, precision)
    if shard:
        distributed.all_reduce(conf)
    return conf.cpu()


@torch.inference_mode()
def confusion_of(model: torch.nn.Module, items: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                 ignore_index: int, device: torch.device, batch_pixels: int = BATCH_PIXELS,
                 precision: str = "fp32") -> torch.Tensor:
    """Summed confusion matrix over (1 x 3 x H x W image, 1 x H x W labels) items, on `device`: consecutive
    images of one size go through the model together (`confusion`'s batching); `precision` as `confusion`'s."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    with modes_restored(model):  # model.train() afterwards would undo an adapting student's dropout/BN modes
        model.eval()
        for images, masks in same_size_batches(items, batch_pixels):
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                pred = model(images).argmax(1)
            conf += confusion_matrix(pred, masks.to(device), num_classes, ignore_index)
    return conf


def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    num_workers: int = 0,
    desc: str = "evaluate",
    shard: bool = False,
    precision: str = "fp32",
) -> tuple[Scores, torch.Tensor]:
    conf = confusion(model, dataset, num_classes, ignore_index, device, num_workers, desc, shard,
                     precision=precision)
    return scores(conf), conf


def inference_precision(model: torch.nn.Module, dataset: Dataset, device: torch.device,
                        requested: str) -> PrecisionChoice:
    """The precision `segadapt evaluate --precision` scores in, decided on the dataset's first batch as
    `confusion` forms it (segadapt.speed.choose_inference_precision: bf16 only if faster and its labels agree
    with fp32's on >= 99.5% of the pixels)."""
    if not len(dataset):  # type: ignore[arg-type]
        return PrecisionChoice("fp32")
    sample: list[torch.Tensor] = []  # read only when a precision is timed

    @torch.inference_mode()
    def labels(precision: str) -> torch.Tensor:
        if not sample:
            loader = DataLoader(dataset, batch_size=1, shuffle=False, generator=torch.Generator())
            sample.append(next(same_size_batches(loader, BATCH_PIXELS))[0].to(device)
                          .contiguous(memory_format=torch.channels_last))
        with modes_restored(model), autocast(device, precision):
            model.eval()
            return model(sample[0]).argmax(1)

    return choose_inference_precision(requested, device, labels)


@dataclass
class LabelledSet:
    """What a model is scored on: the dataset (evaluation transform), its name and split as reports give them,
    and for a mosaic the fraction of the labelled ground it covers."""

    dataset: SegmentationDataset
    name: str
    split: str
    coverage: float | None = None


def labelled_set(cfg: RunConfig, split: str) -> LabelledSet:
    """The config's labelled images: a split of its dataset, or with shift.label_raster the tiles of the mosaic
    (shift.d2_raster, else shift.d1_raster) on the label raster's grid, named "raster" with the mosaic's stem."""
    if not cfg.shift.label_raster:
        return LabelledSet(build_dataset(cfg.data, split, train=False), cfg.data.dataset, split)
    from segadapt.data.d2 import raster_tiles

    tiles = raster_tiles(cfg, cfg.shift.d2_raster or cfg.shift.d1_raster)
    dataset = SegmentationDataset(tiles, make_transform(cfg.data, False, tiles.info.ignore_index))
    return LabelledSet(dataset, "raster", Path(tiles.paths[0]).stem, tiles.coverage)


def score(model: torch.nn.Module, source: SegmentationSource, cfg: RunConfig, device: torch.device) -> Scores:
    """`model` on a whole labelled source, through the config's evaluation transform (no augmentation)."""
    ds = SegmentationDataset(source, make_transform(cfg.data, False, source.info.ignore_index))
    s, _ = evaluate(model, ds, source.info.num_classes, source.info.ignore_index, device, desc="score")
    return s
