"""The Flask example under gunicorn (two processes, app preloaded before the fork), driven over HTTP."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from contrib_support import EXAMPLES, Processes, example_env, http, listening_socket, wait_until

pytest.importorskip("flask")
pytest.importorskip("gunicorn")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gunicorn runs on Unix only")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """The server's socket, held by the test: both servers serve it, on one port, with no race for it."""
    sock = listening_socket()
    yield sock
    sock.close()


#: A gunicorn config whose hook prints the master's threads just before each fork.
HOOKS = """
import threading


def pre_fork(server, worker):
    print("threads before fork:", sorted(t.name for t in threading.enumerate()), flush=True)
"""


def gunicorn(processes: Processes, listener: socket.socket, tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    fd = listener.fileno()
    hooks = tmp_path / "hooks.py"
    hooks.write_text(HOOKS)
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers=2",
        "--preload",  # the app is imported in the master, before the fork
        f"--bind=fd://{fd}",
        f"--chdir={EXAMPLES / 'flask_app'}",
        "--graceful-timeout=20",
        f"--config={hooks}",
        "app:create_app()",
    ]
    env = example_env(tmp_path / "store", tmp_path)
    return processes.start(command, log=log, env=env, pass_fds=(fd,), cwd=tmp_path)


def order(base: str, order_id: str) -> dict[str, Any]:
    status, body = http("GET", f"{base}/orders/{order_id}")
    assert status == 200, body
    state: dict[str, Any] = body
    return state


def test_gunicorn_serves_the_example_and_a_restart_resumes_a_waiting_run(
    processes: Processes, listener: socket.socket, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    log = tmp_path / "gunicorn.log"

    first = gunicorn(processes, listener, tmp_path, log)
    status, body = http("POST", f"{base}/orders", {"order_id": "o-1", "amount": 30})
    assert status == 202, body
    assert body["run_id"] == "order-o-1"
    state = wait_until(
        lambda: (s := order(base, "o-1"))["waiting_for"] == "receive 'approval'" and s,
        what="the order to wait for its approval",
    )
    assert state["status"] == "waiting"

    assert processes.stop(first, signal.SIGTERM) == 0
    assert "step charge: order o-1" in log.read_text()

    second = gunicorn(processes, listener, tmp_path, log)
    status, body = http("POST", f"{base}/orders/o-1/approval", {"approved": True})
    assert status == 202, body
    done = wait_until(lambda: (s := order(base, "o-1"))["status"] == "completed" and s, what="the order to complete")
    assert done["result"] == {"order": "o-1", "approved": True, "charge": "charge-o-1-30", "shipment": "shipment-o-1"}
    status, body = http("POST", f"{base}/orders/o-1/approval", {"approved": True})
    assert status == 409, body

    assert processes.stop(second, signal.SIGTERM) == 0
    text = log.read_text()
    assert text.count("step charge: order o-1") == 1  # recorded before the restart: not run again
    assert text.count("step ship: order o-1") == 1
    assert "Traceback" not in text
    forks = [line for line in text.splitlines() if line.startswith("threads before fork:")]
    assert len(forks) == 4  # two processes per server
    assert not any("substantial" in line for line in forks)  # no worker thread runs before a fork
