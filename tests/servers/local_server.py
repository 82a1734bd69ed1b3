"""The backends that need no server: memory and local files."""

from __future__ import annotations

import pytest

from servers import Factory, Stores
from substantial.backends import FSBackend, MemoryBackend

BACKENDS = {"memory": "memory_stores", "files": "files_stores"}


@pytest.fixture(scope="session")
def memory_stores() -> Stores:
    def fresh() -> Factory:
        backend = MemoryBackend()
        return lambda: backend  # one process: every "client" is the same store

    return fresh


@pytest.fixture(scope="session")
def files_stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    def fresh() -> Factory:
        root = tmp_path_factory.mktemp("store")
        return lambda: FSBackend(root)  # each call: another client of the same folder

    return fresh
