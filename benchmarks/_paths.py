"""Where the benchmarks find things and how their results name paths: relative to the repository or to
../shared, never as they lay on the machine that ran them (a results file is read on other machines).

Light on purpose (no torch): shift_speed.py imports it in the children whose memory it measures.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The CamVid sample lies in ../shared beside a checkout; SEGADAPT_CAMVID names another place (a clone elsewhere,
# a copy on faster disk). Tests read it from here too.
CAMVID_ENV = "SEGADAPT_CAMVID"


def camvid_root() -> Path:
    return Path(os.environ.get(CAMVID_ENV) or SHARED / "data" / "camvid")


CAMVID_ROOT = camvid_root()


def recorded(path: str | Path) -> str:
    """`path` as a results file records it: repository-relative, `../shared/...`, or, for a path outside both
    (a temporary run folder), its name alone."""
    p = Path(path).resolve()
    for base, prefix in ((REPO, ""), (SHARED.resolve(), "../shared/")):
        if p.is_relative_to(base):
            return prefix + p.relative_to(base).as_posix()
    return p.name
