"""µs per save step on Redis against the raw conditional-append Lua round trip.

Run: python benchmarks/redis_step.py [steps]
Prints both, and their ratio (target: at most 1.5), with Redis keeping
nothing on disk and with appendfsync always: the medians of five rounds of
``steps``, the raw loop and the save steps in turn.
"""

from __future__ import annotations

import itertools
import sys
import time

from _jobs import alternate, sequential_step_us, step_record
from _redis import redis_server

from substantial import Conductor
from substantial.backends import RedisBackend

ROUNDS = 5
HALT_POLL = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
_RAW_LOGS = itertools.count()  # a fresh log for each raw round


def substantial_step_us(url: str, steps: int) -> float:
    conductor = Conductor(RedisBackend.from_url(f"{url}?prefix=bench-steps"))
    per_step = sequential_step_us(conductor, steps)
    conductor.backend.close()
    return per_step


def raw_append_us(url: str, steps: int) -> float:
    """The floor: the same record appended by the same Lua script, one round trip per record."""
    backend = RedisBackend.from_url(f"{url}?prefix=bench-raw-{next(_RAW_LOGS)}")
    record = step_record(steps)
    began = time.perf_counter()
    for version in range(steps):
        backend.append_log("raw", [record], version)
    elapsed = time.perf_counter() - began
    backend.close()
    return elapsed / steps * 1e6


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    for label, args in [
        ("appendonly no", ("--appendonly", "no")),
        ("appendfsync always", ("--appendonly", "yes", "--appendfsync", "always")),
    ]:
        with redis_server(*args) as url:
            raw, ours = alternate(lambda n: raw_append_us(url, n), lambda n: substantial_step_us(url, n), steps, ROUNDS)
        print(f"Redis, {label}: raw conditional append {raw:8.1f} µs, save step {ours:8.1f} µs")
        print(f"  ratio {ours / raw:.2f} (target <= 1.5)")
    print(halt_polling())


def halt_polling() -> str:
    """The guest's idle polling, which moves the ratio: with none, an idle vCPU halts at once and a round trip
    that comes after some work pays for waking it (Linux's cpuidle-haltpoll; elsewhere, nothing to say)."""
    try:
        with open(HALT_POLL) as f:
            ns = int(f.read())
    except (OSError, ValueError):
        return "guest halt polling: not known here"
    return f"guest halt polling: {ns} ns ({HALT_POLL}; 0 means an idle vCPU halts at once)"


if __name__ == "__main__":
    main()
