"""Fixtures of the crash tests: a backend URL, worker processes to kill, a conductor to drive them.

The tests reach the store only through ``backend_url``: another backend joins
by adding a URL factory to ``URLS`` (its server started by a session fixture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import crash_workflows
import pytest

from substantial import Conductor

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "worker_script.py"
STARTUP_TIMEOUT = 30.0


def _files(tmp_path: Path) -> str:
    return (tmp_path / "store").absolute().as_uri()  # file:///abs/path


URLS: dict[str, Callable[[Path], str]] = {"files": _files}


@pytest.fixture(params=sorted(URLS))
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store, for ``substantial.backends.from_url``."""
    return URLS[request.param](tmp_path)


class WorkerProcesses:
    """Worker processes on one store: started, killed with SIGKILL, and all killed at the end."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.ready = folder / "ready"
        self.ready.mkdir(parents=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: list[int] = []
        self._logs: list[Path] = []

    def start(self, *, threads: int = 4, lease_ttl: float = 2.0, cache_size: int = 1024) -> subprocess.Popen[bytes]:
        """Start a worker process and return once it serves runs."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        log = self.folder / f"worker-{len(self._logs)}.log"
        self._logs.append(log)
        command = [sys.executable, str(SCRIPT), self.url, str(self.ready)]
        command += ["--threads", str(threads), "--lease-ttl", str(lease_ttl), "--cache-size", str(cache_size)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.folder)
        self.procs.append(proc)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (self.ready / str(proc.pid)).exists():
            if proc.poll() is not None:
                raise RuntimeError(f"worker process exited with {proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker process not ready after {STARTUP_TIMEOUT}s:\n{self.logs()}")
            time.sleep(0.01)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """kill -9, and reap it."""
        assert proc.poll() is None, f"worker {proc.pid} died on its own:\n{self.logs()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.killed.append(proc.pid)

    def assert_alive(self) -> None:
        for proc in self.procs:
            if proc.pid not in self.killed:
                assert proc.poll() is None, f"worker {proc.pid} died on its own:\n{self.logs()}"

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for log in self._logs if log.exists())

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILL cannot stop
                print(f"worker {proc.pid} survived SIGKILL")


@pytest.fixture
def workers(backend_url: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Worker processes for this test; every one still alive is killed at teardown, pass or fail."""
    procs = WorkerProcesses(backend_url, tmp_path / "workers")
    try:
        yield procs
    finally:
        procs.close()
        print(procs.logs())  # shown by pytest when the test failed


@pytest.fixture
def conductor(backend_url: str) -> Iterator[Conductor]:
    """The test's own client of the store: starts runs, sends events, reads results (runs no worker)."""
    conductor = Conductor(backend_url)
    conductor.register(*crash_workflows.ALL)
    yield conductor
    close = getattr(conductor.backend, "close", None)
    if close is not None:
        close()


@pytest.fixture
def effects(tmp_path: Path) -> Path:
    """The side-effect file every save of the crash workflows appends its line to."""
    return tmp_path / "effects.log"
