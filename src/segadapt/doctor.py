"""`segadapt doctor`: check a dataset before training, so that a bad file costs seconds instead of a run.

Every image and mask is read once, with the readers training uses, and the report covers: label values
against num_classes and the ignore index, class pixel frequencies, image and mask sizes, image modes,
unreadable files, colour-coded masks, and D1/D2 pairs. Errors are what would stop training or feed it wrong
labels (exit code 1); warnings and notes are worth a look but do not fail the check.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segadapt.config import RunConfig
from segadapt.data import SegmentationSource, build_source, spread_indices
from segadapt.data.base import (
    ColourMaskError,
    DatasetInfo,
    decode_image,
    image_header,
    read_file_bytes,
    read_mask,
)
from segadapt.data.datasets import IMAGE_SUFFIXES
from segadapt.errors import ConfigError, DataError
from segadapt.progress import bar as progress_bar

# PIL modes other than RGB, as users know them; all are converted to RGB when read
MODE_NOTES = {
    "L": "grey",
    "LA": "grey, alpha dropped",
    "RGBA": "alpha dropped",
    "P": "palette",
    "PA": "palette, alpha dropped",
    "I;16": "16-bit grey, scaled to 8 bits",
    "I;16B": "16-bit grey, scaled to 8 bits",
    "I": "32-bit integer",
    "CMYK": "print colours",
    "1": "1-bit",
}
SHOWN_PER_CHECK = 3  # findings printed per check; the JSON holds all of them


@dataclass
class Finding:
    level: str  # error | warning | note
    check: str  # short name, e.g. "size mismatch"; findings are grouped by it
    message: str  # one line naming the file and the fix, like the errors training raises
    path: str = ""


@dataclass
class SplitStats:
    """What one split holds: file sizes and modes, and the label values and their pixel counts."""

    images: int = 0
    checked: int = 0
    image_sizes: Counter[str] = field(default_factory=Counter)
    mask_sizes: Counter[str] = field(default_factory=Counter)
    image_modes: Counter[str] = field(default_factory=Counter)
    label_pixels: Counter[int] = field(default_factory=Counter)  # label value -> pixel count

    def add_labels(self, mask: np.ndarray) -> list[int]:
        """Count the mask's label values; returns the values present in it."""
        flat = mask.ravel()
        if flat.size and flat.min() >= 0 and flat.max() < 1 << 16:  # bincount: linear, no sort
            counts = np.bincount(flat)
            values = np.flatnonzero(counts)
            counts = counts[values]
        else:
            values, counts = np.unique(flat, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            self.label_pixels[v] += c
        return values.tolist()

    def to_dict(self, info: DatasetInfo) -> dict[str, Any]:
        total = sum(self.label_pixels.values())
        return {
            "images": self.images,
            "checked": self.checked,
            "image_sizes": dict(self.image_sizes.most_common()),
            "mask_sizes": dict(self.mask_sizes.most_common()),
            "image_modes": dict(self.image_modes.most_common()),
            "label_values": sorted(self.label_pixels),
            "class_pixels": {name: self.label_pixels.get(i, 0) for i, name in enumerate(info.class_names)},
            "ignore_pixels": self.label_pixels.get(info.ignore_index, 0),
            "out_of_range_pixels": {str(v): c for v, c in sorted(self.label_pixels.items()) if _outside(v, info)},
            "total_pixels": total,
        }


def _outside(value: int, info: DatasetInfo) -> bool:
    return not 0 <= value < info.num_classes and value != info.ignore_index


@dataclass
class Report:
    dataset: str
    root: str
    info: DatasetInfo | None = None
    splits: dict[str, SplitStats] = field(default_factory=dict)
    pairs: dict[str, Any] | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def add(self, level: str, check: str, message: str, path: Path | str = "") -> None:
        self.findings.append(Finding(level, check, message, str(path)))

    def count(self, level: str) -> int:
        return sum(f.level == level for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        info = self.info
        return {
            "ok": self.ok,
            "dataset": self.dataset,
            "root": self.root,
            "num_classes": info.num_classes if info else None,
            "class_names": list(info.class_names) if info else [],
            "ignore_index": info.ignore_index if info else None,
            "splits": {s: st.to_dict(info) for s, st in self.splits.items()} if info else {},
            "pairs": self.pairs,
            **{f"{level}s": [f.__dict__ for f in self.findings if f.level == level]
               for level in ("error", "warning", "note")},
        }

    def format(self) -> str:
        """A short human report: per split sizes, modes and class table, then the findings by check."""
        out = [f"dataset {self.dataset}" + (f" at {self.root}" if self.root else "")]
        if self.info:
            out[0] += f": {self.info.num_classes} classes, ignore index {self.info.ignore_index}"
        for split, st in self.splits.items():
            out += _format_split(split, st, self.info) if self.info else []
        if self.pairs:
            p = self.pairs
            out.append(f"pairs ({p['d2']}): {p['matched']} matched, {p['missing']} missing, "
                       f"{p['size_mismatch']} size mismatches, {p['unreadable']} unreadable")
            out += _format_registration(p.get("registration") or [])
        for level in ("error", "warning", "note"):
            found = [f for f in self.findings if f.level == level]
            if not found:
                continue
            out.append(f"{level}s ({len(found)}):")
            for check in dict.fromkeys(f.check for f in found):
                group = [f for f in found if f.check == check]
                out.append(f"  {check} ({len(group)}):")
                out += [f"    {f.message}" for f in group[:SHOWN_PER_CHECK]]
                if len(group) > SHOWN_PER_CHECK:
                    out.append(f"    ... and {len(group) - SHOWN_PER_CHECK} more (all in the JSON report)")
        errors, warnings = self.count("error"), self.count("warning")
        verdict = "OK" if self.ok else "fix the errors before training"
        out.append(f"doctor: {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}: {verdict}")
        return "\n".join(out)


def _format_split(split: str, st: SplitStats, info: DatasetInfo) -> list[str]:
    out = [f"split {split}: {st.images} images ({st.checked} checked)"]
    for name, sizes in (("image sizes", st.image_sizes), ("mask sizes", st.mask_sizes),
                        ("image modes", st.image_modes)):
        common = sizes.most_common(4)
        rest = len(sizes) - len(common)
        out.append(f"  {name}: " + ", ".join(f"{k} ({n})" for k, n in common) + (f", {rest} more" if rest else ""))
    out.append(f"  label values: {_ranges(sorted(st.label_pixels))}")
    total = max(1, sum(st.label_pixels.values()))
    out.append(f"  {'class':<20} {'pixels':>12} {'share':>8}")
    rows = [(f"{i} {name}", st.label_pixels.get(i, 0), True) for i, name in enumerate(info.class_names)]
    rows.append((f"{info.ignore_index} (ignore)", st.label_pixels.get(info.ignore_index, 0), False))
    rows += [(f"{v} (out of range)", c, False) for v, c in sorted(st.label_pixels.items()) if _outside(v, info)]
    for name, n, is_class in rows:
        flag = "  <- never seen" if is_class and n == 0 and st.checked else ""
        out.append(f"  {name:<20} {n:>12,} {n / total:>8.2%}{flag}")
    return out


def _format_registration(rows: list[dict[str, Any]]) -> list[str]:
    """One line per registered pair: offset of X1's centre, rotation, scale and quality, failures marked."""
    if not rows:
        return []
    failed = sum(not r["ok"] for r in rows)
    out = [f"registration ({rows[0]['method']}): {len(rows) - failed} of {len(rows)} pairs pass, {failed} fail "
           f"(dx, dy: where X1's centre lands in X2, pixels)"]
    for r in rows:
        quality = ", ".join(f"{k} {r[k]:.3g}" for k in ("corr", "inliers", "overlap") if k in r)
        if "truth_corner_error" in r:
            quality += f", {r['truth_corner_error']:.2f} px from the recorded truth"
        verdict = "ok" if r["ok"] else f"FAILED: {r['reason']}"
        out.append(f"  {Path(r['x2']).name}: dx {r['dx']:+.2f} dy {r['dy']:+.2f} rot {r['rotation']:+.2f} deg "
                   f"scale {r['scale']:.4f}; {quality}; {verdict}")
    return out


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 3, 7, 255] -> "0-3, 7, 255"."""
    parts: list[str] = []
    start = prev = None
    for v in [*values, None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = v
    return ", ".join(parts) or "none"


def _spread(n: int, limit: int) -> list[int]:
    """All indices (limit 0), or `limit` of them spread over the split."""
    return spread_indices(n, limit) if limit else list(range(n))


def _path_of(e: DataError) -> str:
    """Errors start with the file they are about."""
    head = str(e).split(": ", 1)[0]
    return head if "/" in head or Path(head).suffix else ""


def _decode(report: Report, path: Path) -> tuple[np.ndarray | None, str]:
    """The image as training reads it, and its stored mode; an unreadable one becomes an error finding."""
    try:
        data = read_file_bytes(path)
        header = image_header(data)
        image = decode_image(data, path)
    except DataError as e:
        report.add("error", "unreadable image", str(e), path)
        return None, ""
    if header and header.orientation != 1:
        report.add("warning", "EXIF rotation", f"{path}: {header.format} with EXIF orientation {header.orientation} "
                   "is read rotated; its mask must be drawn on the rotated image", path)
    return image, header.mode if header else "?"


def _check_sample(report: Report, st: SplitStats, info: DatasetInfo, ip: Path, mp: Path) -> tuple[int, int] | None:
    """One image and its mask: readable, same size, index mask, labels in range; returns the image size."""
    image, mode = _decode(report, ip)
    size = None
    if image is not None:
        size = image.shape[:2]
        st.image_sizes[f"{size[1]}x{size[0]}"] += 1
        st.image_modes[mode] += 1
    try:
        mask = read_mask(mp, info.palette)
    except ColourMaskError as e:
        report.add("error", "colour mask", str(e), mp)
        return size
    except DataError as e:
        report.add("error", "unreadable mask", str(e), mp)
        return size
    st.mask_sizes[f"{mask.shape[1]}x{mask.shape[0]}"] += 1
    if mp.suffix.lower() in (".jpg", ".jpeg"):
        report.add("warning", "lossy mask", f"{mp}: mask is a JPEG, whose compression changes labels along class "
                   "edges; save masks as PNG", mp)
    if size is not None and size != mask.shape:
        report.add("error", "size mismatch", f"{mp}: mask is {mask.shape[1]}x{mask.shape[0]} but image {ip.name} "
                   f"is {size[1]}x{size[0]}; masks must match their image's size", mp)
    bad = [v for v in st.add_labels(mask) if _outside(v, info)]
    if bad:
        report.add("error", "labels out of range", f"{mp}: label values {bad[:8]} outside 0..{info.num_classes - 1} "
                   f"and not the ignore index {info.ignore_index}; fix the mask or set data.num_classes/"
                   "data.ignore_index", mp)
    return size


Sizes = dict[str, tuple[int, int]]  # stem -> (height, width) of the images read


def _check_split(report: Report, cfg: RunConfig, split: str, limit: int) -> tuple[SegmentationSource, Sizes] | None:
    missing: list[DataError] = []
    try:
        source = build_source(cfg.data, split, missing)
    except DataError as e:
        report.add("error", "dataset", str(e), _path_of(e))
        return None
    for e in missing:
        report.add("error", "image without mask", str(e), _path_of(e))
    info = report.info = report.info or source.info
    st = report.splits[split] = SplitStats(images=len(source) + len(missing))
    sizes: Sizes = {}
    for i in progress_bar(_spread(len(source), limit), desc=f"doctor {split}", dynamic_ncols=True, mininterval=0.5):
        ip, mp = source.image_path(i), source.mask_path(i)
        st.checked += 1
        if ip is None or mp is None:  # generated data: nothing on disk to check but the labels
            image, mask = source.load(i)
            st.image_sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
            st.mask_sizes[f"{mask.shape[1]}x{mask.shape[0]}"] += 1
            st.image_modes["RGB"] += 1
            st.add_labels(mask)
            continue
        size = _check_sample(report, st, info, ip, mp)
        if size is not None:
            sizes[source.stem(i)] = size
    _split_findings(report, split, st, info, source)
    return source, sizes


def _split_findings(report: Report, split: str, st: SplitStats, info: DatasetInfo, source: SegmentationSource) -> None:
    """Findings about the split as a whole: unseen classes, image modes, duplicate stems, masks without image."""
    unseen = [f"{i} {name!r}" for i, name in enumerate(info.class_names) if not st.label_pixels.get(i)]
    if unseen and st.checked:
        report.add("warning", "class never seen", f"{split}: no pixel of class {', '.join(unseen)} in the "
                   f"{st.checked} masks checked; check data.num_classes and the labels")
    for mode, n in st.image_modes.items():
        if mode not in ("RGB", "?"):
            kind = f" ({MODE_NOTES[mode]})" if mode in MODE_NOTES else ""
            report.add("note", "image mode", f"{split}: {n} image{'s' * (n != 1)} in mode {mode}{kind}; "
                       "converted to RGB when read")
    stems = Counter(source.stem(i) for i in range(len(source)))
    for stem, n in stems.items():
        if n > 1:
            report.add("warning", "duplicate stem", f"{split}: {n} images share the stem {stem!r}; masks and D2 "
                       "pairs are matched by stem, so rename all but one")
    if report.dataset in ("camvid", "folder"):
        mask_dirs = {p.parent for i in range(len(source)) if (p := source.mask_path(i)) is not None}
        for d in sorted(mask_dirs):
            for p in sorted(d.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in stems:
                    report.add("warning", "mask without image", f"{p}: mask has no image with its stem; it is "
                               "never used", p)


def _check_pairs(
    report: Report, cfg: RunConfig, d1: dict[str, tuple[SegmentationSource, Sizes]], d2_dir: str, limit: int
) -> None:
    """D2 images matched to D1 by stem, readable, and of their D1 image's size (what adapt will need)."""
    from segadapt.data.d2 import d2_source

    d2 = Path(d2_dir)
    d2_cfg = copy.deepcopy(cfg)
    d2_cfg.shift.d2_dir, d2_cfg.shift.pairs_csv = d2_dir, ""
    stats = {"d2": str(d2), "matched": 0, "missing": 0, "extra": 0, "size_mismatch": 0, "unreadable": 0}
    report.pairs = stats
    plain = [s for s in d1 if not (d2 / s).is_dir()]
    # a plain folder pairs with the train split (what adapt uses), a `segadapt shift` output split by split
    jobs = [s for s in d1 if (d2 / s).is_dir()]
    if plain:
        jobs.append(cfg.data.train_split if cfg.data.train_split in plain else plain[0])
    for split in jobs:
        try:
            source2 = d2_source(d2_cfg, split)
        except DataError as e:
            report.add("error", "pairs", str(e), _path_of(e))
            continue
        index = {source2.stem(j): j for j in range(len(source2))}
        source1, sizes = d1[split]
        to_register: list[tuple[SegmentationSource, int, SegmentationSource, int]] = []
        ids = _spread(len(source1), limit)
        for i in progress_bar(ids, desc=f"doctor pairs {split}", dynamic_ncols=True, mininterval=0.5):
            stem = source1.stem(i)
            if stem not in index:
                stats["missing"] += 1
                where = source1.image_path(i) or stem
                report.add("error", "missing pair", f"{where}: no D2 image with stem {stem!r} in {d2}; pairs are "
                           "matched by file stem", where)
                continue
            stats["matched"] += 1
            path2 = source2.image_path(index[stem])
            if path2 is None:
                continue
            image2, _ = _decode(report, path2)
            if image2 is None:
                stats["unreadable"] += 1
                continue
            to_register.append((source1, i, source2, index[stem]))
            if stem in sizes and image2.shape[:2] != sizes[stem] and cfg.adapt.align == "none":
                stats["size_mismatch"] += 1
                h, w = sizes[stem]
                report.add("error", "pair size mismatch", f"{path2}: size {image2.shape[1]}x{image2.shape[0]} "
                           f"differs from its pair {source1.image_path(i)} ({w}x{h}); paired images must show the "
                           "same scene at the same size", path2)
        _register(report, cfg, to_register, _truths(d2, split))
        if not limit:
            d1_stems = {source1.stem(i) for i in range(len(source1))}
            extra = [s for s in index if s not in d1_stems]
            stats["extra"] += len(extra)
            if extra:
                report.add("note", "unpaired D2 images", f"{d2}: {len(extra)} D2 images have no D1 image in split "
                           f"{split} (e.g. {extra[0]!r}); adapt ignores them")


def _check_pairs_csv(report: Report, cfg: RunConfig, csv_path: str, limit: int) -> None:
    """Every row's two files readable and of one size."""
    from segadapt.data.pairs import csv_pairs

    stats = {"d2": str(csv_path), "matched": 0, "missing": 0, "extra": 0, "size_mismatch": 0, "unreadable": 0}
    report.pairs = stats
    try:
        one, two = csv_pairs(Path(csv_path))
    except DataError as e:
        report.add("error", "pairs", str(e), _path_of(e))
        return
    to_register: list[tuple[SegmentationSource, int, SegmentationSource, int]] = []
    for k in progress_bar(_spread(len(one), limit), desc="doctor pairs", dynamic_ncols=True, mininterval=0.5):
        p1, p2 = one.image_path(k), two.image_path(k)
        x1, _ = _decode(report, p1)
        x2, _ = _decode(report, p2)
        if x1 is None or x2 is None:
            stats["unreadable"] += 1
            continue
        stats["matched"] += 1
        if cfg.adapt.align != "none":
            to_register.append((one, k, two, k))
        elif x1.shape[:2] != x2.shape[:2]:
            stats["size_mismatch"] += 1
            report.add("error", "pair size mismatch", f"{p2}: size {x2.shape[1]}x{x2.shape[0]} differs from its pair "
                       f"{p1} ({x1.shape[1]}x{x1.shape[0]}) (row {k + 1} of {csv_path}); paired images must be the "
                       "same size, or registered (--align ecc)", p2)
    _register(report, cfg, to_register)


def _truths(d2: Path, split: str) -> dict[str, np.ndarray]:
    """Ground-truth transforms a `segadapt shift` with misalign recorded for the split ({} when none)."""
    from segadapt.data.shifted import recorded_transforms

    try:
        return recorded_transforms(d2, split) if (d2 / f".segadapt-shift-{split}.json").is_file() else {}
    except DataError:
        return {}


def _register(report: Report, cfg: RunConfig, pairs: list[tuple[SegmentationSource, int, SegmentationSource, int]],
              truths: dict[str, np.ndarray] | None = None) -> None:
    """With adapt.align set: register each pair as adapt would (same settings, same cache when
    adapt.align_cache is set) and report its offset and quality; a failure is a warning (adapt skips it), a
    failure of every pair checked an error (adapt refuses such pairs: nothing would be left to train on).
    Where the D2 was made by misalign, the error against the recorded truth is reported too."""
    if cfg.adapt.align == "none" or not pairs:
        return
    from segadapt.data.align import corner_error, describe
    from segadapt.data.align_cache import refuse_none_left, register_pairs, settings_of

    settings = settings_of(cfg.adapt, cfg.data.base_size)
    cache = Path(cfg.adapt.align_cache) if cfg.adapt.align_cache else None
    assert report.pairs is not None
    rows = report.pairs.setdefault("registration", [])
    failures: list[dict[str, str]] = []
    for s1, i, s2, j in progress_bar(pairs, desc=f"doctor register ({settings.method})", dynamic_ncols=True,
                             mininterval=0.5):
        reg = register_pairs(s1, s2, [(i, j)], settings, cache, progress=False)[0]
        motion = describe(reg.transform, reg.size1)
        truth = (truths or {}).get(s1.stem(i))
        rows.append({"x1": s1.name(i), "x2": s2.name(j), "ok": reg.ok, "method": settings.method,
                     **{k: round(v, 4) for k, v in motion.items()}, **{k: round(v, 4) for k, v in reg.quality.items()},
                     **({"truth_corner_error": round(corner_error(reg.transform, truth, *reg.size1), 4)}
                        if truth is not None else {}),
                     "reason": reg.reason, "seconds": reg.seconds})
        if not reg.ok:
            failures.append({"x2": s2.name(j), "reason": reg.reason})
            report.add("warning", "registration failed", f"{s2.name(j)}: registration ({settings.method}) onto "
                       f"{s1.name(i)} failed ({reg.reason}); adapt skips this pair", s2.name(j))
    try:  # adapt's own refusal, in its words
        refuse_none_left({"ok": len(pairs) - len(failures), "failures": failures}, settings.method)
    except DataError as e:
        report.add("error", "pairs unusable", f"{e} (all {len(pairs)} pairs checked)",
                   failures[0]["x2"])


def guess_dataset(root: Path) -> str:
    """The dataset kind a directory's layout implies: VOC's JPEGImages/, CamVid's <split>/labels/, or the
    generic <split>/masks/ folder layout. Lets `segadapt doctor PATH` work before any config exists."""
    if (root / "JPEGImages").is_dir():
        return "voc"
    if any(p.is_dir() for p in root.glob("*/labels")):
        return "camvid"
    if any(p.is_dir() for p in root.glob("*/masks")):
        return "folder"
    raise ConfigError(
        f"{root}: no known dataset layout (JPEGImages/, <split>/labels/ or <split>/masks/); "
        "name it with --dataset camvid|voc|folder"
    )


def diagnose(
    cfg: RunConfig, splits: list[str] | None = None, *, d2_dir: str = "", pairs_csv: str = "", limit: int = 0
) -> Report:
    """Check the configured dataset's splits (default: train and val), and D2 pairs if given."""
    if limit < 0:
        raise ConfigError(f"--limit {limit}: give a number of images per split >= 1, or 0 for all")
    splits = list(dict.fromkeys(splits or [cfg.data.train_split, cfg.data.val_split]))
    report = Report(cfg.data.dataset, cfg.data.root if cfg.data.dataset != "synthetic" else "")
    sources = {}
    for split in splits:
        checked = _check_split(report, cfg, split, limit)
        if checked is not None:
            sources[split] = checked
    if d2_dir and sources:
        _check_pairs(report, cfg, sources, d2_dir, limit)
    if pairs_csv:
        _check_pairs_csv(report, cfg, pairs_csv, limit)
    return report
