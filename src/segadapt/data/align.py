"""Registration of real pairs that are not pixel-aligned: estimate the transform taking X2 onto X1, check it,
warp X2 into X1's frame and say which of its pixels have a source.

Convention (as shifts/misalign.py): the transform W (3x3) maps X1's pixel coordinates onto X2's, X1(p) ~
X2(W p), pixel centres at integer coordinates. Warping X2 into X1's frame samples X2 at W p for every pixel p
of X1; p is valid when W p falls inside X2.

The two images come from different domains (another camera, a photocopy), so their raw intensities are not
comparable. Both methods align structure images instead, computed at every pyramid level: by default *local
contrast* (grey minus its local mean over its local standard deviation, a 4 px Gaussian window), which keeps
where edges and textures are and drops local gain and bias; `image = "gradient"` uses the blurred gradient
magnitude. Measured on CamVid under photocopy+misalign (benchmarks/registration.py), local contrast was about
twice as accurate as gradient magnitude (median corner error 0.11 vs 0.24 px with ECC, 12 frames) and gave
SIFT about ten times as many RANSAC inliers.
- `ecc`: for small offsets. Phase correlation at the coarsest pyramid level (shorter side about 48 px) gives
  the starting shift, then OpenCV's ECC (enhanced correlation coefficient) refines an affine (or homography)
  level by level up to full resolution.
- `features`: for large offsets. SIFT keypoints on the structure images at half resolution (4x faster than
  at full, and the refinement below restores the accuracy; at full resolution when half gives too few
  inliers), Lowe's ratio test, RANSAC
  (estimateAffine2D / findHomography), then ECC refinement for sub-pixel accuracy, started at a quarter and at
  half resolution; of the RANSAC estimate and the refinements (within 20 px of it), the one whose aligned
  images correlate best is kept.
- `geo`: no pixels are read: the transform comes from the two files' georeferencing (GeoTIFF tiles paired by
  stem or in a pairs CSV), exact within one CRS; across CRSs a homography fitted to the reprojection of a
  grid of points, refused when it departs from it by more than half a pixel.

Quality check (`Registration.ok`): correlation of the aligned structure images at least `min_corr`, for
features at least `min_inliers` RANSAC inliers, a plausible linear part (scale within [1/2, 2] of the images'
size ratio, anisotropy and shear under 10%), and at least `min_overlap` of X1 covered by X2. A pair that fails
is flagged with the reason and never used for training. `min_corr` = 0.35 was calibrated on
benchmarks/registration.py (100 CamVid frames under photocopy+misalign): the pairs registered within 1 px
correlated 0.36-0.8 (mostly 0.45-0.7), the two accepted at 1.2 px 0.33-0.34, unrelated frames at most 0.05.

Content that no camera saw (a black fill, a scanner's margin) inside X2's frame is not masked here: its
straight edge biased ECC by 1-2 px in a test with black-filled misalignment, which is why the misalign shift
mirrors the image at its border instead (shifts/misalign.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segadapt.base_size import base_scale
from segadapt.errors import ConfigError

METHODS = ("none", "ecc", "features", "geo")
MODELS = ("affine", "homography")
COARSEST = 48  # pixels of the shorter side at the coarsest ECC level
REFINE_REACH = 20.0  # px: a refinement that moves the RANSAC estimate further has lost it, not refined it
FEATURE_LEVEL = 1  # pyramid level keypoints are detected at (1: half resolution); ECC then refines at full
BLUR_SIGMA = 1.5  # Gaussian blur before the gradients, at every level (noise and JPEG blocks out)
LCN_SIGMA = 4.0  # window of the local contrast normalisation, pixels at every level
LCN_FLOOR = 25.0  # grey levels squared added to the local variance: flat areas stay flat, not amplified noise


@dataclass(frozen=True)
class AlignSettings:
    method: str = "ecc"
    model: str = "affine"
    image: str = "contrast"  # what is aligned: "contrast" (local contrast) or "gradient" (gradient magnitude)
    min_corr: float = 0.35
    min_inliers: int = 20
    min_overlap: float = 0.5
    iterations: int = 100  # ECC iterations per pyramid level
    # register at the resolution the network sees: each image resized (never enlarged) so its shorter side is
    # base_size (data.base_size; 0: as stored). A shift in network units is coarse at the stored size (a
    # photocopy's grain 3x wider on CamVid at base size 120): there the contrast images correlate too little
    # to pass min_corr, at the network's size they do (docs/results/registration.md)
    base_size: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS[1:]:  # "none" has no registration
            raise ConfigError(f"adapt.align = {self.method!r}: registration methods are {', '.join(METHODS[1:])}")
        if self.model not in MODELS:
            raise ConfigError(f"adapt.align_model = {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.image not in REPRESENTATIONS:
            raise ConfigError(f"adapt.align_image = {self.image!r}: choose one of {', '.join(REPRESENTATIONS)}")


@dataclass
class Registration:
    """One pair's estimated transform and its quality; `ok` False means: do not use this pair."""

    ok: bool
    matrix: list[list[float]]  # 3x3, X1 pixel coordinates -> X2 pixel coordinates
    method: str
    size1: tuple[int, int]  # (height, width) of X1: the frame X2 is warped into
    size2: tuple[int, int]
    reason: str = ""  # why it failed the quality check ("" when ok)
    quality: dict[str, float] = field(default_factory=dict)  # corr, inliers, inlier_ratio, overlap
    seconds: float = 0.0

    @property
    def transform(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"motion": describe(self.transform, self.size1)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Registration:
        return cls(bool(d["ok"]), [list(map(float, r)) for r in d["matrix"]], str(d["method"]),
                   (int(d["size1"][0]), int(d["size1"][1])), (int(d["size2"][0]), int(d["size2"][1])),
                   str(d.get("reason", "")), {k: float(v) for k, v in d.get("quality", {}).items()},
                   float(d.get("seconds", 0.0)))


# --- geometry helpers ----------------------------------------------------------------------------------

def corners(height: int, width: int) -> np.ndarray:
    return np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64)


def apply_h(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N x 2) through a 3x3 transform (affine or projective)."""
    p = np.hstack([points, np.ones((len(points), 1))]) @ matrix.T
    return p[:, :2] / p[:, 2:3]


def corner_error(estimated: np.ndarray, truth: np.ndarray, height: int, width: int) -> float:
    """Mean distance, in X2 pixels, between where the two transforms put X1's four corners."""
    c = corners(height, width)
    return float(np.linalg.norm(apply_h(estimated, c) - apply_h(truth, c), axis=1).mean())


def describe(matrix: np.ndarray, size1: tuple[int, int]) -> dict[str, float]:
    """Readable motion: where X1's centre lands (dx, dy in pixels), rotation (degrees), scale, shear."""
    h, w = size1
    centre = np.array([[(w - 1) / 2, (h - 1) / 2]])
    dx, dy = (apply_h(matrix, centre) - centre)[0]
    a = matrix[:2, :2] / matrix[2, 2]
    sx = math.hypot(a[0, 0], a[1, 0])
    angle = math.degrees(math.atan2(-a[1, 0], a[0, 0]))  # OpenCV's sense (getRotationMatrix2D)
    det = float(np.linalg.det(a))
    sy = det / sx if sx else 0.0
    shear = float(a[0, 0] * a[0, 1] + a[1, 0] * a[1, 1]) / det if det else math.inf
    return {"dx": float(dx), "dy": float(dy), "rotation": angle, "scale": math.sqrt(abs(det)),
            "anisotropy": sx / sy if sy else math.inf, "shear": shear}


def valid_mask(matrix: np.ndarray, size1: tuple[int, int], size2: tuple[int, int]) -> np.ndarray:
    """bool HxW in X1's frame: True where W p lies inside X2 (the pixel has a source)."""
    h, w = size1
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    m = matrix / matrix[2, 2]
    den = m[2, 0] * xx + m[2, 1] * yy + m[2, 2]
    x2 = (m[0, 0] * xx + m[0, 1] * yy + m[0, 2]) / den
    y2 = (m[1, 0] * xx + m[1, 1] * yy + m[1, 2]) / den
    return (den > 0) & (x2 >= 0) & (x2 <= size2[1] - 1) & (y2 >= 0) & (y2 <= size2[0] - 1)


def warp_into(x2: np.ndarray, matrix: np.ndarray, size1: tuple[int, int]) -> np.ndarray:
    """X2 resampled in X1's frame (bilinear; black where it has no source)."""
    h, w = size1
    return cv2.warpPerspective(x2, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# --- representation ---------------------------------------------------------------------------------------

def grey(image: np.ndarray) -> np.ndarray:
    return (image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)).astype(np.float32)


def gradient_image(image: np.ndarray) -> np.ndarray:
    """float32 gradient magnitude of a blurred grey image, scaled to mean 1."""
    g = cv2.GaussianBlur(grey(image), (0, 0), BLUR_SIGMA)
    mag = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
    return mag / max(float(mag.mean()), 1e-6)


def contrast_image(image: np.ndarray) -> np.ndarray:
    """float32 local contrast: grey minus its local mean, over its local standard deviation (LCN_SIGMA)."""
    g = grey(image)
    mean = cv2.GaussianBlur(g, (0, 0), LCN_SIGMA)
    var = cv2.GaussianBlur((g - mean) ** 2, (0, 0), LCN_SIGMA)
    return (g - mean) / np.sqrt(var + LCN_FLOOR)


REPRESENTATIONS = {"gradient": gradient_image, "contrast": contrast_image}


def _pyramid(image: np.ndarray, represent) -> list[np.ndarray]:
    """The representation of the grey image at full resolution and halved until its shorter side is about
    COARSEST pixels; computed per level, so its blur and windows keep their size in pixels."""
    levels = [grey(image)]
    while min(levels[-1].shape[:2]) >= 2 * COARSEST:
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA))
    return [represent(g) for g in levels]


def _rescale(matrix: np.ndarray, src1: tuple[int, int], dst1: tuple[int, int], src2: tuple[int, int],
             dst2: tuple[int, int]) -> np.ndarray:
    """A transform between images of sizes src1 -> src2, expressed for the same images resized to dst1 -> dst2
    (pixel-centre convention: p_dst = s (p_src + 0.5) - 0.5)."""
    def centre_scale(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
        sy, sx = dst[0] / src[0], dst[1] / src[1]
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])

    return centre_scale(src2, dst2) @ matrix @ np.linalg.inv(centre_scale(src1, dst1))


def _to_base(x: np.ndarray, base_size: int) -> np.ndarray:
    """`x` resized so its shorter side is `base_size` (area-averaged), or `x` itself when it is no larger."""
    f = base_scale(*_size(x), base_size)
    if f >= 1:
        return x
    h, w = _size(x)
    return cv2.resize(x, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _size(a: np.ndarray) -> tuple[int, int]:
    return int(a.shape[0]), int(a.shape[1])


def _ecc(template: np.ndarray, moving: np.ndarray, matrix: np.ndarray, model: str,
         iterations: int) -> tuple[np.ndarray, float] | None:
    """One ECC refinement; None when OpenCV gives up (no convergence, singular system)."""
    mode = cv2.MOTION_HOMOGRAPHY if model == "homography" else cv2.MOTION_AFFINE
    warp = (matrix / matrix[2, 2]).astype(np.float32)
    warp = warp if model == "homography" else warp[:2].copy()
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-6)
    try:
        corr, warp = cv2.findTransformECC(template, moving, warp, mode, criteria, None, 1)
    except cv2.error:
        return None
    out = np.eye(3)
    out[: warp.shape[0]] = warp
    return out, float(corr)


def _correlation(template: np.ndarray, moving: np.ndarray, matrix: np.ndarray) -> float:
    """Correlation coefficient of the two gradient images over the pixels of X1 that X2 covers."""
    valid = valid_mask(matrix, _size(template), _size(moving))
    warped = warp_into(moving, matrix, _size(template))
    a, b = template[valid].astype(np.float64), warped[valid].astype(np.float64)
    if a.size < 16:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / max(math.sqrt((a @ a) * (b @ b)), 1e-12))


def _initial_shift(g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """Starting transform at the coarsest level: the size ratio, plus the phase-correlation shift of the
    gradient images (X2 resized to X1's size first)."""
    base = _rescale(np.eye(3), _size(g1), _size(g1), _size(g1), _size(g2))  # X1 pixel -> X2 pixel by size
    resized = cv2.resize(g2, (g1.shape[1], g1.shape[0]), interpolation=cv2.INTER_AREA)
    window = cv2.createHanningWindow((g1.shape[1], g1.shape[0]), cv2.CV_32F)
    (sx, sy), _ = cv2.phaseCorrelate(g1, resized, window)
    shift = np.array([[1, 0, sx], [0, 1, sy], [0, 0, 1.0]])
    return base @ shift


def _refine(p1: list[np.ndarray], p2: list[np.ndarray], matrix: np.ndarray, start: int, s: AlignSettings,
            ) -> tuple[np.ndarray, float] | None:
    """ECC from pyramid level `start` (matrix given at that level) down to full resolution. A coarse level
    where ECC gives up passes its starting estimate on (a tiny level can be too flat to converge); None when
    the full-resolution level fails."""
    found = None
    for level in range(start, -1, -1):
        if level != start:
            matrix = _rescale(matrix, _size(p1[level + 1]), _size(p1[level]), _size(p2[level + 1]),
                              _size(p2[level]))
        found = _ecc(p1[level], p2[level], matrix, s.model, s.iterations)
        if found is not None:
            matrix = found[0]
    return found


def _as_u8(rep: np.ndarray) -> np.ndarray:
    """A representation as 8-bit for the keypoint detector: 1st..99th percentile onto 0..255."""
    lo, hi = np.percentile(rep, (1, 99))
    return np.clip((rep - lo) * (255.0 / max(float(hi - lo), 1e-6)), 0, 255).astype(np.uint8)


def _features(g1: np.ndarray, g2: np.ndarray, model: str) -> tuple[np.ndarray | None, int, int]:
    """(transform, inliers, matches) from SIFT keypoints on the representations and RANSAC."""
    as_u8 = _as_u8
    sift = cv2.SIFT_create(nfeatures=4000)
    k1, d1 = sift.detectAndCompute(as_u8(g1), None)
    k2, d2 = sift.detectAndCompute(as_u8(g2), None)
    if d1 is None or d2 is None or len(k1) < 3 or len(k2) < 3:
        return None, 0, 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [m for m, *rest in pairs if rest and m.distance < 0.8 * rest[0].distance]
    if len(good) < 4:
        return None, 0, len(good)
    a = np.float32([k1[m.queryIdx].pt for m in good])
    b = np.float32([k2[m.trainIdx].pt for m in good])
    if model == "homography":
        h, mask = cv2.findHomography(a, b, cv2.RANSAC, 3.0, maxIters=5000, confidence=0.999)
        matrix = h
    else:
        m, mask = cv2.estimateAffine2D(a, b, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=5000,
                                       confidence=0.999, refineIters=10)
        matrix = None if m is None else np.vstack([m, [0, 0, 1.0]])
    if matrix is None or mask is None:
        return None, 0, len(good)
    return matrix.astype(np.float64), int(mask.sum()), len(good)


def _sanity(matrix: np.ndarray, size1: tuple[int, int], size2: tuple[int, int], s: AlignSettings) -> str:
    """'' when the linear part and the overlap are plausible, else why not."""
    if not np.all(np.isfinite(matrix)):
        return "non-finite transform"
    m = describe(matrix, size1)
    ratio = math.sqrt((size2[0] * size2[1]) / (size1[0] * size1[1]))
    if not 0.5 <= m["scale"] / ratio <= 2.0:
        return f"scale {m['scale']:.3f} implausible (size ratio {ratio:.3f})"
    if abs(m["anisotropy"] - 1) > 0.1 or abs(m["shear"]) > 0.1:
        return f"anisotropy {m['anisotropy']:.3f} or shear {m['shear']:.3f} beyond 10%"
    overlap = float(valid_mask(matrix, size1, size2).mean())
    if overlap < s.min_overlap:
        return f"overlap {overlap:.2f} below {s.min_overlap}"
    return ""


def from_georeference(path1: Path, path2: Path, settings: AlignSettings) -> Registration:
    """`geo`: the transform the two files' georeferencing implies (GeoTIFF tiles), checked for overlap and,
    across CRSs, for how well one plane transform follows the reprojection."""
    from segadapt.data.geopairs import GEO_FIT_TOLERANCE, geo_transform

    t0 = time.perf_counter()
    matrix, size1, size2, residual = geo_transform(path1, path2)
    overlap = float(valid_mask(matrix, size1, size2).mean())
    reason = ""
    if residual > GEO_FIT_TOLERANCE:
        reason = f"reprojection departs {residual:.2f} px from a plane transform; reproject to one CRS first"
    elif overlap < settings.min_overlap:
        reason = f"overlap {overlap:.2f} below {settings.min_overlap}"
    return Registration(not reason, matrix.tolist(), "geo", size1, size2, reason,
                        {"overlap": overlap, "fit_residual": residual}, round(time.perf_counter() - t0, 4))


def register(x1: np.ndarray, x2: np.ndarray, settings: AlignSettings) -> Registration:
    """Estimate W (X1 -> X2 coordinates) for one pair of uint8 RGB images, and check it (ecc, features); with
    settings.base_size, on both images at the network's resolution (W is still for the stored sizes)."""
    if settings.method not in ("ecc", "features"):
        raise ValueError(f"register() estimates from pixels (ecc, features), not {settings.method!r}")
    if settings.base_size > 0:
        small1, small2 = _to_base(x1, settings.base_size), _to_base(x2, settings.base_size)
        if small1.shape != x1.shape or small2.shape != x2.shape:
            found = register(small1, small2, replace(settings, base_size=0))
            matrix = _rescale(found.transform, _size(small1), _size(x1), _size(small2), _size(x2))
            return replace(found, matrix=matrix.tolist(), size1=_size(x1), size2=_size(x2))
    t0 = time.perf_counter()
    s = settings
    size1, size2 = _size(x1), _size(x2)
    represent = REPRESENTATIONS[s.image]
    p1, p2 = _pyramid(x1, represent), _pyramid(x2, represent)
    g1, g2 = p1[0], p2[0]
    quality: dict[str, float] = {}
    reason = ""
    matrix: np.ndarray | None
    if s.method == "ecc":
        top = min(len(p1), len(p2)) - 1
        found = _refine(p1, p2, _initial_shift(p1[top], p2[top]), top, s)
        matrix = found[0] if found else None
        if matrix is None:
            reason = "ECC did not converge"
    else:
        # keypoints at half resolution (4x faster); at full resolution when that finds too few inliers
        for level in sorted({min(FEATURE_LEVEL, len(p1) - 1, len(p2) - 1), 0}, reverse=True):
            found_at, inliers, matches = _features(p1[level], p2[level], s.model)
            if found_at is not None and inliers >= s.min_inliers:
                break
        matrix = None if found_at is None else _rescale(found_at, _size(p1[level]), size1, _size(p2[level]), size2)
        quality |= {"inliers": float(inliers), "matches": float(matches),
                    "inlier_ratio": inliers / matches if matches else 0.0}
        if matrix is None:
            reason = f"RANSAC found no transform ({matches} matches)"
        elif inliers < s.min_inliers:
            reason = f"{inliers} RANSAC inliers, fewer than {s.min_inliers}"
        else:  # sub-pixel refinement: ECC from a quarter and from half resolution, the best correlation wins
            candidates = [matrix]
            for level in sorted({min(lv, len(p1) - 1, len(p2) - 1) for lv in (2, 1)}):
                start = _rescale(matrix, size1, _size(p1[level]), size2, _size(p2[level]))
                found = _refine(p1, p2, start, level, s)
                if found is not None and corner_error(found[0], matrix, *size1) < REFINE_REACH:
                    candidates.append(found[0])
            matrix = max(candidates, key=lambda m: _correlation(g1, g2, m))
    if matrix is None:
        matrix = np.eye(3)
    else:
        quality["corr"] = _correlation(g1, g2, matrix)
        quality["overlap"] = float(valid_mask(matrix, size1, size2).mean())
        reason = reason or _sanity(matrix, size1, size2, s)
        if not reason and quality["corr"] < s.min_corr:
            reason = f"correlation {quality['corr']:.3f} of the aligned {s.image} images below {s.min_corr}"
    return Registration(not reason, matrix.tolist(), s.method, size1, size2, reason, quality,
                        round(time.perf_counter() - t0, 4))
