"""Fixtures of the crash tests: a backend URL, worker processes to kill, a conductor to drive them.

The tests reach the store only through ``backend_url``: another backend joins
by adding a URL factory to ``URLS`` (its server started by a session fixture).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import crash_workflows
import pytest
from crash_processes import WorkerProcesses

from substantial import Conductor


def _files(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return (tmp_path / "store").absolute().as_uri()  # file:///abs/path


def _redis(server: str) -> Callable[[pytest.FixtureRequest, Path], str]:
    def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
        base = str(request.getfixturevalue(server))
        return f"{base}{'&' if '?' in base else '?'}prefix=crash-{uuid.uuid4().hex[:10]}"

    return url


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.getfixturevalue("s3_moto_url"))


URLS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "files": _files,
    "redis": _redis("redis_url"),
    "redis-cluster": _redis("redis_cluster_url"),
    "s3-moto": _s3,
}


@pytest.fixture(params=sorted(URLS))
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store, for ``substantial.backends.from_url``."""
    return URLS[request.param](request, tmp_path)


@pytest.fixture
def workers(backend_url: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Worker processes for this test; every one still alive is killed at teardown, pass or fail."""
    procs = WorkerProcesses(backend_url, tmp_path / "workers")
    try:
        yield procs
    finally:
        procs.close()
        print(procs.logs())  # pytest shows it when the test failed


@pytest.fixture
def conductor(backend_url: str) -> Iterator[Conductor]:
    """The test's own client of the store: starts runs, sends events, reads results (it runs no worker)."""
    conductor = Conductor(backend_url)
    conductor.register(*crash_workflows.ALL)
    yield conductor
    close = getattr(conductor.backend, "close", None)
    if close is not None:
        close()


@pytest.fixture
def effects(tmp_path: Path) -> Path:
    """The side-effect file every save of the crash workflows appends its line to."""
    return tmp_path / "effects.log"
