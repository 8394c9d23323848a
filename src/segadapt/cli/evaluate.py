"""`segadapt evaluate`: score a model on a labelled split (pixel acc, mean acc, per-class IoU, mIoU)."""

from __future__ import annotations

import argparse
from pathlib import Path

from segadapt.cli.common import (
    DATA,
    MODEL_FORMS,
    config_args,
    is_factory,
    json_out,
    load_model_arg,
    model_args,
    model_config,
    precision_arg,
    same_classes,
    trained_config,
    trusted_factories,
)
from segadapt.errors import SegadaptError
from segadapt.paths import check_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a model: pixel acc, mean acc, per-class IoU, mIoU")
    p.add_argument("--model", required=True, help=f"the model: {MODEL_FORMS}")
    model_args(p)
    p.add_argument("--split", help="split to evaluate (default: the config's val split)")
    precision_arg(p)
    p.add_argument("--out", help="JSON output (default: <run>/eval_<dataset>_<split>.json; scored at another "
                   "--root: eval_<dataset>-<root name>_<split>.json)")
    config_args(p, (*DATA, "device", "d1_raster", "d2_raster", "label_raster"), presets=False,
                helps={"d2_raster": "score on this mosaic's tiles (resampled onto the label raster's grid)",
                       "d1_raster": "score on this mosaic's tiles (when no --d2-raster)",
                       "label_raster": "labels of the mosaic to score, on the ground (one band of class indices)"})
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from segadapt.checkpoint import write_json_atomic
    from segadapt.evaluate import evaluate, inference_precision, labelled_set
    from segadapt.runtime import environment, select_device

    json_out(args.out)
    model, meta = load_model_arg(args.model, "--model", args.model_weights, args.model_kwargs, trusted_factories(args))
    cfg = model_config(args, meta, args.model)
    trained = trained_config(meta, args.model, cfg.data.dataset)
    if cfg.data.dataset == "synthetic" and args.root:
        raise SegadaptError("--root: the synthetic scenes are generated, not read; to score a shifted copy use "
                            "segadapt distortion --model MODEL --filter F --d2-dir DIR")
    device = select_device(cfg.train.device)
    scored = labelled_set(cfg, args.split or cfg.data.val_split)
    dataset, split, coverage = scored.dataset, scored.split, scored.coverage
    cfg.data.dataset = scored.name
    same_classes(args.model, meta, cfg, dataset.info.num_classes)
    model = model.to(device)
    choice = inference_precision(model, dataset, device, args.precision)
    if choice.precision != "fp32" or choice.seconds:
        print(choice.line())
    s, conf = evaluate(model, dataset, dataset.info.num_classes, dataset.info.ignore_index, device,
                       precision=choice.precision)
    result = {
        "model": str(args.model),
        "dataset": cfg.data.dataset,
        "root": cfg.data.root,
        "split": split,
        "images": len(dataset),
        **({"raster_coverage": round(coverage, 4)} if coverage is not None else {}),
        **s.to_dict(),
        "class_names": list(dataset.info.class_names),
        "confusion": conf.tolist(),
        "precision": choice.to_dict(),
        "environment": environment(),
    }
    root = cfg.data.root if cfg.data.root != trained.data.root else ""  # scored on other data (a D2)
    where_to = (args.model_weights or ".") if is_factory(args.model) else args.model  # a spec is not a folder
    out = check_path(args.out, "--out") if args.out else default_eval_path(where_to, cfg.data.dataset, split, root)
    write_json_atomic(out, result)
    where = f" at {cfg.data.root}" if cfg.data.root else ""
    print(f"{cfg.data.dataset}/{split}{where}: mIoU {s.miou:.4f}  mean acc {s.mean_acc:.4f}  "
          f"pixel acc {s.pixel_acc:.4f}")
    if coverage is not None and coverage < 0.995:
        print(f"  scored where {cfg.shift.d2_raster or cfg.shift.d1_raster} has data: {coverage:.1%} of the ground "
              f"of {cfg.shift.label_raster} (raster_coverage)")
    for name, iou in zip(dataset.info.class_names, s.class_iou):
        print(f"  {name:<14} IoU {iou:.4f}")
    print(f"wrote {out}")
    return 0


def default_eval_path(model: str, dataset: str, split: str, root: str = "") -> Path:
    """eval_<dataset>_<split>.json beside the model (a factory's: beside its weights, or here); data from
    another root (a D2) gets its own file."""
    p = Path(model)
    folder = p if p.is_dir() else p.parent
    tag = f"{dataset}-{Path(root).name}" if root else dataset
    return folder / f"eval_{tag}_{split}.json"
