"""The Worker: a poller thread that takes due runs and a pool that runs their turns."""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import TracebackType

from substantial import defaults
from substantial.backends.base import Backend, Claim
from substantial.codec import Codec
from substantial.errors import Conflict
from substantial.replay import Execution
from substantial.runs import Summary
from substantial.turn import Abandoned, Ended, Turn
from substantial.workflow import Registry

log = logging.getLogger("substantial.worker")

_LISTEN_JOIN = 5.0  # seconds stop() waits for the wake-up listener


__all__ = ["Ended", "StickyCache", "Worker"]  # Ended is made in turn.py; on_turn callbacks receive it


class StickyCache:
    """Suspended executions by run id, with the log version each has consumed (LRU)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[Execution, int]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, run_id: str) -> tuple[Execution, int] | None:
        with self._lock:
            return self._items.pop(run_id, None)

    def put(self, run_id: str, execution: Execution, version: int) -> None:
        if self.size <= 0:
            execution.close()
            return
        with self._lock:
            self._items[run_id] = (execution, version)
            evicted = self._items.popitem(last=False)[1][0] if len(self._items) > self.size else None
        if evicted is not None:
            evicted.close()

    def clear(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        for execution, _ in items:
            execution.close()


class Worker:
    """Serves runs of some queues from a backend until stopped.

    Made by ``Conductor.run``. Several workers, in one process or many, can
    share a backend: leases keep them off each other's runs and the
    conditional append keeps every result recorded once.
    """

    def __init__(
        self,
        backend: Backend,
        registry: Registry,
        codec: Codec,
        *,
        queues: Iterable[str],
        threads: int = defaults.THREADS,
        lease_ttl: float = defaults.LEASE_TTL,
        cache_size: int = defaults.CACHE_SIZE,
        poll_interval: float = defaults.POLL_INTERVAL,
        on_turn: Callable[[str, Ended | None], None] = lambda run_id, ended: None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.backend = backend
        self.queues = sorted(set(queues))
        self.threads = threads
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._registry = registry
        self._codec = codec
        self._on_turn = on_turn
        self._cache = StickyCache(cache_size)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="substantial-turn")
        # the saves of an all/any: a pool of their own, so turns never wait on their own pool
        self._steps = ThreadPoolExecutor(threads, thread_name_prefix="substantial-step")
        self._in_flight: dict[str, Future[None]] = {}
        self._turns: dict[str, Turn] = {}  # turns running now (a run in flight may still be queued)
        self._lock = threading.Lock()
        self._reserved = 0  # pool threads set aside for claims under way (see _claiming)
        self._timers: list[float] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._threads = [
            threading.Thread(target=self._poll_loop, name="substantial-poller", daemon=True),
            threading.Thread(target=self._renew_loop, name="substantial-leases", daemon=True),
        ]
        self._listener = (
            threading.Thread(target=self._listen_loop, name="substantial-listen", daemon=True)
            if backend.wakes_across_processes
            else None
        )

    # -- life cycle -----------------------------------------------------------

    def start(self) -> Worker:
        for thread in self._threads:
            thread.start()
        if self._listener is not None:
            self._listener.start()
        return self

    def wake(self) -> None:
        """Look for due runs now (a start or send was just posted)."""
        self._wake.set()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking runs and wait up to ``timeout`` for turns in progress.

        Turns still running then are abandoned at their next step boundary;
        their runs stay due, so another worker (or a restart) resumes them.
        Returns True if every turn finished.
        """
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join()
        if self._listener is not None:
            # its wait is bounded by a timeout, but a client library may not honour one on a broken
            # connection: the thread is a daemon, and closing the backend ends its wait
            self._listener.join(_LISTEN_JOIN)
        with self._lock:
            futures = list(self._in_flight.values())
        _, not_done = wait(futures, timeout)
        if not_done:
            self._abandon.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._steps.shutdown(wait=False, cancel_futures=True)
        self._cache.clear()
        return not not_done

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the poller --------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                took = self._take_due()
            except Exception:
                log.exception("polling the due index failed; retrying")
                took = False
            if not took:
                self._wake.wait(self._idle_wait())

    def _idle_wait(self) -> float:
        now = time.time()
        with self._lock:
            while self._timers and self._timers[0] <= now:
                heapq.heappop(self._timers)
            soonest = self._timers[0] - now if self._timers else self.poll_interval
        return max(0.0, min(self.poll_interval, soonest))

    def _take_due(self) -> bool:
        took = False
        for queue in self.queues:
            with self._claiming() as claim:
                if claim is None:
                    return took
                claimed = self.backend.claim_due(
                    queue, time.time(), self.owner, claim.ttl, limit=claim.limit, scan=claim.scan, skip=claim.skip
                )
                with self._lock:
                    for run_id in claimed:
                        if self._may_take(run_id):
                            self._in_flight[run_id] = self._pool.submit(self._turn, queue, run_id)
                            took = True
        return took

    @contextlib.contextmanager
    def _claiming(self) -> Iterator[Claim | None]:
        """A claim of due runs for the pool's free threads; None if none is free.

        The threads it may fill are set aside until the block ends, so claims at
        once never take more runs than there are threads; register what it took
        (``_may_take``) inside the block.
        """
        with self._lock:
            claim = self._claim(self.threads - len(self._in_flight) - self._reserved)
            if claim is not None:
                self._reserved += claim.limit
        try:
            yield claim
        finally:
            if claim is not None:
                with self._lock:
                    self._reserved -= claim.limit

    def _claim(self, limit: int, finishing: str | None = None) -> Claim | None:
        """Under ``_lock``: a claim of up to ``limit`` due runs, ``finishing``'s among them; None if none."""
        if limit <= 0 or self._stopping.is_set():
            return None
        busy = set(self._in_flight) - {finishing}
        # look past the runs this worker holds and a batch more: the earliest may be leased elsewhere
        return Claim(self.lease_ttl, limit, defaults.DUE_BATCH + len(busy), busy)

    def _may_take(self, run_id: str) -> bool:
        """Under ``_lock``: whether a run this worker just leased is its to run now.

        A lease is taken once, so a run in flight here is leased again only
        once its turn let the lease go (the new claim takes it over) or let
        it expire (the turn still running keeps it).
        """
        turn = self._turns.get(run_id)
        return run_id not in self._in_flight or (turn is not None and turn.letting_go)

    def _listen_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.backend.wait_for_work(self.queues, min(self.poll_interval, 0.5)):
                    self._wake.set()
            except Exception:
                log.exception("waiting for work failed; retrying")
                self._stopping.wait(self.poll_interval)

    def _renew_loop(self) -> None:
        """Renew the leases of runs in flight; show turns that last as running."""
        renewed = time.monotonic()
        while not self._stopping.wait(min(self.lease_ttl / 3, defaults.RUNNING_AFTER / 2)):
            with self._lock:
                runs, turns = list(self._in_flight), list(self._turns.values())
            for turn in turns:
                try:
                    turn.mark_running()
                except Exception:
                    log.exception("marking run %s running failed", turn.run_id)
            if time.monotonic() - renewed < self.lease_ttl / 3:
                continue
            renewed = time.monotonic()
            for run_id in runs:
                try:
                    if not self.backend.renew_lease(run_id, self.owner, self.lease_ttl) and self._holds(run_id):
                        log.warning("lost the lease of run %s; its next append decides", run_id)
                except Exception:
                    log.exception("renewing the lease of run %s failed", run_id)

    def _holds(self, run_id: str) -> bool:
        """Whether a turn of the run is in flight and keeps its lease (one letting it go, or that ended, does not)."""
        with self._lock:
            turn = self._turns.get(run_id)
            return run_id in self._in_flight and (turn is None or not turn.letting_go)

    # -- one turn ------------------------------------------------------------

    def _turn(self, queue: str, run_id: str) -> None:
        """Turns on this pool thread: this run's, then those of the runs each turn's close claimed."""
        next_run: str | None = run_id
        while next_run is not None:
            next_run = self._one_turn(queue, next_run)

    def _one_turn(self, queue: str, run_id: str) -> str | None:
        turn = Turn(self, queue, run_id)
        with self._lock:
            self._turns[run_id] = turn
            turn.slot = self._in_flight[run_id]
        try:
            turn.run()
        except (Conflict, Abandoned):
            pass  # the due entry is still there: the run gets another turn
        except BaseException as e:  # SystemExit from a step too: back off, never spin
            self._turn_failed(turn, e)
        finally:
            with self._lock:
                turn.letting_go = True
                ours = self._in_flight.get(run_id) is turn.slot  # else a claim took the run over
            try:
                if ours and not turn.released:
                    self.backend.release_lease(run_id, self.owner)
            except Exception:
                log.exception("releasing the lease of run %s failed", run_id)
            with self._lock:
                if turn.next_run != run_id and self._in_flight.get(run_id) is turn.slot:
                    del self._in_flight[run_id]
                if self._turns.get(run_id) is turn:
                    del self._turns[run_id]
            if turn.next_run is None:
                self._wake.set()  # a thread is free
            self._on_turn(run_id, turn.run_end)
        return turn.next_run

    def _turn_failed(self, turn: Turn, error: BaseException) -> None:
        """A turn that cannot run (non-determinism, unknown workflow, bad record): back off.

        The run's status stays what it was before the turn; the error is kept
        in its summary for ``info()`` and logged.
        """
        run_id = turn.run_id
        try:
            raw = self.backend.read_info(run_id)
            summary = Summary.from_bytes(raw) if raw else None
            failures = summary.turn_failures + 1 if summary else 1
            delay = min(defaults.TURN_RETRY_INITIAL * 2 ** (failures - 1), defaults.TURN_RETRY_MAX)
            log.error("run %s: turn failed, retrying in %.1fs: %s", run_id, delay, error, exc_info=error)
            if summary is not None:
                summary = summary.but(
                    status=turn.status_before or summary.status,
                    last_error=f"{type(error).__name__}: {error}",
                    turn_failures=failures,
                )
                self.backend.write_info(run_id, summary.to_bytes())
            self.backend.schedule(turn.queue, run_id, time.time() + delay)
        except Exception:
            log.exception("run %s: recording a failed turn failed", run_id)

    def note_due(self, due_at: float) -> None:
        with self._lock:
            heapq.heappush(self._timers, due_at)
