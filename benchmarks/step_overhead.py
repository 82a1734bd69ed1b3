"""Cost per step of a long workflow on the memory backend, sticky cache on and off.

Prints µs per step and the ratio of the cost of steps 4,900-5,000 to steps
100-200: a flat cost per step gives a ratio near 1. Two shapes:

- consecutive saves: one turn runs them all (no replay whatever the cache);
- a turn per step: each save is followed by a short sleep, so the run parks
  and is taken again; without the sticky cache every turn replays the log.

Run: python benchmarks/step_overhead.py [steps]
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from substantial import Conductor, Context, workflow
from substantial.backends import MemoryBackend

marks: list[float] = []


def mark(i: int) -> dict[str, int]:
    marks.append(time.perf_counter())
    return {"i": i}


@workflow()
def consecutive(c: Context, steps: int) -> Any:
    for i in range(steps):
        yield c.save(lambda i=i: mark(i))
    return steps


@workflow()
def turn_per_step(c: Context, steps: int) -> Any:
    for i in range(steps):
        yield c.save(lambda i=i: mark(i))
        yield c.sleep(0.0001)
    return steps


def measure(wf: Callable[..., Any], steps: int, cache_size: int) -> tuple[float, float]:
    """µs per step over the run, and the ratio late/early cost per step."""
    marks.clear()
    conductor = Conductor(MemoryBackend())
    conductor.register(wf)
    with conductor.run(threads=2, cache_size=cache_size, poll_interval=0.01):
        began = time.perf_counter()
        conductor.start(wf, steps).result(timeout=3600)
        total = time.perf_counter() - began
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    early = statistics.fmean(gaps[100:200])
    late = statistics.fmean(gaps[steps - 101 : steps - 1])
    return total / steps * 1e6, late / early


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    cold_steps = min(steps, 1500)  # without the cache a turn per step is quadratic: keep it short
    rows = [
        ("consecutive saves", "on", steps, *measure(consecutive, steps, 1024)),
        ("consecutive saves", "off", steps, *measure(consecutive, steps, 0)),
        ("a turn per step", "on", steps, *measure(turn_per_step, steps, 1024)),
        ("a turn per step", "off", cold_steps, *measure(turn_per_step, cold_steps, 0)),
    ]
    print(f"{'shape':<20} {'cache':<6} {'steps':>6} {'µs/step':>10} {'late/early':>11}")
    for shape, cache, n, per_step, ratio in rows:
        print(f"{shape:<20} {cache:<6} {n:>6} {per_step:>10.1f} {ratio:>11.2f}")
    print("late/early: cost of the last 100 steps over steps 100-200 (target <= 1.2 with the cache)")


if __name__ == "__main__":
    main()
