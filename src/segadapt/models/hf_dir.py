"""Hugging Face model directories (`save_pretrained` output) in and out, and HF models built from a config.

Everything is built offline: from `config.json` + `model.safetensors` with local_files_only, or from a config
alone (random init). Pickled `pytorch_model.bin` weights and configs that ask for remote code or a downloaded
backbone are refused. `preprocessor_config.json`, when present, gives the normalisation and the scale H1 was
trained at (models/scale.py); `segadapt.json`, beside the weights of a model segadapt wrote, the run's config.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from segadapt.chatter import hushed
from segadapt.config import IMAGENET_MEAN, IMAGENET_STD
from segadapt.errors import CheckpointError, ConfigError
from segadapt.models.hf import SUPPORTED, HFSegmentation, require_transformers
from segadapt.models.scale import preprocessor_base_size, preprocessor_size, recorded_config, trained_base_size

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
RECORD_FILE = "segadapt.json"  # what segadapt knows of a model it wrote and transformers has no key for
RECORDED = ("config", "class_names", "palette", "dataset", "layers", "adapted_from", "pixel_factor")
HF_PREFIX = "hf:"

# SegFormer-B0 (MiT-b0 encoder, all-MLP decoder) as published; `width` scales the per-head and decoder widths
SEGFORMER_B0: dict[str, Any] = {
    "model_type": "segformer", "num_channels": 3, "num_encoder_blocks": 4, "depths": [2, 2, 2, 2],
    "sr_ratios": [8, 4, 2, 1], "hidden_sizes": [32, 64, 160, 256], "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2], "num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [4, 4, 4, 4],
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "classifier_dropout_prob": 0.1, "drop_path_rate": 0.1, "layer_norm_eps": 1e-6,
    "decoder_hidden_size": 256, "semantic_loss_ignore_index": 255,
}


def is_hf_dir(path: str | Path) -> bool:
    """A directory with a config.json: what save_pretrained writes (segadapt run dirs hold config.toml)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file()


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e}); re-save the model with save_pretrained") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(data).__name__}, not an object; re-save the model")
    return data


def check_supported(raw: Mapping[str, Any], source: str | Path) -> None:
    """Refuse, in one line naming the file, configs segadapt cannot build offline or does not wrap."""
    kind = raw.get("model_type")
    backbone = raw.get("backbone_config") or {}
    if raw.get("auto_map"):
        raise CheckpointError(f"{source}: the config asks for remote code (auto_map); segadapt never runs it and "
                              f"reads {SUPPORTED}")
    if kind == "upernet":
        if raw.get("use_timm_backbone") or raw.get("use_pretrained_backbone") or raw.get("backbone"):
            raise CheckpointError(f"{source}: the config names a backbone to download (backbone / "
                                  "use_pretrained_backbone); segadapt builds offline: give backbone_config instead")
        if not isinstance(backbone, Mapping) or backbone.get("model_type") != "convnext":
            got = backbone.get("model_type") if isinstance(backbone, Mapping) else None
            raise CheckpointError(f"{source}: UperNet with a {got or 'default (resnet)'} backbone is not supported; "
                                  f"segadapt reads {SUPPORTED}")
    elif kind != "segformer":
        raise CheckpointError(f"{source}: model_type {kind!r} is not supported; segadapt reads {SUPPORTED} "
                              "(wrap other networks with a Python factory: package.module:function)")


@contextlib.contextmanager
def _blamed_on(source: str | Path, version: str) -> Iterator[None]:
    """transformers checks a config's fields only in part: a `depths` shorter than `num_encoder_blocks` is an
    IndexError and 0 attention heads a ZeroDivisionError while the model is built. Whatever building or loading
    from a user's files raises is those files' fault, so it is one line naming them."""
    try:
        with hushed():
            yield
    except Exception as e:  # noqa: BLE001 (any class: see above)
        first = " ".join(str(e).split())  # its validation errors put the field on one line, the reason on the next
        raise CheckpointError(f"{source}: transformers {version} cannot build a model from it ({type(e).__name__}"
                              f"{': ' + first[:160] if first else ''}); fix it or re-save the model with "
                              "save_pretrained") from None


def config_from_dict(raw: Mapping[str, Any], source: str | Path) -> Any:
    """A transformers config object from a config.json dict (nested backbone configs included)."""
    check_supported(raw, source)
    transformers = require_transformers()
    with _blamed_on(source, transformers.__version__):
        return transformers.AutoConfig.for_model(**dict(raw))


def build_from_config(raw: Mapping[str, Any], source: str | Path, num_classes: int = 0) -> HFSegmentation:
    """A randomly initialised model of that config (no file is read but the config); `num_classes` > 0 sets
    the class count (a fresh head for a new dataset)."""
    config = config_from_dict(raw, source)
    if num_classes and num_classes != config.num_labels:
        config.num_labels = num_classes
    transformers = require_transformers()
    with _blamed_on(source, transformers.__version__):
        net = transformers.AutoModelForSemanticSegmentation.from_config(config)
    return HFSegmentation(net)


def segformer_b0(num_classes: int, width: float = 1.0) -> HFSegmentation:
    """SegFormer-B0, random init; `width` < 1 shrinks the head dimension (32 per head) and the decoder."""
    head_dim = max(1, round(32 * width))
    raw = {**SEGFORMER_B0, "num_labels": num_classes,
           "hidden_sizes": [h * head_dim for h in SEGFORMER_B0["num_attention_heads"]],
           "decoder_hidden_size": max(4, round(SEGFORMER_B0["decoder_hidden_size"] * width))}
    return build_from_config(raw, "segformer_b0", num_classes)


def from_hf_arch(arch: str, num_classes: int, width: float = 1.0) -> HFSegmentation:
    """`hf:DIR`: a fresh model of the architecture in DIR/config.json (its weights, if any, are not read)."""
    folder = Path(arch[len(HF_PREFIX):])
    if not is_hf_dir(folder):
        raise ConfigError(f"model.arch {arch}: {folder / CONFIG_FILE} not found; name a directory holding a "
                          "transformers config.json (what save_pretrained writes)")
    if width != 1.0:
        raise ConfigError(f"model.arch {arch}: model.width={width} applies to the built-in architectures only; "
                          "set model.width=1 (the config fixes the sizes)")
    return build_from_config(read_json(folder / CONFIG_FILE), folder / CONFIG_FILE, num_classes)


def preprocessing(folder: Path) -> dict[str, Any]:
    """image_mean / image_std in segadapt's units (pixels scaled to 0..1), and the base size it resizes to
    (when it says), from preprocessor_config.json.

    transformers normalises (pixel * rescale_factor - mean) / std on 0..255 pixels; segadapt normalises
    (pixel / 255 - mean) / std, so both are divided by 255 * rescale_factor. {} when there is no such file.
    """
    path = folder / PREPROCESSOR_FILE
    if not path.is_file():
        return {}
    raw = read_json(path)
    scale = 255.0 * (float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) else 1.0)
    if raw.get("do_normalize", True):
        mean, std = _three(raw.get("image_mean", IMAGENET_MEAN), path), _three(raw.get("image_std", IMAGENET_STD), path)
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    if not scale > 0 or min(std) <= 0:
        raise CheckpointError(f"{path}: image_std and rescale_factor must be > 0; fix the preprocessor config")
    base_size = preprocessor_base_size(raw, str(path))
    return {"image_mean": [m / scale for m in mean], "image_std": [s / scale for s in std],
            "reduce_labels": bool(raw.get("do_reduce_labels", False)),
            **({"base_size": base_size} if base_size is not None else {})}


def read_record(folder: Path, num_classes: int) -> dict[str, Any]:
    """What segadapt.json records of a model segadapt wrote (its run config, classes, palette), or {}."""
    path = folder / RECORD_FILE
    if not path.is_file():
        return {}
    raw = read_json(path)
    record = {k: raw[k] for k in RECORDED if k in raw}
    names = record.get("class_names")
    if recorded_config(record) is None or (names is not None and len(names) != num_classes):
        raise CheckpointError(f"{path}: not the record segadapt writes (a run config with [data], one class name "
                              f"per class); delete it to load the model without it")
    return record


def _three(value: Any, path: Path) -> list[float]:
    values = [value] * 3 if isinstance(value, (int, float)) else value
    if not isinstance(values, list) or len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        raise CheckpointError(f"{path}: image_mean/image_std must be a number or three numbers; got {value!r}")
    return [float(v) for v in values]


def hf_meta(model: HFSegmentation, source: str | Path | None = None) -> dict[str, Any]:
    """Model-file metadata that rebuilds `model` with no directory at hand (models.loading.load_model)."""
    config = model.net.config
    labels = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    ignore = getattr(config, "semantic_loss_ignore_index", getattr(config, "loss_ignore_index", 255))
    meta: dict[str, Any] = {
        "arch": "hf", "width": 1.0, "num_classes": model.num_classes,
        "class_names": [labels.get(i, str(i)) for i in range(model.num_classes)],
        "ignore_index": int(ignore),
        "hf_config": json.loads(config.to_json_string(use_diff=False)),  # every field: defaults may change
    }
    if source is not None:
        meta["hf_source"] = str(source)
    return meta


def load_hf_dir(path: str | Path, device: torch.device | str = "cpu") -> tuple[HFSegmentation, dict[str, Any]]:
    """H1 from a save_pretrained directory, in eval mode, and its metadata (with image_mean / image_std from
    preprocessor_config.json when present: the data transform must use them)."""
    folder = Path(path)
    cfg_file = folder / CONFIG_FILE
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}; pass a directory written by save_pretrained")
    check_supported(read_json(cfg_file), cfg_file)
    if not (folder / WEIGHTS_FILE).is_file() and not (folder / f"{WEIGHTS_FILE}.index.json").is_file():
        pickled = any((folder / n).is_file() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json"))
        fix = ("it holds pickled pytorch_model.bin weights, which segadapt never loads: re-save them with "
               "save_pretrained (safetensors)") if pickled else "pass the directory save_pretrained wrote"
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE} beside {CONFIG_FILE}; {fix}")
    transformers = require_transformers()
    with _blamed_on(folder, transformers.__version__):  # its load report: the checks below say what matters
        net, info = transformers.AutoModelForSemanticSegmentation.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            output_loading_info=True)
    bad = sorted(info.get("missing_keys", ())) + sorted(str(k) for k in info.get("mismatched_keys", ()))
    if bad:  # transformers would fill these with random numbers: never adapt a partly random H1
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: weights missing or of the wrong shape for {CONFIG_FILE} "
                              f"({', '.join(bad[:3])}); re-save the model with save_pretrained")
    model = HFSegmentation(net).to(device).eval()
    return model, {**hf_meta(model, folder), **preprocessing(folder), **read_record(folder, model.num_classes)}


def _write_record(folder: Path, record: Mapping[str, Any]) -> None:
    """segadapt.json, and the preprocessor's normalisation and scale, from a model file's metadata."""
    config = recorded_config(record)
    (folder / RECORD_FILE).write_text(json.dumps({k: record[k] for k in RECORDED if k in record}, indent=2) + "\n")
    if config is None:
        return
    base_size = trained_base_size(record) or 0
    path = folder / PREPROCESSOR_FILE
    if path.is_file():
        raw = read_json(path)
        stated = preprocessor_base_size(raw, str(path))
        if stated is None or stated == base_size:  # H1's file says nothing of the scale, or the same
            return
        processor = {**raw, **preprocessor_size(base_size)}
    else:
        data = config["data"]
        processor = {"image_processor_type": "SegformerImageProcessor", **preprocessor_size(base_size),
                     "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                     "image_mean": list(data.get("mean", IMAGENET_MEAN)),
                     "image_std": list(data.get("std", IMAGENET_STD))}
    path.write_text(json.dumps(processor, indent=2) + "\n")


def save_hf_dir(model: HFSegmentation, src_dir: str | Path | None, dst_dir: str | Path,
                record: Mapping[str, Any] | None = None) -> Path:
    """Write `model` as a save_pretrained directory (loadable by AutoModelForSemanticSegmentation), atomically.

    H1's own config.json and preprocessor_config.json are copied from `src_dir`, so the adapted model is a
    drop-in replacement (labels, normalisation, scale). `record`, the model file's metadata, goes to
    segadapt.json (its run config: the data settings and scale it was trained at) and, without a source (a
    model segadapt trained), gives a preprocessor_config.json (its data.mean/std and base size). A copied
    preprocessor that states a scale other than the record's is given the record's.
    """
    dst = Path(dst_dir)
    dst.parent.mkdir(parents=True, exist_ok=True)
    require_transformers()  # imported first, so hushed() finds its progress bars to turn off
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        with hushed():
            model.net.save_pretrained(tmp)
        for name in (CONFIG_FILE, PREPROCESSOR_FILE):
            if src_dir is not None and (Path(src_dir) / name).is_file():
                shutil.copyfile(Path(src_dir) / name, tmp / name)
        if record:
            _write_record(tmp, record)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
