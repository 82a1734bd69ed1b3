"""Serve a conductor's runs in the foreground until SIGINT or SIGTERM.

What ``substantial worker``, ``flask substantial worker`` and
``manage.py substantial_worker`` run.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import NoReturn

from substantial import defaults
from substantial.conductor import Conductor

log = logging.getLogger("substantial.worker")

#: Seconds a foreground worker lets its turns finish once told to stop.
STOP_TIMEOUT = 30.0


def serve(
    conductor: Conductor,
    *,
    threads: int = defaults.THREADS,
    queues: Iterable[str] | None = None,
    stop_timeout: float = STOP_TIMEOUT,
    poll_interval: float = defaults.POLL_INTERVAL,
) -> int:
    """Serve ``conductor``'s runs until SIGINT or SIGTERM, then stop gracefully; return the exit code.

    Like ``substantial worker``: once signalled, the worker stops taking runs
    and waits up to ``stop_timeout`` seconds for the turns in progress, then
    returns 0; if turns are still running then, the process exits at once
    (their runs stay due for the next worker). A second signal exits at once
    with code 128 + its number. Call it from the main thread.
    """
    received: list[int] = []
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            print(f"substantial: {signal.Signals(signum).name} again: exiting now", file=sys.stderr, flush=True)
            _exit_now(128 + signum)
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = conductor.run(threads, queues=sorted(queues) if queues else None, poll_interval=poll_interval)
        log.info("worker %s serving queue(s) %s with %d thread(s)", worker.owner, ", ".join(worker.queues), threads)
        while not stop.wait(1.0):
            pass
        name = signal.Signals(received[0]).name
        log.info("%s: stopping, waiting up to %gs for turns in progress", name, stop_timeout)
        finished = worker.stop(timeout=stop_timeout)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not finished:
        log.warning("worker %s stopped with turns still running: their runs stay due for the next worker", worker.owner)
        _exit_now(0)  # the timeout bounds the stop: do not wait for the steps still running
    log.info("worker %s stopped", worker.owner)
    return 0


def _exit_now(code: int) -> NoReturn:
    """Exit without waiting for turn threads: as safe as a crash, since an unfinished turn leaves its run due."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
