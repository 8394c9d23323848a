"""The files `segadapt change` writes for one pair, each atomically, all renamed into place together.

Per pair <stem>, in the output folder:
- `<stem>_change.tif` (georeferenced: era 1's CRS and transform) or `.png`: the from->to code of each pixel
  (change_maps: i*C + j, C*C uncertain, 255 / 65535 nodata) with a colour table: an unchanged pixel in a pale
  tint of its class, a changed one in a mix of its two classes' colours leaning to the new one, uncertain dark
  grey, nodata transparent (TIFF) or black (PNG).
- `<stem>_mask1|2.tif|png` (--masks): each era's classes on the common grid (era 1's), nodata as predict's.
- `<stem>_change.json`: the report (change_maps.ChangeStats); `<stem>_change.csv`: the transition matrix, one
  row per from->to pair with pixels, m^2 and ha.
- `<stem>_change_figure.png`: both images, both masks and the change map side by side, with a legend.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from segadapt.change_maps import Block, code_dtype, code_nodata
from segadapt.checkpoint import atomic_path
from segadapt.data.rasters import GeoInfo
from segadapt.models.factory import sha256_file
from segadapt.predict_outputs import PngWriter, TiffWriter, colour_table, mask_dtype, nodata_value

UNCERTAIN_RGB = (64, 64, 64)
FIGURE_SIDE = 512  # pixels a side of each panel's data


def change_names(stem: str, tiff: bool, masks: bool, figure: bool) -> dict[str, str]:
    """kind -> file name of each output of the pair `stem`."""
    ext = ".tif" if tiff else ".png"
    names = {"change": f"{stem}_change{ext}", "json": f"{stem}_change.json", "csv": f"{stem}_change.csv"}
    if masks:
        names |= {"mask1": f"{stem}_mask1{ext}", "mask2": f"{stem}_mask2{ext}"}
    if figure:
        names["figure"] = f"{stem}_change_figure.png"
    return names


def change_colours(palette: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(C*C + 1) x 3 uint8: the colour of every from->to code and of `uncertain`."""
    c = num_classes
    lut = colour_table(palette, c).astype(np.float32)
    out = np.zeros((c * c + 1, 3), np.float32)
    for i in range(c):
        for j in range(c):
            out[i * c + j] = 0.3 * lut[i] + 0.7 * 255.0 if i == j else 0.3 * lut[i] + 0.7 * lut[j]
    out[c * c] = UNCERTAIN_RGB
    return np.rint(out).astype(np.uint8)


def transitions_csv(report: dict[str, Any]) -> str:
    """One row per from->to pair with any pixels: the matrix as a table (area columns empty without metres)."""
    names, m, area = report["classes"], report["transitions_pixels"], report["pixel_area_m2"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["from", "to", "changed", "pixels", "m2", "ha"])
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if m[i][j]:
                px = m[i][j]
                w.writerow([a, b, int(i != j), px, "" if area is None else f"{px * area:.3f}",
                            "" if area is None else f"{px * area / 1e4:.6f}"])
    return buf.getvalue()


class ChangeOutputs:
    """Every output of one pair: rasters take blocks of rows (`write`), the report and figure are given at
    the end (`finish`); leaving the block without error hashes every temp file, calls `before_rename` (kind ->
    sha256; the record that owns them is written there first) and renames them all into place. An exception
    (Ctrl-C included) removes the temp files."""

    def __init__(self, paths: dict[str, Path], height: int, width: int, num_classes: int,
                 palette: Sequence[Sequence[int]], geo: GeoInfo | None,
                 before_rename: Callable[[dict[str, str]], None]) -> None:
        self.paths, self.height, self.width, self.geo = paths, height, width, geo
        self.num_classes, self.palette, self.before_rename = num_classes, palette, before_rename
        self.colours = change_colours(palette, num_classes)
        self.temps, self.files = ExitStack(), ExitStack()
        self.temp_paths: dict[str, Path] = {}
        self.writers: dict[str, PngWriter | TiffWriter] = {}
        step = max(1, -(-max(height, width) // FIGURE_SIDE))
        self.step = step
        self.small: dict[str, list[np.ndarray]] = {"change": [], "mask1": [], "mask2": []}

    def _raster(self, kind: str, tmp: Path) -> PngWriter | TiffWriter:
        c, h, w = self.num_classes, self.height, self.width
        if kind == "change":
            dtype, nodata, lut, n = code_dtype(c), code_nodata(c), self.colours, c * c + 1
        else:
            dtype, nodata, lut, n = mask_dtype(c), nodata_value(c), colour_table(self.palette, c), c
        if self.geo is None:
            return PngWriter(tmp, h, w, 1, dtype, [tuple(map(int, x)) for x in lut[:255]])
        colormap = None
        if dtype == np.uint8:
            colormap = {i: (*map(int, lut[i]), 255) for i in range(min(n, 255))}
            colormap[nodata] = (0, 0, 0, 0)
        return TiffWriter(tmp, h, w, 1, dtype, self.geo, nodata, colormap)

    def __enter__(self) -> ChangeOutputs:
        with ExitStack() as temps, ExitStack() as files:
            for kind, path in self.paths.items():
                self.temp_paths[kind] = tmp = temps.enter_context(atomic_path(path))
                if kind in ("change", "mask1", "mask2"):
                    self.writers[kind] = files.enter_context(self._raster(kind, tmp))
            self.temps, self.files = temps.pop_all(), files.pop_all()
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.files.__exit__(kind, e, tb)
            if kind is None:
                self.before_rename({k: sha256_file(p) for k, p in self.temp_paths.items()})
        except BaseException as failed:
            self.temps.__exit__(type(failed), failed, failed.__traceback__)
            raise
        self.temps.__exit__(kind, e, tb)

    def write(self, b: Block, codes: np.ndarray) -> None:
        """Rows [b.y, b.y + n) of the rasters; every `step`-th row and column kept for the figure."""
        nodata = nodata_value(self.num_classes)
        masks = {}
        for k, labels in (("mask1", b.labels1), ("mask2", b.labels2)):
            m = labels.astype(mask_dtype(self.num_classes))
            m[~b.valid] = nodata
            masks[k] = m
        for kind, rows in (("change", codes), *masks.items()):
            if kind in self.writers:
                self.writers[kind].write(b.y, rows)
            first = (-b.y) % self.step
            self.small[kind].append(rows[first::self.step, ::self.step])

    def finish(self, report: dict[str, Any], images: tuple[np.ndarray, np.ndarray] | None,
               class_names: Sequence[str]) -> None:
        """The report, its CSV and (when asked) the figure, into their temp files."""
        self.temp_paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        self.temp_paths["csv"].write_text(transitions_csv(report))
        if "figure" in self.temp_paths and images is not None:
            self._figure(self.temp_paths["figure"], images, class_names, report)

    def _figure(self, path: Path, images: tuple[np.ndarray, np.ndarray], class_names: Sequence[str],
                report: dict[str, Any]) -> None:
        from segadapt.viz.plots import subplots

        c = self.num_classes
        small = {k: np.concatenate(v, 0) for k, v in self.small.items()}
        mask_lut = np.vstack([colour_table(self.palette, c), np.zeros((max(0, 65536 - c), 3), np.uint8)])
        code_lut = np.vstack([self.colours, np.zeros((65536 - len(self.colours), 3), np.uint8)])
        panels = [("era 1 image", images[0]), ("era 2 image", images[1]),
                  ("era 1 classes", mask_lut[small["mask1"]]), ("era 2 classes (on era 1's grid)",
                                                                mask_lut[small["mask2"]]),
                  ("change (from -> to)", code_lut[small["change"]])]
        fig, axes = subplots(2, 3, figsize=(13, 8))
        for ax, (title, img) in zip(axes.ravel(), panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        legend_ax = axes.ravel()[-1]
        legend_ax.axis("off")
        m = np.asarray(report["transitions_pixels"])
        changed = sorted(((int(m[i, j]), i, j) for i in range(c) for j in range(c) if i != j and m[i, j]),
                         reverse=True)[:12]
        from matplotlib.patches import Patch

        handles = [Patch(color=self.colours[i * c + j] / 255.0, label=f"{class_names[i]} -> {class_names[j]} "
                         f"({n} px)") for n, i, j in changed]
        handles += [Patch(color=self.colours[i * c + i] / 255.0, label=f"{class_names[i]} (unchanged)")
                    for i in range(c) if m[i, i]][:8]
        if report["uncertain_pixels"]:
            handles.append(Patch(color=np.asarray(UNCERTAIN_RGB) / 255.0, label="uncertain"))
        legend_ax.legend(handles=handles, loc="center", fontsize=8, frameon=False,
                         title=f"changed: {100 * report['changed_fraction']:.2f}% of confident pixels")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)  # a temp path the caller renames; no pyplot window to close
