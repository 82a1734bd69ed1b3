"""Storage backends: the contract, its implementations, and backends by URL."""

from __future__ import annotations

from urllib.parse import urlparse

from substantial.backends.base import Backend, Message
from substantial.backends.fs import FSBackend
from substantial.backends.memory import MemoryBackend

__all__ = ["Backend", "FSBackend", "MemoryBackend", "Message", "from_url"]


def from_url(url: str) -> Backend:
    """A backend from a URL.

    ``memory://`` (this process only), ``file:///abs/path`` or
    ``file:relative/path``.
    """
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return MemoryBackend()
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {url!r} names a host: use file:///abs/path or file:relative/path")
        if not parsed.path:
            raise ValueError(f"file URL {url!r} has no path")
        return FSBackend(parsed.path)
    raise ValueError(f"unsupported backend URL {url!r}: use memory://, file:///abs/path or file:relative/path")
