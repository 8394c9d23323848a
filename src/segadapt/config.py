"""Typed run configuration: dataclasses, presets, TOML load/save and ``section.key=value`` overrides.

Every run saves the resolved config as ``config.toml`` so it can be reproduced with ``--config``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segadapt.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")  # train.precision, and --precision of predict and evaluate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    arch: str = "vgg16_deeplab"
    width: float = 1.0  # channel multiplier: 1.0 is the paper's VGG-16, 0.25 is CPU-sized
    num_classes: int = 0  # 0 = take it from the dataset
    init_weights: str = ""  # torchvision-format VGG-16 state dict (ImageNet init), optional


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | camvid | voc | folder
    root: str = ""  # dataset root (unused for synthetic)
    train_split: str = "train"
    val_split: str = "val"
    # Images are first resized so their shorter side is `base_size` (0 = keep as stored); this is how
    # CamVid is brought to 240x320 on CPU. Training then applies random scale, crop and flip.
    base_size: int = 0
    crop_size: list[int] = field(default_factory=lambda: [321, 321])  # [height, width]
    scale_min: float = 0.5
    scale_max: float = 1.5
    hflip: bool = True
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 0
    # synthetic dataset: generated on the fly, deterministic by seed
    synthetic_size: list[int] = field(default_factory=lambda: [96, 128])  # [height, width]
    synthetic_train: int = 2000
    synthetic_val: int = 200
    synthetic_seed: int = 0
    # folder dataset: <root>/<split>/images and <root>/<split>/masks, matched by file stem
    num_classes: int = 0
    ignore_index: int = 255
    class_names: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    iterations: int = 20000
    batch_size: int = 10
    lr: float = 2.5e-4
    head_lr_mult: float = 10.0  # DeepLab trains the freshly initialised classifier 10x faster
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    seed: int = 0
    eval_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 1000
    log_every: int = 20
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch default
    deterministic: bool = False
    # NHWC convolutions (oneDNN). Measured faster for every net on one 2-core host (fp32 matmul peak 197
    # GFLOP/s) and for narrow nets (the demo's) on another (AVX2, 71 GFLOP/s), but 18% slower there for the
    # width-1.0 VGG's regression step (benchmarks/regression_step.py). "auto": time a step in each layout
    # first and keep the faster; the choice is written back here, so config.toml and a resume hold it.
    channels_last: bool | str = True
    # fp32 | bf16 (autocast) | auto. On CUDA "auto" is bf16 where the GPU has it natively. On CPU "auto" is bf16
    # only where the CPU computes bf16 natively (AVX-512 BF16, AMX, Arm BF16) and a timed step on the run's own
    # model and batch is faster in it (with channels_last = "auto", every layout and precision pair is timed);
    # the choice is written back here, so config.toml and a resume hold it.
    precision: str = "auto"
    time_budget_s: float = 0.0  # stop early after this many seconds (0 = no limit); for CPU benchmarks
    tensorboard: bool = False  # also write TensorBoard event files under <run>/tensorboard (segadapt[tensorboard])


@dataclass
class ShiftConfig:
    """Where D2 comes from: a filter applied to D1 on the fly, a folder of D2 images, a CSV of pairs, or a pair
    of georeferenced mosaics (d1_raster, d2_raster)."""

    filter: str = "ripple"  # photocopy | ripple | cubism
    severity: float = 0.5  # 0..1, mapped onto the filter's parameters
    seed: int = 0
    # the severity mapping's lengths (ripple amplitude/period, cubism tiles, photocopy blur radii) are pixels of
    # "network": the image the network sees (resized to data.base_size; factor stored short side / base_size,
    # 1 when base_size = 0), so a severity means the same shift at every training resolution; "image": pixels of
    # the stored image, as segadapt did before (see shifts/units.py)
    units: str = "network"
    # > 0: choose the severity so that H1's distortion on a fixed subset of D1's train split is this (±
    # search_tolerance), by bisection (segadapt shift/distortion --target-distortion --model H1; severity_search.py)
    target_distortion: float = 0.0
    search_images: int = 100  # train images the search scores H1 on (seeded by shift.seed; never the val split)
    search_tolerance: float = 0.03
    search_steps: int = 10  # at most this many severities scored (ends and bisection together)
    d2_dir: str = ""  # folder of D2 images matched to D1 by file stem (e.g. written by `segadapt shift`)
    pairs_csv: str = ""  # CSV with columns x1,x2 (image paths)
    photometric: float = 0.0  # independent brightness/contrast jitter of X1 and X2 (fraction)
    # pairs by ground coordinates (segadapt.data.geopairs): GeoTIFF mosaics of one area; training samples are
    # random windows of D1's grid cut from both (D2 resampled onto it), nodata masked; the label raster (D1's
    # labels on the ground) scores a model on D2 tiles
    d1_raster: str = ""
    d2_raster: str = ""
    label_raster: str = ""
    raster_windows: int = 1000  # windows per epoch
    raster_min_valid: float = 0.5  # windows with fewer pixels that have data in both mosaics are drawn again


@dataclass
class AdaptConfig:
    # the trained source model: a run directory or model .safetensors, a transformers save_pretrained
    # directory, or a Python factory package.module:function (whose weights and JSON kwargs follow)
    h1: str = ""
    h1_weights: str = ""  # factory H1: its state dict (.safetensors, or .pth read with weights_only=True)
    h1_kwargs: str = ""  # factory H1: keyword arguments as a JSON object, e.g. {"classes": 11}
    # factories a model file may name and have called when it is rebuilt (calling one runs its code); the
    # factory given as h1 itself is trusted
    trust_factories: list[str] = field(default_factory=list)
    # BatchNorm running statistics while adapting: keep (H1's, bit for bit) or adabn (re-estimated on D2
    # for the norm layers feeding the deepest regressed tap); see models/modes.py
    norm: str = "keep"
    # taps to regress, or one preset name; empty: the model's deepest stage (VGG pool5, a transformers model's
    # last stage; models.contract.default_layers)
    layers: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # one per layer; empty = 1.0 each (presets bring theirs)
    # cap on the gradient's global L2 norm (0 = off): the squared-error loss has unbounded gradients, and
    # without batchnorm one bad step at a high learning rate can blow the features up
    grad_clip: float = 0.0
    # what H2 is trained to minimise: a table term = weight (segadapt.objectives), e.g.
    # {features = 1.0, output_kl = 1.0}. features: the study's MSE on `layers`; features_std: the same on maps
    # standardised per channel by H1's std on D1; output_kl: pixel-wise KL(H1(X1) || H2(X2)) at `temperature`;
    # paired_pseudo: cross-entropy of H2(X2) on H1(X1)'s per-class most confident `pseudo_keep` pixels;
    # entropy: H2(X2)'s mean prediction entropy (a small weight; CMA uses 0.01). A table given on the command
    # line or in a --config replaces this one whole (terms are not merged key by key). Empty: the model's own
    # default (models.contract.default_objective: the study's features for the VGG and factory models,
    # output_kl + paired_pseudo for a transformers model), written here when a run starts.
    objective: dict[str, float] = field(default_factory=dict)
    # how the terms (and each tap of a feature term) are combined: fixed (the weights as given), normalised
    # (each divided by a running mean of its own value, so all start at 1) or uncertainty (learned
    # log-variances s: sum exp(-s) w L + s, Kendall, Gal & Cipolla 2018)
    weighting: str = "fixed"
    temperature: float = 1.0  # output_kl's softmax temperature T (the KL is scaled by T^2)
    # with an output-level term: whether the parameters above the deepest of `layers` (the decode head) train
    # too. auto = true: measured better than CMA's frozen decoder (docs/results/objectives-synthetic-segformer).
    # Feature terms alone never train them.
    train_head: bool | str = "auto"
    # the signal that picks model_selected among the probes: holdout_loss (the objective on held-out pairs,
    # lowest), agreement (mIoU of H2(X2)'s labels against H1(X1)'s, highest), entropy (lowest); with d2_labels
    # also labels (H2's mIoU on those labelled D2 images, highest; no longer label-free)
    select: str = "agreement"
    # a few labelled D2 images (the semi-supervised case): a folder in the layout `segadapt shift` writes (the
    # dataset's own; a synthetic D1: <dir>/<train split>/images and labels), its train split. Adds the term
    # d2_labels (cross-entropy on them, weight 1 unless adapt.objective gives one) and their mIoU to every probe.
    d2_labels: str = ""
    # labelled D2 images joining each batch, as a share of train.batch_size (at least one per step)
    d2_label_share: float = 0.25
    # label-free checkpoint selection: pairs held out from training, on which the regression loss and the
    # prediction entropy are measured `probes` times during the run (0 = off)
    holdout: int = 16
    probes: int = 5
    # directory of a teacher feature cache (segadapt.cache; empty = off): H1's maps of every D1 image are
    # computed once, stored as float16 and sliced each step instead of running H1. Augmentation is then
    # flips and stride-aligned crops only (no random scale) and shift.photometric must be 0.
    teacher_cache: str = ""
    # per-class share of H1's most confident pixels kept as pseudo-labels (objectives.pseudo.confident_pixels):
    # the self_training peer's, and the paired_pseudo term's (CMA keeps 0.2)
    pseudo_keep: float = 0.2
    # pairs that are not pixel-aligned (segadapt.data.align): "none" (as before), "ecc" (small offsets),
    # "features" (keypoints + RANSAC, large offsets) or "geo" (GeoTIFF tiles: from their georeferencing).
    # Each pair is registered once (cached in `align_cache`, default <run>/align), X2 is warped into X1's
    # frame and the loss is a mean over pixels with a source; pairs that fail the quality check
    # (correlation, inliers, overlap, plausible scale/shear) are skipped.
    align: str = "none"
    align_model: str = "affine"  # affine | homography
    align_image: str = "contrast"  # what is aligned: contrast (local contrast) | gradient (gradient magnitude)
    align_cache: str = ""
    align_min_corr: float = 0.35  # correlation of the aligned images below which a registration fails
    align_min_inliers: int = 20  # RANSAC inliers (features) below which it fails
    align_min_overlap: float = 0.5  # fraction of X1 that X2 must cover
    # where ecc and features register: "network" (at data.base_size, the resolution the network sees: a shift
    # in network units is coarse at the stored size and fails min_corr there) or "stored" (the files' pixels)
    align_at: str = "network"


@dataclass
class ExperimentConfig:
    """The sweep: for each shift, H1's distortion, baselines B0/B1/B2, the label-free peers (adabn, tent,
    self_training) and one regression per layer preset."""

    filters: list[str] = field(default_factory=lambda: ["ripple"])
    layer_presets: list[str] = field(
        default_factory=lambda: ["pool1", "pool2", "pool3", "pool4", "pool5", "all_inc", "all_dec"]
    )
    seeds: list[int] = field(default_factory=lambda: [0])
    iterations: int = 2000  # one budget for B2, the peers and every regression (H1 and B1 use train.iterations)
    finetune_lr: float = 2.5e-4  # B2: H1 fine-tuned on D2 with D1's labels
    adapt_lr: float = 2.5e-4  # H2: feature regression, and the peers tent and self_training
    # B0, B1, B2 and the label-free peers adabn, tent, self_training (segadapt.peers; none by default)
    baselines: list[str] = field(default_factory=lambda: ["B0", "B1", "B2"])
    # filter -> H1 distortion to reach: after each seed's H1 trains, that filter's severity is searched on
    # shift.search_images D1 train images (shift.search_* settings) instead of using shift.severity
    target_distortion: dict[str, float] = field(default_factory=dict)
    # write each shifted D2 once under the sweep directory instead of filtering D1 on the fly every epoch
    materialise_d2: bool = True
    # report.html figures (first seed): feature grids, overlays and reconstructions of this many val images
    figure_images: int = 2
    reconstruct_steps: int = 200  # optimisation steps of each white-noise reconstruction (0 = none)
    # objectives each layer preset is adapted with, as tables term = weight (see AdaptConfig.objective), e.g.
    # [{features = 1.0}, {output_kl = 1.0}, {features = 1.0, output_kl = 1.0}]: every preset runs once per
    # table, as the rows H2:<preset>+<terms> (a weight other than 1 written term=weight, e.g.
    # H2:stage4+output_kl+entropy=0.01). Empty: adapt.objective alone, as the rows H2:<preset>.
    objectives: list[dict[str, float]] = field(default_factory=list)


@dataclass
class PeerConfig:
    """A label-free peer run instead of feature regression (`segadapt peer`, and the sweep's rows of the same
    names): adabn | tent | self_training (segadapt.peers); empty in every other run."""

    method: str = ""


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)


# --- presets ---------------------------------------------------------------------------------------

def _preset_voc() -> RunConfig:
    """The reference study: DeepLab VGG-16 on PASCAL VOC 2012 + SBD (train_aug: 10,582 train images)."""
    cfg = RunConfig(name="voc")
    cfg.data = DataConfig(dataset="voc", train_split="train_aug", crop_size=[321, 321])
    cfg.train = TrainConfig(iterations=20000, batch_size=10, lr=2.5e-4, momentum=0.9, poly_power=0.9)
    cfg.model = ModelConfig(width=1.0)
    return cfg


def _preset_synthetic() -> RunConfig:
    """CPU scale: width-0.25 VGG trained from scratch on the embedded synthetic scenes in minutes."""
    cfg = RunConfig(name="synthetic")
    cfg.model = ModelConfig(width=0.25)
    cfg.data = DataConfig(dataset="synthetic", crop_size=[96, 128], scale_min=0.75, scale_max=1.25)
    cfg.train = TrainConfig(
        iterations=800, batch_size=8, lr=0.02, head_lr_mult=1.0, weight_decay=1e-4,
        checkpoint_every=200, eval_every=0,
    )
    return cfg


def _preset_camvid() -> RunConfig:
    """CamVid at 240x320 on CPU (width 0.25), as in benchmarks/."""
    cfg = RunConfig(name="camvid")
    cfg.model = ModelConfig(width=0.25)
    cfg.data = DataConfig(
        dataset="camvid", root="../shared/data/camvid", base_size=240, crop_size=[240, 320],
        scale_min=0.75, scale_max=1.25,
    )
    cfg.train = TrainConfig(iterations=2000, batch_size=8, lr=0.01, head_lr_mult=1.0, weight_decay=1e-4)
    # adapting (and fine-tuning) a CamVid H1: the rates benchmarks/adapt_shift.py measured, not VOC's 2.5e-4
    cfg.adapt.grad_clip = 5.0
    cfg.experiment = ExperimentConfig(iterations=1000, finetune_lr=0.01, adapt_lr=0.005)
    return cfg


def _preset_demo() -> RunConfig:
    """The whole sweep on synthetic scenes in under four minutes on 2 CPU cores: smaller images and network
    than `synthetic`.

    The budget is what fits (measured with benchmarks/demo_time.py on cores whose fp32 matmul peak is about
    60 GFLOP/s, where a training step costs ~75 ms): H1 1500 steps at LR 0.05 (0.05 trains this net furthest
    in 1500 steps: 0.567 val mIoU against 0.492 at 0.035 and 0.483 at 0.02, seed 0; 0.1 stalls at 0.246), B2 and
    each regression 100 steps. B1, a second from-scratch training as long as H1's, is left out (add it with
    `--set experiment.baselines=["B0","B1","B2"]`). Ripple at full severity (amplitude 12 px on 64x96 scenes)
    costs H1 enough mIoU for the baselines and layer presets to separate. B2 fine-tunes at 0.02; regression
    needs a lower rate plus gradient clipping (see AdaptConfig.grad_clip).
    """
    cfg = _preset_synthetic()
    cfg.name = "demo"
    cfg.model.width = 0.125
    cfg.data.synthetic_size = [64, 96]
    cfg.data.crop_size = [64, 96]
    cfg.data.synthetic_train, cfg.data.synthetic_val = 1000, 100
    cfg.train.iterations, cfg.train.lr = 1500, 0.05
    cfg.train.checkpoint_every = 0
    cfg.train.log_every = 50
    # the demo's numbers are the same on every host: a precision timed under the host's load would vary them
    cfg.train.precision = "fp32"
    cfg.shift = ShiftConfig(filter="ripple", severity=1.0)
    cfg.adapt.grad_clip = 5.0
    cfg.adapt.probes = 3
    cfg.adapt.objective = dict(STUDY_OBJECTIVE)  # the study's sweep of layer presets, whatever the VGG's default
    cfg.experiment = ExperimentConfig(filters=["ripple"], iterations=100, finetune_lr=0.02, adapt_lr=0.01,
                                      baselines=["B0", "B2"])
    return cfg


STUDY_DISTORTIONS = {"photocopy": 0.325, "ripple": 0.626, "cubism": 0.94}  # the study's D2 sets, H1's distortion


def _preset_study_camvid() -> RunConfig:
    """The study's sweep on CamVid at CPU scale: 120x160 (benchmarks/adapt_shift.py's camvid-photocopy H1),
    the three GIMP shifts at the study's distortions of H1 (severity searched per seed), every layer preset."""
    cfg = _preset_camvid()
    cfg.name = "study-camvid"
    cfg.data.base_size, cfg.data.crop_size = 120, [120, 160]
    cfg.train.iterations, cfg.train.checkpoint_every, cfg.train.log_every = 4000, 0, 50
    cfg.shift = ShiftConfig(units="network")
    cfg.adapt.objective = dict(STUDY_OBJECTIVE)  # the study's regression, whatever the VGG's default
    cfg.experiment = ExperimentConfig(
        filters=list(STUDY_DISTORTIONS), target_distortion=dict(STUDY_DISTORTIONS), seeds=[0, 1, 2],
        iterations=1000, finetune_lr=0.01, adapt_lr=0.005,
    )
    return cfg


PRESETS = {"voc": _preset_voc, "synthetic": _preset_synthetic, "camvid": _preset_camvid, "demo": _preset_demo,
           "study-camvid": _preset_study_camvid}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


DEFAULT_PRESET = "synthetic"  # a command that names neither a preset nor a dataset runs at CPU scale


def dataset_preset(dataset: str) -> RunConfig:
    """The defaults for a dataset named without a preset: the preset of the same name (CamVid's size, crop,
    scale range, batch and learning rates), else (a folder dataset) the default preset's recipe."""
    own = preset(dataset) if dataset in PRESETS else None
    return own if own is not None and own.data.dataset == dataset else preset(DEFAULT_PRESET)


# --- dict / TOML conversion -----------------------------------------------------------------------

def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a parsed TOML or CLI value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        (item_tp,) = typing.get_args(tp)[:1]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[]") for v in value]
    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {_coerce(k, key_tp, f"{where} key"): _coerce(v, item_tp, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer past the largest float
            number = math.inf
        if not math.isfinite(number):  # nan passes every comparison test below as false, inf most as true
            raise ConfigError(f"{where}: {value!r} is not a finite number; give a plain number such as 0.5")
        return number
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**63:  # torch and numpy hold counts and seeds as int64
            raise ConfigError(f"{where}: {value} does not fit in 64 bits; give a smaller whole number")
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
    base = cls()
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    for key in _PATHS.get(cls.__name__, ()):  # `a/../../b` is `../b`: making its parents must not make `a`
        if kwargs.get(key):
            kwargs[key] = os.path.normpath(kwargs[key]) if "\x00" not in kwargs[key] else kwargs[key]
    out = dataclasses.replace(base, **kwargs)
    for key, (ok, rule) in _LIMITS.get(cls.__name__, {}).items():
        if key in data and not ok(getattr(out, key)):
            raise ConfigError(f"{where}.{key}: {data[key]!r} is out of range; it must be {rule}")
    if isinstance(out, AdaptConfig) and out.objective:  # empty: the model's default
        check_objective(out.objective, f"{where}.objective")
    if isinstance(out, ExperimentConfig):
        for i, table in enumerate(out.objectives):
            check_objective(table, f"{where}.objectives[{i}]")
    if isinstance(out, DataConfig) and not 0 < out.scale_min <= out.scale_max:
        raise ConfigError(f"{where}: scale_min {out.scale_min} and scale_max {out.scale_max}: need "
                          f"0 < scale_min <= scale_max")
    return out


# The names a config may give; the modules that implement them (objectives.TERMS, peers) are built from
# these and checked against them, so config needs neither torch nor an import back from the code it configures.
OBJECTIVE_TERMS = ("features", "features_std", "output_kl", "paired_pseudo", "entropy", "d2_labels")
STUDY_OBJECTIVE = {"features": 1.0}  # the study's feature regression (the presets that reproduce it pin it)
# output-level terms with the head trained: the VGG's and a SegFormer's default, measured on CamVid
# (docs/results/compare: 1.00, 1.46 and 0.95 of B2's gain on the VGG's three shifts, the regression 0.91, 0.77, 0.87)
OUTPUT_OBJECTIVE = {"output_kl": 1.0, "paired_pseudo": 1.0}
PEER_METHODS = ("adabn", "tent", "self_training")
NORM_MODES = ("keep", "adabn")  # adapt.norm; models/modes.py implements each


def check_objective(table: dict[str, float], where: str) -> None:
    """An objective table (term = weight) a run can use, else one line naming the key: known terms
    (OBJECTIVE_TERMS), weights >= 0, one > 0."""
    unknown = [t for t in table if t not in OBJECTIVE_TERMS]
    if unknown:
        raise ConfigError(f"{where}: unknown term {unknown[0]!r}; choose from {', '.join(OBJECTIVE_TERMS)}")
    negative = next((t for t, w in table.items() if w < 0), None)
    if negative is not None:
        raise ConfigError(f"{where}.{negative}: {table[negative]!r}; a weight must be >= 0 (a negative one would "
                          f"reward moving away from H1)")
    if not any(w > 0 for w in table.values()):
        raise ConfigError(f"{where}: no term with a weight > 0; give at least one, e.g. {{features = 1.0}}")


def _at_least(n: float) -> tuple[Any, str]:
    return (lambda v: v >= n), f">= {n}"


def _positive() -> tuple[Any, str]:
    return (lambda v: v > 0), "> 0"


def _usable_path() -> tuple[Any, str]:
    """A path a file system can hold (any place the user chooses; see segadapt.paths)."""
    return (lambda v: "\x00" not in v and all(len(p.encode()) <= 255 for p in Path(v).parts)), \
        "a path without NUL bytes and with components of at most 255 bytes"


def _file_name() -> tuple[Any, str]:
    """One path component: a run's name becomes <out_dir>/<name>-<time>."""
    return (lambda v: bool(re.fullmatch(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,99}", v))), \
        "a name of up to 100 letters, digits and . _ + = - (not starting with a dot)"


def _norm_mode() -> tuple[Any, str]:
    """adapt.norm: one of NORM_MODES (models/modes.py)."""
    return (lambda value: value in NORM_MODES), "keep (H1's BatchNorm statistics) or adabn (re-estimated on D2)"


def _peer_method() -> tuple[Any, str]:
    """peer.method: one of PEER_METHODS (segadapt.peers), or empty."""
    return (lambda value: value in ("", *PEER_METHODS)), "adabn, tent or self_training"


def _json_object() -> tuple[Any, str]:
    """Factory kwargs: empty, or the text of one JSON object (checked here, not when the factory is called)."""
    def ok(text: str) -> bool:
        try:
            return not text or isinstance(json.loads(text), dict)
        except ValueError:
            return False

    return ok, 'empty or a JSON object such as {"classes": 11}'


def _between(lo: float, hi: float) -> tuple[Any, str]:
    return (lambda v: lo <= v <= hi), f"in [{lo}, {hi}]"


def _one_of(*choices: str) -> tuple[Any, str]:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


# Seeds reach numpy (no negative seeds; the legacy global generator only 32 bits) and torch (64 bits, with
# the step and a per-rank offset added), so they are held to what every one of them accepts.
SEED_MAX = 2**32 - 1
_SEED = ((lambda v: 0 <= v <= SEED_MAX), f"a whole number in [0, {SEED_MAX}]")
# Against typos of extra zeros; limits that depend on the machine (memory, cores) are not decided here:
# width multiplies every channel count, so 4 is already 16x the study's VGG-16 (about 330M parameters);
# no segmentation recipe uses a batch near 65536; a DataLoader worker is a process holding its own copy of
# the dataset, and 256 of them is beyond any machine segadapt targets; a shorter side of 32768 px is already
# 1 Gpx for a square image (100000000 once asked for a 72 TB resize); torch's thread count is a C int and no
# CPU segadapt targets has 4096 cores.
MAX_WIDTH = 4.0
MAX_BATCH = 2**16
MAX_WORKERS = 256
MAX_BASE_SIZE = 2**15
MAX_THREADS = 4096


# keys holding paths: normalised when read (see segadapt.paths)
_PATHS = {"RunConfig": ("out_dir",), "ModelConfig": ("init_weights",), "DataConfig": ("root",),
          "ShiftConfig": ("d2_dir", "pairs_csv"), "AdaptConfig": ("h1", "teacher_cache", "d2_labels")}

# values a run cannot use: refused when the config is read, not hours later
_LIMITS: dict[str, dict[str, tuple[Any, str]]] = {
    "RunConfig": {"name": _file_name(), "out_dir": _usable_path()},
    "ModelConfig": {"width": ((lambda v: 0 < v <= MAX_WIDTH), f"> 0 and <= {MAX_WIDTH:g}"),
                    "num_classes": _at_least(0), "init_weights": _usable_path()},
    "DataConfig": {"root": _usable_path(), "mean": ((lambda v: len(v) == 3), "three numbers, one per RGB channel"),
                   "std": ((lambda v: len(v) == 3 and min(v) > 0), "three numbers > 0, one per RGB channel"),
                   "base_size": _between(0, MAX_BASE_SIZE), "num_workers": _between(0, MAX_WORKERS),
                   "synthetic_seed": _SEED, "synthetic_train": _at_least(1),
                   "synthetic_val": _at_least(1), "crop_size": ((lambda v: len(v) == 2 and min(v) >= 1),
                                                                "[height, width], both >= 1")},
    "TrainConfig": {"iterations": _at_least(1), "batch_size": _between(1, MAX_BATCH), "lr": _positive(),
                    "head_lr_mult": _positive(), "momentum": ((lambda v: 0 <= v < 1), "in [0, 1)"),
                    "weight_decay": _at_least(0), "poly_power": _at_least(0), "eval_every": _at_least(0),
                    "checkpoint_every": _at_least(0), "log_every": _at_least(1), "threads": _between(0, MAX_THREADS),
                    "time_budget_s": _at_least(0), "seed": _SEED,
                    "channels_last": ((lambda v: isinstance(v, bool) or v == "auto"), 'true, false or "auto"'),
                    "precision": _one_of(*PRECISIONS)},
    "ShiftConfig": {"severity": ((lambda v: 0 <= v <= 1), "in [0, 1]"), "photometric": _at_least(0), "seed": _SEED,
                    "d2_dir": _usable_path(), "pairs_csv": _usable_path(), "d1_raster": _usable_path(),
                    "d2_raster": _usable_path(), "label_raster": _usable_path(), "raster_windows": _at_least(1),
                    "raster_min_valid": _between(0, 1),

                    "units": ((lambda v: v in ("network", "image")), '"network" or "image"'),
                    "target_distortion": _between(0, 1), "search_images": _at_least(1),
                    "search_tolerance": ((lambda v: 0 < v < 1), "in (0, 1)"), "search_steps": _at_least(2)},
    "AdaptConfig": {"grad_clip": _at_least(0), "holdout": _at_least(0), "probes": _at_least(0),
                    "h1": _usable_path(), "teacher_cache": _usable_path(), "h1_weights": _usable_path(),
                    "h1_kwargs": _json_object(), "norm": _norm_mode(),
                    "align": _one_of("none", "ecc", "features", "geo"), "align_model": _one_of("affine", "homography"),
                    "align_image": _one_of("contrast", "gradient"), "align_cache": _usable_path(),
                    "align_min_corr": _between(-1, 1), "align_min_inliers": _at_least(3),
                    "align_min_overlap": ((lambda v: 0 < v <= 1), "in (0, 1]"),
                    "align_at": _one_of("network", "stored"),
                    "pseudo_keep": ((lambda v: 0 < v <= 1), "in (0, 1]"), "temperature": _positive(),
                    "weighting": _one_of("fixed", "normalised", "uncertainty"),
                    "train_head": ((lambda v: isinstance(v, bool) or v == "auto"), 'true, false or "auto"'),
                    "select": _one_of("holdout_loss", "agreement", "entropy", "labels"),
                    "d2_labels": _usable_path(), "d2_label_share": ((lambda v: 0 < v <= 1), "in (0, 1]")},
    "PeerConfig": {"method": _peer_method()},
    "ExperimentConfig": {"iterations": _at_least(1), "finetune_lr": _positive(), "adapt_lr": _positive(),
                         "figure_images": _at_least(0), "reconstruct_steps": _at_least(0),
                         "target_distortion": ((lambda v: all(0 < x <= 1 for x in v.values())),
                                               "a table of filter = distortion, each in (0, 1]"),
                         "seeds": ((lambda v: len(v) >= 1 and all(_SEED[0](x) for x in v)),
                                   f"a list of at least one seed, each {_SEED[1]}")},
}


def read_toml(path: str | Path) -> dict[str, Any]:
    if "\x00" in str(path):
        raise ConfigError("--config: the path contains a NUL byte; give a plain path")
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; check the path given to --config") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; --config takes a .toml file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; --config takes a .toml file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}); fix the syntax") from None


def load_toml(path: str | Path, cls: type = RunConfig) -> Any:
    return from_dict(cls, read_toml(path), str(path))


def merge(cfg: Any, data: dict[str, Any], where: str = "config") -> Any:
    """Return cfg with the keys in `data` (possibly nested tables) replaced. Sections ([adapt], ...) merge key
    by key; a key whose value is a table (adapt.objective, experiment.target_distortion) is replaced whole, so
    `adapt.objective={output_kl = 1.0}` means that term alone, not added to the default's features."""
    merged = to_dict(cfg)

    def deep(dst: dict, src: dict, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for k, v in src.items():
            section = hints.get(k)
            if isinstance(v, dict) and isinstance(dst.get(k), dict) and dataclasses.is_dataclass(section):
                deep(dst[k], v, section)
            else:
                dst[k] = v

    deep(merged, data, type(cfg))
    return from_dict(type(cfg), merged, where)


# TOML basic strings take no raw control characters (a pretty-printed --h1-kwargs holds newlines), so each is
# escaped; the short forms where TOML has one, \uXXXX for the rest.
_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_char(c: str) -> str:
    if c in _TOML_ESCAPES:
        return _TOML_ESCAPES[c]
    return f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + "".join(_toml_char(c) for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # a table inside a list (experiment.objectives): inline
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    """A bare key where TOML allows one, else quoted (table keys such as filter names may hold '+')."""
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def dumps_toml(cfg: Any) -> str:
    """TOML text for a dataclass tree (scalars first, then one table per nested dataclass)."""
    lines: list[str] = []

    def emit(d: dict[str, Any], prefix: str) -> None:
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        for k, v in d.items():
            if not isinstance(v, dict):
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in tables.items():
            name = f"{prefix}{_toml_key(k)}"
            lines.append("")
            lines.append(f"[{name}]")
            emit(v, name + ".")

    emit(to_dict(cfg), "")
    return "\n".join(lines) + "\n"


def parse_override(text: str) -> dict[str, Any]:
    """``train.lr=0.01`` -> {"train": {"lr": 0.01}}; the value is parsed as a TOML value, else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out
