"""`segadapt predict`: segment unlabelled images of any size (JPEG, PNG, WebP, TIFF, GeoTIFF) with a model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segadapt.cli.common import (
    claim,
    config_args,
    keep_outputs,
    model_config,
    numbers,
    precision_arg,
    trust_args,
    trusted_factories,
)
from segadapt.errors import SegadaptError
from segadapt.paths import check_path

if TYPE_CHECKING:
    from segadapt.predict import Predictor
    from segadapt.predict_job import PredictOptions
    from segadapt.predict_outputs import OutputSpec
    from segadapt.speed import PrecisionChoice


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment unlabelled images of any size (JPEG/PNG/WebP/TIFF, GeoTIFF)")
    p.add_argument("--model", required=True, help="run directory or model .safetensors")
    p.add_argument("--images", required=True, nargs="+", metavar="PATH",
                   help="image files, folders (their images) or globs (quote them; ** recurses)")
    p.add_argument("--out", required=True, help="output folder (re-running skips finished images)")
    tiling_args(p)
    p.add_argument("--row-bands", action="store_true", help="under torchrun, share each TIFF's rows among the "
                   "processes (for mosaics too large for one), assembled into one output at the end")
    o = p.add_argument_group("outputs besides the class mask")
    o.add_argument("--overlay", action="store_true", help="the image blended with the class colours")
    o.add_argument("--confidence", action="store_true", help="max softmax probability")
    o.add_argument("--entropy", action="store_true", help="softmax entropy / ln(classes)")
    precision_arg(p)
    trust_args(p)
    config_args(p, ("device",), presets=False)
    p.set_defaults(func=cmd_predict)


def tiling_args(p: argparse.ArgumentParser) -> None:
    """How images are read and tiled: shared by predict and change (both use predict's plan)."""
    g = p.add_argument_group("tiling (default: whole image, or the largest tile that fits --memory-mb)")
    g.add_argument("--tile", type=int, help="tile side in pixels at the network's scale")
    g.add_argument("--overlap", type=int, help="overlap of neighbouring tiles in pixels (default: tile/4)")
    g.add_argument("--batch", type=int, default=4, help="tiles per forward pass (default 4)")
    g.add_argument("--memory-mb", type=float, default=1024,
                   help="working memory for tiles and one row of blended logits (default 1024)")
    g.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "auto"],
                   help="what runs the network: torch, onnxruntime (CPU, the model exported to ONNX in memory) or "
                   "auto (both timed on the first tile batch, the faster kept; default torch)")
    g.add_argument("--scale", type=float, help="resize every image by this factor before the network (default: "
                   "the scale the model was trained at, its shorter side to the model's data.base_size)")
    r = p.add_argument_group("TIFF / GeoTIFF input (read with rasterio)")
    r.add_argument("--bands", help="1-based bands for R,G,B, or one band for grey (default 1,2,3; one-band "
                   "rasters are replicated)")
    r.add_argument("--stretch", default="auto", choices=["auto", "percentile", "range"],
                   help="to 0..255: auto = 8-bit as stored, else percentile (2..98%% per band); range = the "
                   "integer type's full range")


def predict_options(args: argparse.Namespace, outputs: OutputSpec | None = None) -> PredictOptions:
    """PredictOptions from the flags `tiling_args` adds (checked)."""
    from segadapt.data.rasters import check_bands
    from segadapt.predict_job import PredictOptions
    from segadapt.predict_outputs import OutputSpec

    bands = check_bands(numbers("--bands", args.bands, int)) if args.bands else None
    return PredictOptions(args.tile, args.overlap, args.batch, args.memory_mb, args.scale, bands, args.stretch,
                          outputs or OutputSpec()).check()


def load_predictor(args: argparse.Namespace, spec: str, flag: str) -> tuple[Predictor, Path, dict[str, Any]]:
    """The model `spec` ready to predict: its data settings (overridden by --config/--set), scale, device and
    runtime; and what the summary records of the runtime (filled in when `auto` has chosen)."""
    from segadapt.models.scale import settle_factor
    from segadapt.predict import Predictor, load
    from segadapt.predict_runtime import choose
    from segadapt.runtime import select_device

    model_path = check_path(spec, flag)
    model, meta = load(model_path, trusted_factories=trusted_factories(args))
    cfg = model_config(args, meta, model_path)
    settle_factor(args.scale, meta, str(model_path))
    pred = Predictor.from_meta(model, meta, cfg.data, select_device(cfg.train.device))
    pred.runner, report = choose(pred.model, args.runtime, pred.device)
    return pred, model_path, report


def cmd_predict(args: argparse.Namespace) -> int:
    from segadapt.predict import weights_sha256
    from segadapt.predict_job import list_inputs, run
    from segadapt.predict_outputs import OutputSpec
    from segadapt.runtime import environment

    opts = predict_options(args, OutputSpec(args.overlay, args.confidence, args.entropy))
    out = check_path(args.out, "--out")
    if out.exists() and not out.is_dir():
        raise SegadaptError(f"--out {args.out}: is a file; give a folder for the outputs")
    inputs = list_inputs(args.images, out)
    pred, model_path, runtime = load_predictor(args, args.model, "--model")
    settings = {"model_sha256": weights_sha256(model_path), "mean": list(pred.mean), "std": list(pred.std),
                "base_size": pred.base_size, **opts.settings()}
    choice = settle_precision(pred, inputs, opts, args.precision)
    header = {"model": str(model_path), "classes": list(pred.class_names), "palette": [list(c) for c in pred.palette],
              "precision": choice.to_dict(), "runtime": runtime, "environment": environment()}
    claim(out, lock_it=True)
    summary = run(pred, inputs, out, opts, settings, header, on_finished=lambda: keep_outputs(out),
                  row_bands=args.row_bands)
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



def settle_precision(pred: Predictor, inputs: Sequence[Path], opts: PredictOptions, requested: str) -> PrecisionChoice:
    """pred.precision for --precision, decided on the first input (predict.sample_precision). The choice and its
    timing are printed and kept in predictions.json, not in the settings that decide whether an image is finished
    (a re-run that settles otherwise does not predict everything again). An input that cannot be sampled leaves
    fp32; its own failure is reported when it is predicted."""
    from segadapt.data.rasters import open_raster
    from segadapt.predict import sample_precision
    from segadapt.speed import PrecisionChoice

    choice = PrecisionChoice("fp32" if requested == "auto" else requested)
    if requested != "fp32" and inputs:
        try:
            reader = open_raster(inputs[0], opts.bands, opts.stretch)
            try:
                choice = sample_precision(pred, reader, requested, scale=opts.scale, tile=opts.tile,
                                          overlap=opts.overlap, batch=opts.batch, memory_mb=opts.memory_mb)
            finally:
                getattr(reader, "close", lambda: None)()
        except Exception as e:  # noqa: BLE001 - any failure of one image is that image's, reported with it
            choice.note = f"{inputs[0].name} could not be sampled ({type(e).__name__})"
    pred.precision = choice.precision
    if choice.precision != "fp32" or choice.seconds:
        print(choice.line(), flush=True)
    return choice
