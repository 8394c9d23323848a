import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _paths  # noqa: E402  (where the CamVid sample lies: one rule for tests and benchmarks)


@pytest.fixture(autouse=True)
def _cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as on a CPU without native bf16: train.precision = "auto" (the default) then keeps fp32
    untimed, so every figure a test checks is the same on every host. Tests of the bf16 path set the CPU
    features they need (monkeypatch segadapt.runtime.cpu_features)."""
    from segadapt import runtime

    real = runtime.cpu_features
    monkeypatch.setattr(runtime, "cpu_features", lambda: real() - set(runtime.BF16_FEATURES))


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = _paths.camvid_root()
    if not (root / "train" / "images").is_dir():
        pytest.skip(f"CamVid sample not found at {root} (the shared data folder beside the repo; "
                    f"set {_paths.CAMVID_ENV} to its place)")
    return root


@pytest.fixture
def camvid_copy(camvid_root: Path) -> Callable[[Path, int], list[str]]:
    """copy(root, n): the first n val frames and labels in CamVid's layout under root; returns their stems.

    A small copy keeps tests fast and lets them damage files; the shared sample itself is only read.
    """

    def copy(root: Path, n: int) -> list[str]:
        for sub in ("images", "labels"):
            (root / "val" / sub).mkdir(parents=True)
        stems = sorted(p.stem for p in (camvid_root / "val" / "images").glob("*.jpg"))[:n]
        for s in stems:
            shutil.copy(camvid_root / "val" / "images" / f"{s}.jpg", root / "val" / "images")
            shutil.copy(camvid_root / "val" / "labels" / f"{s}.png", root / "val" / "labels")
        return stems

    return copy
