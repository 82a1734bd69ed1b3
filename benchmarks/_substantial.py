"""W1, W2 and W3 on Substantial, and the stores they run on."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from _jobs import WORKFLOWS, one_step, sequential
from _redis import redis_server

from substantial import Conductor, RunHandle, Workflow
from substantial.backends import Backend, from_url

POLL = 0.01  # the workers' idle poll, in seconds: DBOS's queue polls as often

#: A store: its label, and the URL of a fresh namespace in it by name (a folder, a key prefix).
Store = tuple[str, Callable[[str], str]]


#: Where the files store goes by default: beside the project, where a deployment keeps its data.
STORE_PARENT = Path(__file__).resolve().parent.parent / ".substantial"


def create_us(parent: str | Path, count: int = 200) -> float:
    """Median µs to make a folder with one empty file in it under ``parent``: what a run's start pays per name."""
    timings = []
    with tempfile.TemporaryDirectory(prefix="probe-", dir=parent) as folder:
        for i in range(count):
            began = time.perf_counter()
            os.mkdir(f"{folder}/{i}")
            os.close(os.open(f"{folder}/{i}/f", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            timings.append(time.perf_counter() - began)
    return statistics.median(timings) * 1e6


@contextlib.contextmanager
def stores(parent: str | Path = STORE_PARENT) -> Iterator[list[Store]]:
    """The three stores compared: files (in a fresh folder under ``parent``), Redis keeping nothing on disk,
    Redis fsyncing every write."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="substantial-bench-", dir=parent) as folder,
        redis_server("--appendonly", "no") as volatile,
        redis_server("--appendonly", "yes", "--appendfsync", "always") as durable,
    ):
        yield [
            ("files", lambda name: f"file://{Path(folder).resolve()}/{name}"),
            ("Redis appendonly no", lambda name: f"{volatile}?prefix={name}"),
            ("Redis appendfsync always", lambda name: f"{durable}?prefix={name}"),
        ]


def conductor_on(backend: Backend | str) -> Conductor:
    conductor = Conductor(from_url(backend) if isinstance(backend, str) else backend)
    conductor.register(*WORKFLOWS)
    return conductor


def start(conductor: Conductor, wf: Workflow, *args: object) -> RunHandle:
    """``conductor.start`` with an id it makes up, as a user starts runs."""
    return conductor.start(wf, *args)


def await_all(runs: Sequence[RunHandle], timeout: float = 600) -> list[object]:
    return [run.result(timeout=timeout) for run in runs]


def w1_us_per_step(conductor: Conductor, steps: int, repeats: int, threads: int = 8) -> float:
    """Median µs per step of one ``steps``-step run, start to result, after a warm-up run."""
    timings = []
    with conductor.run(threads=threads, poll_interval=POLL):
        for attempt in range(repeats + 1):
            began = time.perf_counter()
            assert start(conductor, sequential, steps).result(timeout=600) == steps
            if attempt:
                timings.append((time.perf_counter() - began) / steps * 1e6)
    return statistics.median(timings)


def w2_batch(conductor: Conductor, count: int, wait: Callable[[Sequence[RunHandle]], object] = await_all) -> float:
    """Seconds from the first start of ``count`` one-step runs to the last result."""
    began = time.perf_counter()
    runs = [start(conductor, one_step, i) for i in range(count)]
    wait(runs)
    elapsed = time.perf_counter() - began
    assert await_all(runs) == [{"i": i} for i in range(count)]
    return elapsed


def w3_batch(
    conductor: Conductor, runs: int, steps: int, wait: Callable[[Sequence[RunHandle]], object] = await_all
) -> float:
    """Seconds from the first start of ``runs`` runs of ``steps`` steps to the last result."""
    began = time.perf_counter()
    handles = [start(conductor, sequential, steps) for _ in range(runs)]
    wait(handles)
    elapsed = time.perf_counter() - began
    assert await_all(handles) == [steps] * runs
    return elapsed


def w2_per_second(conductor: Conductor, count: int, repeats: int) -> float:
    """Median one-step workflows per second over ``repeats`` batches, after a small warm-up."""
    with conductor.run(threads=8, poll_interval=POLL):
        w2_batch(conductor, min(count, 50))
        return statistics.median(count / w2_batch(conductor, count) for _ in range(repeats))


def w3_steps_per_second(conductor: Conductor, runs: int, steps: int, repeats: int) -> float:
    """Median steps per second of ``runs`` concurrent runs of ``steps`` steps, after a small warm-up."""
    with conductor.run(threads=8, poll_interval=POLL):
        w3_batch(conductor, min(runs, 10), steps)
        return statistics.median(runs * steps / w3_batch(conductor, runs, steps) for _ in range(repeats))
