"""`segadapt peer`: a label-free peer (adabn, tent, self_training) run on H1 and D2 images, to compare with
`segadapt adapt` at the same budget: what a user would run instead of feature regression."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segadapt.cli.adapt import D2_FLAGS, H1_FLAGS, adapt_base, print_models, score_hint
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
from segadapt.errors import SegadaptError
from segadapt.paths import check_path

PEER_D2_FLAGS = tuple(f for f in D2_FLAGS if f != "align")  # no pairing: nothing to register
FLAGS = ("method", *H1_FLAGS, *PEER_D2_FLAGS, *[f for f in TRAINING if f not in ("width", "arch", "init_weights")])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peer", help="adapt H1 to D2 images by a label-free peer: adabn | tent | self_training")
    config_args(p, FLAGS, helps={"h1": "source model H1 (required unless --resume), in any form `segadapt adapt` "
                                       "takes"})
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", metavar="RUN", help="continue the peer's run in this directory from its last "
                                                   "checkpoint")
    quiet_arg(p)
    p.set_defaults(func=cmd_peer)


def cmd_peer(args: argparse.Namespace) -> int:
    from segadapt.adapt import load_h1
    from segadapt.checkpoint import load_model_file
    from segadapt.data.d2 import d2_images
    from segadapt.peers import PEERS, run_peer
    from segadapt.run_dir import refuse_overwrite

    teacher: tuple[Any, dict[str, Any]] | None = None
    if args.resume:
        out, again = resumed(args, "peer", ("method", *H1_FLAGS, *PEER_D2_FLAGS, "out", "preset"))
        if again is None:
            return 0
        cfg = again
    else:
        if not args.h1 or not args.method:
            raise SegadaptError(f"--h1 RUN and --method ({' | '.join(PEERS)}) are required, or --resume RUN to "
                                f"continue a peer's run")
        if is_model_file(args.h1):  # a segadapt run or file: its metadata is enough here, run_peer loads it
            _, meta = load_model_file(check_path(args.h1, "--h1"))
        else:  # a transformers directory or a factory: loaded (and checked) once, before any output is made
            teacher = load_h1(resolve_config(args), "cpu")
            meta = teacher[1]
        cfg = model_config(args, meta, args.h1, lambda dataset: adapt_base(meta, args.h1, dataset))

    images = d2_images(cfg)
    if not args.resume:
        out = output_dir(args.out, cfg.out_dir, f"peer-{cfg.peer.method}")
        refuse_overwrite(out)
    announce(cfg, args, Path(out))
    h1, h1_meta = teacher if teacher is not None else (None, None)
    result = run_peer(cfg, Path(out), images, teacher=h1, h1_meta=h1_meta, resume=bool(args.resume))
    if result["final_loss"] is not None:
        print(f"{result['method']} loss (last batch) {result['final_loss']:.5g}")
    print_models(out, f" ({result['method']})")
    print(f"next: {score_hint(cfg, out)}")
    return 0
