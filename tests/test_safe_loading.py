"""Weights files are data, never code: a pickle that would run code on loading is refused before it can."""

import ast
import builtins
import io
import json
import os
import pickle
import re
import struct
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from segadapt.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--width", "0.125", "--iterations", "2", "--batch-size", "2", "--threads", "1",
        "--set", "data.synthetic_size=[32, 48]", "--set", "data.crop_size=[32, 48]",
        "--set", "data.synthetic_train=4", "--set", "data.synthetic_val=2", "--set", "train.checkpoint_every=0"]


class ShellPayload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.system, (f"touch '{self.marker}'",)


class OpenPayload:
    """Unpickling this calls builtins.open(marker, "w"), creating the file without a shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return builtins.open, (str(self.marker), "w")


def malicious_files(tmp: Path, marker: Path) -> dict[str, Path]:
    """Ways a weights file can carry code: torch.save archives and raw pickles, alone or inside a state dict."""
    files = {}
    for name, payload in (("shell", ShellPayload(marker)), ("open", OpenPayload(marker))):
        p = tmp / f"{name}_zip.pth"
        torch.save(payload, p)
        files[p.name] = p
        p = tmp / f"{name}_in_state_dict.pth"
        torch.save({"features.0.weight": torch.zeros(2), "features.0.bias": payload}, p)
        files[p.name] = p
        p = tmp / f"{name}_raw_pickle.pth"
        p.write_bytes(pickle.dumps(payload, protocol=2))
        files[p.name] = p
        p = tmp / f"{name}_pickle_protocol0.pth"
        p.write_bytes(pickle.dumps(payload, protocol=0))
        files[p.name] = p
    return files


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def one_error_line(err: str) -> str:
    lines = [ln for ln in re.split(r"[\r\n]", err) if ln.startswith("segadapt")]
    assert len(lines) == 1 and lines[0].startswith("segadapt: error: ") and "Traceback" not in err, err
    return lines[0]


def test_payloads_are_live(tmp_path):
    """The payloads really would run: plain pickle.loads creates the marker (so the tests below mean something)."""
    for payload in (ShellPayload(tmp_path / "a"), OpenPayload(tmp_path / "b")):
        obj = pickle.loads(pickle.dumps(payload))
        if hasattr(obj, "close"):
            obj.close()
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists()


@pytest.mark.parametrize("name", [f"{payload}_{kind}.pth" for payload in ("shell", "open")
                                  for kind in ("zip", "in_state_dict", "raw_pickle", "pickle_protocol0")])
def test_init_weights_pickle_is_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    path = malicious_files(tmp_path, marker)[name]
    code, err = run(["train", *TINY, "--init-weights", str(path), "--out", str(tmp_path / "run")])
    line = one_error_line(err)
    assert code != 0 and str(path) in line
    assert re.search(r"refused|neither a torch.save file", line), line
    assert not marker.exists()
    assert not (tmp_path / "run").exists()  # the run it would have started leaves nothing behind


def test_init_weights_pickle_named_safetensors_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "vgg16.safetensors"
    torch.save(ShellPayload(marker), path)
    code, err = run(["train", *TINY, "--init-weights", str(path), "--out", str(tmp_path / "run")])
    assert code != 0 and "vgg16.safetensors: unreadable safetensors file" in one_error_line(err)
    assert not marker.exists()


def _trained_model(tmp_path: Path) -> Path:
    run_dir = tmp_path / "h1"
    assert run(["train", *TINY, "--out", str(run_dir)])[0] == 0
    return run_dir


def _invalid_model_files(tmp: Path, marker: Path, good: bytes) -> dict[str, Path]:
    files = {f"pickle {k}": p for k, p in malicious_files(tmp, marker).items()}
    renamed = tmp / "renamed" / "model.safetensors"  # a pickle in a run directory's model slot
    renamed.parent.mkdir()
    torch.save({"w": torch.zeros(1), "x": ShellPayload(marker)}, renamed)
    files["pickle as model.safetensors"] = renamed.parent
    (tmp / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    files["truncated"] = tmp / "truncated.safetensors"
    (tmp / "empty.safetensors").write_bytes(b"")
    files["empty"] = tmp / "empty.safetensors"
    (tmp / "huge_header.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    files["huge header"] = tmp / "huge_header.safetensors"
    save_file({"w": torch.zeros(2)}, str(tmp / "foreign.safetensors"))  # valid, but not a segadapt model
    files["foreign"] = tmp / "foreign.safetensors"
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    header["__metadata__"] = {"segadapt": "{broken json"}
    raw = json.dumps(header).encode()
    (tmp / "bad_meta.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + good[8 + n :])
    files["bad metadata"] = tmp / "bad_meta.safetensors"
    return files


def test_evaluate_refuses_invalid_model_files(tmp_path):
    good = (_trained_model(tmp_path) / "model.safetensors").read_bytes()
    marker = tmp_path / "pwned"
    for what, path in _invalid_model_files(tmp_path, marker, good).items():
        code, err = run(["evaluate", "--model", str(path), "--out", str(tmp_path / "eval.json")])
        line = one_error_line(err)
        assert code != 0 and str(path) in line, (what, line)
        assert not marker.exists(), what
        assert not (tmp_path / "eval.json").exists()


def test_adapt_and_resume_refuse_pickles(tmp_path):
    marker = tmp_path / "pwned"
    run_dir = _trained_model(tmp_path)
    evil = tmp_path / "evil" / "model.safetensors"
    evil.parent.mkdir()
    torch.save(OpenPayload(marker), evil)
    code, err = run(["adapt", "--h1", str(evil.parent), "--filter", "photocopy", "--out", str(tmp_path / "h2")])
    assert code != 0 and "not a readable safetensors file" in one_error_line(err)
    # a resume point replaced by a pickle
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    torch.save(ShellPayload(marker), run_dir / "checkpoints" / "step_0000009.safetensors")
    code, err = run(["train", "--resume", str(run_dir), "--iterations", "12"])
    assert code != 0 and "step_0000009.safetensors" in one_error_line(err)
    assert not marker.exists() and not (tmp_path / "h2").exists()
    assert (run_dir / "model.safetensors").is_file()  # the run being resumed is left as it was


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted callee, call) for every call: `torch.load(...)` -> "torch.load"."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
            out.append((".".join(reversed(parts)), node))
    return out


def _reads_back_own_save(tree: ast.AST, call: ast.Call) -> bool:
    """True for `torch.jit.load(P)` in a function that has just written P with `torch.jit.save(..., P)`: export
    verifying its own output, never a file from elsewhere."""
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or call not in ast.walk(fn):
            continue
        saved = [ast.dump(c.args[1]) for name, c in _calls(fn) if name == "torch.jit.save" and len(c.args) > 1
                 and c.lineno < call.lineno]
        return bool(call.args) and ast.dump(call.args[0]) in saved
    return False


def test_every_torch_load_in_src_uses_weights_only():
    """Grep-test over the syntax tree: torch.load always with weights_only=True; no other unpickler at all."""
    loads, unsafe = [], []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle", "marshal", "shelve")
                       for n in names):
                    unsafe.append(f"{path}:{node.lineno} imports an unpickler")
                if isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in names:
                    unsafe.append(f"{path}:{node.lineno} imports torch.load by name (use torch.load(...))")
        for callee, call in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            if callee in ("torch.load", "torch.serialization.load"):
                loads.append(f"{path}:{call.lineno}")
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    unsafe.append(f"{path}:{call.lineno} torch.load without weights_only=True")
            if callee in ("torch.jit.load", "torch.package.PackageImporter") and not _reads_back_own_save(tree, call):
                unsafe.append(f"{path}:{call.lineno} {callee} runs pickled code")
            if callee.endswith(("np.load", "numpy.load")) and not (
                isinstance(kw.get("allow_pickle", ast.Constant(False)), ast.Constant)
                and kw.get("allow_pickle", ast.Constant(False)).value is False
            ):
                unsafe.append(f"{path}:{call.lineno} np.load with allow_pickle")
    assert not unsafe, unsafe
    assert loads, "expected the torch.load in models/pretrained.py; update this test if it moved"
    # the text agrees with the tree (a torch.load hidden from it, e.g. via getattr, would still be named)
    text_hits = [f"{p}:{i + 1}" for p in sorted(SRC.rglob("*.py"))
                 for i, ln in enumerate(p.read_text().splitlines()) if re.search(r"\btorch\.load\(", ln)]
    assert sorted(text_hits) == sorted(loads), (text_hits, loads)
