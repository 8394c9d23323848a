"""`segadapt change`: the map of what changed between two eras' images, each era segmented by its own model."""

from __future__ import annotations

import argparse
import sys

from segadapt.cli.common import claim, config_args, keep_outputs, trust_args
from segadapt.cli.predict import load_predictor, predict_options, tiling_args
from segadapt.errors import SegadaptError
from segadapt.paths import check_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("change", help="change map between two eras (from->to classes, areas, a figure)")
    p.add_argument("--model1", required=True, help="era 1's model (run directory or .safetensors)")
    p.add_argument("--images1", required=True, nargs="+", metavar="PATH", help="era 1's images, folders or globs; "
                   "era 1's grid is the change map's grid")
    p.add_argument("--model2", required=True, help="era 2's model")
    p.add_argument("--images2", required=True, nargs="+", metavar="PATH", help="era 2's images (paired by name "
                   "or, for GeoTIFFs, by ground)")
    p.add_argument("--out", required=True, help="output folder (re-running skips finished pairs)")
    p.add_argument("--min-confidence", type=float, metavar="P", help="a pixel whose classes differ counts as "
                   "changed only when both eras' probabilities are at least P (else its own code, uncertain)")
    p.add_argument("--align", choices=["ecc", "features"], help="register plain (not georeferenced) images: ecc "
                   "for small offsets, features for large ones (default: the two show the same frame)")
    p.add_argument("--masks", action="store_true", help="also write both eras' masks on the common grid")
    p.add_argument("--no-figure", action="store_true", help="skip the figure (images, masks, change map)")
    tiling_args(p)
    trust_args(p)
    config_args(p, ("device",), presets=False)
    p.set_defaults(func=cmd_change)


def cmd_change(args: argparse.Namespace) -> int:
    from segadapt.change import ChangeOptions, pair_inputs, run
    from segadapt.predict import weights_sha256
    from segadapt.predict_job import list_inputs
    from segadapt.runtime import environment

    opts = ChangeOptions(predict_options(args), args.min_confidence, args.align, args.masks,
                         not args.no_figure).check()
    out = check_path(args.out, "--out")
    if out.exists() and not out.is_dir():
        raise SegadaptError(f"--out {args.out}: is a file; give a folder for the outputs")
    pairs, unpaired = pair_inputs(list_inputs(args.images1), list_inputs(args.images2))
    preds, settings, header = [], {}, {}
    for k, spec in ((1, args.model1), (2, args.model2)):
        pred, path, runtime = load_predictor(args, spec, f"--model{k}")
        preds.append(pred)
        settings |= {f"model{k}_sha256": weights_sha256(path), f"mean{k}": list(pred.mean),
                     f"std{k}": list(pred.std), f"base_size{k}": pred.base_size}
        header |= {f"model{k}": str(path), f"runtime{k}": runtime}
    header |= {"classes": list(preds[0].class_names), "environment": environment()}
    settings |= opts.settings()
    claim(out, lock_it=True)
    summary = run((preds[0], preds[1]), pairs, out, opts, settings, header, unpaired,
                  on_finished=lambda: keep_outputs(out))
    kept = f" ({summary.skipped} already finished, kept)" if summary.skipped else ""
    print(f"change maps of {len(summary.pairs)} of {len(pairs) + len(unpaired)} pair(s) in {out}{kept}; "
          f"summary: {summary.path}")
    if summary.failed:
        print(f"segadapt: {len(summary.failed)} pair(s) failed (listed under \"failed\" in {summary.path}):",
              file=sys.stderr)
        for f in summary.failed:
            print(f"  {f['error']}", file=sys.stderr)
        return 1
    return 0
