"""`segadapt change`: the map of what changed between two eras, each predicted by its own model.

Inputs are paired (`pair_inputs`): two single files (two mosaics) are one pair; otherwise files pair by stem
and, for a GeoTIFF of era 1 without a namesake, with the era-2 GeoTIFF covering most of its ground. Each pair
is predicted era by era (change_maps: its own model and scale, predict's tiling and memory plan), era 2 is
put on era 1's grid, and the outputs (change_outputs) are written block by block.

Same contract as `predict`: a pair is finished when its record `.change/<stem>.json` says it came from the
same two input files with the same models and settings and its outputs are the files change wrote; finished
pairs are skipped on a re-run; a file change did not write is never replaced (owned_files); whatever goes
wrong with one pair is one line naming it and the run goes on (listed in changes.json, exit 1); Ctrl-C
leaves no partial file and is exit 130.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segadapt.change_maps import (
    ChangeStats,
    GeoEras,
    PlainEras,
    ProbArray,
    ProbTiff,
    around,
    code_nodata,
    codes_of,
    pixel_area_m2,
    plain_matrix,
    thumbnail,
)
from segadapt.change_outputs import ChangeOutputs, change_names
from segadapt.checkpoint import write_json_atomic
from segadapt.data.rasters import ArrayReader, GeoTiffReader, is_tiff, open_raster
from segadapt.errors import ConfigError, DataError
from segadapt.predict import Predictor, predict_image
from segadapt.predict_job import PredictOptions, _check_name_lengths, _remove_stale_temps, failure_line
from segadapt.predict_records import check_summary, finished, identity, owned, read_record, with_files, write_summary
from segadapt.progress import bar as progress_bar

RECORDS = ".change"
SUMMARY = "changes.json"
ALIGN_METHODS = ("ecc", "features")


@dataclass(frozen=True)
class ChangeOptions:
    """Everything besides the two models that decides what `change` writes."""

    predict: PredictOptions = field(default_factory=PredictOptions)
    min_confidence: float | None = None
    align: str | None = None
    masks: bool = False
    figure: bool = True

    def check(self) -> ChangeOptions:
        self.predict.check()
        if self.min_confidence is not None and not 0.0 < self.min_confidence <= 1.0:
            raise ConfigError(f"--min-confidence {self.min_confidence}: a probability in (0, 1]")
        if self.align is not None and self.align not in ALIGN_METHODS:
            raise ConfigError(f"--align {self.align}: choose one of {', '.join(ALIGN_METHODS)}")
        return self

    def settings(self) -> dict[str, Any]:
        s = asdict(self)
        s["predict"] = self.predict.settings()
        return s


@dataclass(frozen=True)
class Pair:
    """One era-1 input and the era-2 input it is compared with; `how`: single, stem or ground."""

    stem: str
    era1: Path
    era2: Path
    how: str


@dataclass
class ChangeSummary:
    pairs: list[dict[str, Any]]
    failed: list[dict[str, str]]
    skipped: int
    path: Path


# --- pairing ------------------------------------------------------------------------------------------------

def _footprint_share(a: Path, b: Path) -> float:
    """Share of GeoTIFF `a`'s ground that `b` covers (bounding boxes, in a's CRS); 0 when either is not
    georeferenced or the two cannot be put on one ground."""
    import rasterio
    from rasterio.warp import transform_bounds

    from segadapt.chatter import hushed

    try:
        with hushed(), rasterio.open(a) as da, rasterio.open(b) as db:
            if da.crs is None or db.crs is None:
                return 0.0
            left, bottom, right, top = transform_bounds(db.crs, da.crs, *db.bounds)
            ba = da.bounds
    except Exception:  # unreadable: the pair is refused later, by whoever reads it, in one line
        return 0.0
    w = max(0.0, min(right, ba.right) - max(left, ba.left))
    h = max(0.0, min(top, ba.top) - max(bottom, ba.bottom))
    area = (ba.right - ba.left) * (ba.top - ba.bottom)
    return w * h / area if area else 0.0


def pair_inputs(era1: Sequence[Path], era2: Sequence[Path]) -> tuple[list[Pair], list[dict[str, str]]]:
    """The pairs, and a failure line for each era-1 input that has no partner."""
    if len(era1) == 1 and len(era2) == 1:
        return [Pair(era1[0].stem, era1[0], era2[0], "single")], []
    by_stem = {p.stem: p for p in era2}
    tiffs2 = [p for p in era2 if is_tiff(p)]
    pairs, unpaired = [], []
    for a in era1:
        if a.stem in by_stem:
            pairs.append(Pair(a.stem, a, by_stem[a.stem], "stem"))
            continue
        shares = [(_footprint_share(a, b), str(b), b) for b in tiffs2] if is_tiff(a) else []
        best = max(shares, default=None)
        if best is not None and best[0] > 0:
            pairs.append(Pair(a.stem, a, best[2], "ground"))
        else:
            unpaired.append({"input": str(a), "error": f"{a}: no era-2 input has its name or, for a GeoTIFF, "
                             "covers its ground; give its era-2 image in --images2"})
    return pairs, unpaired


# --- one pair -----------------------------------------------------------------------------------------------

def _predict_era(pred: Predictor, reader: ArrayReader | GeoTiffReader, sink: Any, opts: PredictOptions,
                 progress: bool, desc: str) -> dict[str, Any]:
    p = opts
    stats = predict_image(pred, reader, None, scale=p.scale, tile=p.tile, overlap=p.overlap, batch=p.batch,
                          memory_mb=p.memory_mb, progress=progress, desc=desc, probs=sink)
    return stats.to_dict(pred.class_names)


def _georeferenced(reader: ArrayReader | GeoTiffReader) -> bool:
    return isinstance(reader, GeoTiffReader) and reader.geo.georeferenced and reader.geo.crs is not None


def _finished(pair: Pair, out: Path, settings: dict[str, Any]) -> bool:
    ident = {"era1": identity(pair.era1), "era2": identity(pair.era2)}
    return finished(read_record(out / RECORDS / f"{pair.stem}.json"), out, ident, settings)


def change_pair(preds: tuple[Predictor, Predictor], pair: Pair, out: Path, opts: ChangeOptions,
                settings: dict[str, Any], progress: bool = True) -> tuple[dict[str, Any], bool]:
    """One pair into its outputs and record, or the result of an earlier run kept; returns (its changes.json
    entry, whether it was kept). `out`/.change must exist."""
    for p in (pair.era1, pair.era2):
        if not p.is_file():
            raise DataError(f"{p}: not found (removed while the run went on?)")
    rec_path = out / RECORDS / f"{pair.stem}.json"
    record = read_record(rec_path)
    ident = {"era1": identity(pair.era1), "era2": identity(pair.era2)}
    if finished(record, out, ident, settings):
        return {**record["entry"], "skipped": True}, True
    po = opts.predict
    r1 = open_raster(pair.era1, po.bands, po.stretch)
    try:
        r2 = open_raster(pair.era2, po.bands, po.stretch)
    except BaseException:
        getattr(r1, "close", lambda: None)()
        raise
    try:
        return _change(preds, pair, r1, r2, out, opts, settings, record, ident, rec_path, progress), False
    finally:
        for r in (r1, r2):
            getattr(r, "close", lambda: None)()


def _change(preds: tuple[Predictor, Predictor], pair: Pair, r1: Any, r2: Any, out: Path, opts: ChangeOptions,
            settings: dict[str, Any], record: dict[str, Any], ident: dict[str, Any], rec_path: Path,
            progress: bool) -> dict[str, Any]:
    geo = _georeferenced(r1) and _georeferenced(r2)
    if not geo and opts.align is None and (_georeferenced(r1) or _georeferenced(r2)):
        raise DataError(f"{pair.era2 if _georeferenced(r1) else pair.era1}: only one of the pair is "
                        f"georeferenced ({pair.era1}, {pair.era2}); georeference both, or give --align ecc|features")
    names = change_names(pair.stem, geo, opts.masks, opts.figure)
    _check_name_lengths(pair.era1, [*names.values(), rec_path.name])
    paths = {k: out / n for k, n in names.items()}
    replaced = owned(record, out, list(names.values()), f"change of {pair.era1}")
    _remove_stale_temps(out, set(names.values()) | {rec_path.name})
    classes = preds[0].num_classes
    entry: dict[str, Any] = {"era1": str(pair.era1), "era2": str(pair.era2), "paired_by": pair.how,
                             "outputs": names}
    report: dict[str, Any] = {"era1": str(pair.era1), "era2": str(pair.era2), "paired_by": pair.how}
    if geo:
        r2 = around(r1, r2, pair.era2)  # closed with the whole raster it reads
    with tempfile.TemporaryDirectory(prefix="eras-", dir=out / RECORDS) as tmp:
        if geo:
            sinks: tuple[Any, Any] = (ProbTiff(Path(tmp) / "era1.tif", r1, classes),
                                      ProbTiff(Path(tmp) / "era2.tif", r2, classes))
        else:
            sinks = (ProbArray(r1, classes), ProbArray(r2, classes))
        for k, (pred, reader, sink, path) in enumerate(zip(preds, (r1, r2), sinks, (pair.era1, pair.era2)), 1):
            try:
                report[f"era{k}_prediction"] = _predict_era(pred, reader, sink, opts.predict, progress, path.name)
            finally:
                if isinstance(sink, ProbTiff):
                    sink.close()
        if geo:
            eras: GeoEras | PlainEras = GeoEras(sinks[0].path, sinks[1].path, (pair.era1, pair.era2))
            report["grid"] = {"crs": str(r1.geo.crs), "transform": list(r1.geo.transform)[:6],
                              "era2_crs": str(r2.geo.crs)}
        else:
            matrix, how = plain_matrix(r1.read(0, 0, r1.height, r1.width)[0].astype("uint8"),
                                       r2.read(0, 0, r2.height, r2.width)[0].astype("uint8"), opts.align, pair.era2)
            eras = PlainEras(sinks[0], sinks[1], matrix)
            report["alignment"] = how

        def record_outputs(hashes: dict[str, str]) -> None:  # before the files are renamed into place
            written = {names[k]: h for k, h in hashes.items()}
            write_json_atomic(rec_path, {"identity": ident, "settings": settings, "outputs": names,
                                         "files": with_files(record, written, replaced), "entry": entry})

        try:
            with ChangeOutputs(paths, r1.height, r1.width, classes, preds[0].palette, r1.geo if geo else None,
                               record_outputs) as outputs:
                stats = ChangeStats(classes)
                for block in eras.blocks():
                    codes = codes_of(block, classes, opts.min_confidence)
                    stats.add(block, codes)
                    outputs.write(block, codes)
                report |= stats.to_dict(preds[0].class_names, pixel_area_m2(r1.geo) if geo else None)
                report["min_confidence"] = opts.min_confidence
                report["codes"] = {"from_to": f"from * {classes} + to", "uncertain": classes * classes,
                                   "nodata": code_nodata(classes)}
                entry |= {k: report.get(k) for k in ("changed_fraction", "changed_pixels", "changed_m2",
                                                      "changed_ha", "common_fraction", "uncertain_pixels")}
                thumbs = (thumbnail(r1), thumbnail(r2)) if opts.figure else None
                outputs.finish(report, thumbs, preds[0].class_names)
        finally:
            eras.close()
    return {**entry, "skipped": False}


# --- many pairs ---------------------------------------------------------------------------------------------

def run(preds: tuple[Predictor, Predictor], pairs: Sequence[Pair], out: Path, opts: ChangeOptions,
        settings: dict[str, Any], header: dict[str, Any], unpaired: Sequence[dict[str, str]] = (),
        on_finished: Callable[[], None] = lambda: None, progress: bool = True) -> ChangeSummary:
    """Every pair into `out`; `settings` decides whether an earlier result can be kept."""
    from segadapt.data.rasters import rasterio_or_none
    from segadapt.predict_job import GDAL_CACHE_MB

    if preds[0].class_names != preds[1].class_names:
        raise ConfigError(f"--model1 and --model2 have different classes ({', '.join(preds[0].class_names)} vs "
                          f"{', '.join(preds[1].class_names)}); change maps compare models of one class list")
    import contextlib

    from segadapt import ranks

    ranks.start()
    pairs = ranks.same_everywhere(list(pairs))
    progress = progress and ranks.is_main()
    rasterio = rasterio_or_none()
    env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB) if rasterio else contextlib.nullcontext()
    replaced = check_summary(out / SUMMARY, RECORDS, "change")
    done: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for f in unpaired if ranks.is_main() else ():
        tqdm.write(f"segadapt: skipped {f['error']}", file=sys.stderr)
    skipped = 0
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    mine = ranks.share(pairs)  # every pair when alone
    bar = progress_bar(mine, desc="pairs", dynamic_ncols=True, disable=not progress or len(mine) < 2)
    with env, ranks.sigterm_interrupts():
        try:
            for pair in bar:
                try:
                    entry, kept = change_pair(preds, pair, out, opts, settings, progress)
                except Exception as e:  # whatever fails in one pair is that pair's failure (Ctrl-C is not)
                    line = failure_line(pair.era1, e)
                    failed.append({"input": str(pair.era1), "error": line})
                    tqdm.write(f"segadapt: skipped {line}", file=sys.stderr)
                    continue
                done.append(entry)
                skipped += kept
                on_finished()
            bar.close()
            parts = ranks.gather((done, failed, skipped))
        except (KeyboardInterrupt, ranks.RankLost):
            by_path = {p.era1: p for p in pairs}
            raise ranks.interrupted("pairs", [p.era1 for p in pairs], lambda p: _finished(by_path[p], out, settings),
                                    out) from None
        finally:
            bar.close()
    era1 = [p.era1 for p in pairs]
    done = ranks.in_order(era1, [e for part in parts for e in part[0]], "era1")
    failed = list(unpaired) + ranks.in_order(era1, [f for part in parts for f in part[1]], "input")
    skipped = sum(part[2] for part in parts)
    if ranks.is_main():
        write_summary(out / SUMMARY, {**header, "settings": settings, "pairs": done, "failed": failed}, replaced,
                      RECORDS)
    return ChangeSummary(done, failed, skipped, out / SUMMARY)
