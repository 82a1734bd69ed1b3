"""The backends the conformance suite runs against; later backends join the list."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from substantial.backends import Backend, FSBackend, MemoryBackend

Factory = Callable[[], Backend]


def _memory(tmp_path: Path) -> Factory:
    backend = MemoryBackend()
    return lambda: backend


def _files(tmp_path: Path) -> Factory:
    return lambda: FSBackend(tmp_path / "store")  # each call: another client of the same folder


FACTORIES: dict[str, Callable[[Path], Factory]] = {"memory": _memory, "files": _files}


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
