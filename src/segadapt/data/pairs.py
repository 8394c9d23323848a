"""Paired scenes (X1 from D1, X2 from D2) for feature regression, and D2 sources made from D1.

Pairs are matched by file stem. Geometric augmentation is drawn once and applied to both images, so the
two feature maps stay aligned; photometric jitter is drawn for each image separately. Nothing here reads
a D2 label.

`PairedDataset.aligned(stride)` is the view a teacher feature cache trains from: geometry restricted to
flips and stride-aligned crops, and each item carries that geometry so the cache can slice its stored maps.
"""

from __future__ import annotations

import copy
import csv
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from segadapt.data.base import DatasetInfo, SegmentationSource
from segadapt.data.datasets import IMAGE_SUFFIXES, FileSource, image_files
from segadapt.data.transforms import JointTransform
from segadapt.errors import DataError

Shift = Callable[[np.ndarray, int], np.ndarray]  # (uint8 HxWx3 image, seed) -> shifted image


def stem_seed(stem: str, seed: int) -> int:
    """Per-image filter seed: stable across runs and processes (unlike hash())."""
    return (zlib.crc32(stem.encode()) + 1_000_003 * seed) % 2**31


class ShiftedSource(SegmentationSource):
    """D2 = filter(D1), computed on the fly. Labels are D1's, unwarped, as in the study (baselines B1/B2)."""

    def __init__(self, source: SegmentationSource, shift: Shift, seed: int = 0, name: str = "shifted") -> None:
        self.source, self.shift, self.seed = source, shift, seed
        self.info = DatasetInfo(f"{source.info.name}+{name}", source.info.class_names, source.info.ignore_index,
                                source.info.palette)

    def __len__(self) -> int:
        return len(self.source)

    def stem(self, i: int) -> str:
        return self.source.stem(i)

    def load_image(self, i: int) -> np.ndarray:
        return self.shift(self.source.load_image(i), stem_seed(self.stem(i), self.seed))

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.source.load(i)
        return self.shift(image, stem_seed(self.stem(i), self.seed)), mask


class ImageListSource(FileSource):
    """Unlabelled images (a D2 folder, or one column of a pairs CSV); asking for labels is an error."""

    def __init__(self, items: list[tuple[str, Path]], info: DatasetInfo | None = None) -> None:
        super().__init__(info or DatasetInfo("images", (), 255, ()), [(stem, path, path) for stem, path in items])

    def mask_path(self, i: int) -> None:
        return None

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        raise DataError(f"{self.image_path(i)}: this image set has no labels; it can only be used for adaptation")


def image_folder(directory: Path) -> ImageListSource:
    if not directory.is_dir():
        raise DataError(f"{directory}: D2 image directory not found; check the path")
    files = sorted(image_files(directory))
    if not files:
        raise DataError(f"{directory}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return ImageListSource([(p.stem, p) for p in files])


def csv_pairs(path: Path) -> tuple[ImageListSource, ImageListSource]:
    """A CSV with columns x1,x2 (paths relative to the CSV's folder, or absolute)."""
    if not path.is_file():
        raise DataError(f"{path}: pairs CSV not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets start with a BOM
            reader = csv.DictReader(f, skipinitialspace=True)
            if not reader.fieldnames or not {"x1", "x2"} <= {n.strip() for n in reader.fieldnames}:
                raise DataError(f"{path}: pairs CSV needs a header with columns x1,x2")
            reader.fieldnames = [n.strip() for n in reader.fieldnames]
            rows = [(r["x1"], r["x2"]) for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a UTF-8 CSV text file ({e}); give a CSV with columns x1,x2") from None
    if any(a is None or b is None for a, b in rows):
        raise DataError(f"{path}: a row has fewer than two columns; every row needs x1,x2")
    if not rows:
        raise DataError(f"{path}: pairs CSV has no rows")
    one = [(f"{k:06d}", path.parent / a.strip()) for k, (a, _) in enumerate(rows)]
    two = [(f"{k:06d}", path.parent / b.strip()) for k, (_, b) in enumerate(rows)]
    return ImageListSource(one), ImageListSource(two)


class PairedDataset(torch.utils.data.Dataset):
    """(X1, X2) tensors of one scene, with shared geometry; D2 labels are never touched.

    The `aligned` view yields (X1, X2, geometry) instead, geometry = int64 [D1 index, flip, top, left] with
    the crop offset in the frame the network sees (see JointTransform.seen_offset).
    """

    with_geometry = False  # set on `aligned` views only
    load_x1 = True

    def __init__(
        self, d1: SegmentationSource, d2: SegmentationSource, transform: JointTransform, photometric: float = 0.0
    ) -> None:
        self.d1, self.d2, self.transform, self.photometric = d1, d2, transform, photometric
        index: dict[str, int] = {}
        for j in range(len(d2)):
            if d2.stem(j) in index:
                raise DataError(f"{d2.name(j)}: a second D2 image with stem {d2.stem(j)!r} (also "
                                f"{d2.name(index[d2.stem(j)])}); pairs are matched by stem, keep one")
            index[d2.stem(j)] = j
        seen: set[str] = set()
        self.pairs = []
        for i in range(len(d1)):
            stem = d1.stem(i)
            if stem in seen:
                raise DataError(f"{d1.name(i)}: a second D1 image with stem {stem!r}; pairs are matched by stem")
            seen.add(stem)
            if stem not in index:
                where = d1.image_path(i) or stem
                raise DataError(f"{where}: no D2 image with stem {stem!r}; pairs are matched by file stem")
            self.pairs.append((i, index[stem]))

    def __len__(self) -> int:
        return len(self.pairs)

    def aligned(self, stride: int, *, load_x1: bool = True) -> PairedDataset:
        """A view with only flips and crops at multiples of `stride` (no random scale), whose items carry
        their geometry. With `load_x1=False` X1 is not read (a cache stands in for it): its slot holds an empty
        tensor so batches keep their shape."""
        if not self.transform.train:
            raise ValueError("aligned views are for training transforms (train=True)")
        view = copy.copy(self)
        view.transform = self.transform.aligned(stride)
        view.with_geometry, view.load_x1 = True, load_x1
        return view

    def _jitter(self, image: np.ndarray) -> np.ndarray:
        if not self.photometric:
            return image
        gain, bias = (1 + self.photometric * (2 * torch.rand(2) - 1)).tolist()
        return np.clip(image.astype(np.float32) * gain + (bias - 1) * 64, 0, 255).astype(np.uint8)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, ...]:
        i, j = self.pairs[k]
        x1 = self.d1.load_image(i) if self.load_x1 else None
        x2 = self.d2.load_image(j)
        if x1 is not None:
            self._check_sizes(i, j, x1, x2)
        h, w = x2.shape[:2]
        params = self.transform.sample_params(h, w) if self.transform.train else None
        t1 = self.transform.apply(self._jitter(x1), None, params)[0] if x1 is not None else torch.empty(0, 0, 0)
        t2, _ = self.transform.apply(self._jitter(x2), None, params)
        if not self.with_geometry:
            return t1, t2
        assert params is not None  # aligned views are training views
        top, left = self.transform.seen_offset(params, h, w)
        return t1, t2, torch.tensor([i, int(params.flip), top, left], dtype=torch.int64)

    def _check_sizes(self, i: int, j: int, x1: np.ndarray, x2: np.ndarray) -> None:
        if x1.shape[:2] != x2.shape[:2]:
            a, b = self.d1.name(i), self.d2.name(j)
            raise DataError(
                f"{b}: size {x2.shape[1]}x{x2.shape[0]} differs from its pair {a} ({x1.shape[1]}x{x1.shape[0]}); "
                "paired images must show the same scene at the same size"
            )
