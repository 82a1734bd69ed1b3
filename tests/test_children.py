"""child(): a run started by a run, waited for, cancelled with it; on every backend, cache on and off."""

from __future__ import annotations

from typing import Any

import pytest

from substantial import Conductor, Context, RunCancelled, RunStatus, StepFailed, workflow
from substantial import events as ev
from substantial.codec import JSONCodec
from substantial.replay import Execution

codec = JSONCodec()


@workflow()
def square(c: Context, n: int) -> Any:
    return (yield c.save(lambda: n * n))


@workflow()
def sums_squares(c: Context, n: int) -> Any:
    total = 0
    for i in range(1, n + 1):
        total += yield c.child(square, i)
    return total


@workflow()
def broken(c: Context) -> Any:
    yield c.save(lambda: None)
    raise ValueError("the child broke")


@workflow()
def waits_for_go(c: Context) -> Any:
    return (yield c.receive("go"))


@workflow()
def catches_child(c: Context) -> Any:
    try:
        yield c.child(broken)
    except StepFailed as e:
        return [e.error_type, e.message]


@workflow()
def waits_on_child(c: Context) -> Any:
    return (yield c.child(waits_for_go))


@workflow()
def races_children(c: Context) -> Any:
    both = yield c.all([c.child(square, 3), c.child(square, 4), c.save(lambda: "saved")])
    first = yield c.any([c.child(waits_for_go), c.receive("stop")])
    return [both, list(first)]


def registered(conductor: Conductor) -> Conductor:
    conductor.register(square, sums_squares, broken, waits_for_go, catches_child, waits_on_child, races_children)
    return conductor


def test_a_parent_waits_for_its_children_whose_ids_derive_from_its_own(conductor: Conductor, run_worker: Any) -> None:
    registered(conductor)
    run_worker()
    run = conductor.start(sums_squares, 3, run_id="parent")
    assert run.result(timeout=20) == 1 + 4 + 9
    children = conductor.list_runs(parent="parent")
    assert [(c.id, c.workflow, c.status) for c in children] == [
        (f"parent.{step}", square.name, RunStatus.COMPLETED) for step in range(3)
    ]
    assert conductor.get("parent.1").result() == 4 and conductor.get("parent.1").info().parent == "parent"
    assert run.info().parent == ""


def test_a_child_that_fails_raises_step_failed_in_its_parent(conductor: Conductor, run_worker: Any) -> None:
    registered(conductor)
    run_worker()
    assert conductor.start(catches_child).result(timeout=20) == ["ValueError", "the child broke"]


def test_cancelling_the_parent_cancels_its_child(conductor: Conductor, run_worker: Any) -> None:
    registered(conductor)
    run_worker()
    run = conductor.start(waits_on_child, run_id="p")
    wait_for_status(conductor, "p.0", RunStatus.WAITING)
    run.cancel("enough")
    with pytest.raises(RunCancelled, match="enough"):
        run.result(timeout=20)
    assert wait_for_status(conductor, "p.0", RunStatus.CANCELLED)


def test_all_and_any_over_children_cancel_the_losers(conductor: Conductor, run_worker: Any) -> None:
    registered(conductor)
    run_worker()
    run = conductor.start(races_children, run_id="r")
    wait_for_status(conductor, "r.3", RunStatus.WAITING)  # steps 0-2: the all; 3 and 4: the any
    run.send("stop", "stopped")
    assert run.result(timeout=20) == [[9, 16, "saved"], [1, "stopped"]]
    assert wait_for_status(conductor, "r.3", RunStatus.CANCELLED)  # the losing child


def test_a_child_of_a_finished_child_tells_the_parent_once(conductor: Conductor, run_worker: Any) -> None:
    """The parent's log holds one end per child however often the child's end was posted."""
    registered(conductor)
    run_worker()
    run = conductor.start(sums_squares, 2, run_id="once")
    assert run.result(timeout=20) == 5
    kinds = [e.kind for e in run.history()]
    assert kinds.count("child_ended") == 2 and kinds.count("child_started") == 2


def wait_for_status(conductor: Conductor, run_id: str, status: RunStatus, timeout: float = 20.0) -> bool:
    def reached() -> bool:
        try:
            return conductor.get(run_id).status() == status
        except Exception:
            return False

    assert conductor._wait_until(reached, timeout), f"run {run_id} never became {status}"
    return True


# -- the engine alone: replay and restarts ---------------------------------------


def started(*args: Any) -> ev.RunStarted:
    call = codec.encode({"args": list(args), "kwargs": {}})
    return ev.RunStarted(message_id="start", workflow=sums_squares.name, queue="default", args=call)


def child_started(step: int, n: int) -> ev.ChildStarted:
    args = codec.encode({"args": [n], "kwargs": {}})
    return ev.ChildStarted(
        step=step,
        command="child",
        fingerprint=square.name,
        child_id=f"r.{step}",
        workflow=square.name,
        queue="",
        args=args,
    )


def child_ended(step: int, value: int) -> ev.ChildEnded:
    return ev.ChildEnded(message_id=f"end{step}", child_id=f"r.{step}", status="completed", value=codec.encode(value))


def test_a_cold_replay_takes_child_results_from_the_log() -> None:
    log = [started(2), child_started(0, 1), child_ended(0, 1)]
    log += [ev.StepCompleted(step=0, command="child", fingerprint=square.name, value=codec.encode(1))]
    log += [child_started(1, 2), child_ended(1, 4)]
    ex = Execution("r", sums_squares, codec, log)
    progress = ex.advance(lambda: 1.0)
    assert progress.state == "completed"
    assert [type(r) for r in progress.records] == [ev.StepCompleted, ev.RunCompleted]
    assert codec.decode(progress.records[-1].value) == 5


def test_a_child_recorded_but_maybe_never_posted_is_started_again_after_a_restart() -> None:
    ex = Execution("r", sums_squares, codec, [started(2), child_started(0, 1)])
    progress = ex.advance(lambda: 1.0)
    assert progress.state == "waiting" and progress.records == [] and progress.waiting_for == "child r.0"
    assert [c.child_id for c in ex.children_waited()] == ["r.0"] and ex.children_dropped() == []


def test_a_child_started_live_is_recorded_before_it_is_posted() -> None:
    ex = Execution("r", sums_squares, codec, [started(1)])
    progress = ex.advance(lambda: 1.0)
    (record,) = progress.records
    assert isinstance(record, ev.ChildStarted) and record.child_id == "r.0"
    assert codec.decode(record.args) == {"args": [1], "kwargs": {}}
    ex.feed([child_ended(0, 1)])
    assert ex.advance(lambda: 2.0).state == "completed"


def test_child_ids_differ_across_generations_and_stay_valid_run_ids() -> None:
    long_id = "x" * 128
    restart = ev.RunStarted(
        message_id="start", workflow=sums_squares.name, queue="q", args=started(1).args, generation=2
    )
    (record,) = Execution(long_id, sums_squares, codec, [restart]).advance(lambda: 1.0).records
    assert isinstance(record, ev.ChildStarted) and len(record.child_id) <= 128 and record.child_id != f"{long_id}.0"
    (gen2,) = Execution("r", sums_squares, codec, [restart]).advance(lambda: 1.0).records
    assert isinstance(gen2, ev.ChildStarted) and gen2.child_id == "r.2.0.0"


@workflow()
def continues_past_its_child(c: Context, again: bool) -> Any:
    if again:
        yield c.any([c.child(waits_for_go), c.sleep(0.01)])
        yield c.continue_using(continues_past_its_child, False)
    return "next generation"


def test_a_child_left_running_by_continue_using_is_cancelled(conductor: Conductor, run_worker: Any) -> None:
    registered(conductor).register(continues_past_its_child)
    run_worker()
    assert conductor.start(continues_past_its_child, True, run_id="c").result(timeout=20) == "next generation"
    assert wait_for_status(conductor, "c.0", RunStatus.CANCELLED)
