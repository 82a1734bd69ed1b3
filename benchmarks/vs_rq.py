"""1,000 one-step workflows through Substantial against 1,000 jobs through RQ, on one Redis.

Run: python benchmarks/vs_rq.py [count]   (needs `pip install rq`)
Both are timed from the first enqueue/start to the last result; RQ runs a
SimpleWorker (no fork) in burst mode, Substantial a worker of 1 and of 8
threads. Prints throughputs and the ratio (target: Substantial at least 1.5x).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import redis
from _jobs import job
from _redis import redis_server
from rq import Queue, SimpleWorker

from substantial import Conductor, Context, workflow
from substantial.backends import RedisBackend


@workflow()
def one_step(c: Context, i: int) -> Any:
    return (yield c.save(lambda: job(i)))


def rq_per_second(url: str, count: int) -> float:
    connection = redis.Redis.from_url(url)
    queue = Queue("bench", connection=connection)
    began = time.perf_counter()
    jobs = [queue.enqueue(job, i) for i in range(count)]
    SimpleWorker([queue], connection=connection).work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - began
    assert all(j.return_value() == {"i": i} for i, j in enumerate(jobs))
    connection.close()
    return count / elapsed


def substantial_per_second(url: str, count: int, threads: int) -> float:
    conductor = Conductor(RedisBackend.from_url(f"{url}?prefix=bench-{threads}"))
    conductor.register(one_step)
    with conductor.run(threads=threads, poll_interval=0.01):
        began = time.perf_counter()
        runs = [conductor.start(one_step, i) for i in range(count)]
        results = [run.result(timeout=600) for run in runs]
        elapsed = time.perf_counter() - began
    assert results == [{"i": i} for i in range(count)]
    conductor.backend.close()
    return count / elapsed


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with redis_server("--appendonly", "no") as url:
        rq = rq_per_second(url, count)
        one = substantial_per_second(url, count, 1)
        eight = substantial_per_second(url, count, 8)
    print(f"{count} one-step jobs on one Redis (appendonly no), start to all finished:")
    print(f"  RQ SimpleWorker:            {rq:8.0f} jobs/s")
    print(f"  Substantial, 1 thread:      {one:8.0f} workflows/s  ratio {one / rq:.2f}")
    print(f"  Substantial, 8 threads:     {eight:8.0f} workflows/s  ratio {eight / rq:.2f} (target >= 1.5)")


if __name__ == "__main__":
    main()
