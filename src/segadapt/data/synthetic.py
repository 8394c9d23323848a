"""Procedural road scenes: the embedded default dataset, generated on the fly and deterministic by seed.

Built so that colour alone is not enough: road, pavement, overcast sky and many facades share greys,
cars take any colour (green ones look like trees), and every image gets its own exposure and colour cast.
What tells the classes apart is what a segmentation network is for: texture (asphalt grain vs paving
grid vs window grid vs foliage), shape (car, person, canopy) and layout (sky above buildings above the
ground, road converging to a vanishing point, people on the pavement).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import cv2
import numpy as np

from segadapt.data.base import DatasetInfo, SegmentationSource
from segadapt.errors import ConfigError

CLASSES = ("sky", "building", "road", "pavement", "tree", "car", "person")
PALETTE = (
    (70, 130, 180), (128, 0, 0), (128, 64, 128), (60, 40, 222), (107, 142, 35), (64, 0, 128), (220, 20, 60),
)
SKY, BUILDING, ROAD, PAVEMENT, TREE, CAR, PERSON = range(len(CLASSES))
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
BANK = 256  # side of the pre-computed noise textures that every sample crops from (grown for big sizes)


def _bank_side(h: int, w: int) -> int:
    """256 for the usual sizes (changing it would change every sample), else room for random offsets."""
    return BANK if max(h, w) < BANK else 2 * max(h, w)


@lru_cache(maxsize=2)
def _noise_bank(side: int = BANK) -> dict[str, np.ndarray]:
    """Zero-mean, unit-std textures computed once per process; samples crop them at random offsets."""
    rng = np.random.default_rng(12345)

    def unit(a: np.ndarray) -> np.ndarray:
        a = a - a.mean()
        return (a / (a.std() + 1e-6)).astype(np.float32)

    white = rng.standard_normal((side, side)).astype(np.float32)
    return {
        "fine": unit(cv2.GaussianBlur(white, (0, 0), 0.7)),
        "blob": unit(cv2.GaussianBlur(rng.standard_normal((side, side)).astype(np.float32), (0, 0), 6)),
        "leaf": unit(cv2.GaussianBlur(rng.standard_normal((side, side)).astype(np.float32), (0, 0), 1.3)),
    }


class SyntheticScenes(SegmentationSource):
    """`n` scenes of `size` (height, width); sample i depends only on (seed, split, i), so D1/D2 pairs,
    DataLoader workers and reruns all see the same scene."""

    def __init__(
        self, n: int, size: tuple[int, int] = (96, 128), seed: int = 0, split: str = "train"
    ) -> None:
        if min(size) < 8:
            raise ConfigError(f"data.synthetic_size {list(size)} is too small; make it at least 8x8")
        self.n, self.size, self.seed, self.split = n, (int(size[0]), int(size[1])), seed, split
        self.split_id = SPLIT_IDS.get(split, sum(split.encode()) + 3)
        self.info = DatasetInfo("synthetic", CLASSES, 255, PALETTE)

    def __len__(self) -> int:
        return self.n

    def stem(self, i: int) -> str:
        return f"synthetic_{self.split}_{i:06d}"

    def identity(self, i: int) -> str:
        return f"{self.stem(i)}\tseed {self.seed}\t{self.size[0]}x{self.size[1]}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        image, label = _rendered(self.seed, self.split_id, i, self.size)
        return image.copy(), label.astype(np.int64)


# Rendering takes a few ms and every loop of a sweep (H1, the baselines, each regression, each score) builds its
# own source over the same scenes: one process-wide store of rendered scenes, bounded in bytes, serves them all.
# A scene is a pure function of its key, so what is served never depends on what was rendered before.
_RENDERED: OrderedDict[tuple[int, int, int, tuple[int, int]], tuple[np.ndarray, np.ndarray]] = OrderedDict()
_RENDERED_BUDGET = 256 << 20  # bytes of images and labels kept (about 10,000 scenes at 64x96)
_rendered_bytes = 0


def _rendered(seed: int, split_id: int, i: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    global _rendered_bytes
    key = (seed, split_id, i, size)
    hit = _RENDERED.get(key)
    if hit is not None:
        _RENDERED.move_to_end(key)
        return hit
    image, label = render_scene(np.random.default_rng([seed, split_id, i]), *size)
    scene = (image, label.astype(np.uint8))
    _RENDERED[key] = scene
    _rendered_bytes += image.nbytes + scene[1].nbytes
    while _rendered_bytes > _RENDERED_BUDGET and len(_RENDERED) > 1:
        _, (old_image, old_label) = _RENDERED.popitem(last=False)
        _rendered_bytes -= old_image.nbytes + old_label.nbytes
    return scene


# --- rendering -----------------------------------------------------------------------------------------

Box = tuple[slice, slice]  # rows, columns


class _Canvas:
    """An image and its label map, painted back to front.

    Shapes are drawn as full-frame masks (cheap with cv2), but colours and textures are computed only
    inside each mask's bounding box: most objects are small, and this keeps a sample near 2 ms.
    """

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.rng, self.h, self.w = rng, h, w
        self.img = np.zeros((h, w, 3), np.float32)
        self.label = np.zeros((h, w), np.uint8)
        self.side = _bank_side(h, w)
        self.bank = _noise_bank(self.side)
        self.rows = np.arange(h)[:, None]
        self.cols = np.arange(w)[None, :]

    def texture(self, kind: str) -> np.ndarray:
        """A full-frame view of a random window of the bank (no copy; callers slice it with a box)."""
        y = int(self.rng.integers(0, self.side - self.h))
        x = int(self.rng.integers(0, self.side - self.w))
        return self.bank[kind][y : y + self.h, x : x + self.w]

    @staticmethod
    def box(mask: np.ndarray) -> Box:
        x, y, bw, bh = cv2.boundingRect(mask)
        return slice(y, y + bh), slice(x, x + bw)

    def paint(self, mask: np.ndarray, cls: int, colour: np.ndarray, box: Box) -> None:
        """`colour` is (3,) or box-shaped (bh, bw, 3); painted where the mask is set."""
        m = mask[box].astype(bool)
        np.copyto(self.label[box], cls, where=m)
        np.copyto(self.img[box], np.asarray(colour, np.float32), where=m[..., None])

    def empty(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.uint8)


def _grey(rng: np.random.Generator, lo: float, hi: float, tint: float = 12.0) -> np.ndarray:
    return rng.uniform(lo, hi) + rng.uniform(-tint, tint, 3)


def _textured(c: _Canvas, base: np.ndarray, kind: str, amp: float, box: Box) -> np.ndarray:
    return base.astype(np.float32)[None, None, :] + np.float32(amp) * c.texture(kind)[box][..., None]


def render_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene as (uint8 HxWx3 image, uint8 HxW labels); every random choice comes from `rng`."""
    c = _Canvas(rng, h, w)
    horizon = int(h * rng.uniform(0.35, 0.55))
    full = np.ones((h, w), np.uint8)
    ground_box = (slice(horizon, h), slice(0, w))

    # sky: blue gradient or overcast grey (the same greys as road and walls), with soft clouds. Only the
    # rows above the horizon are computed: the pavement covers everything below.
    top = rng.uniform([60, 100, 170], [140, 170, 240]) if rng.random() < 0.6 else _grey(rng, 110, 200, 6)
    bottom = top + rng.uniform(20, 60)
    sky_box = (slice(0, horizon), slice(0, w))
    ys = np.arange(horizon, dtype=np.float32)[:, None, None] / np.float32(h)
    sky = top + (bottom - top) * ys + 18 * c.texture("blob")[sky_box][..., None]
    c.paint(full, SKY, sky, sky_box)

    # buildings: a row of facades standing on the horizon, gaps show sky; facades carry a window grid
    x = int(rng.integers(-w // 8, w // 10))
    while x < w:
        bw = int(rng.uniform(0.15, 0.4) * w)
        if rng.random() < 0.8:
            top_y = int(rng.uniform(0.02, 0.75) * horizon)
            m = c.empty()
            m[top_y:horizon, max(x, 0) : x + bw] = 1
            box = c.box(m)
            brick = rng.random() >= 0.6
            wall = rng.uniform([120, 60, 40], [200, 150, 110]) if brick else _grey(rng, 90, 190, 25)
            face = _textured(c, wall, "fine", 6, box)
            px, py = int(rng.integers(5, 10)), int(rng.integers(5, 10))
            win_w, win_h = int(rng.integers(2, px - 1)), int(rng.integers(2, py - 1))
            win = (((c.cols[:, box[1]] - x) % px) < win_w) & (((c.rows[box[0]] - top_y) % py) < win_h)
            lit = rng.random() >= 0.6
            win_colour = rng.uniform([120, 150, 170], [180, 210, 240]) if lit else rng.uniform(20, 70, 3)
            c.paint(m, BUILDING, np.where(win[..., None], win_colour[None, None, :], face), box)
        x += bw + int(rng.integers(0, w // 6))

    # ground: pavement everywhere below the horizon, then the road converging to a vanishing point
    pave = _grey(rng, 90, 180, 20)
    tile = int(rng.integers(4, 8))
    grid = ((c.rows[horizon:] % tile) == 0) | ((c.cols % tile) == 0)
    pave_img = _textured(c, pave, "fine", 4, ground_box) - 40 * grid[..., None]
    c.paint(full, PAVEMENT, pave_img, ground_box)

    vx = rng.uniform(0.3, 0.7) * w
    half_bottom = rng.uniform(0.3, 0.55) * w
    centre_bottom = vx + rng.uniform(-0.2, 0.2) * w
    road_poly = np.array(
        [[vx - 2, horizon], [vx + 2, horizon], [centre_bottom + half_bottom, h],
         [centre_bottom - half_bottom, h]],
        np.int32,
    )
    road = c.empty()
    cv2.fillPoly(road, [road_poly], 1)
    box = c.box(road)
    asphalt = _grey(rng, 50, 150, 10)
    road_img = _textured(c, asphalt, "fine", 14, box)
    # dashed centre line, part of the road class
    rows = c.rows[box[0]]
    t = (rows - horizon) / max(h - horizon, 1)
    centre_x = vx + (centre_bottom - vx) * t
    dash = (np.abs(c.cols[:, box[1]].astype(np.float32) - centre_x) < 0.5 + 1.5 * t) & ((rows // 5) % 2 == 0)
    c.paint(road, ROAD, np.where(dash[..., None], np.float32(230), road_img), box)

    # trees: clusters of foliage blobs on trunks, near the horizon, in front of buildings
    for _ in range(int(rng.integers(0, 4))):
        tx = rng.uniform(0, w)
        base_y = horizon + rng.uniform(-0.02, 0.15) * h
        size = rng.uniform(0.08, 0.18) * h
        m = c.empty()
        trunk_top = int(base_y - 1.2 * size)
        m[trunk_top : int(base_y), int(tx - size * 0.12) : int(tx + size * 0.12) + 1] = 1
        for _ in range(int(rng.integers(3, 6))):
            cx = int(tx + rng.uniform(-1, 1) * size)
            cy = int(trunk_top - rng.uniform(0, 1.2) * size)
            ax = max(2, int(rng.uniform(0.6, 1.2) * size))
            ay = max(2, int(rng.uniform(0.6, 1.2) * size))
            cv2.ellipse(m, (cx, cy), (ax, ay), 0, 0, 360, 1, -1)
        green = rng.random() < 0.75
        lo, hi = ([40, 80, 20], [120, 170, 70]) if green else ([120, 90, 30], [190, 150, 60])
        leaf = rng.uniform(lo, hi)
        box = c.box(m)
        c.paint(m, TREE, _textured(c, leaf, "leaf", 32, box), box)

    # people on the pavement, then cars on the road, far to near so near objects occlude far ones
    objects = [("person", rng.uniform(horizon + 0.1 * h, h)) for _ in range(int(rng.integers(1, 4)))]
    objects += [("car", rng.uniform(horizon + 0.05 * h, h)) for _ in range(int(rng.integers(1, 4)))]
    for kind, foot in sorted(objects, key=lambda o: o[1]):
        t = (foot - horizon) / max(h - horizon, 1)
        road_half = 2 + (half_bottom - 2) * t
        road_centre = vx + (centre_bottom - vx) * t
        if kind == "car":
            _draw_car(c, road_centre + rng.uniform(-0.8, 0.8) * road_half, foot, scale=0.35 + 0.65 * t)
        else:
            side = 1 if rng.random() < 0.5 else -1
            px = road_centre + side * (road_half + rng.uniform(0.03, 0.2) * w)
            _draw_person(c, px, foot, scale=0.4 + 0.6 * t)

    # exposure, colour cast and sensor noise: colours shift from image to image
    img = c.img * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20, 3)
    img = img + rng.normal(0, 3, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), c.label


def _draw_car(c: _Canvas, cx: float, foot: float, scale: float) -> None:
    rng, h = c.rng, c.h
    cw, ch = scale * rng.uniform(0.28, 0.4) * c.w, scale * rng.uniform(0.18, 0.24) * h
    x0, x1, y1 = int(cx - cw / 2), int(cx + cw / 2), int(foot)
    body_top = int(y1 - 0.6 * ch)
    body = c.empty()
    body[body_top : y1 - max(1, int(0.12 * ch)), max(x0, 0) : x1] = 1
    roof = np.array([[x0 + cw * 0.18, body_top], [x1 - cw * 0.18, body_top], [x1 - cw * 0.3, y1 - ch],
                     [x0 + cw * 0.3, y1 - ch]], np.int32)
    cv2.fillPoly(body, [roof], 1)
    box = c.box(body)
    wheels = c.empty()
    r = max(1, int(0.16 * ch))
    for wx in (x0 + cw * 0.22, x1 - cw * 0.22):
        cv2.circle(wheels, (int(wx), y1 - r), r, 1, -1)
    colour = rng.uniform(20, 235, 3)
    paint_img = _textured(c, colour, "fine", 5, box)
    glass = c.empty()
    inset = max(1, int(cw * 0.05))
    cv2.fillPoly(glass, [roof + np.array([[inset, 1], [-inset, 1], [-inset, 1], [inset, 1]], np.int32)], 1)
    paint_img = np.where(glass[box][..., None].astype(bool), rng.uniform(30, 90, 3)[None, None, :], paint_img)
    c.paint(body, CAR, paint_img, box)
    c.paint(wheels, CAR, np.full(3, 25.0, np.float32), c.box(wheels))


def _draw_person(c: _Canvas, cx: float, foot: float, scale: float) -> None:
    rng = c.rng
    ph = scale * rng.uniform(0.45, 0.65) * c.h
    pw = max(3.0, ph * rng.uniform(0.3, 0.4))
    y1 = int(foot)
    legs, torso, head = c.empty(), c.empty(), c.empty()
    hip = int(y1 - 0.45 * ph)
    shoulder = int(y1 - 0.82 * ph)
    cv2.rectangle(legs, (int(cx - pw * 0.4), hip), (int(cx + pw * 0.4), y1), 1, -1)
    cv2.rectangle(torso, (int(cx - pw / 2), shoulder), (int(cx + pw / 2), hip), 1, -1)
    cv2.circle(head, (int(cx), int(y1 - 0.91 * ph)), max(1, int(0.09 * ph)), 1, -1)
    c.paint(legs, PERSON, rng.uniform(20, 120, 3), c.box(legs))
    box = c.box(torso)
    c.paint(torso, PERSON, _textured(c, rng.uniform(30, 230, 3), "fine", 6, box), box)
    c.paint(head, PERSON, rng.uniform([150, 100, 70], [240, 200, 170]), c.box(head))
