"""`segadapt predict` over many images: the inputs listed, each image predicted into its outputs, finished
images skipped on a re-run, unreadable ones listed at the end, and a `predictions.json` summary.

An image is finished when its record `.predict/<stem>.json` exists (written after all its outputs, each
atomically) and says it was predicted from the same input file (size, modification time) with the same
weights and settings, and its outputs are all there. Anything else is predicted again, so a run stopped by
Ctrl-C (which leaves no partial file) or with other settings continues where it is.
"""

from __future__ import annotations

import glob
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segadapt.checkpoint import write_json_atomic
from segadapt.data.rasters import GeoTiffReader, open_raster, rasterio_or_none
from segadapt.errors import ConfigError, DataError, Interrupted
from segadapt.paths import check_path
from segadapt.predict import Predictor, predict_image
from segadapt.predict_outputs import ImageOutputs, OutputSpec, output_paths

SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
OUTPUT_NAME = re.compile(r".+_(mask|overlay|confidence|entropy)\.(png|tif)")
RECORDS = ".predict"
SUMMARY = "predictions.json"
GDAL_CACHE_MB = 128  # GDAL's block cache (its default is 5% of RAM): part of predict's memory bound


@dataclass(frozen=True)
class PredictOptions:
    """Everything besides the model that decides what `predict` writes."""

    tile: int | None = None
    overlap: int | None = None
    batch: int = 4
    memory_mb: float = 1024
    scale: float | None = None
    bands: tuple[int, ...] | None = None
    stretch: str = "auto"
    outputs: OutputSpec = field(default_factory=OutputSpec)

    def check(self) -> PredictOptions:
        if self.batch < 1:
            raise ConfigError(f"--batch {self.batch}: must be at least 1")
        if not self.memory_mb > 0:
            raise ConfigError(f"--memory-mb {self.memory_mb}: must be > 0")
        if self.tile is not None and self.overlap is not None and not 0 <= self.overlap <= self.tile // 2:
            raise ConfigError(f"--overlap {self.overlap}: must be 0 to half the tile ({self.tile // 2})")
        return self

    def settings(self) -> dict[str, Any]:
        """What decides the outputs' content (batch does not; the budget only when it picks the tile)."""
        s = asdict(self)
        s.pop("batch")
        if self.tile is not None:
            s.pop("memory_mb")
        s["bands"] = list(self.bands) if self.bands else None
        return s


def _matches(text: str) -> list[Path]:
    if not any(c in text for c in "*?["):
        p = check_path(text, "--images")
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not files:
                raise ConfigError(f"--images {text}: no images ({', '.join(SUFFIXES)}) in this folder")
            return files
        if p.exists():
            return [p]  # any file named on its own is tried: one that does not decode is listed as unreadable
        raise ConfigError(f"--images {text}: no such file or folder")
    files = sorted(Path(f) for f in glob.glob(text, recursive=True)
                   if Path(f).is_file() and Path(f).suffix.lower() in SUFFIXES)
    if not files:
        raise ConfigError(f"--images {text}: the pattern matches no image files")
    return files


def list_inputs(items: Sequence[str], out: Path | None = None) -> list[Path]:
    """Files, folders (their images, not recursive) and globs (** recurses), each once, in the order given;
    earlier outputs (<stem>_mask.png, ... in `out`, when images and outputs share a folder) are left out.
    Outputs are named by file stem, so two inputs with one stem are refused."""
    seen: dict[Path, Path] = {}
    stems: dict[str, Path] = {}
    outputs = out.resolve() if out is not None else None
    for text in items:
        for path in _matches(text):
            key = path.resolve()
            if key in seen or (key.parent == outputs and OUTPUT_NAME.fullmatch(path.name)):
                continue
            if path.stem in stems:
                raise ConfigError(f"--images: {stems[path.stem]} and {path} share the name {path.stem!r}, and "
                                  "outputs are named by it; predict them into different --out folders")
            seen[key], stems[path.stem] = path, path
    if not seen:
        raise ConfigError(f"--images {' '.join(items)}: every match is an earlier output in {out}; give the images")
    return list(seen.values())


def _identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _finished(record_path: Path, out: Path, identity: dict[str, Any], settings: dict[str, Any]) -> dict | None:
    """The record of an image already predicted with these settings from this file, else None."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("identity") != identity or record.get("settings") != settings:
        return None
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or not all((out / str(name)).is_file() for name in outputs.values()):
        return None
    return record


def _remove_stale_temps(out: Path, names: set[str]) -> None:
    """Temp files a killed run left (atomic_path names them .<name>.<random>.tmp)."""
    for d in (out, out / RECORDS):
        if d.is_dir():
            for p in d.iterdir():
                if p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in names):
                    p.unlink(missing_ok=True)


@dataclass
class Summary:
    images: list[dict[str, Any]]
    failed: list[dict[str, str]]
    skipped: int
    path: Path


def run(pred: Predictor, inputs: Sequence[Path], out: Path, opts: PredictOptions, settings: dict[str, Any],
        header: dict[str, Any], on_finished: Callable[[], None] = lambda: None, progress: bool = True) -> Summary:
    """Predict every input into `out`; `settings` (weights fingerprint, normalisation, options) decides
    whether an earlier result can be kept; `on_finished` runs after each image's outputs are in place."""
    import contextlib

    rasterio = rasterio_or_none()
    env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB) if rasterio else contextlib.nullcontext()
    if rasterio is None and any(p.suffix.lower() in (".tif", ".tiff") for p in inputs):
        print("segadapt: note: rasterio is not installed, so TIFFs are decoded whole and written as PNG without "
              "georeferencing; pip install 'segadapt[geo]'", file=sys.stderr)
    images: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    skipped = 0
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    bar = tqdm(inputs, desc="images", dynamic_ncols=True, disable=not progress or len(inputs) < 2)
    with env:
        try:
            for path in bar:
                try:
                    entry, kept = predict_file(pred, path, out, opts, settings, progress)
                except DataError as e:
                    failed.append({"input": str(path), "error": str(e)})
                    tqdm.write(f"segadapt: skipped {e}", file=sys.stderr)
                    continue
                images.append(entry)
                skipped += kept
                on_finished()
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted: {len(images)} of {len(inputs)} images are finished in {out}; run the "
                              "same command again to continue (finished images are skipped)") from None
        finally:
            bar.close()
    summary = {**header, "settings": settings, "images": images, "failed": failed}
    write_json_atomic(out / SUMMARY, summary)
    return Summary(images, failed, skipped, out / SUMMARY)


def predict_file(pred: Predictor, path: Path, out: Path, opts: PredictOptions, settings: dict[str, Any],
                 progress: bool = True) -> tuple[dict[str, Any], bool]:
    """What `run` does for each image: predict it into its outputs and record it, or keep the result of an
    earlier run; returns (its predictions.json entry, whether it was kept). `out`/.predict must exist."""
    if not path.is_file():
        raise DataError(f"{path}: not found (removed while the run went on?)")
    record_path = check_path(str(out / RECORDS / f"{path.stem}.json"), "output")
    identity = _identity(path)
    kept = _finished(record_path, out, identity, settings)
    if kept is not None:
        return {**kept["entry"], "skipped": True}, True
    reader = open_raster(path, opts.bands, opts.stretch)
    try:
        tiff = isinstance(reader, GeoTiffReader)
        paths = output_paths(out, path.stem, tiff, opts.outputs)
        _remove_stale_temps(out, {p.name for p in paths.values()} | {record_path.name})
        geo = reader.geo if isinstance(reader, GeoTiffReader) else None
        with ImageOutputs(paths, reader.height, reader.width, pred.num_classes, pred.palette, geo) as outputs:
            stats = predict_image(pred, reader, outputs, scale=opts.scale, tile=opts.tile, overlap=opts.overlap,
                                  batch=opts.batch, memory_mb=opts.memory_mb, entropy=opts.outputs.entropy,
                                  overlay=opts.outputs.overlay, progress=progress, desc=path.name)
        entry = {"input": str(path), "outputs": {k: p.name for k, p in paths.items()},
                 **stats.to_dict(pred.class_names)}
        if isinstance(reader, GeoTiffReader):
            entry["raster"] = reader.describe()
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()
    write_json_atomic(record_path, {"identity": identity, "settings": settings, "outputs": entry["outputs"],
                                    "entry": entry})
    return {**entry, "skipped": False}, False
