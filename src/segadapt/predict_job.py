"""`segadapt predict` over many images: the inputs listed, each image predicted into its outputs, finished
images skipped on a re-run, failed ones listed at the end, and a `predictions.json` summary.

An image is finished when its record `.predict/<stem>.json` (predict_records) says it was predicted from
the same input file (size, modification time) with the same weights and settings, and its outputs are the
files predict wrote. Anything else is predicted again, so a run stopped by Ctrl-C (which leaves no partial
file) or with other settings continues where it is. A file predict did not write is never replaced.

Whatever goes wrong with one image (it does not decode, has a pixel type the stretch cannot handle, is
smaller than the network's kernels, has a name too long for its outputs, ...) is one line naming it; the
run goes on, and the failures are listed in predictions.json and at the end (exit 1).
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segadapt.checkpoint import write_json_atomic
from segadapt.data.rasters import GeoTiffReader, is_tiff, open_raster, rasterio_or_none
from segadapt.errors import ConfigError, DataError, SegadaptError
from segadapt.paths import check_path
from segadapt.predict import Predictor, check_overlap, predict_image
from segadapt.predict_bands import Band, predict_band, remove_bands, replay
from segadapt.predict_outputs import ImageOutputs, OutputSpec, output_names
from segadapt.predict_records import (
    RECORDS,
    check_summary,
    finished,
    identity,
    owned,
    read_record,
    record_path,
    recorded_names,
    with_files,
    write_summary,
)
from segadapt.progress import bar as progress_bar
from segadapt.runtime import warn_if_busy

SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
SUMMARY = "predictions.json"
GDAL_CACHE_MB = 128  # GDAL's block cache (its default is 5% of RAM): part of predict's memory bound
NAME_MAX = 255  # bytes in one path component (ext4, APFS, NTFS alike)
TEMP_EXTRA = len("..") + 8 + len(".tmp")  # atomic_path writes NAME first as .NAME.<8 random characters>.tmp


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
        if self.tile is not None and self.overlap is not None:
            check_overlap(self.overlap, self.tile)
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
    earlier outputs (the files predict's records in `out` say it wrote, when images and outputs share a
    folder) are left out, and nothing else: a user's own `x_mask.png` is an image like any other.
    Outputs are named by file stem, so two inputs with one stem are refused."""
    seen: dict[Path, Path] = {}
    stems: dict[str, Path] = {}
    outputs = out.resolve() if out is not None else None
    earlier = recorded_names(out) if out is not None else set()
    for text in items:
        for path in _matches(text):
            key = path.resolve()
            if key in seen or (key.parent == outputs and path.name in earlier):
                continue
            if path.stem in stems:
                raise ConfigError(f"--images: {stems[path.stem]} and {path} share the name {path.stem!r}, and "
                                  "outputs are named by it; predict them into different --out folders")
            seen[key], stems[path.stem] = path, path
    if not seen:
        raise ConfigError(f"--images {' '.join(items)}: every match is an earlier output in {out}; give the images")
    return list(seen.values())


def _remove_stale_temps(out: Path, names: set[str]) -> None:
    """Temp files a killed run left (atomic_path names them .<name>.<random>.tmp)."""
    for d in (out, out / RECORDS):
        if d.is_dir():
            for p in d.iterdir():
                if p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in names):
                    p.unlink(missing_ok=True)


def _check_name_lengths(path: Path, names: Sequence[str]) -> None:
    """Each output name, and the temp name it is written under first, must fit one path component: an input
    whose name is too long for its outputs is that image's failure, named, not the run's."""
    longest = max(names, key=lambda n: len(n.encode()))
    if len(longest.encode()) + TEMP_EXTRA > NAME_MAX:
        fit = len(path.stem.encode()) - (len(longest.encode()) + TEMP_EXTRA - NAME_MAX)
        raise DataError(f"{path}: its name is too long for its outputs ({longest!r} is {len(longest.encode())} "
                        f"bytes; with its temporary name at most {NAME_MAX - TEMP_EXTRA} fit); rename the file "
                        f"to a stem of at most {max(fit, 0)} bytes")


def failure_line(path: Path, e: BaseException) -> str:
    """One line naming the image, whatever failed: a SegadaptError says its own (and names the file); anything
    else (an image too small for the network's kernels, a pixel type the stretch cannot handle, ...) is
    named by its class and its first words."""
    text = " ".join(str(e).split())
    if isinstance(e, SegadaptError):
        return text if str(path) in text else f"{path}: {text}"
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{path}: could not be predicted ({type(e).__name__}{': ' + text if text else ''})"


@dataclass
class Summary:
    images: list[dict[str, Any]]
    failed: list[dict[str, str]]
    skipped: int
    path: Path


def run(pred: Predictor, inputs: Sequence[Path], out: Path, opts: PredictOptions, settings: dict[str, Any],
        header: dict[str, Any], on_finished: Callable[[], None] = lambda: None, progress: bool = True,
        row_bands: bool = False) -> Summary:
    """Predict every input into `out`; `settings` (weights fingerprint, normalisation, options) decides
    whether an earlier result can be kept; `on_finished` runs after each image's outputs are in place.
    `row_bands`: under torchrun, the rows of each unfinished TIFF are shared among the ranks (predict_bands)."""
    import contextlib

    from segadapt import ranks

    _, world = ranks.start()
    inputs = ranks.same_everywhere(list(inputs))
    progress = progress and ranks.is_main()
    if ranks.is_main():
        warn_if_busy()
    rasterio = rasterio_or_none()
    env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB) if rasterio else contextlib.nullcontext()
    tiffs = any(is_tiff(p) for p in inputs)
    if ranks.is_main() and rasterio is None and tiffs:
        print("segadapt: note: rasterio is not installed, so TIFFs are decoded whole and written as PNG without "
              "georeferencing; pip install 'segadapt[geo]'", file=sys.stderr)
    elif ranks.is_main() and tiffs and opts.scale is None and pred.window_factor is None:
        print(f"segadapt: note: the model resizes whole images to a shorter side of {pred.base_size} px, but its "
              "training frames had no one size, so no pixel factor is known for TIFFs read in windows: they are "
              "predicted at their stored resolution (give --scale F to resize them)", file=sys.stderr)
    replaced = check_summary(out / SUMMARY)
    images: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    skipped = 0
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    banded = ranks.same_everywhere(_to_band(inputs, out, settings) if row_bands and world > 1 else [])
    bands = [Band(p, k, world) for p in banded for k in range(world)]
    mine = ranks.share([*bands, *(p for p in inputs if p not in banded)])  # every input when alone
    bar = progress_bar(mine, desc="images", dynamic_ncols=True, disable=not progress or len(mine) < 2)
    with env, ranks.sigterm_interrupts():
        try:
            for job in bar:
                path = job.path if isinstance(job, Band) else job
                try:
                    if isinstance(job, Band):
                        predict_band(pred, job, out, opts, settings, progress)
                        continue
                    entry, kept = predict_file(pred, path, out, opts, settings, progress)
                except Exception as e:  # whatever fails in one image is that image's failure (Ctrl-C is not)
                    line = failure_line(path, e)
                    failed.append({"input": str(path), "error": line})
                    tqdm.write(f"segadapt: skipped {line}", file=sys.stderr)
                    continue
                images.append(entry)
                skipped += kept
                on_finished()
            bar.close()
            parts = ranks.gather((images, failed, skipped))
        except (KeyboardInterrupt, ranks.RankLost):
            raise ranks.interrupted("images", inputs, lambda p: finished(
                read_record(record_path(out, p.stem)), out, identity(p), settings), out) from None
        finally:
            bar.close()
    images = [e for part in parts for e in part[0]]
    failed = list({f["input"]: f for part in parts for f in part[1]}.values())  # a mosaic's failed bands: once
    skipped = sum(part[2] for part in parts)
    if ranks.is_main():
        images += _assemble(pred, banded, world, out, opts, settings, failed, on_finished)
    images, failed = ranks.in_order(inputs, images, "input"), ranks.in_order(inputs, failed, "input")
    if ranks.is_main():
        summary = {**header, "settings": settings, "images": images, "failed": failed}
        write_summary(out / SUMMARY, summary, replaced)
    return Summary(images, failed, skipped, out / SUMMARY)


def _to_band(inputs: Sequence[Path], out: Path, settings: dict[str, Any]) -> list[Path]:
    """The TIFFs whose rows the ranks share: those not finished by an earlier run."""
    return [p for p in inputs if is_tiff(p) and not finished(read_record(record_path(out, p.stem)), out,
                                                             identity(p), settings)]


def _assemble(pred: Predictor, banded: Sequence[Path], world: int, out: Path, opts: PredictOptions,
              settings: dict[str, Any], failed: list[dict[str, str]], on_finished: Callable[[], None]) -> list:
    """Rank 0, once every band is done: each banded mosaic's outputs from its bands (predict_bands.replay); a
    mosaic with a failed band is listed once, as failed."""
    entries, failed_inputs = [], {f["input"] for f in failed}
    for path in banded:
        if str(path) in failed_inputs:
            continue
        try:
            bands = [Band(path, k, world) for k in range(world)]
            entry, _ = predict_file(pred, path, out, opts, settings, False, infer=replay(bands, out))
        except Exception as e:  # as any image's failure
            line = failure_line(path, e)
            failed.append({"input": str(path), "error": line})
            tqdm.write(f"segadapt: skipped {line}", file=sys.stderr)
            continue
        remove_bands(out, path)
        entries.append({**entry, "row_bands": world})
        on_finished()
    return entries


def predict_file(pred: Predictor, path: Path, out: Path, opts: PredictOptions, settings: dict[str, Any],
                 progress: bool = True, infer: Callable[..., Any] = predict_image) -> tuple[dict[str, Any], bool]:
    """What `run` does for each image: predict it into its outputs and record it, or keep the result of an
    earlier run; returns (its predictions.json entry, whether it was kept). `out`/.predict must exist.
    `infer`: what fills the outputs (predict_image, or the replay of a mosaic's row bands)."""
    if not path.is_file():
        raise DataError(f"{path}: not found (removed while the run went on?)")
    names = output_names(path.stem, False, opts.outputs)
    rec_path = record_path(out, path.stem)
    _check_name_lengths(path, [*names.values(), rec_path.name])
    record, ident = read_record(rec_path), identity(path)
    if finished(record, out, ident, settings):
        return {**record["entry"], "skipped": True}, True
    reader = open_raster(path, opts.bands, opts.stretch)
    try:
        tiff = isinstance(reader, GeoTiffReader)
        paths = {k: out / n for k, n in output_names(path.stem, tiff, opts.outputs).items()}
        replaced = owned(record, out, [p.name for p in paths.values()], f"predicting {path}")
        _remove_stale_temps(out, {p.name for p in paths.values()} | {rec_path.name})
        geo = reader.geo if isinstance(reader, GeoTiffReader) else None
        entry: dict[str, Any] = {"input": str(path), "outputs": {k: p.name for k, p in paths.items()}}

        def record_outputs(hashes: dict[str, str]) -> None:  # before the files are renamed into place
            written = {paths[k].name: h for k, h in hashes.items()}
            write_json_atomic(rec_path, {"identity": ident, "settings": settings, "outputs": entry["outputs"],
                                         "files": with_files(record, written, replaced), "entry": entry})

        with ImageOutputs(paths, reader.height, reader.width, pred.num_classes, pred.palette, geo,
                          record_outputs) as outputs:
            stats = infer(pred, reader, outputs, scale=opts.scale, tile=opts.tile, overlap=opts.overlap,
                                  batch=opts.batch, memory_mb=opts.memory_mb, entropy=opts.outputs.entropy,
                                  overlay=opts.outputs.overlay, progress=progress, desc=path.name)
            entry.update(stats.to_dict(pred.class_names))
            if isinstance(reader, GeoTiffReader):
                entry["raster"] = reader.describe()
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()
    return {**entry, "skipped": False}, False
