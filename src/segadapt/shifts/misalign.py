"""`misalign`: a seeded random affine warp (translation, rotation, scale), so that pixel-misaligned pairs with a
known ground-truth transform can be made from any dataset.

Real D1/D2 pairs (two cameras, two surveys) rarely line up to the pixel; this shift makes the same problem
with the answer known, for testing registration (segadapt.data.align) and measuring what misalignment costs.

Convention: the transform A (3x3, float64) maps X1's pixel coordinates onto X2's, X2(A p) = X1(p), pixel
centres at integer coordinates as in OpenCV. Rotation and scale are about the image centre, then the shift.
Pixels of X2 with no source in X1 are filled by mirroring the image at its border, as a camera pointed
slightly elsewhere would show more scene there rather than a black band: a black fill puts a straight edge
into X2 that no real camera makes, and that edge alone biased gradient-based registration by 1-2 px. D1's
labels, when moved along (`warp_mask`), get the ignore index there, so the mirrored content is never scored;
with the true transform those pixels also fall outside X1's frame, so a registered pair never trains on them.

Draw (`draw_transform`, from `seed` alone, deterministic): offset magnitude uniform in [0.5, 1] x
`max_offset` x the image diagonal in a uniformly random direction, angle uniform in [-max_angle, max_angle]
degrees, scale uniform in [1 - max_scale, 1 + max_scale]. The same unit draws are scaled by the maxima, so a
larger severity moves every image further (severity.py: 0.08 of the diagonal, 6 degrees, 4% at severity 1;
at 480x360 severity 0.5 gives offsets of 12-24 px and rotations up to 3 degrees).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from segadapt.errors import ConfigError


@dataclass(frozen=True)
class Misalignment:
    dx: float  # shift in pixels (after rotation and scale about the centre)
    dy: float
    angle: float  # degrees, counter-clockwise as seen on screen (OpenCV's getRotationMatrix2D sense)
    scale: float
    matrix: np.ndarray  # 3x3: X1 pixel coordinates -> X2 pixel coordinates


def affine_matrix(height: int, width: int, dx: float, dy: float, angle: float, scale: float) -> np.ndarray:
    """3x3 matrix of a rotation by `angle` degrees and a scale about the image centre, then a shift."""
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    m = np.eye(3)
    m[:2] = cv2.getRotationMatrix2D(centre, float(angle), float(scale))
    m[0, 2] += dx
    m[1, 2] += dy
    return m


def draw_transform(height: int, width: int, max_offset: float, max_angle: float, max_scale: float,
                   seed: int) -> Misalignment:
    """The seeded random misalignment of an image of this size (see the module doc for the distribution)."""
    for name, v in (("max_offset", max_offset), ("max_angle", max_angle), ("max_scale", max_scale)):
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"misalign {name} = {v}: must be a finite number >= 0")
    if max_scale >= 1:
        raise ConfigError(f"misalign max_scale = {max_scale}: must be < 1 (a scale of 0 or below is no image)")
    u = np.random.default_rng(seed).random(4)
    radius = (0.5 + 0.5 * u[0]) * max_offset * math.hypot(height, width)
    direction = 2 * math.pi * u[1]
    dx, dy = radius * math.cos(direction), radius * math.sin(direction)
    angle = max_angle * (2 * u[2] - 1)
    scale = 1 + max_scale * (2 * u[3] - 1)
    return Misalignment(dx, dy, angle, scale, affine_matrix(height, width, dx, dy, angle, scale))


def warp_image(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """X2 = X1 moved by `matrix` (X1 -> X2 coordinates), bilinear, mirrored content where nothing maps."""
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def warp_mask(mask: np.ndarray, matrix: np.ndarray, fill: int) -> np.ndarray:
    """Labels moved as `warp_image` moves the image: nearest neighbour (labels are not numbers to blend)."""
    h, w = mask.shape[:2]
    moved = cv2.warpAffine(mask.astype(np.float32), matrix[:2], (w, h), flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))
    return moved.astype(mask.dtype)


def misalign(image: np.ndarray, max_offset: float = 0.04, max_angle: float = 3.0, max_scale: float = 0.02,
             seed: int = 0) -> np.ndarray:
    """A uint8 HxWx3 image moved by its seeded random misalignment (defaults: severity 0.5)."""
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ConfigError(f"misalign takes a uint8 HxWx3 image, got {image.dtype} of shape {image.shape}")
    h, w = image.shape[:2]
    t = draw_transform(h, w, max_offset, max_angle, max_scale, seed)
    if t.dx == t.dy == t.angle == 0 and t.scale == 1:
        return image.copy()  # severity 0: the identity, without a resampling blur
    return warp_image(image, t.matrix)
