"""Unit tests for the native GEGL filters (no `gegl` needed; conformance with GEGL is in test_shifts_gegl.py).

Photocopy known answers follow GEGL 0.4's published algorithm (operations/common-gpl3+/photocopy.c), derived by
hand below, so they hold without the CLI; test_shifts_gegl.py also checks them against the real `gegl`.
"""

import contextlib
import ctypes
import ctypes.util
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segadapt.errors import ConfigError, SegadaptError
from segadapt.shifts import FILTERS, apply_filter, cubism, photocopy, ripple, ripple_mask, severity_params
from segadapt.shifts.cubism import GRand
from segadapt.shifts.gegl import cli_args, linear_to_srgb, run_gegl, srgb_to_linear
from segadapt.shifts.photocopy import gaussian_blur, photocopy_luminance


def textured(h: int = 72, w: int = 96, seed: int = 0) -> np.ndarray:
    """Smooth colourful texture: enough structure for every filter to act on."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.float32)
    up = np.kron(small, np.ones((8, 8, 1), np.float32))
    return np.clip(up + rng.normal(0, 12, up.shape), 0, 255).astype(np.uint8)


def label_scene(h: int = 64, w: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Blocks whose colour encodes their label (label k -> red 60k)."""
    yy, xx = np.mgrid[0:h, 0:w]
    label = ((xx // 12) + (yy // 16)) % 4
    img = np.stack([label * 60, 200 - label * 40, np.full_like(label, 70)], -1).astype(np.uint8)
    return img, label.astype(np.uint8)


# --- common contract -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_shape_dtype_and_determinism(name):
    img = textured()
    a = apply_filter(name, img, severity=0.7, seed=5)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, apply_filter(name, img, severity=0.7, seed=5))
    direct = FILTERS[name](img)
    assert direct.shape == img.shape and direct.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_distortion_grows_with_severity(name):
    img = textured(96, 128)
    dist = [np.abs(apply_filter(name, img, severity=s, seed=1).astype(float) - img).mean() for s in (0.0, 0.5, 1.0)]
    assert dist[0] < dist[1] < dist[2], dist
    if name != "cubism":  # cubism at severity 0 is its mildest setting (4 px tiles), not the identity
        assert dist[0] < 0.5


def test_seed_changes_random_filters_only_through_seed():
    img = textured()
    assert np.array_equal(cubism(img, seed=3), cubism(img, seed=3))
    assert not np.array_equal(cubism(img, seed=3), cubism(img, seed=4))
    one, two = (apply_filter("ripple", img, severity=1, seed=s) for s in (1, 2))
    assert not np.array_equal(one, two)
    assert severity_params("cubism", 0.5, seed=9)["seed"] == 9


def test_bad_arguments_are_one_line_errors():
    img = textured()
    with pytest.raises(ConfigError, match="photocopy"):
        apply_filter("swirl", img)
    with pytest.raises(ConfigError, match="severity"):
        apply_filter("ripple", img, severity=1.5)
    with pytest.raises(ValueError, match="mask_radius"):
        photocopy(img, mask_radius=60)
    # a severity in range at scale 1 whose lengths leave it in network units (small base size): one line
    with pytest.raises(ConfigError, match=r"mask_radius=75 .*x7\.5 to network units.*base_size"):
        apply_filter("photocopy", img, severity=1.0, scale=7.5)
    with pytest.raises(ValueError, match="abyss_policy"):
        ripple(img, abyss_policy="mirror")
    with pytest.raises(ValueError, match="uint8"):
        cubism(img.astype(np.float32))
    with pytest.raises(ValueError, match="finite"):
        cubism(img, bg_color=(0.0, 0.0, float("inf"), 1.0))


def test_srgb_round_trip():
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(linear_to_srgb(srgb_to_linear(codes)), codes)


# --- ripple ----------------------------------------------------------------------------------------------------


def test_zero_amplitude_ripple_is_identity():
    img = textured()
    for sampler in ("nearest", "linear", "cubic"):
        assert np.array_equal(ripple(img, amplitude=0.0, sampler_type=sampler), img)
    assert np.array_equal(ripple(img, period=0.0), img)  # GEGL: period < 0.0001 means no ripple


def test_ripple_nearest_matches_the_wave_formula():
    """GEGL reads (x + s sin a, y + s cos a), s = A sin(2 pi (x cos a - y sin a) / P + 2 pi phi); nearest = floor
    of the position in single precision (GEGL's nearest sampler takes a float)."""
    img = textured()
    h, w = img.shape[:2]
    amp, period, phi = 6.0, 30.0, 0.25
    out = ripple(img, amplitude=amp, period=period, phi=phi, sampler_type="nearest", abyss_policy="clamp")
    xs = np.arange(w)
    shift = amp * np.sin(2 * math.pi * xs / period + 2 * math.pi * phi)
    pos = (np.arange(h)[:, None] + shift[None, :]).astype(np.float32)
    src_y = np.clip(np.floor(pos).astype(int), 0, h - 1)
    assert np.array_equal(out, img[src_y, xs[None, :]])


def test_ripple_wave_types_and_policies_differ():
    img = textured()
    outs = [ripple(img, amplitude=8, period=40, wave_type=t) for t in ("sine", "triangle", "sawtooth")]
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])
    black = ripple(img, amplitude=8, period=40, abyss_policy="black", sampler_type="nearest")
    white = ripple(img, amplitude=8, period=40, abyss_policy="white", sampler_type="nearest")
    assert (black == 0).all(-1).any() and (white == 255).all(-1).any()


@pytest.mark.parametrize("sampler", ["nearest", "cubic"])
def test_ripple_mask_is_aligned_with_the_image(sampler):
    img, label = label_scene()
    params = dict(amplitude=5.0, period=37.0, angle=30.0, abyss_policy="clamp")
    moved = ripple(img, sampler_type=sampler, **params)
    moved_label = ripple_mask(label, **params)
    decoded = np.rint(moved[..., 0].astype(float) / 60).astype(int)
    agree = (decoded == moved_label).mean()
    assert agree == 1.0 if sampler == "nearest" else agree > 0.9, agree  # cubic blurs block edges only


def test_ripple_mask_marks_abyss_as_ignore():
    _, label = label_scene()
    out = ripple_mask(label, amplitude=10.0, period=40.0, angle=90.0, ignore_index=255)
    assert out.dtype == label.dtype and (out == 255).any()
    assert set(np.unique(out)) <= {0, 1, 2, 3, 255}
    assert not (ripple_mask(label, amplitude=10.0, period=40.0, angle=90.0, abyss_policy="clamp") == 255).any()


# --- photocopy -------------------------------------------------------------------------------------------------


def test_gegl_gaussian_blur_preserves_flat_and_mass():
    flat = np.full((40, 50), 0.3, np.float32)
    variances = []
    for sigma in (0.6, 1.8, 3.3):  # FIR below 1, IIR above
        assert np.allclose(gaussian_blur(flat, sigma), 0.3, atol=1e-5)
        impulse = np.zeros((81, 81), np.float32)
        impulse[40, 40] = 1.0
        blurred = gaussian_blur(impulse, sigma)
        assert blurred.sum() == pytest.approx(1.0, abs=1e-4)
        r = np.arange(81) - 40
        variances.append((blurred.sum(0) * r * r).sum() / sigma**2)
    # the sampled FIR is near exact; GEGL's Young/van Vliet IIR is known to be wider (GEGL itself measures ~1.2-1.4x)
    assert variances[0] == pytest.approx(1.0, rel=0.05)
    assert all(1.0 < v < 1.5 for v in variances[1:])


def test_photocopy_flat_image_known_answer():
    """Flat input: d1 = d2, ratio 1 everywhere, no ink, so ramp_up = 1 and out = Y + 0.25 (1 - Y) (linear light).

    (Not white: GEGL's paper fade is min(ramp_up, ratio - 0.75) / ramp_up = 0.25 here.)
    """
    for code in (0, 64, 128, 255):
        img = np.full((32, 40, 3), code, np.uint8)
        y = srgb_to_linear(np.uint8(code))
        expected = 0.0 if code == 0 else linear_to_srgb(np.float32(y + 0.25 * (1 - y)))  # 0/0 -> black
        assert (photocopy(img) == expected).all(), code


def test_photocopy_dark_square_gives_dark_edges_white_paper():
    """Dark square (Y 0.05) on white paper (Y 1), GEGL defaults, worked through the algorithm:

    * outside the square d1 >= d2 (ratio >= 1): paper, pushed fully to white (1.0);
    * a band just inside the border has d1 < 0.75 d2 (ink): kept dark, d1 (ratio + 0.25) ~ the input's 0.05;
    * deep inside, d1 = d2 (ratio 1) is paper again, lightened towards white: only the edges stay dark.
    """
    y = np.ones((80, 80), np.float32)
    y[20:60, 20:60] = 0.05
    out = photocopy_luminance(y)
    assert np.allclose(out[:, :19], 1.0, atol=1e-3) and np.allclose(out[:19], 1.0, atol=1e-3)
    band = out[40, 22:28]
    assert band.max() < 0.25 and band.min() < 0.06
    assert out[40, 40] > 0.8
    black0 = photocopy_luminance(y, black=0.0)  # black=0: ink is pure black
    assert (black0[40, 22:28] == 0.0).all()
    # black only matters as 0 vs > 0 in GEGL 0.4 (its "black" histogram is never filled)
    assert np.array_equal(photocopy_luminance(y, black=0.1), photocopy_luminance(y, black=0.9))


def test_photocopy_is_grey():
    out = photocopy(textured())
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


# --- cubism ----------------------------------------------------------------------------------------------------


def test_grand_stream_matches_glib():
    """Our GRand port against the system GLib (the generator GEGL's cubism uses), where libglib is present."""
    path = ctypes.util.find_library("glib-2.0")
    if path is None:
        pytest.skip("libglib-2.0 not found (it is what GEGL draws its random numbers from)")
    glib = ctypes.CDLL(path)
    glib.g_rand_new_with_seed.restype = ctypes.c_void_p
    glib.g_rand_new_with_seed.argtypes = [ctypes.c_uint32]
    glib.g_rand_int_range.restype = ctypes.c_int32
    glib.g_rand_int_range.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32]
    glib.g_rand_double_range.restype = ctypes.c_double
    glib.g_rand_double_range.argtypes = [ctypes.c_void_p, ctypes.c_double, ctypes.c_double]
    glib.g_rand_free.argtypes = [ctypes.c_void_p]
    for seed in (0, 1, 4242):
        handle = glib.g_rand_new_with_seed(seed)
        ours = GRand(seed)
        for _ in range(50):
            assert ours.int_range(0, 1813) == glib.g_rand_int_range(handle, 0, 1813)
            u = float(ours.doubles(1)[0])
            assert u * 2.5 - (u - 1) * -2.5 == glib.g_rand_double_range(handle, -2.5, 2.5)
        glib.g_rand_free(handle)


def test_cubism_tiles_cover_the_expected_fraction():
    """Background shows through in proportion to tile area: none at GEGL's saturation 2.5, most at 0.5."""
    img = np.full((120, 160, 3), 90, np.uint8)
    magenta = (1.0, 0.0, 1.0, 1.0)
    bg = {}
    for sat in (0.5, 1.0, 2.5):
        out = cubism(img, tile_size=10, tile_saturation=sat, bg_color=magenta, seed=2)
        bg[sat] = np.all(out == (255, 0, 255), -1).mean()
    assert bg[2.5] < 0.001
    assert 0.15 < bg[1.0] < 0.4
    assert 0.75 < bg[0.5] < 0.95
    # default transparent background is black once alpha is dropped; tiles take the image colour
    out = cubism(img, tile_saturation=0.5, seed=2)
    assert (out == 0).all(-1).mean() == pytest.approx(bg[0.5], abs=0.02)
    assert out.max() <= 90


def test_cubism_tile_size_sets_the_tile_extent():
    """Typical tile extent (mean horizontal run of unchanged colour) grows with tile_size."""
    img = textured(120, 160)

    def mean_run(out: np.ndarray) -> float:
        changes = (np.abs(np.diff(out.astype(int), axis=1)).max(-1) > 3).sum()
        return out.shape[0] * out.shape[1] / (changes + out.shape[0])

    runs = [mean_run(cubism(img, tile_size=t, seed=0)) for t in (5, 10, 20)]
    assert runs[0] < runs[1] < runs[2]


# --- gegl backend plumbing (no real gegl needed) ---------------------------------------------------------------


def test_cli_args_use_gegl_dashed_names():
    assert cli_args("photocopy", {"mask_radius": 3}) == ["gegl:photocopy", "mask-radius=3"]
    assert cli_args("ripple", {"wave_type": "sawtooth", "tileable": True}) == [
        "gegl:ripple",
        "wave-type=sawtooth",
        "tileable=true",
    ]
    assert cli_args("cubism", {"bg_color": (0, 0, 0, 1)}) == ["gegl:cubism", "bg-color=rgba(0.0, 0.0, 0.0, 1.0)"]
    with pytest.raises(SegadaptError, match="no parameter"):
        cli_args("ripple", {"linear_light": False})


def test_gegl_backend_missing_executable(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(SegadaptError, match=r"apt-get install gegl.*--backend native"):
        apply_filter("ripple", textured(), backend="gegl")


def test_gegl_backend_failure_reports_last_stderr_line(monkeypatch, tmp_path):
    fake = tmp_path / "gegl"
    fake.write_text("#!/bin/sh\necho 'first line' >&2\necho 'gegl: something broke' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    with pytest.raises(SegadaptError, match=r"^gegl:ripple failed: gegl: something broke$"):
        run_gegl(textured(), "ripple", amplitude=3.0)


def test_an_interrupted_shift_run_still_refuses_other_parameters(tmp_path):
    """Without a marker written up front, a rerun at another severity would mix two D2s in one folder."""
    from segadapt.data.shifted import write_shifted
    from segadapt.data.synthetic import SyntheticScenes
    from segadapt.errors import DataError

    class StopsAtTwo(SyntheticScenes):
        def load(self, i):
            if i == 2:
                raise KeyboardInterrupt
            return super().load(i)

    with pytest.raises(KeyboardInterrupt):
        write_shifted(StopsAtTwo(4, size=(16, 16)), None, tmp_path, "val", "photocopy", 0.5, workers=1)
    assert len(list((tmp_path / "val" / "images").iterdir())) == 2
    with pytest.raises(DataError, match="other parameters"):
        write_shifted(SyntheticScenes(4, size=(16, 16)), None, tmp_path, "val", "photocopy", 1.0, workers=1)
    r = write_shifted(SyntheticScenes(4, size=(16, 16)), None, tmp_path, "val", "photocopy", 0.5, workers=1)
    assert r["images"] == 4 and len(list((tmp_path / "val" / "labels").iterdir())) == 4


def test_cubism_shuffle_skips_a_rejected_word_and_reads_on_in_stream_order():
    """GLib rejects a word above the modulo bound and takes the next one; later picks keep their words."""
    from segadapt.shifts.cubism import _shuffled_order

    class Stream:
        def __init__(self, words):
            self.words_left = list(words)

        def words(self, n):
            out, self.words_left = self.words_left[:n], self.words_left[n:]
            return np.array(out, dtype=np.uint64)

    count = 3  # top = 0xFFFFFFFF - ((0x80000000 % 3) * 2) % 3 = 0xFFFFFFFE: 0xFFFFFFFF is rejected
    good = [1, 2, 0, 1, 2, 0] * 5  # 2 * count * 5 rounds = 30 words
    planted = [0xFFFFFFFF, *good]
    assert _shuffled_order(count, Stream(planted)).tolist() == _shuffled_order(count, Stream(good)).tolist()


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid`, from /proc (zombies count as gone)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the pool's workers through /proc")
def test_shift_workers_die_with_a_killed_parent(tmp_path):
    """SIGKILL gives the parent no chance to stop its pool: the workers must notice and exit on their own."""
    cmd = [sys.executable, "-m", "segadapt", "shift", "--dataset", "synthetic", "--set", "data.synthetic_train=4000",
           "--filter", "cubism", "--workers", "2", "--out", str(tmp_path / "d2")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = _children(proc.pid)
        assert len(workers) == 2 and proc.poll() is None, "the shift's pool never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "orphaned shift workers outlived their parent"
    finally:
        proc.kill()
        for w in workers:  # never leave a stray worker behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)


@pytest.mark.parametrize("severity", ["nan", "inf", "-inf", "1.5"])
def test_shift_refuses_a_severity_outside_0_1_before_writing_anything(tmp_path, capsys, severity):
    """--severity bypasses the config check; nan used to reach the marker's JSON and crash with a traceback."""
    from segadapt.cli import main

    out = tmp_path / "d2"
    args = ["shift", "--dataset", "synthetic", "--set", "data.synthetic_train=2", "--set",
            "data.synthetic_size=[16,16]", "--filter", "ripple", f"--severity={severity}", "--workers", "1",
            "--out", str(out)]
    assert main(args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("segadapt: error: ") and "severity" in line and not out.exists()


def test_a_resumed_shift_rewrites_truncated_or_emptied_outputs(tmp_path):
    """Files already present are skipped on a re-run only if they are whole: ended, decodable, the right size."""
    from PIL import Image

    from segadapt.config import DataConfig
    from segadapt.data import build_source
    from segadapt.data.base import read_image, read_mask
    from segadapt.data.shifted import write_shifted

    root, out = tmp_path / "d1", tmp_path / "d2"
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "train" / sub).mkdir(parents=True)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(root / "train" / "images" / f"s{k}.jpg")
        Image.fromarray(np.resize(np.arange(3, dtype=np.uint8), (24, 32))).save(root / "train" / "masks" / f"s{k}.png")
    source = build_source(DataConfig(dataset="folder", root=str(root), num_classes=3), "train")

    def shift() -> dict:
        return write_shifted(source, root, out, "train", "ripple", 0.5, workers=1)

    assert shift()["repaired"] == 0
    images, masks = out / "train" / "images", out / "train" / "masks"
    good = {p: p.read_bytes() for p in (*images.iterdir(), *masks.iterdir())}
    (images / "s0.jpg").write_bytes(good[images / "s0.jpg"][: len(good[images / "s0.jpg"]) // 2])
    (images / "s1.jpg").write_bytes(b"")
    (masks / "s2.png").write_bytes(good[masks / "s2.png"][:60])
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(images / "s3.jpg")  # whole, but not the source's size
    r = shift()
    assert r["images"] == 4 and r["repaired"] == 4
    assert {p: p.read_bytes() for p in good} == good  # rewritten exactly as the first run wrote them
    assert read_image(images / "s0.jpg").shape == (24, 32, 3) and read_mask(masks / "s2.png").shape == (24, 32)
    assert shift()["repaired"] == 0
