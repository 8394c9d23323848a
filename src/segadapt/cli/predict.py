"""`segadapt predict`: segment unlabelled images of any size (JPEG, PNG, WebP, TIFF, GeoTIFF) with a model."""

from __future__ import annotations

import argparse
import sys

from segadapt.cli.common import (
    claim,
    config_args,
    keep_outputs,
    model_config,
    numbers,
    trust_args,
    trusted_factories,
)
from segadapt.errors import SegadaptError
from segadapt.paths import check_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment unlabelled images of any size (JPEG/PNG/WebP/TIFF, GeoTIFF)")
    p.add_argument("--model", required=True, help="run directory or model .safetensors")
    p.add_argument("--images", required=True, nargs="+", metavar="PATH",
                   help="image files, folders (their images) or globs (quote them; ** recurses)")
    p.add_argument("--out", required=True, help="output folder (re-running skips finished images)")
    g = p.add_argument_group("tiling (default: whole image, or the largest tile that fits --memory-mb)")
    g.add_argument("--tile", type=int, help="tile side in pixels at the network's scale")
    g.add_argument("--overlap", type=int, help="overlap of neighbouring tiles in pixels (default: tile/4)")
    g.add_argument("--batch", type=int, default=4, help="tiles per forward pass (default 4)")
    g.add_argument("--memory-mb", type=float, default=1024,
                   help="working memory for tiles and one row of blended logits (default 1024)")
    g.add_argument("--scale", type=float, help="resize every image by this factor before the network (default: "
                   "the scale the model was trained at, its shorter side to the model's data.base_size)")
    r = p.add_argument_group("TIFF / GeoTIFF input (read with rasterio)")
    r.add_argument("--bands", help="1-based bands for R,G,B, or one band for grey (default 1,2,3; one-band "
                   "rasters are replicated)")
    r.add_argument("--stretch", default="auto", choices=["auto", "percentile", "range"],
                   help="to 0..255: auto = 8-bit as stored, else percentile (2..98%% per band); range = the "
                   "integer type's full range")
    o = p.add_argument_group("outputs besides the class mask")
    o.add_argument("--overlay", action="store_true", help="the image blended with the class colours")
    o.add_argument("--confidence", action="store_true", help="max softmax probability")
    o.add_argument("--entropy", action="store_true", help="softmax entropy / ln(classes)")
    trust_args(p)
    config_args(p, ("device",), presets=False)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from segadapt.data.rasters import check_bands
    from segadapt.models.scale import settle_factor
    from segadapt.predict import Predictor, load, weights_sha256
    from segadapt.predict_job import PredictOptions, list_inputs, run
    from segadapt.predict_outputs import OutputSpec
    from segadapt.runtime import environment, select_device

    bands = check_bands(numbers("--bands", args.bands, int)) if args.bands else None
    opts = PredictOptions(args.tile, args.overlap, args.batch, args.memory_mb, args.scale, bands, args.stretch,
                          OutputSpec(args.overlay, args.confidence, args.entropy)).check()
    out = check_path(args.out, "--out")
    if out.exists() and not out.is_dir():
        raise SegadaptError(f"--out {args.out}: is a file; give a folder for the outputs")
    inputs = list_inputs(args.images, out)
    model_path = check_path(args.model, "--model")
    model, meta = load(model_path, trusted_factories=trusted_factories(args))
    cfg = model_config(args, meta, model_path)
    settle_factor(args.scale, meta, str(model_path))
    pred = Predictor.from_meta(model, meta, cfg.data, select_device(cfg.train.device))
    settings = {"model_sha256": weights_sha256(model_path), "mean": list(pred.mean), "std": list(pred.std),
                "base_size": pred.base_size, **opts.settings()}
    header = {"model": str(model_path), "classes": list(pred.class_names), "palette": [list(c) for c in pred.palette],
              "environment": environment()}
    claim(out, lock_it=True)
    summary = run(pred, inputs, out, opts, settings, header, on_finished=lambda: keep_outputs(out))
    done = len(summary.images)
    kept = f" ({summary.skipped} already finished, kept)" if summary.skipped else ""
    print(f"predicted {done} of {len(inputs)} image(s) into {out}{kept}; summary: {summary.path}")
    if summary.failed:
        print(f"segadapt: {len(summary.failed)} image(s) could not be predicted (listed under \"failed\" in "
              f"{summary.path}):", file=sys.stderr)
        for f in summary.failed:
            print(f"  {f['error']}", file=sys.stderr)
        return 1
    return 0
