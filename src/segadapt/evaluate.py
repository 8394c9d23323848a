"""Run a model over a labelled dataset and score it (pixel acc, mean acc, per-class IoU, mIoU)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from segadapt.metrics import Scores, confusion_matrix, scores


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
) -> torch.Tensor:
    """Summed confusion matrix over the dataset (batch_size > 1 needs equally sized images)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for images, masks in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0):
        images, masks = images.to(device), masks.to(device)
        pred = model(images).argmax(1)
        conf += confusion_matrix(pred, masks, num_classes, ignore_index)
    model.train(was_training)
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
) -> tuple[Scores, torch.Tensor]:
    conf = confusion(model, dataset, num_classes, ignore_index, device, batch_size, num_workers, desc)
    return scores(conf), conf
