"""The image as a network sees it: optimise an image until its feature maps match those of a real image.

Why: after adaptation H2 is only asked to reproduce H1's feature maps, so the question "what does this map
keep of the image?" is answered by inverting it. Starting from seeded noise X̂, we minimise

    content_weight · Σ_{l ∈ content_taps} ½ · mean((F_l(X1) − F_l(X̂))²)
  + style_weight   · Σ_{l ∈ taps}         Σ_ij (G_l(X1) − G_l(X̂))²_ij
  + tv_weight      · total variation of X̂

with the model frozen. Defaults: content at every tap but the shallowest (what the deeper maps keep is the
question) and a total-variation prior.

A map seldom fixes the whole image: pool1 of the demo's VGG (8 channels at width 0.125) fixes about a
quarter of a 32x48 crop's degrees of freedom, and a trained one reads nearly the same maps for any flat grey.
Three choices keep the rest from staying as static, each measured on that network (see `Pyramid` and
`segadapt.viz.surrogate`): X̂ is a sum of scales started from coarse noise (not white noise on pixels,
which no gradient ever removes), ReLUs and max-pools pass a surrogate gradient through switched-off units,
and Adam's step decays to zero (a constant step made the loss climb again after ~150 of 300 steps).

The content term uses a per-element mean, as `segadapt.losses` does, so taps of
different sizes are comparable and the scale does not grow with the image. `gram` divides by C·H·W, so the
style sum over the C×C entries equals the mean squared difference of the per-position-averaged Gram
matrices: it does not grow with the channel count or the image size either. X̂ lives in the dataset's
normalised space (what the model reads) and is projected back into the valid pixel range after each step.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segadapt.checkpoint import atomic_path
from segadapt.config import IMAGENET_MEAN, IMAGENET_STD
from segadapt.errors import ConfigError, SegadaptError
from segadapt.models.contract import feature_fn
from segadapt.models.taps import Features, flags_restored
from segadapt.models.vgg_deeplab import POOLS
from segadapt.viz.plots import save_figure, subplots
from segadapt.viz.surrogate import surrogate_gradients

OPTIMIZERS = ("adam", "sgd", "lbfgs")
# per-optimiser step size when ReconstructConfig.lr is None; X̂ is in normalised units (about ±2)
DEFAULT_LR = {"adam": 0.1, "sgd": 1.0, "lbfgs": 1.0}


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix (B,C,H,W) -> (B,C,C), divided by C·H·W.

    Channel correlations with the positions summed out: the "style" of a map, blind to where things are.
    With this normalisation a map of ones gives 1/C in every entry, whatever its size.
    """
    if f.dim() != 4:
        raise ValueError(f"gram expects a (B,C,H,W) feature map; got shape {tuple(f.shape)}")
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w).float()
    return flat @ flat.transpose(1, 2) / (c * h * w)


@dataclass
class ReconstructConfig:
    """What to match and how to optimise; the defaults match content at every tap but the shallowest, style at
    all of them, with a smoothness prior."""

    taps: list[str] = field(default_factory=lambda: list(POOLS))  # style (Gram) taps
    content_taps: list[str] | None = None  # None = `taps` without the shallowest (all of them if only one)
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 2.0  # total-variation prior: suppresses the static that deep taps do not constrain
    steps: int = 300
    optimizer: str = "adam"  # adam | sgd (momentum 0.9) | lbfgs (one iteration per step, strong Wolfe)
    lr: float | None = None  # None = DEFAULT_LR[optimizer]
    seed: int = 0
    noise_std: float = 1.0  # of the initial noise at the coarsest scale, in normalised units (1.0 ≈ 58 grey levels)
    clamp: bool = True  # keep X̂ a valid image: project onto [0, 1] pixel range after each step
    scales: int = 5  # X̂ = sum of images at 1, 1/2, ... 1/2^(scales-1) resolution; 1 = plain pixels
    surrogate: bool = True  # ReLU/max-pool backward passes that reach switched-off units (viz.surrogate)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0; got {self.steps}")
        weights = (self.content_weight, self.style_weight, self.tv_weight)
        if min(weights) < 0 or not all(map(math.isfinite, weights)):
            raise ConfigError(f"loss weights must be finite and >= 0; got content/style/tv = {weights}")
        if not self.taps and not self.content_taps:
            raise ConfigError("no taps to match; name at least one layer (e.g. pool5)")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0; got {self.noise_std}")
        if self.scales < 1:
            raise ConfigError(f"scales must be >= 1; got {self.scales}")

    @property
    def step_size(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


def _content_taps(model: nn.Module, cfg: ReconstructConfig) -> list[str]:
    if cfg.content_taps is not None:
        return list(cfg.content_taps)
    taps = list(cfg.taps)
    order = getattr(model, "TAPS", None)
    if order is not None and all(t in order for t in taps):
        taps.sort(key=list(order).index)  # else: as listed, shallow to deep in the usual order
    return taps[1:] or taps


def _pixel_box(mean: Sequence[float], std: Sequence[float], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(list(mean), dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    return (0 - m) / s, (1 - m) / s


class Pyramid:
    """X̂ as the sum of `scales` images at full, 1/2, 1/4 ... resolution, each upsampled bilinearly.

    Why: most of an image is invisible to a narrow net's shallow maps (pool1 of the demo's VGG fixes about
    a quarter of the pixel values' degrees of freedom; a flat region gives nearly the same maps at any grey
    level). Descending on single pixels leaves that part as it started, so white noise stays static. Here
    a step also moves whole regions through the coarse levels, so what the maps do not fix is filled in
    smoothly from what they do. The seeded start noise sits at the coarsest level; the others start at 0.
    """

    def __init__(self, shape: Sequence[int], scales: int, noise_std: float, seed: int,
                 device: torch.device | str) -> None:
        self.size = (int(shape[-2]), int(shape[-1]))
        gen = torch.Generator().manual_seed(seed)  # a private RNG: the caller's global stream is untouched
        self.levels: list[torch.Tensor] = []
        for k in range(scales):
            h, w = (max(1, -(-n // 2**k)) for n in self.size)
            level = torch.zeros(1, 3, h, w)
            if k == scales - 1:
                level = torch.randn(level.shape, generator=gen) * noise_std
            self.levels.append(level.to(device).requires_grad_(True))

    def image(self) -> torch.Tensor:
        out = self.levels[0]
        for level in self.levels[1:]:
            out = out + F.interpolate(level, size=self.size, mode="bilinear", align_corners=False)
        return out

    @torch.no_grad()
    def project(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Clip the image into [lo, hi] by correcting the finest level, the only one that can do it exactly."""
        x = self.image()
        self.levels[0].add_(torch.maximum(torch.minimum(x, hi), lo) - x)


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one normalised RGB image (1,3,H,W) or (3,H,W); got shape {tuple(x.shape)}")
    return x


def reconstruct(
    model: nn.Module,
    x1: torch.Tensor,
    cfg: ReconstructConfig | None = None,
    device: torch.device | str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Optimise a seeded noise image so the model's features on it match those on `x1` (normalised).

    Returns X̂ (1,3,H,W) in normalised space on the CPU, and one loss row per step: row k is the loss at
    X̂ before update k, and the last row (step = cfg.steps) is the loss of the returned image. The model
    is moved to `device` (default: where its parameters are) and frozen in eval mode for the run; its
    `requires_grad` flags, train/eval modes and in-place ReLUs are restored afterwards (no hook is left) and
    its weights never change.
    `mean`/`std` are only used to keep X̂ inside the valid pixel range (`cfg.clamp`).
    """
    cfg = cfg or ReconstructConfig()
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to(device)
    x1 = _as_batch(x1).to(device=device, dtype=torch.float32)
    style_taps = list(cfg.taps) if cfg.style_weight > 0 else []
    content_taps = _content_taps(model, cfg) if cfg.content_weight > 0 else []
    needed = list(dict.fromkeys(content_taps + style_taps))
    if not needed:
        raise ConfigError("both content_weight and style_weight are 0; nothing to reconstruct from")
    features = feature_fn(model)

    with flags_restored(model) as params:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        return _optimise(model, features, x1, cfg, needed, content_taps, style_taps, _pixel_box(mean, std, x1))


def _optimise(
    model: nn.Module,
    features: Features,
    x1: torch.Tensor,
    cfg: ReconstructConfig,
    needed: list[str],
    content_taps: list[str],
    style_taps: list[str],
    box: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    try:
        with torch.no_grad():
            target = {k: v.detach().float().clone() for k, v in features(x1, needed).items()}
    except ValueError as e:  # unknown tap names: a user error with the valid names in the message
        raise ConfigError(str(e)) from None
    target_gram = {t: gram(target[t]) for t in style_taps}

    xhat = Pyramid(x1.shape, cfg.scales, cfg.noise_std, cfg.seed, x1.device)
    if cfg.clamp:
        xhat.project(*box)

    def loss_terms() -> tuple[torch.Tensor, dict[str, float]]:
        image = xhat.image()
        with surrogate_gradients(model) if cfg.surrogate else nullcontext():
            feats = features(image, needed)
        row: dict[str, float] = {}
        content = torch.zeros((), device=image.device)
        for t in content_taps:
            err = 0.5 * (feats[t].float() - target[t]).pow(2).mean()
            row[f"content.{t}"] = float(err.detach())
            content = content + err
        style = torch.zeros((), device=image.device)
        for t in style_taps:
            err = (gram(feats[t]) - target_gram[t]).pow(2).sum(dim=(1, 2)).mean()
            row[f"style.{t}"] = float(err.detach())
            style = style + err
        tv = _total_variation(image) if cfg.tv_weight > 0 else torch.zeros((), device=image.device)
        total = cfg.content_weight * content + cfg.style_weight * style + cfg.tv_weight * tv
        head = {"total": float(total.detach()), "content": float(content.detach()), "style": float(style.detach()),
                "tv": float(tv.detach())}
        return total, {**head, **row}

    opt: torch.optim.Optimizer
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(xhat.levels, lr=cfg.step_size)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(xhat.levels, lr=cfg.step_size, momentum=0.9)
    else:
        opt = torch.optim.LBFGS(xhat.levels, lr=cfg.step_size, max_iter=1, history_size=20,
                                line_search_fn="strong_wolfe")
    # a constant step ends oscillating: the loss climbed again after ~150 of 300 Adam steps. A cosine decay to
    # zero lets the last steps settle; L-BFGS sizes its own steps by line search.
    schedule = None if cfg.optimizer == "lbfgs" else torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.steps))

    losses: list[dict[str, float]] = []
    start = time.perf_counter()

    def record(step: int, row: dict[str, float]) -> None:
        if not math.isfinite(row["total"]):
            raise SegadaptError(
                f"reconstruction diverged at step {step} (loss {row['total']}); lower lr (now {cfg.step_size})"
            )
        losses.append({"step": float(step), **row, "seconds": time.perf_counter() - start})

    for step in range(cfg.steps):
        first: list[dict[str, float]] = []

        def closure(first: list[dict[str, float]] = first) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            total, row = loss_terms()
            total.backward()
            if not first:  # L-BFGS may evaluate several points; log the one X̂ stood at
                first.append(row)
            return total

        opt.step(closure)
        if schedule is not None:
            schedule.step()
        record(step, first[0])
        if cfg.clamp:
            xhat.project(*box)
    with torch.no_grad():
        record(cfg.steps, loss_terms()[1])
    return xhat.image().detach().cpu(), losses


# --- images and files -------------------------------------------------------------------------------

def to_uint8_image(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (1,3,H,W) or (3,H,W) -> uint8 HxWx3 RGB: undo the dataset's normalisation, clip to 0..255."""
    x = _as_batch(x.detach().cpu().float())[0]
    m = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
    img = torch.nan_to_num(x * s + m, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1).mul(255).round()
    return img.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def normalize_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWx3 RGB -> normalised (1,3,H,W) float: the inverse of `to_uint8_image`."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image; got shape {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
    m = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
    return ((x - m) / s).unsqueeze(0)


def _write_png(path: Path, image: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")  # the temp name has no .png suffix: say the format
    return path


def _write_csv(path: Path, rows: list[dict[str, float]]) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (int(v) if k == "step" else f"{v:.6g}") for k, v in row.items()})
    return path


def plot_losses(losses: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Total, content, style (and TV when used) against step on a log scale: the fall spans decades."""
    fig, ax = subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in losses]
    for key, style in (("total", "-"), ("content", "--"), ("style", ":"), ("tv", "-.")):
        ys = np.array([r.get(key, np.nan) for r in losses], dtype=float)
        if np.any(ys > 0):  # a term that is switched off would only add an empty legend entry
            ax.plot(steps, np.where(ys > 0, ys, np.nan), ls=style, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "reconstruction loss")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_reconstruction(
    out_dir: str | Path,
    name: str,
    x1: torch.Tensor,
    xhat: torch.Tensor,
    losses: list[dict[str, float]],
    mean: Sequence[float],
    std: Sequence[float],
    title: str = "",
) -> dict[str, Path]:
    """Write `<name>_x1.png`, `_reconstruction.png`, `_comparison.png` (X1 | X̂), `_loss.png`, `_loss.csv`.

    Every file goes to a temporary name first and is renamed, so a reader never sees half a file.
    """
    out = Path(out_dir)
    img1, img2 = to_uint8_image(x1, mean, std), to_uint8_image(xhat, mean, std)
    paths = {
        "x1": _write_png(out / f"{name}_x1.png", img1),
        "reconstruction": _write_png(out / f"{name}_reconstruction.png", img2),
    }
    h, w = img1.shape[:2]
    fig, axes = subplots(1, 2, figsize=(2 * max(3.0, 4.0 * w / max(h, w)) + 0.5, 4.0 * h / max(h, w) + 0.6))
    for ax, img, label in zip(axes, (img1, img2), ("X1 (D1 image)", "reconstruction X̂")):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    paths["comparison"] = save_figure(fig, out / f"{name}_comparison.png")
    paths["loss_png"] = plot_losses(losses, out / f"{name}_loss.png", title)
    paths["loss_csv"] = _write_csv(out / f"{name}_loss.csv", losses)
    return paths


# --- one call for the CLI ---------------------------------------------------------------------------

def _load_image(
    image: str | Path | np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    if isinstance(image, torch.Tensor):  # already normalised, as a dataset yields it
        return _as_batch(image.detach().float())
    if isinstance(image, np.ndarray):
        return normalize_image(image, mean, std)
    from segadapt.data.base import read_image  # cv2-backed reader with one-line errors for bad files

    return normalize_image(read_image(Path(image)), mean, std)


def _resize(x: torch.Tensor, size: int | Sequence[int] | None) -> torch.Tensor:
    """`size`: None keeps it, an int sets the shorter side (as data.base_size does), (h, w) sets both."""
    if size is None:
        return x
    h, w = x.shape[-2:]
    if isinstance(size, int):
        s = size / min(h, w)
        target = (max(1, round(h * s)), max(1, round(w * s)))
    else:
        target = (int(size[0]), int(size[1]))
    if target == (h, w):
        return x
    return F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)


def reconstruct_image(
    model: str | Path | nn.Module,
    image: str | Path | np.ndarray | torch.Tensor,
    out_dir: str | Path,
    cfg: ReconstructConfig | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
    size: int | Sequence[int] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Load a model (file, run directory or module) and an image, reconstruct it, write the files.

    `image` is a file path, a uint8 HxWx3 RGB array, or an already normalised tensor. `mean`/`std` default
    to those the model was trained with (from its metadata) and else to ImageNet's. Returns a JSON-ready
    summary: file paths, first and last total loss and their ratio, taps, steps, seconds.
    """
    cfg = cfg or ReconstructConfig()
    meta: dict[str, Any] = {}
    if isinstance(model, nn.Module):
        net = model
    else:
        from segadapt.models.loading import load_any  # any model form: run, model file, transformers directory

        net, meta = load_any(model, device)
    data_cfg = meta.get("config", {}).get("data", {})
    recorded = (meta.get("image_mean"), meta.get("image_std"))  # a transformers preprocessor's, 0..1 units
    mean = list(mean if mean is not None else recorded[0] or data_cfg.get("mean", IMAGENET_MEAN))
    std = list(std if std is not None else recorded[1] or data_cfg.get("std", IMAGENET_STD))
    x1 = _resize(_load_image(image, mean, std), size)
    if name is None:
        name = Path(image).stem if isinstance(image, (str, Path)) else "image"

    start = time.perf_counter()
    xhat, losses = reconstruct(net, x1, cfg, device, mean, std)
    seconds = time.perf_counter() - start
    content_taps = _content_taps(net, cfg) if cfg.content_weight > 0 else []
    style_taps = list(cfg.taps) if cfg.style_weight > 0 else []
    title = f"content {','.join(content_taps) or '-'} | style {','.join(style_taps) or '-'} | {cfg.steps} steps"
    paths = write_reconstruction(out_dir, name, x1, xhat, losses, mean, std, title)
    first, last = losses[0]["total"], losses[-1]["total"]
    return {
        **{k: str(p) for k, p in paths.items()},
        "first_loss": first,
        "last_loss": last,
        "ratio": last / first if first > 0 else None,
        "steps": cfg.steps,
        "content_taps": content_taps,
        "style_taps": style_taps,
        "size": list(x1.shape[-2:]),
        "seconds": seconds,
    }
