"""The conformance suite runs against every backend of tests/servers/."""

from __future__ import annotations

import pytest

from servers import Factory
from substantial.backends import Backend


@pytest.fixture
def connect(backend_factory: Factory) -> Factory:
    """Opens a client of one fresh store; call it again for another client of the same store."""
    return backend_factory


@pytest.fixture
def backend(connect: Factory) -> Backend:
    return connect()
