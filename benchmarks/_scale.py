"""How Substantial scales: parked runs, worker processes, and cold replay of a long log."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from _jobs import sleeper, then_wait, waiter
from _substantial import POLL, await_all, conductor_on, start, w2_batch, w2_per_second, w3_batch

from substantial import Conductor, RunHandle, RunStatus
from substantial.backends import Backend, FSBackend, from_url


def wait_for_status(runs: Sequence[RunHandle], done: Sequence[RunStatus], pause: float = 0.005) -> None:
    """Poll each run's summary until its status is one of ``done``."""
    for run in runs:
        while run.status() not in done:
            time.sleep(pause)


def _finished(runs: Sequence[RunHandle], pause: float = 0.005) -> None:
    for run in runs:
        while not run.status().finished:
            time.sleep(pause)


# -- parked runs ---------------------------------------------------------------


def _fast_writer(url: str) -> Backend:
    """The store at ``url``; on files, without fsync (the same files, only not flushed one by one)."""
    parsed = urlparse(url)
    return FSBackend(parsed.path, fsync=False) if parsed.scheme == "file" else from_url(url)


#: What a parked run is made of: its log records, its summary, its due time (None: waiting for an event).
Parked = tuple[list[bytes], bytes, float | None]


def _copy_parked(url: str, templates: Sequence[Parked], first: int, stop: int) -> None:
    """Write parked runs ``first`` to ``stop`` (ids ``parked-N``), alternating between the templates."""
    writer = _fast_writer(url)

    def copy(n: int) -> None:
        records, info, due_at = templates[n % len(templates)]
        run_id = f"parked-{n}"
        writer.write_info(run_id, info)
        writer.append_log(run_id, records, 0)
        if due_at is not None:
            writer.schedule(sleeper.queue, run_id, due_at)

    with ThreadPoolExecutor(2) as pool:
        for _ in pool.map(copy, range(first, stop), chunksize=64):
            pass
    writer.close()


def park(url: str, count: int, processes: int = 2) -> float:
    """Add ``count`` parked runs to the store, half asleep for a day, half waiting for an event.

    One run of each is parked by a worker; the others are copies of its log,
    summary and due entry, written through the backend API by ``processes``
    processes. Returns the seconds it all took.
    """
    began = time.perf_counter()
    conductor = conductor_on(url)
    with conductor.run(threads=2, poll_interval=POLL):
        runs = [start(conductor, sleeper), start(conductor, waiter)]
        wait_for_status(runs, [RunStatus.WAITING])
    templates: list[Parked] = []
    for run in runs:
        records, _ = conductor.backend.read_log(run.id)
        info = conductor.backend.read_info(run.id)
        assert info is not None
        due_at = run.info().due_at
        templates.append((records, info, due_at.timestamp() if due_at else None))
    conductor.backend.close()
    share = -(-(count - 2) // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = [
            pool.submit(_copy_parked, url, templates, first, min(first + share, count - 2))
            for first in range(0, count - 2, share)
        ]
        for future in done:
            future.result()
    return time.perf_counter() - began


def w2_on(url: str, count: int) -> float:
    """W2 per second: one batch of ``count`` on a fresh conductor, after a warm-up batch."""
    conductor = conductor_on(url)
    rate = w2_per_second(conductor, count, 1)
    conductor.backend.close()
    return rate


def parked_w2(empty_url: str, parked_url: str, parked: int, count: int, repeats: int) -> tuple[float, float, float]:
    """W2 per second on a store with no parked run, the seconds to park ``parked`` runs in another, W2 per second there.

    The two stores are measured in turn, a batch each per round (medians of
    ``repeats``): measured one after the other, the ratio moved with this
    machine's drift, by more than the 20% it is held to.
    """
    took = park(parked_url, parked)
    empty, full = [], []
    for _ in range(repeats):
        empty.append(w2_on(empty_url, count))
        full.append(w2_on(parked_url, count))
    return statistics.median(empty), took, statistics.median(full)


# -- worker processes ------------------------------------------------------------


@contextlib.contextmanager
def worker_processes(url: str, processes: int, threads: int = 8) -> Iterator[None]:
    """``processes`` worker processes serving the store at ``url``; stopped on exit."""
    script = Path(__file__).with_name("_serve.py")
    started = [
        subprocess.Popen(
            [sys.executable, str(script), url, str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for process in started:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker process did not start")
        yield
    finally:
        for process in started:
            assert process.stdin is not None
            process.stdin.close()
        for process in started:
            process.wait(timeout=60)


def w2_processes(url: str, processes: int, count: int, repeats: int) -> float:
    """W2 workflows per second served by ``processes`` worker processes; this one only starts and watches."""

    def rate(client: Conductor, batch: int) -> float:
        return batch / w2_batch(client, batch, wait=_finished)

    return _served(url, processes, rate, count, repeats)


def w3_processes(url: str, processes: int, runs: int, steps: int, repeats: int) -> float:
    """W3 steps per second served by ``processes`` worker processes; this one only starts and watches."""

    def rate(client: Conductor, batch: int) -> float:
        return batch * steps / w3_batch(client, batch, steps, wait=_finished)

    return _served(url, processes, rate, runs, repeats)


def _served(url: str, processes: int, rate: Callable[[Conductor, int], float], size: int, repeats: int) -> float:
    """The median of ``repeats`` batches of ``size`` runs, after a warm-up of 10, with worker processes."""
    client = conductor_on(url)
    with worker_processes(url, processes):
        rate(client, min(size, 10))
        median = statistics.median(rate(client, size) for _ in range(repeats))
    client.backend.close()
    return median


# -- cold replay -------------------------------------------------------------------


def prepare_replays(url: str, steps: int, count: int) -> list[str]:
    """Ids of ``count`` runs of ``steps`` saves each, parked waiting for event "go" (built without fsync)."""
    conductor = conductor_on(_fast_writer(url))
    with conductor.run(threads=2, poll_interval=POLL):
        runs = [start(conductor, then_wait, steps) for _ in range(count)]
        wait_for_status(runs, [RunStatus.WAITING], pause=0.05)
    conductor.backend.close()
    return [run.id for run in runs]


def cold_replay_ms(url: str, run_ids: Sequence[str]) -> list[float]:
    """Ms from sending "go" to the result of each run, on a worker with the sticky cache off."""
    conductor: Conductor = conductor_on(url)
    timings = []
    with conductor.run(threads=2, cache_size=0, poll_interval=POLL):
        for run_id in run_ids:
            run = conductor.get(run_id)
            began = time.perf_counter()
            run.send("go")
            await_all([run])
            timings.append((time.perf_counter() - began) * 1000)
    conductor.backend.close()
    return timings


def replay_ms_per_1000(url: str, sizes: Sequence[int], repeats: int) -> list[float]:
    """Median ms per 1,000 replayed steps of a cold turn at the end of a run of each size."""
    prepared = [prepare_replays(url, size, repeats) for size in sizes]
    ids = list(itertools.chain.from_iterable(zip(*prepared, strict=True)))  # sizes in turn, not one after the other
    timings = dict(zip(ids, cold_replay_ms(url, ids), strict=True))
    return [
        statistics.median(timings[i] for i in runs) / size * 1000 for size, runs in zip(sizes, prepared, strict=True)
    ]
