"""`segadapt shift` (write a shifted copy D2 of a split) and `segadapt distortion` (how much a shift hurts)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from segadapt.cli.common import (
    DATA,
    MODEL_FORMS,
    claim,
    config_args,
    json_out,
    load_model_arg,
    model_args,
    model_config,
    resolve_config,
    same_classes,
    trusted_factories,
)
from segadapt.config import RunConfig
from segadapt.errors import SegadaptError
from segadapt.paths import check_path

if TYPE_CHECKING:
    from segadapt.severity_search import SearchResult

SHIFT_SEED = {"seed": "shift.seed"}  # here --seed is the shift's (ripple phase, cubism tiles): nothing trains
SEED_HELP = {"seed": "the shift's seed (ripple phase, cubism tiles)"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shift", help="write a shifted copy D2 of a dataset split (same stems and layout)")
    config_args(p, (*DATA, "filter", "severity", "seed", "target_distortion", "workers", "device"),
                keys=SHIFT_SEED, required=("filter",),
                helps={**SEED_HELP, "filter": "photocopy | ripple | cubism | misalign, or a composition such as "
                                               "photocopy+misalign (misalign moves the labels too and records "
                                               "each image's transform)",
                       "severity": "0..1 (default: shift.severity)",
                       "workers": "parallel processes (default 0: one per core)"})
    p.add_argument("--model", help="the model (H1) D2 is for: the scale it was trained at (data.base_size) sets "
                   "the severity's lengths, and with --target-distortion its distortion is aimed at; "
                   f"{MODEL_FORMS}")
    model_args(p)
    p.add_argument("--split", help="split to shift (default: the train split)")
    p.add_argument("--backend", default="native", choices=["native", "gegl"], help="native, or the gegl command")
    p.add_argument("--raster", metavar="TIF", help="shift this GeoTIFF instead of a dataset split, in strips of "
                   "bounded memory (CRS, transform and nodata kept); --out is then the output .tif")
    p.add_argument("--out", required=True, help="output dataset root (with --raster: the output GeoTIFF)")
    p.set_defaults(func=cmd_shift)

    p = sub.add_parser("distortion", help="the study's distortion of a shift: D1 vs D2 accuracy and mIoU of a model")
    p.add_argument("--model", required=True, help=f"the model: {MODEL_FORMS}")
    model_args(p)
    config_args(p, (*DATA, "filter", "severity", "seed", "target_distortion", "d2_dir", "device"),
                presets=False, keys=SHIFT_SEED,
                required=("filter",), helps={**SEED_HELP, "filter": "photocopy | ripple | cubism | misalign | "
                                                               "a composition such as photocopy+misalign",
                                             "d2_dir": "score this `segadapt shift` output as D2 instead of "
                                                       "filtering on the fly"})
    p.add_argument("--split", help="split to score (default: the val split)")
    p.add_argument("--out", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_distortion)


def cmd_shift(args: argparse.Namespace) -> int:
    from segadapt.data import build_source
    from segadapt.data.shifted import write_shifted
    from segadapt.runtime import check_workers

    cfg = resolve_config(args)
    if args.raster:
        return _shift_raster(args, cfg)
    check_workers(cfg.data.num_workers, "--workers")
    split = args.split or cfg.data.train_split
    extra = {}
    if cfg.shift.target_distortion > 0 or args.model:
        cfg, found = _for_model(args)
        extra = {"search": found.to_dict()} if found is not None else {}
    source = build_source(cfg.data, split)
    root = Path(cfg.data.root) if cfg.data.root and cfg.data.dataset != "synthetic" else None
    out = claim(check_path(args.out, "--out"))
    s = cfg.shift
    r = write_shifted(source, root, out, split, s.filter, s.severity, s.seed, args.backend, cfg.data.num_workers,
                      units=s.units, base_size=cfg.data.base_size, extra=extra)
    print(f"wrote {r['images']} shifted images ({s.filter}, severity {s.severity:g}, {s.units} units, length "
          f"factor {r['scale']}) to {args.out}")
    if r.get("repaired"):
        print(f"rewrote {r['repaired']} broken file(s) left by an earlier run")
    return 0


def _for_model(args: argparse.Namespace) -> tuple[RunConfig, SearchResult | None]:
    """--model H1: the model's data settings under the flags (the scale it was trained at, so a severity's
    lengths are pixels of the images H1 sees); with --target-distortion D, at the severity where the model's
    distortion on D1 train images is D (severity_search.py), where it landed printed in one line."""
    from segadapt.data import build_source
    from segadapt.distortion import searched_severity
    from segadapt.runtime import select_device

    if not args.model:
        raise SegadaptError("--target-distortion: give the model whose distortion it is with --model RUN")
    model, meta = load_model_arg(args.model, "--model", args.model_weights, args.model_kwargs, trusted_factories(args))
    cfg = model_config(args, meta, args.model)
    target = cfg.shift.target_distortion
    if target <= 0:
        return cfg, None
    if args.severity is not None:
        raise SegadaptError("--severity and --target-distortion both choose the severity; give one")
    same_classes(args.model, meta, cfg, build_source(cfg.data, cfg.data.train_split).info.num_classes)
    device = select_device(cfg.train.device)
    found = searched_severity(model.to(device), cfg, device)
    print(f"severity search ({cfg.shift.filter}, {found.info['images']} {found.info['split']} images): "
          f"{'landed' if found.reached else 'NOT reached'}: {found.message}")
    return cfg, found


def _shift_raster(args: argparse.Namespace, cfg: RunConfig) -> int:
    """One GeoTIFF of any size through the native filter, strip by strip (shifts/raster.py)."""
    from segadapt.shifts.raster import shift_raster

    s = cfg.shift
    if args.backend != "native":
        raise SegadaptError("--raster runs the native filters only; drop --backend gegl")
    if s.target_distortion > 0 or args.model:
        raise SegadaptError("--model and --target-distortion work on a dataset's train split; with --raster give "
                            "--severity (and --set data.base_size=N for lengths in network pixels)")
    out = check_path(args.out, "--out")
    if out.is_dir():
        raise SegadaptError(f"--out {args.out}: is a folder; with --raster give the path of the .tif to write")
    r = shift_raster(check_path(args.raster, "--raster"), out, s.filter, s.severity, s.seed, units=s.units,
                     base_size=cfg.data.base_size)
    width, height = r["size"]
    print(f"wrote {out} ({s.filter}, severity {s.severity}; {width}x{height} in {r['strips']} strips, CRS and "
          f"transform of {args.raster})")
    return 0


def cmd_distortion(args: argparse.Namespace) -> int:
    """The study's distortion of a shift for a model: how much accuracy and mIoU fall from D1 to D2."""
    from segadapt.checkpoint import write_json_atomic
    from segadapt.distortion import measure_distortion
    from segadapt.runtime import select_device

    json_out(args.out)
    model, meta = load_model_arg(args.model, "--model", args.model_weights, args.model_kwargs, trusted_factories(args))
    cfg = model_config(args, meta, args.model)
    device = select_device(cfg.train.device)
    split = args.split or cfg.data.val_split
    if cfg.shift.target_distortion > 0 and (cfg.shift.d2_dir or args.severity is not None):
        raise SegadaptError("--target-distortion searches the severity; drop --severity / --d2-dir")
    r = measure_distortion(model, cfg, device, split, model_classes=meta["num_classes"], name=args.model)
    if r.search is not None:
        print(f"severity search ({r.search.info['images']} {r.search.info['split']} images): "
              f"{'landed' if r.search.reached else 'NOT reached'}: {r.search.message}")
    print(f"D1 ({cfg.data.dataset}/{split}): mean acc {r.d1.mean_acc:.4f}  mIoU {r.d1.miou:.4f}")
    print(f"D2 ({r.filter}, severity {r.severity}): mean acc {r.d2.mean_acc:.4f}  mIoU {r.d2.miou:.4f}")
    print(f"distortion = 0.5*(|acc1-acc2|/acc1 + |mIoU1-mIoU2|/mIoU1) = {r.distortion:.4f}")
    if args.out:
        write_json_atomic(check_path(args.out, "--out"), r.to_dict(args.model))
    return 0
