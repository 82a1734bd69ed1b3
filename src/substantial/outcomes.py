"""What the engine's resolving of one command gives, and what it keeps of a command being resolved.

``Progress`` is what ``Execution.advance`` returns to the worker; the rest
is the engine's own bookkeeping (replay.py, history.py): an ``Outcome``, a
``Blocked`` wait or ``AGAIN`` for each resolution, the ``Pending`` command
and the ``Group`` of an all/any.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from substantial import events as ev
from substantial.commands import Command
from substantial.errors import RunCancelled, StepFailed

Clock = Callable[[], float]
State = Literal["running", "waiting", "completed", "failed", "cancelled", "reverted", "continued"]
TERMINAL_STATE: dict[type[ev.Record], State] = {
    ev.RunCompleted: "completed",
    ev.RunFailed: "failed",
    ev.RunCancelled: "cancelled",
    ev.RunReverted: "reverted",
}


@dataclass(frozen=True)
class Progress:
    """What one ``advance`` did: records to append, and where the run stands.

    ``running`` means: append the records, then call ``advance`` again.
    ``waiting`` means: park the run until ``due_at`` (``None``: until an
    event arrives). ``continued`` means: replace the log with
    ``next_generation`` and go on with a new execution of it.
    """

    records: list[ev.Record]
    state: State
    due_at: float | None = None
    waiting_for: str = ""
    next_generation: list[ev.Record] | None = None


@dataclass
class Outcome:
    """A command resolved: the value the workflow gets, or the error thrown into it."""

    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Blocked:
    """A command that cannot resolve yet: the run waits until ``due_at`` (None: for a message)."""

    due_at: float | None
    waiting_for: str


class Again:
    """Persist what is pending, then resolve the same command again."""


AGAIN = Again()
Resolution = Outcome | Blocked | Again


@dataclass
class Pending:
    """The command being resolved and what its step's records said so far."""

    step: int
    command: Command
    attempts: int = 0
    next_at: float | None = None
    fire_at: float | None = None
    group: Group | None = None
    child_id: str | None = None  # a child command's run, once started

    def apply(self, record: ev.Record) -> None:
        """What an intermediate record says: attempts made so far, a deadline, the child started."""
        if isinstance(record, ev.StepAttempt):
            self.attempts, self.next_at = record.attempt, record.next_at
        elif isinstance(record, ev.TimerSet):
            self.fire_at = record.fire_at
        elif isinstance(record, ev.ChildStarted):
            self.child_id = record.child_id


@dataclass
class Group:
    """The commands of one all/any: each its own step, resolved in any order."""

    children: list[Pending]
    outcomes: list[Outcome | None]
    first_wins: bool = False  # an any: the first to complete decides
    order: list[int] = field(default_factory=list)  # children in the order they completed
    running: dict[int, Future[Any]] = field(default_factory=dict)  # saves in flight

    def settle(self, index: int, outcome: Outcome) -> None:
        self.outcomes[index] = outcome
        self.order.append(index)

    def done(self) -> Outcome | None:
        """The outcome of the all/any once decided, else None."""
        for outcome in self.outcomes:
            if outcome is not None and isinstance(outcome.error, RunCancelled):
                return outcome
        if self.first_wins:
            if not self.order:
                return None
            for future in self.running.values():
                future.cancel()  # losers: whatever they return is not recorded
            first = self.order[0]
            won = self.outcomes[first]
            assert won is not None
            return won if won.error is not None else Outcome((first, won.value))
        if any(outcome is None for outcome in self.outcomes):
            return None
        errors = [o.error for o in self.outcomes if o is not None and o.error is not None]
        if errors:
            errors[0].others = errors[1:]  # type: ignore[attr-defined]
            return Outcome(error=errors[0])
        return Outcome([o.value for o in self.outcomes if o is not None])


def failure_of(error: BaseException) -> ev.Failure:
    """The log's form of an exception: type path, message, traceback text."""
    cls = type(error)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    tb = "".join(traceback.format_exception(error))
    if isinstance(error, StepFailed) and error.traceback:
        tb = f"{tb}\nThe step failed with:\n{error.traceback}"
    return ev.Failure(type=name, message=str(error), traceback=tb)


def failure_fields(error: BaseException) -> tuple[str, str, str]:
    """``StepFailed``'s first three arguments for ``error``: its type path, message and traceback."""
    f = failure_of(error)
    return f.type, f.message, f.traceback


def step_failed(record: ev.StepFailed) -> StepFailed:
    """The error a recorded failure throws into the workflow."""
    err = record.error
    return StepFailed(err.type, err.message, err.traceback, record.attempts)


def call_step(fn: Callable[[], Any], timeout: float | None) -> Any:
    """Run ``fn``; past ``timeout`` seconds give up on it with ``TimeoutError``."""
    if timeout is None:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="substantial-step", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"step did not finish within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]
