"""µs per save step on Redis against the raw conditional-append Lua round trip.

Run: python benchmarks/redis_step.py [steps]
Prints both, and their ratio (target: at most 1.5), with Redis keeping
nothing on disk and with appendfsync always.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from _redis import redis_server

from substantial import Conductor, Context, workflow
from substantial import events as ev
from substantial.backends import RedisBackend


def step(i: int) -> dict[str, int]:
    return {"i": i}


@workflow()
def sequential(c: Context, steps: int) -> Any:
    for i in range(steps):
        yield c.save(lambda i=i: step(i))
    return steps


def substantial_step_us(url: str, steps: int) -> float:
    conductor = Conductor(RedisBackend.from_url(f"{url}?prefix=bench-steps"))
    conductor.register(sequential)
    with conductor.run(threads=2, poll_interval=0.01):
        run = conductor.start(sequential, steps)
        began = time.perf_counter()
        run.result(timeout=3600)
        elapsed = time.perf_counter() - began
    conductor.backend.close()
    return elapsed / steps * 1e6


def raw_append_us(url: str, steps: int) -> float:
    """The floor: the same record appended by the same Lua script, one round trip per record."""
    backend = RedisBackend.from_url(f"{url}?prefix=bench-raw")
    record = ev.encode(
        ev.StepCompleted(
            step=steps, at=time.time(), command="save", fingerprint="sequential.<locals>.<lambda>", value=b'{"i":1234}'
        )
    )
    began = time.perf_counter()
    for version in range(steps):
        backend.append_log("raw", [record], version)
    elapsed = time.perf_counter() - began
    backend.close()
    return elapsed / steps * 1e6


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for label, args in [
        ("appendonly no", ("--appendonly", "no")),
        ("appendfsync always", ("--appendonly", "yes", "--appendfsync", "always")),
    ]:
        with redis_server(*args) as url:
            raw = raw_append_us(url, steps)
            ours = substantial_step_us(url, steps)
        print(f"Redis, {label}: raw conditional append {raw:8.1f} µs, save step {ours:8.1f} µs")
        print(f"  ratio {ours / raw:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
