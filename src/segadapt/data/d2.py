"""Where D2 comes from, decided in one place for the CLI, the sweep and the doctor.

For a split, D2 is, in this order:
0. `shift.d2_raster` (with `shift.d1_raster`): GeoTIFF mosaics paired by ground coordinates (data/geopairs.py);
   training windows only, scored on `shift.label_raster` when given;
1. `shift.pairs_csv`: a CSV of (x1, x2) image paths; it gives D1 and D2 both, without labels;
2. `shift.d2_dir` holding `<split>/`: a `segadapt shift` output in D1's layout, with D1's labels;
3. `shift.d2_dir` without `<split>/`: a plain folder of unlabelled images, matched to D1 by file stem;
4. otherwise D1 through `shift.filter` at `shift.severity`, filtered on the fly (labels: D1's).
Only 2 and 4 carry labels (D1's, as in the study): what scoring H2 on D2 needs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch

from segadapt.config import RunConfig, ShiftConfig
from segadapt.data import palettes
from segadapt.data.base import DatasetInfo, ImageDataset, SegmentationSource
from segadapt.data.datasets import FileSource, build_source, make_transform, pair_by_stem
from segadapt.data.geopairs import RasterPairs, RasterTiles
from segadapt.data.pairs import MaskShift, PairedDataset, Shift, ShiftedSource, csv_pairs, image_folder
from segadapt.data.shifted import recorded_params, write_shifted
from segadapt.errors import DataError, SegadaptError
from segadapt.shifts import apply_filter
from segadapt.shifts.compose import moves_labels, warp_labels
from segadapt.shifts.units import length_scale, network_base


def _apply_filter(name: str, severity: float, image: np.ndarray, seed: int, base_size: int = 0) -> np.ndarray:
    """`base_size` > 0: the severity's lengths are network pixels at that base size (shifts/units.py)."""
    return apply_filter(name, image, severity=severity, seed=seed, scale=length_scale(*image.shape[:2], base_size))


def make_shift(name: str, severity: float, base_size: int = 0, units: str = "network") -> Shift:
    """A picklable (image, seed) -> image function, so DataLoader workers can run it. In network units with
    base_size > 0 each image's lengths are scaled by its own factor; otherwise the severity's lengths are used
    as they are (factor 1)."""
    return functools.partial(_apply_filter, name, severity, base_size=network_base(units, base_size))


def _warp_labels(name: str, severity: float, fill: int, mask: np.ndarray, seed: int) -> np.ndarray:
    return warp_labels(name, mask, severity, seed, fill)


def make_mask_shift(name: str, severity: float, fill: int) -> MaskShift | None:
    """The labels' move for a filter that moves the image rigidly (misalign; `fill` where nothing maps), or None:
    photometric filters keep D1's labels, as in the study."""
    return functools.partial(_warp_labels, name, severity, fill) if moves_labels(name) else None


def cfg_shift(cfg: RunConfig, severity: float | None = None) -> Shift:
    """The on-the-fly D2 filter of `cfg` (its filter, units and base size) at `severity` (default shift.severity)."""
    s = cfg.shift
    return make_shift(s.filter, s.severity if severity is None else severity, cfg.data.base_size, s.units)


def filtered_source(source: SegmentationSource, cfg: RunConfig, severity: float | None = None) -> ShiftedSource:
    """D1 through `cfg.shift.filter` on the fly (at `severity`, default shift.severity, in cfg's units), with
    its labels moved along when the filter moves pixels."""
    s = cfg.shift
    severity = s.severity if severity is None else severity
    return ShiftedSource(source, cfg_shift(cfg, severity), s.seed, s.filter,
                         make_mask_shift(s.filter, severity, source.info.ignore_index))


def kind(cfg: RunConfig, split: str) -> str:
    """"raster", "pairs", "shifted", "folder" or "filter": which of the module's cases D2 of `split` is."""
    if cfg.shift.d2_raster:
        return "raster"
    if cfg.shift.pairs_csv:
        return "pairs"
    if cfg.shift.d2_dir:
        return "shifted" if (Path(cfg.shift.d2_dir) / split).is_dir() else "folder"
    return "filter"


def d2_source(cfg: RunConfig, split: str, *, labelled: bool = False) -> SegmentationSource:
    """D2 of `split` (cases 2-4; a pairs CSV is read by `training_pairs`). `labelled`: refuse a D2 without
    labels in one line, for the callers that score on it."""
    if cfg.shift.d2_raster:
        return raster_tiles(cfg)
    if cfg.shift.pairs_csv:
        raise SegadaptError(f"shift.pairs_csv = {cfg.shift.pairs_csv}: pairs have no labels to score with; "
                            "score on a `segadapt shift` output or a filter instead")
    if not cfg.shift.d2_dir:
        return filtered_source(build_source(cfg.data, split), cfg)
    d2_dir = Path(cfg.shift.d2_dir)
    if not d2_dir.is_dir():
        raise DataError(f"{d2_dir}: D2 image directory not found; check --d2-dir (shift.d2_dir)")
    if (d2_dir / split).is_dir():
        return shifted_dir_source(cfg, d2_dir, split)
    if any(p.is_dir() and (p / "images").is_dir() for p in d2_dir.iterdir()):
        raise DataError(f"{d2_dir}: a `segadapt shift` output without the {split!r} split; write it with "
                        f"segadapt shift --split {split} --out {d2_dir}")
    if labelled:
        raise DataError(f"{d2_dir}: a folder of unlabelled D2 images has no {split!r} split to score; write a "
                        f"labelled D2 with segadapt shift --split {split} --out DIR")
    return image_folder(d2_dir)


def shifted_dir_source(cfg: RunConfig, d2_dir: Path, split: str) -> SegmentationSource:
    """A directory written by `segadapt shift`: D1's layout (generated data: <split>/images|labels)."""
    if cfg.data.dataset == "synthetic":
        info = build_source(cfg.data, split).info
        return FileSource(info, pair_by_stem(d2_dir / split / "images", d2_dir / split / "labels"))
    d2_cfg = copy.deepcopy(cfg.data)
    d2_cfg.root = str(d2_dir)
    return build_source(d2_cfg, split)


def raster_info(cfg: RunConfig) -> DatasetInfo:
    """Classes of a label raster: the folder-dataset settings (data.num_classes, class_names, ignore_index)."""
    d = cfg.data
    if d.num_classes <= 0 and d.dataset in ("camvid", "voc"):  # a model trained on a built-in dataset: its classes
        from segadapt.data.datasets import CAMVID_CLASSES, VOC_CLASSES

        if d.dataset == "camvid":
            return DatasetInfo("raster", CAMVID_CLASSES, 11, palettes.CAMVID)
        return DatasetInfo("raster", VOC_CLASSES, 255, palettes.voc(21))
    if d.num_classes <= 0:
        raise DataError(f"{cfg.shift.label_raster}: a label raster needs the class count; pass --dataset folder "
                        f"--set data.num_classes=N")
    names = tuple(d.class_names) or tuple(f"class_{i}" for i in range(d.num_classes))
    return DatasetInfo(Path(cfg.shift.label_raster).stem or "raster", names, d.ignore_index,
                       palettes.generic(d.num_classes))


def raster_tiles(cfg: RunConfig, image: str = "") -> RasterTiles:
    """D2 (or `image`) cut into crop-sized tiles on the label raster's grid, with its labels, for scoring."""
    if not cfg.shift.label_raster:
        raise DataError(f"{cfg.shift.d2_raster}: no label raster to score with; pass --label-raster (D1's labels "
                        f"on the ground)")
    return RasterTiles(Path(image or cfg.shift.d2_raster), Path(cfg.shift.label_raster), raster_info(cfg),
                       (cfg.data.crop_size[0], cfg.data.crop_size[1]))


def raster_pairs(cfg: RunConfig) -> RasterPairs:
    """Training windows of the D1 and D2 mosaics at the same ground coordinates."""
    s = cfg.shift
    if not s.d1_raster:
        raise DataError(f"{s.d2_raster}: a D2 mosaic pairs with a D1 mosaic; pass --d1-raster too")
    if cfg.adapt.align != "none":
        raise SegadaptError(f"adapt.align = {cfg.adapt.align}: mosaics are paired by their georeferencing; "
                            f"set adapt.align = none")
    if cfg.adapt.teacher_cache:
        raise SegadaptError("adapt.teacher_cache: random raster windows are not windows of stored frames; "
                            "leave the cache off with --d2-raster")
    return RasterPairs(Path(s.d1_raster), Path(s.d2_raster), make_transform(cfg.data, True, cfg.data.ignore_index),
                       s.raster_windows, s.photometric, s.raster_min_valid)


def training_pairs(cfg: RunConfig, split: str = "") -> PairedDataset | RasterPairs:
    """(X1, X2) pairs of a split for adaptation, with the training transform (shared geometry)."""
    split = split or cfg.data.train_split
    if cfg.shift.d2_raster:
        return raster_pairs(cfg)
    if cfg.shift.pairs_csv:
        d1, d2 = csv_pairs(Path(cfg.shift.pairs_csv))
    else:
        d1, d2 = build_source(cfg.data, split), d2_source(cfg, split)
    transform = make_transform(cfg.data, True, cfg.data.ignore_index)
    return PairedDataset(d1, d2, transform, cfg.shift.photometric)


class _RasterD2Windows(torch.utils.data.Dataset):
    """The D2 side of mosaic windows (X2 and where it has data): windows are drawn on D1's grid, so D1's
    mosaic places them, but only D2's pixels come out."""

    def __init__(self, pairs: RasterPairs) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, x2, valid = self.pairs[k]
        return x2, valid


def d2_images(cfg: RunConfig, split: str = "") -> torch.utils.data.Dataset:
    """D2's images of a split alone, with the training transform, each with its validity mask, for the
    label-free peers (segadapt.peers): no D1 image is paired with them and no label is read. From a filter, a
    D2 folder or `segadapt shift` output, the x2 column of a pairs CSV, or windows of a D2 mosaic."""
    split = split or cfg.data.train_split
    if cfg.shift.d2_raster:
        return _RasterD2Windows(raster_pairs(cfg))
    source = csv_pairs(Path(cfg.shift.pairs_csv))[1] if cfg.shift.pairs_csv else d2_source(cfg, split)
    return ImageDataset(source, make_transform(cfg.data, True, cfg.data.ignore_index))


def with_shift(cfg: RunConfig, shift: ShiftConfig) -> RunConfig:
    """`cfg` with another D2 (the sweep's per-filter D2); the original is left as it was."""
    return dataclasses.replace(cfg, shift=shift)


def materialise_d2(cfg: RunConfig, filter_name: str, out: Path) -> ShiftConfig:
    """Write D2 once (in parallel, resumable) so that training epochs read files instead of re-filtering:
    real filters cost 0.1-0.2 s per CamVid frame, more than a CPU training step."""
    root = Path(cfg.data.root) if cfg.data.root and cfg.data.dataset != "synthetic" else None
    for split in dict.fromkeys((cfg.data.train_split, cfg.data.val_split)):
        source = build_source(cfg.data, split)
        write_shifted(source, root, out, split, filter_name, cfg.shift.severity, cfg.shift.seed,
                      units=cfg.shift.units, base_size=cfg.data.base_size)
    return dataclasses.replace(cfg.shift, filter=filter_name, d2_dir=str(out))


def same_shift(cfg: RunConfig, split: str) -> None:
    """A `segadapt shift` output records its filter and severity: refuse to report it as another shift."""
    if not cfg.shift.d2_dir:
        return
    d2_dir = Path(cfg.shift.d2_dir)
    try:
        made = recorded_params(d2_dir, split)
    except DataError:
        return  # an unreadable marker: nothing to compare (the images are scored as they are)
    if made is None:
        return  # a plain folder of D2 images: nothing recorded to compare
    wanted = {"filter": cfg.shift.filter, "severity": cfg.shift.severity}
    if {k: made.get(k) for k in wanted} != wanted:
        raise SegadaptError(f"{d2_dir}: holds {made.get('filter')} at severity {made.get('severity')}, not "
                            f"{cfg.shift.filter} at {cfg.shift.severity}; pass --filter/--severity to match")
