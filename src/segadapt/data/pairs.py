"""Paired scenes (X1 from D1, X2 from D2) for feature regression, and D2 sources made from D1.

Pairs are matched by file stem. Geometric augmentation is drawn once and applied to both images, so the
two feature maps stay aligned; photometric jitter is drawn for each image separately. Nothing here reads
a D2 label.

`PairedDataset.aligned(stride)` is the view a teacher feature cache trains from: geometry restricted to
flips and stride-aligned crops, and each item carries that geometry so the cache can slice its stored maps.

`PairedDataset.registered(registrations)` is the view for pairs that are not pixel-aligned (data/align.py):
only the pairs whose registration passed its check, X2 warped into X1's frame before the shared geometry
(so the two may differ in size), and each item ends with a validity mask (1 where X2 had a source), cut and
flipped with the images, for the masked regression loss.
"""

from __future__ import annotations

import copy
import csv
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from segadapt.data.align import Registration, valid_mask, warp_into
from segadapt.data.base import DatasetInfo, SegmentationSource
from segadapt.data.datasets import IMAGE_SUFFIXES, FileSource, image_files
from segadapt.data.transforms import JointTransform
from segadapt.errors import DataError

Shift = Callable[[np.ndarray, int], np.ndarray]  # (uint8 HxWx3 image, seed) -> shifted image
MaskShift = Callable[[np.ndarray, int], np.ndarray]  # (int labels HxW, seed) -> the labels moved with the image


def stem_seed(stem: str, seed: int) -> int:
    """Per-image filter seed: stable across runs and processes (unlike hash())."""
    return (zlib.crc32(stem.encode()) + 1_000_003 * seed) % 2**31


class ShiftedSource(SegmentationSource):
    """D2 = filter(D1), computed on the fly. Labels are D1's, unwarped, as in the study (baselines B1/B2), unless
    `mask_shift` moves them along with a geometric shift (misalign: shifts/compose.py)."""

    def __init__(self, source: SegmentationSource, shift: Shift, seed: int = 0, name: str = "shifted",
                 mask_shift: MaskShift | None = None) -> None:
        self.source, self.shift, self.seed, self.mask_shift = source, shift, seed, mask_shift
        self.info = DatasetInfo(f"{source.info.name}+{name}", source.info.class_names, source.info.ignore_index,
                                source.info.palette)

    def __len__(self) -> int:
        return len(self.source)

    def stem(self, i: int) -> str:
        return self.source.stem(i)

    def identity(self, i: int) -> str:
        """The D1 image's identity and what it is filtered with (a partial's arguments, never its address)."""
        made_with = getattr(self.shift, "args", getattr(self.shift, "__qualname__", ""))
        return f"{self.source.identity(i)}\t{self.info.name}\t{made_with!r}\tseed={self.seed}"

    def load_image(self, i: int) -> np.ndarray:
        return self.shift(self.source.load_image(i), stem_seed(self.stem(i), self.seed))

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.source.load(i)
        seed = stem_seed(self.stem(i), self.seed)
        return self.shift(image, seed), (self.mask_shift(mask, seed) if self.mask_shift is not None else mask)


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
    registrations: list[Registration] | None = None  # set on `registered` views only: one per pair
    skipped: list[tuple[tuple[int, int], Registration]] = []  # pairs a registered view left out, and why

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

    @property
    def with_valid(self) -> bool:
        """Whether items end with a validity mask (registered views)."""
        return self.registrations is not None

    def registered(self, registrations: list[Registration]) -> PairedDataset:
        """A view of the pairs whose registration passed (one Registration per pair, in order): X2 is warped
        into X1's frame and items end with a validity mask. Failed pairs are left out (`skipped` lists them)."""
        if len(registrations) != len(self.pairs):
            raise ValueError(f"{len(registrations)} registrations for {len(self.pairs)} pairs")
        view = copy.copy(self)
        view.pairs = [p for p, r in zip(self.pairs, registrations) if r.ok]
        view.registrations = [r for r in registrations if r.ok]
        view.skipped = [(p, r) for p, r in zip(self.pairs, registrations) if not r.ok]
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
        valid = None
        if self.registrations is not None:  # X2 into X1's frame, before the shared geometry
            reg = self.registrations[k]
            if x2.shape[:2] != tuple(reg.size2) or (x1 is not None and x1.shape[:2] != tuple(reg.size1)):
                raise DataError(f"{self.d2.name(j)}: its pair's size changed since it was registered; delete the "
                                f"registration cache (adapt.align_cache) and run again")
            x2 = warp_into(x2, reg.transform, reg.size1)
            valid = valid_mask(reg.transform, reg.size1, reg.size2)
        if x1 is not None:
            self._check_sizes(i, j, x1, x2)
        h, w = x2.shape[:2]
        params = self.transform.sample_params(h, w) if self.transform.train else None
        t1 = self.transform.apply(self._jitter(x1), None, params)[0] if x1 is not None else torch.empty(0, 0, 0)
        t2, _ = self.transform.apply(self._jitter(x2), None, params)
        out: tuple[torch.Tensor, ...] = (t1, t2)
        if self.with_geometry:
            assert params is not None  # aligned views are training views
            top, left = self.transform.seen_offset(params, h, w)
            out += (torch.tensor([i, int(params.flip), top, left], dtype=torch.int64),)
        if valid is not None:
            out += (self.transform.apply_valid(valid, params),)
        return out

    def _check_sizes(self, i: int, j: int, x1: np.ndarray, x2: np.ndarray) -> None:
        if x1.shape[:2] != x2.shape[:2]:
            a, b = self.d1.name(i), self.d2.name(j)
            raise DataError(
                f"{b}: size {x2.shape[1]}x{x2.shape[0]} differs from its pair {a} ({x1.shape[1]}x{x1.shape[0]}); "
                "paired images must show the same scene at the same size, or be registered (adapt.align=ecc)"
            )
