from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _store_in_tmp(tmp_path, monkeypatch):
    """Every test gets its own working directory, so ``data/`` lands in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    """Async tests run on both event loops the package supports."""
    return request.param
