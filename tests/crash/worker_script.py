"""A worker process for the crash tests: serves the crash workflows until it is killed.

    python worker_script.py URL READY_DIR [--threads N] [--lease-ttl S] [--cache-size N] [--die WHEN:KIND]

Once its worker is running it creates ``READY_DIR/<pid>``, so a test kills it
only once it can take runs. ``--die before:KIND`` (or ``after:KIND``) makes
the process SIGKILL itself just before (after) the first log append that
holds a record of that kind (``step_completed``, ``run_completed``…): a
kill at an exact instant. It exits when its parent (the test) goes away, so
no worker outlives a test session that was itself killed. It needs
``crash_workflows`` importable (the tests put this folder on ``PYTHONPATH``)
and nothing else from the tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import crash_workflows

from substantial import Conductor
from substantial import events as ev
from substantial.backends import Backend, FSBackend

T = TypeVar("T")


def die_at_append(backend: Backend, when: str, kind: str) -> None:
    """SIGKILL this process around the first append of a ``kind`` record: by ``append_log``, or by the
    ``close_turn`` that appends a turn's last records (where a store does that in one step, "after" is after
    the whole close; where the close appends first, as files do under the run's lock, that append is the point)."""
    append, close = backend.append_log, backend.close_turn

    def around(records: Sequence[bytes], call: Callable[[], T]) -> T:
        hit = any(ev.decode(r).field == kind for r in records)
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = call()
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def append_log(run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        return around(records, lambda: append(run_id, records, expected_version))

    def close_turn(queue: str, run_id: str, owner: str, **parts: Any) -> list[str]:
        return around(parts.get("records", ()), lambda: close(queue, run_id, owner, **parts))

    backend.append_log = append_log  # type: ignore[method-assign]
    backend.close_turn = close_turn  # type: ignore[method-assign]
    if isinstance(backend, FSBackend):  # the append under the held lock, which its close makes in its midst
        logs = backend._logs
        held_append = logs.append

        def _append(run_id: str, folder: str, records: Sequence[bytes], expected_version: int) -> int:
            return around(records, lambda: held_append(run_id, folder, records, expected_version))

        logs.append = _append  # type: ignore[method-assign]


def exit_with_parent() -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("ready_dir")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--cache-size", type=int, default=1024)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--die", metavar="WHEN:KIND", help="before:KIND or after:KIND")
    args = parser.parse_args()
    threading.Thread(target=exit_with_parent, daemon=True).start()

    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s pid={os.getpid()} %(levelname)s %(name)s %(message)s"
    )
    conductor = Conductor(args.url)
    conductor.register(*crash_workflows.ALL)
    if args.die:
        when, _, kind = args.die.partition(":")
        if when not in ("before", "after") or not kind:
            parser.error(f"--die takes before:KIND or after:KIND, not {args.die!r}")
        die_at_append(conductor.backend, when, kind)
    conductor.run(args.threads, lease_ttl=args.lease_ttl, cache_size=args.cache_size, poll_interval=args.poll_interval)
    (Path(args.ready_dir) / str(os.getpid())).touch()
    threading.Event().wait()  # serve until killed


if __name__ == "__main__":
    main()
