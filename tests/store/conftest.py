"""Fixtures for store tests: a local store and an in-memory fsspec store, each fresh per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.store import ArtifactStore


@pytest.fixture
def local_store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "root")


@pytest.fixture
def mem_store(tmp_path: Path) -> Iterator[ArtifactStore]:
    import fsspec

    name = f"store-test-{uuid.uuid4().hex}"
    store = ArtifactStore(f"memory://{name}", cache_dir=str(tmp_path / "cache"), stale_after_s=0)
    yield store
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """Both backends: every test using it runs on a local root and on ``memory://``."""
    return request.getfixturevalue("local_store" if request.param == "local" else "mem_store")
