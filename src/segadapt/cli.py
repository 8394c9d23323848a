"""Command line: argument parsing and dispatch only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from segadapt import __version__
from segadapt.config import RunConfig, dumps_toml, load_toml, merge, parse_override, preset, read_toml
from segadapt.errors import SegadaptError

# CLI flag -> config key; flags are shortcuts for the most used --set overrides.
SHORTCUTS = {
    "dataset": "data.dataset",
    "root": "data.root",
    "iterations": "train.iterations",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "width": "model.width",
    "arch": "model.arch",
    "init_weights": "model.init_weights",
    "device": "train.device",
    "seed": "train.seed",
    "threads": "train.threads",
    "time_budget": "train.time_budget_s",
    "workers": "data.num_workers",
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (later ones win: preset < --config < flags < --set)")
    g.add_argument("--preset", help="start from a preset: voc (the study), synthetic, camvid, demo")
    g.add_argument("--config", help="TOML file with [model], [data], [train] tables")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set train.lr=0.01")
    g.add_argument("--dataset", help="synthetic | camvid | voc | folder")
    g.add_argument("--root", help="dataset root directory")
    g.add_argument("--iterations", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--width", type=float, help="VGG channel multiplier (1.0 = paper, 0.25 = CPU)")
    g.add_argument("--arch", help="vgg16_deeplab | pixel")
    g.add_argument("--init-weights", help="torchvision-format VGG-16 ImageNet state dict (.pth or .safetensors)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--seed", type=int)
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--time-budget", type=float, help="stop training after this many seconds")
    g.add_argument("--workers", type=int, help="data-loader worker processes")


def resolve_config(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """preset (or `base`, e.g. a run's saved config) < --config file < shortcut flags < --set."""
    cfg = preset(args.preset) if args.preset else base or preset("synthetic")
    if args.config:
        cfg = merge(cfg, read_toml(args.config), args.config)
    overrides: dict[str, Any] = {}
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            section, name = key.split(".")
            overrides.setdefault(section, {})[name] = value
    for text in args.set:
        _deep_update(overrides, parse_override(text))
    return merge(cfg, overrides, "command line") if overrides else cfg


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict):
            _deep_update(dst.setdefault(k, {}), v)
        else:
            dst[k] = v


# --- commands ---------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from segadapt.runtime import new_run_dir
    from segadapt.train import train

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise SegadaptError(f"{run_dir}: not a run directory (no config.toml); pass the run folder to resume")
        cfg = resolve_config(args, load_toml(run_dir / "config.toml"))
    else:
        cfg = resolve_config(args)
        if args.out:
            run_dir = Path(args.out)
            if (run_dir / "model.safetensors").exists() or (run_dir / "checkpoints").exists():
                raise SegadaptError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
        else:
            run_dir = new_run_dir(cfg.out_dir, cfg.name)
    print(dumps_toml(cfg))
    metrics = train(cfg, run_dir, resume=bool(args.resume))
    v = metrics["val"]
    print(f"val mIoU {v['miou']:.4f}  mean acc {v['mean_acc']:.4f}  pixel acc {v['pixel_acc']:.4f}")
    print(f"run: {run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from segadapt.checkpoint import write_json_atomic
    from segadapt.config import DataConfig, from_dict
    from segadapt.data import build_dataset
    from segadapt.evaluate import evaluate
    from segadapt.runtime import environment, select_device
    from segadapt.train import load_model

    device = select_device(args.device or "auto")
    model, meta = load_model(args.model, device)
    trained = RunConfig(data=from_dict(DataConfig, meta["config"]["data"], f"{args.model} metadata"))
    cfg = resolve_config(args, trained) if (args.config or args.set or args.dataset or args.root) else trained
    split = args.split or cfg.data.val_split
    dataset = build_dataset(cfg.data, split, train=False)
    if dataset.info.num_classes != meta["num_classes"]:
        raise SegadaptError(
            f"{args.model}: model predicts {meta['num_classes']} classes but {cfg.data.dataset} has "
            f"{dataset.info.num_classes}; evaluate on a dataset with the same classes"
        )
    s, conf = evaluate(model, dataset, dataset.info.num_classes, dataset.info.ignore_index, device)
    result = {
        "model": str(args.model),
        "dataset": cfg.data.dataset,
        "root": cfg.data.root,
        "split": split,
        "images": len(dataset),
        **s.to_dict(),
        "class_names": list(dataset.info.class_names),
        "confusion": conf.tolist(),
        "environment": environment(),
    }
    out = Path(args.out) if args.out else _default_eval_path(args.model, cfg.data.dataset, split)
    write_json_atomic(out, result)
    print(f"{cfg.data.dataset}/{split}: mIoU {s.miou:.4f}  mean acc {s.mean_acc:.4f}  pixel acc {s.pixel_acc:.4f}")
    for name, iou in zip(dataset.info.class_names, s.class_iou):
        print(f"  {name:<14} IoU {iou:.4f}")
    print(f"wrote {out}")
    return 0


def _default_eval_path(model: str, dataset: str, split: str) -> Path:
    p = Path(model)
    folder = p if p.is_dir() else p.parent
    return folder / f"eval_{dataset}_{split}.json"


def cmd_demo(args: argparse.Namespace) -> int:
    from segadapt.runtime import new_run_dir

    cfg = preset("demo")
    cfg.out_dir = args.out_dir
    if args.device:
        cfg.train.device = args.device
    return _sweep(cfg, new_run_dir(cfg.out_dir, cfg.name))


def cmd_experiment(args: argparse.Namespace) -> int:
    from segadapt.runtime import new_run_dir

    cfg = resolve_config(args)
    return _sweep(cfg, Path(args.out) if args.out else new_run_dir(cfg.out_dir, f"{cfg.name}-experiment"))


def _sweep(cfg: RunConfig, out: Path) -> int:
    from segadapt.experiment import run_experiment

    print(dumps_toml(cfg))
    run_experiment(cfg, out)
    print((out / "results.md").read_text())
    print(f"report: {out / 'results.md'}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from segadapt.adapt import adapt
    from segadapt.config import DataConfig, from_dict
    from segadapt.data import build_source, make_transform
    from segadapt.data.pairs import PairedDataset, csv_pairs, image_folder
    from segadapt.experiment import d2_source
    from segadapt.runtime import new_run_dir
    from segadapt.train import load_model

    _, meta = load_model(args.h1)
    trained = RunConfig(data=from_dict(DataConfig, meta["config"]["data"], f"{args.h1} metadata"))
    trained.model.width, trained.model.arch = meta["width"], meta["arch"]
    cfg = resolve_config(args, trained)
    cfg.adapt.h1 = args.h1
    if args.layers:
        cfg.adapt.layers = [x.strip() for x in args.layers.split(",") if x.strip()]
    if args.weights:
        cfg.adapt.weights = [float(x) for x in args.weights.split(",")]
    for flag, key in (("filter", "filter"), ("severity", "severity"), ("d2_dir", "d2_dir"), ("pairs", "pairs_csv")):
        if getattr(args, flag) is not None:
            setattr(cfg.shift, key, getattr(args, flag))

    split = cfg.data.train_split
    if cfg.shift.pairs_csv:
        d1, d2 = csv_pairs(Path(cfg.shift.pairs_csv))
    else:
        d1 = build_source(cfg.data, split)
        if cfg.shift.d2_dir and not (Path(cfg.shift.d2_dir) / split).is_dir():
            d2 = image_folder(Path(cfg.shift.d2_dir))  # a plain folder of unlabelled D2 images
        else:
            d2 = d2_source(cfg, split, cfg.shift, cfg.shift.filter)
    pairs = PairedDataset(d1, d2, make_transform(cfg.data, True, cfg.data.ignore_index), cfg.shift.photometric)
    out = Path(args.out) if args.out else new_run_dir(cfg.out_dir, "adapt")
    print(dumps_toml(cfg))
    result = adapt(cfg, out, pairs)
    print(f"final regression loss {result['final_loss']:.5g} per layer {result['final_layer_loss']}")
    print(f"adapted model: {out / 'model.safetensors'} (evaluate with: segadapt evaluate --model {out})")
    return 0


def cmd_distortion(args: argparse.Namespace) -> int:
    """The study's distortion of a shift for a model: how much accuracy and mIoU fall from D1 to D2."""
    from segadapt.checkpoint import write_json_atomic
    from segadapt.config import DataConfig, from_dict
    from segadapt.data import build_source
    from segadapt.experiment import d2_source, score
    from segadapt.metrics import distortion
    from segadapt.runtime import select_device
    from segadapt.train import load_model

    device = select_device(args.device or "auto")
    model, meta = load_model(args.model, device)
    trained = RunConfig(data=from_dict(DataConfig, meta["config"]["data"], f"{args.model} metadata"))
    cfg = resolve_config(args, trained)
    cfg.shift.filter = args.filter
    if args.severity is not None:
        cfg.shift.severity = args.severity
    split = args.split or cfg.data.val_split
    s1 = score(model, build_source(cfg.data, split), cfg, device)
    s2 = score(model, d2_source(cfg, split, cfg.shift, args.filter), cfg, device)
    d = distortion(s1.mean_acc, s1.miou, s2.mean_acc, s2.miou)
    result = {"model": str(args.model), "filter": args.filter, "severity": cfg.shift.severity, "split": split,
              "d1": {"mean_acc": s1.mean_acc, "miou": s1.miou}, "d2": {"mean_acc": s2.mean_acc, "miou": s2.miou},
              "distortion": d}
    print(f"D1 ({cfg.data.dataset}/{split}): mean acc {s1.mean_acc:.4f}  mIoU {s1.miou:.4f}")
    print(f"D2 ({args.filter}, severity {cfg.shift.severity}): mean acc {s2.mean_acc:.4f}  mIoU {s2.miou:.4f}")
    print(f"distortion = 0.5*(|acc1-acc2|/acc1 + |mIoU1-mIoU2|/mIoU1) = {d:.4f}")
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


def cmd_shift(args: argparse.Namespace) -> int:
    from segadapt.data import build_source
    from segadapt.shifts.write import write_shifted

    cfg = resolve_config(args)
    split = args.split or cfg.data.train_split
    source = build_source(cfg.data, split)
    root = Path(cfg.data.root) if cfg.data.root and cfg.data.dataset != "synthetic" else None
    severity = args.severity if args.severity is not None else cfg.shift.severity
    r = write_shifted(source, root, Path(args.out), split, args.filter, severity, cfg.shift.seed, args.backend,
                      args.workers or 0)
    print(f"wrote {r['images']} shifted images ({args.filter}, severity {severity}) to {args.out}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dumps_toml(resolve_config(args)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segadapt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"segadapt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="supervised training (H1) with labels")
    _add_config_args(p)
    p.add_argument("--out", help="run directory (default: <out_dir>/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a model: pixel acc, mean acc, per-class IoU, mIoU")
    p.add_argument("--model", required=True, help="run directory or model .safetensors")
    p.add_argument("--split", help="split to evaluate (default: the config's val split)")
    p.add_argument("--out", help="JSON output (default: <run>/eval_<dataset>_<split>.json)")
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("adapt", help="adapt H1 to D2 by feature-map regression (no D2 labels)")
    _add_config_args(p)
    p.add_argument("--h1", required=True, help="source model: a training run directory or model .safetensors")
    p.add_argument("--layers", help="taps to regress, comma-separated (pool1..pool5, fc6, fc7) or a preset: "
                   "pool1..pool5, all (= all_inc), all_inc, all_dec")
    p.add_argument("--weights", help="one weight per layer, comma-separated (default 1.0 each)")
    p.add_argument("--filter", help="make D2 on the fly with this filter: photocopy | ripple | cubism")
    p.add_argument("--severity", type=float, help="filter severity 0..1")
    p.add_argument("--d2-dir", help="D2 images: a `segadapt shift` output or a folder, matched to D1 by file stem")
    p.add_argument("--pairs", help="CSV with columns x1,x2 listing image pairs")
    p.add_argument("--out", help="output directory")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("experiment", help="the study's sweep: H1, distortion, B0/B1/B2, regression presets")
    _add_config_args(p)
    p.add_argument("--out", help="output directory")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("demo", help="the sweep on the embedded synthetic dataset at CPU scale (minutes)")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--device")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("distortion", help="the study's distortion of a shift: D1 vs D2 accuracy and mIoU of a model")
    _add_config_args(p)
    p.add_argument("--model", required=True, help="run directory or model .safetensors")
    p.add_argument("--filter", required=True, help="photocopy | ripple | cubism")
    p.add_argument("--severity", type=float, help="filter severity 0..1 (default: shift.severity)")
    p.add_argument("--split", help="split to score (default: the val split)")
    p.add_argument("--out", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_distortion)

    p = sub.add_parser("shift", help="write a shifted copy D2 of a dataset split (same stems and layout)")
    _add_config_args(p)
    p.add_argument("--filter", required=True, help="photocopy | ripple | cubism")
    p.add_argument("--severity", type=float, help="0..1 (default: shift.severity)")
    p.add_argument("--split", help="split to shift (default: the train split)")
    p.add_argument("--backend", default="native", choices=["native", "gegl"], help="native, or the gegl command")
    p.add_argument("--out", required=True, help="output dataset root")
    p.set_defaults(func=cmd_shift)

    p = sub.add_parser("config", help="print the resolved configuration as TOML")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SegadaptError as e:
        if args.debug:
            raise
        print(f"segadapt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

