"""Every code block of the guides, tutorials and getting-started pages runs, in page order, in one scratch folder
per page, so a page whose commands stop working fails here instead of misleading a reader.

Rules a page follows (docs/development/tests.md says the same to writers):
- ```bash blocks: each `segadapt ...` line runs through segadapt.cli.main in this process (exit code 0 expected);
  any other line runs in bash. ```python blocks run in one namespace per page.
- A block whose title is a file name (title="mynets.py", title="h1.toml": no spaces) is a file the page asks the
  reader to write: it is written, not run. ```toml and ```csv blocks must be such files.
- `VAR=value segadapt ...` sets VAR for that command; the page's folder is on sys.path, as for a Python started
  there (so `PYTHONPATH=. segadapt adapt --h1 mynets:build` finds the page's mynets.py).
- A block that cannot run here says why, visibly: its title starts "Not run by the tests".
- A page may shrink its commands in an admonition titled "Tiny settings in the tests": each line
  "`segadapt CMD` gets `FLAGS`" appends FLAGS to every `segadapt CMD` line; a line "needs the CamVid sample" makes
  the page run on a small copy of it linked as ./camvid (skipped when the sample is absent); a line "needs the
  Python packages `a`, `b`" skips the page without them (the optional extras).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
RUN_DIRS = ("getting-started", "guides", "tutorials")
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```\s*$", re.M | re.S)
NOT_RUN = "Not run by the tests"


def pages() -> list[Path]:
    return sorted(p for d in RUN_DIRS for p in (DOCS / d).glob("*.md"))


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, title, body) of each fenced block, bodies dedented by the fence's indent."""
    out = []
    for m in FENCE.finditer(text):
        info = m.group("info").strip()
        lang = info.split()[0] if info else ""
        title = re.search(r'title="([^"]*)"', info)
        indent = len(m.group("indent"))
        body = "\n".join(line[indent:] for line in m.group("body").splitlines())
        out.append((lang, title.group(1) if title else "", body))
    return out


def is_file(title: str) -> bool:
    return bool(title) and " " not in title


def tiny_settings(text: str) -> tuple[dict[str, list[str]], bool]:
    """The page's "Tiny settings in the tests" admonition: extra flags per command, and whether it needs CamVid."""
    m = re.search(r'^!!! \w+ "Tiny settings in the tests"\n((?: {4}.*\n|\n)+)', text, re.M)
    if not m:
        return {}, False
    flags = {cmd: shlex.split(extra) for cmd, extra in re.findall(r"`segadapt ([\w ]+?)` gets `([^`]*)`", m.group(1))}
    return flags, "needs the CamVid sample" in m.group(1)


def needed_packages(text: str) -> list[str]:
    """The packages named on the tiny-settings admonition's "needs the Python packages" line."""
    m = re.search(r"needs the Python packages ([^\n]*)", text)
    return re.findall(r"`([\w.]+)`", m.group(1)) if m else []


def commands(body: str) -> list[str]:
    """Shell lines, continuations joined, comments and blanks dropped."""
    out, current = [], ""
    for line in body.splitlines():
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        stripped = current.split(" # ")[0].strip() if not current.lstrip().startswith("#") else ""
        if stripped:
            out.append(stripped)
        current = ""
    return out


def run_segadapt(line: str, tiny: dict[str, list[str]]) -> None:
    from segadapt.cli import main

    words = shlex.split(line)
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[0] == "segadapt", line
    argv = words[1:]
    for cmd, extra in sorted(tiny.items(), key=lambda kv: -len(kv[0])):  # `viz features` before `viz`
        words = cmd.split()
        if argv[:len(words)] == words:
            argv = argv + extra
            break
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code = main(argv)
    except SystemExit as e:  # --version, --help: argparse exits on its own
        code = e.code or 0
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert code == 0, f"`{line}` (+ tiny settings) failed"


def small_camvid(dst: Path, source: Path, n_train: int = 6, n_val: int = 3) -> None:
    """The first frames of each split, in CamVid's layout: a page's commands run on it in seconds."""
    for split, n in (("train", n_train), ("val", n_val)):
        stems = sorted(p.stem for p in (source / split / "images").glob("*.jpg"))[:n]
        for sub, ext in (("images", ".jpg"), ("labels", ".png")):
            (dst / split / sub).mkdir(parents=True)
            for s in stems:
                shutil.copy(source / split / sub / f"{s}{ext}", dst / split / sub / f"{s}{ext}")


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = page.read_text()
    tiny, needs_camvid = tiny_settings(text)
    for package in needed_packages(text):
        pytest.importorskip(package, reason=f"{page.name} needs {package} (an optional extra; the test extra has it)")
    found = blocks(text)
    for lang, title, _ in found:
        assert lang in ("bash", "python", "toml", "csv", "text"), f"{page.name}: a ```{lang} block; see this file"
        if lang in ("toml", "csv"):
            assert is_file(title), f"{page.name}: a ```{lang} block without title=\"FILE\": the tests write it"
    runnable = [b for b in found if b[0] in ("bash", "python") and not b[1].startswith(NOT_RUN)
                and not is_file(b[1])]
    if not runnable:
        pytest.skip(f"{page.name}: no code block to run (every one is marked '{NOT_RUN}')")
    if needs_camvid:
        import _paths

        source = _paths.camvid_root()
        if not (source / "train" / "images").is_dir():
            pytest.skip(f"CamVid sample not found at {source}; set {_paths.CAMVID_ENV}")
        small_camvid(tmp_path / "camvid", source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for lang, title, body in found:
        if title.startswith(NOT_RUN) or lang == "text":
            continue
        if is_file(title):
            (tmp_path / title).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / title).write_text(body + "\n")
        elif lang == "python":
            exec(compile(body, f"{page.name}:python", "exec"), namespace)  # noqa: S102 (the page's own code)
        else:
            for line in commands(body):
                if re.match(r"^(\w+=\S* )*segadapt ", line):
                    run_segadapt(line, tiny)
                else:
                    done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=os.environ.copy(),
                                          capture_output=True, text=True, timeout=120)
                    assert done.returncode == 0, f"{page.name}: `{line}` failed: {done.stderr[-500:]}"


def test_every_block_is_run_or_says_why_not() -> None:
    """A block the runner would skip silently (another language, a not-run title without a reason) is refused."""
    for page in pages():
        for lang, title, _ in blocks(page.read_text()):
            assert lang in ("bash", "python", "toml", "csv", "text"), f"{page.name}: ```{lang}"
            if title.startswith(NOT_RUN):
                assert len(title) > len(NOT_RUN) + 5, f"{page.name}: '{title}' gives no reason"


def test_the_runner_catches_a_failing_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner itself: a page line that fails fails the test (a check that the check bites)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="failed"):
        run_segadapt("segadapt evaluate --model no-such-run", {})
    lines = commands("segadapt a \\\n  --b 1  # why\n# only a comment\n\nls")
    assert [shlex.split(line) for line in lines] == [["segadapt", "a", "--b", "1"], ["ls"]]
    tiny, camvid = tiny_settings('!!! example "Tiny settings in the tests"\n    - `segadapt viz features` gets '
                                 '`--images 1`\n    - needs the CamVid sample\n')
    assert tiny == {"viz features": ["--images", "1"]} and camvid


README = DOCS.parent / "README.md"
README_TINY = {"train": ["--iterations", "2", "--width", "0.0625", "--set", "data.crop_size=[64,96]"],
               "adapt": ["--iterations", "2", "--set", "adapt.holdout=2", "--set", "adapt.probes=1"]}


def test_readme_is_short_and_its_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's three commands on a folder dataset and a folder of D2 images named like it (the layout the
    README describes), made here from synthetic scenes; and the README stays a front page, not a manual."""
    import numpy as np
    from PIL import Image

    from segadapt.data.synthetic import render_scene
    from segadapt.shifts import apply_filter

    text = README.read_text()
    assert len(text.splitlines()) <= 150
    section = text[text.index("## Quick start"):]
    [(lang, _, body)] = blocks(section[:section.index("\n## ", 3)])
    lines = commands(body)
    assert lang == "bash" and [shlex.split(line)[1] for line in lines] == ["train", "adapt", "predict"]
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):  # 6 pairs: a fifth is held out for the label-free choice
        for sub in ("images", "masks"):
            (tmp_path / "my_d1" / split / sub).mkdir(parents=True)
        (tmp_path / "my_d2_images").mkdir(exist_ok=True)
        for k in range(n):
            image, label = render_scene(rng, 64, 96)
            Image.fromarray(image).save(tmp_path / "my_d1" / split / "images" / f"{split}{k}.png")
            Image.fromarray(np.where(label == 255, 255, label % 6).astype(np.uint8)).save(
                tmp_path / "my_d1" / split / "masks" / f"{split}{k}.png")
            Image.fromarray(apply_filter("photocopy", image, 1.0)).save(tmp_path / "my_d2_images" / f"{split}{k}.png")
    monkeypatch.chdir(tmp_path)
    for line in lines:
        run_segadapt(line, README_TINY)
    assert len(list((tmp_path / "predicted").glob("*_mask.png"))) == 8
