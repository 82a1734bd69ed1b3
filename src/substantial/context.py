"""The ``Context`` a workflow receives: the primitives, building commands."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from substantial.commands import (
    NO_RETRY,
    All,
    AnyOf,
    Child,
    Command,
    Compact,
    ContinueUsing,
    Ensure,
    Now,
    Patched,
    Random,
    Receive,
    Retry,
    Revert,
    Save,
    Seconds,
    Sleep,
    Uuid4,
    seconds,
)

if TYPE_CHECKING:
    from substantial.workflow import Workflow


class Runtime(Protocol):
    """What the engine offers a context for the primitives that are not yielded."""

    def register_handler(self, name: str, callback: Callable[..., Any]) -> None: ...

    def emit_log(self, level: int, message: str) -> None: ...


class WorkflowLogger:
    """A ``logging.Logger``-like object whose records are emitted once, never on replay."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def log(self, level: int, msg: str, *args: Any) -> None:
        self._runtime.emit_log(level, msg % args if args else msg)

    def debug(self, msg: str, *args: Any) -> None:
        self.log(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: Any) -> None:
        self.log(logging.ERROR, msg, *args)


class Context:
    """Handed to every workflow; the only door to time, randomness and I/O.

    Every method but ``handle`` (and the ``log`` attribute) returns a command
    to ``yield``: ``value = yield c.save(f)``.
    """

    def __init__(self, run_id: str, workflow: str, runtime: Runtime) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self._runtime = runtime
        self.log = WorkflowLogger(runtime)

    def save(
        self,
        f: Callable[[], Any],
        *,
        compensate_with: Callable[[], Any] | None = None,
        retry: Retry | None = None,
        timeout: Seconds | None = None,
        key: str | None = None,
    ) -> Save:
        """Run ``f()`` once and record its result; replay returns the record.

        ``f`` may run more than once if a worker dies before recording it, so
        make it idempotent. Failures are retried by ``retry``; a permanent
        one raises ``StepFailed`` at the ``yield``. A ``timeout`` fails an
        attempt that runs longer (the attempt's thread is abandoned).
        """
        return Save(
            fn=f,
            compensate_with=compensate_with,
            retry=retry or NO_RETRY,
            timeout=None if timeout is None else seconds(timeout),
            key=key,
        )

    def sleep(self, delta: Seconds, *, key: str | None = None) -> Sleep:
        """Wait ``delta`` durably; no thread is held meanwhile."""
        return Sleep(seconds=seconds(delta), key=key)

    def receive(self, name: str, *, timeout: Seconds | None = None, key: str | None = None) -> Receive:
        """The payload of the oldest unconsumed event ``name``; waits durably.

        Raises ``TimeoutError`` at the ``yield`` when ``timeout`` passes first.
        """
        return Receive(name=name, timeout=None if timeout is None else seconds(timeout), key=key)

    def handle(self, name: str, cb: Callable[..., Any]) -> None:
        """Call ``cb(payload)`` (or ``cb()``) for every event ``name``, past ones first."""
        self._runtime.register_handler(name, cb)

    def ensure(self, pred: Callable[[], Any], *, timeout: Seconds | None = None, key: str | None = None) -> Ensure:
        """Wait until ``pred()`` is true; re-checked whenever events arrive.

        Raises ``TimeoutError`` at the ``yield`` when ``timeout`` passes first;
        an error inside ``pred`` is raised there as ``StepFailed``.
        """
        return Ensure(predicate=pred, timeout=None if timeout is None else seconds(timeout), key=key)

    def now(self, *, key: str | None = None) -> Now:
        """The current UTC ``datetime``, the same on every replay."""
        return Now(key=key)

    def random(self, *, key: str | None = None) -> Random:
        """A float in [0, 1), the same on every replay."""
        return Random(key=key)

    def uuid4(self, *, key: str | None = None) -> Uuid4:
        """A random ``uuid.UUID``, the same on every replay."""
        return Uuid4(key=key)

    def patched(self, change_id: str) -> Patched:
        """Yields True where change ``change_id`` applies, False for runs already past this point.

        The first run to reach it with the change deployed records the
        decision; runs whose history went past this point without it get
        False, on every replay. See docs/primitives.md for the lifecycle.
        """
        return Patched(change_id=change_id)

    def revert(self) -> Revert:
        """Run the compensations of completed saves, newest first, and end the run ``reverted``.

        Each compensation is a durable step retried with its save's policy.
        Called while handling an error, that error is kept as the cause.
        """
        return Revert(cause=sys.exc_info()[1])

    def continue_using(self, wf: Workflow | str, *args: Any, **kwargs: Any) -> ContinueUsing:
        """End this history and go on as a fresh run of ``wf`` under the same run id.

        Events sent but not yet consumed are carried over; the log starts
        again, so a workflow that loops forever keeps a bounded log.
        """
        return ContinueUsing(workflow=wf if isinstance(wf, str) else wf.name, args=args, kwargs=kwargs)

    def child(self, wf: Workflow | str, *args: Any, **kwargs: Any) -> Child:
        """Yields the result of a child run of ``wf``; its failure is raised as ``StepFailed``.

        The child's id is the parent's id and this step's number, so a replay
        or another worker never starts it twice. Cancelling the parent cancels
        the child; so does ending the parent while the child still runs.
        """
        if isinstance(wf, str):
            return Child(workflow=wf, args=args, kwargs=kwargs)
        return Child(workflow=wf.name, queue=wf.queue, args=args, kwargs=kwargs)

    def compact(self) -> Compact:
        """Drop from the log every keyed step but the last of each key.

        For workflows that loop forever: give every command inside the loop
        a ``key`` and keep the loop's state in their results, and the log
        stays bounded. A compaction that a replay could not follow raises
        ``CompactionError`` here and leaves the log as it was.
        """
        return Compact()

    def all(self, commands: Iterable[Command]) -> All:
        """Yields the results of every command, in the order given.

        The saves run in parallel on the worker and each is recorded as it
        finishes. If some fail, the first failure (in the order given) is
        raised once all have finished, with the others in its ``others``.
        """
        return All(commands=tuple(commands))

    def any(self, commands: Iterable[Command]) -> AnyOf:
        """Yields ``(index, value)`` of the first command to complete; the others are dropped.

        A losing receive consumes nothing and a losing timer never fires; a
        losing save may still run to its end, but its result is not recorded.
        """
        return AnyOf(commands=tuple(commands))
