"""Real Redis servers for the tests: one node and a 3-master cluster, on free loopback ports.

``SUBSTANTIAL_TEST_REDIS_URL`` (and ``SUBSTANTIAL_TEST_REDIS_CLUSTER_URL``)
point the tests at servers of your own instead. A server that cannot be had
skips its tests, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from servers import Factory, Stores, unavailable

BACKENDS = {"redis": "redis_stores", "redis-cluster": "redis_cluster_stores"}


def free_port(*, also_free: int = 0) -> int:
    """A free loopback port (and ``port + also_free`` free too, for a cluster bus)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + also_free >= 65536:
            continue
        if not also_free:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + also_free))
            except OSError:
                continue
        return port


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


@dataclass
class RedisServer:
    """One redis-server process; ``kill`` and ``start`` again keep its port and data folder."""

    folder: Path
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder)]
        command += ["--save", "", "--protected-mode", "no", *self.args]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the process writes to it
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(self.ping, 20, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
        done = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False)
        return done.stdout.strip() == b"PONG"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _given(variable: str) -> str | None:
    """The URL of a server of the user's own, or None once we know we can start one."""
    given = os.environ.get(variable)
    if not given and (shutil.which("redis-server") is None or shutil.which("redis-cli") is None):
        unavailable(f"redis-server is not installed (apt-get install redis-server) and {variable} is unset")
    return given


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A single Redis node for the whole session."""
    given = _given("SUBSTANTIAL_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster of three masters on free loopback ports."""
    given = _given("SUBSTANTIAL_TEST_REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    root = tmp_path_factory.mktemp("redis-cluster")
    cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")
    nodes = [RedisServer(root / f"node{i}", free_port(also_free=10000), cluster_args) for i in range(3)]
    try:
        for node in nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        wait_for(lambda: all(_cluster_ok(node.port) for node in nodes), 30, "the Redis Cluster")
        yield f"redis://127.0.0.1:{nodes[0].port}/0?cluster=true"
    finally:
        for node in nodes:
            node.kill()


def _cluster_ok(port: int) -> bool:
    done = subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, check=False)
    return b"cluster_state:ok" in done.stdout


def _stores(url: str) -> Stores:
    from substantial.backends import from_url

    def fresh() -> Factory:
        prefix = f"t{uuid.uuid4().hex[:12]}"  # isolates each store in a shared server
        sep = "&" if "?" in url else "?"
        return lambda: from_url(f"{url}{sep}prefix={prefix}")

    return fresh


@pytest.fixture(scope="session")
def redis_stores(redis_url: str) -> Stores:
    return _stores(redis_url)


@pytest.fixture(scope="session")
def redis_cluster_stores(redis_cluster_url: str) -> Stores:
    return _stores(redis_cluster_url)
