import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid sample not found at {CAMVID} (the shared data folder beside the repo)")
    return CAMVID


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
