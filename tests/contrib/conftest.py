"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from contrib_support import Processes


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Starts child processes; kills them and their children after the test."""
    running = Processes()
    yield running
    running.kill_all()
