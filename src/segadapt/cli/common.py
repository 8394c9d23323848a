"""What every command shares: config flags and the one precedence, output folders, and small parsers.

Precedence, for every command alike: preset (or the config a model or run was saved with) < --config FILE
< the command's flags < --set KEY=VALUE. A flag is a shortcut for one config key (`FLAGS`); a command
declares which ones it offers, so `segadapt doctor --help` lists no optimisation flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segadapt import model_settings as settings
from segadapt.config import (
    DEFAULT_PRESET,
    PRECISIONS,
    RunConfig,
    dataset_preset,
    merge,
    parse_override,
    preset,
    read_toml,
)
from segadapt.errors import SegadaptError
from segadapt.paths import check_path


def numbers(flag: str, text: str, kind: type) -> list[Any]:
    """A comma-separated list of numbers from a flag, or one line saying what was expected."""
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        example = "0,5,9" if kind is int else "0.2,0.4"
        raise SegadaptError(f"{flag} {text}: expected {kind.__name__} numbers separated by commas, "
                            f"e.g. {example}") from None


def names(text: str) -> list[str]:
    """"pool3, pool5" -> ["pool3", "pool5"]."""
    return [x.strip() for x in text.split(",") if x.strip()]


def terms(flag: str, text: str) -> dict[str, float]:
    """"features,output_kl=0.5" -> {"features": 1.0, "output_kl": 0.5}: adapt.objective from a flag (a term
    without "=weight" weighs 1); names and weights are checked with the config (config.check_objective)."""
    table: dict[str, float] = {}
    for part in names(text):
        name, _, weight = part.partition("=")
        try:
            table[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise SegadaptError(f"{flag} {text}: {part!r} is not term or term=weight, e.g. "
                                f"features,output_kl=0.5") from None
    return table


def _absolute(flag: str, text: str) -> str:
    """A path stored absolute, so a resumed run finds it from any working directory."""
    return str(check_path(text, flag).resolve())


def _model_spec(flag: str, text: str) -> str:
    """A model path made absolute; a factory spec (package.module:function, not a path) kept as written."""
    return text if is_factory(text) else _absolute(flag, text)


def _arch(flag: str, text: str) -> str:
    """model.arch: a registry name as given, hf:DIR with DIR absolute (a resumed run rebuilds from it)."""
    return f"hf:{_absolute(flag, text[3:])}" if text.startswith("hf:") else text


@dataclass(frozen=True)
class Flag:
    """A command-line shortcut for one config key: `convert` turns the flag's text into the key's value."""

    key: str
    help: str
    type: Callable[[str], Any] = str
    convert: Callable[[str, str], Any] | None = None  # (flag, text) -> value, for values argparse cannot type
    repeat: bool = False  # may be given several times; the key holds the list
    aliases: tuple[str, ...] = ()  # other option strings of the same flag


# flag (dest name) -> the config key it sets; a command picks the ones it uses
FLAGS: dict[str, Flag] = {
    "dataset": Flag("data.dataset", "synthetic | camvid | voc | folder"),
    "root": Flag("data.root", "dataset root directory"),
    "iterations": Flag("train.iterations", "training steps", int),
    "batch_size": Flag("train.batch_size", "global batch size", int),
    "lr": Flag("train.lr", "base learning rate", float),
    "width": Flag("model.width", "VGG channel multiplier (1.0 = paper, 0.25 = CPU)", float),
    "arch": Flag("model.arch", "vgg16_deeplab | pixel | segformer_b0 | hf:DIR (a fresh model of the transformers "
                 "config.json in DIR)", convert=_arch),
    "init_weights": Flag("model.init_weights", "torchvision-format VGG-16 ImageNet state dict (.pth or .safetensors)"),
    "device": Flag("train.device", "auto | cpu | cuda | cuda:N"),
    "precision": Flag("train.precision", "auto | fp32 | bf16 (autocast). auto: bf16 on GPUs with native bf16; on a "
                      "CPU only where it computes bf16 natively and a timed step is faster in it (recorded in "
                      "config.toml)"),
    "seed": Flag("train.seed", "random seed", int),
    "threads": Flag("train.threads", "CPU threads for torch", int),
    "time_budget": Flag("train.time_budget_s", "stop training after this many seconds", float),
    "workers": Flag("data.num_workers", "data-loader worker processes", int),
    "out_dir": Flag("out_dir", "folder for new run directories"),
    "h1": Flag("adapt.h1", "source model H1: a segadapt run directory or model .safetensors, a transformers "
               "save_pretrained directory, or a Python factory package.module:function", convert=_model_spec),
    "h1_weights": Flag("adapt.h1_weights", "factory H1's weights: a state dict (.safetensors, or .pth read with "
                       "weights_only=True)", convert=_absolute),
    "h1_kwargs": Flag("adapt.h1_kwargs", "factory H1's keyword arguments as a JSON object, e.g. '{\"classes\": 11}'"),
    "trust_factory": Flag("adapt.trust_factories", "let a model file that names this factory (package.module:"
                          "function) be rebuilt by calling it, which runs its code; repeatable", repeat=True,
                          aliases=("--factory",)),
    "norm": Flag("adapt.norm", "BatchNorm statistics while adapting: keep (H1's) | adabn (re-estimated on D2)"),
    "method": Flag("peer.method", "the label-free peer: adabn (BatchNorm statistics re-estimated on D2) | tent "
                   "(entropy minimised by the norm layers' affine parameters) | self_training (H1's confident "
                   "predictions as labels)"),
    "layers": Flag("adapt.layers", "taps to regress, comma-separated, or one of the model's presets (default: its "
                   "deepest stage). VGG: pool1..pool5, fc6, fc7; transformers models: stage1..stageN or module paths; "
                   "presets: each stage, all (= all_inc), all_inc, all_dec", convert=lambda f, t: names(t)),
    "weights": Flag("adapt.weights", "one weight per layer, comma-separated (default 1.0 each)",
                    convert=lambda f, t: numbers(f, t, float)),
    "objective": Flag("adapt.objective", "what H2 is trained to minimise: terms with optional weights, comma-"
                      "separated, e.g. features,output_kl=0.5 (default: the architecture's measured best, output_kl,"
                      "paired_pseudo for the VGG and transformers models). features (MSE on --layers), "
                      "features_std (the same, standardised per channel by H1's statistics on D1), output_kl "
                      "(pixel-wise KL to H1's prediction on X1), paired_pseudo (cross-entropy on H1's confident "
                      "labels of X1), entropy (H2's prediction entropy on X2)", convert=terms),
    "weighting": Flag("adapt.weighting", "how terms and layers are weighted: fixed (as given) | normalised (each by "
                      "a running mean of its own value) | uncertainty (learned, Kendall et al. 2018)"),
    "select": Flag("adapt.select", "signal choosing model_selected: holdout_loss | agreement (H2's labels on D2 "
                   "against H1's on D1) | entropy | labels (mIoU on --d2-labels)"),
    "d2_labels": Flag("adapt.d2_labels", "a few labelled D2 images, in the layout `segadapt shift` writes (its "
                      "train split): adds cross-entropy on them to the objective and their mIoU to every probe",
                      convert=_absolute),
    "filter": Flag("shift.filter", "D2 made by this filter: photocopy | ripple | cubism | misalign, or a "
                   "composition such as photocopy+misalign (a part may carry its own severity: misalign=0.5)"),
    "severity": Flag("shift.severity", "filter severity 0..1", float),
    "target_distortion": Flag("shift.target_distortion", "search the severity at which --model's distortion is "
                              "this (on D1 train images, ± shift.search_tolerance)", float),
    "d2_dir": Flag("shift.d2_dir", "D2 images: a `segadapt shift` output or a folder matched to D1 by file stem"),
    "pairs": Flag("shift.pairs_csv", "CSV with columns x1,x2 listing image pairs"),
    "d1_raster": Flag("shift.d1_raster", "D1 mosaic (GeoTIFF): pairs by ground coordinates with --d2-raster"),
    "d2_raster": Flag("shift.d2_raster", "D2 mosaic (GeoTIFF) of the same area, resampled onto D1's grid"),
    "label_raster": Flag("shift.label_raster", "D1's labels as a raster on the ground (one band of class indices), "
                         "to score on"),
    "align": Flag("adapt.align", "register pairs that are not pixel-aligned: none | ecc (small offsets) | features "
                  "(keypoints + RANSAC, large offsets) | geo (GeoTIFF tiles, by their georeferencing)"),
}
DATA = ("dataset", "root")
TRAINING = (*DATA, "iterations", "batch_size", "lr", "width", "arch", "init_weights", "device", "precision", "seed",
            "threads", "time_budget", "workers")


def precision_arg(p: argparse.ArgumentParser) -> None:
    """--precision of the inference commands (predict, evaluate): their own choice, not the model's training one."""
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="fp32 or bf16 autocast; auto (default): bf16 where the device computes it natively, it is "
                   "faster on a sample and its masks agree with fp32's on >= 99.5%% of the pixels (reported)")


def config_args(p: argparse.ArgumentParser, flags: Sequence[str], *, presets: bool = True,
                keys: dict[str, str] | None = None, helps: dict[str, str] | None = None,
                required: Sequence[str] = ()) -> None:
    """--preset (if `presets`), --config, --set and the named FLAGS; `keys`/`helps` re-point a flag for this
    command (`segadapt shift --seed` is the shift's seed, not the training seed)."""
    g = p.add_argument_group("configuration (later ones win: preset < --config < flags < --set)")
    if presets:
        g.add_argument("--preset", help="start from a preset: voc (the study), synthetic, camvid, demo, study-camvid")
    g.add_argument("--config", help="TOML file with any of the [model], [data], [train], [shift], [adapt], "
                                    "[experiment], [peer] tables")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set train.lr=0.01")
    chosen: dict[str, Flag] = {}
    for name in flags:
        f = FLAGS[name]
        if keys and name in keys:
            f = Flag(keys[name], f.help, f.type, f.convert, f.repeat, f.aliases)
        chosen[name] = f
        extra: dict[str, Any] = {"action": "append"} if f.repeat else {}
        g.add_argument(f"--{name.replace('_', '-')}", *f.aliases, type=f.type, required=name in required,
                       help=(helps or {}).get(name, f.help), **extra)
    p.set_defaults(config_flags=chosen)


def resolve_config(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """preset (or `base`, e.g. a run's saved config) < --config file < the command's flags < --set. Without
    either, the dataset the command names brings its own preset (`--dataset camvid`: CamVid's size, crop,
    scale range, batch and learning rates), any other the default one."""
    name = getattr(args, "preset", None)
    if name or base is not None:
        return _arch_own(_layered(args, preset(name) if name else base), args)
    cfg = _layered(args, preset(DEFAULT_PRESET))
    own = dataset_preset(cfg.data.dataset)
    return _arch_own(cfg if own.name == DEFAULT_PRESET else _layered(args, own), args)


def _arch_own(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """A preset's model.width sizes the built-in architectures; a transformers config (hf:DIR) fixes its own
    sizes, so there the width is 1 unless the user set one (which models/hf_dir.py then refuses)."""
    if cfg.model.arch.startswith("hf:") and "model.width" not in explicit_keys(args):
        cfg.model.width = 1.0
    return cfg


def _layered(args: argparse.Namespace, cfg: RunConfig) -> RunConfig:
    """`cfg` < --config file < the command's flags < --set."""
    if getattr(args, "config", None):
        cfg = merge(cfg, read_toml(args.config), args.config)
    overrides: dict[str, Any] = {}
    for dest, f in getattr(args, "config_flags", {}).items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if f.convert is not None:
            flag = f"--{dest.replace('_', '-')}"
            value = [f.convert(flag, v) for v in value] if f.repeat else f.convert(flag, value)
        *section, key = f.key.split(".")
        (overrides.setdefault(section[0], {}) if section else overrides)[key] = value
    for text in getattr(args, "set", []):
        _deep_update(overrides, parse_override(text))
    return merge(cfg, overrides, "command line") if overrides else cfg


def quiet_arg(p: argparse.ArgumentParser) -> None:
    """--quiet, for the commands that run long (train, adapt, experiment, demo)."""
    p.add_argument("--quiet", action="store_true", help="print no config summary and no progress bars")


def announce(cfg: RunConfig, args: argparse.Namespace, run_dir: Path, start: RunConfig | None = None) -> None:
    """What a long command says before it starts: where its whole config goes (config.toml) and the keys that
    differ from the preset it started from (--preset, `start`, or the dataset's own); with --quiet nothing,
    and no progress bars either."""
    import json

    from segadapt import progress
    from segadapt.config import to_dict

    quiet = bool(getattr(args, "quiet", False))
    progress.quiet(quiet)
    if quiet:
        return
    name = getattr(args, "preset", None)
    base = preset(name) if name else start or dataset_preset(cfg.data.dataset)
    changed = _changes(to_dict(base), to_dict(cfg))
    print(f"config: {run_dir / 'config.toml'} (preset {base.name}"
          f"{f', and {len(changed)} keys that differ from it:' if changed else ', unchanged'})")
    for key, value in changed:
        print(f"  {key} = {json.dumps(value)}")


def _changes(base: dict[str, Any], cfg: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(section.key, value) of `cfg` where it differs from `base`, in the config's order."""
    out: list[tuple[str, Any]] = []
    for key, value in cfg.items():
        was = base.get(key)
        # a section (same keys) lists its changed keys; a table value (adapt.objective) is shown whole
        if isinstance(value, dict) and isinstance(was, dict) and value and set(value) == set(was):
            out += _changes(was, value, f"{prefix}{key}.")
        elif value != was:
            out.append((f"{prefix}{key}", value))
    return out


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """--set section.key=value over the flags' overrides: a section merges key by key, a key's value (a table
    such as adapt.objective too) replaces the flag's whole, as config.merge does."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k, {}), dict):
            dst.setdefault(k, {}).update(v)
        else:
            dst[k] = v


def resumed(args: argparse.Namespace, kind: str, fixed: Sequence[str]) -> tuple[Path, RunConfig | None]:
    """`--resume RUN`: the run directory and the config it continues with (None: already finished). Flags in
    `fixed` would change the run's own settings or directory and are refused, naming them."""
    from segadapt.run_dir import resumed_config

    run_dir = check_path(args.resume, "--resume")
    given = [f"--{k.replace('_', '-')}" for k in fixed if getattr(args, k, None)]
    if given:
        raise SegadaptError(f"--resume {run_dir} continues the run in its own directory with its own config; "
                            f"drop {', '.join(given)}")
    return run_dir, resumed_config(run_dir, kind, lambda saved: resolve_config(args, saved))


# --- output folders: run_dir.py's one registry, imported when a command first writes (it needs torch, which
# `segadapt --help` and a mistyped flag should not wait for)

def claim(path: Path, *, lock_it: bool = False) -> Path:
    from segadapt import run_dir

    return run_dir.claim(path, lock_it=lock_it)


def output_dir(out: str | None, out_dir: str, name: str) -> Path:
    from segadapt import run_dir

    return run_dir.output_dir(out, out_dir, name)


def keep_outputs(path: Path) -> None:
    from segadapt import run_dir

    run_dir.keep_outputs(path)


def _held() -> Any:
    """run_dir when a command has loaded it (so it may hold folders), else None."""
    return sys.modules.get("segadapt.run_dir")


def discard_partial_outputs() -> None:
    if (run_dir := _held()) is not None:
        run_dir.discard_partial_outputs()


def forget_outputs() -> None:
    if (run_dir := _held()) is not None:
        run_dir.forget_outputs()


# --- small checks shared by commands ----------------------------------------------------------------

def json_out(out: str | None) -> None:
    """Check a JSON --out path before the work that fills it, not after."""
    if out and check_path(out, "--out").is_dir():
        raise SegadaptError(f"--out {out}: is a folder; give the path of a .json file to write")


def same_classes(path: str | Path, meta: dict[str, Any], cfg: RunConfig, num_classes: int) -> None:
    """The model's classes against the dataset's (distortion.check_classes)."""
    from segadapt.distortion import check_classes

    check_classes(path, meta["num_classes"], cfg, num_classes)


def trained_config(meta: dict[str, Any], model_path: str | Path, dataset: str = "") -> RunConfig:
    """The data settings and architecture a model was trained with (model_settings.trained_config)."""
    return settings.trained_config(meta, model_path, dataset)


def model_config(args: argparse.Namespace, meta: dict[str, Any], model_path: str | Path,
                 base: Callable[[str], RunConfig] | None = None) -> RunConfig:
    """A trained model's settings, overridden by the command line (which names the data of an external one),
    fitted to the model: model_settings.model_config with the command line as the overrides."""
    require_data(args, meta, model_path)
    return settings.model_config(meta, model_path, lambda start: resolve_config(args, start), explicit_keys(args),
                                 base)


def fit_to_model(cfg: RunConfig, meta: dict[str, Any], model_path: str | Path,
                 args: argparse.Namespace | None = None) -> RunConfig:
    """The model's normalisation and scale, each unless the command line set it (model_settings.fit_to_model)."""
    return settings.fit_to_model(cfg, meta, model_path, explicit_keys(args) if args is not None else ())


def explicit_keys(args: argparse.Namespace) -> set[str]:
    """The config keys the user set explicitly: with a flag, in --config FILE or with --set."""
    flags = {f.key for dest, f in getattr(args, "config_flags", {}).items() if getattr(args, dest, None) is not None}
    return flags | _given_keys(args)


def _given_keys(args: argparse.Namespace) -> set[str]:
    """The config keys the user set explicitly, as section.key: in --config FILE or with --set."""
    keys: set[str] = set()
    if getattr(args, "config", None):
        keys |= {f"{t}.{k}" for t, table in read_toml(args.config).items() if isinstance(table, dict) for k in table}
    for text in getattr(args, "set", []):
        keys.add(text.partition("=")[0].strip())
    return keys


def require_data(args: argparse.Namespace, meta: dict[str, Any], model: str | Path) -> None:
    """An external model knows nothing of the data it is to see: refuse, in one line, a command that names none."""
    named = bool(getattr(args, "dataset", None) or getattr(args, "preset", None) or getattr(args, "pairs", None)
                 or any(k.startswith("data.") for k in _given_keys(args)))
    settings.require_data(meta, model, named)


def model_args(p: argparse.ArgumentParser, name: str = "model", trust: bool = True) -> None:
    """--NAME-weights and --NAME-kwargs for a model named by a factory spec, and --trust-factory (once)."""
    p.add_argument(f"--{name}-weights", help=f"with a factory --{name}: its state dict (.safetensors, or .pth read "
                                             "with weights_only=True)")
    p.add_argument(f"--{name}-kwargs", help=f"with a factory --{name}: its keyword arguments as a JSON object")
    if trust:
        trust_args(p)


def trust_args(p: argparse.ArgumentParser) -> None:
    """--trust-factory: every command that loads a model file takes it, since any model file (an adapted
    factory H2 included) may name a factory that only an explicit trust lets segadapt call."""
    p.add_argument("--trust-factory", "--factory", action="append", default=[], metavar="PKG.MOD:FN",
                   help="let a model file naming this factory be rebuilt by calling it (runs its code); repeatable "
                        "(adapt.trust_factories in --config or --set adds to it)")


def trusted_factories(args: argparse.Namespace) -> list[str]:
    """The factories this command may call: --trust-factory, and adapt.trust_factories as --config or --set
    give it. Never a model file's own config: a file must not vouch for the code it names."""
    given = list(getattr(args, "trust_factory", None) or [])
    if getattr(args, "config", None) or getattr(args, "set", None):
        given += resolve_config(args).adapt.trust_factories
    return list(dict.fromkeys(given))


MODEL_FORMS = ("a segadapt run directory or model .safetensors, a transformers save_pretrained directory, or a "
               "Python factory package.module:function")


def is_factory(spec: str) -> bool:
    """A factory spec package.module:function that is not an existing path (models/spec.py)."""
    from segadapt.models.spec import model_kind

    return model_kind(spec) == "factory"


def is_model_file(spec: str) -> bool:
    """A segadapt run directory or model file (not a transformers directory or a factory spec)."""
    from segadapt.models.spec import model_kind

    return model_kind(spec) == "segadapt"


def load_model_arg(spec: str, flag: str, weights: str | None = None, kwargs: str | None = None,
                   trusted: Sequence[str] = (), device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Any model form a command accepts (segadapt run or file, transformers directory, factory spec), through
    models.loading.load_any; the path is checked first, a factory's weights file too."""
    from segadapt.models.loading import load_any

    check_path(spec, flag)
    if weights:
        check_path(weights, f"{flag}-weights")
    return load_any(spec, device, weights=weights or None, kwargs=kwargs or None, trusted_factories=trusted)
