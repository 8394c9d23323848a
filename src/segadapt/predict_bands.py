"""One mosaic's rows shared among the ranks of a torchrun launch: `predict --row-bands`.

A GeoTIFF too large for one process is cut into as many row bands as there are ranks; rank k predicts band k
(rows [H k / K, H (k + 1) / K)) as an image of its own, read with CONTEXT_ROWS more rows above and below it so
the network sees across the cut. At scale 1 a model whose receptive field is within that margin gives exactly
the whole-mosaic result (tested); a wider one differs in the rows near a cut, as neighbouring tiles do, and at
another scale the band is resampled on its own grid (equal within interpolation). A band's
results (class, confidence, entropy and validity of each pixel, float32) go to a raster of its own under
`.predict/bands/<stem>/`, with a record, so a re-run skips the bands any rank finished. When every rank is
done, rank 0 replays the bands in row order through predict's own writer: the outputs, predictions.json entry
and record are those of a one-process run (same files and names, GeoTIFF georeferencing), and the bands are
then removed.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segadapt.change_maps import WindowReader
from segadapt.checkpoint import atomic_path, write_json_atomic
from segadapt.data.rasters import GeoTiffReader, open_raster
from segadapt.errors import DataError
from segadapt.models.factory import sha256_file
from segadapt.predict import ImageStats, Predictor, TilePlan, predict_image
from segadapt.predict_outputs import TiffWriter
from segadapt.predict_records import RECORDS, identity, read_record

CONTEXT_ROWS = 256  # rows read above and below a band (source pixels)
BLOCK = 256  # rows replayed at once


@dataclass(frozen=True)
class Band:
    """Band `index` of `count` of the mosaic `path`."""

    path: Path
    index: int
    count: int

    def rows(self, height: int) -> tuple[int, int]:
        return height * self.index // self.count, height * (self.index + 1) // self.count

    def files(self, out: Path) -> tuple[Path, Path]:
        """Its raster and record."""
        folder = out / RECORDS / "bands" / self.path.stem
        name = f"{self.index}of{self.count}"
        return folder / f"{name}.tif", folder / f"{name}.json"


class BandRows:
    """predict_image's `outputs` for a band: keeps rows [top, top + rows) of the window it predicts, as four
    float32 bands (class, confidence, entropy or NaN, validity)."""

    def __init__(self, path: Path, rows: int, width: int, top: int, reader: WindowReader) -> None:
        self.top, self.rows = top, rows
        self.writer = TiffWriter(path, rows, width, 4, np.dtype(np.float32), reader.geo)

    def write(self, y: int, labels: np.ndarray, conf: np.ndarray, entropy: np.ndarray | None,
              valid: np.ndarray | None, rgb: np.ndarray | None) -> None:
        a, b = max(y, self.top), min(y + len(labels), self.top + self.rows)
        if a >= b:
            return
        s = slice(a - y, b - y)
        n, w = b - a, labels.shape[1]
        data = np.empty((n, w, 4), np.float32)
        data[..., 0], data[..., 1] = labels[s], conf[s]
        data[..., 2] = entropy[s] if entropy is not None else np.nan
        data[..., 3] = 1.0 if valid is None else valid[s]
        self.writer.write(a - self.top, data)


def predict_band(pred: Predictor, band: Band, out: Path, opts: Any, settings: dict[str, Any],
                 progress: bool = True) -> bool:
    """Band `band` into its raster and record, unless an earlier run finished it; returns whether it was kept."""
    raster, rec_path = band.files(out)
    ident = {**identity(band.path), "band": [band.index, band.count]}
    record = read_record(rec_path)
    if (record.get("identity") == ident and record.get("settings") == settings and raster.is_file()
            and sha256_file(raster) == record.get("sha256")):
        return True
    reader = open_raster(band.path, opts.bands, opts.stretch)
    try:
        if not isinstance(reader, GeoTiffReader):
            raise DataError(f"{band.path}: --row-bands splits TIFFs read in windows; this one is decoded whole")
        a, b = band.rows(reader.height)
        top, bottom = max(0, a - CONTEXT_ROWS), min(reader.height, b + CONTEXT_ROWS)
        window = WindowReader(reader, top, 0, bottom - top, reader.width)
        rec_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(raster) as tmp:
            sink = BandRows(tmp, b - a, reader.width, a - top, window)
            with sink.writer:
                stats = predict_image(pred, window, sink, scale=opts.scale, tile=opts.tile, overlap=opts.overlap,
                                      batch=opts.batch, memory_mb=opts.memory_mb, entropy=opts.outputs.entropy,
                                      progress=progress, desc=f"{band.path.name} rows {a}-{b}")
            digest = sha256_file(tmp)
        write_json_atomic(rec_path, {"identity": ident, "settings": settings, "sha256": digest,
                                     "scale": stats.scale, "net_size": list(stats.net_size),
                                     "plan": asdict(stats.plan), "seconds": stats.seconds})
    finally:
        reader.close()
    return False


def replay(bands: list[Band], out: Path):  # noqa: ANN201 (predict_image's signature)
    """A stand-in for predict_image that reads the finished bands instead of running the network."""

    def infer(pred: Predictor, reader: Any, outputs: Any, *, overlay: bool = False, **_: Any) -> ImageStats:
        import rasterio
        from rasterio.windows import Window

        t0 = time.perf_counter()
        first = read_record(bands[0].files(out)[1])
        plan = TilePlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in first["plan"].items()})
        stats = ImageStats(reader.height, reader.width, tuple(first["net_size"]), float(first["scale"]), plan,
                           np.zeros(pred.num_classes, np.int64))
        for band in bands:
            a, b = band.rows(reader.height)
            with rasterio.open(band.files(out)[0]) as ds:
                for y in range(0, b - a, BLOCK):
                    n = min(BLOCK, b - a - y)
                    data = ds.read(window=Window(0, y, reader.width, n))
                    labels, conf, ent, valid = data[0].astype(np.int64), data[1], data[2], data[3] > 0.5
                    rgb = reader.read(a + y, 0, n, reader.width)[0] if overlay else None
                    stats.counts += np.bincount(labels[valid], minlength=pred.num_classes)
                    stats.confidence_sum += float(conf[valid].sum(dtype=np.float64))
                    stats.nodata += int(valid.size - valid.sum())
                    outputs.write(a + y, labels, conf, None if np.isnan(ent).all() else ent, valid, rgb)
            stats.seconds += float(read_record(band.files(out)[1]).get("seconds", 0.0))
        stats.seconds += time.perf_counter() - t0
        return stats

    return infer


def remove_bands(out: Path, path: Path) -> None:
    """A mosaic's bands, once its outputs are in place."""
    shutil.rmtree(out / RECORDS / "bands" / path.stem, ignore_errors=True)
