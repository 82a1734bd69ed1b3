"""Shared fixtures: a conductor on every backend, with the sticky cache on and off."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import Factory, Stores
from substantial import Conductor
from substantial.backends import Backend

SERVERS = sorted(p.stem for p in (Path(__file__).parent / "servers").glob("*_server.py"))
pytest_plugins = [f"servers.{name}" for name in SERVERS]


def backends() -> dict[str, str]:
    """Backend name -> name of the fixture that makes its stores, from every server plugin."""
    found: dict[str, str] = {}
    for name in SERVERS:
        found.update(sys.modules[f"servers.{name}"].BACKENDS)
    return found


def conformance_only() -> set[str]:
    """Backends that run the conformance suite (tests/backends) but not the workflow tests."""
    names: set[str] = set()
    for name in SERVERS:
        names |= set(getattr(sys.modules[f"servers.{name}"], "CONFORMANCE_ONLY", ()))
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_stores" in metafunc.fixturenames:
        names = sorted(backends())
        if Path(str(metafunc.definition.path)).parent.name != "backends":
            names = [n for n in names if n not in conformance_only()]
        metafunc.parametrize("backend_stores", names, indirect=True)


@pytest.fixture(params=[1024, 0], ids=["cache-on", "cache-off"])
def cache_size(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def backend_stores(request: pytest.FixtureRequest) -> Stores:
    """Makes fresh stores of each backend (parametrized by pytest_generate_tests)."""
    stores: Stores = request.getfixturevalue(backends()[request.param])
    return stores


@pytest.fixture
def backend_factory(backend_stores: Stores) -> Iterator[Factory]:
    """Opens clients of one fresh store; closes them after the test."""
    make = backend_stores()
    opened: list[Backend] = []

    def factory() -> Backend:
        backend = make()
        opened.append(backend)
        return backend

    yield factory
    for backend in opened:
        backend.close()


@pytest.fixture
def conductor(backend_factory: Factory) -> Conductor:
    return Conductor(backend_factory())


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
