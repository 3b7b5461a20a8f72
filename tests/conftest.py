from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import crystallize

REPO = Path(crystallize.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _store_in_tmp(tmp_path, monkeypatch):
    """Every test gets its own working directory, so ``data/`` lands in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    """Async tests run on both event loops the package supports."""
    return request.param


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A folder ``experiments/`` holding a copy of the README's example graph ``dag``."""
    shutil.copytree(REPO / "examples" / "dag", tmp_path / "experiments" / "dag")
    return tmp_path / "experiments"
