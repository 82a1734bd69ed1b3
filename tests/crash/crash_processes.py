"""Worker processes for the crash tests: started on a store, killed with SIGKILL, all killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "worker_script.py"
STARTUP_TIMEOUT = 30.0


class WorkerProcesses:
    """The worker processes of one test, on one store; ``killed`` lists the pids that died by SIGKILL."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.ready = folder / "ready"
        self.ready.mkdir(parents=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: list[int] = []
        self._logs: list[Path] = []

    def start(
        self, *, threads: int = 4, lease_ttl: float = 2.0, cache_size: int = 1024, die: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a worker process and return once it serves runs.

        With ``die`` (``before:KIND`` or ``after:KIND``) the process kills itself
        at that log append (see ``worker_script.py``) and this returns at once:
        wait for it with ``died``.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        log = self.folder / f"worker-{len(self._logs)}.log"
        self._logs.append(log)
        command = [sys.executable, str(SCRIPT), self.url, str(self.ready)]
        command += ["--threads", str(threads), "--lease-ttl", str(lease_ttl), "--cache-size", str(cache_size)]
        command += ["--die", die] if die else []
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.folder)
        self.procs.append(proc)
        if die:
            return proc
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

    def died(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        """Wait for a process started with ``die`` to kill itself."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {proc.pid} did not reach its fault point:\n{self.logs()}") from None
        assert proc.returncode == -signal.SIGKILL, f"worker {proc.pid} exited with {proc.returncode}:\n{self.logs()}"
        self.killed.append(proc.pid)

    def assert_alive(self) -> None:
        """Fail if a worker that was not killed has exited."""
        for proc in self.procs:
            if proc.pid not in self.killed:
                assert proc.poll() is None, f"worker {proc.pid} died on its own:\n{self.logs()}"

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for log in self._logs if log.exists())

    def close(self) -> None:
        """Kill every process still alive and reap them all."""
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                print(f"worker {proc.pid} survived SIGKILL")
