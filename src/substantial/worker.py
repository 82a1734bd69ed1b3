"""The Worker: a poller thread that takes due runs and a pool that runs their turns."""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import NamedTuple

from substantial import defaults
from substantial import events as ev
from substantial.backends.base import Backend, Claim, Message, Opened
from substantial.codec import Codec
from substantial.errors import Conflict, CorruptRecord
from substantial.replay import TERMINAL_STATE, Execution, Progress
from substantial.runs import RunStatus, Summary
from substantial.starts import START_ID, is_finished, post_start
from substantial.workflow import Registry

log = logging.getLogger("substantial.worker")
workflow_log = logging.getLogger("substantial.workflow")

_STATUS = {
    "running": RunStatus.RUNNING,
    "waiting": RunStatus.WAITING,
    "completed": RunStatus.COMPLETED,
    "failed": RunStatus.FAILED,
    "cancelled": RunStatus.CANCELLED,
    "reverted": RunStatus.REVERTED,
}


_LISTEN_JOIN = 5.0  # seconds stop() waits for the wake-up listener
_PARENT_CANCEL = "cancel-by-parent"  # one id: a parent's repeated cancels are ingested once


class Ended(NamedTuple):
    """A run's end as its worker recorded it: ``created_at`` (of its summary) tells this run from a later one
    under the same id."""

    created_at: float
    record: ev.Record


class _Abandoned(Exception):
    """The worker is stopping past its timeout: end the turn between steps."""


class StickyCache:
    """Suspended executions by run id, with the log version each has consumed (LRU)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[Execution, int]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, run_id: str) -> tuple[Execution, int] | None:
        with self._lock:
            return self._items.pop(run_id, None)

    def put(self, run_id: str, execution: Execution, version: int) -> None:
        if self.size <= 0:
            execution.close()
            return
        with self._lock:
            self._items[run_id] = (execution, version)
            evicted = self._items.popitem(last=False)[1][0] if len(self._items) > self.size else None
        if evicted is not None:
            evicted.close()

    def clear(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        for execution, _ in items:
            execution.close()


class Worker:
    """Serves runs of some queues from a backend until stopped.

    Made by ``Conductor.run``. Several workers, in one process or many, can
    share a backend: leases keep them off each other's runs and the
    conditional append keeps every result recorded once.
    """

    def __init__(
        self,
        backend: Backend,
        registry: Registry,
        codec: Codec,
        *,
        queues: Iterable[str],
        threads: int = defaults.THREADS,
        lease_ttl: float = defaults.LEASE_TTL,
        cache_size: int = defaults.CACHE_SIZE,
        poll_interval: float = defaults.POLL_INTERVAL,
        on_turn: Callable[[str, Ended | None], None] = lambda run_id, ended: None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.backend = backend
        self.queues = sorted(set(queues))
        self.threads = threads
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._registry = registry
        self._codec = codec
        self._on_turn = on_turn
        self._cache = StickyCache(cache_size)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="substantial-turn")
        # the saves of an all/any: a pool of their own, so turns never wait on their own pool
        self._steps = ThreadPoolExecutor(threads, thread_name_prefix="substantial-step")
        self._in_flight: dict[str, Future[None]] = {}
        self._turns: dict[str, _Turn] = {}  # turns running now (a run in flight may still be queued)
        self._lock = threading.Lock()
        self._reserved = 0  # pool threads set aside for claims under way (see _claiming)
        self._timers: list[float] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll_loop, name="substantial-poller", daemon=True),
            threading.Thread(target=self._renew_loop, name="substantial-leases", daemon=True),
        ]
        self._listener = (
            threading.Thread(target=self._listen_loop, name="substantial-listen", daemon=True)
            if backend.wakes_across_processes
            else None
        )

    # -- life cycle -----------------------------------------------------------

    def start(self) -> Worker:
        for thread in self._threads:
            thread.start()
        if self._listener is not None:
            self._listener.start()
        return self

    def wake(self) -> None:
        """Look for due runs now (a start or send was just posted)."""
        self._wake.set()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking runs and wait up to ``timeout`` for turns in progress.

        Turns still running then are abandoned at their next step boundary;
        their runs stay due, so another worker (or a restart) resumes them.
        Returns True if every turn finished.
        """
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join()
        if self._listener is not None:
            # its wait is bounded by a timeout, but a client library may not honour one on a broken
            # connection: the thread is a daemon, and closing the backend ends its wait
            self._listener.join(_LISTEN_JOIN)
        with self._lock:
            futures = list(self._in_flight.values())
        _, not_done = wait(futures, timeout)
        if not_done:
            self._abandon.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._steps.shutdown(wait=False, cancel_futures=True)
        self._cache.clear()
        return not not_done

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the poller --------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                took = self._take_due()
            except Exception:
                log.exception("polling the due index failed; retrying")
                took = False
            if not took:
                self._wake.wait(self._idle_wait())

    def _idle_wait(self) -> float:
        now = time.time()
        with self._lock:
            while self._timers and self._timers[0] <= now:
                heapq.heappop(self._timers)
            soonest = self._timers[0] - now if self._timers else self.poll_interval
        return max(0.0, min(self.poll_interval, soonest))

    def _take_due(self) -> bool:
        took = False
        for queue in self.queues:
            with self._claiming() as claim:
                if claim is None:
                    return took
                claimed = self.backend.claim_due(
                    queue, time.time(), self.owner, claim.ttl, limit=claim.limit, scan=claim.scan, skip=claim.skip
                )
                with self._lock:
                    for run_id in claimed:
                        if self._may_take(run_id):
                            self._in_flight[run_id] = self._pool.submit(self._turn, queue, run_id)
                            took = True
        return took

    @contextlib.contextmanager
    def _claiming(self) -> Iterator[Claim | None]:
        """A claim of due runs for the pool's free threads; None if none is free.

        The threads it may fill are set aside until the block ends, so claims at
        once never take more runs than there are threads; register what it took
        (``_may_take``) inside the block.
        """
        with self._lock:
            claim = self._claim(self.threads - len(self._in_flight) - self._reserved)
            if claim is not None:
                self._reserved += claim.limit
        try:
            yield claim
        finally:
            if claim is not None:
                with self._lock:
                    self._reserved -= claim.limit

    def _claim(self, limit: int, finishing: str | None = None) -> Claim | None:
        """Under ``_lock``: a claim of up to ``limit`` due runs, ``finishing``'s among them; None if none."""
        if limit <= 0 or self._stopping.is_set():
            return None
        busy = set(self._in_flight) - {finishing}
        # look past the runs this worker holds and a batch more: the earliest may be leased elsewhere
        return Claim(self.lease_ttl, limit, defaults.DUE_BATCH + len(busy), busy)

    def _may_take(self, run_id: str) -> bool:
        """Under ``_lock``: whether a run this worker just leased is its to run now.

        A lease is taken once, so a run in flight here is leased again only
        once its turn let the lease go (the new claim takes it over) or let
        it expire (the turn still running keeps it).
        """
        turn = self._turns.get(run_id)
        return run_id not in self._in_flight or (turn is not None and turn.letting_go)

    def _listen_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.backend.wait_for_work(self.queues, min(self.poll_interval, 0.5)):
                    self._wake.set()
            except Exception:
                log.exception("waiting for work failed; retrying")
                self._stopping.wait(self.poll_interval)

    def _renew_loop(self) -> None:
        """Renew the leases of runs in flight; show turns that last as running."""
        renewed = time.monotonic()
        while not self._stopping.wait(min(self.lease_ttl / 3, defaults.RUNNING_AFTER / 2)):
            with self._lock:
                runs, turns = list(self._in_flight), list(self._turns.values())
            for turn in turns:
                try:
                    turn.mark_running()
                except Exception:
                    log.exception("marking run %s running failed", turn.run_id)
            if time.monotonic() - renewed < self.lease_ttl / 3:
                continue
            renewed = time.monotonic()
            for run_id in runs:
                try:
                    if not self.backend.renew_lease(run_id, self.owner, self.lease_ttl) and self._holds(run_id):
                        log.warning("lost the lease of run %s; its next append decides", run_id)
                except Exception:
                    log.exception("renewing the lease of run %s failed", run_id)

    def _holds(self, run_id: str) -> bool:
        """Whether a turn of the run is in flight and keeps its lease (one letting it go, or that ended, does not)."""
        with self._lock:
            turn = self._turns.get(run_id)
            return run_id in self._in_flight and (turn is None or not turn.letting_go)

    # -- one turn ------------------------------------------------------------

    def _turn(self, queue: str, run_id: str) -> None:
        """Turns on this pool thread: this run's, then those of the runs each turn's close claimed."""
        next_run: str | None = run_id
        while next_run is not None:
            next_run = self._one_turn(queue, next_run)

    def _one_turn(self, queue: str, run_id: str) -> str | None:
        turn = _Turn(self, queue, run_id)
        with self._lock:
            self._turns[run_id] = turn
            turn.slot = self._in_flight[run_id]
        try:
            turn.run()
        except (Conflict, _Abandoned):
            pass  # the due entry is still there: the run gets another turn
        except BaseException as e:  # SystemExit from a step too: back off, never spin
            self._turn_failed(turn, e)
        finally:
            with self._lock:
                turn.letting_go = True
                ours = self._in_flight.get(run_id) is turn.slot  # else a claim took the run over
            try:
                if ours and not turn.released:
                    self.backend.release_lease(run_id, self.owner)
            except Exception:
                log.exception("releasing the lease of run %s failed", run_id)
            with self._lock:
                if turn.next_run != run_id and self._in_flight.get(run_id) is turn.slot:
                    del self._in_flight[run_id]
                if self._turns.get(run_id) is turn:
                    del self._turns[run_id]
            if turn.next_run is None:
                self._wake.set()  # a thread is free
            self._on_turn(run_id, turn.run_end)
        return turn.next_run

    def _turn_failed(self, turn: _Turn, error: BaseException) -> None:
        """A turn that cannot run (non-determinism, unknown workflow, bad record): back off.

        The run's status stays what it was before the turn; the error is kept
        in its summary for ``info()`` and logged.
        """
        run_id = turn.run_id
        try:
            raw = self.backend.read_info(run_id)
            summary = Summary.from_bytes(raw) if raw else None
            failures = summary.turn_failures + 1 if summary else 1
            delay = min(defaults.TURN_RETRY_INITIAL * 2 ** (failures - 1), defaults.TURN_RETRY_MAX)
            log.error("run %s: turn failed, retrying in %.1fs: %s", run_id, delay, error, exc_info=error)
            if summary is not None:
                summary = summary.but(
                    status=turn.status_before or summary.status,
                    last_error=f"{type(error).__name__}: {error}",
                    turn_failures=failures,
                )
                self.backend.write_info(run_id, summary.to_bytes())
            self.backend.schedule(turn.queue, run_id, time.time() + delay)
        except Exception:
            log.exception("run %s: recording a failed turn failed", run_id)

    def note_due(self, due_at: float) -> None:
        with self._lock:
            heapq.heappush(self._timers, due_at)


class _Turn:
    """Load a run (or take it from the cache), ingest its inbox, advance it, park it."""

    def __init__(self, worker: Worker, queue: str, run_id: str) -> None:
        self.w = worker
        self.backend = worker.backend
        self.queue = queue
        self.run_id = run_id
        self.version = 0
        self.status_before: RunStatus | None = None
        self.summary: Summary | None = None
        self.summary_lock = threading.RLock()  # the turn's thread and the worker's status thread write it
        self.began = time.monotonic()
        self.marked = False  # shown as running
        self.ended = False  # the turn's last status is written
        self.unsaved: list[bytes] = []  # ingested messages, appended with the turn's first records
        self.unacked: list[str] = []  # their ids, acknowledged once appended
        self.cached = False  # the execution came from the sticky cache: nothing left unposted
        self.released = False  # close_turn let the lease go
        self.letting_go = False  # the lease is being let go: a claim of this worker may take the run over
        self.slot: Future[None] | None = None  # the pool thread's future, under which the run is in flight
        self.next_run: str | None = None  # what close_turn claimed for this thread to run next
        self.run_end: Ended | None = None  # the run's end, once recorded and closed

    def run(self) -> None:
        cached = self.w._cache.take(self.run_id)
        opened = self.backend.open_turn(self.run_id, after=cached[1] if cached else 0)
        messages = opened.messages
        with self.summary_lock:
            self.summary = Summary.from_bytes(opened.info) if opened.info is not None else None
            self.status_before = self.summary.status if self.summary else None
        execution = self._load(cached, opened)
        if execution is None:
            execution = self._begin(messages)
            if execution is None:
                return
        elif execution.state != "running":
            self._tidy_finished(execution, messages)
            return
        try:
            self._ingest(execution, messages)
            execution, progress = self._advance(execution)
        except BaseException:
            execution.close()
            raise
        self._park(execution, progress)

    def _load(self, cached: tuple[Execution, int] | None, opened: Opened) -> Execution | None:
        """The run's execution, from the cache if the log has not moved; None if no log yet.

        ``opened`` holds the log from the cached version on, or all of it.
        """
        raw, self.version = opened.records, opened.version
        if cached is not None:
            execution, version = cached
            if not raw and self.version == version:
                self.cached = True
                return execution
            execution.close()  # another worker wrote: replay from the log
            raw, self.version = self.backend.read_log(self.run_id)
        if not raw:
            return None
        records = [ev.decode(r) for r in raw]
        started = records[0]
        if not isinstance(started, ev.RunStarted):
            raise CorruptRecord(f"run {self.run_id!r}: the log does not begin with RunStarted")
        execution = Execution(self.run_id, self.w._registry.get(started.workflow), self.w._codec, records)
        if isinstance(records[-1], ev.TERMINAL):
            execution.state = TERMINAL_STATE[type(records[-1])]  # finished: nothing to run, only to tidy
        return execution

    def _begin(self, messages: list[Message]) -> Execution | None:
        """A run with no log: start it from its start message, or wait for one."""
        records = self._messages(messages, set())
        if not records or not isinstance(records[0], ev.RunStarted):
            self.backend.unschedule(self.queue, self.run_id)  # sends made before the start wait for it
            again = self._messages(self.backend.take_inbox(self.run_id), set())
            if again and isinstance(again[0], ev.RunStarted):
                self.backend.schedule(self.queue, self.run_id, time.time())  # the start just came
            return None
        workflow = self.w._registry.get(records[0].workflow)
        return Execution(self.run_id, workflow, self.w._codec, [])

    def _messages(self, messages: list[Message], seen: set[str]) -> list[ev.Record]:
        """The new messages as log records, the start first."""
        records: list[ev.Record] = []
        for message in messages:
            if message.id in seen:
                continue
            try:
                records.append(ev.decode_message(message.body, time.time()))
            except CorruptRecord:
                log.error("run %s: dropping unreadable message %s", self.run_id, message.id)
        records.sort(key=lambda r: not isinstance(r, ev.RunStarted))
        return records

    def _ingest(self, execution: Execution, messages: list[Message]) -> None:
        """Feed new messages to the execution; they are appended with its first records, then acknowledged.

        Never acknowledged before they are in the log: a worker that dies
        first leaves them in the inbox, and the next turn ingests them again.
        """
        records = self._messages(messages, execution.seen)
        execution.feed(records)
        self.unsaved = [ev.encode(r) for r in records]
        self.unacked = [m.id for m in messages]
        if not self.unsaved:
            self._acknowledge()

    def _acknowledge(self) -> None:
        if self.unacked:
            self.backend.ack(self.run_id, self.unacked)
            self.unacked = []

    def _tidy_finished(self, execution: Execution, messages: list[Message]) -> None:
        """A finished log: finish what a worker that died after its end left undone, unschedule."""
        execution.close()
        self._set_summary(_STATUS[execution.state], ends_turn=True, waiting_for="", due_at=None)
        self._tell_relatives(execution)
        if messages:
            log.info("run %s has finished: dropping %d message(s) sent to it", self.run_id, len(messages))
        self._close(info=None, ack=[m.id for m in messages], due_at=None, recheck=False)
        self._note_end(execution)

    def _close(
        self,
        *,
        info: bytes | None,
        ack: Sequence[str],
        due_at: float | None,
        recheck: bool,
        records: Sequence[bytes] = (),
    ) -> None:
        """Append the last records, write the summary, acknowledge, move the due entry, re-check the inbox,
        let the lease go.

        The close also claims the queue's next due run, if any, for this thread to go on with.
        """
        w = self.w
        with w._lock:
            self.letting_go = True
            claim = w._claim(1, finishing=self.run_id)  # for this thread: it needs none set aside
        claimed = self.backend.close_turn(
            self.queue,
            self.run_id,
            w.owner,
            info=info,
            ack=ack,
            due_at=due_at,
            recheck=recheck,
            records=records,
            expected_version=self.version - len(records),
            then_claim=claim,
        )
        self.released = True
        if claimed:
            with w._lock:
                if w._may_take(claimed[0]):  # its own run again too: this turn lets it go
                    self.next_run = claimed[0]
                    assert self.slot is not None
                    w._in_flight[self.next_run] = self.slot

    def _advance(self, execution: Execution) -> tuple[Execution, Progress]:
        """Run the execution until it waits or ends; a continue_using swaps in the next generation."""
        while True:
            if self.w._abandon.is_set():
                raise _Abandoned
            progress = execution.advance(time.time, self.w._steps)
            if progress.state not in ("running", "continued"):
                return execution, progress  # its records are appended by the park
            self._append(execution, progress.records)
            if progress.state == "continued":
                execution = self._next_generation(execution, progress.next_generation or [])

    def _append(self, execution: Execution, records: list[ev.Record]) -> None:
        """Append new records, and the messages ingested with the first; the turn's end acknowledges those."""
        encoded = self._to_write(records)
        if encoded:
            self.version = self.backend.append_log(self.run_id, encoded, self.version)
            self._emit_logs(execution, records)
            self._start_children(r for r in records if isinstance(r, ev.ChildStarted))

    def _to_write(self, records: list[ev.Record]) -> list[bytes]:
        """The records to write next, encoded: the messages ingested but not yet written first."""
        encoded, self.unsaved = self.unsaved + [ev.encode(r) for r in records], []
        return encoded

    def _next_generation(self, old: Execution, records: list[ev.Record]) -> Execution:
        self._acknowledge()  # before the log that records them is replaced: or the new one ingests them again
        self.version = self.backend.replace_log(self.run_id, [ev.encode(r) for r in records], self.version)
        self._cancel_children(old.children_dropped())  # a new history waits for none of them
        old.close()
        started = records[0]
        assert isinstance(started, ev.RunStarted)
        self._set_summary(RunStatus.RUNNING, workflow=started.workflow, generation=started.generation)
        return Execution(self.run_id, self.w._registry.get(started.workflow), self.w._codec, records)

    def _emit_logs(self, execution: Execution, records: list[ev.Record]) -> None:
        for record in records:
            if isinstance(record, ev.Logged):
                workflow_log.log(
                    record.level,
                    "%s [%s] %s",
                    execution.workflow.name,
                    self.run_id,
                    record.message,
                    extra={"run_id": self.run_id, "workflow": execution.workflow.name},
                )

    def _park(self, execution: Execution, progress: Progress) -> None:
        """End the turn: its last records, the status, then what relatives must hear, then ``close_turn``.

        The status comes first and the due entry moves last: a worker killed
        in between leaves the due entry, so the next turn parks the run again
        and tells its relatives again. With no relatives, ``close_turn`` does
        it all, the last records first.
        """
        waiting = progress.state == "waiting"
        # a worker may have died between recording a child and starting it: a run not from the cache re-posts
        starts = [] if self.cached or not waiting else execution.children_waited()
        dropped = execution.children_dropped()
        relatives = starts or dropped or (not waiting and execution.started.parent)
        # children are started, and log lines emitted, once recorded and before the status shows the turn's end
        if relatives or any(isinstance(r, (ev.ChildStarted, ev.Logged)) for r in progress.records):
            self._append(execution, progress.records)
            last: list[bytes] = []
        else:
            last = self._to_write(progress.records)
            self.version += len(last)
        info = self._end_summary(
            _STATUS[progress.state],
            waiting_for=progress.waiting_for,
            due_at=progress.due_at,
            last_error="",
            turn_failures=0,
        )
        if relatives:
            if info is not None:
                self.backend.write_info(self.run_id, info)
                info = None
            self._start_children(starts)
            if waiting:
                self._cancel_children(dropped)
            else:
                self._tell_relatives(execution)
        due_at = progress.due_at if waiting else None
        self._close(info=info, ack=self.unacked, due_at=due_at, recheck=waiting, records=last)
        self.unacked = []
        if waiting:
            if progress.due_at is not None:
                self.w.note_due(progress.due_at)
            self.w._cache.put(self.run_id, execution, self.version)
        else:
            self._note_end(execution)
            execution.close()

    def _note_end(self, execution: Execution) -> None:
        """Keep the run's end for ``on_turn``: a handle in this process reads its result without the log."""
        with self.summary_lock:
            created_at = self.summary.created_at if self.summary is not None else None
        if created_at is not None and execution.end is not None:
            self.run_end = Ended(created_at, execution.end)

    def _start_children(self, children: Iterable[ev.ChildStarted]) -> None:
        for child in children:
            started = ev.RunStarted(
                message_id=START_ID,
                workflow=child.workflow,
                queue=child.queue or self.w._registry.get(child.workflow).queue,
                args=child.args,
                parent=self.run_id,
                parent_queue=self.queue,
            )
            post_start(self.backend, child.child_id, started)
            self.w.wake()

    def _cancel_children(self, children: Iterable[ev.ChildStarted], *, unless_finished: bool = False) -> None:
        for child in children:
            if unless_finished and is_finished(self.backend, child.child_id):
                continue
            reason = f"its parent run {self.run_id!r} no longer waits for it"
            record = ev.CancelRequested(message_id=_PARENT_CANCEL, reason=reason)
            queue = child.queue or self.w._registry.get(child.workflow).queue
            self.backend.post(queue, child.child_id, Message(_PARENT_CANCEL, ev.encode_message(record)))
            self.w.wake()

    def _tell_relatives(self, execution: Execution) -> None:
        """A run that ended: cancel the children still running, tell a parent that waits."""
        self._cancel_children(execution.children_dropped(), unless_finished=True)
        ended = execution.ended_message()
        parent = execution.started
        if ended is not None and not is_finished(self.backend, parent.parent):
            self.backend.post(parent.parent_queue, parent.parent, Message(ended.message_id, ev.encode_message(ended)))
            self.w.wake()

    def mark_running(self) -> None:
        """Show the run as running once its turn has lasted ``RUNNING_AFTER``; short turns never write it."""
        if not self.marked and time.monotonic() - self.began >= defaults.RUNNING_AFTER:
            self.marked = True
            self._set_summary(RunStatus.RUNNING)

    def _read_summary(self) -> Summary | None:
        """The run's summary: read with the turn's opening, or now if it had none; only the lease holder writes it."""
        with self.summary_lock:
            if self.summary is None:
                raw = self.backend.read_info(self.run_id)
                if raw is None:
                    return None
                self.summary = Summary.from_bytes(raw)
                self.status_before = self.summary.status
            return self.summary

    def _next_summary(self, status: RunStatus, ends_turn: bool, changes: dict[str, object]) -> bytes | None:
        """The summary with these changes, to be written; None if there is none or the turn's last status is out."""
        with self.summary_lock:
            summary = self._read_summary()
            if summary is None or self.ended:
                return None
            self.ended = ends_turn
            self.summary = summary.but(status=status, updated_at=time.time(), version=self.version, **changes)
            return self.summary.to_bytes()

    def _set_summary(self, status: RunStatus, *, ends_turn: bool = False, **changes: object) -> None:
        """Write the summary; once the turn's last status is written, a late ``running`` is not."""
        with self.summary_lock:
            info = self._next_summary(status, ends_turn, changes)
            if info is not None:
                self.backend.write_info(self.run_id, info)

    def _end_summary(self, status: RunStatus, **changes: object) -> bytes | None:
        """The turn's last summary, for ``close_turn`` to write: a late ``running`` is no longer written."""
        return self._next_summary(status, True, changes)
