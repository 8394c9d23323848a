"""Command line: argument parsing and dispatch only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from segadapt import __version__
from segadapt.config import (
    RunConfig,
    dumps_toml,
    load_toml,
    merge,
    parse_override,
    preset,
    read_toml,
    to_dict,
)
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


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """What a command that trains nothing needs: where the data is and which device; the model file brings
    the rest."""
    g = p.add_argument_group("data and device (the model's own settings unless given)")
    g.add_argument("--config", help="TOML file; its [data] table is what matters here")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set data.base_size=240")
    g.add_argument("--dataset", help="synthetic | camvid | voc | folder")
    g.add_argument("--root", help="dataset root directory")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--seed", type=int)
    p.set_defaults(preset=None)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (later ones win: preset < --config < flags < --set)")
    g.add_argument("--preset", help="start from a preset: voc (the study), synthetic, camvid, demo")
    g.add_argument("--config", help="TOML file with any of the [model], [data], [train], [shift], [adapt], "
                                    "[experiment] tables")
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


# --- no partial output -----------------------------------------------------------------------------
# Output directories the running command writes into: (path, its top-level names before the command or None
# if the command created it, ancestors the command created). A command that fails with a SegadaptError
# removes what it added there, so a failed run leaves no half-written folder that looks like a result.
_CLAIMS: list[tuple[Path, frozenset[str] | None, list[Path]]] = []


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, innermost first."""
    return [p for p in (path, *path.parents) if not p.exists()]


def _claim(path: Path) -> Path:
    """Note an output directory before the command writes into it."""
    before = frozenset(c.name for c in path.iterdir()) if path.is_dir() else None
    _CLAIMS.append((path, before, _missing_dirs(path)[1:]))
    return path


def _created(make: Callable[[str, str], Path], out_dir: str, name: str) -> Path:
    """A fresh run directory from `make` (new_run_dir), noted as created by this command."""
    missing = _missing_dirs(Path(out_dir))
    path = make(out_dir, name)
    _CLAIMS.append((path, None, missing))
    return path


def _holds_weights(path: Path) -> bool:
    """A model or resume checkpoint (any .safetensors) is worth keeping even from a failed run."""
    if path.is_file():
        return path.suffix == ".safetensors"
    return path.is_dir() and next(path.rglob("*.safetensors"), None) is not None


def _discard_partial_outputs() -> None:
    """Remove what a failed command added to its output directories, unless it saved weights there.

    A directory that existed before keeps its old entries; resumed runs are never claimed, and a run that
    saved a checkpoint (e.g. interrupted, or a loss that blew up after some steps) keeps everything.
    """
    from segadapt import distributed

    if not distributed.is_main():
        return
    while _CLAIMS:
        path, before, created = _CLAIMS.pop()
        if not path.is_dir() or path.is_symlink():
            continue
        added = [path] if before is None else [c for c in path.iterdir() if c.name not in before]
        if any(_holds_weights(p) for p in added):
            continue
        for p in added:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        for d in created:  # empty parents that the command created, innermost first
            try:
                d.rmdir()
            except OSError:
                break


def _one_line(e: BaseException) -> str:
    """The message alone: a DataLoader worker re-raises an error with its traceback folded into the text."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(e).__name__
    prefix = f"{type(e).__module__}.{type(e).__qualname__}: "
    return lines[-1][len(prefix):] if lines[-1].startswith(prefix) else " ".join(lines)


# --- commands ---------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from segadapt.runtime import new_run_dir
    from segadapt.train import train

    if args.resume:
        run_dir = Path(args.resume)
        resumed = _resumed_config(args, run_dir, "train", ("preset", "out"))
        if resumed is None:
            return 0
        cfg = resumed
    else:
        cfg = resolve_config(args)
        if args.out:
            run_dir = _claim(Path(args.out))
            if (run_dir / "model.safetensors").exists() or (run_dir / "checkpoints").exists():
                raise SegadaptError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
        else:
            run_dir = _created(new_run_dir, cfg.out_dir, cfg.name)
    print(dumps_toml(cfg))
    metrics = train(cfg, run_dir, resume=bool(args.resume))
    v = metrics["val"]
    print(f"val mIoU {v['miou']:.4f}  mean acc {v['mean_acc']:.4f}  pixel acc {v['pixel_acc']:.4f}")
    print(f"run: {run_dir}")
    return 0


# what a resumed run may change: how long and where it runs, not what it learns (the checkpoint's optimizer
# and RNG state would silently overrule a new lr, momentum, batch or seed)
RESUMABLE = {"name", "out_dir", "data.root", "data.num_workers", "train.iterations", "train.time_budget_s",
             "train.checkpoint_every", "train.log_every", "train.eval_every", "train.device", "train.threads"}


def _resumed_config(args: argparse.Namespace, run_dir: Path, command: str, fixed: Sequence[str]) -> RunConfig | None:
    """The config `segadapt <command> --resume RUN` continues with, or None when the run had already finished.
    Flags in `fixed` would change the run's own settings (or directory) and are refused."""
    given = [f"--{k.replace('_', '-')}" for k in fixed if getattr(args, k, None)]
    if given:
        raise SegadaptError(f"--resume {run_dir} continues the run in its own directory with its own config; "
                            f"drop {', '.join(given)}")
    if not (run_dir / "config.toml").is_file():
        raise SegadaptError(f"{run_dir}: not a run directory (no config.toml); pass the run folder to resume")
    other = "adapt" if command == "train" else "train"
    if _run_kind(run_dir) == other:
        kind = "an adaptation" if other == "adapt" else "a training"
        raise SegadaptError(f"{run_dir}: {kind} run; continue it with segadapt {other} --resume {run_dir}")
    saved = load_toml(run_dir / "config.toml")
    cfg = resolve_config(args, saved)
    _refuse_resume_changes(run_dir, saved, cfg)
    return None if _finished(run_dir, cfg) else cfg


def _run_kind(run_dir: Path) -> str:
    """"train" or "adapt", told by log.csv's header (written when a run starts); "" when there is none."""
    try:
        header = (run_dir / "log.csv").read_text().split("\n", 1)[0].split(",")
    except OSError:
        return ""
    return "train" if "val_miou" in header else "adapt" if any(h.startswith("loss_") for h in header) else ""


def _finished(run_dir: Path, cfg: RunConfig) -> bool:
    """A resume whose run already reached train.iterations: say so instead of redoing the final step's work;
    refuse fewer iterations than the checkpoint has done."""
    from segadapt.checkpoint import latest_checkpoint, step_of

    last = latest_checkpoint(run_dir)
    step = step_of(last) if last is not None else 0
    if step > cfg.train.iterations:
        raise SegadaptError(f"{run_dir}: already at step {step}; --iterations {cfg.train.iterations} would "
                            f"go back. Give more iterations to extend it")
    if step == cfg.train.iterations and (run_dir / "model.safetensors").is_file():
        print(f"{run_dir}: already finished at step {step}; pass --iterations N (> {step}) to extend it")
        return True
    return False


def _refuse_resume_changes(run_dir: Path, saved: RunConfig, cfg: RunConfig) -> None:
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(to_dict(saved)), flat(to_dict(cfg))
    changed = [f"{k} {old[k]!r} -> {new[k]!r}" for k in new if old.get(k) != new[k] and k not in RESUMABLE]
    if changed:
        raise SegadaptError(f"{run_dir}/config.toml: a resumed run keeps what it learns with; these differ: "
                            f"{'; '.join(changed)}. Start a new run (--out) to change them")


def _json_out(out: str | None) -> None:
    """Check a JSON --out path before the work that fills it, not after."""
    if out and Path(out).is_dir():
        raise SegadaptError(f"--out {out}: is a folder; give the path of a .json file to write")


def _numbers(flag: str, text: str, kind: type) -> list[Any]:
    """A comma-separated list of numbers from a flag, or one line saying what was expected."""
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        example = "0,5,9" if kind is int else "0.2,0.4"
        raise SegadaptError(f"{flag} {text}: expected {kind.__name__} numbers separated by commas, "
                            f"e.g. {example}") from None


def _same_classes(path: str | Path, meta: dict[str, Any], cfg: RunConfig, num_classes: int) -> None:
    if meta["num_classes"] != num_classes:
        raise SegadaptError(f"{path}: model predicts {meta['num_classes']} classes but {cfg.data.dataset} has "
                            f"{num_classes}; evaluate on a dataset with the same classes")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from segadapt.checkpoint import load_model, write_json_atomic
    from segadapt.data import build_dataset
    from segadapt.evaluate import evaluate
    from segadapt.runtime import environment, select_device

    _json_out(args.out)
    device = select_device(args.device or "auto")
    model, meta = load_model(args.model, device)
    trained = _trained_config(meta, args.model)
    cfg = resolve_config(args, trained) if (args.config or args.set or args.dataset or args.root) else trained
    cfg = _other_dataset(cfg, meta)
    if cfg.data.dataset == "synthetic" and args.root:
        raise SegadaptError("--root: the synthetic scenes are generated, not read; to score a shifted copy use "
                            "segadapt distortion --model MODEL --filter F --set shift.d2_dir=DIR")
    split = args.split or cfg.data.val_split
    dataset = build_dataset(cfg.data, split, train=False)
    _same_classes(args.model, meta, cfg, dataset.info.num_classes)
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
    root = cfg.data.root if cfg.data.root != trained.data.root else ""  # scored on other data (a D2)
    out = Path(args.out) if args.out else _default_eval_path(args.model, cfg.data.dataset, split, root)
    write_json_atomic(out, result)
    where = f" at {cfg.data.root}" if cfg.data.root else ""
    print(f"{cfg.data.dataset}/{split}{where}: mIoU {s.miou:.4f}  mean acc {s.mean_acc:.4f}  "
          f"pixel acc {s.pixel_acc:.4f}")
    for name, iou in zip(dataset.info.class_names, s.class_iou):
        print(f"  {name:<14} IoU {iou:.4f}")
    print(f"wrote {out}")
    return 0


def _default_eval_path(model: str, dataset: str, split: str, root: str = "") -> Path:
    """eval_<dataset>_<split>.json beside the model; data from another root (a D2) gets its own file."""
    p = Path(model)
    folder = p if p.is_dir() else p.parent
    tag = f"{dataset}-{Path(root).name}" if root else dataset
    return folder / f"eval_{tag}_{split}.json"


def cmd_demo(args: argparse.Namespace) -> int:
    from segadapt.runtime import new_run_dir

    cfg = preset("demo")
    cfg.out_dir = args.out_dir
    if args.device:
        cfg.train.device = args.device
    return _sweep(cfg, _created(new_run_dir, cfg.out_dir, cfg.name))


def cmd_experiment(args: argparse.Namespace) -> int:
    from segadapt.runtime import new_run_dir

    cfg = resolve_config(args)
    out = _claim(Path(args.out)) if args.out else _created(new_run_dir, cfg.out_dir, f"{cfg.name}-experiment")
    return _sweep(cfg, out)


def _sweep(cfg: RunConfig, out: Path) -> int:
    from segadapt.experiment import run_experiment

    print(dumps_toml(cfg))
    results = run_experiment(cfg, out)
    print((out / "results.md").read_text())
    print(f"report: {results.get('report') or out / 'results.md'}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from segadapt.adapt import adapt
    from segadapt.checkpoint import load_model
    from segadapt.data import build_source, make_transform
    from segadapt.data.pairs import PairedDataset, csv_pairs
    from segadapt.runtime import new_run_dir

    if args.resume:
        out = Path(args.resume)
        resumed = _resumed_config(args, out, "adapt", ("h1", "layers", "weights", "filter", "severity", "d2_dir",
                                                       "pairs", "out", "preset"))
        if resumed is None:
            return 0
        cfg = resumed
    else:
        if not args.h1:
            raise SegadaptError("--h1 RUN is required (the source model), or --resume RUN to continue an adaptation")
        _, meta = load_model(args.h1)
        cfg = _other_dataset(resolve_config(args, _adapt_base(meta, args.h1)), meta)  # --preset replaces H1's
        cfg.adapt.h1 = str(Path(args.h1).resolve())  # absolute: a resume may start from another directory
        if args.layers:
            cfg.adapt.layers = [x.strip() for x in args.layers.split(",") if x.strip()]
        if args.weights:
            cfg.adapt.weights = _numbers("--weights", args.weights, float)
        _shift_flags(args, cfg)

    split = cfg.data.train_split
    if cfg.shift.pairs_csv:
        d1, d2 = csv_pairs(Path(cfg.shift.pairs_csv))
    else:
        d1, d2 = build_source(cfg.data, split), _d2_source(cfg, split)
    pairs = PairedDataset(d1, d2, make_transform(cfg.data, True, cfg.data.ignore_index), cfg.shift.photometric)
    if not args.resume:
        out = _claim(Path(args.out)) if args.out else _created(new_run_dir, cfg.out_dir, "adapt")
        if (out / "model.safetensors").exists() or (out / "checkpoints").exists():
            raise SegadaptError(f"{out}: already holds a run; use --resume {out} or another --out")
    print(dumps_toml(cfg))
    result = adapt(cfg, out, pairs, resume=bool(args.resume))
    if result["final_loss"] is not None:
        print(f"regression loss (last batch) {result['final_loss']:.5g}, per layer {result['final_layer_loss']}")
    print(f"adapted model: {out / 'model.safetensors'}")
    if result["selected_step"] is not None:
        print(f"label-free choice: {out / 'model_selected.safetensors'} (step {result['selected_step']}, lowest "
              f"held-out regression loss; selection.csv)")
    print(f"next: {_score_hint(cfg, out)}; look: segadapt viz features --h1 {cfg.adapt.h1} --h2 {out} "
          f"--out {out / 'viz'} ...")
    return 0


def _adapt_base(meta: dict[str, Any], h1: str) -> RunConfig:
    """H1's own run settings (batch, weight decay, seed, data...) with the sweep's adaptation budget and lr,
    so `segadapt adapt` trains H2 as `segadapt experiment` does; older model files give their data only."""
    from segadapt.config import AdaptConfig, from_dict
    from segadapt.errors import ConfigError

    try:
        base = from_dict(RunConfig, meta["config"], f"{h1} metadata")
    except (ConfigError, KeyError, TypeError):
        return _trained_config(meta, h1)
    base.model.width, base.model.arch = meta["width"], meta["arch"]
    base.name, base.train.time_budget_s = "adapt", 0.0
    # what D2 is and what to regress come from this command, not from how H1 happened to be run
    kept = base.adapt
    base.adapt = AdaptConfig(grad_clip=kept.grad_clip, holdout=kept.holdout, probes=kept.probes)
    base.shift.d2_dir, base.shift.pairs_csv = "", ""
    base.train.iterations, base.train.lr = base.experiment.iterations, base.experiment.adapt_lr
    return base


def _score_hint(cfg: RunConfig, out: Path) -> str:
    """How to score H2 on D2, which has the labels only where D2 is D1 shifted by a filter."""
    if cfg.shift.d2_dir and (Path(cfg.shift.d2_dir) / cfg.data.val_split).is_dir():  # a `segadapt shift` output
        if cfg.data.dataset == "synthetic":  # generated data has no root to point evaluate at
            return (f"segadapt distortion --model {out} --filter {cfg.shift.filter} --severity "
                    f"{cfg.shift.severity} --set shift.d2_dir={cfg.shift.d2_dir} (scores D1 and that D2)")
        return (f"segadapt evaluate --model {out} --dataset {cfg.data.dataset} --root {cfg.shift.d2_dir} "
                f"--split {cfg.data.val_split}")
    if not cfg.shift.d2_dir and not cfg.shift.pairs_csv:
        seed = f" --set shift.seed={cfg.shift.seed}" if cfg.shift.seed else ""
        return (f"segadapt distortion --model {out} --filter {cfg.shift.filter} --severity {cfg.shift.severity}"
                f"{seed} (scores D1 and D2)")
    return "D2 has no labels here; compare H1 and H2 by eye with segadapt viz overlays"


def cmd_distortion(args: argparse.Namespace) -> int:
    """The study's distortion of a shift for a model: how much accuracy and mIoU fall from D1 to D2."""
    from segadapt.checkpoint import load_model, write_json_atomic
    from segadapt.data import build_source
    from segadapt.experiment import d2_source, score
    from segadapt.metrics import distortion
    from segadapt.runtime import select_device
    from segadapt.selection import finite_or_none

    _json_out(args.out)
    device = select_device(args.device or "auto")
    model, meta = load_model(args.model, device)
    cfg = _model_config(args, meta, args.model)
    cfg.shift.filter = args.filter
    if args.severity is not None:
        cfg.shift.severity = args.severity
    if args.seed is not None:  # here --seed is the shift's (ripple phase, cubism tiles): nothing trains
        cfg.shift.seed = args.seed
    split = args.split or cfg.data.val_split
    if cfg.shift.d2_dir:
        _same_shift(Path(cfg.shift.d2_dir), split, cfg)
    d1 = build_source(cfg.data, split)
    _same_classes(args.model, meta, cfg, d1.info.num_classes)
    s1 = score(model, d1, cfg, device)
    s2 = score(model, d2_source(cfg, split, cfg.shift, args.filter), cfg, device)
    d = distortion(s1.mean_acc, s1.miou, s2.mean_acc, s2.miou)
    result = {"model": str(args.model), "filter": args.filter, "severity": cfg.shift.severity, "split": split,
              "d1": {"mean_acc": s1.mean_acc, "miou": s1.miou}, "d2": {"mean_acc": s2.mean_acc, "miou": s2.miou},
              "distortion": finite_or_none(d)}
    print(f"D1 ({cfg.data.dataset}/{split}): mean acc {s1.mean_acc:.4f}  mIoU {s1.miou:.4f}")
    print(f"D2 ({args.filter}, severity {cfg.shift.severity}): mean acc {s2.mean_acc:.4f}  mIoU {s2.miou:.4f}")
    print(f"distortion = 0.5*(|acc1-acc2|/acc1 + |mIoU1-mIoU2|/mIoU1) = {d:.4f}")
    if args.out:
        write_json_atomic(Path(args.out), result)
    return 0


def _same_shift(d2_dir: Path, split: str, cfg: RunConfig) -> None:
    """A `segadapt shift` output records its filter and severity: refuse to report it as another shift."""
    from segadapt.errors import DataError
    from segadapt.shifts.write import recorded_params

    try:
        made = recorded_params(d2_dir, split)
    except DataError:
        return  # an unreadable marker: nothing to compare (distortion scores the images as they are)
    if made is None:
        return  # a plain folder of D2 images: nothing recorded to compare
    wanted = {"filter": cfg.shift.filter, "severity": cfg.shift.severity}
    if {k: made.get(k) for k in wanted} != wanted:
        raise SegadaptError(f"{d2_dir}: holds {made.get('filter')} at severity {made.get('severity')}, not "
                            f"{cfg.shift.filter} at {cfg.shift.severity}; pass --filter/--severity to match")


def cmd_shift(args: argparse.Namespace) -> int:
    from segadapt.data import build_source
    from segadapt.shifts.write import write_shifted

    cfg = resolve_config(args)
    if args.seed is not None:  # here --seed is the shift's (ripple phase, cubism tiles): nothing trains
        cfg.shift.seed = args.seed
    split = args.split or cfg.data.train_split
    source = build_source(cfg.data, split)
    root = Path(cfg.data.root) if cfg.data.root and cfg.data.dataset != "synthetic" else None
    severity = args.severity if args.severity is not None else cfg.shift.severity
    r = write_shifted(source, root, _claim(Path(args.out)), split, args.filter, severity, cfg.shift.seed, args.backend,
                      args.workers or 0)
    print(f"wrote {r['images']} shifted images ({args.filter}, severity {severity}) to {args.out}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check a dataset before training: exit 0 when fit (warnings allowed), 1 when it has errors."""
    from segadapt.checkpoint import write_json_atomic
    from segadapt.data import DATASETS
    from segadapt.doctor import diagnose, guess_dataset

    _json_out(args.out)
    if args.target in DATASETS:
        args.dataset = args.dataset or args.target
    elif args.target:
        if not Path(args.target).is_dir():
            raise SegadaptError(f"{args.target}: neither a dataset name ({', '.join(DATASETS)}) nor a directory")
        args.root = args.target
        args.dataset = args.dataset or guess_dataset(Path(args.target))
    cfg = resolve_config(args)
    splits = [s.strip() for s in args.split.split(",") if s.strip()] if args.split else None
    report = diagnose(cfg, splits, d2_dir=args.d2_dir or cfg.shift.d2_dir, pairs_csv=args.pairs or cfg.shift.pairs_csv,
                      limit=args.limit)
    print(report.format())
    if args.out:
        write_json_atomic(Path(args.out), report.to_dict())
        print(f"wrote {args.out}")
    return 0 if report.ok else 1


def _trained_config(meta: dict[str, Any], model_path: str) -> RunConfig:
    """The data settings and architecture a model was trained with, from its metadata."""
    from segadapt.config import DataConfig, from_dict

    trained = RunConfig(data=from_dict(DataConfig, meta["config"]["data"], f"{model_path} metadata"))
    trained.model.width, trained.model.arch = meta["width"], meta["arch"]
    return trained


def _model_config(args: argparse.Namespace, meta: dict[str, Any], model_path: str) -> RunConfig:
    """A trained model's settings, overridden by the command line."""
    return _other_dataset(resolve_config(args, _trained_config(meta, model_path)), meta)


def _other_dataset(cfg: RunConfig, meta: dict[str, Any]) -> RunConfig:
    """A model trained on a folder dataset, used on a built-in one: its folder-only keys stay behind."""
    trained = meta.get("config", {}).get("data", {})
    if trained.get("dataset") == "folder" and cfg.data.dataset != "folder":
        cfg.data.num_classes, cfg.data.ignore_index, cfg.data.class_names = 0, 255, []
    return cfg


def _shift_flags(args: argparse.Namespace, cfg: RunConfig) -> None:
    """--filter, --severity, --d2-dir and --pairs, where the command has them, override cfg.shift."""
    for flag, key in (("filter", "filter"), ("severity", "severity"), ("d2_dir", "d2_dir"), ("pairs", "pairs_csv")):
        if getattr(args, flag, None) is not None:
            setattr(cfg.shift, key, getattr(args, flag))


def _d2_source(cfg: RunConfig, split: str) -> Any:
    """D2 of a split: a plain folder of unlabelled images (shift.d2_dir without <split>/), a `segadapt shift`
    output, or D1 through shift.filter."""
    from segadapt.data.pairs import image_folder
    from segadapt.experiment import d2_source

    d2_dir = Path(cfg.shift.d2_dir) if cfg.shift.d2_dir else None
    if d2_dir is not None and not d2_dir.is_dir():
        raise SegadaptError(f"{d2_dir}: D2 image directory not found; check --d2-dir")
    if d2_dir is not None and not (d2_dir / split).is_dir():
        if any(p.is_dir() and (p / "images").is_dir() for p in d2_dir.iterdir()):
            raise SegadaptError(f"{d2_dir}: a `segadapt shift` output without the {split!r} split; write it with "
                                f"segadapt shift --split {split} --out {d2_dir}")
        return image_folder(d2_dir)
    return d2_source(cfg, split, cfg.shift, cfg.shift.filter)


def _parse_channels(text: str | None) -> dict[str, int]:
    """"pool3=5,pool5=12" -> {"pool3": 5, "pool5": 12}."""
    out: dict[str, int] = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        tap, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise SegadaptError(f"--channels {text!r}: expected TAP=INDEX pairs, e.g. pool3=5,pool5=12")
        out[tap.strip()] = int(value)
    return out


def _val_pairs(args: argparse.Namespace, cfg: RunConfig) -> tuple[Any, Any, list[int], Any]:
    """D1 and D2 sources of the chosen split, the image indices to show, and the eval transform."""
    from segadapt.data import build_source, make_transform, spread_indices

    split = args.split or cfg.data.val_split
    d1 = build_source(cfg.data, split)
    _shift_flags(args, cfg)
    d2 = _d2_source(cfg, split)
    numbers = _numbers("--images", args.images, int)
    ids = list(dict.fromkeys(numbers)) if "," in args.images else spread_indices(len(d1), numbers[0])
    if not ids:
        raise SegadaptError(f"--images {args.images}: nothing to show; give a count >= 1 or indices like 0,5,9")
    for i in ids:
        if not 0 <= i < len(d1):
            raise SegadaptError(f"--images: index {i} outside 0..{len(d1) - 1} of {cfg.data.dataset}/{split}")
    return d1, d2, ids, make_transform(cfg.data, False, d1.info.ignore_index)


def cmd_viz_features(args: argparse.Namespace) -> int:

    from segadapt.checkpoint import load_model
    from segadapt.data.pairs import PairedDataset
    from segadapt.runtime import select_device
    from segadapt.viz.features import write_feature_grids

    device = select_device(args.device or "auto")
    h1, meta = load_model(args.h1, device)
    h2, _ = load_model(args.h2, device)
    cfg = _model_config(args, meta, args.h1)
    d1, d2, ids, tf = _val_pairs(args, cfg)
    pairs = PairedDataset(d1, d2, tf)
    images = [(x1.to(device), x2.to(device)) for x1, x2 in (pairs[i] for i in ids)]
    taps = [t.strip() for t in args.layers.split(",") if t.strip()]
    try:
        s = write_feature_grids(h1, h2, images, taps, Path(args.out), tf.denormalize,
                                names=[d1.stem(i) for i in ids], channels=_parse_channels(args.channels))
    except (KeyError, ValueError) as e:
        raise SegadaptError(f"--layers/--channels: {e}") from None
    for t, e in s["errors"].items():
        print(f"{t} (channel {s['channels'][t]}): regression error {sum(e['before']) / len(ids):.4g} (H1 on X2) "
              f"-> {sum(e['after']) / len(ids):.4g} (H2 on X2)")
    print(f"wrote {len(s['files'])} grids and features.json to {args.out}")
    return 0


def cmd_viz_reconstruct(args: argparse.Namespace) -> int:
    from segadapt.checkpoint import load_model
    from segadapt.data import build_source, make_transform
    from segadapt.runtime import select_device
    from segadapt.viz.reconstruct import ReconstructConfig, reconstruct_image

    device = select_device(args.device or "auto")
    model, meta = load_model(args.model, device)
    cfg = _model_config(args, meta, args.model)
    tf = make_transform(cfg.data, False, 255)
    if args.image:
        from segadapt.data.base import read_image

        image, name = read_image(Path(args.image)), Path(args.image).stem
    else:
        source = build_source(cfg.data, args.split or cfg.data.val_split)
        if not 0 <= args.index < len(source):
            raise SegadaptError(f"--index {args.index} outside 0..{len(source) - 1}")
        image, name = source.load_image(args.index), source.stem(args.index)
    x, _ = tf.apply(image, None, None)
    rc = ReconstructConfig(steps=args.steps, optimizer=args.optimizer, lr=args.step_size, seed=args.seed or 0,
                           style_weight=args.style_weight, content_weight=args.content_weight,
                           tv_weight=args.tv_weight)
    if args.layers:
        rc.taps = [t.strip() for t in args.layers.split(",") if t.strip()]
    if args.content_layers:
        rc.content_taps = [t.strip() for t in args.content_layers.split(",") if t.strip()]
    try:
        r = reconstruct_image(model, x, Path(args.out), rc, cfg.data.mean, cfg.data.std, device, name=name)
    except (KeyError, ValueError) as e:
        raise SegadaptError(f"reconstruct: {e}") from None
    first, last = r["first_loss"], r["last_loss"]
    print(f"loss {first:.4g} -> {last:.4g} ({first / max(last, 1e-30):.1f}x lower) in {r['steps']} steps")
    files = [Path(r[k]).name for k in r if isinstance(r[k], str) and Path(r[k]).suffix in (".png", ".csv")]
    print(f"wrote {', '.join(files)} to {args.out} (the image as {args.model} sees it: *_reconstruction.png)")
    return 0


def cmd_viz_overlays(args: argparse.Namespace) -> int:
    from segadapt.checkpoint import load_model
    from segadapt.data import SegmentationDataset
    from segadapt.runtime import select_device
    from segadapt.viz.overlays import overlay_figure, predict

    device = select_device(args.device or "auto")
    named = [item.partition("=") for item in args.models.split(",") if item.strip()]
    if not named or any(not path for _, _, path in named):
        raise SegadaptError(f"--models {args.models!r}: expected NAME=RUN pairs, e.g. H1=runs/h1,H2=runs/h2")
    names = [name.strip() for name, _, _ in named]
    if len(set(names)) != len(names):
        raise SegadaptError(f"--models {args.models!r}: each NAME once (a second would replace the first)")
    loaded = {name.strip(): (path.strip(), *load_model(path.strip(), device)) for name, _, path in named}
    models = {name: model for name, (_, model, _) in loaded.items()}
    cfg = _model_config(args, loaded[names[0]][2], loaded[names[0]][0])
    d1, d2, ids, tf = _val_pairs(args, cfg)
    for path, _, meta in loaded.values():
        _same_classes(path, meta, cfg, d1.info.num_classes)
    source = d2 if (args.filter or args.d2_dir) else d1
    ds = SegmentationDataset(source, tf)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = d1.info
    for i in ids:
        x, mask = ds[i]
        preds = {name: predict(m, x.to(device)) for name, m in models.items()}
        overlay_figure(tf.denormalize(x), mask.numpy(), preds, info.class_names, info.palette, info.ignore_index,
                       out / f"overlay_{source.stem(i)}.png", title=source.stem(i))
    print(f"wrote {len(ids)} overlays to {out}")
    return 0


def cmd_viz_report(args: argparse.Namespace) -> int:
    from segadapt.viz.report import write_report

    print(f"report: {write_report(Path(args.sweep))}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dumps_toml(resolve_config(args)))
    return 0


def _viz_data_args(v: argparse.ArgumentParser) -> None:
    _add_config_args(v)
    v.add_argument("--split", help="split to draw images from (default: the val split)")
    v.add_argument("--images", default="3", help="how many images (spread over the split), or indices: 0,5,9")
    v.add_argument("--filter", help="D2 made by this filter (photocopy | ripple | cubism)")
    v.add_argument("--severity", type=float, help="filter severity 0..1")
    v.add_argument("--d2-dir", help="D2 images: a `segadapt shift` output or a folder matched by stem")
    v.add_argument("--out", required=True, help="output directory")


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
    p.add_argument("--out", help="JSON output (default: <run>/eval_<dataset>_<split>.json; scored at another "
                   "--root: eval_<dataset>-<root name>_<split>.json)")
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("adapt", help="adapt H1 to D2 by feature-map regression (no D2 labels)")
    _add_config_args(p)
    p.add_argument("--h1", help="source model: a training run directory or model .safetensors "
                   "(required unless --resume)")
    p.add_argument("--layers", help="taps to regress, comma-separated (pool1..pool5, fc6, fc7) or a preset: "
                   "pool1..pool5, all (= all_inc), all_inc, all_dec")
    p.add_argument("--weights", help="one weight per layer, comma-separated (default 1.0 each)")
    p.add_argument("--filter", help="make D2 on the fly with this filter: photocopy | ripple | cubism")
    p.add_argument("--severity", type=float, help="filter severity 0..1")
    p.add_argument("--d2-dir", help="D2 images: a `segadapt shift` output or a folder, matched to D1 by file stem")
    p.add_argument("--pairs", help="CSV with columns x1,x2 listing image pairs")
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", metavar="RUN", help="continue the adaptation in this directory from its last checkpoint")
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

    p = sub.add_parser("viz", help="figures: feature maps, reconstructions, overlays, a sweep's report.html")
    viz = p.add_subparsers(dest="viz_command", required=True)
    v = viz.add_parser("features", help="H1 vs H2 feature maps on D1/D2 pairs, with |difference| and errors")
    v.add_argument("--h1", required=True, help="source model (run directory or .safetensors)")
    v.add_argument("--h2", required=True, help="adapted model")
    v.add_argument("--layers", default="pool1,pool2,pool3,pool4,pool5", help="taps, one grid row each")
    v.add_argument("--channels", help="TAP=INDEX pairs; default: the channel of highest H1 variance on X1")
    _viz_data_args(v)
    v.set_defaults(func=cmd_viz_features)
    v = viz.add_parser("reconstruct", help="the image as a model sees it: white noise optimised to match features")
    v.add_argument("--model", required=True, help="model whose features are matched (e.g. the adapted H2)")
    v.add_argument("--image", help="an image file (default: --index of the model's dataset)")
    v.add_argument("--index", type=int, default=0, help="image index in the split when no --image is given")
    v.add_argument("--layers", help="taps for the style (Gram) loss (default pool1..pool5)")
    v.add_argument("--content-layers", help="taps for the content loss (default: --layers without the shallowest)")
    v.add_argument("--tv-weight", type=float, default=2.0, help="total-variation prior (0 = off)")
    v.add_argument("--steps", type=int, default=300)
    v.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "lbfgs"])
    v.add_argument("--step-size", type=float, help="optimizer learning rate (default per optimizer)")
    v.add_argument("--content-weight", type=float, default=1.0)
    v.add_argument("--style-weight", type=float, default=1.0)
    _add_data_args(v)
    v.add_argument("--split", help="split to draw --index from (default: the val split)")
    v.add_argument("--out", required=True, help="output directory")
    v.set_defaults(func=cmd_viz_reconstruct)
    v = viz.add_parser("overlays", help="image, ground truth and each model's prediction, in the dataset's colours")
    v.add_argument("--models", required=True, help="NAME=RUN pairs, e.g. H1=runs/h1,B2=runs/b2,H2=runs/h2")
    _viz_data_args(v)
    v.set_defaults(func=cmd_viz_overlays)
    v = viz.add_parser("report", help="(re)build report.html of a `segadapt experiment` directory")
    v.add_argument("sweep", help="the experiment's output directory")
    v.set_defaults(func=cmd_viz_report)

    p = sub.add_parser("doctor", help="check a dataset before training: labels, class pixels, sizes, modes, pairs")
    p.add_argument("target", nargs="?", default="",
                   help="a dataset name (synthetic, camvid, voc, folder) or its directory (layout guessed)")
    _add_config_args(p)
    p.add_argument("--split", help="splits to check, comma-separated (default: the train and val splits)")
    p.add_argument("--d2-dir", help="also check D2 images: a `segadapt shift` output or a folder, matched by stem")
    p.add_argument("--pairs", help="also check a pairs CSV (columns x1,x2): readable files of equal size")
    p.add_argument("--limit", type=int, default=0, help="check at most N images per split, spread out (0 = all)")
    p.add_argument("--out", help="also write the report as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("config", help="print the resolved configuration as TOML")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _CLAIMS.clear()
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 reports; errors still reach stderr
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    try:
        return args.func(args)
    except SegadaptError as e:
        _discard_partial_outputs()
        if args.debug:
            raise
        print(f"segadapt: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written: name it instead of a traceback
        _discard_partial_outputs()
        if args.debug:
            raise
        path = e.filename2 if e.filename2 is not None else e.filename
        hint = {IsADirectoryError: "a folder is there; give a file path",
                NotADirectoryError: "a file is where a folder is needed; give a folder",
                FileExistsError: "a file is where a folder is needed; give a folder"}.get(type(e), "check the path")
        print(f"segadapt: error: {path}: {e.strerror or e}; {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

