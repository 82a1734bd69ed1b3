"""Helpers of the integration tests: deadlines, HTTP on loopback, child processes to kill at teardown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout: float = 15.0, what: str = "the condition") -> T:
    """Poll ``check`` until it returns something true, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}; last: {value!r}")
        time.sleep(0.02)


def http(method: str, url: str, payload: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """One JSON request; returns the status and the decoded body (text when it is not JSON)."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        with e:
            status, body = e.code, e.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def listening_socket() -> socket.socket:
    """A socket listening on a free loopback port, inheritable, for a server started with ``fd://``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def example_env(store: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of an example's process: its store, the package importable, unbuffered output."""
    env = dict(os.environ)
    env.update(
        SUBSTANTIAL_URL=f"file:{store}",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONUNBUFFERED="1",
        XDG_RUNTIME_DIR=str(tmp_path),  # gunicorn's control socket, per test
    )
    env.update(extra)
    return env


class Processes:
    """Starts child processes in their own sessions; kills whatever is left of them at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], *, log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs
            )
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process and wait for it; returns its exit code."""
        process.send_signal(sig)
        return process.wait(timeout)

    def kill_all(self) -> None:
        for process in self.started:
            with contextlib.suppress(ProcessLookupError):  # the session: a server's children too
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
