"""The in-memory backend: the reference implementation of the contract.

For tests, notebooks and single-process use; nothing survives the process.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable, Sequence

from substantial.backends.base import Backend, Message
from substantial.errors import Conflict


class _DueIndex:
    """Runs ordered by due time: a sorted list of (due_at, run) and each run's entry."""

    def __init__(self) -> None:
        self.order: list[tuple[float, str]] = []
        self.at: dict[str, float] = {}

    def set(self, run_id: str, due_at: float) -> None:
        self.remove(run_id)
        self.at[run_id] = due_at
        bisect.insort(self.order, (due_at, run_id))

    def remove(self, run_id: str) -> None:
        old = self.at.pop(run_id, None)
        if old is not None:
            del self.order[bisect.bisect_left(self.order, (old, run_id))]

    def due(self, now: float, limit: int) -> list[str]:
        end = min(bisect.bisect_right(self.order, (now, "\U0010ffff")), limit)
        return [run_id for _, run_id in self.order[:end]]


class MemoryBackend(Backend):
    """Every structure in dicts guarded by one lock; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, list[bytes]] = {}
        self._inbox: dict[str, dict[str, Message]] = {}
        self._due: dict[str, _DueIndex] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._info: dict[str, bytes] = {}

    def read_log(self, run_id: str, after: int = 0) -> tuple[list[bytes], int]:
        with self._lock:
            log = self._logs.get(run_id, [])
            return log[after:], len(log)

    def append_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        with self._lock:
            log = self._logs.setdefault(run_id, [])
            if len(log) != expected_version:
                raise Conflict(f"run {run_id!r}: log is at version {len(log)}, not {expected_version}")
            log.extend(records)
            return len(log)

    def replace_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        with self._lock:
            log = self._logs.get(run_id, [])
            if len(log) != expected_version:
                raise Conflict(f"run {run_id!r}: log is at version {len(log)}, not {expected_version}")
            self._logs[run_id] = list(records)
            return len(records)

    def post(self, queue: str, run_id: str, message: Message) -> None:
        with self._lock:
            self._inbox.setdefault(run_id, {}).setdefault(message.id, message)
            self._due.setdefault(queue, _DueIndex()).set(run_id, time.time())

    def take_inbox(self, run_id: str) -> list[Message]:
        with self._lock:
            return list(self._inbox.get(run_id, {}).values())

    def ack(self, run_id: str, ids: Iterable[str]) -> None:
        with self._lock:
            inbox = self._inbox.get(run_id, {})
            for message_id in ids:
                inbox.pop(message_id, None)

    def schedule(self, queue: str, run_id: str, due_at: float) -> None:
        with self._lock:
            self._due.setdefault(queue, _DueIndex()).set(run_id, due_at)

    def unschedule(self, queue: str, run_id: str) -> None:
        with self._lock:
            if queue in self._due:
                self._due[queue].remove(run_id)

    def due(self, queue: str, now: float, limit: int) -> list[str]:
        with self._lock:
            index = self._due.get(queue)
            return index.due(now, limit) if index else []

    def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        with self._lock:
            held = self._leases.get(run_id)
            now = time.monotonic()
            if held is not None and held[1] > now:
                return False
            self._leases[run_id] = (owner, now + ttl)
            return True

    def renew_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        with self._lock:
            held = self._leases.get(run_id)
            now = time.monotonic()
            if held is None or held[0] != owner or held[1] <= now:
                return False
            self._leases[run_id] = (owner, now + ttl)
            return True

    def release_lease(self, run_id: str, owner: str) -> None:
        with self._lock:
            held = self._leases.get(run_id)
            if held is not None and held[0] == owner:
                del self._leases[run_id]

    def write_info(self, run_id: str, info: bytes) -> None:
        with self._lock:
            self._info[run_id] = info

    def read_info(self, run_id: str) -> bytes | None:
        with self._lock:
            return self._info.get(run_id)

    def list_runs(self, *, after: str | None = None, limit: int = 100) -> list[str]:
        with self._lock:
            ids = sorted(self._info)
        start = bisect.bisect_right(ids, after) if after is not None else 0
        return ids[start : start + limit]

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            for store in (self._logs, self._inbox, self._leases, self._info):
                store.pop(run_id, None)
            for index in self._due.values():
                index.remove(run_id)
