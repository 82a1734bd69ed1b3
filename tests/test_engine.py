"""The replay engine alone: hand-built histories, a fake clock, no backend."""

from __future__ import annotations

from typing import Any

import pytest

from substantial import Context, NonDeterminismError, StepFailed, workflow
from substantial import events as ev
from substantial.codec import JSONCodec
from substantial.replay import Execution

codec = JSONCodec()


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def started(*args: Any) -> ev.RunStarted:
    return ev.RunStarted(
        message_id="start", workflow="wf", queue="default", args=codec.encode({"args": list(args), "kwargs": {}})
    )


def done(step: int, fingerprint: str, value: Any, command: str = "save") -> ev.StepCompleted:
    return ev.StepCompleted(step=step, command=command, fingerprint=fingerprint, value=codec.encode(value))


def execution(wf: Any, *log: ev.Record) -> Execution:
    return Execution("r1", wf, codec, list(log))


def run_all(ex: Execution, clock: Clock) -> list[ev.Record]:
    """Advance until the run waits or ends, as a worker would; return every new record."""
    out: list[ev.Record] = []
    while True:
        progress = ex.advance(clock)
        out.extend(progress.records)
        if progress.state != "running":
            return out


calls: list[str] = []


def step_a() -> int:
    calls.append("a")
    return 1


def step_b() -> int:
    calls.append("b")
    return 2


@workflow("wf")
def two_steps(c: Context) -> Any:
    a = yield c.save(step_a)
    b = yield c.save(step_b)
    return a + b


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


def test_a_fresh_run_records_each_save_then_the_end() -> None:
    ex = execution(two_steps, started())
    first = ex.advance(Clock())
    assert first.state == "running"
    assert [type(r) for r in first.records] == [ev.StepCompleted]  # one durable write per step
    rest = run_all(ex, Clock())
    assert [type(r) for r in rest] == [ev.StepCompleted, ev.RunCompleted]
    assert codec.decode(rest[-1].value) == 3
    assert calls == ["a", "b"]


def test_replay_returns_recorded_values_without_running_the_steps() -> None:
    ex = execution(two_steps, started(), done(0, "step_a", 10), done(1, "step_b", 20))
    records = run_all(ex, Clock())
    assert calls == []
    assert ex.state == "completed"
    assert codec.decode(records[-1].value) == 30


def test_replay_then_live_runs_only_what_the_log_lacks() -> None:
    ex = execution(two_steps, started(), done(0, "step_a", 10))
    records = run_all(ex, Clock())
    assert calls == ["b"]
    assert [r.step for r in records if isinstance(r, ev.StepCompleted)] == [1]


def test_a_replayed_ended_run_records_nothing() -> None:
    end = ev.RunCompleted(value=codec.encode(3))
    ex = execution(two_steps, started(), done(0, "step_a", 1), done(1, "step_b", 2), end)
    assert run_all(ex, Clock()) == []
    assert ex.state == "completed"


# -- non-determinism: one test per case ---------------------------------------


def test_changed_command_kind_is_detected() -> None:
    log = [started(), ev.TimerSet(step=0, command="sleep", fingerprint="", fire_at=1.0)]
    with pytest.raises(NonDeterminismError) as e:
        run_all(execution(two_steps, *log), Clock())
    message = str(e.value)
    assert "'r1'" in message and "step 0" in message and "sleep" in message and "save 'step_a'" in message
    assert calls == []


def test_changed_fingerprint_is_detected() -> None:
    with pytest.raises(NonDeterminismError, match=r"step 0.*'renamed'.*save 'step_a'"):
        run_all(execution(two_steps, started(), done(0, "renamed", 1)), Clock())
    assert calls == []


def test_a_command_missing_where_the_log_has_one_is_detected() -> None:
    @workflow("wf")
    def shorter(c: Context) -> Any:
        a = yield c.save(step_a)
        return a

    log = [started(), done(0, "step_a", 1), done(1, "step_b", 2)]
    with pytest.raises(NonDeterminismError, match=r"step 1.*save 'step_b'.*returned instead"):
        run_all(execution(shorter, *log), Clock())


def test_a_command_yielded_where_the_log_says_the_run_ended_is_detected() -> None:
    log = [started(), done(0, "step_a", 1), ev.RunCompleted(value=codec.encode(1))]
    with pytest.raises(NonDeterminismError, match=r"step 1.*run's end.*yielded save 'step_b'"):
        run_all(execution(two_steps, *log), Clock())
    assert calls == []


# -- retries, timers, receive, handle ---------------------------------------


def test_retry_records_attempts_and_waits_for_the_backoff() -> None:
    from substantial import Retry

    attempts: list[float] = []
    clock = Clock()

    def flaky() -> str:
        attempts.append(clock.now)
        if len(attempts) < 3:
            raise ValueError("no")
        return "ok"

    @workflow("wf")
    def wf(c: Context) -> Any:
        return (yield c.save(flaky, retry=Retry(max_attempts=3, initial=10, backoff=3)))

    ex = execution(wf, started())
    records = run_all(ex, clock)
    assert [type(r) for r in records] == [ev.StepAttempt]
    assert records[0].next_at == 1010.0
    assert ex.advance(clock).due_at == 1010.0  # not before its time
    clock.now = 1010.0
    records = run_all(ex, clock)
    assert [(type(r), getattr(r, "next_at", None)) for r in records] == [(ev.StepAttempt, 1040.0)]
    clock.now = 1040.0
    records = run_all(ex, clock)
    assert [type(r) for r in records] == [ev.StepCompleted, ev.RunCompleted]
    assert attempts == [1000.0, 1010.0, 1040.0]


def test_a_crash_mid_backoff_neither_resets_nor_skips_attempts() -> None:
    from substantial import Retry

    @workflow("wf")
    def wf(c: Context) -> Any:
        try:
            return (yield c.save(step_fails, retry=Retry(max_attempts=3, initial=5)))
        except StepFailed as e:
            return f"gave up after {e.attempts}"

    failure = ev.Failure("ValueError", "no")
    log = [
        started(),
        ev.StepAttempt(step=0, command="save", fingerprint="step_fails", attempt=1, error=failure, next_at=1005.0),
        ev.StepAttempt(step=0, command="save", fingerprint="step_fails", attempt=2, error=failure, next_at=1015.0),
    ]
    ex = execution(wf, *log)
    clock = Clock(1010.0)
    progress = ex.advance(clock)
    assert (progress.state, progress.due_at) == ("waiting", 1015.0)
    assert calls == []
    clock.now = 1015.0
    records = run_all(ex, clock)
    assert calls == ["fail"]  # exactly the third attempt, then no more
    assert isinstance(records[0], ev.StepFailed) and records[0].attempts == 3
    assert codec.decode(records[-1].value) == "gave up after 3"


def step_fails() -> None:
    calls.append("fail")
    raise ValueError("no")


def test_sleep_sets_a_timer_and_fires_only_when_due() -> None:
    @workflow("wf")
    def wf(c: Context) -> Any:
        yield c.sleep(60)
        return "woke"

    clock = Clock()
    ex = execution(wf, started())
    progress = ex.advance(clock)
    assert progress.state == "waiting" and progress.due_at == 1060.0
    assert [type(r) for r in progress.records] == [ev.TimerSet]
    clock.now = 1059.9
    assert ex.advance(clock).state == "waiting"
    clock.now = 1060.0
    assert [type(r) for r in run_all(ex, clock)] == [ev.TimerFired, ev.RunCompleted]


def sent(message_id: str, name: str, payload: Any) -> ev.EventReceived:
    return ev.EventReceived(message_id=message_id, name=name, payload=codec.encode(payload))


def test_receive_takes_events_in_send_order_and_replays_the_same() -> None:
    @workflow("wf")
    def wf(c: Context) -> Any:
        first = yield c.receive("x")
        second = yield c.receive("x")
        return [first, second]

    ex = execution(wf, started(), sent("m1", "x", 1))
    first = ex.advance(Clock())
    assert first.waiting_for == "receive 'x'"
    ex.feed([sent("m2", "x", 2)])
    live = run_all(ex, Clock())
    assert codec.decode(live[-1].value) == [1, 2]
    replayed = execution(wf, started(), sent("m1", "x", 1), *first.records, sent("m2", "x", 2), *live)
    assert run_all(replayed, Clock()) == [] and replayed.state == "completed"


def test_handle_sees_past_events_first_then_new_ones_in_log_order() -> None:
    seen: list[Any] = []

    @workflow("wf")
    def wf(c: Context) -> Any:
        yield c.sleep(1)
        c.handle("x", seen.append)
        yield c.ensure(lambda: len(seen) >= 3)
        return seen

    ex = execution(wf, started(), sent("m1", "x", "a"), sent("m2", "y", "-"), sent("m3", "x", "b"))
    clock = Clock()
    run_all(ex, clock)
    assert seen == []
    clock.now += 1
    assert ex.advance(clock).waiting_for.startswith("ensure")
    assert seen == ["a", "b"]
    ex.feed([sent("m4", "x", "c")])
    records = run_all(ex, clock)
    assert codec.decode(records[-1].value) == ["a", "b", "c"]


def test_values_from_now_random_uuid4_replay_identically() -> None:
    @workflow("wf")
    def wf(c: Context) -> Any:
        t = yield c.now()
        r = yield c.random()
        u = yield c.uuid4()
        return [t.timestamp(), r, str(u)]

    live = run_all(execution(wf, started()), Clock())
    again = execution(wf, started(), *live[:-1])
    records = run_all(again, Clock(5.0))
    assert codec.decode(records[-1].value) == codec.decode(live[-1].value)
    assert codec.decode(live[-1].value)[0] == 1000.0


def test_recorded_values_are_persisted_before_the_next_save_runs() -> None:
    @workflow("wf")
    def wf(c: Context) -> Any:
        key = yield c.uuid4()
        return (yield c.save(lambda: str(key), key="use-key"))

    ex = execution(wf, started())
    first = ex.advance(Clock())
    assert [type(r) for r in first.records] == [ev.StepCompleted] and first.records[0].command == "uuid4"
    assert calls == []


def test_log_records_are_made_once_and_skipped_on_replay() -> None:
    @workflow("wf")
    def wf(c: Context) -> Any:
        c.log.info("before %d", 1)
        yield c.sleep(1)
        c.log.warning("after")
        return None

    clock = Clock()
    ex = execution(wf, started())
    first = ex.advance(clock)
    assert [(type(r), getattr(r, "message", "")) for r in first.records] == [(ev.Logged, "before 1"), (ev.TimerSet, "")]
    clock.now += 1
    rest = run_all(ex, clock)
    assert [r.message for r in rest if isinstance(r, ev.Logged)] == ["after"]
    replay = run_all(execution(wf, started(), *first.records, *rest), clock)
    assert replay == []


def test_an_uncaught_error_fails_the_run_keeping_type_message_and_traceback() -> None:
    @workflow("wf")
    def wf(c: Context) -> Any:
        yield c.now()
        raise KeyError("missing")

    records = run_all(execution(wf, started()), Clock())
    end = records[-1]
    assert isinstance(end, ev.RunFailed)
    assert (end.error.type, end.error.message) == ("KeyError", "'missing'")
    assert 'raise KeyError("missing")' in end.error.traceback


def test_yielding_something_that_is_not_a_command_raises_inside_the_workflow() -> None:
    @workflow("wf")
    def wf(c: Context) -> Any:
        try:
            yield 42
        except TypeError as e:
            return str(e)

    records = run_all(execution(wf, started()), Clock())
    assert "yielded 42" in codec.decode(records[-1].value)
