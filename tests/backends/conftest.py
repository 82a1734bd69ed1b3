"""The backends the conformance suite runs against; later backends join the list."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from substantial.backends import Backend, MemoryBackend

Factory = Callable[[], Backend]


def _memory(tmp_path: Path) -> Factory:
    backend = MemoryBackend()
    return lambda: backend


FACTORIES: dict[str, Callable[[Path], Factory]] = {"memory": _memory}


@pytest.fixture(params=sorted(FACTORIES))
def connect(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Opens a connection to one fresh store; call it again for another client of the same store."""
    opened: list[Backend] = []
    make = FACTORIES[request.param](tmp_path)

    def factory() -> Backend:
        backend = make()
        opened.append(backend)
        return backend

    yield factory
    for backend in opened:
        backend.close()


@pytest.fixture
def backend(connect: Factory) -> Backend:
    return connect()
