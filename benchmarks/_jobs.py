"""What the benchmarks run: a trivial step, importable (RQ workers find it), and workflows of it."""

from __future__ import annotations

import time
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
