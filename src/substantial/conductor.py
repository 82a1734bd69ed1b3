"""The Conductor (starts and finds runs, runs workers) and RunHandle (one run)."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from substantial import defaults
from substantial import events as ev
from substantial.backends import from_url
from substantial.backends.base import Backend, Message, check_run_id
from substantial.codec import Codec, JSONCodec, encode_at
from substantial.errors import RunCancelled, RunFailed, RunNotFound, RunReverted
from substantial.runs import HistoryEvent, RunInfo, RunStatus, Summary
from substantial.starts import START_ID, post_start
from substantial.turn import Ended
from substantial.worker import Worker
from substantial.workflow import Registry, Workflow

_END = 2**62  # a read position past any log: reads only its version


class Conductor:
    """Starts, finds and signals runs on one backend; ``run()`` starts a worker.

    Every process that starts runs registers the same workflows as the
    workers, so that a typo fails at ``start``, not in a worker. The backend
    is a ``Backend``, a URL for ``from_url``, or by default ``$SUBSTANTIAL_URL``,
    else ``file:.substantial`` in the working directory.
    """

    def __init__(self, backend: Backend | str | None = None, *, codec: Codec | None = None) -> None:
        if backend is None:
            backend = os.environ.get("SUBSTANTIAL_URL") or defaults.URL
        self.backend = from_url(backend) if isinstance(backend, str) else backend
        self.codec: Codec = codec or JSONCodec()
        self.registry = Registry()
        self._workers: list[Worker] = []
        self._changed = threading.Condition()
        self._generation = 0
        self._ends: OrderedDict[str, Ended] = OrderedDict()  # see _notify

    def register(self, *workflows: Workflow) -> None:
        """Make workflows known to this conductor and its workers."""
        self.registry.add(workflows)

    # -- runs ------------------------------------------------------------

    def start(self, wf: Workflow | str, *args: Any, run_id: str | None = None, **kwargs: Any) -> RunHandle:
        """Start a run of ``wf`` and return its handle at once.

        With a ``run_id``, starting is idempotent: if that run exists, its
        handle is returned and nothing else happens. Raises ``UnknownWorkflow``,
        ``InvalidRunId`` or ``CodecError`` before anything is stored.
        """
        workflow = self.registry.resolve(wf)
        fresh = run_id is None
        run_id = uuid.uuid4().hex if run_id is None else check_run_id(run_id)
        call = encode_at(self.codec, {"args": list(args), "kwargs": kwargs}, run_id, "the workflow's arguments")
        started = ev.RunStarted(message_id=START_ID, workflow=workflow.name, queue=workflow.queue, args=call)
        summary = post_start(self.backend, run_id, started, fresh=fresh)
        self._wake_workers()
        return RunHandle(self, run_id, summary.queue, summary.created_at)

    def get(self, run_id: str) -> RunHandle:
        """The handle of an existing run; ``RunNotFound`` if there is none."""
        summary = self.summary(run_id)
        return RunHandle(self, run_id, summary.queue, summary.created_at)

    def list_runs(
        self,
        status: RunStatus | str | None = None,
        workflow: Workflow | str | None = None,
        limit: int = 100,
        *,
        parent: str | None = None,
    ) -> list[RunInfo]:
        """Runs in id order, filtered by status, workflow and parent (a run's children), at most ``limit``."""
        want_status = RunStatus(status) if status is not None else None
        want_name = workflow.name if isinstance(workflow, Workflow) else workflow
        found: list[RunInfo] = []
        after: str | None = None
        while len(found) < limit:
            page = self.backend.list_runs(after=after, limit=max(limit, 100))
            for run_id in page:
                raw = self.backend.read_info(run_id)
                if raw is None:
                    continue
                summary = Summary.from_bytes(raw)
                if (
                    want_status in (None, summary.status)
                    and want_name in (None, summary.workflow)
                    and parent in (None, summary.parent)
                ):
                    found.append(RunInfo.of(run_id, summary))
            if len(page) < max(limit, 100):
                break
            after = page[-1]
        return found[:limit]

    def run(
        self,
        threads: int = defaults.THREADS,
        *,
        queues: Iterable[str] | None = None,
        lease_ttl: float = defaults.LEASE_TTL,
        cache_size: int = defaults.CACHE_SIZE,
        poll_interval: float = defaults.POLL_INTERVAL,
    ) -> Worker:
        """Start a worker serving ``queues`` (default: those of the registered workflows).

        Use it as a context manager, or call ``stop()``. ``cache_size=0``
        turns the sticky cache off (every turn replays from the log).
        """
        worker = Worker(
            self.backend,
            self.registry,
            self.codec,
            queues=queues if queues is not None else (self.registry.queues() or {defaults.QUEUE}),
            threads=threads,
            lease_ttl=lease_ttl,
            cache_size=cache_size,
            poll_interval=poll_interval,
            on_turn=self._notify,
        )
        self._workers.append(worker)
        return worker.start()

    # -- for RunHandle -------------------------------------------------------

    def summary(self, run_id: str) -> Summary:
        raw = self.backend.read_info(check_run_id(run_id))
        if raw is None:
            raise RunNotFound(run_id)
        return Summary.from_bytes(raw)

    def _post(self, queue: str, run_id: str, message_id: str, record: ev.EventReceived | ev.CancelRequested) -> None:
        self.backend.post(queue, run_id, Message(message_id, ev.encode_message(record)))
        self._wake_workers()

    def _wake_workers(self) -> None:
        self._workers = [worker for worker in self._workers if not worker.stopped]
        for worker in self._workers:
            worker.wake()

    def _notify(self, run_id: str, ended: Ended | None) -> None:
        """A turn of one of this conductor's workers is over: wake the waiting handles, keep the run's end."""
        with self._changed:
            if ended is not None and len(getattr(ended.record, "value", b"")) <= defaults.ENDS_KEPT_BYTES:
                self._ends[run_id] = ended
                self._ends.move_to_end(run_id)
                if len(self._ends) > defaults.ENDS_KEPT:
                    self._ends.popitem(last=False)
            self._generation += 1
            self._changed.notify_all()

    def _kept_end(self, run_id: str, created_at: float) -> ev.Record | None:
        """The end a worker of this conductor recorded for the run started at ``created_at``, if kept."""
        with self._changed:
            ended = self._ends.get(run_id)
        return ended.record if ended is not None and ended.created_at == created_at else None

    def _wait_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``done()``, woken by local turns and polling for remote ones."""
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = 0.01
        while True:
            with self._changed:
                generation = self._generation
            if done():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with self._changed:
                wait = poll if left is None else min(poll, left)
                self._changed.wait_for(lambda g=generation: self._generation != g, wait)  # type: ignore[misc]
            poll = min(poll * 2, 0.25)


def _history_value(record: ev.Record, codec: Codec) -> Any:
    for attribute in ("value", "args", "payload"):
        if getattr(record, attribute, None):
            return codec.decode(getattr(record, attribute))
    for attribute in ("error", "reason", "fire_at", "next_at", "message", "message_id"):
        if hasattr(record, attribute):
            return getattr(record, attribute)
    return None


def _history_detail(record: ev.Record) -> dict[str, Any]:
    """The fields a history event's value does not show (attempt numbers, ids, times)."""
    shown = {"value", "args", "payload", "error", "reason"}
    return {
        f.name: getattr(record, f.name)
        for f in dataclasses.fields(record)
        if f.name not in shown and f.name not in _RECORD_BASE
    }


_RECORD_BASE = {f.name for f in dataclasses.fields(ev.Record)}


class RunHandle:
    """One run: send it events, cancel it, read its status, result and history."""

    def __init__(self, conductor: Conductor, run_id: str, queue: str, created_at: float) -> None:
        self._conductor = conductor
        self.id = run_id
        self._queue = queue
        self._created_at = created_at  # tells this run's end from that of a later run under the same id

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    def send(self, name: str, payload: Any = None) -> None:
        """Send event ``name`` to the run; ``receive`` and ``handle`` get it, in send order."""
        c = self._conductor
        message_id = uuid.uuid4().hex
        data = encode_at(c.codec, payload, self.id, f"the payload of event {name!r}")
        c._post(self._queue, self.id, message_id, ev.EventReceived(message_id=message_id, name=name, payload=data))

    def cancel(self, reason: str | None = None) -> None:
        """Ask the run to stop: its next ``yield`` raises ``RunCancelled``."""
        message_id = uuid.uuid4().hex
        record = ev.CancelRequested(message_id=message_id, reason=reason or "")
        self._conductor._post(self._queue, self.id, message_id, record)

    def status(self) -> RunStatus:
        """Where the run stands now."""
        return self._conductor.summary(self.id).status

    def info(self) -> RunInfo:
        """Status, times, what the run waits for, and its result or error once finished."""
        summary = self._conductor.summary(self.id)
        if not summary.status.finished:
            return RunInfo.of(self.id, summary)
        end = self._end(summary)
        if isinstance(end, ev.RunCompleted):
            return RunInfo.of(self.id, summary, result=self._conductor.codec.decode(end.value))
        if isinstance(end, ev.RunFailed):
            return RunInfo.of(self.id, summary, error=end.error)
        return RunInfo.of(self.id, summary)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result.

        Raises ``RunFailed``, ``RunCancelled`` or ``RunReverted`` if it ended so, and
        ``TimeoutError`` if it has not finished within ``timeout`` seconds.
        """
        ends: list[ev.Record] = []

        def finished() -> bool:
            # an end a worker of this process recorded needs no read; others are found through the summary
            kept = self._conductor._kept_end(self.id, self._created_at)
            if kept is None:
                summary = self._conductor.summary(self.id)
                if not summary.status.finished:
                    return False
                kept = self._end(summary)
            ends.append(kept)
            return True

        if not self._conductor._wait_until(finished, timeout):
            raise TimeoutError(f"run {self.id!r} has not finished within {timeout}s")
        end = ends[0]
        if isinstance(end, ev.RunCompleted):
            return self._conductor.codec.decode(end.value)
        if isinstance(end, ev.RunFailed):
            raise RunFailed(self.id, end.error.type, end.error.message, end.error.traceback)
        if isinstance(end, ev.RunReverted):
            raise RunReverted(self.id, end.reason)
        assert isinstance(end, ev.RunCancelled)
        raise RunCancelled(end.reason)

    def history(self) -> list[HistoryEvent]:
        """The run's log, decoded: one event per record, oldest first."""
        raw, _ = self._conductor.backend.read_log(self.id)
        codec = self._conductor.codec
        events = []
        for data in raw:
            record = ev.decode(data)
            step = record.step if isinstance(record, ev.STEP_RECORDS) else None
            events.append(
                HistoryEvent(
                    kind=record.field,
                    step=step,
                    value=_history_value(record, codec),
                    command=record.command,
                    fingerprint=record.name if isinstance(record, ev.EventReceived) else record.fingerprint,
                    at=datetime.fromtimestamp(record.at, tz=timezone.utc),
                    detail=_history_detail(record),
                )
            )
        return events

    def _end(self, summary: Summary) -> ev.Record:
        """The finished run's last record: as this process's worker recorded it, else read from the log.

        In the log, it is at the version the summary names, else found by the log's version.
        """
        kept = self._conductor._kept_end(self.id, summary.created_at)
        if kept is not None:
            return kept
        backend = self._conductor.backend
        if summary.version:
            raw, _ = backend.read_log(self.id, after=summary.version - 1)
            if raw and isinstance(end := ev.decode(raw[0]), ev.TERMINAL):
                return end
        _, version = backend.read_log(self.id, after=_END)
        raw, _ = backend.read_log(self.id, after=max(version - 1, 0))
        last = ev.decode(raw[-1]) if raw else None
        if not isinstance(last, ev.TERMINAL):
            raise RunNotFound(self.id)
        return last
