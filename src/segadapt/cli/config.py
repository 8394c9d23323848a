"""`segadapt config`: print a resolved configuration as TOML (what a run would use)."""

from __future__ import annotations

import argparse
import sys

from segadapt.cli.adapt import FLAGS as ADAPT_FLAGS
from segadapt.cli.common import TRAINING, config_args, resolve_config
from segadapt.config import dumps_toml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved configuration as TOML")
    config_args(p, list(dict.fromkeys((*TRAINING, *ADAPT_FLAGS))))
    p.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    from segadapt.data.datasets import with_classes

    sys.stdout.write(dumps_toml(with_classes(resolve_config(args))))  # a built-in dataset's classes written out
    return 0
