"""What a turn asks of the store: one durable write per step; one opening read and one closing write per turn.

The counts are of the calls the worker makes; a store that has no faster way
does a composite (``open_turn``, ``close_turn``, ...) with the primitives,
which are not counted again.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future
from typing import Any

import pytest

from substantial import Conductor, Context, workflow
from substantial import events as ev
from substantial.backends import MemoryBackend
from substantial.turn import Turn

STEPS = 20


class CountingBackend(MemoryBackend):
    """A memory store that counts the calls a worker's turns make of each operation (not those made within one)."""

    def __init__(self, threads: str = "substantial-turn") -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.threads = threads
        self.depth = threading.local()

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name.startswith("_") or name in ("calls", "threads", "depth") or not callable(attribute):
            return attribute
        if not threading.current_thread().name.startswith(super().__getattribute__("threads")):
            return attribute  # the poller's and the test's own calls are not a turn's
        calls: Counter[str] = super().__getattribute__("calls")
        depth = super().__getattribute__("depth")

        def counted(*args: Any, **kwargs: Any) -> Any:
            outer = getattr(depth, "n", 0)
            if not outer:
                calls[name] += 1
            depth.n = outer + 1
            try:
                return attribute(*args, **kwargs)
            finally:
                depth.n = outer

        return counted


@workflow()
def steps(c: Context, count: int) -> Any:
    for i in range(count):
        yield c.save(lambda i=i: {"i": i})
    return count


@workflow()
def waits(c: Context) -> Any:
    first = yield c.receive("go")
    return [first, (yield c.save(lambda: "after"))]


def conductor_on(backend: CountingBackend) -> Conductor:
    conductor = Conductor(backend)
    conductor.register(steps, waits)
    return conductor


@pytest.mark.parametrize("cache_size", [1024, 0], ids=["cache-on", "cache-off"])
def test_consecutive_saves_cost_one_append_each_and_one_opening_and_closing(cache_size: int) -> None:
    backend = CountingBackend()
    conductor = conductor_on(backend)
    with conductor.run(1, poll_interval=0.01, cache_size=cache_size):
        assert conductor.start(steps, STEPS).result(timeout=10) == STEPS
    assert backend.calls == {
        "open_turn": 1,  # inbox, log and summary
        "append_log": STEPS - 1,  # one per step, the start with the first ...
        # ... and the last step's with the end: completed (a turn shorter than RUNNING_AFTER never shows
        # running), ack, unschedule, lease
        "close_turn": 1,
    }


def test_a_sticky_cache_hit_reads_only_past_its_version_within_the_opening() -> None:
    backend = CountingBackend()
    conductor = conductor_on(backend)
    with conductor.run(1, poll_interval=0.01):
        run = conductor.start(waits)
        assert conductor._wait_until(lambda: run.info().waiting_for != "", 10)
        first_turn = Counter(backend.calls)
        run.send("go", 1)
        assert run.result(timeout=10) == [1, "after"]
    second_turn = backend.calls - first_turn
    assert first_turn == {"open_turn": 1, "close_turn": 1}  # the start and the receive: appended by the close
    # the opening reads past the cached version (nothing): the cache is only used if nobody wrote since,
    # and no other read follows. (Skipping it on the summary's word would let a save recorded by a
    # worker that died before writing its summary run again: the crash tests caught that.)
    # the event ingested, consumed, the save and the end: one write, the close's
    assert second_turn == {"open_turn": 1, "close_turn": 1}


def test_a_cached_execution_behind_its_log_is_replaced_even_by_a_turn_that_appends_nothing() -> None:
    """As after a worker that died between its append and its summary: the summary's version is stale."""
    backend = CountingBackend()
    conductor = conductor_on(backend)
    with conductor.run(1, poll_interval=0.01):
        run = conductor.start(waits)
        assert conductor._wait_until(lambda: run.info().waiting_for != "", 10)
        version = backend.read_log(run.id)[1]
        finish = [
            ev.EventReceived(message_id="m", name="go", payload=b'"elsewhere"'),
            ev.EventConsumed(step=0, command="receive", fingerprint="go", message_id="m"),
            ev.StepCompleted(step=1, command="save", fingerprint="waits.<locals>.<lambda>", value=b'"after"'),
            ev.RunCompleted(value=b'["elsewhere","after"]'),
        ]
        backend.append_log(run.id, [ev.encode(r) for r in finish], version)
        backend.schedule(waits.queue, run.id, 0.0)  # a turn that finds nothing new to do
        assert run.result(timeout=10) == ["elsewhere", "after"]


def test_a_start_writes_the_summary_and_posts_and_looks_up_only_an_id_it_was_given() -> None:
    backend = CountingBackend(threads="")
    conductor = conductor_on(backend)
    conductor.start(steps, 1)
    assert backend.calls == {"start_run": 1}  # the summary, then the start message
    backend.calls.clear()
    conductor.start(steps, 1, run_id="given")
    conductor.start(steps, 1, run_id="given")  # idempotent: the second finds the run, posts its start again
    assert backend.calls == {"read_info": 2, "start_run": 1, "post": 1}


def test_a_result_reads_nothing_for_an_end_its_worker_kept_else_the_summary_and_the_record_it_points_at() -> None:
    backend = CountingBackend(threads="MainThread")
    conductor, elsewhere = conductor_on(backend), conductor_on(backend)  # elsewhere: as another process
    with conductor.run(1, poll_interval=0.01):
        run = conductor.start(steps, 3)
        assert conductor._wait_until(lambda: run.status().finished, 10)
        backend.calls.clear()
        assert run.result(timeout=10) == 3
        assert backend.calls == {}  # the end, as this conductor's worker recorded it for this handle's run
        backend.calls.clear()
        assert elsewhere.get(run.id).result(timeout=10) == 3
        assert backend.calls == {"read_info": 2, "read_log": 1}  # get, result; the record at the summary's version


def test_a_kept_end_is_not_taken_for_that_of_a_later_run_under_the_same_id() -> None:
    backend = CountingBackend()
    conductor = conductor_on(backend)
    with conductor.run(1, poll_interval=0.01):
        assert conductor.start(steps, 1, run_id="again").result(timeout=10) == 1
    backend.delete_run("again")
    elsewhere = conductor_on(backend)  # as another process: this conductor's workers keep no end of its runs
    with elsewhere.run(1, poll_interval=0.01):
        assert elsewhere.start(steps, 2, run_id="again").result(timeout=10) == 2
    assert conductor.get("again").result(timeout=10) == 2


def test_a_thread_goes_on_with_the_run_its_turns_close_claimed_without_the_poller() -> None:
    backend = CountingBackend(threads="substantial-poller")
    conductor = conductor_on(backend)
    runs = [conductor.start(steps, 1) for _ in range(20)]  # all due before the worker starts
    with conductor.run(1, poll_interval=30):  # the poller polls when woken: at start, when a thread is free
        assert [run.result(timeout=10) for run in runs] == [1] * 20
    # the poller's first claim takes one run (one thread); each turn's close claims the next; the last
    # turn's claims nothing and wakes the poller, which finds nothing either
    assert backend.calls["claim_due"] <= 3


def test_a_run_whose_turn_lets_its_lease_go_is_not_taken_for_a_lost_lease() -> None:
    # between a close that released the lease and the turn's end, the run is still in flight: the lease
    # thread must not warn of a lost lease then, nor for a run whose turns are over
    worker = conductor_on(CountingBackend()).run(1, poll_interval=30)
    try:
        turn = Turn(worker, "default", "r")
        with worker._lock:
            worker._in_flight["r"] = Future()
            worker._turns["r"] = turn
        assert worker._holds("r")
        turn.letting_go = True
        assert not worker._holds("r")
        with worker._lock:
            del worker._in_flight["r"], worker._turns["r"]
        assert not worker._holds("r")
    finally:
        worker.stop()
