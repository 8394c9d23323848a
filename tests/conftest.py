from pathlib import Path

import pytest

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid sample not found at {CAMVID} (the shared data folder beside the repo)")
    return CAMVID
