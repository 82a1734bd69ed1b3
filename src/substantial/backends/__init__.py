"""Storage backends: the contract and its implementations."""

from __future__ import annotations

from substantial.backends.base import Backend, Message
from substantial.backends.memory import MemoryBackend

__all__ = ["Backend", "MemoryBackend", "Message"]
