"""A throwaway redis-server on a free port for the benchmarks (or $SUBSTANTIAL_BENCH_REDIS_URL)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator


@contextlib.contextmanager
def redis_server(*args: str) -> Iterator[str]:
    """Yield the URL of a fresh redis-server started with ``args`` (e.g. appendfsync always)."""
    given = os.environ.get("SUBSTANTIAL_BENCH_REDIS_URL")
    if given:
        yield given
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", folder, "--save", "", *args]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            ping = ["redis-cli", "-p", str(port), "ping"]
            while subprocess.run(ping, capture_output=True, check=False).stdout.strip() != b"PONG":
                if time.monotonic() > deadline:
                    raise TimeoutError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait()
