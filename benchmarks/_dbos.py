"""W1, W2 and W3 on DBOS Transact, its system database on a throwaway PostgreSQL database.

The server is $SUBSTANTIAL_BENCH_POSTGRES_URL (default: the local one, trust
auth, user postgres); the database is created for the run and dropped after.
The idiomatic shape: a ``@DBOS.workflow`` calling a ``@DBOS.step``; W2 and W3
go through a queue of 8 (``worker_concurrency``) polled every 10 ms, and
through ``DBOS.start_workflow`` (DBOS's own thread pool, unbounded).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from _jobs import job
from dbos import DBOS, Queue, WorkflowHandle

SERVER = os.environ.get("SUBSTANTIAL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
POLL = 0.01


@DBOS.step()
def dbos_step(i: int) -> dict[str, int]:
    return job(i)


@DBOS.workflow()
def dbos_sequential(steps: int) -> int:
    for i in range(steps):
        dbos_step(i)
    return steps


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    """Yield the URL of a new database on the server; drop it afterwards."""
    name = f"substantial_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute("CHECKPOINT")  # flush now, not under the benchmarks that follow


@contextlib.contextmanager
def launched() -> Iterator[Queue]:
    """DBOS launched on a throwaway system database; yields the queue of 8."""
    with throwaway_database() as url:
        DBOS(config={"name": "substantial-bench", "system_database_url": url, "log_level": "WARNING"})
        DBOS.launch()
        logging.getLogger("dbos").setLevel(logging.WARNING)
        try:
            yield DBOS.register_queue("bench", worker_concurrency=8, polling_interval_sec=POLL)
        finally:
            DBOS.destroy()


#: How a batch of workflows is started: through the queue, or on DBOS's executor.
Starter = Callable[..., WorkflowHandle[Any]]


def starters(queue: Queue) -> dict[str, Starter]:
    return {"queue of 8": queue.enqueue, "executor": DBOS.start_workflow}


def w1_us_per_step(steps: int, repeats: int) -> float:
    """Median µs per step of one ``steps``-step workflow called directly, after a warm-up."""
    timings = []
    for attempt in range(repeats + 1):
        began = time.perf_counter()
        assert dbos_sequential(steps) == steps
        if attempt:
            timings.append((time.perf_counter() - began) / steps * 1e6)
    return statistics.median(timings)


def _batch(start: Starter, runs: int, steps: int) -> float:
    began = time.perf_counter()
    handles = [start(dbos_sequential, steps) for _ in range(runs)]
    results = [handle.get_result() for handle in handles]
    elapsed = time.perf_counter() - began
    assert results == [steps] * runs
    return elapsed


def w2_per_second(start: Starter, count: int, repeats: int) -> float:
    """Median one-step workflows per second, after a small warm-up."""
    _batch(start, min(count, 50), 1)
    return statistics.median(count / _batch(start, count, 1) for _ in range(repeats))


def w3_steps_per_second(start: Starter, runs: int, steps: int, repeats: int) -> float:
    """Median steps per second of ``runs`` concurrent workflows of ``steps`` steps."""
    _batch(start, min(runs, 10), steps)
    return statistics.median(runs * steps / _batch(start, runs, steps) for _ in range(repeats))
