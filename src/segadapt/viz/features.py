"""Feature maps before and after adaptation: what regression changed, channel by channel.

For each image pair and tap the grid shows X1, H1's channel on X1 (the target), X2, H1's channel on X2
(the shift's damage), H2's channel on X2 (the repair), and the two |difference| maps against the target.
The per-layer regression error (mean squared difference over all channels, the loss's own measure) is
printed on each row and written to JSON, before (H1 on X2) and after (H2 on X2).

Channel rule: the channel whose H1 activation on the X1 images varies most over space and images
(highest variance), since a flat channel shows nothing; `channels` overrides it per tap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segadapt.checkpoint import write_json_atomic
from segadapt.models.contract import feature_fn
from segadapt.viz.plots import save_figure, subplots

COLUMNS = ("X1", "H1(X1)", "X2", "H1(X2)", "H2(X2)", "|H1(X1)-H1(X2)|", "|H1(X1)-H2(X2)|")


def pick_channel(maps: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """Index of the channel with the highest activation variance over images and space (maps: B,C,H,W, or
    a list of them when images differ in size)."""
    batches = [maps] if isinstance(maps, torch.Tensor) else list(maps)
    values = torch.cat([m.float().transpose(0, 1).flatten(1) for m in batches], dim=1)
    return int(values.var(dim=1, correction=0).argmax())


@torch.inference_mode()
def feature_maps(
    h1: nn.Module, h2: nn.Module, x1: torch.Tensor, x2: torch.Tensor, taps: Sequence[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """{tap: {"h1_x1", "h1_x2", "h2_x2"}} for a batch of pairs, models in eval mode."""
    h1.eval()
    h2.eval()
    f11, f12, f22 = (feature_fn(m)(x, list(taps)) for m, x in ((h1, x1), (h1, x2), (h2, x2)))
    return {t: {"h1_x1": f11[t].float(), "h1_x2": f12[t].float(), "h2_x2": f22[t].float()} for t in taps}


def regression_errors(maps: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, list[float]]]:
    """Per tap and image: mean squared difference to H1(X1) before (H1 on X2) and after (H2 on X2)."""
    out = {}
    for t, m in maps.items():
        before = (m["h1_x1"] - m["h1_x2"]).pow(2).flatten(1).mean(1)
        after = (m["h1_x1"] - m["h2_x2"]).pow(2).flatten(1).mean(1)
        out[t] = {"before": before.tolist(), "after": after.tolist()}
    return out


def feature_grid(
    images: tuple[np.ndarray, np.ndarray],
    maps: dict[str, dict[str, torch.Tensor]],
    b: int,
    channels: dict[str, int],
    errors: dict[str, dict[str, list[float]]],
    path: Path,
    title: str = "",
) -> Path:
    """One PNG for image b of the batch: a row per tap, the columns of COLUMNS."""
    taps = list(maps)
    fig, axes = subplots(len(taps), len(COLUMNS), figsize=(2.1 * len(COLUMNS), 1.9 * len(taps) + 0.6),
                             squeeze=False)
    for r, t in enumerate(taps):
        c = channels[t]
        ch = {k: v[b, c].cpu().numpy() for k, v in maps[t].items()}
        # one colour scale for the three activation maps, another for the two differences, so they compare
        lo = min(float(a.min()) for a in ch.values())
        hi = max(float(a.max()) for a in ch.values())
        d_before, d_after = np.abs(ch["h1_x1"] - ch["h1_x2"]), np.abs(ch["h1_x1"] - ch["h2_x2"])
        dmax = max(float(d_before.max()), float(d_after.max()), 1e-8)
        panels: list[tuple[np.ndarray, dict[str, Any]]] = [
            (images[0], {}), (ch["h1_x1"], {"vmin": lo, "vmax": hi}), (images[1], {}),
            (ch["h1_x2"], {"vmin": lo, "vmax": hi}), (ch["h2_x2"], {"vmin": lo, "vmax": hi}),
            (d_before, {"vmin": 0, "vmax": dmax, "cmap": "magma"}),
            (d_after, {"vmin": 0, "vmax": dmax, "cmap": "magma"}),
        ]
        for k, (img, kw) in enumerate(panels):
            ax = axes[r, k]
            ax.imshow(img, interpolation="nearest", **({"cmap": "viridis"} | kw if img.ndim == 2 else {}))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[k], fontsize=8)
        e = errors[t]
        axes[r, 0].set_ylabel(f"{t} ch {c}\nMSE {e['before'][b]:.3g}\n-> {e['after'][b]:.3g}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100, tight=False)


def write_feature_grids(
    h1: nn.Module,
    h2: nn.Module,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    taps: Sequence[str],
    out_dir: Path,
    denormalize: Any,
    *,
    names: Sequence[str] | None = None,
    channels: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Grids for pairs (X1, X2) of normalised 3xHxW images, and features.json with channels and errors.

    Pairs run one at a time: evaluation keeps each image's aspect ratio, so pairs differ in size (VOC)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    maps = [feature_maps(h1, h2, x1[None], x2[None], taps) for x1, x2 in pairs]
    chosen = {t: (channels or {}).get(t, pick_channel([m[t]["h1_x1"] for m in maps])) for t in taps}
    for t, c in chosen.items():
        n = maps[0][t]["h1_x1"].shape[1]
        if not 0 <= c < n:
            raise ValueError(f"channel {c} out of range for {t}, which has {n} channels")
    per_pair = [regression_errors(m) for m in maps]
    errors = {t: {k: [v for e in per_pair for v in e[t][k]] for k in ("before", "after")} for t in taps}
    names = list(names or [f"pair{b}" for b in range(len(pairs))])
    files = []
    for (x1, x2), m, e, name in zip(pairs, maps, per_pair, names, strict=True):
        imgs = (denormalize(x1), denormalize(x2))
        files.append(feature_grid(imgs, m, 0, chosen, e, out_dir / f"features_{name}.png", title=name).name)
    summary = {"taps": list(taps), "channels": chosen, "channel_rule": "highest variance of H1 on X1"
               if not channels else "given", "images": names, "errors": errors, "files": files}
    write_json_atomic(out_dir / "features.json", summary)
    return summary
