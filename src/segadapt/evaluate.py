"""Run a model over a labelled dataset and score it (pixel acc, mean acc, per-class IoU, mIoU)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from segadapt import distributed
from segadapt.config import RunConfig
from segadapt.data import SegmentationDataset, SegmentationSource, make_transform
from segadapt.metrics import Scores, confusion_matrix, scores
from segadapt.models.modes import modes_restored


@torch.inference_mode()
def confusion(
    model: torch.nn.Module,
    dataset: Dataset,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    desc: str = "evaluate",
    shard: bool = False,
) -> torch.Tensor:
    """Summed confusion matrix over the dataset (batch_size > 1 needs equally sized images).

    With `shard` under torchrun each rank scores every world-th image (rank r: r, r+N, ...) and the
    integer matrices are all-reduced, so every rank gets the matrix of the whole set, exactly as one
    process would, in 1/N of the time. Without a process group `shard` changes nothing.
    """
    if shard and distributed.active():
        dataset = Subset(dataset, range(distributed.rank(), len(dataset), distributed.world_size()))
    # own generator: a DataLoader draws a base seed from it, which must not advance the global RNG that a
    # training run checkpoints (a resume would then draw other augmentations than the uninterrupted run)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator())
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=not distributed.is_main())
    with modes_restored(model):  # model.train() afterwards would undo an adapting student's dropout/BN modes
        model.eval()
        for images, masks in bar:
            images, masks = images.to(device), masks.to(device)
            pred = model(images).argmax(1)
            conf += confusion_matrix(pred, masks, num_classes, ignore_index)
    if shard:
        distributed.all_reduce(conf)
    return conf.cpu()


def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    desc: str = "evaluate",
    shard: bool = False,
) -> tuple[Scores, torch.Tensor]:
    conf = confusion(model, dataset, num_classes, ignore_index, device, batch_size, num_workers, desc, shard)
    return scores(conf), conf


def score(model: torch.nn.Module, source: SegmentationSource, cfg: RunConfig, device: torch.device) -> Scores:
    """`model` on a whole labelled source, through the config's evaluation transform (no augmentation)."""
    ds = SegmentationDataset(source, make_transform(cfg.data, False, source.info.ignore_index))
    s, _ = evaluate(model, ds, source.info.num_classes, source.info.ignore_index, device, desc="score")
    return s
