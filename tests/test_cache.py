"""Teacher feature cache: cached maps equal the live teacher's on flipped and stride-aligned crops, stale
caches are refused, maps are float16 on disk, and adapt() with a cache follows the uncached run."""

import csv
import json

import numpy as np
import pytest
import torch

from segadapt.adapt import adapt
from segadapt.cache import META_FILE, cosine, prepare
from segadapt.config import preset
from segadapt.data import JointTransform
from segadapt.data.pairs import PairedDataset, ShiftedSource
from segadapt.data.synthetic import SyntheticScenes
from segadapt.errors import ConfigError, SegadaptError
from segadapt.models import VGGDeepLab
from segadapt.models.contract import tap_geometry

CPU = torch.device("cpu")
TAPS = ["pool1", "pool2", "pool3", "pool4", "pool5"]


def darken(image: np.ndarray, seed: int) -> np.ndarray:
    return (image * 0.5).astype(np.uint8)


class Inverted(SyntheticScenes):
    """The same images' identity with other pixels."""

    def load(self, i):
        image, mask = super().load(i)
        return 255 - image, mask


def make_pairs(n: int = 4, size=(48, 64), crop=(48, 64), seed: int = 0, d1_cls=SyntheticScenes,
               **kw) -> PairedDataset:
    d1 = d1_cls(n, size=size, seed=seed)
    tf = JointTransform(train=True, crop_size=crop, scale_range=(1.0, 1.0))
    return PairedDataset(d1, ShiftedSource(d1, darken), tf, **kw)


@pytest.fixture
def teacher() -> VGGDeepLab:
    torch.manual_seed(0)
    return VGGDeepLab(7, width=0.0625).eval().requires_grad_(False)


def items_covering_both_flips(view: PairedDataset, need=lambda g: True, tries: int = 200) -> list:
    """Aligned items until both flips (and whatever `need` asks of the geometry) have been seen."""
    torch.manual_seed(1)
    got: dict[bool, tuple] = {}
    for k in range(tries):
        item = view[k % len(view)]
        if need(item[2]):
            got.setdefault(bool(item[2][1]), item)
        if len(got) == 2:
            return list(got.values())
    raise AssertionError("augmentation never produced both flips")


def assert_maps_match(cached: torch.Tensor, live: torch.Tensor) -> None:
    assert cosine(cached, live) >= 0.999
    scale = float(live.abs().max())
    torch.testing.assert_close(cached, live, rtol=2e-3, atol=2e-3 * scale)  # float16 rounding only


def test_flipped_whole_frame_crops_match_the_live_teacher_at_every_tap(tmp_path, teacher):
    # crop == image, the CPU presets' case: every tap, pool5 included, must match everywhere
    pairs = make_pairs()
    cache, view = prepare(tmp_path, pairs, teacher, teacher.features, TAPS, CPU)
    assert not view.load_x1 and view[0][0].numel() == 0  # the cache stands in for X1
    for x1, _, geometry in items_covering_both_flips(pairs.aligned(8)):
        live = teacher.features(x1[None], TAPS)
        cached = cache.targets(geometry[None])
        for t in TAPS:
            assert cached[t].dtype == torch.float32
            assert_maps_match(cached[t], live[t])


def test_stride_aligned_crops_match_in_the_interior(tmp_path, teacher):
    # A 96x128 crop of a 128x160 frame: the live teacher pads at the crop's border where the cached maps saw
    # more of the image, so only cells whose receptive field lies inside the crop must agree. Cell j of a tap
    # with stride s and radius r depends on crop pixels j*s - r .. j*s + r (centred convs and pools).
    taps = ["pool2", "pool3"]
    pairs = make_pairs(size=(128, 160), crop=(96, 128))
    cache, _ = prepare(tmp_path, pairs, teacher, teacher.features, taps, CPU)
    assert cache.strides == {"pool2": 4, "pool3": 8}
    inside = lambda g: g[2] > 0 and g[3] > 0  # noqa: E731 - offsets away from the frame's top-left
    for x1, _, geometry in items_covering_both_flips(pairs.aligned(8), inside):
        assert geometry[2] % 8 == 0 and geometry[3] % 8 == 0
        live = teacher.features(x1[None], taps)
        cached = cache.targets(geometry[None])
        for t in taps:
            g = tap_geometry(teacher, [t])[t]
            s, r = g.stride, g.radius
            rows = slice(-(-r // s), (96 - 1 - r) // s + 1)
            cols = slice(-(-r // s), (128 - 1 - r) // s + 1)
            assert rows.stop - rows.start >= 4 and cols.stop - cols.start >= 8
            assert_maps_match(cached[t][..., rows, cols], live[t][..., rows, cols])
            assert not torch.allclose(cached[t], live[t], atol=1e-2)  # the border band really differs


def test_maps_are_float16_on_disk(tmp_path, teacher):
    pairs = make_pairs(n=3)
    cache, _ = prepare(tmp_path, pairs, teacher, teacher.features, ["pool3", "pool5"], CPU)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["dtype"] == "float16" and meta["flips"] and meta["taps"] == ["pool3", "pool5"]
    for t in ("pool3", "pool5"):
        c, h, w = meta["frame_maps"]["48x64"][t]
        assert (tmp_path / f"{t}.f16").stat().st_size == 3 * 2 * c * h * w * 2  # images x (frame, mirror) x 2 bytes
        assert cache.maps[t].dtype == np.float16
    # a build that died before cache.json is rebuilt rather than trusted
    (tmp_path / META_FILE).unlink()
    prepare(tmp_path, pairs, teacher, teacher.features, ["pool3", "pool5"], CPU)
    assert (tmp_path / META_FILE).is_file()


def test_stale_caches_are_refused_with_one_line(tmp_path, teacher):
    pairs = make_pairs()
    prepare(tmp_path, pairs, teacher, teacher.features, ["pool5"], CPU)
    changed = VGGDeepLab(7, width=0.0625).eval()
    changed.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        changed.conv1[0].weight.add_(0.01)
    with pytest.raises(SegadaptError, match="other teacher weights") as e:
        prepare(tmp_path, pairs, changed, changed.features, ["pool5"], CPU)
    message = str(e.value)
    assert "\n" not in message and str(tmp_path) in message and f"delete {tmp_path}" in message
    with pytest.raises(SegadaptError, match="other taps"):
        prepare(tmp_path, pairs, teacher, teacher.features, ["pool3"], CPU)
    # other images under the same stems (another synthetic seed): the images' identity differs
    with pytest.raises(SegadaptError, match="another D1 dataset"):
        prepare(tmp_path, make_pairs(seed=1), teacher, teacher.features, ["pool5"], CPU)
    # same identity, other pixels (a file rewritten with its old size and mtime): only the live check can tell
    with pytest.raises(SegadaptError, match="stale.*cosine"):
        prepare(tmp_path, make_pairs(d1_cls=Inverted), teacher, teacher.features, ["pool5"], CPU)
    with pytest.raises(ConfigError, match="photometric"):
        prepare(tmp_path, make_pairs(photometric=0.2), teacher, teacher.features, ["pool5"], CPU)


def losses(run_dir) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader((run_dir / "log.csv").open())]


def test_adapt_with_a_cache_follows_the_uncached_run(tmp_path, teacher):
    cfg = preset("synthetic")
    cfg.adapt.layers = ["pool3", "pool5"]
    cfg.adapt.objective = {"features": 1.0}  # the cache holds feature maps: the regression reads them
    cfg.adapt.probes = 2
    cfg.train.iterations, cfg.train.batch_size, cfg.train.lr, cfg.train.log_every = 6, 4, 0.01, 1
    cfg.train.threads = 1
    plain = adapt(cfg, tmp_path / "plain", make_pairs(n=12), teacher=teacher, h1_meta={"arch": "vgg16_deeplab"})
    cfg.adapt.teacher_cache = str(tmp_path / "cache")
    cached = adapt(cfg, tmp_path / "cached", make_pairs(n=12), teacher=teacher, h1_meta={"arch": "vgg16_deeplab"})
    assert (tmp_path / "cache" / META_FILE).is_file()
    # crop == image and scale 1: both runs draw the same flips, so only float16 targets tell them apart
    np.testing.assert_allclose(losses(tmp_path / "cached"), losses(tmp_path / "plain"), rtol=1e-2)
    assert cached["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-2)
    stamp = (tmp_path / "cache" / META_FILE).stat().st_mtime_ns
    adapt(cfg, tmp_path / "again", make_pairs(n=12), teacher=teacher, h1_meta={"arch": "vgg16_deeplab"})
    assert (tmp_path / "cache" / META_FILE).stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_a_cache_path_that_is_a_file_or_bad_metadata_is_one_line(tmp_path, teacher):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="that is a file"):
        prepare(afile, make_pairs(), teacher, teacher.features, ["pool5"], CPU)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / META_FILE).write_text("[1]")
    with pytest.raises(SegadaptError, match="not a teacher cache's metadata"):
        prepare(tmp_path / "c", make_pairs(), teacher, teacher.features, ["pool5"], CPU)


def test_one_damaged_frame_of_sixteen_is_named_when_the_cache_opens(tmp_path, teacher):
    """The live comparison samples 4 frames; the per-frame checksums catch a damaged one among the others."""
    pairs = make_pairs(n=16, size=(32, 32), crop=(32, 32))
    cache, _ = prepare(tmp_path, pairs, teacher, teacher.features, ["pool3", "pool5"], CPU)
    live_checked = {round(k * 15 / 3) for k in range(4)}
    victim = next(i for i in range(16) if i not in live_checked)
    offset = cache.layout.offsets["pool3"][victim] * 2  # float16: two bytes a value
    with (tmp_path / "pool3.f16").open("r+b") as f:
        f.seek(offset + 10)
        f.write(b"\x7b\x3c")
    with pytest.raises(SegadaptError, match=f"damaged \\(pool3 of {pairs.d1.stem(victim)} differs") as e:
        prepare(tmp_path, pairs, teacher, teacher.features, ["pool3", "pool5"], CPU)
    assert "\n" not in str(e.value) and f"delete {tmp_path}" in str(e.value)


@pytest.mark.parametrize("damage", [lambda m: m["frame_maps"].clear(),
                                    lambda m: m["frame_maps"]["32x32"].update(pool5="x"),
                                    lambda m: m["checksums"]["pool5"].pop()])
def test_damaged_cache_metadata_is_one_line(tmp_path, teacher, damage):
    pairs = make_pairs(n=3, size=(32, 32), crop=(32, 32))
    prepare(tmp_path, pairs, teacher, teacher.features, ["pool5"], CPU)
    meta = json.loads((tmp_path / META_FILE).read_text())
    damage(meta)
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(SegadaptError, match="damaged teacher cache metadata") as e:
        prepare(tmp_path, pairs, teacher, teacher.features, ["pool5"], CPU)
    assert "\n" not in str(e.value) and str(tmp_path / META_FILE) in str(e.value)


def test_a_file_source_is_identified_by_path_size_and_mtime(tmp_path):
    from segadapt.data.datasets import FileSource

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for f in (a, b):
        f.write_bytes(b"0" * 10)
    src = FileSource(SyntheticScenes(1).info, [("0", a, b)])
    before = src.identity(0)
    a.write_bytes(b"0" * 11)
    assert src.identity(0) != before and str(a.resolve()) in before
