"""Sliding-window inference of one image of any size, its logits blended across overlapping tiles.

Scale. A model is applied at the scale it was trained at (models/scale.py): an image is resized (bilinear,
as evaluation does) so its shorter side is the model's `data.base_size` (unchanged when that is 0), whatever
its format: a TIFF read in windows is resampled window by window (data/rasters.Resampled), so a GeoTIFF
and a JPEG of one frame reach the network alike. A model that learnt from raster windows records base size
0: mosaics at their stored resolution. The class probabilities (softmax of the blended logits) are resized
back to the image's size (bilinear) and the argmax, confidence and entropy are taken there, so every
output has the input's size. `scale` overrides the rule.

Tiles. The (scaled) image is cut into equal tiles of `tile` pixels a side (clipped to the image), the
fewest that overlap by at least `overlap` pixels, spread evenly from edge to edge, so they batch. Each
tile's logits are weighted by a separable window and accumulated; dividing by the summed weights makes
every pixel's logits a convex blend of the tiles covering it. Across the overlap of two neighbours one
tile's weight fades out as the other's fades in (0 over the quarter nearest each cut, a raised cosine over
the middle half; the two sum to 1), so a pixel takes its logits from the tile that sees more of the image
around it: near a cut, zero padding replaces image the whole frame would show. Edges on the image's
border keep weight 1 (there a tile sees what the whole image sees), and a small floor keeps every weight
positive. Agreement with whole-image prediction therefore grows with the context the overlap leaves each
pixel, relative to the network's receptive field (about 420 pixels for VGG-16 DeepLab-LargeFOV).

Memory. Rows are finished one tile row at a time, so memory holds one tile row of logits (classes x tile
x width floats) and a batch of tiles, never the whole image. Without `tile`, the whole image is one tile
when its estimated working memory fits `memory_mb`, else the largest tile size that fits; when none does,
the smallest tile with the largest batch that fits, and a one-line warning with what that plan needs.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from segadapt.base_size import base_scale
from segadapt.data.palettes import generic
from segadapt.data.rasters import ArrayReader, RasterReader, Resampled
from segadapt.data.transforms import resize_image
from segadapt.errors import ConfigError
from segadapt.models.contract import output_stride
from segadapt.models.scale import window_factor
from segadapt.progress import bar as progress_bar
from segadapt.speed import PrecisionChoice, autocast, choose_inference_precision

if TYPE_CHECKING:
    from segadapt.card import ModelCard
    from segadapt.predict_outputs import ImageOutputs

ProbsSink = Callable[[int, torch.Tensor, "np.ndarray | None"], None]  # (first row, C x n x W probs, n x W valid)

FLOOR = 1e-3  # the weight at a tile's very edge, relative to its centre
CHUNK_PIXELS = 1 << 19  # logits handled at once after blending: bounds the post-processing temporaries


def chunk_rows(width: int) -> int:
    """Rows per chunk of an image `width` wide (a whole CamVid frame is one chunk)."""
    return max(1, CHUNK_PIXELS // max(width, 1))
MAX_NETWORK_PIXELS = 2**36  # an image at the network's scale: a 262144 px square, past any survey's mosaic
TILE_SIZES = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128)
MIN_TILE = 32


# --- the model and what inference needs from its metadata ----------------------------------------------

def load(path: str | Path, device: torch.device | str = "cpu",
         trusted_factories: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """The one place predict and export load a model: every format segadapt can load goes through here; a
    model built by a Python factory is rebuilt only when that factory is trusted (calling it runs code)."""
    from segadapt.models.loading import load_model

    return load_model(path, device, trusted_factories=trusted_factories)


def weights_sha256(path: str | Path) -> str:
    """Fingerprint of the weights file, so re-running with another model never skips as finished."""
    from segadapt.checkpoint import resolve_model_path
    from segadapt.models.factory import sha256_file

    return sha256_file(resolve_model_path(path))


@dataclass
class Predictor:
    """A model in eval mode with its classes, colours and input normalisation (ImageNet-style mean/std of
    RGB in 0..1) and the base size it was trained at."""

    model: nn.Module
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    base_size: int
    device: torch.device
    window_factor: float | None = None  # for rasters read in windows (models/scale.window_factor)
    precision: str = "fp32"  # or bf16 autocast (--precision; `sample_precision` settles "auto")
    runner: Callable[[torch.Tensor], torch.Tensor] | None = None  # another runtime (predict_runtime), else model
    _act_px: float = field(default=0.0, repr=False)
    _stride: int = field(default=0, repr=False)

    @classmethod
    def from_meta(cls, model: nn.Module, meta: Mapping[str, Any] | ModelCard, data: Any = None,
                  device: torch.device | str = "cpu") -> Predictor:
        """`model` with what its metadata (or ModelCard) says; `data` (a DataConfig: mean, std, base_size)
        overrides the settings it records (model_settings: the run's data, or a preprocessor's normalisation)."""
        if not isinstance(meta, Mapping):
            meta = meta.to_meta()
        if data is None:
            from segadapt.model_settings import fit_to_model, trained_config

            data = fit_to_model(trained_config(meta, "model"), meta, "model").data
        device = torch.device(device)
        n = int(meta["num_classes"])
        names = tuple(meta.get("class_names") or (f"class{i}" for i in range(n)))
        palette = [tuple(int(v) for v in c) for c in meta.get("palette") or []]
        palette += list(generic(n))[len(palette):n]
        model = model.to(device).eval()
        if device.type == "cpu":  # NHWC convolutions: measured faster with oneDNN (README, Speed)
            model = model.to(memory_format=torch.channels_last)
        return cls(model, n, names, tuple(palette[:n]), tuple(data.mean), tuple(data.std), int(data.base_size),
                   device, window_factor(meta, int(data.base_size)))

    @classmethod
    def from_model(cls, model: nn.Module, device: torch.device | str | None = None, data: Any = None) -> Predictor:
        """A module in memory, with what its ModelCard says (load_model and adapt_model attach one); a module
        without a card is run on ImageNet-normalised images at their own size, its classes read off a forward.
        `device`: default, the module's own."""
        from segadapt.card import card_of
        from segadapt.runtime import model_device

        device = device if device is not None else model_device(model)

        card = card_of(model)
        if card is not None:
            return cls.from_meta(model, card, data, device)
        from segadapt.models.contract import conform
        from segadapt.models.outputs import classes_read_off

        classes = conform(model).num_classes or classes_read_off(model)
        return cls.from_meta(model, {"num_classes": classes}, data, device)

    @classmethod
    def from_path(cls, path: str | Path, device: torch.device | str = "cpu",
                  trusted_factories: Sequence[str] = ()) -> Predictor:
        """A segadapt run directory or model file, ready to predict with the settings it was trained with."""
        model, meta = load(path, device, trusted_factories)
        return cls.from_meta(model, meta, device=device)

    def predict(self, image: str | Path | np.ndarray | torch.Tensor, *, probabilities: bool = False,
                **tiling: Any) -> Prediction:
        """One image (a path; an H x W x 3 RGB array, uint8 or float in 0..1; a 3 x H x W tensor, uint8 or
        float in 0..1) -> its class mask, and the class probabilities if asked, at the image's size.
        `tiling`: predict_image's tile, overlap, batch, memory_mb and scale."""
        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        mask = np.zeros((h, w), np.int64)
        probs = np.zeros((self.num_classes, h, w), np.float32) if probabilities else None

        def keep(y: int, rows: torch.Tensor, valid: np.ndarray | None) -> None:
            mask[y:y + rows.shape[1]] = rows.argmax(0).numpy()
            if probs is not None:
                probs[:, y:y + rows.shape[1]] = rows.numpy()

        predict_image(self, ArrayReader(rgb), progress=False, probs=keep, **tiling)
        return Prediction(mask, probs)

    def normalise(self, tiles: np.ndarray) -> torch.Tensor:
        """N x h x w x 3 RGB in 0..255 -> the network's normalised N x 3 x h x w input (NHWC in memory).
        Normalised in numpy, where the channel is the contiguous axis (float32 `tiles` are overwritten)."""
        x = tiles if tiles.dtype == np.float32 else tiles.astype(np.float32)
        x *= np.asarray([1.0 / (255.0 * s) for s in self.std], np.float32)
        x += np.asarray([-m / s for m, s in zip(self.mean, self.std)], np.float32)
        return torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def logits(self, tiles: np.ndarray) -> torch.Tensor:
        """Float32 CPU logits N x C x h x w for a batch of tiles."""
        with autocast(self.device, self.precision):
            return (self.runner or self.model)(self.normalise(tiles)).float().cpu()

    def output_stride(self) -> int:
        """The model's coarsest stride (the contract's geometry), which default tile overlaps are multiples of."""
        if not self._stride:
            self._stride = output_stride(self.model)
        return self._stride

    def activation_bytes_per_pixel(self) -> float:
        """Working memory of a forward per input pixel, estimated once from one small probe pass: four
        times the largest layer output (input, output and the allocator's slack of the widest layer)."""
        if not self._act_px:
            largest = [0]

            def hook(module: nn.Module, inputs: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    largest[0] = max(largest[0], output.numel() * output.element_size())

            leaves = [m for m in self.model.modules() if not list(m.children())]
            handles = [m.register_forward_hook(hook) for m in leaves]
            try:
                with torch.inference_mode():  # the PyTorch model itself: the hooks are on its layers
                    self.model(self.normalise(np.zeros((1, 64, 64, 3), np.float32)))
            finally:
                for h in handles:
                    h.remove()
            self._act_px = 4.0 * largest[0] / (64 * 64)
        return self._act_px


@dataclass
class Prediction:
    """Predictor.predict's answer for one image, at the image's size."""

    mask: np.ndarray  # H x W class indices (int64)
    probabilities: np.ndarray | None = None  # C x H x W softmax, when asked for


def as_rgb(image: str | Path | np.ndarray | torch.Tensor) -> np.ndarray:
    """An image as the H x W x 3 uint8 RGB array tiles are cut from: a file path (decoded), an H x W x 3 array
    or a 3 x H x W tensor (torchvision's layout), uint8 0..255 or float 0..1."""
    from segadapt.data.base import read_image

    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ConfigError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ConfigError(f"expected an H x W x 3 RGB image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


# --- the tile grid and its weights ---------------------------------------------------------------------

def positions(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: the fewest tiles that overlap by at least `overlap`, spread evenly from
    0 to length - tile (so neighbours all overlap alike, by `overlap` or a little more)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _fade(n: int) -> np.ndarray:
    """The rise of a tile's weight across an overlap of n pixels: 0 over the first quarter (the pixels nearest
    the cut, where zero padding replaces the image the whole frame would show), a raised cosine over the
    middle half, 1 over the last quarter. fade[k] + fade[n-1-k] = 1: two crossing fades sum to 1."""
    t = np.clip(((np.arange(n) + 0.5) / n - 0.25) * 2.0, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def axis_weights(length: int, starts: Sequence[int], tile: int, floor: float = FLOOR) -> list[np.ndarray]:
    """Each tile's 1-D window along one axis: 1, except across its overlap with a neighbour, where it fades
    out as the neighbour fades in (raised cosine). An edge on the image's border keeps weight 1: there the
    tile sees what the whole image sees, so only edges cut inside the image are trusted less. `floor` keeps
    every weight positive."""
    out = []
    for k, s in enumerate(starts):
        w = np.ones(min(tile, length))
        if k > 0:  # overlap with the previous tile: [s, previous end)
            left = starts[k - 1] + tile - s
            w[:left] = np.minimum(w[:left], _fade(left))
        if k + 1 < len(starts):  # overlap with the next tile: [next start, s + tile)
            right = s + tile - starts[k + 1]
            w[tile - right:] = np.minimum(w[tile - right:], _fade(right)[::-1])
        out.append((floor + (1.0 - floor) * w).astype(np.float32))
    return out


def coverage(length: int, starts: Sequence[int], weights: Sequence[np.ndarray]) -> np.ndarray:
    """Summed 1-D weights of every tile over each pixel of the axis (the blend's denominator, separable)."""
    total = np.zeros(length, np.float64)
    for s, w in zip(starts, weights):
        total[s:s + len(w)] += w
    return total


@dataclass(frozen=True)
class TilePlan:
    """How one image is cut: tile height/width (clipped to the image), overlap, batch, tile starts."""

    tile_h: int
    tile_w: int
    overlap: int
    batch: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    needs_mb: float | None = None  # set when even this, the smallest plan, exceeds the memory budget

    @property
    def tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def overlaps(self) -> list[int | None]:
        """The overlap neighbours actually share, down and across (None: one tile along that axis); tiles
        are spread evenly, so it is the requested overlap or more."""
        return [t - (s[1] - s[0]) if len(s) > 1 else None for t, s in ((self.tile_h, self.ys), (self.tile_w, self.xs))]

    def to_dict(self) -> dict[str, Any]:
        over = {} if self.needs_mb is None else {"memory_needed_mb": round(self.needs_mb, 1)}
        return {"tile": [self.tile_h, self.tile_w], "overlap": self.overlap, "overlap_actual": self.overlaps(),
                "batch": self.batch, "tiles": self.tiles, **over}


def working_bytes(th: int, tw: int, width: int, classes: int, batch: int, act_px: float) -> float:
    """Estimated memory of inference with th x tw tiles on an image `width` wide: the batch's forward
    (activations, input, logits), one tile row of blended logits, and the post-processing of a chunk."""
    forward = batch * th * tw * (act_px + 12 + 8 * classes)
    band = 4 * classes * th * width
    chunk = chunk_rows(width) * width * (16 * classes + 64)
    return forward + band + chunk


def default_overlap(tile: int, stride: int = 1) -> int:
    """A quarter of the tile, in multiples of the model's output stride (8 for the VGG), so neighbouring
    tiles share whole cells of its coarsest grid."""
    return max(stride, tile // 4 // stride * stride)


def check_overlap(overlap: int, tile: int, tiled: bool = True) -> int:
    """The overlap rule: at least 0, and at most half the tile when the image is cut into tiles."""
    if overlap < 0 or (tiled and overlap > tile // 2):
        raise ConfigError(f"--overlap {overlap}: must be 0 to half the tile ({tile // 2})")
    return overlap


def plan_tiles(height: int, width: int, classes: int, act_px: float, *, tile: int | None = None,
               overlap: int | None = None, batch: int = 4, memory_mb: float = 1024, stride: int = 1) -> TilePlan:
    """The tile grid for an image at the network's scale (see the module docstring for the rules); `stride`:
    the model's output stride, which a default overlap is a multiple of."""
    if tile is not None and tile < MIN_TILE:
        raise ConfigError(f"--tile {tile}: tiles must be at least {MIN_TILE} pixels a side")
    needs_mb = None
    if tile is None:
        budget = memory_mb * 2**20
        if working_bytes(height, width, width, classes, 1, act_px) <= budget:
            tile = max(height, width)
        else:
            fits = [t for t in TILE_SIZES if working_bytes(min(t, height), min(t, width), width, classes,
                                                           batch, act_px) <= budget]
            if fits:
                tile = fits[0]
            else:  # the smallest tile, with the largest batch that fits (at least 1), and say what it needs
                tile = TILE_SIZES[-1]
                need = [working_bytes(min(tile, height), min(tile, width), width, classes, b, act_px)
                        for b in range(1, batch + 1)]
                batch = max([b for b, n in enumerate(need, 1) if n <= budget], default=1)
                needs_mb = need[0] / 2**20 if need[0] > budget else None
    th, tw = min(tile, height), min(tile, width)
    tiled = th < height or tw < width
    if overlap is None:
        overlap = default_overlap(tile, stride) if tiled else 0
    overlap = check_overlap(overlap, tile, tiled)
    ys, xs = positions(height, th, overlap), positions(width, tw, overlap)
    return TilePlan(th, tw, overlap, max(1, min(batch, len(xs))), tuple(ys), tuple(xs), needs_mb)


# --- blending ---------------------------------------------------------------------------------------

def _tile_batch(reader: RasterReader, y: int, xs: Sequence[int], th: int, tw: int, fill: np.ndarray) -> np.ndarray:
    """Tiles of one row as N x th x tw x 3 float32 in 0..255; pixels without data get the mean colour."""
    out = np.empty((len(xs), th, tw, 3), np.float32)
    for i, x in enumerate(xs):
        rgb, valid = reader.read(y, x, th, tw)
        out[i] = rgb
        if valid is not None:
            out[i][~valid] = fill
    return out


def blend(pred: Predictor, reader: RasterReader, plan: TilePlan,
          bar: tqdm | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Blended logits (C x rows x width, float32) in row order, each row once, a chunk at a time."""
    height, width, th, tw = reader.height, reader.width, plan.tile_h, plan.tile_w
    wy, wx = axis_weights(height, plan.ys, th), axis_weights(width, plan.xs, tw)
    inv_y = torch.from_numpy(1.0 / coverage(height, plan.ys, wy)).float()
    inv_x = torch.from_numpy(1.0 / coverage(width, plan.xs, wx)).float()
    fill = np.asarray(pred.mean, np.float32) * 255.0
    step = chunk_rows(width)
    if plan.tiles == 1:  # the whole image at once: nothing to blend
        logits = pred.logits(_tile_batch(reader, 0, [0], th, tw, fill))[0]
        if bar is not None:
            bar.update(1)
        for a in range(0, height, step):
            yield a, logits[:, a:a + step]
        return
    acc = torch.zeros(pred.num_classes, th, width)
    for j, y in enumerate(plan.ys):  # acc holds rows [y, y + th)
        for k in range(0, len(plan.xs), plan.batch):
            xs = plan.xs[k:k + plan.batch]
            logits = pred.logits(_tile_batch(reader, y, xs, th, tw, fill))
            for i, x in enumerate(xs):
                w2d = torch.from_numpy(np.outer(wy[j], wx[k + i]))
                acc[:, :, x:x + tw].addcmul_(logits[i], w2d)
            if bar is not None:
                bar.update(len(xs))
        end = plan.ys[j + 1] if j + 1 < len(plan.ys) else height  # rows before `end` get no more tiles
        for a in range(y, end, step):
            b = min(a + step, end)
            yield a, acc[:, a - y:b - y] * (inv_y[a:b, None] * inv_x[None, :])
        keep = y + th - end
        if keep > 0:
            acc[:, :keep] = acc[:, end - y:end - y + keep].clone()
        acc[:, max(keep, 0):] = 0


class RowResampler:
    """Bilinear resize (align_corners=False, as F.interpolate) of a map arriving in row chunks, in order;
    equal to resizing the whole map at once, while holding only a chunk and the row before it."""

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        (self.in_h, self.in_w), (self.out_h, self.out_w) = in_size, out_size
        self.identity = in_size == out_size
        src = ((torch.arange(self.out_h, dtype=torch.float64) + 0.5) * (self.in_h / self.out_h) - 0.5).clamp(min=0)
        self.i0 = src.floor().long().clamp(max=self.in_h - 1)
        self.i1 = (self.i0 + 1).clamp(max=self.in_h - 1)
        self.lam = (src - self.i0).float()
        self.buf: torch.Tensor | None = None
        self.buf0 = self.next = 0

    def push(self, y0: int, chunk: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Input rows [y0, y0 + len) -> every output row they complete, a chunk at a time."""
        if self.identity:
            yield y0, chunk
            return
        end = y0 + chunk.shape[1]
        if y0 == 0 and end == self.in_h and self.out_h * self.out_w <= CHUNK_PIXELS:  # all at once: one call
            self.next = self.out_h
            yield 0, F.interpolate(chunk[None], size=(self.out_h, self.out_w), mode="bilinear",
                                   align_corners=False)[0]
            return
        buf = chunk if self.buf is None else torch.cat([self.buf, chunk], 1)
        buf0 = y0 if self.buf is None else self.buf0
        stop = self.out_h if end >= self.in_h else int(torch.searchsorted(self.i1, end))
        step = chunk_rows(self.out_w)
        for a in range(self.next, stop, step):
            b = min(a + step, stop)
            top, bottom = buf[:, self.i0[a:b] - buf0], buf[:, self.i1[a:b] - buf0]
            rows = top.lerp_(bottom, self.lam[a:b, None].expand(-1, self.in_w))
            if self.in_w != self.out_w:  # along H the scale is 1: an identity, so this resizes the width only
                rows = F.interpolate(rows[None], size=(b - a, self.out_w), mode="bilinear", align_corners=False)[0]
            yield a, rows
        self.next = stop
        if stop < self.out_h:
            k = int(self.i0[stop]) - buf0
            self.buf, self.buf0 = buf[:, k:].clone(), buf0 + k


# --- one image ----------------------------------------------------------------------------------------

@dataclass
class ImageStats:
    """What predictions.json records of one image."""

    height: int
    width: int
    net_size: tuple[int, int]
    scale: float
    plan: TilePlan
    counts: np.ndarray
    confidence_sum: float = 0.0
    nodata: int = 0
    seconds: float = 0.0

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        valid = int(self.counts.sum())
        fractions = {n: (float(c) / valid if valid else 0.0) for n, c in zip(class_names, self.counts.tolist())}
        return {"width": self.width, "height": self.height, "network_size": list(self.net_size),
                "scale": self.scale, **self.plan.to_dict(), "class_fractions": fractions,
                "mean_confidence": self.confidence_sum / valid if valid else None,
                "nodata_fraction": self.nodata / (self.height * self.width), "seconds": round(self.seconds, 3)}


def choose_scale(reader: RasterReader, pred: Predictor, scale: float | None) -> float:
    """The factor applied before the network: --scale, else the model's rule (models/scale.py): an image decoded
    whole gets its shorter side to the base size; a raster read in windows the training frames' factor."""
    if scale is None and isinstance(reader, ArrayReader):
        scale = base_scale(reader.height, reader.width, pred.base_size)
    elif scale is None:
        scale = pred.window_factor or 1.0
    if not (scale > 0 and math.isfinite(scale)):
        raise ConfigError(f"--scale {scale}: must be > 0")
    h, w = round(reader.height * scale), round(reader.width * scale)
    if h * w > MAX_NETWORK_PIXELS:  # --scale 1e5 once asked for a 72 TB allocation
        raise ConfigError(f"--scale {scale:g}: the image would reach the network at {h}x{w} px, beyond the "
                          f"{MAX_NETWORK_PIXELS:.3g} px segadapt predicts in one image; give a smaller --scale")
    return scale


def summarise(probs: torch.Tensor, entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Labels, max probability and (optionally) entropy / ln(C) of C x h x w class probabilities."""
    conf, labels = probs.max(0)
    ent = None
    if entropy:
        c = probs.shape[0]
        ent = -(probs * probs.clamp_min(1e-30).log()).sum(0) / math.log(c) if c > 1 else torch.zeros_like(conf)
        ent.clamp_(0.0, 1.0)
    return labels, conf, ent


def predict_image(pred: Predictor, source: RasterReader, outputs: ImageOutputs | None = None, *,
                  scale: float | None = None, tile: int | None = None, overlap: int | None = None, batch: int = 4,
                  memory_mb: float = 1024, entropy: bool = False, overlay: bool = False, progress: bool = True,
                  desc: str = "tiles", probs: ProbsSink | None = None) -> ImageStats:
    """Predict one image; finished rows go to `outputs.write(y, labels, confidence, entropy, valid, rgb)` and,
    for callers that need more than the mask (change maps), their class probabilities to `probs(y, p, valid)`."""
    start = time.perf_counter()
    s = choose_scale(source, pred, scale)
    net: RasterReader = source
    if s != 1.0:  # decoded whole: resized as evaluation resizes; read in windows: resampled window by window
        net = ArrayReader(resize_image(source.image, s)) if isinstance(source, ArrayReader) else Resampled(source, s)
    plan = plan_tiles(net.height, net.width, pred.num_classes, pred.activation_bytes_per_pixel(), tile=tile,
                      overlap=overlap, batch=batch, memory_mb=memory_mb, stride=pred.output_stride())
    if plan.needs_mb is not None:
        tqdm.write(f"segadapt: warning: {desc}: --memory-mb {memory_mb:g} is less than the smallest tile plan needs "
                   f"(about {plan.needs_mb:.0f} MB: {plan.tile_h}x{plan.tile_w} tiles one at a time, rows "
                   f"{net.width} wide); predicting with that plan anyway", file=sys.stderr)
    stats = ImageStats(source.height, source.width, (net.height, net.width), s, plan,
                       np.zeros(pred.num_classes, np.int64))
    resampler = RowResampler((net.height, net.width), (source.height, source.width))
    with progress_bar(total=plan.tiles, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
              disable=not progress or plan.tiles <= plan.batch) as bar:
        for y0, chunk in blend(pred, net, plan, bar):
            for y, rows in resampler.push(y0, torch.softmax(chunk, 0)):
                _finish_rows(pred, source, outputs, stats, y, rows, entropy, overlay, probs)
    stats.seconds = time.perf_counter() - start
    return stats


def _finish_rows(pred: Predictor, source: RasterReader, outputs: ImageOutputs | None, stats: ImageStats, y: int,
                 probs: torch.Tensor, entropy: bool, overlay: bool, sink: ProbsSink | None = None) -> None:
    labels, conf, ent = summarise(probs, entropy)
    rows = probs
    n, w = rows.shape[1], source.width
    rgb, valid = source.read(y, 0, n, w) if overlay else (None, source.valid(y, 0, n, w))
    lab, cf = labels.numpy(), conf.numpy()
    if valid is None:
        stats.counts += np.bincount(lab.ravel(), minlength=pred.num_classes)
        stats.confidence_sum += float(cf.sum(dtype=np.float64))
    else:
        stats.counts += np.bincount(lab[valid], minlength=pred.num_classes)
        stats.confidence_sum += float(cf[valid].sum(dtype=np.float64))
        stats.nodata += int(valid.size - valid.sum())
    if outputs is not None:
        outputs.write(y, lab, cf, None if ent is None else ent.numpy(), valid, rgb)
    if sink is not None:
        sink(y, probs, valid)


SAMPLE_SIDE = 512  # network pixels a side of the window `sample_precision` predicts


class _Labels:
    """Collects the class mask `predict_image` writes row by row (an `ImageOutputs` stand-in)."""

    def __init__(self, height: int, width: int) -> None:
        self.labels = np.zeros((height, width), np.int64)

    def write(self, y: int, labels: np.ndarray, *rest: Any) -> None:
        self.labels[y:y + labels.shape[0]] = labels


def sample_precision(pred: Predictor, source: RasterReader, requested: str, *, scale: float | None = None,
                     tile: int | None = None, overlap: int | None = None, batch: int = 4,
                     memory_mb: float = 1024) -> PrecisionChoice:
    """The precision to predict in (segadapt.speed.choose_inference_precision), decided on a window of `source`
    at most SAMPLE_SIDE network pixels a side from its centre, predicted as `predict_image` predicts it (same
    scale and tiling options), so the timing is of the command's own work and the agreement of its own masks."""
    s = choose_scale(source, pred, scale)
    h, w = (min(n, max(1, math.ceil(SAMPLE_SIDE / s))) for n in (source.height, source.width))
    y, x = (source.height - h) // 2, (source.width - w) // 2
    rgb, _ = source.read(y, x, h, w)
    window = ArrayReader(np.clip(rgb, 0, 255).astype(np.uint8) if rgb.dtype != np.uint8 else rgb)
    before = pred.precision

    def labels(precision: str) -> torch.Tensor:
        pred.precision = precision
        mask = _Labels(h, w)
        predict_image(pred, window, mask, scale=s, tile=tile, overlap=overlap, batch=batch,  # type: ignore[arg-type]
                      memory_mb=memory_mb, progress=False)
        return torch.from_numpy(mask.labels)

    try:
        return choose_inference_precision(requested, pred.device, labels)
    finally:
        pred.precision = before
