"""What the benchmarks run: a trivial step, importable (RQ workers find it), and workflows of it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from substantial import Conductor, Context, workflow
from substantial import events as ev


def job(i: int) -> dict[str, int]:
    return {"i": i}


@workflow()
def sequential(c: Context, steps: int) -> Any:
    for i in range(steps):
        yield c.save(lambda i=i: job(i))
    return steps


def alternate(
    raw: Callable[[int], float], ours: Callable[[int], float], steps: int, rounds: int
) -> tuple[float, float]:
    """Median µs of ``raw`` and of ``ours``, each run ``rounds`` times on ``steps`` steps, in turn.

    This machine's disk and CPU drift by more than the engine's cost within
    a minute; measured one after the other, the ratio moved with the drift.
    """
    raws, timed = [], []
    for _ in range(rounds):
        raws.append(raw(steps))
        timed.append(ours(steps))
    return statistics.median(raws), statistics.median(timed)


def step_record(step: int) -> bytes:
    """The bytes one step of ``sequential`` appends: what a raw baseline writes."""
    record = ev.StepCompleted(
        step=step, at=time.time(), command="save", fingerprint="sequential.<locals>.<lambda>", value=b'{"i":1234}'
    )
    return ev.encode(record)


def sequential_step_us(conductor: Conductor, steps: int) -> float:
    """µs per step of one ``sequential`` run on ``conductor``'s backend."""
    conductor.register(sequential)
    with conductor.run(threads=2, poll_interval=0.01):
        run = conductor.start(sequential, steps)
        began = time.perf_counter()
        run.result(timeout=3600)
        elapsed = time.perf_counter() - began
    return elapsed / steps * 1e6


@workflow()
def one_step(c: Context, i: int) -> Any:
    """W2's workflow: one save."""
    return (yield c.save(lambda: job(i)))


@workflow()
def sleeper(c: Context) -> Any:
    """A run parked on a timer a day away."""
    yield c.sleep(86400)


@workflow()
def waiter(c: Context) -> Any:
    """A run parked on an event that never comes."""
    return (yield c.receive("never"))


@workflow()
def then_wait(c: Context, steps: int) -> Any:
    """``steps`` saves, then a wait for event "go": what a cold replay replays."""
    for i in range(steps):
        yield c.save(lambda i=i: job(i))
    yield c.receive("go")
    return steps


@workflow()
def turn_per_step(c: Context, steps: int) -> Any:
    """A save then a 1 ms sleep, ``steps`` times: every step after the first is a turn of its own."""
    for i in range(steps):
        yield c.save(lambda i=i: job(i))
        yield c.sleep(0.001)
    return steps


WORKFLOWS = (sequential, one_step, sleeper, waiter, then_wait, turn_per_step)
