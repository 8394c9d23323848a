"""`segadapt doctor` finds each injected problem, names its file, and passes clean data."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from segadapt.cli import main
from segadapt.config import RunConfig
from segadapt.data.palettes import CAMVID
from segadapt.doctor import Report, diagnose
from tiny import png_declaring

FOLDER = ["--dataset", "folder", "--set", "data.num_classes=4"]


def write_dataset(root: Path, n: int = 4, size: tuple[int, int] = (12, 16)) -> None:
    """Train and val splits; every mask holds classes 0..3 and some ignore (255) pixels."""
    h, w = size
    labels = np.resize(np.array([0, 1, 2, 3, 255], np.uint8), (h, w))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(root / split / "images" / f"s{k}.png")
            Image.fromarray(labels).save(root / split / "masks" / f"s{k}.png")


def cfg_for(root: Path, num_classes: int = 4) -> RunConfig:
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.root, cfg.data.num_classes = "folder", str(root), num_classes
    return cfg


def checks(report: Report, level: str) -> dict[str, list[str]]:
    """check name -> messages, for one level."""
    out: dict[str, list[str]] = {}
    for f in report.findings:
        if f.level == level:
            out.setdefault(f.check, []).append(f.message)
    return out


def test_clean_folder_passes_with_exact_counts(tmp_path, capsys):
    write_dataset(tmp_path)
    report = diagnose(cfg_for(tmp_path))
    assert report.ok and not report.findings
    st = report.to_dict()["splits"]["train"]
    assert st["images"] == st["checked"] == 4 and st["image_sizes"] == {"16x12": 4} and st["image_modes"] == {"RGB": 4}
    assert st["label_values"] == [0, 1, 2, 3, 255]
    per_mask = np.bincount(np.resize(np.array([0, 1, 2, 3, 4]), 12 * 16))  # 255 counted at position 4
    assert st["class_pixels"] == {f"class_{i}": 4 * int(per_mask[i]) for i in range(4)}
    assert st["ignore_pixels"] == 4 * int(per_mask[4]) and st["out_of_range_pixels"] == {}
    out_json = tmp_path / "report.json"
    assert main(["doctor", "--root", str(tmp_path), *FOLDER, "--out", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "split train: 4 images" in text and "class_3" in text and "doctor: 0 errors, 0 warnings: OK" in text
    assert json.loads(out_json.read_text())["ok"] is True


def test_each_injected_problem_is_found(tmp_path, capsys):
    write_dataset(tmp_path, n=10)
    images, masks = tmp_path / "train" / "images", tmp_path / "train" / "masks"
    (images / "s0.png").write_bytes((images / "s0.png").read_bytes()[:40])  # truncated image
    Image.new("L", (9, 9)).save(masks / "s1.png")  # mask of another size
    Image.fromarray(np.full((12, 16), 7, np.uint8)).save(masks / "s2.png")  # label out of range
    colours = np.array(CAMVID[:3], np.uint8)[np.resize(np.arange(3), (12, 16))]
    Image.fromarray(colours).save(masks / "s3.png")  # RGB colour-coded mask
    Image.new("L", (16, 12), 100).save(images / "s4.png")  # grey image: a note, converted
    Image.new("RGBA", (16, 12)).save(images / "s5.png")  # RGBA image: a note, converted
    (masks / "s6.png").unlink()  # image without mask
    Image.new("L", (16, 12)).save(masks / "orphan.png")  # mask without image
    (masks / "s7.png").unlink()
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(masks / "s7.jpg")  # lossy mask
    (masks / "s8.png").write_bytes(b"")  # unreadable mask

    report = diagnose(cfg_for(tmp_path, num_classes=5), ["train"])  # class 4 is never seen
    errors, warnings, notes = checks(report, "error"), checks(report, "warning"), checks(report, "note")
    assert not report.ok
    expected_errors = {
        "unreadable image": "images/s0.png", "size mismatch": "masks/s1.png", "labels out of range": "masks/s2.png",
        "colour mask": "masks/s3.png", "image without mask": "images/s6.png", "unreadable mask": "masks/s8.png",
    }
    assert set(errors) == set(expected_errors)
    for check, path in expected_errors.items():
        assert len(errors[check]) == 1 and path in errors[check][0], (check, errors[check])
    assert "[7]" in errors["labels out of range"][0]
    assert set(warnings) == {"class never seen", "mask without image", "lossy mask"}
    assert "4 'class_4'" in warnings["class never seen"][0] and "orphan.png" in warnings["mask without image"][0]
    assert any("1 image in mode L (grey); converted to RGB" in m for m in notes["image mode"])
    assert any("1 image in mode RGBA (alpha dropped)" in m for m in notes["image mode"])
    st = report.to_dict()["splits"]["train"]
    assert st["out_of_range_pixels"] == {"7": 12 * 16} and st["images"] == 10 and st["checked"] == 9

    assert main(["doctor", "--root", str(tmp_path), *FOLDER, "--set", "data.num_classes=5", "--split", "train"]) == 1
    text = capsys.readouterr().out
    assert "errors (6):" in text and "colour mask (1):" in text and "fix the errors before training" in text
    assert "<- never seen" in text


def test_colour_mask_in_dataset_palette_gets_a_precise_hint(tmp_path):
    write_dataset(tmp_path, n=1)
    from segadapt.data.palettes import generic

    colours = np.array(generic(4), np.uint8)[np.resize(np.arange(4), (12, 16))]
    Image.fromarray(colours).save(tmp_path / "train" / "masks" / "s0.png")
    [msg] = checks(diagnose(cfg_for(tmp_path), ["train"]), "error")["colour mask"]
    assert "its colours are the dataset's class palette: map each colour to its class index" in msg


def test_warnings_alone_do_not_fail(tmp_path):
    write_dataset(tmp_path)
    Image.new("L", (16, 12)).save(tmp_path / "train" / "masks" / "orphan.png")
    assert main(["doctor", "--root", str(tmp_path), *FOLDER, "--set", "data.num_classes=6"]) == 0


def test_missing_split_and_bad_root_are_errors(tmp_path, capsys):
    write_dataset(tmp_path)
    shutil.rmtree(tmp_path / "val")
    report = diagnose(cfg_for(tmp_path))
    assert "train" in report.splits and "val" not in report.splits
    assert "val/images: image directory not found" in checks(report, "error")["dataset"][0]
    assert main(["doctor", "--root", str(tmp_path / "nowhere"), *FOLDER]) == 1
    assert "dataset root directory not found" in capsys.readouterr().out


def test_pairs_from_a_d2_folder(tmp_path):
    write_dataset(tmp_path / "d1")
    d2 = tmp_path / "d2"
    shutil.copytree(tmp_path / "d1" / "train" / "images", d2)
    assert diagnose(cfg_for(tmp_path / "d1"), d2_dir=str(d2)).ok

    (d2 / "s0.png").unlink()  # missing pair
    Image.new("RGB", (20, 10)).save(d2 / "s1.png")  # other size
    (d2 / "s2.png").write_bytes(b"\x89PNG broken")  # unreadable
    Image.new("RGB", (16, 12)).save(d2 / "extra.png")  # no D1 image: a note
    report = diagnose(cfg_for(tmp_path / "d1"), d2_dir=str(d2))
    errors = checks(report, "error")
    assert "d1/train/images/s0.png: no D2 image with stem 's0'" in errors["missing pair"][0]
    assert "d2/s1.png: size 20x10 differs from its pair" in errors["pair size mismatch"][0]
    assert "d2/s2.png: unreadable or corrupt image" in errors["unreadable image"][0]
    assert "1 D2 images have no D1 image" in checks(report, "note")["unpaired D2 images"][0]
    assert report.pairs == {"d2": str(d2), "matched": 3, "missing": 1, "extra": 1, "size_mismatch": 1,
                            "unreadable": 1}


def test_pairs_csv(tmp_path, capsys):
    write_dataset(tmp_path / "d1", n=2)
    a, b = tmp_path / "d1" / "train" / "images" / "s0.png", tmp_path / "b.png"
    Image.new("RGB", (16, 12)).save(b)
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"x1,x2\n{a},{b}\n")
    args = ["doctor", "--root", str(tmp_path / "d1"), *FOLDER, "--split", "train", "--pairs", str(csv)]
    assert main(args) == 0
    Image.new("RGB", (8, 8)).save(b)
    assert main(args) == 1
    assert "row 1 of" in capsys.readouterr().out


def test_camvid_sample_val_is_clean(camvid_root, tmp_path, capsys):
    out = tmp_path / "camvid.json"
    args = ["doctor", "--dataset", "camvid", "--root", str(camvid_root), "--split", "val", "--limit", "12"]
    assert main([*args, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    val = r["splits"]["val"]
    assert r["ok"] and r["num_classes"] == 11 and r["ignore_index"] == 11 and not r["errors"]
    assert val["checked"] == 12 and val["images"] == 101 and val["image_sizes"] == {"480x360": 12}
    assert set(val["label_values"]) <= set(range(12)) and val["out_of_range_pixels"] == {}
    assert sum(val["class_pixels"].values()) + val["ignore_pixels"] == 12 * 480 * 360
    assert "3 road" in capsys.readouterr().out


def test_camvid_copy_with_injected_problems(camvid_copy, tmp_path):
    """Three real CamVid frames; one label colour-coded with CamVid's palette, one resized, one image cut."""
    root = tmp_path / "camvid"
    stems = camvid_copy(root, 4)
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.root = "camvid", str(root)
    assert diagnose(cfg, ["val"]).ok

    labels = root / "val" / "labels"
    index = np.array(Image.open(labels / f"{stems[0]}.png"))
    palette = np.array([*CAMVID, (0, 0, 0)], np.uint8)  # the void label (11) is black in CamVid's colour files
    Image.fromarray(palette[index]).save(labels / f"{stems[0]}.png")
    Image.fromarray(index).resize((240, 180), Image.NEAREST).save(labels / f"{stems[1]}.png")
    jpg = root / "val" / "images" / f"{stems[2]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 3])
    errors = checks(diagnose(cfg, ["val"]), "error")
    assert set(errors) == {"colour mask", "size mismatch", "unreadable image"}
    assert stems[0] in errors["colour mask"][0] and stems[1] in errors["size mismatch"][0]
    assert f"{stems[2]}.jpg: unreadable or corrupt image" in errors["unreadable image"][0]


def test_synthetic_dataset_needs_no_files(capsys):
    args = ["doctor", "--set", "data.synthetic_train=4", "--set", "data.synthetic_val=2",
            "--set", "data.synthetic_size=[24,32]"]
    assert main(args) == 0
    assert "split train: 4 images" in capsys.readouterr().out


def test_report_is_valid_json_even_when_empty():
    report = Report("folder", "/nowhere")
    report.add("error", "dataset", "x: not found", "x")
    assert json.loads(json.dumps(report.to_dict()))["errors"][0]["path"] == "x"
    assert "doctor: 1 error" in report.format()


def test_positional_directory_guesses_the_layout(camvid_root, tmp_path, capsys):
    """`segadapt doctor PATH` needs no --dataset: CamVid's <split>/labels/ layout is recognised."""
    assert main(["doctor", str(camvid_root), "--split", "val", "--limit", "2"]) == 0
    assert "sky" in capsys.readouterr().out  # CamVid's class names, so the camvid reader was chosen
    assert main(["doctor", str(tmp_path)]) != 0
    assert "no known dataset layout" in capsys.readouterr().err


def test_exif_orientation_is_reported_for_png_too(tmp_path):
    """OpenCV turns PNG (not only JPEG) images by their EXIF orientation, while masks are read as stored."""
    write_dataset(tmp_path, n=2)
    path = tmp_path / "train" / "images" / "s0.png"
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    Image.open(path).convert("RGB").save(path, exif=exif)
    report = diagnose(cfg_for(tmp_path), ["train"])
    rotation = checks(report, "warning").get("EXIF rotation", [])
    assert len(rotation) == 1 and "s0.png" in rotation[0] and "PNG with EXIF orientation 3" in rotation[0]


def test_image_declaring_gigapixels_is_one_finding_not_a_traceback(tmp_path):
    """A 69-byte PNG claiming 60000x60000 used to reach OpenCV's size assertion and crash doctor."""
    write_dataset(tmp_path, n=2)
    (tmp_path / "train" / "images" / "s0.png").write_bytes(png_declaring(60000, 60000))
    cmd = [sys.executable, "-m", "segadapt", "doctor", "--root", str(tmp_path), *FOLDER, "--split", "train"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "error" not in r.stderr.lower(), r.stderr[-2000:]
    [line] = [line for line in r.stdout.splitlines() if "s0.png" in line]
    assert "image too large to decode (its header declares over" in line and "cut it into tiles" in line


def test_pairs_none_of_which_registers_are_unusable(tmp_path, capsys):
    """With --align, D2 images that register onto none of their D1 images fail the check (adapt would refuse
    them all), instead of four warnings and "OK"."""
    write_dataset(tmp_path / "d1", size=(48, 64))
    d2 = tmp_path / "d2"
    d2.mkdir()
    for k in range(4):
        Image.new("RGB", (64, 48), (90, 90, 90)).save(d2 / f"s{k}.png")  # flat grey: nothing to register on
    code = main(["doctor", "--root", str(tmp_path / "d1"), *FOLDER, "--split", "train", "--d2-dir", str(d2),
                 "--align", "ecc", "--out", str(tmp_path / "report.json")])
    text = capsys.readouterr().out
    assert code == 1 and "pairs unusable" in text and "failed on every pair" in text and ": OK" not in text
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is False
