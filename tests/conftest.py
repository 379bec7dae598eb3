"""Shared fixtures: every test is seeded, and real data are found (or skipped) in one place."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

_SHARED_CANDIDATES = [
    os.environ.get("GENAILAB_SHARED_DATA", ""),
    str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
]


def _shared_dir() -> Path | None:
    for cand in _SHARED_CANDIDATES:
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder of real public datasets; skips the test when it is absent."""
    d = _shared_dir()
    if d is None:
        pytest.skip("real data folder ../shared/data (or $GENAILAB_SHARED_DATA) is absent")
    return d


def shared_file(shared: Path, relative: str) -> Path:
    """Return ``shared/relative`` or skip with a reason naming the missing file."""
    p = shared / relative
    if not p.exists():
        pytest.skip(f"real data file {relative} is absent from {shared}")
    return p
