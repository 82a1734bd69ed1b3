"""One turn of one run: load it (or take it from the sticky cache), ingest its inbox, advance it, park it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, NamedTuple

from substantial import defaults
from substantial import events as ev
from substantial.backends.base import Message, Opened
from substantial.errors import CorruptRecord
from substantial.outcomes import TERMINAL_STATE, Progress
from substantial.replay import Execution
from substantial.runs import RunStatus, Summary
from substantial.starts import START_ID, is_finished, post_start

if TYPE_CHECKING:
    from substantial.worker import Worker

log = logging.getLogger("substantial.worker")
workflow_log = logging.getLogger("substantial.workflow")

STATUS = {
    "running": RunStatus.RUNNING,
    "waiting": RunStatus.WAITING,
    "completed": RunStatus.COMPLETED,
    "failed": RunStatus.FAILED,
    "cancelled": RunStatus.CANCELLED,
    "reverted": RunStatus.REVERTED,
}
PARENT_CANCEL = "cancel-by-parent"  # one id: a parent's repeated cancels are ingested once


class Ended(NamedTuple):
    """A run's end as its worker recorded it: ``created_at`` (of its summary) tells this run from a later one
    under the same id."""

    created_at: float
    record: ev.Record


class Abandoned(Exception):
    """The worker is stopping past its timeout: end the turn between steps."""


class Turn:
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
        self._set_summary(STATUS[execution.state], ends_turn=True, waiting_for="", due_at=None)
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
                raise Abandoned
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
            STATUS[progress.state],
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
            record = ev.CancelRequested(message_id=PARENT_CANCEL, reason=reason)
            queue = child.queue or self.w._registry.get(child.workflow).queue
            self.backend.post(queue, child.child_id, Message(PARENT_CANCEL, ev.encode_message(record)))
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
