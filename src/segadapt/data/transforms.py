"""Joint image/mask augmentation (scale, crop, flip) and normalisation.

Geometry is drawn once (`sample_params`) and applied by `apply`, so the same crop can be cut from two
images of one scene (X1 from D1, X2 from D2). Random draws come from torch's global RNG: DataLoader worker
seeding and a checkpointed RNG state then make augmentation reproducible.

`align` restricts training geometry to horizontal flips and crops at multiples of a feature stride, with no
random scale: every crop is then a window of one fixed frame per image, so features computed once on that
frame (segadapt.cache) can be sliced instead of recomputed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from segadapt.base_size import base_scale


@dataclass(frozen=True)
class GeoParams:
    scale: float  # on top of the base-size resize
    top: float  # crop offsets as fractions of the free range, so they fit any image size
    left: float
    flip: bool
    # pixel offsets of the crop in the padded frame (before the flip); -1 = use the fractions above
    y: int = -1
    x: int = -1


class JointTransform:
    def __init__(
        self,
        *,
        train: bool,
        crop_size: Sequence[int] = (321, 321),
        scale_range: tuple[float, float] = (0.5, 1.5),
        hflip: bool = True,
        base_size: int = 0,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        ignore_index: int = 255,
        align: int = 0,
    ) -> None:
        self.train, self.crop = train, (int(crop_size[0]), int(crop_size[1]))
        self.scale_range, self.hflip, self.base_size = scale_range, hflip, base_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.ignore_index = ignore_index
        if align < 0:
            raise ValueError(f"align must be >= 0 (0 = off), got {align}")
        self.align = align

    def aligned(self, stride: int) -> JointTransform:
        """A copy whose training geometry is flips and crops at multiples of `stride` only (no random scale)."""
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        out = copy.copy(self)
        out.align = stride
        return out

    def sample_params(self, height: int | None = None, width: int | None = None) -> GeoParams:
        """Draw one geometry from torch's global RNG; apply it to every image of a pair.

        `height`/`width` are optional: offsets are stored as fractions of the free range, so the same
        params fit the image whatever its size after the resize. In aligned mode they are required (the
        image as loaded): offsets are then whole pixels, multiples of `align` in the frame the network sees.
        """
        lo, hi = self.scale_range
        u = torch.rand(4).tolist()
        if not self.align:
            return GeoParams(lo + (hi - lo) * u[0], u[1], u[2], self.hflip and u[3] < 0.5)
        # same four draws as above, so with scale 1 and crop == frame both modes see the same flips
        if height is None or width is None:
            raise ValueError("aligned crops need the image size: sample_params(height, width)")
        h, w = self.frame_size(height, width)
        (ch, cw), a = self.crop, self.align
        flip = self.hflip and u[3] < 0.5
        y = a * min(int(u[1] * ((h - ch) // a + 1)), (h - ch) // a)
        x_seen = a * min(int(u[2] * ((w - cw) // a + 1)), (w - cw) // a)  # aligned in the frame the net sees
        return GeoParams(1.0, 0.0, 0.0, flip, y, w - cw - x_seen if flip else x_seen)

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the padded frame crops are cut from, at scale 1: base-size resize, then padding to the crop."""
        height, width = _scaled(height, width, self._base_scale(height, width))
        return max(height, self.crop[0]), max(width, self.crop[1])

    def seen_offset(self, params: GeoParams, height: int, width: int) -> tuple[int, int]:
        """(top, left) of an aligned crop in the frame as the network sees it (mirrored when flipped)."""
        if params.y < 0:
            raise ValueError("seen_offset needs aligned params (pixel offsets)")
        w = self.frame_size(height, width)[1]
        return params.y, (w - self.crop[1] - params.x if params.flip else params.x)

    def frame(self, image: np.ndarray) -> torch.Tensor:
        """The un-augmented training frame (base-size resize, padding to the crop, no crop or flip), normalised:
        what aligned crops are windows of, and what a teacher cache stores features of."""
        image, _ = _resize(image, None, self._base_scale(*image.shape[:2]))
        image, _ = self._pad(image, None)
        return self.normalize(image)

    def _base_scale(self, h: int, w: int) -> float:
        return base_scale(h, w, self.base_size)

    def apply(
        self, image: np.ndarray, mask: np.ndarray | None, params: GeoParams | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Resize once (base size x random scale), pad, crop, flip; `params=None` means evaluation."""
        image, mask = _resize(image, mask, self._base_scale(*image.shape[:2]) * (params.scale if params else 1.0))
        if params is not None:
            image, mask = self._crop(image, mask, params)
            if params.flip:
                image = image[:, ::-1]
                mask = mask[:, ::-1] if mask is not None else None
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).long() if mask is not None else None
        return self.normalize(image), mask_t

    def _crop(
        self, image: np.ndarray, mask: np.ndarray | None, p: GeoParams
    ) -> tuple[np.ndarray, np.ndarray | None]:
        ch, cw = self.crop
        image, mask = self._pad(image, mask)
        h, w = image.shape[:2]
        if p.y >= 0:  # aligned mode: exact pixel offsets
            if not (0 <= p.y <= h - ch and 0 <= p.x <= w - cw):
                raise ValueError(f"crop offset ({p.y}, {p.x}) does not fit a {h}x{w} frame with a {ch}x{cw} crop")
            y, x = p.y, p.x
        else:
            y = min(int(p.top * (h - ch + 1)), h - ch)
            x = min(int(p.left * (w - cw + 1)), w - cw)
        image = image[y : y + ch, x : x + cw]
        return image, (mask[y : y + ch, x : x + cw] if mask is not None else None)

    def _pad(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Small images: pad bottom/right up to the crop with black pixels and ignored labels."""
        ch, cw = self.crop
        h, w = image.shape[:2]
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            if mask is not None:
                mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        return image, mask

    def apply_valid(self, valid: np.ndarray, params: GeoParams | None) -> torch.Tensor:
        """A validity mask (bool HxW, True where the pixel has a source) through the geometry `apply` gives the
        image: float 1xHxW of 0/1; resized by nearest neighbour, padding is invalid."""
        m = valid.astype(np.uint8)
        h, w = _scaled(*m.shape[:2], self._base_scale(*m.shape[:2]) * (params.scale if params else 1.0))
        if (h, w) != m.shape[:2]:
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        if params is not None:
            m, _ = self._crop(m, None, params)  # pads with 0: no source
            m = m[:, ::-1] if params.flip else m
        return torch.from_numpy(np.ascontiguousarray(m)).float().unsqueeze(0)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, m = self.apply(image, mask, self.sample_params() if self.train else None)
        assert m is not None
        return img, m

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """Back to uint8 HxWx3 for figures."""
        img = (x.detach().cpu().float() * self.std + self.mean).clamp(0, 1).mul(255).round()
        return img.byte().permute(1, 2, 0).numpy()


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """An image resized as evaluation resizes it (bilinear, sizes rounded as `frame_size` rounds them)."""
    return _resize(image, None, scale)[0]


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) after `resize_image` by `scale`."""
    return _scaled(height, width, scale)


def _scaled(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size after resizing by `scale`; frame_size and _resize must agree on it to the pixel."""
    if scale == 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(image: np.ndarray, mask: np.ndarray | None, scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    h, w = _scaled(*image.shape[:2], scale)
    if (h, w) == image.shape[:2]:
        return image, mask
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        # NEAREST_EXACT samples pixel centres like INTER_LINEAR; plain NEAREST is off by half a pixel
        mask = cv2.resize(mask.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, mask
