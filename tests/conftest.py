"""Shared fixtures: a conductor on the memory backend, with the sticky cache on and off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from substantial import Conductor
from substantial.backends import FSBackend, MemoryBackend


@pytest.fixture(params=[1024, 0], ids=["cache-on", "cache-off"])
def cache_size(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(params=["memory", "files"])
def conductor(request: pytest.FixtureRequest, tmp_path: Path) -> Conductor:
    """A conductor on each backend that needs no server."""
    if request.param == "files":
        return Conductor(FSBackend(tmp_path / "store"))
    return Conductor(MemoryBackend())


@pytest.fixture
def run_worker(conductor: Conductor, cache_size: int) -> Iterator[object]:
    """Start a worker on ``conductor`` (after the test registered its workflows)."""
    workers = []

    def start(threads: int = 4, **kwargs: object) -> object:
        kwargs.setdefault("cache_size", cache_size)
        worker = conductor.run(threads, poll_interval=0.05, **kwargs)  # type: ignore[arg-type]
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=10)
