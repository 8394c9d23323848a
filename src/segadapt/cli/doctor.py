"""`segadapt doctor`: check a dataset (and its D2 pairs) before training."""

from __future__ import annotations

import argparse
from pathlib import Path

from segadapt.cli.common import DATA, config_args, json_out, names, resolve_config
from segadapt.errors import SegadaptError
from segadapt.paths import check_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check a dataset before training: labels, class pixels, sizes, modes, pairs")
    p.add_argument("target", nargs="?", default="",
                   help="a dataset name (synthetic, camvid, voc, folder) or its directory (layout guessed)")
    config_args(p, (*DATA, "d2_dir", "pairs", "align"),
                helps={"d2_dir": "also check D2 images: a `segadapt shift` output or a folder, matched by stem",
                       "pairs": "also check a pairs CSV (columns x1,x2): readable files of equal size",
                       "align": "also register each pair (ecc | features) and report its offset and quality"})
    p.add_argument("--split", help="splits to check, comma-separated (default: the train and val splits)")
    p.add_argument("--limit", type=int, default=0, help="check at most N images per split, spread out (0 = all)")
    p.add_argument("--out", help="also write the report as JSON")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check a dataset before training: exit 0 when fit (warnings allowed), 1 when it has errors."""
    from segadapt.checkpoint import write_json_atomic
    from segadapt.data import DATASETS
    from segadapt.doctor import diagnose, guess_dataset

    json_out(args.out)
    if args.target in DATASETS:  # the positional target is a shortcut for --dataset or --root
        args.dataset = args.dataset or args.target
    elif args.target:
        if not Path(args.target).is_dir():
            raise SegadaptError(f"{args.target}: neither a dataset name ({', '.join(DATASETS)}) nor a directory")
        args.root = args.root or args.target
        args.dataset = args.dataset or guess_dataset(Path(args.target))
    cfg = resolve_config(args)
    splits = names(args.split) if args.split else None
    report = diagnose(cfg, splits, d2_dir=cfg.shift.d2_dir, pairs_csv=cfg.shift.pairs_csv, limit=args.limit)
    print(report.format())
    if args.out:
        write_json_atomic(check_path(args.out, "--out"), report.to_dict())
        print(f"wrote {args.out}")
    return 0 if report.ok else 1
