"""The log one execution has consumed: what its records say, the events delivered from them, what it adds.

The base of ``Execution`` (replay.py), which drives the workflow's generator
against it: here are the records read and made, the messages handed to
``receive`` and to handlers, and the answers the worker asks of a log (its
start, its end, what a child's parent is told).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from substantial import events as ev
from substantial.codec import Codec, encode_at
from substantial.commands import Command, Compact, Receive, Sleep
from substantial.defaults import MAX_RUN_ID
from substantial.errors import CorruptRecord, NonDeterminismError, RunCancelled, RunReverted
from substantial.outcomes import TERMINAL_STATE, Clock, Outcome, Pending, failure_of, step_failed
from substantial.workflow import Workflow

#: Records replay passes over: they belong to no command.
_PASSED = (ev.Logged, ev.PatchMarked)


@dataclass
class _Message:
    id: str
    payload: bytes


@dataclass
class _Inbox:
    """Delivered events of one name: all of them (for handlers) and the unconsumed."""

    delivered: list[_Message] = field(default_factory=list)
    unconsumed: deque[_Message] = field(default_factory=deque)
    handlers: list[Callable[[Any], Any]] = field(default_factory=list)


def _adapt(callback: Callable[..., Any]) -> Callable[[Any], Any]:
    """A handler called with the payload if it takes an argument, with none otherwise."""
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return callback
    takes = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
    return callback if takes else (lambda _payload: callback())


class History:
    """One run's log as its execution knows it, the records it adds, and the events delivered from it."""

    def __init__(self, run_id: str, workflow: Workflow, codec: Codec, log: Sequence[ev.Record]) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self._codec = codec
        self._log: list[ev.Record] = []
        self._pos = 0  # the next record to replay
        self.seen: set[str] = set()
        self._logged = 0
        self._children: dict[str, ev.ChildStarted] = {}  # started, by child id
        self._ended: set[str] = set()  # children whose end is in the log
        self._child_ends: dict[str, ev.ChildEnded] = {}  # ends delivered so far
        self._marker = -1  # position of the compaction's record: log lines before it were emitted
        self._compactions = 0
        self.feed(log)
        self._new: list[ev.Record] = []
        self._log_calls = 0
        self._inboxes: dict[str, _Inbox] = {}
        self._cancel: str | None = None
        self._closing = False
        self._clock: Clock = lambda: 0.0

    def feed(self, records: Sequence[ev.Record]) -> None:
        """Add records appended after those already known (ingested messages)."""
        for record in records:
            self._log.append(record)
            self._track(record)

    def _track(self, record: ev.Record) -> None:
        """Note what a record added to the log says about messages, log lines, children, compactions."""
        if isinstance(record, ev.MESSAGES):
            self.seen.add(record.message_id)
            if isinstance(record, ev.ChildEnded):
                self._ended.add(record.child_id)
        elif isinstance(record, ev.Logged):
            self._logged += 1
        elif isinstance(record, ev.ChildStarted):
            self._children[record.child_id] = record
        elif isinstance(record, ev.StepCompleted) and record.command == Compact.kind:
            self._marker, self._logged = len(self._log) - 1, 0
            self._compactions = self._codec.decode(record.value)

    @property
    def length(self) -> int:
        """Number of log records this execution knows, its own new ones included."""
        return len(self._log)

    @property
    def started(self) -> ev.RunStarted:
        record = self._log[0] if self._log else None
        if not isinstance(record, ev.RunStarted):
            raise CorruptRecord(f"run {self.run_id!r}: the log does not begin with RunStarted")
        return record

    @property
    def end(self) -> ev.RunCompleted | ev.RunFailed | ev.RunCancelled | ev.RunReverted | None:
        """The log's last record once the run has ended (completed, failed, cancelled, reverted), else None."""
        record = self._log[-1] if self._log else None
        if isinstance(record, (ev.RunCompleted, ev.RunFailed, ev.RunCancelled, ev.RunReverted)):
            return record
        return None

    def ended_message(self) -> ev.ChildEnded | None:
        """For a child run that has ended: what its parent is told, else None."""
        end = self.end
        if not self.started.parent or end is None:
            return None
        digest = hashlib.sha256(self.run_id.encode()).hexdigest()[:40]
        status = TERMINAL_STATE[type(end)]
        record = ev.ChildEnded(message_id=f"child-ended.{digest}", child_id=self.run_id, status=status)
        if isinstance(end, ev.RunCompleted):
            return dataclasses.replace(record, value=end.value)
        if isinstance(end, ev.RunFailed):
            return dataclasses.replace(record, error=end.error)
        error = RunCancelled(end.reason) if isinstance(end, ev.RunCancelled) else RunReverted(self.run_id, end.reason)
        return dataclasses.replace(record, error=failure_of(error))

    def _patched(self, change_id: str) -> bool:
        """True if the log marks the change here or the run is live here; False if the run went past."""
        for position in range(self._pos, len(self._log)):
            record = self._log[position]
            if isinstance(record, ev.PatchMarked) and record.change_id == change_id:
                return True
            if isinstance(record, (*ev.STEP_RECORDS, *ev.TERMINAL)):
                return False
        self._append(ev.PatchMarked(at=self._clock(), change_id=change_id))
        return True

    def _next_record(self) -> ev.Record | Outcome | None:
        """The next step or terminal record, delivering the events before it; None at the log's end.

        A handler's error while delivering comes back as the outcome of the command being resolved.
        """
        while self._pos < len(self._log):
            record = self._log[self._pos]
            self._pos += 1
            if isinstance(record, ev.MESSAGES):
                error = self._deliver(record)
                if error is not None:
                    return Outcome(error=error)
            elif not isinstance(record, _PASSED):
                return record
        return None

    def _check(self, p: Pending, record: ev.Record) -> None:
        held = f"{record.command} {record.fingerprint!r} at step {record.step}"
        if record.step != p.step or record.command != p.command.kind:
            raise self._diverged(p.step, held, f"yielded {p.command.describe()}", "The commands changed kind or order.")
        if record.fingerprint != p.command.fingerprint:
            raise self._diverged(
                p.step, held, f"yielded {p.command.describe()}", "The step's function, event name or key changed."
            )

    def _diverged(self, step: int, held: str, yielded: str, cause: str) -> NonDeterminismError:
        return NonDeterminismError(self.run_id, step, held, yielded, cause)

    def _from_log(self, command: Command, record: ev.Record) -> Outcome:
        if isinstance(record, ev.StepCompleted):
            return Outcome(command.convert(self._codec.decode(record.value)))
        if isinstance(record, ev.StepFailed):
            return Outcome(error=step_failed(record))
        if isinstance(record, ev.StepCancelled):
            self._cancel = None
            return Outcome(error=RunCancelled(record.reason))
        if isinstance(record, ev.TimerFired):
            return Outcome(error=None if isinstance(command, Sleep) else self._timeout(command))
        assert isinstance(record, ev.EventConsumed) and isinstance(command, Receive)
        return Outcome(self._consume(command.name, record.message_id))

    @staticmethod
    def _timeout(command: Command) -> TimeoutError:
        return TimeoutError(f"{command.describe()} timed out")

    def _record(self, p: Pending, cls: type[ev.Record], **fields: Any) -> None:
        cmd = p.command
        keyed = cmd.key is not None
        self._append(
            cls(step=p.step, at=self._clock(), command=cmd.kind, fingerprint=cmd.fingerprint, keyed=keyed, **fields)
        )

    def _append(self, record: ev.Record) -> None:
        self._log.append(record)
        self._track(record)
        self._pos = len(self._log)
        self._new.append(record)

    def _encode(self, value: Any, where: str) -> bytes:
        return encode_at(self._codec, value, self.run_id, where)

    def _child_id(self, step: int) -> str:
        """The id of the child started at ``step``: the parent's id, its generation and compactions, the step."""
        started = self._log[0]
        assert isinstance(started, ev.RunStarted)
        generation, compactions = started.generation, self._compactions
        epoch = f"{generation}.{compactions}." if generation or compactions else ""
        child_id = f"{self.run_id}.{epoch}{step}"
        if len(child_id) > MAX_RUN_ID:
            child_id = f"{self.run_id[:64]}.{hashlib.sha256(child_id.encode()).hexdigest()[:40]}"
        return child_id

    def _deliver(self, record: ev.Record) -> BaseException | None:
        """Hand an ingested message to its queue and handlers; a handler's error is returned."""
        if isinstance(record, ev.CancelRequested):
            self._cancel = record.reason
        elif isinstance(record, ev.ChildEnded):
            self._child_ends[record.child_id] = record
        elif isinstance(record, ev.EventReceived):
            inbox = self._inboxes.setdefault(record.name, _Inbox())
            message = _Message(record.message_id, record.payload)
            inbox.delivered.append(message)
            inbox.unconsumed.append(message)
            try:
                for handler in inbox.handlers:
                    handler(self._codec.decode(message.payload))
            except Exception as e:
                return e
        return None

    def _consume(self, name: str, message_id: str) -> Any:
        inbox = self._inboxes.get(name)
        for message in inbox.unconsumed if inbox else ():
            if message.id == message_id:
                assert inbox is not None
                inbox.unconsumed.remove(message)
                return self._codec.decode(message.payload)
        raise CorruptRecord(f"run {self.run_id!r}: event {message_id!r} is consumed but was never delivered")

    def register_handler(self, name: str, callback: Callable[..., Any]) -> None:
        if self._closing:
            return
        handler = _adapt(callback)
        inbox = self._inboxes.setdefault(name, _Inbox())
        for message in inbox.delivered:
            handler(self._codec.decode(message.payload))
        inbox.handlers.append(handler)

    def emit_log(self, level: int, message: str) -> None:
        if self._pos <= self._marker:
            return  # replaying steps that a compaction folded: emitted long ago
        seq = self._log_calls
        self._log_calls += 1
        if self._closing or seq < self._logged:
            return  # emitted by the turn that recorded it
        self._append(ev.Logged(at=self._clock(), seq=seq, level=level, message=message))
