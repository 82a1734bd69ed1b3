"""The Conductor and RunHandle: starting, finding, errors, and what other runs see of them."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

from substantial import (
    CodecError,
    Conductor,
    Context,
    InvalidRunId,
    PickleCodec,
    RunNotFound,
    RunStatus,
    StepFailed,
    UnknownWorkflow,
    workflow,
)
from substantial.backends import MemoryBackend

counter: list[str] = []


@workflow()
def echo(c: Context, value: Any) -> Any:
    counter.append("ran")
    return (yield c.save(lambda: value))


@workflow()
def waits(c: Context) -> Any:
    return (yield c.receive("go"))


@pytest.fixture(autouse=True)
def _reset() -> None:
    counter.clear()


def test_start_with_a_run_id_is_idempotent(conductor: Conductor, run_worker: Any) -> None:
    conductor.register(echo)
    first = conductor.start(echo, 1, run_id="order-1")
    second = conductor.start(echo, 2, run_id="order-1")
    assert first.id == second.id == "order-1"
    run_worker()
    assert second.result(timeout=10) == 1
    assert conductor.start(echo, 3, run_id="order-1").result(timeout=10) == 1
    assert counter == ["ran"]
    assert len(conductor.list_runs()) == 1


def test_a_run_is_pending_until_a_worker_takes_it(conductor: Conductor, run_worker: Any) -> None:
    conductor.register(echo)
    run = conductor.start(echo, 5)
    assert run.status() == RunStatus.PENDING
    run_worker()
    assert run.result(timeout=10) == 5
    assert run.status() == RunStatus.COMPLETED


def test_unknown_workflows_are_refused_at_start(conductor: Conductor) -> None:
    with pytest.raises(UnknownWorkflow, match="register"):
        conductor.start(echo, 1)
    with pytest.raises(UnknownWorkflow):
        conductor.start("no.such.workflow")
    assert conductor.list_runs() == []


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "/abs", ".hidden", "x\x00y", "x" * 129, "tab\there", 42])
def test_invalid_run_ids_are_refused(conductor: Conductor, bad: Any) -> None:
    conductor.register(echo)
    with pytest.raises(InvalidRunId, match="invalid run id"):
        conductor.start(echo, 1, run_id=bad)
    with pytest.raises(InvalidRunId):
        conductor.get(bad)


def test_get_an_unknown_run_raises(conductor: Conductor) -> None:
    with pytest.raises(RunNotFound):
        conductor.get("nope")


def test_unencodable_values_raise_codec_errors_and_harm_no_other_run(conductor: Conductor, run_worker: Any) -> None:
    @workflow()
    def bad_result(c: Context) -> Any:
        try:
            yield c.save(lambda: {1, 2})
        except StepFailed as e:
            return e.error_type

    @workflow()
    def bad_return(c: Context) -> Any:
        yield c.now()
        return object()

    conductor.register(echo, bad_result, bad_return, waits)
    with pytest.raises(CodecError, match="arguments"):
        conductor.start(echo, {1, 2})
    waiting = conductor.start(waits)
    with pytest.raises(CodecError, match="payload of event 'go'"):
        waiting.send("go", object())
    run_worker()
    good = conductor.start(echo, [1, 2])
    assert conductor.start(bad_result).result(timeout=10) == "substantial.errors.CodecError"
    failed = conductor.start(bad_return)
    with pytest.raises(Exception, match="CodecError"):
        failed.result(timeout=10)
    assert good.result(timeout=10) == [1, 2]
    waiting.send("go", "fine")
    assert waiting.result(timeout=10) == "fine"


def test_pickle_is_used_only_when_asked_for(run_worker: Any) -> None:
    conductor = Conductor(MemoryBackend(), codec=PickleCodec())
    conductor.register(echo)
    with conductor.run(threads=2, poll_interval=0.05):
        assert conductor.start(echo, {1, 2}).result(timeout=10) == {1, 2}


def test_a_start_or_send_wakes_the_worker_at_once(conductor: Conductor) -> None:
    conductor.register(waits)
    with conductor.run(threads=2, poll_interval=30):
        time.sleep(0.1)  # the poller is idle, in a 30 s wait
        began = time.monotonic()
        run = conductor.start(waits)
        while run.status() != RunStatus.WAITING:
            time.sleep(0.005)
        run.send("go", 1)
        assert run.result(timeout=5) == 1
        assert time.monotonic() - began < 5


def test_history_shows_decoded_events(conductor: Conductor, run_worker: Any) -> None:
    conductor.register(echo)
    run_worker()
    run = conductor.start(echo, {"a": 1})
    run.result(timeout=10)
    history = run.history()
    assert [e.kind for e in history] == ["run_started", "step_completed", "run_completed"]
    assert history[1].step == 0 and history[1].value == {"a": 1} and history[1].command == "save"
    assert "kind='step_completed', step=0, value={'a': 1}" in repr(history[1])


def test_list_runs_filters_by_status_and_workflow(conductor: Conductor, run_worker: Any) -> None:
    conductor.register(echo, waits)
    run_worker()
    done = conductor.start(echo, 1, run_id="done")
    parked = conductor.start(waits, run_id="parked")
    done.result(timeout=10)
    while parked.status() != RunStatus.WAITING:
        time.sleep(0.01)
    assert [r.id for r in conductor.list_runs()] == ["done", "parked"]
    assert [r.id for r in conductor.list_runs(status="waiting")] == ["parked"]
    assert [r.id for r in conductor.list_runs(workflow=echo)] == ["done"]
    assert parked.info().waiting_for == "receive 'go'"
    assert conductor.list_runs(limit=1)[0].id == "done"


def test_result_times_out_while_the_run_waits(conductor: Conductor, run_worker: Any) -> None:
    conductor.register(waits)
    run_worker()
    with pytest.raises(TimeoutError):
        conductor.start(waits).result(timeout=0.2)


def test_stop_finishes_turns_in_progress(conductor: Conductor) -> None:
    @workflow()
    def slow(c: Context) -> Any:
        return (yield c.save(lambda: time.sleep(0.5) or "slow done"))

    conductor.register(slow)
    worker = conductor.run(threads=2, poll_interval=0.05)
    run = conductor.start(slow)
    while run.status() != RunStatus.RUNNING:
        time.sleep(0.01)
    assert worker.stop(timeout=10) is True
    assert run.status() == RunStatus.COMPLETED


def test_a_run_abandoned_by_stop_is_resumed_by_another_worker(conductor: Conductor) -> None:
    @workflow()
    def two(c: Context) -> Any:
        yield c.save(lambda: time.sleep(1.5) or counter.append("first"))
        yield c.save(lambda: counter.append("second"))
        return "resumed"

    conductor.register(two)
    worker = conductor.run(threads=2, poll_interval=0.05, lease_ttl=1)
    run = conductor.start(two)
    while run.status() != RunStatus.RUNNING:  # shown once the turn has lasted RUNNING_AFTER (0.25 s)
        time.sleep(0.01)
    assert worker.stop(timeout=0.1) is False
    while worker._in_flight:  # the abandoned turn records its step, then stops before the next one
        time.sleep(0.01)
    assert counter == ["first"]
    with conductor.run(threads=2, poll_interval=0.05):
        assert run.result(timeout=10) == "resumed"
    assert counter == ["first", "second"]


def test_non_determinism_leaves_the_run_intact_until_the_code_is_fixed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemoryBackend()

    @workflow("shop.order")
    def v1(c: Context) -> Any:
        yield c.save(lambda: "charged", key="charge")
        return (yield c.receive("approve"))

    @workflow("shop.order")
    def v2(c: Context) -> Any:
        yield c.save(lambda: "charged twice", key="charge-again")
        return (yield c.receive("approve"))

    old = Conductor(backend)
    old.register(v1)
    with old.run(threads=1, poll_interval=0.05, cache_size=0):
        run = old.start(v1, run_id="o-1")
        while run.status() != RunStatus.WAITING:
            time.sleep(0.01)

    changed = Conductor(backend)
    changed.register(v2)
    with changed.run(threads=1, poll_interval=0.05):
        changed.get("o-1").send("approve", True)
        while not run.info().last_error:
            time.sleep(0.01)
    info = run.info()
    assert info.status == RunStatus.WAITING
    assert "NonDeterminismError" in info.last_error and "'charge'" in info.last_error
    assert "charge-again" in info.last_error and "step 0" in info.last_error
    assert any(r.levelname == "ERROR" and "o-1" in r.getMessage() for r in caplog.records)

    fixed = Conductor(backend)
    fixed.register(v1)
    with fixed.run(threads=1, poll_interval=0.05):
        assert fixed.get("o-1").result(timeout=10) is True
    assert run.info().last_error == ""


def test_a_step_raising_system_exit_backs_off_instead_of_spinning(conductor: Conductor, run_worker: Any) -> None:
    @workflow()
    def exits(c: Context) -> Any:
        yield c.save(lambda: counter.append("exit") or sys.exit(3))

    conductor.register(exits)
    run_worker()
    run = conductor.start(exits)
    while not run.info().last_error:
        time.sleep(0.01)
    time.sleep(0.5)  # the retry waits a second: in the meantime the step does not run again
    assert counter == ["exit"]
    assert "SystemExit" in run.info().last_error


def test_starting_an_existing_id_with_another_workflow_returns_the_existing_run(conductor: Conductor) -> None:
    @workflow(queue="other")
    def elsewhere(c: Context) -> Any:
        yield c.now()

    conductor.register(echo, elsewhere)
    conductor.start(echo, 1, run_id="taken")
    handle = conductor.start(elsewhere, run_id="taken")
    assert handle._queue == "default"
    assert conductor.get("taken").info().workflow == echo.name


def test_history_shows_the_reason_of_a_cancel(conductor: Conductor, run_worker: Any) -> None:
    conductor.register(waits)
    run_worker()
    run = conductor.start(waits)
    run.cancel("changed my mind")
    with pytest.raises(Exception, match="changed my mind"):
        run.result(timeout=10)
    assert [e.value for e in run.history() if e.kind == "cancel_requested"] == ["changed my mind"]


def test_history_names_events_and_keeps_attempt_details(conductor: Conductor, run_worker: Any) -> None:
    from substantial import Retry

    attempts: list[int] = []

    @workflow()
    def wf(c: Context) -> Any:
        yield c.save(lambda: attempts.append(1) or (len(attempts) > 1 or 1 / 0), retry=Retry(initial=0))
        return (yield c.receive("go"))

    conductor.register(wf)
    run_worker()
    run = conductor.start(wf)
    run.send("go", 7)
    assert run.result(timeout=10) == 7
    history = run.history()
    [received] = [e for e in history if e.kind == "event_received"]
    assert (received.fingerprint, received.value) == ("go", 7)
    [attempt] = [e for e in history if e.kind == "step_attempt"]
    assert attempt.detail["attempt"] == 1 and attempt.detail["next_at"] > 0
    assert attempt.value.type == "ZeroDivisionError"
