"""The engine: one run's generator driven against its log.

Pure: no I/O and no clock of its own (the caller passes one in). The worker
feeds it the log, calls :meth:`Execution.advance` and appends the records it
returns; the same object, kept alive, is the sticky cache. What the log says
and the events delivered from it are kept by its base, ``History``
(history.py); what resolving a command gives, by outcomes.py.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import Any

from substantial import events as ev
from substantial.codec import Codec
from substantial.commands import (
    All,
    AnyOf,
    Child,
    Command,
    Compact,
    Compensate,
    ContinueUsing,
    Ensure,
    Now,
    Patched,
    Random,
    Receive,
    Revert,
    Save,
    Sleep,
    Uuid4,
)
from substantial.compaction import compact_log
from substantial.context import Context
from substantial.errors import CodecError, CompactionError, CorruptRecord, NonDeterminismError, RunCancelled, StepFailed
from substantial.history import History
from substantial.outcomes import (
    AGAIN,
    TERMINAL_STATE,
    Again,
    Blocked,
    Clock,
    Group,
    Outcome,
    Pending,
    Progress,
    Resolution,
    State,
    call_step,
    failure_fields,
    failure_of,
)
from substantial.workflow import Workflow

#: Records whose content a replay makes again from the log alone.
_REPLAYABLE = (ev.Logged, ev.EventConsumed, ev.TimerFired)


class _ReplayEnd(Exception):
    """A replay-only execution reached the end of its log (see ``Execution.replay``)."""


_ENDED = object()


class Execution(History):
    """One run: its generator, the log it has consumed, and the events delivered."""

    def __init__(self, run_id: str, workflow: Workflow, codec: Codec, log: Sequence[ev.Record]) -> None:
        self._dry = False
        super().__init__(run_id, workflow, codec, log)
        self._gen: Generator[Any, Any, Any] | None = None
        self._ready = Outcome()
        self._pending: Pending | None = None
        self._next_step = 0
        self._compensable: list[tuple[int, Save]] = []  # completed saves with compensate_with
        self._reverting: deque[Compensate] | None = None  # compensations left, once reverting
        self._revert_cause: BaseException | None = None
        self._next_generation: list[ev.Record] | None = None
        self._executor: Executor | None = None
        self.state: State = "running"
        self.context = Context(run_id, workflow.name, self)

    # -- children, for the worker ---------------------------------------------

    def children_waited(self) -> list[ev.ChildStarted]:
        """Started children the run waits for and has not heard the end of: their start is (re)posted."""
        return [self._children[c] for c in self._waited() if c in self._children and c not in self._ended]

    def children_dropped(self) -> list[ev.ChildStarted]:
        """Started children nothing waits for any more (cancelled, lost an any, run ended): to cancel."""
        if len(self._children) == len(self._ended):
            return []
        waited = self._waited()
        return [r for c, r in self._children.items() if c not in self._ended and c not in waited]

    def _waited(self) -> set[str]:
        p = self._pending
        if p is None or self.state != "running":
            return set()
        if p.group is None:
            return {p.child_id} if p.child_id is not None else set()
        children = zip(p.group.children, p.group.outcomes, strict=True)
        return {c.child_id for c, done in children if c.child_id and done is None}

    # -- the drive loop ----------------------------------------------------

    def advance(self, clock: Clock, executor: Executor | None = None) -> Progress:
        """Replay what the log holds, then run live until a save ran, the run blocks or ends.

        The saves of an ``all``/``any`` run on ``executor`` (in this thread without one).
        """
        self._clock = clock
        self._executor = executor
        while self.state == "running":
            if self._pending is None and not self._next_command():
                break
            assert self._pending is not None
            resolution = self._resolve(self._pending)
            if isinstance(resolution, Outcome):
                self._settled(self._pending, resolution)
                self._ready = resolution
                self._pending = None
                continue
            if isinstance(resolution, Again):
                return self._progress("running")
            return self._progress("waiting", resolution.due_at, resolution.waiting_for)
        return self._progress(self.state)

    def _settled(self, p: Pending | None, outcome: Outcome) -> None:
        """Note what a resolved command means for revert: saves to compensate, revert to start."""
        if p is None or outcome.error is not None:
            return
        if p.group is not None:
            for child, done in zip(p.group.children, p.group.outcomes, strict=True):
                if done is not None and done.error is None:
                    self._settled(child, done)
            return
        if type(p.command) is Save and p.command.compensate_with is not None:
            self._compensable.append((p.step, p.command))
        elif isinstance(p.command, Revert):
            self._revert_cause = p.command.cause
            self._reverting = deque(
                Compensate(fn=save.compensate_with, retry=save.retry, of_step=step)
                for step, save in reversed(self._compensable)
                if save.compensate_with is not None
            )

    def _progress(self, state: State, due_at: float | None = None, waiting_for: str = "") -> Progress:
        records, self._new = self._new, []
        return Progress(records, state, due_at, waiting_for, self._next_generation)

    def _next_command(self) -> bool:
        """Step the generator (or the revert) to its next command; False once the run has ended."""
        if self._reverting is not None:
            return self._next_compensation()
        command = self._step_generator()
        while command is not _ENDED and (isinstance(command, Patched) or not isinstance(command, Command)):
            if isinstance(command, Patched):
                self._ready = Outcome(self._patched(command.change_id))
            else:
                self._ready = Outcome(
                    error=TypeError(
                        f"workflow {self.workflow.name!r} yielded {command!r}; yield a command "
                        "made by the context, as in `yield c.save(f)`"
                    )
                )
            command = self._step_generator()
        if not isinstance(command, Command):
            return False
        self._pending = Pending(self._next_step, command)
        if isinstance(command, All):
            children = [Pending(self._next_step + i, c) for i, c in enumerate(command.commands)]
            self._pending.group = Group(children, [None] * len(children), first_wins=isinstance(command, AnyOf))
            self._next_step += len(children) - 1
        self._next_step += 1
        return True

    def _next_compensation(self) -> bool:
        """The next compensation of a revert, or the run's end (reverted, or failed with both errors)."""
        assert self._reverting is not None
        error = self._ready.error
        cause = self._revert_cause
        if error is not None:
            failure = (
                ev.Failure(error.error_type, error.message, error.traceback)
                if isinstance(error, StepFailed)
                else failure_of(error)
            )
            if cause is not None:
                failure = ev.Failure(
                    failure.type,
                    f"{failure.message}; the revert was called while handling {type(cause).__name__}: {cause}",
                    f"{failure.traceback}\nThe revert was called while handling:\n{failure_of(cause).traceback}",
                )
            self._finish(ev.RunFailed, failure)
            return False
        if not self._reverting:
            self._finish(ev.RunReverted, "" if cause is None else f"{type(cause).__name__}: {cause}")
            return False
        self._pending = Pending(self._next_step, self._reverting.popleft())
        self._next_step += 1
        return True

    def _step_generator(self) -> Any:
        """Send the ready outcome in and return what is yielded; ``_ENDED`` once the run ended."""
        try:
            if self._gen is None:
                self._gen = self._start()
                return next(self._gen)
            if self._ready.error is not None:
                return self._gen.throw(self._ready.error)
            return self._gen.send(self._ready.value)
        except StopIteration as stop:
            self._finish(ev.RunCompleted, stop.value)
        except RunCancelled as e:
            self._finish(ev.RunCancelled, e)
        except Exception as e:
            self._finish(ev.RunFailed, e)
        return _ENDED

    def _start(self) -> Generator[Any, Any, Any]:
        started = self._log[0] if self._log else None
        if not isinstance(started, ev.RunStarted):
            raise CorruptRecord(f"run {self.run_id!r}: the log does not begin with RunStarted")
        call = self._codec.decode(started.args)
        return self.workflow.fn(self.context, *call["args"], **call["kwargs"])

    # -- resolving one command ----------------------------------------------

    def _resolve(self, p: Pending) -> Resolution:
        """Resolve ``p`` from the log if it holds the result, else live."""
        if p.group is not None:
            return self._resolve_group(p, p.group)
        while (record := self._next_record()) is not None:
            if isinstance(record, Outcome):
                return record
            if isinstance(record, ev.TERMINAL):
                self._pos -= 1
                raise self._diverged(
                    p.step, "the run's end", f"yielded {p.command.describe()}", "The code goes on where it used to end."
                )
            self._check(p, record)
            if record.final:
                return self._from_log(p.command, record)
            p.apply(record)
        if self._dry:
            raise _ReplayEnd
        cancelled = self._cancelled(p)
        if cancelled is not None:
            return cancelled
        return _LIVE[type(p.command)](self, p)

    def _cancelled(self, p: Pending) -> Outcome | None:
        """A delivered cancel makes the command being resolved live raise ``RunCancelled``."""
        if self._cancel is None or self._reverting is not None:  # a revert runs to its end
            return None
        reason, self._cancel = self._cancel, None
        self._record(p, ev.StepCancelled, reason=reason)
        return Outcome(error=RunCancelled(reason))

    # -- all / any -----------------------------------------------------------

    def _resolve_group(self, p: Pending, g: Group) -> Resolution:
        """Resolve the children of an all/any from the log, in the order their results were recorded."""
        while (record := self._next_record()) is not None:
            if isinstance(record, Outcome):
                return record
            index = record.step - p.step
            if isinstance(record, ev.TERMINAL) or not 0 <= index < len(g.children):
                self._pos -= 1
                held = "the run's end" if isinstance(record, ev.TERMINAL) else f"{record.command} at step {record.step}"
                raise self._diverged(p.step, held, f"yielded {p.command.describe()}", "The fan-out changed.")
            child = g.children[index]
            self._check(child, record)
            if record.final:
                g.settle(index, self._from_log(child.command, record))
                done = g.done()
                if done is not None:
                    return done
            else:
                child.apply(record)
        if self._dry:
            raise _ReplayEnd
        return self._live_group(p, g)

    def _live_group(self, p: Pending, g: Group) -> Resolution:
        """Resolve what can be now: timers and receives in order, then the saves in parallel."""
        done = g.done()
        if done is not None:
            return done
        open_children = [i for i, outcome in enumerate(g.outcomes) if outcome is None]
        cancelled = self._cancelled(g.children[open_children[0]])
        if cancelled is not None:
            return cancelled
        deadlines: list[float] = []
        for i in open_children:
            child = g.children[i]
            if isinstance(child.command, Save):
                continue
            resolution = _LIVE[type(child.command)](self, child)
            if isinstance(resolution, Outcome):
                g.settle(i, resolution)
                done = g.done()
                if done is not None:
                    return done
            elif isinstance(resolution, Blocked) and resolution.due_at is not None:
                deadlines.append(resolution.due_at)
        saves = [i for i in open_children if isinstance(g.children[i].command, Save) and g.outcomes[i] is None]
        if saves and not g.running and self._unsettled():
            return AGAIN  # the saves must only see values that are already recorded
        for i in saves:
            child = g.children[i]
            if i in g.running:
                continue
            if child.next_at is not None and self._clock() < child.next_at:
                deadlines.append(child.next_at)
                continue
            g.running[i] = self._submit(child.command)
        if g.running:
            return self._await_saves(p, g, deadlines)
        return g.done() or Blocked(min(deadlines, default=None), p.command.describe())

    def _submit(self, command: Command) -> Future[Any]:
        assert isinstance(command, Save)
        if self._executor is not None:
            return self._executor.submit(call_step, command.fn, command.timeout)
        future: Future[Any] = Future()
        try:
            future.set_result(call_step(command.fn, command.timeout))
        except Exception as e:
            future.set_exception(e)
        return future

    def _await_saves(self, p: Pending, g: Group, deadlines: list[float]) -> Resolution:
        """Wait for a save of the group (or the first deadline), record what finished, come back."""
        timeout = max(min(deadlines) - self._clock(), 0.0) if deadlines else None
        wait(list(g.running.values()), timeout=timeout, return_when=FIRST_COMPLETED)
        for i, future in list(g.running.items()):
            if not future.done():
                continue
            del g.running[i]
            error = future.exception()
            resolution = self._save_done(g.children[i], None if error else future.result(), error)
            if isinstance(resolution, Outcome):
                g.settle(i, resolution)
                if g.first_wins:
                    break  # the first wins; what the others return is not recorded
        done = g.done()
        return done if done is not None and not self._new else AGAIN

    # -- live handlers, one per command kind -------------------------------

    def _live_save(self, p: Pending) -> Resolution:
        assert isinstance(p.command, Save)
        cmd = p.command
        if self._unsettled():
            return AGAIN
        if p.next_at is not None and self._clock() < p.next_at:
            return Blocked(p.next_at, f"retry of step {p.step} ({cmd.fingerprint})")
        try:
            return self._save_done(p, call_step(cmd.fn, cmd.timeout), None)
        except Exception as e:
            return self._save_done(p, None, e)

    def _unsettled(self) -> bool:
        """Whether records not yet appended hold values a replay could not make again.

        A save must only see recorded values (a uuid4 as its idempotency key,
        a previous save's result), so those are appended before it runs; an
        event consumed or a timer fired comes out the same on every replay.
        """
        return any(not isinstance(r, _REPLAYABLE) for r in self._new)

    def _save_done(self, p: Pending, value: Any, error: BaseException | None) -> Resolution:
        """Record what an attempt of a save gave: its result, a retry to come, or its failure."""
        assert isinstance(p.command, Save)
        cmd = p.command
        attempt = p.attempts + 1
        if error is None:
            try:
                data = self._encode(value, f"result of step {p.step} ({cmd.fingerprint})")
            except CodecError as e:
                error = e
        if error is not None:
            if not isinstance(error, CodecError) and cmd.retry.retries(error, attempt):
                p.attempts, p.next_at = attempt, self._clock() + cmd.retry.delay(attempt)
                self._record(p, ev.StepAttempt, attempt=attempt, error=failure_of(error), next_at=p.next_at)
                return AGAIN
            self._record(p, ev.StepFailed, error=failure_of(error), attempts=attempt)
            return Outcome(error=StepFailed(*failure_fields(error), attempt))
        self._record(p, ev.StepCompleted, value=data, compensable=cmd.compensate_with is not None)
        return Outcome(self._codec.decode(data))

    def _live_timer(self, p: Pending, timeout: float | None, waiting_for: str) -> Outcome | Blocked:
        """The deadline part of sleep, receive and ensure."""
        if timeout is None:
            return Blocked(None, waiting_for)
        if p.fire_at is None:
            p.fire_at = self._clock() + timeout
            self._record(p, ev.TimerSet, fire_at=p.fire_at)
        if self._clock() < p.fire_at:
            return Blocked(p.fire_at, waiting_for)
        self._record(p, ev.TimerFired)
        return Outcome(error=None if isinstance(p.command, Sleep) else self._timeout(p.command))

    def _live_sleep(self, p: Pending) -> Resolution:
        assert isinstance(p.command, Sleep)
        return self._live_timer(p, p.command.seconds, "sleep")

    def _live_receive(self, p: Pending) -> Resolution:
        assert isinstance(p.command, Receive)
        inbox = self._inboxes.get(p.command.name)
        if inbox is not None and inbox.unconsumed:
            message_id = inbox.unconsumed[0].id
            self._record(p, ev.EventConsumed, message_id=message_id)
            return Outcome(self._consume(p.command.name, message_id))
        return self._live_timer(p, p.command.timeout, f"receive {p.command.name!r}")

    def _live_ensure(self, p: Pending) -> Resolution:
        assert isinstance(p.command, Ensure)
        try:
            satisfied = bool(p.command.predicate())
        except Exception as e:
            self._record(p, ev.StepFailed, error=failure_of(e), attempts=1)
            return Outcome(error=StepFailed(*failure_fields(e)))
        if satisfied:
            self._record(p, ev.StepCompleted, value=self._encode(True, f"step {p.step}"))
            return Outcome(True)
        return self._live_timer(p, p.command.timeout, f"ensure {p.command.fingerprint}")

    def _live_continue(self, p: Pending) -> Resolution:
        """Build the next generation's log: its start, then the events nobody consumed yet."""
        assert isinstance(p.command, ContinueUsing)
        cmd = p.command
        try:
            args = self._encode(cmd.call(), f"continue_using at step {p.step}")
        except CodecError as e:
            return Outcome(error=e)
        started = self._log[0]
        assert isinstance(started, ev.RunStarted)
        waiting = {m.id for inbox in self._inboxes.values() for m in inbox.unconsumed}
        carried = [r for r in self._log if isinstance(r, ev.EventReceived) and r.message_id in waiting]
        restart = ev.RunStarted(
            at=self._clock(),
            message_id=started.message_id,
            workflow=cmd.workflow,
            queue=started.queue,
            args=args,
            generation=started.generation + 1,
        )
        self._next_generation = [restart, *carried]
        self.state = "continued"
        return Outcome(None)

    def _live_child(self, p: Pending) -> Resolution:
        """Start the child (record it; the worker posts its start), then wait for its end to be delivered."""
        assert isinstance(p.command, Child)
        cmd = p.command
        child_id = p.child_id or self._child_id(p.step)
        ended = self._child_ends.get(child_id)
        if ended is not None:
            if ended.status == "completed":
                self._record(p, ev.StepCompleted, value=ended.value)
                return Outcome(self._codec.decode(ended.value))
            self._record(p, ev.StepFailed, error=ended.error, attempts=1)
            return Outcome(error=StepFailed(ended.error.type, ended.error.message, ended.error.traceback))
        if p.child_id is None:
            try:
                args = self._encode(cmd.call(), f"child arguments at step {p.step}")
            except CodecError as e:
                return Outcome(error=e)
            self._record(p, ev.ChildStarted, child_id=child_id, workflow=cmd.workflow, queue=cmd.queue, args=args)
            p.child_id = child_id
        return Blocked(None, f"child {child_id}")

    def _live_compact(self, p: Pending) -> Resolution:
        """Build the compacted log and check that a replay follows it; the worker then swaps it in."""
        if any(not isinstance(r, ev.Logged) for r in self._new):
            return AGAIN  # compact what is stored, nothing less
        handled = {name for name, inbox in self._inboxes.items() if inbox.handlers}
        marker = ev.StepCompleted(
            at=self._clock(), command=Compact.kind, keyed=True, value=self._encode(self._compactions + 1, "compact")
        )
        records = compact_log(self._log, handled, marker)
        try:
            Execution(self.run_id, self.workflow, self._codec, records).replay()
        except (NonDeterminismError, CompactionError, CorruptRecord) as e:
            error = e if isinstance(e, CompactionError) else CompactionError(f"replaying the compacted log: {e}")
            self._record(p, ev.StepFailed, error=failure_of(error), attempts=1)
            return Outcome(error=StepFailed(*failure_fields(error)))
        self._next_generation = records
        self.state = "continued"
        return Outcome(None)

    def replay(self) -> None:
        """Replay the log to its end without running anything live; errors if the code does not follow it."""
        self._dry = True
        try:
            self.advance(lambda: 0.0)
        except _ReplayEnd:
            pass
        finally:
            self.close()

    def _live_revert(self, p: Pending) -> Resolution:
        self._record(p, ev.StepCompleted, value=self._encode(None, f"step {p.step}"))
        return Outcome(None)

    def _live_value(self, p: Pending) -> Resolution:
        value = _MAKE_VALUE[type(p.command)](self._clock)
        self._record(p, ev.StepCompleted, value=self._encode(value, f"step {p.step}"))
        return Outcome(p.command.convert(value))

    # -- events --------------------------------------------------------------

    # -- Runtime (called by the Context, inside the generator) --------------

    # -- the end -----------------------------------------------------------

    def _finish(self, kind: type[ev.Record], outcome: Any) -> None:
        """The generator ended: take the log's end, or record one."""
        while self._pos < len(self._log):
            record = self._log[self._pos]
            if isinstance(record, ev.TERMINAL):
                self.state = TERMINAL_STATE[type(record)]
                return
            if isinstance(record, ev.STEP_RECORDS):
                ended = "returned" if kind is ev.RunCompleted else "raised"
                raise self._diverged(
                    record.step,
                    f"{record.command} {record.fingerprint!r} at step {record.step}",
                    f"{ended} instead",
                    "A command was removed.",
                )
            self._pos += 1
        if self._dry:
            ended = "returned" if kind is ev.RunCompleted else f"raised {outcome!r}"
            raise CompactionError(f"run {self.run_id!r}: replaying the compacted log, the workflow {ended}")
        if kind is ev.RunCompleted:
            try:
                self._append(ev.RunCompleted(at=self._clock(), value=self._encode(outcome, "the return value")))
            except CodecError as e:
                self._append(ev.RunFailed(at=self._clock(), error=failure_of(e)))
                self.state = "failed"
                return
        elif kind is ev.RunCancelled:
            self._append(ev.RunCancelled(at=self._clock(), reason=outcome.reason))
        elif kind is ev.RunReverted:
            self._append(ev.RunReverted(at=self._clock(), reason=outcome))
            self.close()  # never resumed: the workflow ended at its revert
        else:
            error = outcome if isinstance(outcome, ev.Failure) else failure_of(outcome)
            self._append(ev.RunFailed(at=self._clock(), error=error))
        self.state = TERMINAL_STATE[kind]

    def close(self) -> None:
        """Drop the suspended generator without running its workflow's cleanup for real."""
        self._closing = True
        if self._gen is not None:
            with contextlib.suppress(Exception):  # a `finally` that yields: nothing to do about it
                self._gen.close()
            self._gen = None


_MAKE_VALUE: dict[type[Command], Callable[[Clock], Any]] = {
    Now: lambda clock: clock(),
    Random: lambda _clock: random.random(),
    Uuid4: lambda _clock: uuid.uuid4().hex,
}

_LIVE: dict[type[Command], Callable[[Execution, Pending], Resolution]] = {
    Save: Execution._live_save,
    Compensate: Execution._live_save,
    Revert: Execution._live_revert,
    ContinueUsing: Execution._live_continue,
    Child: Execution._live_child,
    Compact: Execution._live_compact,
    Sleep: Execution._live_sleep,
    Receive: Execution._live_receive,
    Ensure: Execution._live_ensure,
    Now: Execution._live_value,
    Random: Execution._live_value,
    Uuid4: Execution._live_value,
}
