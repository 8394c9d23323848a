"""`segadapt experiment` (the study's sweep) and `segadapt demo` (the sweep at CPU scale on synthetic data)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segadapt.cli.adapt import H1_FLAGS
from segadapt.cli.common import (
    TRAINING,
    announce,
    config_args,
    fit_to_model,
    output_dir,
    quiet_arg,
    require_data,
    resolve_config,
)
from segadapt.config import RunConfig, preset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="the study's sweep: H1, distortion, B0/B1/B2, regression presets")
    config_args(p, (*TRAINING, *H1_FLAGS, "norm"),
                helps={"h1": "reuse this H1 instead of training one: a segadapt run or model file, a transformers "
                             "save_pretrained directory, or a factory package.module:function"})
    p.add_argument("--out", help="output directory")
    quiet_arg(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("demo", help="the sweep on the embedded synthetic dataset at CPU scale (minutes)")
    config_args(p, ("out_dir", "device"), presets=False)
    quiet_arg(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = resolve_config(args, preset("demo"))
    return _sweep(cfg, args, output_dir(None, cfg.out_dir, cfg.name), start=preset("demo"))


def cmd_experiment(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    h1 = None
    if cfg.adapt.h1:  # a reused H1, loaded once: it brings its normalisation, presets and architecture
        from segadapt.adapt import load_h1

        h1 = load_h1(cfg, "cpu")
        require_data(args, h1[1], cfg.adapt.h1)
        cfg = fit_to_model(cfg, h1[1], cfg.adapt.h1, args)
    return _sweep(cfg, args, output_dir(args.out, cfg.out_dir, f"{cfg.name}-experiment"), h1)


def _sweep(cfg: RunConfig, args: argparse.Namespace, out: Path, h1: tuple[Any, dict[str, Any]] | None = None,
           start: RunConfig | None = None) -> int:
    from segadapt.experiment import run_experiment

    announce(cfg, args, out, start)
    results = run_experiment(cfg, out, h1)
    print((out / "results.md").read_text())
    print(f"report: {results.get('report') or out / 'results.md'}")
    return 0
