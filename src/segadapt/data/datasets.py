"""Labelled datasets on disk (CamVid, PASCAL VOC 2012 + SBD, a generic folder) and the builders.

Pairing (every image has a mask) is checked when a dataset is opened; pixel contents are checked as each
sample is read, so opening 10k images stays instant.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from segadapt.config import DataConfig, RunConfig
from segadapt.data import palettes
from segadapt.data.base import (
    DatasetInfo,
    SegmentationDataset,
    SegmentationSource,
    check_pair,
    read_image,
    read_mask,
)
from segadapt.data.transforms import JointTransform
from segadapt.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist")
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


class FileSource(SegmentationSource):
    """Samples given as (stem, image path, mask path) triples."""

    def __init__(self, info: DatasetInfo, items: list[tuple[str, Path, Path]]) -> None:
        self.info, self.items = info, items

    def __len__(self) -> int:
        return len(self.items)

    def stem(self, i: int) -> str:
        return self.items[i][0]

    def image_path(self, i: int) -> Path:
        return self.items[i][1]

    def mask_path(self, i: int) -> Path:
        return self.items[i][2]

    def load_image(self, i: int) -> np.ndarray:
        return read_image(self.items[i][1])

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        _, ip, mp = self.items[i]
        image, mask = read_image(ip), read_mask(mp, self.info.palette)
        check_pair(image, mask, self.info, ip, mp)
        return image, mask


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} directory not found; check data.root and the split name")
    return path


def image_files(directory: Path) -> list[Path]:
    """The image files directly in `directory` (folders and other files are skipped), in no particular order."""
    return [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def _unpaired(error: DataError, missing: list[DataError] | None) -> None:
    """Raise, or collect when a caller (the doctor) wants every unpaired image rather than the first."""
    if missing is None:
        raise error
    missing.append(error)


def pair_by_stem(
    image_dir: Path, mask_dir: Path, missing: list[DataError] | None = None
) -> list[tuple[str, Path, Path]]:
    """Match images to masks by file stem; an image without a mask is an error, not a silent skip.

    With `missing` given, such images are skipped and their errors appended to it instead.
    """
    images = sorted(image_files(_require_dir(image_dir, "image")))
    if not images:
        raise DataError(f"{image_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    masks: dict[str, Path] = {}
    for m in sorted(image_files(_require_dir(mask_dir, "mask"))):
        if m.stem in masks:  # which one is meant cannot be guessed (and directory order would decide)
            raise DataError(f"{m}: a second mask for stem {m.stem!r} (also {masks[m.stem].name}); keep one")
        masks[m.stem] = m
    items = []
    for img in images:
        if img.stem not in masks:
            _unpaired(DataError(f"{img}: image has no mask; expected {mask_dir / (img.stem + '.png')}"), missing)
            continue
        items.append((img.stem, img, masks[img.stem]))
    return items


def builtin_info(dataset: str) -> DatasetInfo | None:
    """The classes, ignore index and palette a built-in dataset brings (None for a folder dataset, whose
    config gives them)."""
    if dataset == "synthetic":
        from segadapt.data.synthetic import CLASSES, PALETTE

        return DatasetInfo("synthetic", CLASSES, 255, PALETTE)
    if dataset == "camvid":
        return DatasetInfo("camvid", CAMVID_CLASSES, 11, palettes.CAMVID)
    if dataset == "voc":
        return DatasetInfo("voc", VOC_CLASSES, 255, palettes.voc(21))
    return None


def with_classes(cfg: RunConfig) -> RunConfig:
    """A copy of `cfg` with the class keys a built-in dataset fixes written out (data.num_classes,
    ignore_index, class_names; model.num_classes), so a printed config says 11 classes for CamVid, not 0."""
    cfg = copy.deepcopy(cfg)
    info = builtin_info(cfg.data.dataset)
    if info is not None:
        cfg.data.num_classes, cfg.data.ignore_index = len(info.class_names), info.ignore_index
        cfg.data.class_names = list(info.class_names)
    cfg.model.num_classes = cfg.model.num_classes or cfg.data.num_classes
    return cfg


def check_class_keys(cfg: DataConfig) -> None:
    """A built-in dataset brings its own classes: the class keys may be left unset or state exactly those."""
    info = builtin_info(cfg.dataset)
    if info is None:
        return
    own = (len(info.class_names), info.ignore_index, list(info.class_names))
    given = (cfg.num_classes, cfg.ignore_index, list(cfg.class_names))
    if any(g not in (unset, o) for g, unset, o in zip(given, (0, 255, []), own)):
        raise ConfigError(f"data.num_classes, data.ignore_index and data.class_names describe a folder dataset; "
                          f"{cfg.dataset} brings its own ({own[0]} classes, ignore index {own[1]}), so leave them "
                          f"out")


def camvid(root: Path, split: str, missing: list[DataError] | None = None) -> FileSource:
    info = builtin_info("camvid")
    assert info is not None
    return FileSource(info, pair_by_stem(root / split / "images", root / split / "labels", missing))


def voc(root: Path, split: str, missing: list[DataError] | None = None) -> FileSource:
    """VOC2012 layout; masks from SegmentationClassAug (SBD, 10,582 train_aug images) when present."""
    info = builtin_info("voc")
    assert info is not None
    mask_dir = root / "SegmentationClassAug"
    if not mask_dir.is_dir():
        mask_dir = root / "SegmentationClass"
    lists = [root / "ImageSets" / "Segmentation" / f"{split}.txt", root / f"{split}.txt"]
    listing = next((p for p in lists if p.is_file()), None)
    if listing is None:
        hint = " (SBD not installed? train on VOC's own list with --set data.train_split=train)" \
            if split == "train_aug" else ""
        raise DataError(f"{lists[0]}: split list not found; splits are ImageSets/Segmentation/<split>.txt{hint}")
    items = []
    for line in listing.read_text(encoding="utf-8-sig").split("\n"):
        name = line.strip().split()[0] if line.strip() else ""
        if not name:
            continue
        name = Path(name).name  # SBD lists may hold paths
        if Path(name).suffix.lower() in IMAGE_SUFFIXES:  # ... with an extension; a dot in a bare name stays
            name = Path(name).stem
        image, mask = root / "JPEGImages" / f"{name}.jpg", mask_dir / f"{name}.png"
        if not image.is_file():
            _unpaired(DataError(f"{image}: listed in {listing.name} but missing; check data.root"), missing)
        elif not mask.is_file():
            _unpaired(DataError(f"{image}: image has no mask; expected {mask}"), missing)
        else:
            items.append((name, image, mask))
    if not items and not missing:
        raise DataError(f"{listing}: split list is empty")
    return FileSource(info, items)


def folder(root: Path, split: str, cfg: DataConfig, missing: list[DataError] | None = None) -> FileSource:
    if cfg.num_classes <= 0:
        raise DataError(f"{root}: folder datasets need the class count; pass --set data.num_classes=N")
    names = tuple(cfg.class_names) or tuple(f"class_{i}" for i in range(cfg.num_classes))
    if len(names) != cfg.num_classes:
        raise ConfigError(
            f"data.class_names has {len(names)} names but data.num_classes is {cfg.num_classes}; "
            "make them agree"
        )
    info = DatasetInfo(root.name or "folder", names, cfg.ignore_index, palettes.generic(cfg.num_classes))
    return FileSource(info, pair_by_stem(root / split / "images", root / split / "masks", missing))


DATASETS = ("synthetic", "camvid", "voc", "folder")


def build_source(cfg: DataConfig, split: str, missing: list[DataError] | None = None) -> SegmentationSource:
    """The raw samples of a split; `missing` collects images without a mask instead of failing on the first."""
    check_class_keys(cfg)
    if cfg.dataset == "synthetic":
        from segadapt.data.synthetic import SyntheticScenes

        n = cfg.synthetic_train if split == cfg.train_split else cfg.synthetic_val
        return SyntheticScenes(n, (cfg.synthetic_size[0], cfg.synthetic_size[1]), cfg.synthetic_seed, split)
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    if not cfg.root:
        raise ConfigError(f"dataset {cfg.dataset} needs a root directory; pass --root DIR")
    root = _require_dir(Path(cfg.root), "dataset root")
    if cfg.dataset == "camvid":
        return camvid(root, split, missing)
    if cfg.dataset == "voc":
        return voc(root, split, missing)
    return folder(root, split, cfg, missing)


def make_transform(cfg: DataConfig, train: bool, ignore_index: int) -> JointTransform:
    return JointTransform(
        train=train, crop_size=cfg.crop_size, scale_range=(cfg.scale_min, cfg.scale_max), hflip=cfg.hflip,
        base_size=cfg.base_size, mean=cfg.mean, std=cfg.std, ignore_index=ignore_index,
    )


def build_dataset(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    """train=True: random scale/crop/flip; train=False: full images (after the base-size resize)."""
    source = build_source(cfg, split)
    return SegmentationDataset(source, make_transform(cfg, train, source.info.ignore_index))
