"""Test servers (Redis, S3) started per session, and the backend factories on them.

Each ``*_server.py`` module here is loaded as a pytest plugin by tests/conftest.py.
It defines fixtures and a ``BACKENDS`` dict: backend name -> name of a
session fixture returning ``Stores`` (a callable that makes a fresh, isolated
store and returns its ``Factory``, which opens clients of that store). The
conformance suite and the workflow tests run against every name listed.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from substantial.backends import Backend

#: opens a new client of one store
Factory = Callable[[], Backend]
#: makes a fresh, isolated store and returns its Factory
Stores = Callable[[], Factory]


def unavailable(reason: str) -> None:
    """Skip the tests of a server that cannot be had; under CI=true they fail instead (CI exercises every backend)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: every backend must be tested)", pytrace=False)
    pytest.skip(reason)
