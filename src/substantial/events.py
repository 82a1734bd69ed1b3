"""The log's records as frozen dataclasses, and their protobuf encoding.

This is the only module that imports the generated protobuf code: everything
else sees the dataclasses below. Values inside records (arguments, results,
payloads) are already codec-encoded bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from google.protobuf.message import DecodeError

from substantial.errors import CorruptRecord
from substantial.v1 import events_pb2 as pb


@dataclass(frozen=True)
class Failure:
    """An error as the log keeps it: type name, message, traceback text."""

    type: str
    message: str
    traceback: str = ""


@dataclass(frozen=True, kw_only=True)
class Record:
    """Fields every record carries; ``step`` and the command fields only matter for step records."""

    field: ClassVar[str] = ""
    #: True for records that end the command of their step.
    final: ClassVar[bool] = False
    step: int = 0
    at: float = 0.0
    command: str = ""
    fingerprint: str = ""
    #: the command had a key: compact() keeps only the last step of each
    keyed: bool = False


@dataclass(frozen=True, kw_only=True)
class RunStarted(Record):
    field = "run_started"
    message_id: str
    workflow: str
    queue: str
    args: bytes
    generation: int = 0
    parent: str = ""
    parent_queue: str = ""


@dataclass(frozen=True, kw_only=True)
class StepCompleted(Record):
    field = "step_completed"
    final = True
    value: bytes
    compensable: bool = False


@dataclass(frozen=True, kw_only=True)
class StepFailed(Record):
    field = "step_failed"
    final = True
    error: Failure
    attempts: int = 1


@dataclass(frozen=True, kw_only=True)
class StepAttempt(Record):
    field = "step_attempt"
    attempt: int
    error: Failure
    next_at: float


@dataclass(frozen=True, kw_only=True)
class TimerSet(Record):
    field = "timer_set"
    fire_at: float


@dataclass(frozen=True, kw_only=True)
class TimerFired(Record):
    field = "timer_fired"
    final = True


@dataclass(frozen=True, kw_only=True)
class EventReceived(Record):
    field = "event_received"
    message_id: str
    name: str
    payload: bytes


@dataclass(frozen=True, kw_only=True)
class EventConsumed(Record):
    field = "event_consumed"
    final = True
    message_id: str


@dataclass(frozen=True, kw_only=True)
class Logged(Record):
    field = "logged"
    seq: int
    level: int
    message: str


@dataclass(frozen=True, kw_only=True)
class CancelRequested(Record):
    field = "cancel_requested"
    message_id: str
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class StepCancelled(Record):
    field = "step_cancelled"
    final = True
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class RunCompleted(Record):
    field = "run_completed"
    value: bytes


@dataclass(frozen=True, kw_only=True)
class RunFailed(Record):
    field = "run_failed"
    error: Failure


@dataclass(frozen=True, kw_only=True)
class RunCancelled(Record):
    field = "run_cancelled"
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class PatchMarked(Record):
    field = "patch_marked"
    change_id: str


@dataclass(frozen=True, kw_only=True)
class RunReverted(Record):
    field = "run_reverted"
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class ChildStarted(Record):
    field = "child_started"
    child_id: str
    workflow: str
    queue: str
    args: bytes


@dataclass(frozen=True, kw_only=True)
class ChildEnded(Record):
    field = "child_ended"
    message_id: str
    child_id: str
    status: str
    value: bytes = b""
    error: Failure = Failure("", "")


#: Records that end a run.
TERMINAL = (RunCompleted, RunFailed, RunCancelled, RunReverted)
#: Records that arrive from outside through the inbox.
MESSAGES = (RunStarted, EventReceived, CancelRequested, ChildEnded)
Message = RunStarted | EventReceived | CancelRequested | ChildEnded
#: Records that belong to a step (carry command and fingerprint).
STEP_RECORDS = (
    StepCompleted,
    StepFailed,
    StepAttempt,
    TimerSet,
    TimerFired,
    EventConsumed,
    StepCancelled,
    ChildStarted,
)

_BY_FIELD: dict[str, type[Record]] = {
    cls.field: cls
    for cls in (
        RunStarted,
        StepCompleted,
        StepFailed,
        StepAttempt,
        TimerSet,
        TimerFired,
        EventReceived,
        EventConsumed,
        Logged,
        CancelRequested,
        StepCancelled,
        RunCompleted,
        RunFailed,
        RunCancelled,
        PatchMarked,
        RunReverted,
        ChildStarted,
        ChildEnded,
    )
}
_BASE = {f.name for f in dataclasses.fields(Record)}
_INBOX_FIELD = {RunStarted: "start", EventReceived: "send", CancelRequested: "cancel", ChildEnded: "child_ended"}


_OWN_FIELDS: dict[type[Record], tuple[str, ...]] = {}


def _own_fields(cls: type[Record]) -> tuple[str, ...]:
    """A record class's fields beyond those every record has, in order (``dataclasses.fields`` is slow per call)."""
    names = _OWN_FIELDS.get(cls)
    if names is None:
        names = _OWN_FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.name not in _BASE)
    return names


def _fill(msg: Any, record: Record) -> None:
    for name in _own_fields(type(record)):
        value = getattr(record, name)
        if isinstance(value, Failure):
            getattr(msg, name).CopyFrom(pb.Failure(type=value.type, message=value.message, traceback=value.traceback))
        else:
            setattr(msg, name, value)


def _build(cls: type[Record], msg: Any, base: dict[str, Any]) -> Record:
    kwargs = dict(base)
    for name in _own_fields(cls):
        value = getattr(msg, name)
        if isinstance(value, pb.Failure):
            value = Failure(value.type, value.message, value.traceback)
        kwargs[name] = value
    return cls(**kwargs)


def encode(record: Record) -> bytes:
    """Serialise one log record."""
    event = pb.Event(
        step=record.step, at=record.at, command=record.command, fingerprint=record.fingerprint, keyed=record.keyed
    )
    body = getattr(event, record.field)
    body.SetInParent()  # marks the oneof even when every field is empty
    _fill(body, record)
    data: bytes = event.SerializeToString()
    return data


def decode(data: bytes) -> Record:
    """Parse one log record; ``CorruptRecord`` if it is not one."""
    try:
        event = pb.Event.FromString(data)
    except DecodeError as e:
        raise CorruptRecord(f"log record cannot be parsed: {e}") from e
    kind = event.WhichOneof("record")
    if kind is None or kind not in _BY_FIELD:
        raise CorruptRecord(f"log record of unknown kind {kind!r}: written by a newer version?")
    base = {
        "step": event.step,
        "at": event.at,
        "command": event.command,
        "fingerprint": event.fingerprint,
        "keyed": event.keyed,
    }
    return _build(_BY_FIELD[kind], getattr(event, kind), base)


def encode_message(record: Message) -> bytes:
    """Serialise an inbox message (what a sender posts)."""
    inbox = pb.Inbox()
    _fill(getattr(inbox, _INBOX_FIELD[type(record)]), record)
    data: bytes = inbox.SerializeToString()
    return data


def decode_message(data: bytes, at: float) -> Message:
    """Parse an inbox message into the record it becomes in the log."""
    try:
        inbox = pb.Inbox.FromString(data)
    except DecodeError as e:
        raise CorruptRecord(f"inbox message cannot be parsed: {e}") from e
    kind = inbox.WhichOneof("message")
    for cls, name in _INBOX_FIELD.items():
        if name == kind:
            record = _build(cls, getattr(inbox, kind), {"at": at})
            assert isinstance(record, MESSAGES)
            return record
    raise CorruptRecord(f"inbox message of unknown kind {kind!r}")
