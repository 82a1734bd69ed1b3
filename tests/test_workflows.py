"""Workflows run end to end by a Worker on the memory backend, sticky cache on and off."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from substantial import Conductor, Context, Retry, RunCancelled, RunStatus, StepFailed, workflow
from substantial.backends import MemoryBackend

effects: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    effects.clear()


def effect(name: str, value: Any = None) -> Any:
    effects[name] += 1
    return value if value is not None else name


@workflow()
def steps_across_turns(c: Context) -> Any:
    a = yield c.save(lambda: effect("a", 1))
    yield c.sleep(0.05)
    b = yield c.save(lambda: effect("b", 2))
    go = yield c.receive("go")
    d = yield c.save(lambda: effect("d", 3))
    return a + b + d + go


def test_a_completed_save_is_never_executed_again(conductor: Conductor, run_worker: Any) -> None:
    conductor.register(steps_across_turns)
    run_worker()
    run = conductor.start(steps_across_turns)
    while run.status() != RunStatus.WAITING or "receive" not in run.info().waiting_for:
        time.sleep(0.01)
    run.send("go", 10)
    assert run.result(timeout=10) == 16
    assert effects == {"a": 1, "b": 1, "d": 1}


def test_retry_makes_exact_attempts_spaced_by_the_backoff(conductor: Conductor, run_worker: Any) -> None:
    times: list[float] = []

    def flaky() -> str:
        times.append(time.monotonic())
        if len(times) < 4:
            raise ConnectionError("try again")
        return "ok"

    @workflow()
    def wf(c: Context) -> Any:
        return (yield c.save(flaky, retry=Retry(max_attempts=4, initial=0.1, backoff=2.0)))

    conductor.register(wf)
    run_worker()
    assert conductor.start(wf).result(timeout=10) == "ok"
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, delay in zip(gaps, [0.1, 0.2, 0.4], strict=True):
        assert delay <= gap < delay + 2.0


def test_exhausted_retries_raise_step_failed_inside_the_workflow(conductor: Conductor, run_worker: Any) -> None:
    @workflow()
    def wf(c: Context) -> Any:
        try:
            yield c.save(lambda: effect("x", None) and 1 / 0, retry=Retry(max_attempts=3, initial=0))
        except StepFailed as e:
            return [e.error_type, e.attempts, "ZeroDivisionError" in e.traceback]

    conductor.register(wf)
    run_worker()
    assert conductor.start(wf).result(timeout=10) == ["ZeroDivisionError", 3, True]
    assert effects["x"] == 3


def test_non_retryable_errors_stop_at_once(conductor: Conductor, run_worker: Any) -> None:
    def bad() -> None:
        effect("bad")
        raise ValueError("bad input")

    @workflow()
    def wf(c: Context) -> Any:
        try:
            yield c.save(bad, retry=Retry(max_attempts=5, initial=0, non_retryable=(ValueError,)))
        except StepFailed as e:
            return e.attempts

    conductor.register(wf)
    run_worker()
    assert conductor.start(wf).result(timeout=10) == 1
    assert effects["bad"] == 1


def test_sleep_does_not_resume_before_its_time(conductor: Conductor, run_worker: Any) -> None:
    @workflow()
    def wf(c: Context) -> Any:
        before = yield c.save(time.time)
        yield c.sleep(0.5)
        after = yield c.save(time.time)
        return after - before

    conductor.register(wf)
    run_worker()
    assert 0.5 <= conductor.start(wf).result(timeout=10) < 5


def test_sleeping_runs_hold_no_thread(cache_size: int) -> None:
    """A property of the worker, measured where storage adds least: the memory backend."""

    @workflow()
    def sleeper(c: Context, i: int) -> Any:
        yield c.sleep(1)
        return i

    conductor = Conductor(MemoryBackend())
    conductor.register(sleeper)
    began = time.monotonic()
    runs = [conductor.start(sleeper, i) for i in range(500)]
    with conductor.run(4, cache_size=cache_size, poll_interval=0.05):
        assert [r.result(timeout=30) for r in runs] == list(range(500))
    # 500 one-second sleeps on 4 threads: only possible if no thread waits them out
    assert time.monotonic() - began < 10


def test_receive_buffers_early_events_in_send_order_and_times_out(conductor: Conductor, run_worker: Any) -> None:
    @workflow()
    def wf(c: Context) -> Any:
        yield c.sleep(0.2)
        first = yield c.receive("x")
        second = yield c.receive("x")
        try:
            yield c.receive("never", timeout=0.2)
        except TimeoutError:
            return [first, second, "timed out"]

    conductor.register(wf)
    run = conductor.start(wf)
    run.send("x", "one")
    run.send("x", "two")
    run_worker()
    assert run.result(timeout=10) == ["one", "two", "timed out"]


def test_handle_and_ensure_follow_the_seed_example(conductor: Conductor, run_worker: Any) -> None:
    seen: list[Any] = []

    @workflow()
    def wf(c: Context) -> Any:
        state = {"cancelled": False, "notes": []}
        c.handle("note", state["notes"].append)
        c.handle("cancel", lambda: state.update(cancelled=True))  # no argument: called with none
        yield c.ensure(lambda: state["cancelled"])
        seen.append(list(state["notes"]))
        return state["notes"]

    conductor.register(wf)
    run_worker()
    run = conductor.start(wf)
    run.send("note", 1)
    while run.status() != RunStatus.WAITING:
        time.sleep(0.01)
    run.send("note", 2)
    run.send("cancel")
    assert run.result(timeout=10) == [1, 2]


def test_recorded_values_are_the_same_on_every_replay(conductor: Conductor, run_worker: Any) -> None:
    used: list[Any] = []

    @workflow()
    def wf(c: Context) -> Any:
        u = yield c.uuid4()
        r = yield c.random()
        t = yield c.now()
        yield c.sleep(0.05)
        yield c.receive("go")
        yield c.save(lambda: used.append((u, r, t)))
        return [str(u), r, t.timestamp()]

    conductor.register(wf)
    run_worker()
    run = conductor.start(wf)
    run.send("go")
    u, r, t = run.result(timeout=10)
    [(used_u, used_r, used_t)] = used
    assert (used_u, used_r, used_t.timestamp()) == (uuid.UUID(u), r, t)


def test_log_records_are_emitted_once(conductor: Conductor, run_worker: Any, caplog: pytest.LogCaptureFixture) -> None:
    @workflow()
    def wf(c: Context) -> Any:
        c.log.info("hello %s", "there")
        yield c.sleep(0.05)
        yield c.receive("go")
        c.log.warning("bye")
        return None

    conductor.register(wf)
    run_worker()
    with caplog.at_level(logging.INFO, logger="substantial.workflow"):
        run = conductor.start(wf)
        time.sleep(0.2)
        run.send("go")
        run.result(timeout=10)
    messages = [r.getMessage() for r in caplog.records if r.name == "substantial.workflow"]
    assert sum("hello there" in m for m in messages) == 1
    assert sum("bye" in m for m in messages) == 1


def test_cancel_raises_at_the_next_yield_and_finally_runs(conductor: Conductor, run_worker: Any) -> None:
    @workflow()
    def wf(c: Context) -> Any:
        try:
            yield c.receive("never")
        finally:
            yield c.save(lambda: effect("cleanup"))

    conductor.register(wf)
    run_worker()
    run = conductor.start(wf)
    while run.status() != RunStatus.WAITING:
        time.sleep(0.01)
    run.cancel("user asked")
    with pytest.raises(RunCancelled, match="user asked"):
        run.result(timeout=10)
    assert run.status() == RunStatus.CANCELLED
    assert effects["cleanup"] == 1


def test_an_uncaught_error_fails_the_run_and_result_raises_it(conductor: Conductor, run_worker: Any) -> None:
    from substantial import RunFailed

    @workflow()
    def wf(c: Context) -> Any:
        yield c.save(lambda: 1)
        raise LookupError("nothing here")

    conductor.register(wf)
    run_worker()
    run = conductor.start(wf)
    with pytest.raises(RunFailed) as e:
        run.result(timeout=10)
    assert (e.value.error_type, e.value.message) == ("LookupError", "nothing here")
    assert "nothing here" in e.value.traceback
    info = run.info()
    assert info.status == RunStatus.FAILED and info.error is not None and info.error.type == "LookupError"


def test_long_steps_keep_their_lease(conductor: Conductor, run_worker: Any) -> None:
    started = threading.Event()

    def long_step() -> str:
        effect("long")
        started.set()
        time.sleep(1.0)
        return "done"

    @workflow()
    def wf(c: Context) -> Any:
        return (yield c.save(long_step))

    conductor.register(wf)
    run_worker(threads=2, lease_ttl=0.3)
    run_worker(threads=2, lease_ttl=0.3)  # would take the run over if the lease lapsed
    run = conductor.start(wf)
    assert run.result(timeout=10) == "done"
    assert effects["long"] == 1


def test_many_runs_on_two_workers_each_step_once(conductor: Conductor, run_worker: Any) -> None:
    @workflow()
    def wf(c: Context, i: int) -> Any:
        a = yield c.save(lambda: effect(f"a{i}", i))
        yield c.sleep(0.01)
        b = yield c.save(lambda: effect(f"b{i}", i))
        return a + b

    conductor.register(wf)
    run_worker(threads=4)
    run_worker(threads=4)
    runs = [conductor.start(wf, i) for i in range(100)]
    assert [r.result(timeout=30) for r in runs] == [2 * i for i in range(100)]
    assert set(effects.values()) == {1}


def test_the_sticky_cache_continues_the_live_generator(conductor: Conductor, run_worker: Any, cache_size: int) -> None:
    entered: list[int] = []

    @workflow()
    def wf(c: Context) -> Any:
        entered.append(1)
        for _ in range(5):
            yield c.sleep(0.01)
        return None

    conductor.register(wf)
    run_worker()
    conductor.start(wf).result(timeout=10)
    # one generator with the cache; without it, one replay from the start per turn
    assert len(entered) == (1 if cache_size else 6)


class ListsTwice(MemoryBackend):
    """A store that lists every due run twice, as a files poll can while a due entry moves."""

    def due(self, queue: str, now: float, limit: int) -> list[str]:
        return [run_id for run_id in super().due(queue, now, limit) for _ in (0, 1)]


def test_a_run_listed_twice_gets_one_turn_at_a_time() -> None:
    @workflow()
    def wf(c: Context, i: int) -> Any:
        for step in range(3):
            yield c.save(lambda step=step: effect(f"{i}-{step}") and time.sleep(0.02))
            yield c.sleep(0.001)
        return i

    conductor = Conductor(ListsTwice())
    conductor.register(wf)
    with conductor.run(4, poll_interval=0.01, cache_size=0):
        assert [r.result(timeout=30) for r in [conductor.start(wf, i) for i in range(20)]] == list(range(20))
    assert set(effects.values()) == {1}
