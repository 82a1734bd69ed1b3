"""The command values a workflow yields, and the retry policy of saves."""

from __future__ import annotations

import datetime as _dt
import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

Seconds = _dt.timedelta | float | int


def seconds(value: Seconds) -> float:
    """A duration in seconds, from a ``timedelta`` or a number."""
    return value.total_seconds() if isinstance(value, _dt.timedelta) else float(value)


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", type(fn).__qualname__)


@dataclass(frozen=True)
class Retry:
    """Durable retry policy of a ``save``.

    ``max_attempts`` counts every attempt, the first included. The wait after
    attempt ``n`` fails is ``initial * backoff ** (n - 1)``, capped at
    ``max_interval``. Errors that are instances of ``non_retryable`` fail the
    step at once.
    """

    max_attempts: int = 3
    initial: Seconds = 1.0
    backoff: float = 2.0
    max_interval: Seconds = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be at least 1, got {self.max_attempts}")
        if self.backoff < 1:
            raise ValueError(f"Retry.backoff must be at least 1, got {self.backoff}")
        if seconds(self.initial) < 0 or seconds(self.max_interval) < 0:
            raise ValueError("Retry intervals must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed."""
        return min(seconds(self.initial) * self.backoff ** (attempt - 1), seconds(self.max_interval))

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether a failure of attempt ``attempt`` is tried again."""
        return attempt < self.max_attempts and not isinstance(error, self.non_retryable)


NO_RETRY = Retry(max_attempts=1)


@dataclass(frozen=True)
class Command:
    """Something a workflow yields; the engine resolves it from the log or live."""

    kind: ClassVar[str] = ""
    #: A name for this command across loop iterations: compact() keeps only the last step of each.
    key: str | None = field(default=None, kw_only=True)

    @property
    def fingerprint(self) -> str:
        """What replay compares besides the kind."""
        return self.key or ""

    def convert(self, value: Any) -> Any:
        """Turn the decoded recorded value into what the workflow receives."""
        return value

    def describe(self) -> str:
        return f"{self.kind} {self.fingerprint!r}" if self.fingerprint else self.kind


@dataclass(frozen=True)
class Save(Command):
    """Run ``fn()`` once and record its result."""

    kind: ClassVar[str] = "save"
    fn: Callable[[], Any]
    compensate_with: Callable[[], Any] | None = None
    retry: Retry = NO_RETRY
    timeout: float | None = None

    @property
    def fingerprint(self) -> str:
        return self.key if self.key is not None else _name_of(self.fn)


@dataclass(frozen=True)
class Sleep(Command):
    """Wait ``seconds`` durably."""

    kind: ClassVar[str] = "sleep"
    seconds: float


@dataclass(frozen=True)
class Receive(Command):
    """Take the oldest unconsumed event ``name``."""

    kind: ClassVar[str] = "receive"
    name: str
    timeout: float | None = None

    @property
    def fingerprint(self) -> str:
        return self.name if self.key is None else f"{self.name}#{self.key}"


@dataclass(frozen=True)
class Ensure(Command):
    """Wait until ``predicate()`` is true."""

    kind: ClassVar[str] = "ensure"
    predicate: Callable[[], Any] = field(compare=False)
    timeout: float | None = None

    @property
    def fingerprint(self) -> str:
        return self.key if self.key is not None else _name_of(self.predicate)


@dataclass(frozen=True)
class Now(Command):
    """The current time, recorded."""

    kind: ClassVar[str] = "now"

    def convert(self, value: Any) -> Any:
        return _dt.datetime.fromtimestamp(value, tz=_dt.timezone.utc)


@dataclass(frozen=True)
class Random(Command):
    """A float in [0, 1), recorded."""

    kind: ClassVar[str] = "random"


@dataclass(frozen=True)
class Uuid4(Command):
    """A random UUID, recorded."""

    kind: ClassVar[str] = "uuid4"

    def convert(self, value: Any) -> Any:
        return _uuid.UUID(value)


@dataclass(frozen=True)
class Patched(Command):
    """Whether this run takes the code of change ``change_id``; takes no step number."""

    kind: ClassVar[str] = "patched"
    change_id: str

    @property
    def fingerprint(self) -> str:
        return self.change_id


@dataclass(frozen=True)
class Revert(Command):
    """Run the compensations of completed saves, newest first, then end the run reverted."""

    kind: ClassVar[str] = "revert"
    #: the error being handled where revert() was called, if any
    cause: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Compensate(Save):
    """The compensation of the save at ``of_step``: a durable step of its own."""

    kind: ClassVar[str] = "compensate"
    of_step: int = 0


@dataclass(frozen=True)
class _WorkflowCall(Command):
    """A command that names a workflow and the arguments to run it with."""

    workflow: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.workflow

    def call(self) -> dict[str, Any]:
        """The arguments as a run's start records them."""
        return {"args": list(self.args), "kwargs": self.kwargs}


@dataclass(frozen=True)
class ContinueUsing(_WorkflowCall):
    """End this history and start a fresh one for ``workflow`` under the same run id."""

    kind: ClassVar[str] = "continue_using"


@dataclass(frozen=True)
class Child(_WorkflowCall):
    """Start the run ``child_id`` of ``workflow`` and wait for its end."""

    kind: ClassVar[str] = "child"
    queue: str = ""  # empty: the worker looks the workflow's queue up


@dataclass(frozen=True)
class Compact(Command):
    """Drop every keyed step but the last of each key from the log."""

    kind: ClassVar[str] = "compact"

    def convert(self, value: Any) -> Any:
        return None  # the record holds the number of compactions, for child ids


#: What a fan-out may hold.
FAN_OUT = (Save, Sleep, Receive, Child)


@dataclass(frozen=True)
class All(Command):
    """Wait for every command; the saves among them run in parallel."""

    kind: ClassVar[str] = "all"
    commands: tuple[Command, ...] = ()

    def __post_init__(self) -> None:
        for command in self.commands:
            if not isinstance(command, FAN_OUT):
                raise TypeError(f"{self.kind}() takes saves, sleeps, receives and children, not {command!r}")
        if not self.commands:
            raise ValueError(f"{self.kind}() needs at least one command")

    def describe(self) -> str:
        return f"{self.kind}({', '.join(c.describe() for c in self.commands)})"


@dataclass(frozen=True)
class AnyOf(All):
    """Wait for the first command to complete; the others are dropped."""

    kind: ClassVar[str] = "any"
