"""What is known about a run: its status, the stored summary, history events."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from substantial.errors import CorruptRecord
from substantial.events import Failure


class RunStatus(str, enum.Enum):
    """Where a run stands."""

    PENDING = "pending"  # started, no turn yet
    RUNNING = "running"  # a turn is in progress
    WAITING = "waiting"  # parked on sleep, receive, ensure or a retry's backoff
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REVERTED = "reverted"

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    def __str__(self) -> str:
        return self.value


_FINISHED = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.REVERTED}


@dataclass(frozen=True)
class Summary:
    """The small record a backend keeps beside each log, for status and listing."""

    workflow: str
    queue: str
    status: RunStatus
    created_at: float
    updated_at: float
    waiting_for: str = ""
    due_at: float | None = None
    last_error: str = ""
    turn_failures: int = 0
    generation: int = 0
    parent: str = ""  # the run that started this one with child()
    version: int = 0  # the log's version when this was written: a finished run's last record is its end

    def to_bytes(self) -> bytes:
        # not dataclasses.asdict: its deep copy costs more than the rest of a one-step turn's bookkeeping
        return json.dumps({name: getattr(self, name) for name in _SUMMARY_FIELDS}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Summary:
        try:
            fields = json.loads(data)
            fields["status"] = RunStatus(fields["status"])
            return cls(**fields)
        except (ValueError, TypeError, KeyError) as e:
            raise CorruptRecord(f"run summary cannot be read: {e}") from e

    def but(self, **changes: Any) -> Summary:
        return dataclasses.replace(self, **changes)


_SUMMARY_FIELDS = [field.name for field in dataclasses.fields(Summary)]


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


@dataclass(frozen=True)
class RunInfo:
    """A run as ``RunHandle.info()`` and ``Conductor.list_runs()`` show it.

    ``result`` and ``error`` are filled once the run has finished (``info()``
    only); ``last_error`` is the error that keeps a turn from running (a
    non-determinism, an unknown workflow), retried with backoff.
    """

    id: str
    workflow: str
    queue: str
    status: RunStatus
    created_at: datetime
    updated_at: datetime
    waiting_for: str = ""
    due_at: datetime | None = None
    result: Any = None
    error: Failure | None = None
    last_error: str = ""
    #: how many times the run went on as a new history (continue_using)
    generation: int = 0
    #: the run that started this one with ``child()``, else ""
    parent: str = ""

    @classmethod
    def of(cls, run_id: str, summary: Summary, result: Any = None, error: Failure | None = None) -> RunInfo:
        created, updated = _time(summary.created_at), _time(summary.updated_at)
        assert created is not None and updated is not None
        return cls(
            id=run_id,
            workflow=summary.workflow,
            queue=summary.queue,
            status=summary.status,
            created_at=created,
            updated_at=updated,
            waiting_for=summary.waiting_for,
            due_at=_time(summary.due_at),
            result=result,
            error=error,
            last_error=summary.last_error,
            generation=summary.generation,
            parent=summary.parent,
        )


@dataclass(frozen=True)
class HistoryEvent:
    """One decoded log record, as ``RunHandle.history()`` returns it."""

    kind: str
    step: int | None
    value: Any
    command: str = ""
    fingerprint: str = ""
    at: datetime | None = dataclasses.field(default=None, repr=False)
    #: The record's other fields: attempt and next_at of an attempt, message ids, and so on.
    detail: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
