"""Every user string that becomes a path, given hostile values: nothing outside the folders the command owns
is created, changed or deleted, and a refusal is one line (no traceback).

The tree under test: <tmp>/root/work is the working directory, <tmp>/root/sentinel holds files that must
stay byte-identical, <tmp>/root/work/out is the output folder a command is given when the case is not about
its output. A case about an output path owns what that path resolves to (`..` asks for the parent: writing
there is what the user asked, deleting anything there is not).
"""

import hashlib
import os
from pathlib import Path

import pytest

from segadapt.cli import main

HOSTILE = {"dotdot": "..", "absolute": "{tmp}/abs", "climb": "a/../../b", "nul": "nul\x00byte", "long": "x" * 300}
TINY = ["--width", "0.0625", "--iterations", "2", "--batch-size", "2", "--threads", "1",
        "--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
        "--set", "data.synthetic_train=6", "--set", "data.synthetic_val=2"]
SWEEP = [*TINY, "--set", "experiment.iterations=1", "--set", 'experiment.layer_presets=["pool5"]',
         "--set", 'experiment.baselines=["B0"]', "--set", "experiment.figure_images=0"]
DATA = ["--set", "data.synthetic_val=2", "--set", "data.synthetic_size=[32, 48]"]
OUT = "out"  # relative to the working directory

# case -> (argv with {x} for the hostile value and {h1} for a trained model, whether {x} is an output path)
CASES = {
    "train --out": (["train", *TINY, "--out", "{x}"], True),
    "train out_dir": (["train", *TINY, "--set", 'out_dir="{x}"'], True),
    "train name": (["train", *TINY, "--set", 'name="{x}"', "--set", f'out_dir="{OUT}"'], False),
    "train --root": (["train", *TINY, "--dataset", "camvid", "--root", "{x}", "--out", OUT], False),
    "train --init-weights": (["train", *TINY, "--init-weights", "{x}", "--out", OUT], False),
    "train --config": (["train", *TINY, "--config", "{x}", "--out", OUT], False),
    "adapt --out": (["adapt", "--h1", "{h1}", "--iterations", "1", "--set", "adapt.holdout=0", "--out", "{x}"], True),
    "adapt --h1": (["adapt", "--h1", "{x}", "--out", OUT], False),
    "adapt --d2-dir": (["adapt", "--h1", "{h1}", "--d2-dir", "{x}", "--out", OUT], False),
    "adapt --pairs": (["adapt", "--h1", "{h1}", "--pairs", "{x}", "--out", OUT], False),
    "adapt teacher cache": (["adapt", "--h1", "{h1}", "--iterations", "1", "--set", "adapt.holdout=0", "--set",
                             'adapt.teacher_cache="{x}"', "--out", OUT], True),
    "experiment --out": (["experiment", *SWEEP, "--out", "{x}"], True),
    "experiment filter label": (["experiment", *SWEEP, "--set", "shift.d2_dir={d2}", "--set",
                                 'experiment.filters=["{x}"]', "--out", OUT], False),
    "experiment preset": (["experiment", *SWEEP, "--set", 'experiment.layer_presets=["{x}"]', "--out", OUT], False),
    "shift --out": (["shift", "--filter", "ripple", "--split", "val", *DATA, "--out", "{x}"], True),
    "evaluate --out": (["evaluate", "--model", "{h1}", "--out", "{x}"], True),
    "evaluate --model": (["evaluate", "--model", "{x}", "--out", f"{OUT}/e.json"], False),
    "distortion --out": (["distortion", "--model", "{h1}", "--filter", "ripple", "--out", "{x}"], True),
    "doctor --out": (["doctor", "synthetic", *DATA, "--split", "val", "--out", "{x}"], True),
    "viz features --out": (["viz", "features", "--h1", "{h1}", "--h2", "{h1}", "--filter", "ripple", "--images", "1",
                            "--layers", "pool1", "--out", "{x}"], True),
    "viz reconstruct --image": (["viz", "reconstruct", "--model", "{h1}", "--image", "{x}", "--steps", "1",
                                 "--out", OUT], False),
    "viz overlays --out": (["viz", "overlays", "--models", "H1={h1}", "--images", "1", "--out", "{x}"], True),
    "viz report": (["viz", "report", "{x}"], False),
}


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (and "dir" for every folder) under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def h1(tmp_path_factory):
    run = tmp_path_factory.mktemp("h1") / "run"
    assert main(["train", "--preset", "synthetic", *TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def d2(tmp_path_factory):
    out = tmp_path_factory.mktemp("d2") / "d2"
    for split in ("train", "val"):
        assert main(["shift", "--filter", "ripple", "--split", split, *TINY[-8:], "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("value", list(HOSTILE))
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_names_and_paths_stay_inside_what_the_command_owns(case, value, tmp_path, h1, d2, monkeypatch, capsys):
    root = tmp_path / "root"
    work, sentinel = root / "work", root / "sentinel"
    (sentinel / "deep").mkdir(parents=True)
    (sentinel / "keep.txt").write_text("precious")
    (sentinel / "deep" / "model.safetensors").write_bytes(b"\x00" * 64)
    work.mkdir()
    monkeypatch.chdir(work)
    template, is_output = CASES[case]
    x = HOSTILE[value].format(tmp=root)
    argv = [a.replace("{x}", x).replace("{h1}", str(h1)).replace("{d2}", str(d2)) for a in template]
    before = snapshot(root)

    code = main(argv)
    err = capsys.readouterr().err

    assert "Traceback" not in err
    if code:
        errors = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("segadapt:")]
        assert code in (1, 2) and len(errors) == 1, err[-1500:]
    after = snapshot(root)
    owned = [work / OUT]
    if is_output and "\x00" not in x and len(x) < 255:
        owned.append(Path(os.path.normpath(work / x)))
    owned_rel = [os.path.relpath(p, root) for p in owned]

    def inside_owned(rel: str) -> bool:
        return any(rel == o or rel.startswith(o + os.sep) or o == "." for o in owned_rel)

    gone_or_changed = [k for k, v in before.items() if after.get(k) != v]
    assert not gone_or_changed, f"{case} with {value!r}: changed or deleted {gone_or_changed}"
    created = [k for k in after if k not in before and not inside_owned(k)]
    assert not created, f"{case} with {value!r}: created outside its folders: {created}"
