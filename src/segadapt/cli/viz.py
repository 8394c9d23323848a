"""`segadapt viz features | reconstruct | overlays | report`: figures of models before and after adaptation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segadapt.cli.common import (
    DATA,
    MODEL_FORMS,
    claim,
    config_args,
    load_model_arg,
    model_args,
    model_config,
    names,
    numbers,
    same_classes,
    trust_args,
    trusted_factories,
)
from segadapt.config import RunConfig
from segadapt.errors import SegadaptError
from segadapt.paths import check_path

D2_FLAGS = ("filter", "severity", "d2_dir")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viz", help="figures: feature maps, reconstructions, overlays, a sweep's report.html")
    viz = p.add_subparsers(dest="viz_command", required=True)
    v = viz.add_parser("features", help="H1 vs H2 feature maps on D1/D2 pairs, with |difference| and errors")
    v.add_argument("--h1", required=True, help=f"source model: {MODEL_FORMS}")
    v.add_argument("--h2", required=True, help="adapted model (any form --h1 takes; e.g. the adapt run directory)")
    model_args(v, "h1")
    model_args(v, "h2", trust=False)
    v.add_argument("--layers", help="taps, one grid row each (default: the model's stages, e.g. pool1..pool5 or "
                                    "stage1..stage4)")
    v.add_argument("--channels", help="TAP=INDEX pairs; default: the channel of highest H1 variance on X1")
    _pair_args(v)
    v.set_defaults(func=cmd_features)

    v = viz.add_parser("reconstruct", help="the image as a model sees it: noise optimised to match features")
    v.add_argument("--model", required=True, help=f"model whose features are matched (e.g. the adapted H2): "
                                                   f"{MODEL_FORMS}")
    model_args(v)
    v.add_argument("--image", help="an image file (default: --index of the model's dataset)")
    v.add_argument("--index", type=int, default=0, help="image index in the split when no --image is given")
    v.add_argument("--layers", help="taps for the style (Gram) loss (default: the model's stages, e.g. pool1..pool5)")
    v.add_argument("--content-layers", help="taps for the content loss (default: --layers without the shallowest)")
    v.add_argument("--tv-weight", type=float, default=2.0, help="total-variation prior (0 = off)")
    v.add_argument("--steps", type=int, default=300)
    v.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "lbfgs"])
    v.add_argument("--step-size", type=float, help="optimizer learning rate (default per optimizer)")
    v.add_argument("--content-weight", type=float, default=1.0)
    v.add_argument("--style-weight", type=float, default=1.0)
    v.add_argument("--seed", type=int, default=0, help="seed of the start noise")
    v.add_argument("--scales", type=int, default=5,
                   help="optimise the image as a sum of this many scales (full, 1/2, 1/4 ...), so what the "
                        "features leave open is filled smoothly; 1 = single pixels")
    v.add_argument("--exact-gradients", action="store_true",
                   help="back-propagate through ReLUs and max-pools exactly; by default switched-off units still "
                        "pass a gradient, so the optimisation does not stall on them (the loss is exact either way)")
    config_args(v, (*DATA, "device"), presets=False)
    v.add_argument("--split", help="split to draw --index from (default: the val split)")
    v.add_argument("--out", required=True, help="output directory")
    v.set_defaults(func=cmd_reconstruct)

    v = viz.add_parser("overlays", help="image, ground truth and each model's prediction, in the dataset's colours")
    v.add_argument("--models", required=True, help="NAME=MODEL pairs, e.g. H1=runs/h1,B2=runs/b2,H2=runs/h2; a "
                   "MODEL is any form --h1 takes (a factory's weights and kwargs: --model-weights, --model-kwargs)")
    v.add_argument("--model-weights", action="append", default=[], metavar="NAME=FILE",
                   help="weights of the factory model NAME (repeatable)")
    v.add_argument("--model-kwargs", action="append", default=[], metavar="NAME=JSON",
                   help="keyword arguments of the factory model NAME (repeatable)")
    trust_args(v)
    _pair_args(v)
    v.set_defaults(func=cmd_overlays)

    v = viz.add_parser("report", help="(re)build report.html of a `segadapt experiment` directory")
    v.add_argument("sweep", help="the experiment's output directory")
    v.set_defaults(func=cmd_report)


def _pair_args(v: argparse.ArgumentParser) -> None:
    """The data options of the figures drawn on (D1, D2) pairs of a split."""
    config_args(v, (*DATA, *D2_FLAGS, "device"), presets=False,
                helps={"filter": "D2 made by this filter (photocopy | ripple | cubism)"})
    v.add_argument("--split", help="split to draw images from (default: the val split)")
    v.add_argument("--images", default="3", help="how many images (spread over the split), or indices: 0,5,9")
    v.add_argument("--out", required=True, help="output directory")


def _val_pairs(args: argparse.Namespace, cfg: RunConfig) -> tuple[Any, Any, list[int], Any]:
    """D1 and D2 sources of the chosen split, the image indices to show, and the eval transform."""
    from segadapt.data import build_source, make_transform, spread_indices
    from segadapt.data.d2 import d2_source

    split = args.split or cfg.data.val_split
    d1 = build_source(cfg.data, split)
    d2 = d2_source(cfg, split)
    chosen = numbers("--images", args.images, int)
    ids = list(dict.fromkeys(chosen)) if "," in args.images else spread_indices(len(d1), chosen[0])
    if not ids:
        raise SegadaptError(f"--images {args.images}: nothing to show; give a count >= 1 or indices like 0,5,9")
    for i in ids:
        if not 0 <= i < len(d1):
            raise SegadaptError(f"--images: index {i} outside 0..{len(d1) - 1} of {cfg.data.dataset}/{split}")
    return d1, d2, ids, make_transform(cfg.data, False, d1.info.ignore_index)


def _asks_for_d2(args: argparse.Namespace) -> bool:
    """Whether the command names a D2 (a D2 flag, or a shift.* key in --set): overlays then show D2."""
    return any(getattr(args, f) is not None for f in D2_FLAGS) or any(s.startswith("shift.") for s in args.set)


def _parse_channels(text: str | None) -> dict[str, int]:
    """"pool3=5,pool5=12" -> {"pool3": 5, "pool5": 12}."""
    out: dict[str, int] = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        tap, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise SegadaptError(f"--channels {text!r}: expected TAP=INDEX pairs, e.g. pool3=5,pool5=12")
        out[tap.strip()] = int(value)
    return out


def cmd_features(args: argparse.Namespace) -> int:
    from segadapt.data.pairs import PairedDataset
    from segadapt.runtime import select_device
    from segadapt.viz.features import write_feature_grids

    h1, meta = load_model_arg(args.h1, "--h1", args.h1_weights, args.h1_kwargs, trusted_factories(args))
    h2, _ = load_model_arg(args.h2, "--h2", args.h2_weights, args.h2_kwargs, trusted_factories(args))
    cfg = model_config(args, meta, args.h1)
    device = select_device(cfg.train.device)
    h1, h2 = h1.to(device), h2.to(device)
    d1, d2, ids, tf = _val_pairs(args, cfg)
    pairs = PairedDataset(d1, d2, tf)
    images = [(x1.to(device), x2.to(device)) for x1, x2 in (pairs[i] for i in ids)]
    taps = names(args.layers) if args.layers else default_taps(h1, args.h1)
    out = claim(check_path(args.out, "--out"))
    try:
        s = write_feature_grids(h1, h2, images, taps, out, tf.denormalize, names=[d1.stem(i) for i in ids],
                                channels=_parse_channels(args.channels))
    except (KeyError, ValueError) as e:
        raise SegadaptError(f"--layers/--channels: {e}") from None
    for t, e in s["errors"].items():
        print(f"{t} (channel {s['channels'][t]}): regression error {sum(e['before']) / len(ids):.4g} (H1 on X2) "
              f"-> {sum(e['after']) / len(ids):.4g} (H2 on X2)")
    print(f"wrote {len(s['files'])} grids and features.json to {args.out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from segadapt.data import build_source, make_transform
    from segadapt.runtime import select_device
    from segadapt.viz.reconstruct import ReconstructConfig, reconstruct_image

    model, meta = load_model_arg(args.model, "--model", args.model_weights, args.model_kwargs, trusted_factories(args))
    cfg = model_config(args, meta, args.model)
    device = select_device(cfg.train.device)
    tf = make_transform(cfg.data, False, 255)
    if args.image:
        from segadapt.data.base import read_image

        image, name = read_image(check_path(args.image, "--image")), Path(args.image).stem
    else:
        source = build_source(cfg.data, args.split or cfg.data.val_split)
        if not 0 <= args.index < len(source):
            raise SegadaptError(f"--index {args.index} outside 0..{len(source) - 1}")
        image, name = source.load_image(args.index), source.stem(args.index)
    x, _ = tf.apply(image, None, None)
    rc = ReconstructConfig(steps=args.steps, optimizer=args.optimizer, lr=args.step_size, seed=args.seed,
                           style_weight=args.style_weight, content_weight=args.content_weight,
                           tv_weight=args.tv_weight, scales=args.scales, surrogate=not args.exact_gradients)
    rc.taps = names(args.layers) if args.layers else default_taps(model, args.model)
    if args.content_layers:
        rc.content_taps = names(args.content_layers)
    out = claim(check_path(args.out, "--out"))
    try:
        r = reconstruct_image(model.to(device), x, out, rc, cfg.data.mean, cfg.data.std, device, name=name)
    except (KeyError, ValueError) as e:
        raise SegadaptError(f"reconstruct: {e}") from None
    first, last = r["first_loss"], r["last_loss"]
    print(f"loss {first:.4g} -> {last:.4g} ({first / max(last, 1e-30):.1f}x lower) in {r['steps']} steps")
    files = [Path(r[k]).name for k in r if isinstance(r[k], str) and Path(r[k]).suffix in (".png", ".csv")]
    print(f"wrote {', '.join(files)} to {args.out} (the image as {args.model} sees it: *_reconstruction.png)")
    return 0


def cmd_overlays(args: argparse.Namespace) -> int:
    from segadapt.data import SegmentationDataset
    from segadapt.runtime import select_device
    from segadapt.viz.overlays import overlay_figure, predict

    named = [item.partition("=") for item in args.models.split(",") if item.strip()]
    if not named or any(not path for _, _, path in named):
        raise SegadaptError(f"--models {args.models!r}: expected NAME=RUN pairs, e.g. H1=runs/h1,H2=runs/h2")
    labels = [name.strip() for name, _, _ in named]
    if len(set(labels)) != len(labels):
        raise SegadaptError(f"--models {args.models!r}: each NAME once (a second would replace the first)")
    weights, kwargs = _per_name(args.model_weights, "--model-weights", labels), \
        _per_name(args.model_kwargs, "--model-kwargs", labels)
    loaded = {label: (path.strip(), *load_model_arg(path.strip(), "--models", weights.get(label), kwargs.get(label),
                                                    trusted_factories(args)))
              for label, (_, _, path) in zip(labels, named)}
    cfg = model_config(args, loaded[labels[0]][2], loaded[labels[0]][0])
    device = select_device(cfg.train.device)
    models = {label: model.to(device) for label, (_, model, _) in loaded.items()}
    d1, d2, ids, tf = _val_pairs(args, cfg)
    for path, _, meta in loaded.values():
        same_classes(path, meta, cfg, d1.info.num_classes)
    source = d2 if _asks_for_d2(args) else d1
    ds = SegmentationDataset(source, tf)
    out = claim(check_path(args.out, "--out"))
    out.mkdir(parents=True, exist_ok=True)
    info = d1.info
    for i in ids:
        x, mask = ds[i]
        preds = {label: predict(m, x.to(device)) for label, m in models.items()}
        overlay_figure(tf.denormalize(x), mask.numpy(), preds, info.class_names, info.palette, info.ignore_index,
                       out / f"overlay_{source.stem(i)}.png", title=source.stem(i))
    print(f"wrote {len(ids)} overlays to {out}")
    return 0


def _per_name(items: list[str], flag: str, labels: list[str]) -> dict[str, str]:
    """NAME=VALUE items of a repeatable flag, each NAME one of --models'."""
    out: dict[str, str] = {}
    for item in items:
        label, sep, value = item.partition("=")
        if not sep or label.strip() not in labels:
            raise SegadaptError(f"{flag} {item!r}: expected NAME=VALUE with NAME one of --models' "
                                f"({', '.join(labels)})")
        out[label.strip()] = value
    return out


def default_taps(model: Any, spec: str) -> list[str]:
    """The model's stage taps (its one-tap presets) for figure rows, or one line asking for --layers."""
    from segadapt.models.contract import conform, preset_taps, tap_listing

    taps = preset_taps(conform(model))
    if not taps:
        raise SegadaptError(f"{spec}: this model has no named stages; pass --layers with tap names such as "
                            f"{tap_listing(conform(model).TAPS, 6)}")
    return taps


def cmd_report(args: argparse.Namespace) -> int:
    from segadapt.viz.report import write_report

    print(f"report: {write_report(check_path(args.sweep, 'sweep'))}")
    return 0
