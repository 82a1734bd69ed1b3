"""The conformance suite runs against every backend of tests/servers/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from servers import Factory
from substantial.backends import Backend


@pytest.fixture
def connect(backend_factory: Factory) -> Iterator[Factory]:
    """Opens a client of one fresh store; call it again for another client of the same store."""
    opened: list[Backend] = []

    def factory() -> Backend:
        backend = backend_factory()
        opened.append(backend)
        return backend

    yield factory
    for backend in opened:
        backend.close()


@pytest.fixture
def backend(connect: Factory) -> Backend:
    return connect()
