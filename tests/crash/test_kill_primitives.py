"""kill -9 in the middle of the advanced primitives: a revert half done, a fan-out half recorded, a child running.

Each test lets a worker process run until a step blocks (it touches a marker
file first), kills the process there, starts another, and checks that the
run ends as it would have without the kill and that no recorded step ran again.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_processes import WorkerProcesses
from crash_workflows import fans_out, parent, read_executions, reverts, step_value
from test_kill import RESULT_TIMEOUT, wait_for

from substantial import Conductor, RunReverted

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="kill -9 needs POSIX signals"),
    pytest.mark.slow,
    pytest.mark.timeout(60),
]


def kill_where_it_blocks(workers: WorkerProcesses, marker: Path, also: Callable[[], bool] = lambda: True) -> None:
    first = workers.start(threads=2)
    wait_for(lambda: marker.exists() and also(), "the blocking step to start", workers)
    workers.kill(first)
    workers.start(threads=2)


def test_a_revert_cut_short_resumes_without_running_a_compensation_twice(
    conductor: Conductor, workers: WorkerProcesses, effects: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "blocked"
    run = conductor.start(reverts, str(effects), str(marker), run_id="reverts")
    kill_where_it_blocks(workers, marker)
    with pytest.raises(RunReverted):
        run.result(timeout=RESULT_TIMEOUT)
    runs = Counter(e.step for e in read_executions(effects))
    # saves once; compensations newest first: 12 recorded before the kill, 11 cut short by it, then 10
    assert runs == {0: 1, 1: 1, 2: 1, 12: 1, 11: 2, 10: 1}
    compensations = [e.fingerprint for e in run.history() if e.kind == "step_completed" and e.command == "compensate"]
    assert len(compensations) == 3


def test_a_fan_out_half_recorded_resumes_running_only_the_rest(
    conductor: Conductor, workers: WorkerProcesses, effects: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "blocked"
    run = conductor.start(fans_out, str(effects), str(marker), run_id="fans")
    # the saves run side by side: wait for the quick one's record too, so the kill leaves the fan-out half recorded
    kill_where_it_blocks(workers, marker, lambda: any(e.kind == "step_completed" for e in run.history()))
    assert run.result(timeout=RESULT_TIMEOUT) == [step_value("fans", s) for s in (0, 1, 2)]
    assert Counter(e.step for e in read_executions(effects)) == {0: 1, 1: 2, 2: 1}


def test_a_child_running_when_its_worker_dies_finishes_and_its_parent_gets_the_result(
    conductor: Conductor, workers: WorkerProcesses, effects: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "blocked"
    run = conductor.start(parent, str(effects), str(marker), run_id="parent")
    kill_where_it_blocks(workers, marker)
    child = "parent.1"
    assert run.result(timeout=RESULT_TIMEOUT) == [
        step_value("parent", 0),
        [step_value(child, s) for s in (0, 1, 2)],
    ]
    runs = Counter((e.run_id, e.step) for e in read_executions(effects))
    assert runs == {("parent", 0): 1, (child, 0): 1, (child, 1): 2, (child, 2): 1}
    assert [info.id for info in conductor.list_runs(parent="parent")] == [child]
