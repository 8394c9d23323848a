"""The qualitative figures of one shift of a sweep, written under <sweep>/figures/<shift>/ for report.html.

features/: H1 against the adapted H2 on a few val pairs; overlays/: image, ground truth, H1, B2 and H2 on D2;
reconstruction/: the D1 image as H1 and as H2 see it, optimised from noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segadapt.config import RunConfig
from segadapt.data import SegmentationDataset, SegmentationSource, make_transform, spread_indices
from segadapt.models.contract import conform, preset_taps
from segadapt.progress import bar as progress_bar
from segadapt.viz.features import write_feature_grids
from segadapt.viz.overlays import overlay_figure, predict


def write_shift_figures(
    cfg: RunConfig,
    out: Path,
    h1: nn.Module,
    models: Mapping[str, nn.Module],
    h2_name: str,
    d1_val: SegmentationSource,
    d2_val: SegmentationSource,
    device: torch.device,
) -> dict[str, Any]:
    """`models`: name -> model shown in overlays (B2, H2:...); `h2_name` picks the one for feature grids."""
    ex = cfg.experiment
    info = d1_val.info
    tf = make_transform(cfg.data, False, info.ignore_index)
    d1, d2 = SegmentationDataset(d1_val, tf), SegmentationDataset(d2_val, tf)
    ids = spread_indices(len(d1), ex.figure_images)
    if not ids:
        return {}
    samples = [(d1_val.stem(i), d1[i], d2[i]) for i in ids]
    h2 = models[h2_name]
    summary: dict[str, Any] = {"images": [s for s, _, _ in samples]}

    pairs = [(a[0].to(device), b[0].to(device)) for _, a, b in samples]
    taps = preset_taps(conform(h1))  # VGG: pool1..pool5; transformers: stage1..4; a factory model: none
    if taps:
        summary["features"] = write_feature_grids(h1, h2, pairs, taps, out / "features", tf.denormalize,
                                                  names=[f"{s}_{h2_name.replace(':', '-')}" for s, _, _ in samples])

    (out / "overlays").mkdir(parents=True, exist_ok=True)
    shown = {"H1": h1, **models}
    for stem, _, (x, mask) in samples:
        preds = {name: predict(m, x.to(device)) for name, m in shown.items()}
        overlay_figure(tf.denormalize(x), mask.numpy(), preds, info.class_names, info.palette, info.ignore_index,
                       out / "overlays" / f"overlay_{stem}.png", title=f"{stem} (D2)")

    if ex.reconstruct_steps > 0 and taps:
        from segadapt.viz.reconstruct import ReconstructConfig, reconstruct_image

        rc = ReconstructConfig(steps=ex.reconstruct_steps, seed=cfg.train.seed, taps=taps)
        stem, (x, _), _ = samples[0]
        recon = {}
        for name, m in progress_bar([("H1", h1), (h2_name, h2)], desc="reconstruct", leave=False):
            tag = f"{stem}_{name.replace(':', '-')}"
            r = reconstruct_image(m, x, out / "reconstruction", rc, cfg.data.mean, cfg.data.std, device, name=tag)
            recon[name] = {"first_loss": r["first_loss"], "last_loss": r["last_loss"]}
        summary["reconstruction"] = recon
    return summary
