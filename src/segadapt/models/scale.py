"""The scale a model was trained at, and the one rule by which every command applies it.

A model's scale is `data.base_size`: each image is resized so that its shorter side is base_size pixels
before the network sees it (0: images as stored). The same weights at another scale are another classifier
(a CamVid model scored at 480x360 instead of the 320x240 it learnt at loses a third of its mIoU), so:

- A model records its scale in its own format: a segadapt model file in its run config (data.base_size); a
  model that learnt from raster windows (shift.d1_raster) saw them at their stored resolution (0); a
  transformers directory in `preprocessor_config.json` (do_resize with size {"shortest_edge": N}, which
  transformers' image processors apply too; a fixed height x width counts as its shorter side; do_resize
  false: as stored) and, when segadapt wrote it, in `segadapt.json` (the run's whole config). A factory
  model records none.
- Every command uses that scale unless the user sets another (data.base_size in --config or --set, predict's
  --scale); it then says so in one line on stderr. Where a model records none, the data's preset (or the
  user's value) stands.
- A raster read in windows (a mosaic of any size) has no frame whose shorter side the rule could set: its
  pixels are resized by the factor the model's training frames were (`pixel_factor`, data/base.py, recorded at training
  when every sampled frame had one shorter side: CamVid's 360 px frames at base size 240 give 2/3), so a
  GeoTIFF and a JPEG of one frame reach the network alike and a 20000 px survey is not shrunk to 240 px.
  A model whose frames had no one size is applied to mosaics at their stored resolution, said in one line.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from segadapt.errors import CheckpointError

SCALE_KEY = "data.base_size"


def recorded_config(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The run config a model's metadata carries (a segadapt model file, or segadapt.json), or None."""
    config = meta.get("config")
    return config if isinstance(config, Mapping) and isinstance(config.get("data"), Mapping) else None


def trained_base_size(meta: Mapping[str, Any]) -> int | None:
    """The base size a model was trained at (0: images as stored), or None where it records none."""
    config = recorded_config(meta)
    if config is not None:
        shift = config.get("shift")
        if isinstance(shift, Mapping) and shift.get("d1_raster"):  # windows of a mosaic at its stored resolution
            return 0
        value = config["data"].get("base_size", 0)
    else:
        value = meta.get("base_size")
        if value is None:
            return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{meta.get('hf_source', 'model metadata')}: base_size {value!r} is not a whole "
                              "number >= 0; re-save the model")
    return value


def window_factor(meta: Mapping[str, Any], base_size: int) -> float | None:
    """The factor a raster read in windows is resized by for a model run at `base_size`: the training frames'
    factor, rescaled when the user runs the model at another base size; 1.0 at base size 0 or for a model that
    learnt from raster windows; None when the model records no one factor."""
    recorded = trained_base_size(meta)
    factor = meta.get("pixel_factor")
    if not base_size or recorded == 0:
        return 1.0
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor > 0 or not recorded:
        return None
    return float(factor) * base_size / recorded


def preprocessor_base_size(raw: Mapping[str, Any], source: str) -> int | None:
    """The base size a transformers preprocessor config resizes to, or None where it does not say.

    transformers resizes to `size` when do_resize (its default) holds: {"shortest_edge": N} keeps the aspect
    ratio as segadapt does; a fixed {"height", "width"} (SegFormer's 512x512) is read as its shorter side, the
    scale that comes nearest while keeping the image's shape.
    """
    if "do_resize" in raw and not raw["do_resize"]:
        return 0
    size = raw.get("size")
    if size is None:
        return None
    if isinstance(size, Mapping):
        sides = [size[k] for k in ("shortest_edge",) if k in size] or [size[k] for k in ("height", "width")
                                                                        if k in size]
    else:
        sides = [size]
    if not sides or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
        raise CheckpointError(f"{source}: size {size!r} is not a positive shortest_edge or height/width; fix the "
                              "preprocessor config")
    return min(sides)


def preprocessor_size(base_size: int) -> dict[str, Any]:
    """preprocessor_config.json keys that make transformers resize as segadapt does at `base_size`."""
    if base_size <= 0:
        return {"do_resize": False}
    return {"do_resize": True, "size": {"shortest_edge": int(base_size)}}


def say(line: str) -> None:
    """One line on stderr: the scale a command applies is not the model's."""
    print(f"note: {line}", file=sys.stderr, flush=True)


def settle_base_size(data: Any, meta: Mapping[str, Any], model: str, chosen: bool) -> None:
    """The rule: `data.base_size` (a DataConfig) becomes the model's own unless the user `chosen` one, which is
    kept and named in one line when it differs. A model that records no scale leaves the value as it is."""
    recorded = trained_base_size(meta)
    if recorded is None:
        return
    if not chosen:
        data.base_size = recorded
    elif data.base_size != recorded:
        say(f"{model} was trained at {describe(recorded)}; using {describe(data.base_size)} as you set")


def settle_factor(factor: float | None, meta: Mapping[str, Any], model: str) -> None:
    """A command's own scale factor (predict --scale) replaces the model's rule: one line when it changes it."""
    recorded = trained_base_size(meta) or 0
    if factor is not None and (recorded > 0 or factor != 1.0):
        say(f"{model} was trained at {describe(recorded)}; resizing every image by --scale {factor:g} instead")


def describe(base_size: int) -> str:
    """A base size in words, for those lines."""
    return (f"data.base_size {base_size} (shorter side to {base_size} px)" if base_size > 0
            else "data.base_size 0 (images as stored)")
