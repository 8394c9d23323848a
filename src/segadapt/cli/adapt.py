"""`segadapt adapt`: the method, H1 adapted to D2 without D2 labels (by the model's default objective unless told)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segadapt.adapt_settings import adapt_base
from segadapt.cli.common import (
    TRAINING,
    announce,
    config_args,
    is_model_file,
    model_config,
    output_dir,
    quiet_arg,
    resolve_config,
    resumed,
)
from segadapt.config import RunConfig
from segadapt.errors import SegadaptError
from segadapt.paths import check_path

D2_FLAGS = ("filter", "severity", "d2_dir", "pairs", "d1_raster", "d2_raster", "label_raster", "align")
H1_FLAGS = ("h1", "h1_weights", "h1_kwargs", "trust_factory")  # H1 in any form models/loading.py reads
OBJECTIVE_FLAGS = ("objective", "weighting", "select", "d2_labels")
FLAGS = (*H1_FLAGS, "layers", "weights", *OBJECTIVE_FLAGS, "norm", *D2_FLAGS,
         *[f for f in TRAINING if f not in ("width", "arch", "init_weights")])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt H1 to D2 without D2 labels (by the model's default objective)")
    config_args(p, FLAGS, helps={"h1": "source model H1 (required unless --resume): a segadapt run directory or "
                                       "model .safetensors, a transformers save_pretrained directory, or a Python "
                                       "factory package.module:function (with --h1-weights, --h1-kwargs)",
                                 "filter": "make D2 on the fly with this filter: photocopy | ripple | cubism | "
                                           "misalign, or a composition such as photocopy+misalign"})
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", metavar="RUN", help="continue the adaptation in this directory from its last checkpoint")
    quiet_arg(p)
    p.set_defaults(func=cmd_adapt)


def cmd_adapt(args: argparse.Namespace) -> int:
    from segadapt.adapt import adapt, load_h1
    from segadapt.checkpoint import load_model_file
    from segadapt.data.d2 import training_pairs
    from segadapt.run_dir import refuse_overwrite

    teacher: tuple[Any, dict[str, Any]] | None = None
    if args.resume:
        out, again = resumed(args, "adapt", ("h1", "h1_weights", "h1_kwargs", "layers", "weights", *OBJECTIVE_FLAGS,
                                             "norm", *D2_FLAGS, "out", "preset"))
        if again is None:
            return 0
        cfg = again
    else:
        if not args.h1:
            raise SegadaptError("--h1 RUN is required (the source model), or --resume RUN to continue an adaptation")
        if is_model_file(args.h1):  # a segadapt run or file: its metadata is enough here, adapt() loads it
            _, meta = load_model_file(check_path(args.h1, "--h1"))
        else:  # a transformers directory or a factory: loaded (and checked) once, before any output is made
            first = resolve_config(args)  # for --h1-weights, --h1-kwargs and --trust-factory as --set may give them
            teacher = load_h1(first, "cpu")
            meta = teacher[1]
        cfg = model_config(args, meta, args.h1, lambda dataset: adapt_base(meta, args.h1, dataset))

    pairs = training_pairs(cfg)
    if not args.resume:
        out = output_dir(args.out, cfg.out_dir, "adapt")
        refuse_overwrite(out)
    announce(cfg, args, Path(out))
    h1, h1_meta = teacher if teacher is not None else (None, None)
    result = adapt(cfg, Path(out), pairs, teacher=h1, h1_meta=h1_meta, resume=bool(args.resume))
    if result["final_loss"] is not None and list(result["objective"]) == ["features"]:
        print(f"regression loss (last batch) {result['final_loss']:.5g}, per layer {result['final_layer_loss']}")
    elif result["final_loss"] is not None:
        print(f"adaptation loss (last batch) {result['final_loss']:.5g}, per term {result['final_term_loss']}")
    print_models(out)
    if result["selected_step"] is not None:
        what = "choice by the D2 labels" if result["select"] == "labels" else "label-free choice"
        print(f"{what}: {out / 'model_selected.safetensors'} (step {result['selected_step']}, "
              f"{SELECTED_BY[result['select']]}; selection.csv)")
    weights = f" --h1-weights {cfg.adapt.h1_weights}" if cfg.adapt.h1_weights else ""
    print(f"next: {score_hint(cfg, out)}; look: segadapt viz features --h1 {cfg.adapt.h1}{weights} --h2 {out} "
          f"--out {out / 'viz'} ...")
    return 0


SELECTED_BY = {"holdout_loss": "lowest held-out loss", "agreement": "highest agreement with H1's labels",
               "entropy": "lowest prediction entropy", "labels": "highest mIoU on the labelled D2 images"}


def print_models(out: Path, what: str = "") -> None:
    """Where the adapted model is, in segadapt's format and in H1's own (transformers, factory weights)."""
    print(f"adapted model{what}: {out / 'model.safetensors'}")
    for native in ("hf_model", "factory_weights.safetensors"):
        if (out / native).exists():
            print(f"  and in H1's own format: {out / native}")


def score_hint(cfg: RunConfig, out: Path) -> str:
    """How to score H2 on D2, which has the labels only where D2 is D1 shifted by a filter."""
    from segadapt.data import d2

    where = d2.kind(cfg, cfg.data.val_split)
    if where == "raster":
        if not cfg.shift.label_raster:
            return "D2 has no labels here (pass --label-raster to score); compare H1 and H2 by eye"
        return (f"segadapt evaluate --model {out} --d2-raster {cfg.shift.d2_raster} --label-raster "
                f"{cfg.shift.label_raster} (and --d1-raster {cfg.shift.d1_raster} for D1)")
    if where == "shifted":  # a `segadapt shift` output
        if cfg.data.dataset == "synthetic":  # generated data has no root to point evaluate at
            return (f"segadapt distortion --model {out} --filter {cfg.shift.filter} --severity "
                    f"{cfg.shift.severity} --d2-dir {cfg.shift.d2_dir} (scores D1 and that D2)")
        return (f"segadapt evaluate --model {out} --dataset {cfg.data.dataset} --root {cfg.shift.d2_dir} "
                f"--split {cfg.data.val_split}")
    if where == "filter":
        seed = f" --seed {cfg.shift.seed}" if cfg.shift.seed else ""
        return (f"segadapt distortion --model {out} --filter {cfg.shift.filter} --severity {cfg.shift.severity}"
                f"{seed} (scores D1 and D2)")
    return "D2 has no labels here; compare H1 and H2 by eye with segadapt viz overlays"
