"""`segadapt export`: a model as ONNX or TorchScript, normalisation inside, verified after writing."""

from __future__ import annotations

import argparse

from segadapt.cli.common import claim, config_args, model_config, trust_args, trusted_factories
from segadapt.paths import check_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a model as ONNX or TorchScript (takes RGB 0..255), verified")
    p.add_argument("--model", required=True, help="run directory or model .safetensors")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="file to write (a report goes beside it as FILE.json)")
    p.add_argument("--samples", nargs="+", metavar="IMAGE",
                   help="frames to verify the written file on (default: two synthetic scenes)")
    trust_args(p)
    config_args(p, (), presets=False)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from segadapt.data.base import read_image
    from segadapt.errors import SegadaptError
    from segadapt.export import export, sample_scenes
    from segadapt.predict import load

    out = check_path(args.out, "--out")
    if out.is_dir():
        raise SegadaptError(f"--out {args.out}: is a folder; give the path of the file to write")
    samples = [check_path(s, "--samples") for s in args.samples or []]
    images = [read_image(s) for s in samples] if samples else sample_scenes()
    model_path = check_path(args.model, "--model")
    model, meta = load(model_path, trusted_factories=trusted_factories(args))
    cfg = model_config(args, meta, model_path)
    if not out.parent.exists():  # folders made for the file go again if the export fails or is stopped
        claim(out.parent)
    r = export(model, meta, cfg.data.mean, cfg.data.std, cfg.data.base_size, args.format, out, images,
               [str(s) for s in samples])
    v = r["verification"]
    print(f"wrote {out} ({args.format}; input float32 RGB 0..255, N x 3 x H x W, dynamic N/H/W; "
          f"base_size {cfg.data.base_size})")
    print(f"checked with {v['runtime']} on {v['samples']} frame(s) {v['sizes']}: argmax agreement "
          f"{100 * v['agreement']:.3f}%, max abs logit difference {v['max_abs_logit_diff']:.3g} "
          f"({v['relative_logit_diff']:.2g} of the logits' scale, at most {v['logit_tolerance']:g} allowed)")
    return 0
