"""Backend calls per step and per turn: a counting proxy around a backend.

The worker and the starting side get a proxy each over one store, so what a
turn costs is not mixed with what ``start`` costs. A turn is counted by its
``close_turn`` (or, for a turn that ends otherwise, its ``release_lease``).
The composite operations are counted as one call each: what the store does
within them is its own (one script on Redis, the primitives on files).
"""

from __future__ import annotations

import collections
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from _jobs import WORKFLOWS, one_step, sequential, turn_per_step
from _substantial import start

from substantial import Conductor, RunHandle, Workflow
from substantial.backends import Backend, FSBackend, Message, Opened

POLL = 0.01


class CountingBackend(Backend):
    """Delegates every method of the contract to ``inner`` and counts the calls, by method."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.wakes_across_processes = inner.wakes_across_processes
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _count(self, method: str) -> None:
        with self._lock:
            self.counts[method] += 1

    def snapshot(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self.counts)

    def read_log(self, run_id: str, after: int = 0) -> tuple[list[bytes], int]:
        self._count("read_log")
        return self.inner.read_log(run_id, after)

    def append_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        self._count("append_log")
        return self.inner.append_log(run_id, records, expected_version)

    def replace_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        self._count("replace_log")
        return self.inner.replace_log(run_id, records, expected_version)

    def post(self, queue: str, run_id: str, message: Message) -> None:
        self._count("post")
        self.inner.post(queue, run_id, message)

    def take_inbox(self, run_id: str) -> list[Message]:
        self._count("take_inbox")
        return self.inner.take_inbox(run_id)

    def ack(self, run_id: str, ids: Iterable[str]) -> None:
        self._count("ack")
        self.inner.ack(run_id, ids)

    def schedule(self, queue: str, run_id: str, due_at: float) -> None:
        self._count("schedule")
        self.inner.schedule(queue, run_id, due_at)

    def unschedule(self, queue: str, run_id: str) -> None:
        self._count("unschedule")
        self.inner.unschedule(queue, run_id)

    def due(self, queue: str, now: float, limit: int) -> list[str]:
        self._count("due")
        return self.inner.due(queue, now, limit)

    def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        self._count("acquire_lease")
        return self.inner.acquire_lease(run_id, owner, ttl)

    def renew_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        self._count("renew_lease")
        return self.inner.renew_lease(run_id, owner, ttl)

    def release_lease(self, run_id: str, owner: str) -> None:
        self._count("release_lease")
        self.inner.release_lease(run_id, owner)

    def write_info(self, run_id: str, info: bytes) -> None:
        self._count("write_info")
        self.inner.write_info(run_id, info)

    def read_info(self, run_id: str) -> bytes | None:
        self._count("read_info")
        return self.inner.read_info(run_id)

    def list_runs(self, *, after: str | None = None, limit: int = 100) -> list[str]:
        self._count("list_runs")
        return self.inner.list_runs(after=after, limit=limit)

    def delete_run(self, run_id: str) -> None:
        self._count("delete_run")
        self.inner.delete_run(run_id)

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        self._count("wait_for_work")
        return self.inner.wait_for_work(queues, timeout)

    def start_run(self, queue: str, run_id: str, info: bytes, message: Message) -> None:
        self._count("start_run")
        self.inner.start_run(queue, run_id, info, message)

    def claim_due(
        self, queue: str, now: float, owner: str, ttl: float, *, limit: int, scan: int, skip: Collection[str] = ()
    ) -> list[str]:
        self._count("claim_due")
        return self.inner.claim_due(queue, now, owner, ttl, limit=limit, scan=scan, skip=skip)

    def open_turn(self, run_id: str, after: int = 0) -> Opened:
        self._count("open_turn")
        return self.inner.open_turn(run_id, after)

    def close_turn(self, queue: str, run_id: str, owner: str, **parts: Any) -> list[str]:
        self._count("close_turn")
        if parts.get("records"):
            self._count("close_turn appending")
        return self.inner.close_turn(queue, run_id, owner, **parts)

    def close(self) -> None:
        self.inner.close()


#: One column of the table: its heading, and (workflow, runs, steps per run).
SHAPES = [
    ("W1", sequential, 1, 200),
    ("W2", one_step, 100, 1),
    ("W3", sequential, 20, 20),
    ("sticky", turn_per_step, 1, 50),
]


def count_shape(inner: Backend, wf: Workflow, runs: int, steps: int) -> tuple[collections.Counter[str], ...]:
    """(start calls, worker calls) for ``runs`` runs of ``wf`` with ``steps`` steps each."""
    starting, serving = CountingBackend(inner), CountingBackend(inner)
    client, server = Conductor(starting), Conductor(serving)
    client.register(*WORKFLOWS)
    server.register(*WORKFLOWS)
    with server.run(threads=8, poll_interval=POLL):
        argument = 0 if wf is one_step else steps
        handles: list[RunHandle] = [start(client, wf, argument) for _ in range(runs)]
        started = starting.snapshot()
        for handle in handles:
            handle.result(timeout=600)
        time.sleep(3 * POLL)  # the last turn's release_lease comes after the status the client saw
    return started, serving.snapshot()


def report() -> list[str]:
    """Lines of a table: calls by method per step and per turn, for each shape, on the files backend."""
    columns: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="substantial-counts-") as folder:
        for name, wf, runs, steps in SHAPES:
            inner = FSBackend(Path(folder) / name.replace(" ", "-"))
            started, served = count_shape(inner, wf, runs, steps)
            turns = served["close_turn"] + served["release_lease"]  # a turn that did not close releases its lease
            served["turns"] = turns
            columns.append((f"{name}/step", {k: v / (runs * steps) for k, v in served.items()}))
            columns.append((f"{name}/turn", {k: v / turns for k, v in served.items()}))
            if name == "W2":
                columns.append(("start/run", {k: v / runs for k, v in started.items()}))
    methods = sorted({m for _, c in columns for m in c} - {"turns"})
    head = f"  {'method':<22}" + "".join(f"{title:>12}" for title, _ in columns)
    lines = [head]
    for method in [*methods, "turns"]:
        cells = "".join(f"{c.get(method, 0):>12.3f}" for _, c in columns)
        lines.append(f"  {method:<22}{cells}")
    return lines
