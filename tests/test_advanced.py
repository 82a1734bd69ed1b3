"""Advanced primitives: patched (versioning) and revert (compensations)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from substantial import (
    Conductor,
    Context,
    NonDeterminismError,
    Retry,
    RunFailed,
    RunReverted,
    RunStatus,
    StepFailed,
    workflow,
)
from substantial import events as ev
from substantial.backends import MemoryBackend
from substantial.codec import JSONCodec
from substantial.replay import Execution

codec = JSONCodec()
done: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    done.clear()


def run_all(ex: Execution) -> list[ev.Record]:
    records: list[ev.Record] = []
    while True:
        progress = ex.advance(lambda: 1000.0)
        records.extend(progress.records)
        if progress.state != "running":
            return records


def started() -> ev.RunStarted:
    return ev.RunStarted(message_id="start", workflow="wf", queue="q", args=codec.encode({"args": [], "kwargs": {}}))


def saved(step: int, fingerprint: str, value: Any, command: str = "save") -> ev.StepCompleted:
    return ev.StepCompleted(step=step, command=command, fingerprint=fingerprint, value=codec.encode(value))


def step_a() -> str:
    done.append("a")
    return "a"


def step_old() -> str:
    done.append("old")
    return "old"


def step_new() -> str:
    done.append("new")
    return "new"


@workflow("wf")
def patched_wf(c: Context) -> Any:
    yield c.save(step_a)
    if (yield c.patched("use-new")):
        return (yield c.save(step_new))
    return (yield c.save(step_old))


def test_patched_is_false_for_runs_whose_history_went_past_it() -> None:
    ex = Execution("r", patched_wf, codec, [started(), saved(0, "step_a", "a"), saved(1, "step_old", "old")])
    records = run_all(ex)
    assert codec.decode(records[-1].value) == "old" and done == []


def test_patched_is_true_and_recorded_for_runs_that_reach_it_after_the_deploy() -> None:
    live = run_all(Execution("r", patched_wf, codec, [started()]))
    assert [type(r).__name__ for r in live] == ["StepCompleted", "PatchMarked", "StepCompleted", "RunCompleted"]
    assert codec.decode(live[-1].value) == "new"
    done.clear()
    replayed = run_all(Execution("r", patched_wf, codec, [started(), *live[:-1]]))  # cold replay decides the same
    assert codec.decode(replayed[-1].value) == "new" and done == []


def test_a_run_waiting_before_the_patch_takes_the_new_code() -> None:
    ex = Execution("r", patched_wf, codec, [started(), saved(0, "step_a", "a")])
    records = run_all(ex)
    assert codec.decode(records[-1].value) == "new" and done == ["new"]


def test_non_determinism_is_still_detected_across_patched() -> None:
    @workflow("wf")
    def changed_new_branch(c: Context) -> Any:
        yield c.save(step_a)
        if (yield c.patched("use-new")):
            return (yield c.save(step_old))  # the patched branch itself changed
        return None

    log = [started(), saved(0, "step_a", "a"), ev.PatchMarked(change_id="use-new"), saved(1, "step_new", "new")]
    with pytest.raises(NonDeterminismError, match="step_new"):
        run_all(Execution("r", changed_new_branch, codec, log))


def compensation(name: str) -> Any:
    return lambda: done.append(f"undo {name}")


@workflow()
def books_then_reverts(c: Context) -> Any:
    yield c.save(lambda: done.append("flight") or "flight", compensate_with=compensation("flight"))
    yield c.save(lambda: done.append("no undo") or 1)
    yield c.sleep(0.01)
    yield c.save(lambda: done.append("hotel") or "hotel", compensate_with=compensation("hotel"))
    yield c.revert()
    done.append("never reached")


def test_revert_runs_compensations_newest_first_once_and_ends_reverted(conductor: Conductor, run_worker: Any) -> None:
    conductor.register(books_then_reverts)
    run_worker()
    run = conductor.start(books_then_reverts)
    with pytest.raises(RunReverted, match="reverted"):
        run.result(timeout=10)
    assert done == ["flight", "no undo", "hotel", "undo hotel", "undo flight"]
    assert run.status() == RunStatus.REVERTED
    kinds = [(e.kind, e.command) for e in run.history() if e.step is not None]
    assert kinds[-3:] == [
        ("step_completed", "revert"),
        ("step_completed", "compensate"),
        ("step_completed", "compensate"),
    ]


def test_a_revert_cut_short_resumes_without_running_a_compensation_twice() -> None:
    @workflow("wf")
    def wf(c: Context) -> Any:
        yield c.save(step_a, compensate_with=compensation("a"))
        yield c.save(step_new, compensate_with=compensation("new"))
        yield c.revert()

    live = run_all(Execution("r", wf, codec, [started()]))
    assert done == ["a", "new", "undo new", "undo a"]
    cut = live.index(next(r for r in live if r.command == "compensate")) + 1  # the first compensation recorded
    done.clear()
    resumed = run_all(Execution("r", wf, codec, [started(), *live[:cut]]))
    assert done == ["undo a"]
    assert isinstance(resumed[-1], ev.RunReverted)


def test_a_failing_compensation_is_retried_then_fails_the_run_with_both_errors(
    conductor: Conductor, run_worker: Any
) -> None:
    def bad_undo() -> None:
        done.append("undo attempt")
        raise OSError("refund service down")

    @workflow()
    def wf(c: Context) -> Any:
        yield c.save(lambda: "charged", compensate_with=bad_undo, retry=Retry(max_attempts=2, initial=0))
        try:
            yield c.save(lambda: 1 / 0)
        except StepFailed:
            yield c.revert()

    conductor.register(wf)
    run_worker()
    run = conductor.start(wf)
    with pytest.raises(RunFailed) as e:
        run.result(timeout=10)
    assert done == ["undo attempt", "undo attempt"]
    assert e.value.error_type == "OSError"
    assert "refund service down" in e.value.message and "ZeroDivisionError" in e.value.message
    assert "ZeroDivisionError" in e.value.traceback and "refund service down" in e.value.traceback


@workflow()
def adds_up(c: Context, left: int, total: int) -> Any:
    total += yield c.receive("add")
    if left > 1:
        yield c.continue_using(adds_up, left - 1, total)
    return total


def test_continue_using_starts_a_fresh_history_and_carries_unconsumed_events(
    conductor: Conductor, run_worker: Any
) -> None:
    conductor.register(adds_up)
    run = conductor.start(adds_up, 3, 0)
    for value in (1, 10, 100):  # sent at once: the first history consumes one, the rest are carried
        run.send("add", value)
    run_worker()
    assert run.result(timeout=10) == 111
    info = run.info()
    assert info.generation == 2
    history = run.history()
    assert history[0].kind == "run_started" and history[0].detail["generation"] == 2
    assert history[0].value == {"args": [1, 11], "kwargs": {}}
    assert [e.kind for e in history].count("event_consumed") == 1  # only this generation's


def test_continue_using_hands_the_next_generation_to_the_worker() -> None:
    start = dataclasses.replace(started(), args=codec.encode({"args": [2, 0], "kwargs": {}}))
    sent = [ev.EventReceived(message_id=f"m{i}", name="add", payload=codec.encode(i)) for i in (5, 7)]
    ex = Execution("r", adds_up, codec, [start, *sent])
    progress = ex.advance(lambda: 1000.0)
    assert progress.state == "continued"
    restart, *carried = progress.next_generation or []
    assert isinstance(restart, ev.RunStarted) and restart.generation == 1
    assert codec.decode(restart.args) == {"args": [1, 5], "kwargs": {}}
    assert carried == [sent[1]]  # the unconsumed event, with its id
    records = run_all(Execution("r", adds_up, codec, progress.next_generation or []))
    assert codec.decode(records[-1].value) == 12


def pause(name: str, seconds: float) -> str:
    time.sleep(seconds)
    done.append(name)
    return name


def test_the_saves_of_all_run_in_parallel() -> None:
    @workflow()
    def fan_out(c: Context) -> Any:
        return (yield c.all([c.save(lambda i=i: pause(f"s{i}", 0.3), key=f"s{i}") for i in range(4)]))

    conductor = Conductor(MemoryBackend())
    conductor.register(fan_out)
    with conductor.run(4, poll_interval=0.05):
        began = time.monotonic()
        assert conductor.start(fan_out).result(timeout=10) == ["s0", "s1", "s2", "s3"]
        assert time.monotonic() - began < 1.2  # four 0.3 s saves one after the other take 1.2 s


def test_all_gives_results_in_order_and_raises_the_first_failure_after_all_finished(
    conductor: Conductor, run_worker: Any
) -> None:
    def fail(message: str) -> None:
        done.append(message)
        raise ValueError(message)

    @workflow()
    def wf(c: Context) -> Any:
        values = yield c.all([c.save(lambda: "x", key="x"), c.sleep(0.05), c.receive("go")])
        try:
            yield c.all(
                [
                    c.save(lambda: fail("one"), key="f1"),
                    c.save(lambda: pause("ok", 0.05), key="ok"),
                    c.save(lambda: fail("two"), key="f2"),
                ]
            )
        except StepFailed as e:
            return [values, e.message, [o.message for o in e.others], sorted(done)]  # type: ignore[attr-defined]

    conductor.register(wf)
    run_worker()
    run = conductor.start(wf)
    run.send("go", "went")
    assert run.result(timeout=10) == [["x", None, "went"], "one", ["two"], ["ok", "one", "two"]]


def test_any_takes_the_first_to_complete_and_drops_the_losers(conductor: Conductor, run_worker: Any) -> None:
    @workflow()
    def wf(c: Context) -> Any:
        first = yield c.any([c.receive("never"), c.sleep(0.1), c.save(lambda: pause("slow", 1.0), key="slow")])
        again = yield c.any([c.receive("go"), c.sleep(30)])
        return [list(first), list(again)]

    conductor.register(wf)
    run_worker()
    run = conductor.start(wf)
    while "any" not in run.info().waiting_for or "go" not in run.info().waiting_for:
        time.sleep(0.01)
    run.send("never", "not consumed by the loser")
    run.send("go", "here")
    assert run.result(timeout=10) == [[1, None], [0, "here"]]
    kinds = [(e.kind, e.command) for e in run.history() if e.step is not None]
    assert ("timer_fired", "sleep") in kinds and kinds.count(
        ("timer_fired", "sleep")
    ) == 1  # the 30 s timer never fired
    assert ("step_completed", "save") not in kinds  # the slow loser's result is not recorded


def test_a_fan_out_replays_from_a_cold_log_and_detects_a_changed_branch() -> None:
    @workflow("wf")
    def wf(c: Context) -> Any:
        return (yield c.all([c.save(step_a), c.save(step_new)]))

    live = run_all(Execution("r", wf, codec, [started()]))
    assert codec.decode(live[-1].value) == ["a", "new"]
    done.clear()
    half = [r for r in live if isinstance(r, ev.StepCompleted)][:1]  # a fan-out half recorded
    resumed = run_all(Execution("r", wf, codec, [started(), *half]))
    assert codec.decode(resumed[-1].value) == ["a", "new"] and len(done) == 1

    @workflow("wf")
    def changed(c: Context) -> Any:
        return (yield c.all([c.save(step_a), c.save(step_old)]))

    with pytest.raises(NonDeterminismError, match="step_new"):
        run_all(Execution("r", changed, codec, [started(), *live[:-1]]))
