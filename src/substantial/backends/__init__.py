"""Storage backends: the contract, its implementations, and backends by URL.

The Redis and S3 backends import their client libraries (the ``redis`` and
``s3`` extras) only when they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from substantial.backends.base import Backend, Claim, Message, Opened
from substantial.backends.fs import FSBackend
from substantial.backends.memory import MemoryBackend

if TYPE_CHECKING:
    from substantial.backends.redis import RedisBackend
    from substantial.backends.s3 import S3Backend

__all__ = [
    "Backend",
    "Claim",
    "FSBackend",
    "MemoryBackend",
    "Message",
    "Opened",
    "RedisBackend",
    "S3Backend",
    "from_url",
]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from substantial.backends.redis import RedisBackend

        return RedisBackend
    if name == "S3Backend":
        from substantial.backends.s3 import S3Backend

        return S3Backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def from_url(url: str) -> Backend:
    """A backend from a URL.

    ``memory://`` (this process only), ``file:///abs/path`` or
    ``file:relative/path``, ``redis://host:port/db`` or ``rediss://`` (TLS;
    ``?cluster=true`` for Redis Cluster, ``&prefix=name``), and
    ``s3://bucket/prefix?endpoint_url=...&region=...``.
    """
    parsed = urlparse(url)
    query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    if parsed.scheme == "memory":
        return MemoryBackend()
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {url!r} names a host: use file:///abs/path or file:relative/path")
        if not parsed.path:
            raise ValueError(f"file URL {url!r} has no path")
        return FSBackend(parsed.path)
    if parsed.scheme in ("redis", "rediss"):
        from substantial.backends.redis import RedisBackend

        return RedisBackend.from_url(url)
    if parsed.scheme == "s3":
        from substantial.backends.s3 import S3Backend

        if not parsed.netloc:
            raise ValueError(f"S3 URL {url!r} names no bucket: use s3://bucket/prefix")
        return S3Backend(
            parsed.netloc,
            prefix=parsed.path.lstrip("/"),
            endpoint_url=query.get("endpoint_url"),
            region=query.get("region"),
        )
    raise ValueError(
        f"unsupported backend URL {url!r}: use memory://, file:///abs/path, file:relative/path, "
        "redis://host:port/db, rediss://... or s3://bucket/prefix"
    )
