"""Teacher feature cache: H1's maps of every D1 image, computed once and read back from float16 files.

The teacher is frozen, so its features on a D1 image are the same every epoch; a regression step that reads
them instead of running H1 costs a student forward and backward only. What makes one entry per image enough
is restricting augmentation to flips and crops at multiples of the taps' stride (`PairedDataset.aligned`):
a stride-aligned crop of the frame is a window of the frame's feature maps. Flips are not windows: a VGG's
kernels are not mirror-symmetric, so H1(flip(x)) != flip(H1(x)); each image therefore stores the maps of
its frame and of its mirrored frame, and a flipped crop is a window of the mirrored one.

Exact where the crop is the whole frame (the CPU presets: crop == image size). A smaller crop matches the
live teacher on the crop only in its interior: near the crop's border the live teacher sees zero padding
where the cached maps saw the rest of the image (a band of the tap's receptive-field radius, 113 px for
pool5), so the cached target is the teacher's view of the whole scene there.

That a crop's maps are a window of the frame's holds for convolutional features only: a model with global
attention (SegFormer) has other maps on every cell of a crop, so `prepare` refuses such a model (the
contract's `translation_equivariant`) unless every frame is the crop.

Layout of the cache directory: `cache.json` (metadata, written last: its presence marks a complete cache)
and one flat float16 file per tap, `<tap>.f16`, holding each image's maps back to back, read memory-mapped.
Opening checks the metadata against the run (teacher weights' hash, taps, transform, dataset), every frame's
stored bytes against the CRC-32 written when it was built (a damaged file would otherwise pass the live
comparison, which samples a few frames, and later pass as a loss that will not fall), and compares cached maps
with the live teacher's on a few images; a mismatch is refused, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segadapt import checkpoint as ckpt
from segadapt import distributed
from segadapt.data.pairs import PairedDataset
from segadapt.errors import ConfigError, SegadaptError
from segadapt.models.contract import tap_geometry, translation_equivariant
from segadapt.models.taps import Features

FORMAT = 2  # 2: a CRC-32 per frame and tap
META_FILE = "cache.json"
DTYPE = np.float16
COSINE_MIN = 0.999
NORM_TOLERANCE = 0.01  # |1 - ||cached|| / ||live|||: cosine alone would miss rescaled weights


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the weights (names, dtypes, shapes, bytes): any change to H1 gives a new fingerprint."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tap_strides(teacher: nn.Module, taps: Sequence[str], device: torch.device) -> dict[str, int]:
    """Each tap's stride, from the model contract's geometry (the VGG's layer table, or measured for any
    network `tap_features` can tap); one that is no power of two cannot be cached."""
    strides = {t: g.stride for t, g in tap_geometry(teacher, taps, device, fields=False).items()}
    for t, s in strides.items():
        if s & (s - 1):
            raise SegadaptError(f"tap {t!r} has stride {s}, no power of two; it cannot be cached")
    return strides


@torch.inference_mode()
def crop_maps(features: Features, taps: Sequence[str], crop: tuple[int, int],
              device: torch.device) -> dict[str, tuple[int, int, int]]:
    """Each tap's map shape (C, h, w) on a crop."""
    maps = features(torch.zeros(1, 3, *crop, device=device), list(taps))
    return {t: (int(maps[t].shape[1]), int(maps[t].shape[2]), int(maps[t].shape[3])) for t in taps}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two maps as one vector each."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


@dataclass
class _Layout:
    """Where image i's maps start in each tap's file, and their shape (views, C, h, w)."""

    offsets: dict[str, list[int]]
    shapes: dict[str, list[tuple[int, int, int, int]]]


class TeacherCache:
    """Read-only view of a built cache: memory-mapped float16 maps, sliced by (image, flip, crop offset)."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.directory, self.meta = directory, meta
        self.taps: list[str] = list(meta["taps"])
        self.strides: dict[str, int] = {t: int(s) for t, s in meta["strides"].items()}
        self.crop_maps = {t: tuple(v) for t, v in meta["crop_maps"].items()}
        self.views = 2 if meta["flips"] else 1
        self.layout = self._layout()
        self.maps: dict[str, np.memmap] = {}
        for t in self.taps:
            path = directory / f"{t}.f16"
            expected = self.layout.offsets[t][-1] * np.dtype(DTYPE).itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise SegadaptError(
                    f"{directory}: teacher cache is incomplete ({path.name} missing or of the wrong size); "
                    f"delete {directory} so that the next run rebuilds it"
                )
            self.maps[t] = np.memmap(path, dtype=DTYPE, mode="r")

    def _layout(self) -> _Layout:
        offsets: dict[str, list[int]] = {t: [0] for t in self.taps}
        shapes: dict[str, list[tuple[int, int, int, int]]] = {t: [] for t in self.taps}
        for size in self.meta["frames"]:
            maps = self.meta["frame_maps"][f"{size[0]}x{size[1]}"]
            for t in self.taps:
                c, h, w = maps[t]
                shapes[t].append((self.views, c, h, w))
                offsets[t].append(offsets[t][-1] + self.views * c * h * w)
        return _Layout(offsets, shapes)

    def __len__(self) -> int:
        return len(self.meta["frames"])

    def damaged(self) -> tuple[int, str] | None:
        """The first (image, tap) whose stored bytes differ from the CRC-32 recorded at build time, if any."""
        for t in self.taps:
            for i in range(len(self)):
                if frame_crc(self.entry_bytes(t, i)) != self.meta["checksums"][t][i]:
                    return i, t
        return None

    def entry_bytes(self, tap: str, index: int) -> np.ndarray:
        """Image `index`'s maps at `tap`, every view, as they lie in the file."""
        start, stop = self.layout.offsets[tap][index], self.layout.offsets[tap][index + 1]
        return self.maps[tap][start:stop]

    def entry(self, tap: str, index: int, flip: bool = False) -> np.ndarray:
        """The stored (C, h, w) float16 maps of one image's frame (mirrored frame if `flip`)."""
        return self.entry_bytes(tap, index).reshape(self.layout.shapes[tap][index])[1 if flip else 0]

    def targets(self, geometry: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Float32 teacher maps for a batch of aligned crops; geometry rows are [index, flip, top, left]."""
        out: dict[str, torch.Tensor] = {}
        rows = geometry.tolist()
        for t in self.taps:
            s = self.strides[t]
            _, hc, wc = self.crop_maps[t]
            crops = []
            for index, flip, top, left in rows:
                if top % s or left % s or (flip and self.views == 1):
                    raise SegadaptError(
                        f"{self.directory}: crop ({top}, {left}, flip={bool(flip)}) is not one the teacher cache "
                        f"holds (offsets must be multiples of {s}); train from PairedDataset.aligned"
                    )
                full = self.entry(t, index, bool(flip))
                window = full[:, top // s : top // s + hc, left // s : left // s + wc]
                if window.shape[1:] != (hc, wc):
                    raise SegadaptError(
                        f"{self.directory}: the crop at ({top}, {left}) leaves the cached frame of image {index}; "
                        "is D2 the size of D1? (paired images must have one size)"
                    )
                crops.append(window)
            out[t] = torch.from_numpy(np.stack(crops)).to(device).float()
        return out


def frame_crc(maps: np.ndarray) -> int:
    """CRC-32 of one image's stored maps: a cheap check against damage (every frame is checked at each open)."""
    return zlib.crc32(np.ascontiguousarray(maps).view(np.uint8))


def _describe(pairs: PairedDataset, teacher: nn.Module, taps: Sequence[str], strides: dict[str, int],
              crop_maps: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
    """The metadata a cache must match to be reused: everything that changes what H1 sees or computes."""
    tf, d1 = pairs.transform, pairs.d1
    # each image's file identity (path, size, mtime), not only its stem: a pairs CSV names its rows by number
    images = hashlib.sha256("\n".join(d1.identity(i) for i in range(len(d1))).encode()).hexdigest()
    return {
        "format": FORMAT,
        "dtype": np.dtype(DTYPE).name,
        "model": {"class": type(teacher).__name__, "sha256": model_fingerprint(teacher)},
        "taps": list(taps),
        "strides": strides,
        "crop_maps": {t: list(v) for t, v in crop_maps.items()},
        "flips": bool(tf.hflip),
        "transform": {"crop": list(tf.crop), "base_size": tf.base_size,
                      "mean": [round(float(v), 6) for v in tf.mean.flatten()],
                      "std": [round(float(v), 6) for v in tf.std.flatten()]},
        "dataset": {"name": d1.info.name, "images": len(d1), "identity_sha256": images},
    }


_WHAT = {
    "format": "an older cache format", "dtype": "another dtype", "model": "other teacher weights",
    "taps": "other taps", "strides": "other strides", "crop_maps": "another crop size",
    "flips": "another data.hflip", "transform": "another data.crop_size, base_size, mean or std",
    "dataset": "another D1 dataset",
}


def _mismatch(found: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why a cache's metadata does not fit this run, or None when it does."""
    for key, value in wanted.items():
        if found.get(key) != value:
            return f"made with {_WHAT.get(key, 'another ' + key)}"
    return None


def _with_mirrors(x: torch.Tensor, views: int) -> torch.Tensor:
    """A batch of frames followed by their mirror images when `views` is 2 (flip augmentation is on)."""
    return torch.cat([x, x.flip(-1)]) if views == 2 else x


def build(directory: Path, pairs: PairedDataset, features: Features, meta: dict[str, Any], device: torch.device,
          batch_size: int = 8) -> None:
    """Run H1 once over every D1 frame (and its mirror) and write the maps as float16, atomically.

    Each tap's file is written under a temporary name and renamed; cache.json goes last, so a build that
    dies half-way leaves no cache.json and is simply rebuilt.
    """
    taps, views, d1 = list(meta["taps"]), 2 if meta["flips"] else 1, pairs.d1
    frames: list[list[int]] = []
    frame_maps: dict[str, dict[str, list[int]]] = {}
    checksums: dict[str, list[int]] = {t: [] for t in taps}
    with ExitStack() as stack:
        tmp = {t: stack.enter_context(ckpt.atomic_path(directory / f"{t}.f16")) for t in taps}
        files = {t: stack.enter_context(tmp[t].open("wb")) for t in taps}
        batch: list[torch.Tensor] = []

        @torch.inference_mode()
        def flush() -> None:
            x = _with_mirrors(torch.stack(batch), views).to(device)
            maps = features(x, taps)
            for t in taps:
                m = maps[t].to("cpu", torch.float32).numpy().astype(DTYPE)
                if not np.isfinite(m).all():
                    raise SegadaptError(f"teacher features at {t} exceed the float16 range; they cannot be cached")
                m = m.reshape(views, len(batch), *m.shape[1:]).swapaxes(0, 1)  # image-major: [image][view]
                m = np.ascontiguousarray(m)
                files[t].write(m.tobytes())
                checksums[t].extend(frame_crc(image) for image in m)
                frame_maps.setdefault(f"{x.shape[-2]}x{x.shape[-1]}", {})[t] = list(m.shape[2:])
            batch.clear()

        for i in range(len(d1)):
            frame = pairs.transform.frame(d1.load_image(i))
            if batch and (frame.shape != batch[0].shape or len(batch) == batch_size):
                flush()
            batch.append(frame)
            frames.append(list(frame.shape[1:]))
        if batch:
            flush()
    ckpt.write_json_atomic(directory / META_FILE,
                           {**meta, "frames": frames, "frame_maps": frame_maps, "checksums": checksums})


def verify(cache: TeacherCache, pairs: PairedDataset, features: Features, device: torch.device,
           samples: int = 4) -> None:
    """Compare cached maps with the live teacher's on a few images (both views); refuse a stale cache."""
    n = len(cache)
    for i in sorted({round(k * (n - 1) / max(samples - 1, 1)) for k in range(min(samples, n))}):
        frame = pairs.transform.frame(pairs.d1.load_image(i))[None]
        with torch.inference_mode():
            live = features(_with_mirrors(frame, cache.views).to(device), cache.taps)
        for t in cache.taps:
            for v in range(cache.views):
                stored = torch.from_numpy(np.array(cache.entry(t, i, bool(v))))
                now = live[t][v].to("cpu", torch.float32)
                same = stored.shape == now.shape
                c = cosine(stored, now) if same else float("nan")
                ratio = float(stored.float().norm() / now.norm().clamp_min(1e-30)) if same else float("nan")
                if not (c >= COSINE_MIN and abs(1 - ratio) <= NORM_TOLERANCE):
                    raise SegadaptError(
                        f"{cache.directory}: teacher cache is stale ({t} of {pairs.d1.stem(i)} has cosine {c:.4f} "
                        f"and norm ratio {ratio:.3f} to the live teacher; needs >= {COSINE_MIN}); "
                        f"delete {cache.directory} so that the next run rebuilds it"
                    )


def open_or_build(directory: Path, pairs: PairedDataset, teacher: nn.Module, features: Features,
                  taps: Sequence[str], device: torch.device, batch_size: int = 8) -> TeacherCache:
    """Reuse a matching cache (after checking it against the live teacher) or build a new one.

    A directory with a cache.json made for another teacher, tap set, transform or dataset is refused with
    one line naming it; one without cache.json (new, or an interrupted build) is (re)built.
    """
    if pairs.photometric:
        raise ConfigError("adapt.teacher_cache needs shift.photometric = 0: jittered X1 images cannot be cached")
    strides = tap_strides(teacher, taps, device)
    wanted = _describe(pairs, teacher, taps, strides, crop_maps(features, taps, pairs.transform.crop, device))
    meta_path = directory / META_FILE
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"adapt.teacher_cache = {directory}: that is a file; give a directory for the cache")
    if distributed.is_main() and not meta_path.is_file():
        build(directory, pairs, features, wanted, device, batch_size)
    distributed.barrier()  # under torchrun the other ranks wait for rank 0's files
    try:
        found = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise SegadaptError(f"{directory}: unreadable teacher cache ({e}); delete {directory} to rebuild it") from None
    if not isinstance(found, dict) or not {"frames", "frame_maps"} <= found.keys():
        raise SegadaptError(f"{meta_path}: not a teacher cache's metadata; delete {directory} to rebuild it")
    problem = _mismatch(found, wanted)
    if problem:
        raise SegadaptError(
            f"{directory}: teacher cache is stale ({problem}); delete {directory} so that the next run rebuilds it, "
            "or point adapt.teacher_cache at another directory"
        )
    try:  # the fields the checks above do not compare: a hand-edited or damaged file fails here, not mid-run
        cache = TeacherCache(directory, found)
        bad = cache.damaged()
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise SegadaptError(f"{meta_path}: damaged teacher cache metadata ({type(e).__name__}: {e}); "
                            f"delete {directory} to rebuild it") from None
    if bad is not None:
        raise SegadaptError(f"{directory}: teacher cache is damaged ({bad[1]} of {pairs.d1.stem(bad[0])} differs from "
                            f"its checksum); delete {directory} so that the next run rebuilds it")
    verify(cache, pairs, features, device)
    return cache


def refuse_windows(directory: str | Path, teacher: nn.Module, frames: Sequence[Sequence[int]],
                   crop: Sequence[int]) -> None:
    """Slicing a crop's maps out of the frame's is only right for translation-equivariant features. A model
    whose every map cell sees the whole input (SegFormer's global attention) has other maps on a crop than the
    window of the frame's, so a cache for it is refused unless every frame is the crop (one offset, exact)."""
    if translation_equivariant(teacher) or all(tuple(f) == tuple(crop) for f in frames):
        return
    name = type(getattr(teacher, "net", teacher)).__name__
    big = next(tuple(f) for f in frames if tuple(f) != tuple(crop))
    raise ConfigError(f"adapt.teacher_cache = {directory}: {name}'s features are not translation-equivariant "
                      f"(global attention), so the maps of a {crop[0]}x{crop[1]} crop are not a window of the "
                      f"{big[0]}x{big[1]} frame's; drop adapt.teacher_cache, or crop whole frames "
                      f"(data.crop_size = the frame size)")


def prepare(directory: str | Path, pairs: PairedDataset, teacher: nn.Module, features: Features,
            taps: Sequence[str], device: torch.device, batch_size: int = 8) -> tuple[TeacherCache, PairedDataset]:
    """The cache for an adaptation run and the aligned, X1-free view of `pairs` whose crops it can slice."""
    if len(pairs.d1):  # refused before the build when the first frame already shows it (a cheap look)
        refuse_windows(directory, teacher, [pairs.transform.frame_size(*pairs.d1.load_image(0).shape[:2])],
                       pairs.transform.crop)
    cache = open_or_build(Path(directory), pairs, teacher, features, taps, device, batch_size)
    refuse_windows(directory, teacher, [tuple(f) for f in cache.meta["frames"]], pairs.transform.crop)
    align = math.lcm(*cache.strides.values())
    return cache, pairs.aligned(align, load_x1=False)
