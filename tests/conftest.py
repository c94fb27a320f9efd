"""Shared pytest fixtures.

``shared_dir`` is the ``shared/`` folder that sits beside the repository
(benchmark data and the official-network reference); tests that need it skip
with a reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("DA3STREAM_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder not found beside the repository ({SHARED_DIR.name}/)")
    return SHARED_DIR


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
