"""Workflows the crash tests run in killed worker processes, and their observable side effects.

Imported both by the tests (to start runs) and by ``worker_script.py`` (to
serve them), so the names are explicit and must not change between the two.

Every ``save`` here appends one line ``run_id step pid time`` to a side-effect
file opened with ``O_APPEND`` and fsync'd before the function returns: the
line proves an execution happened, even if the process is killed the next
instant. ``time`` lets the tests tell an execution after the step was
recorded (a bug) from one cut short by a kill (allowed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from substantial import Context, workflow

EVENT = "go"
EVENTS_PER_RUN = 2


def step_value(run_id: str, step: int) -> str:
    """What the save at ``step`` of run ``run_id`` returns: the same on every execution."""
    return f"{run_id}/{step}"


def record_execution(path: str, run_id: str, step: int) -> None:
    """Append this execution's line to the side-effect file, durably."""
    line = f"{run_id} {step} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of a short line: appended whole, even across processes
        os.fsync(fd)
    finally:
        os.close(fd)


def effect(path: str, run_id: str, step: int, hold: float) -> str:
    """A step's work: the durable side effect, then a little time (as waiting for a reply), then its value.

    The hold after the side effect is the window in which a kill makes the
    step run again: the tests land kills in it.
    """
    record_execution(path, run_id, step)
    time.sleep(hold)
    return step_value(run_id, step)


def work(path: str, run_id: str, step: int, hold: float) -> Callable[[], str]:
    """The function a save of step ``step`` runs (its fingerprint: ``work.<locals>.run``)."""

    def run() -> str:
        return effect(path, run_id, step, hold)

    return run


@workflow("crash.chain")
def chain(c: Context, effects: str, saves: int, hold: float) -> Any:
    """``saves`` sequential saves, a short sleep, two receives, and one more save.

    Steps: ``0 .. saves-1`` save, ``saves`` sleep, ``saves+1`` and ``saves+2``
    receive, ``saves+3`` save.
    """
    values = []
    for step in range(saves):
        values.append((yield c.save(work(effects, c.run_id, step, hold))))
    yield c.sleep(0.05)
    events = []
    for _ in range(EVENTS_PER_RUN):
        events.append((yield c.receive(EVENT)))
    last = saves + 1 + EVENTS_PER_RUN
    values.append((yield c.save(work(effects, c.run_id, last, hold))))
    return {"values": values, "events": events}


@dataclass(frozen=True)
class ChainShape:
    """Where each command of a ``chain`` run sits, and what the run returns."""

    saves: int

    @property
    def save_steps(self) -> list[int]:
        return [*range(self.saves), self.saves + 1 + EVENTS_PER_RUN]

    @property
    def sleep_step(self) -> int:
        return self.saves

    @property
    def receive_steps(self) -> list[int]:
        return [self.saves + 1 + i for i in range(EVENTS_PER_RUN)]

    def records(self) -> set[tuple[str, int]]:
        """Every step record a finished run's log must hold, each exactly once."""
        expected = {("step_completed", s) for s in self.save_steps}
        expected |= {("timer_set", self.sleep_step), ("timer_fired", self.sleep_step)}
        expected |= {("event_consumed", s) for s in self.receive_steps}
        return expected

    def result(self, run_id: str, payloads: list[str]) -> dict[str, Any]:
        """The result the run has when nothing crashes."""
        return {"values": [step_value(run_id, s) for s in self.save_steps], "events": payloads}


@workflow("crash.recover")
def recover(c: Context, effects: str, marker: str) -> Any:
    """Save, sleep, a save that blocks until killed on its first execution, one more save.

    Step 2 creates ``marker`` when it starts; while that file did not exist
    before, it holds the turn for a long time so the test can kill it there.
    """
    first = yield c.save(lambda: effect(effects, c.run_id, 0, 0.0))
    yield c.sleep(0.05)
    second = yield c.save(lambda: _blocking_effect(effects, c.run_id, 2, marker))
    third = yield c.save(lambda: effect(effects, c.run_id, 3, 0.0))
    return [first, second, third]


def _blocking_effect(path: str, run_id: str, step: int, marker: str) -> str:
    record_execution(path, run_id, step)
    first_time = not os.path.exists(marker)
    Path(marker).touch()
    if first_time:
        time.sleep(60)  # the test kills the worker here
    return step_value(run_id, step)


@workflow("crash.reverts")
def reverts(c: Context, effects: str, marker: str) -> Any:
    """Three saves with compensations, then revert: the compensation of step 1 (step 11) blocks until killed."""
    for step in range(3):
        blocks = step == 1
        undo = (
            (lambda s=step: _blocking_effect(effects, c.run_id, 10 + s, marker))
            if blocks
            else (lambda s=step: effect(effects, c.run_id, 10 + s, 0.0))
        )
        yield c.save(lambda s=step: effect(effects, c.run_id, s, 0.0), compensate_with=undo, key=f"s{step}")
    yield c.revert()


@workflow("crash.fans_out")
def fans_out(c: Context, effects: str, marker: str) -> Any:
    """An all of a quick save (step 0) and one that blocks until killed (step 1), then one more save."""
    both = yield c.all(
        [
            c.save(lambda: effect(effects, c.run_id, 0, 0.0), key="quick"),
            c.save(lambda: _blocking_effect(effects, c.run_id, 1, marker), key="blocks"),
        ]
    )
    return [*both, (yield c.save(lambda: effect(effects, c.run_id, 2, 0.0)))]


@workflow("crash.child_blocks")
def blocking_child(c: Context, effects: str, marker: str) -> Any:
    first = yield c.save(lambda: effect(effects, c.run_id, 0, 0.0))
    second = yield c.save(lambda: _blocking_effect(effects, c.run_id, 1, marker))
    return [first, second, (yield c.save(lambda: effect(effects, c.run_id, 2, 0.0)))]


@workflow("crash.parent")
def parent(c: Context, effects: str, marker: str) -> Any:
    """Waits on a child whose second save blocks until killed."""
    before = yield c.save(lambda: effect(effects, c.run_id, 0, 0.0))
    return [before, (yield c.child(blocking_child, effects, marker))]


ALL = (chain, recover, reverts, fans_out, blocking_child, parent)


@dataclass(frozen=True)
class Execution:
    """One line of the side-effect file."""

    run_id: str
    step: int
    pid: int
    at: float


def read_executions(path: str | os.PathLike[str]) -> list[Execution]:
    """Every execution the side-effect file records, in the order they happened."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    executions = []
    for line in text.splitlines():
        run_id, step, pid, at = line.split(" ")
        executions.append(Execution(run_id, int(step), int(pid), float(at)))
    return executions
