"""The seed's example, in Substantial's synchronous generator form.

A step that sometimes fails (retried durably), a durable sleep, an event the
workflow waits for, a handler for another event, and a condition to wait on.

    PYTHONPATH=src python examples/roulette.py
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import timedelta

from substantial import Conductor, Context, Retry, RunHandle, workflow
from substantial.backends import MemoryBackend

# Seeded so the run is the same every time: the first pull of the trigger
# fires (and is retried), the second does not.
_revolver = random.Random(1)


class Shot(Exception):
    """The roulette's failure."""


def roulette() -> int:
    if _revolver.random() < 1 / 6:
        print("roulette: shot!")
        raise Shot("shot!")
    print("roulette: click, 100")
    return 100


def multiply(a: float, b: float) -> float:
    return a * b


@dataclass
class State:
    cancelled: bool = False

    def update(self) -> None:
        self.cancelled = True


@workflow()
def example(c: Context):
    res = yield c.save(roulette, retry=Retry(max_attempts=5, initial=0.1, backoff=2.0))

    yield c.sleep(timedelta(seconds=1))
    res = yield c.save(lambda: multiply(res, 0.5))

    n = yield c.receive("by")
    res = yield c.save(lambda: multiply(res, n))

    s = State()
    c.handle("cancel", s.update)  # a callback that takes no argument

    yield c.ensure(lambda: s.cancelled)
    return res


def wait_until_waiting_for(run: RunHandle, prefix: str, timeout: float = 10.0) -> None:
    """Poll until the run is parked on something whose description starts with ``prefix``."""
    deadline = time.monotonic() + timeout
    while not run.info().waiting_for.startswith(prefix):
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run.id} is not waiting for {prefix!r}: {run.info()}")
        time.sleep(0.05)


def main() -> None:
    conductor = Conductor(MemoryBackend())
    conductor.register(example)

    with conductor.run(threads=4):  # a worker: poller thread + thread pool
        run = conductor.start(example)  # returns at once

        wait_until_waiting_for(run, "receive 'by'")
        print("status:", run.status(), "-", run.info().waiting_for)
        run.send("by", 2)

        wait_until_waiting_for(run, "ensure")
        print("status:", run.status(), "-", run.info().waiting_for)
        run.send("cancel")

        output = run.result(timeout=10)

    # JSON records 100 * 0.5 * 2 as the float 100.0; print it as the seed does.
    print(f"Final output {output:g}")


if __name__ == "__main__":
    main()
