"""`segadapt train`: supervised training of H1 (and any model of the registry) with labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from segadapt.cli.common import TRAINING, announce, config_args, output_dir, quiet_arg, resolve_config, resumed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="supervised training (H1) with labels")
    config_args(p, TRAINING)
    p.add_argument("--out", help="run directory (default: <out_dir>/<name>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its last checkpoint")
    quiet_arg(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from segadapt.run_dir import refuse_overwrite
    from segadapt.train import train

    if args.resume:
        run_dir, again = resumed(args, "train", ("preset", "out"))
        if again is None:
            return 0
        cfg = again
    else:
        cfg = resolve_config(args)
        run_dir = output_dir(args.out, cfg.out_dir, cfg.name)
        refuse_overwrite(run_dir)
    announce(cfg, args, Path(run_dir))
    metrics = train(cfg, Path(run_dir), resume=bool(args.resume))
    v = metrics["val"]
    print(f"val mIoU {v['miou']:.4f}  mean acc {v['mean_acc']:.4f}  pixel acc {v['pixel_acc']:.4f}")
    print(f"run: {run_dir}")
    return 0
