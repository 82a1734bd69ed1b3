"""compact(): keyed steps keep only their last record, the log stays bounded, replay gives the same state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from substantial import Conductor, Context, StepFailed, workflow
from substantial import events as ev
from substantial.backends import MemoryBackend
from substantial.codec import JSONCodec
from substantial.outcomes import Progress
from substantial.replay import Execution

codec = JSONCodec()


@workflow()
def counter(c: Context, iterations: int, every: int) -> Any:
    """A loop whose state lives in keyed results: the shape compaction is for.

    A replay of the compacted log restarts the loop with the last ``state``,
    which leads it to the compaction again, as the live run was.
    """
    state = {"i": 0, "total": 0}
    while True:
        state = yield c.save(lambda s=state: {"i": s["i"] + 1, "total": s["total"] + s["i"]}, key="state")
        if state["i"] == iterations:
            return state["total"]
        if state["i"] % every == 0:
            yield c.compact()


def expected_total(iterations: int) -> int:
    return sum(range(iterations))


class MeasuredBackend(MemoryBackend):
    """A memory store that remembers the longest log it ever held."""

    def __init__(self) -> None:
        super().__init__()
        self.longest = 0

    def append_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        version = super().append_log(run_id, records, expected_version)
        self.longest = max(self.longest, version)
        return version


@pytest.mark.timeout(120)
def test_ten_thousand_iterations_keep_a_bounded_log() -> None:
    backend = MeasuredBackend()
    conductor = Conductor(backend)
    conductor.register(counter)
    with conductor.run(2, poll_interval=0.05):
        run = conductor.start(counter, 10_000, 50)
        assert run.result(timeout=100) == expected_total(10_000)
    # start + first save + 50 iterations of one save + the compaction's own record, give or take a turn
    assert 50 < backend.longest <= 60
    assert len(backend.read_log(run.id)[0]) <= 60


def test_compaction_works_on_every_backend_with_the_cache_on_and_off(conductor: Conductor, run_worker: Any) -> None:
    conductor.register(counter)
    run_worker()
    run = conductor.start(counter, 120, 10)
    assert run.result(timeout=60) == expected_total(120)
    kinds = [(e.kind, e.command) for e in run.history()]
    assert kinds.count(("step_completed", "save")) == 11 and kinds.count(("step_completed", "compact")) == 1


# -- the engine alone ------------------------------------------------------------


def started(*args: Any, workflow: str = counter.name) -> ev.RunStarted:
    return ev.RunStarted(
        message_id="start", workflow=workflow, queue="q", args=codec.encode({"args": args, "kwargs": {}})
    )


def advance_until(ex: Execution, state: str) -> tuple[list[ev.Record], Progress]:
    records: list[ev.Record] = []
    while True:
        progress = ex.advance(lambda: 1.0)
        records.extend(progress.records)
        if progress.state != "running":
            assert progress.state in state.split("|"), progress
            return records, progress


def drive(wf: Any, log: list[ev.Record]) -> list[ev.Record]:
    """Run to the end as a worker would, swapping in each compacted log; every record made."""
    made: list[ev.Record] = []
    while True:
        records, progress = advance_until(Execution("r", wf, codec, log), "continued|completed")
        made += records
        if progress.state == "completed":
            return made
        log = progress.next_generation or []


def test_the_compacted_log_replays_to_the_state_the_live_run_had() -> None:
    live = Execution("r", counter, codec, [started(7, 3)])
    records, progress = advance_until(live, "continued")
    assert len([r for r in records if r.command == "save"]) == 3  # i = 1, 2, 3
    compacted = progress.next_generation or []
    assert [type(r) for r in compacted] == [ev.RunStarted, ev.StepCompleted, ev.StepCompleted]
    (kept, marker) = compacted[1:]
    assert (kept.step, kept.command, codec.decode(kept.value)) == (0, "save", {"i": 3, "total": 3})
    assert (marker.step, marker.command, marker.keyed) == (1, "compact", True)
    # a cold replay goes on from i = 3 exactly as the live run would, and compacts again at i = 6
    cold = Execution("r", counter, codec, compacted)
    more, progress = advance_until(cold, "continued")
    assert [codec.decode(r.value)["i"] for r in more if r.command == "save"] == [4, 5, 6]
    assert [codec.decode(r.value) for r in (progress.next_generation or [])[1:]] == [{"i": 6, "total": 15}, 2]
    final, _ = advance_until(Execution("r", counter, codec, progress.next_generation or []), "completed")
    assert codec.decode(final[-1].value) == expected_total(7)


def test_log_lines_before_a_compaction_are_not_emitted_again() -> None:
    @workflow("logs")
    def logs(c: Context) -> Any:
        i = 0
        while i < 4:
            c.log.info("line %d", i)
            i = yield c.save(lambda i=i: i + 1, key="i")
            if i == 2:
                yield c.compact()
        return "done"

    records, progress = advance_until(Execution("r", logs, codec, [started(workflow="logs")]), "continued")
    cold = Execution("r", logs, codec, progress.next_generation or [])
    after, _ = advance_until(cold, "completed")
    lines = [r.message for r in [*records, *after] if isinstance(r, ev.Logged)]
    assert lines == ["line 0", "line 1", "line 2", "line 3"]


def test_events_consumed_by_dropped_steps_go_and_unconsumed_ones_stay() -> None:
    @workflow("inbox")
    def inbox(c: Context) -> Any:
        while True:
            n = yield c.receive("n", key="n")
            if n == 2:
                return n
            yield c.compact()

    sent = [ev.EventReceived(message_id=f"m{i}", name="n", payload=codec.encode(i)) for i in range(3)]
    _, first = advance_until(Execution("r", inbox, codec, [started(workflow="inbox"), *sent]), "continued")
    assert [r.message_id for r in first.next_generation or [] if isinstance(r, ev.EventReceived)] == ["m0", "m1", "m2"]
    _, second = advance_until(Execution("r", inbox, codec, first.next_generation or []), "continued")
    compacted = second.next_generation or []
    assert [r.message_id for r in compacted if isinstance(r, ev.EventReceived)] == ["m1", "m2"]  # m0's step is gone
    records, _ = advance_until(Execution("r", inbox, codec, compacted), "completed")
    assert codec.decode(records[-1].value) == 2


def test_a_compaction_replay_cannot_follow_fails_the_step_and_keeps_the_log() -> None:
    @workflow("mixed")
    def mixed(c: Context) -> Any:
        for i in range(3):
            yield c.save(lambda i=i: i, key="x")
            yield c.save(lambda: "no key")  # kept every time: a replay meets it where it never was
            try:
                yield c.compact()
            except StepFailed as e:
                return [i, e.error_type]
        return "compacted every time"

    records = drive(mixed, [started(workflow="mixed")])
    assert codec.decode(records[-1].value) == [1, "substantial.errors.CompactionError"]
    failed = [r for r in records if isinstance(r, ev.StepFailed)]
    assert len(failed) == 1 and failed[0].command == "compact" and "step 0" in failed[0].error.message


def test_children_started_after_a_compaction_get_new_ids() -> None:
    @workflow("child-loop")
    def child_loop(c: Context) -> Any:
        yield c.save(lambda: 0, key="x")
        yield c.compact()
        return (yield c.child("somewhere"))

    _, progress = advance_until(Execution("r", child_loop, codec, [started(workflow="child-loop")]), "continued")
    records, _ = advance_until(Execution("r", child_loop, codec, progress.next_generation or []), "waiting")
    (child,) = [r for r in records if isinstance(r, ev.ChildStarted)]
    assert child.child_id == "r.0.1.2"  # generation 0, first compaction, step 2
