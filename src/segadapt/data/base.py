"""What every dataset provides, and the checked readers that turn bad files into one clear error line."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import cv2.utils.logging as cv2_logging
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from segadapt.base_size import base_scale
from segadapt.errors import DataError

if TYPE_CHECKING:
    from segadapt.data.transforms import JointTransform


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    ignore_index: int
    palette: tuple[tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def spread_indices(n: int, k: int) -> list[int]:
    """k sample indices spread evenly over 0..n-1 (all of them when k >= n): the first k of a split
    are often one video sequence, so reports and figures that look at a few samples take them apart."""
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, k).round()]


PIXEL_SAMPLES = 16  # training frames whose shorter side is read to record a model's pixel factor


def pixel_factor(source: SegmentationSource, base_size: int) -> float | None:
    """The factor `base_size` resized the frames of `source` by (models/scale.py), when every sampled frame has
    one shorter side (1.0 for base size 0); None when their sizes differ (VOC), so no one factor holds."""
    factors = {base_scale(*source.load_image(i).shape[:2], base_size)
               for i in spread_indices(len(source), PIXEL_SAMPLES)} if base_size else {1.0}
    return factors.pop() if len(factors) == 1 else None


class SegmentationSource:
    """Raw (image, mask) samples: uint8 HxWx3 RGB and int64 HxW. No augmentation here."""

    info: DatasetInfo

    def __len__(self) -> int:
        raise NotImplementedError

    def stem(self, i: int) -> str:
        """Name shared by the same scene in D1 and D2; pairs are matched on it."""
        raise NotImplementedError

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def load_image(self, i: int) -> np.ndarray:
        """The image alone: the label-free paths (adaptation) call only this."""
        return self.load(i)[0]

    def image_path(self, i: int) -> Path | None:
        return None

    def name(self, i: int) -> str:
        """The image's file, or its stem where there is none (generated data): how messages name a sample."""
        path = self.image_path(i)
        return str(path) if path is not None else self.stem(i)

    def mask_path(self, i: int) -> Path | None:
        return None

    def identity(self, i: int) -> str:
        """What changes when image i changes: its file (path, size, modification time), else its stem.
        Caches of per-image results are keyed by it; generated sources add what they are generated from."""
        path = self.image_path(i)
        if path is None:
            return self.stem(i)
        st = path.stat()
        return f"{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}"


class SegmentationDataset(torch.utils.data.Dataset):
    """A source plus a joint transform, yielding (normalised float 3xHxW, int64 HxW) tensors."""

    def __init__(self, source: SegmentationSource, transform: JointTransform) -> None:
        self.source, self.transform, self.info = source, transform, source.info

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.source.load(i)
        return self.transform(image, mask)


class ImageDataset(torch.utils.data.Dataset):
    """A source's images alone through a transform, each with its validity mask (1 on the image, 0 on the
    padding a small image gets): (normalised float 3xHxW, float 1xHxW). Only `load_image` is called, so what
    trains from it (the label-free peers) never reads a label."""

    def __init__(self, source: SegmentationSource, transform: JointTransform) -> None:
        self.source, self.transform, self.info = source, transform, source.info

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.source.load_image(i)
        params = self.transform.sample_params(*image.shape[:2]) if self.transform.train else None
        x, _ = self.transform.apply(image, None, params)
        return x, self.transform.apply_valid(np.ones(image.shape[:2], bool), params)


MAX_IMAGE_PIXELS = 1 << 26
"""The most pixels (width x height) an image or mask may declare: 67 Mpx, e.g. 8192x8192 or twice an 8K UHD frame.

Checked on the file's header before decoding, because a few bytes can declare gigapixels: a 60000x60000 PNG
header asks the decoder for 10 GB before it finds there is no data. A real image this large would not fit
either: the loader, the float tensor (4 bytes per channel) and the shift filters' float copies each hold it
whole. Training sees crops anyway, so a genuinely huge raster (aerial, microscopy) should be cut into tiles
no larger than this, its mask cut the same way, or downscaled, before segadapt reads it."""
_MAX_SIDE = int(MAX_IMAGE_PIXELS**0.5)


def _too_large(path: Path, what: str, size: tuple[int, int] | None) -> DataError:
    # size None: PIL refused to open it (it refuses above twice its own Image.MAX_IMAGE_PIXELS)
    declared = f"{size[0]}x{size[1]}" if size else f"over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels"
    return DataError(f"{path}: {what} too large to decode (its header declares {declared}; segadapt decodes at "
                     f"most {MAX_IMAGE_PIXELS:,} pixels); cut it into tiles of at most {_MAX_SIDE}x{_MAX_SIDE} "
                     f"(and its mask alike) or downscale it")


def _check_size(size: tuple[int, int], path: Path, what: str) -> None:
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise _too_large(path, what, size)


def check_declared_size(data: np.ndarray, path: Path, what: str = "image") -> None:
    """Refuse a file whose header declares more than MAX_IMAGE_PIXELS, before any decoder allocates for it.

    PIL opens lazily, so only the header is parsed. Formats PIL does not know are left to the decoder."""
    try:
        with warnings.catch_warnings():  # PIL warns about large sizes itself; the refusal below is the one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data.tobytes())) as im:
                size = im.size
    except Image.DecompressionBombError:  # PIL's own limit is higher than ours
        raise _too_large(path, what, None) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError):
        return
    _check_size(size, path, what)


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV logs its own warnings for files we already turn into one clear DataError; silence them."""
    level = cv2_logging.getLogLevel()
    cv2_logging.setLogLevel(cv2_logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2_logging.setLogLevel(level)


def read_file_bytes(path: Path) -> np.ndarray:
    """A file's bytes as a uint8 array: the one read that both decoding and inspection (doctor) share."""
    if not path.is_file():
        raise DataError(f"{path}: image file not found; check the dataset root")
    try:
        return np.fromfile(path, np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read image ({e.strerror or e}); check its permissions") from None


@dataclass(frozen=True)
class ImageHeader:
    """What the file says about itself, before the pixels are decoded to RGB."""

    format: str  # PNG, JPEG, TIFF, ...
    mode: str  # PIL mode: RGB, L, RGBA, P, I;16, F, CMYK, ...
    size: tuple[int, int]  # width, height
    orientation: int  # EXIF orientation (1 = as stored); OpenCV rotates JPEG, PNG, TIFF and WebP images by it


def image_header(data: np.ndarray) -> ImageHeader | None:
    """Header fields parsed from bytes already in memory (no second read); None if PIL does not know it."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            return ImageHeader(im.format or "?", im.mode, im.size, orientation)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, TypeError):
        return None


def decode_image(data: np.ndarray, path: Path) -> np.ndarray:
    """RGB uint8 from a file's bytes; grey, RGBA and 16-bit files are converted, since cameras produce all."""
    image = None
    if data.size:
        check_declared_size(data, path)
        with _quiet_opencv():
            try:
                image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            except cv2.error:  # a format PIL does not parse, failing one of OpenCV's own checks
                image = None
    if image is None:
        header = image_header(data) if data.size else None
        kind = f" (a {header.mode} {header.format})" if header and header.mode in ("F", "I", "I;32") else ""
        raise DataError(f"{path}: unreadable or corrupt image{kind}; re-export it as JPEG/PNG or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray:
    """RGB uint8; grey and RGBA files are converted, since cameras and scanners produce both."""
    return decode_image(read_file_bytes(path), path)


class ColourMaskError(DataError):
    """A mask stored as colours (RGB) instead of class indices; refused, since guessing the mapping is unsafe."""


def colour_mask_hint(rgb: np.ndarray, palette: Sequence[tuple[int, int, int]] = ()) -> str:
    """How to turn an RGB mask into an index mask, judged from its colours."""
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return "its three channels are equal: save the first one as a single-channel (L) PNG"
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours = np.unique(packed)
    known = {(r << 16) | (g << 8) | b for r, g, b in palette}
    if palette and all(int(c) in known for c in colours):
        return "its colours are the dataset's class palette: map each colour to its class index"
    return "map each colour to its class index"


def read_mask(path: Path, palette: Sequence[tuple[int, int, int]] = ()) -> np.ndarray:
    """Class-index mask as int64; palette PNGs give their indices, never their colours.

    Colour (RGB) masks are refused rather than converted: a colour absent from the palette would need a
    silent guess. The error says whether the colours are the dataset's palette or a grey mask saved as RGB.
    """
    try:
        with warnings.catch_warnings():  # large sizes: the check below refuses them in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            _check_size(im.size, path, "mask")
            if im.mode in ("RGB", "RGBA"):
                hint = colour_mask_hint(np.asarray(im.convert("RGB")), palette)
                raise ColourMaskError(
                    f"{path}: mask is a {im.mode} colour image; masks must hold class indices "
                    f"(single-channel or palette PNG); {hint}"
                )
            mask = np.array(im)
    except FileNotFoundError:
        raise DataError(f"{path}: mask file not found; every image needs a mask with the same stem") from None
    except Image.DecompressionBombError:
        raise _too_large(path, "mask", None) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt mask ({e}); re-export it as PNG") from None
    if mask.ndim != 2:
        raise DataError(f"{path}: mask has shape {mask.shape}; expected a single-channel index mask")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
        raise DataError(f"{path}: mask holds {mask.dtype} values; masks must hold integer class indices")
    return mask.astype(np.int64)


def check_pair(
    image: np.ndarray, mask: np.ndarray, info: DatasetInfo, image_path: Path, mask_path: Path
) -> None:
    """Size and label-range checks, run as each sample is read so opening a dataset stays instant."""
    if image.shape[:2] != mask.shape:
        turned = image.shape[:2] == mask.shape[::-1]
        hint = (" (width and height swapped: an EXIF orientation turns the image as it is read; draw the mask "
                "on the turned image)" if turned else "")
        raise DataError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {image_path.name} is "
            f"{image.shape[1]}x{image.shape[0]}{hint}; masks must match their image's size"
        )
    # an elementwise test first: np.unique sorts the whole mask and would double the cost of loading
    outside = ((mask < 0) | (mask >= info.num_classes)) & (mask != info.ignore_index)
    if outside.any():
        bad = np.unique(mask[outside])
        raise DataError(
            f"{mask_path}: label values {bad[:8].tolist()} outside 0..{info.num_classes - 1} and not the "
            f"ignore index {info.ignore_index}; fix the mask or set data.num_classes/data.ignore_index"
        )
