"""kill -9 of worker processes: no recorded result and no accepted send is lost, no recorded step runs again.

DESIGN §6: "kill -9 at any instant loses no recorded result and no accepted
send; after restart every run finishes with the same result as without the
crash" and "a completed save is never executed again by replay".

Each save of the crash workflows leaves a durable line per execution (see
``crash_workflows``), so the tests can count executions across processes:
a save may run again only if the process running it was killed before its
result was recorded, so at most ``threads`` repeats per kill, none of them
after the step's record was appended. Kills are placed by a seeded
``random.Random`` on progress conditions (how many distinct steps have run),
never on fixed sleeps.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerProcesses
from crash_workflows import EVENT, EVENTS_PER_RUN, ChainShape, chain, read_executions, recover, step_value

from substantial import Conductor, RunHandle

SHAPE = ChainShape(saves=4)
HOLD = 0.01  # seconds each save works before its side effect
TOLERANCE = 1e-3  # seconds: clock text rounding between a side-effect line and a record's time

Sends = list[list[tuple[RunHandle, str]]]


# -- driving ------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, workers: WorkerProcesses, timeout: float = 30.0) -> None:
    """Poll ``condition`` until true; fail (naming ``what``) if a worker died on its own or time ran out."""
    deadline = time.monotonic() + timeout
    while not condition():
        workers.assert_alive()
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.005)


def start_chains(conductor: Conductor, effects: Path, count: int) -> list[RunHandle]:
    return [
        conductor.start(chain, str(effects), SHAPE.saves, HOLD, run_id=f"chain-{i:02d}") for i in range(count)
    ]


def plan_sends(rng: random.Random, runs: list[RunHandle], batches: int) -> Sends:
    """Every event of every run, in ``batches`` seeded-random batches; a run's events keep their order."""
    order = []
    for k in range(EVENTS_PER_RUN):
        wave = [(run, f"{run.id}:event-{k}") for run in runs]
        rng.shuffle(wave)
        order += wave
    cuts = [0, *sorted(rng.sample(range(1, len(order)), batches - 1)), len(order)]
    return [order[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


def send(batch: list[tuple[RunHandle, str]], sent: dict[str, list[str]]) -> None:
    for run, payload in batch:
        run.send(EVENT, payload)  # returned: accepted, so it must be delivered
        sent[run.id].append(payload)


def executed_steps(effects: Path) -> set[tuple[str, int]]:
    return {(e.run_id, e.step) for e in read_executions(effects)}


def advance_then_kill(
    rng: random.Random,
    effects: Path,
    sent: dict[str, list[str]],
    workers: WorkerProcesses,
    proc: subprocess.Popen[bytes],
    threads: int,
) -> None:
    """Let the workers run a seeded-random number of new steps, wait a seeded-random moment, kill ``proc``."""
    reachable = sum(SHAPE.saves + (len(payloads) == EVENTS_PER_RUN) for payloads in sent.values())
    done = len(executed_steps(effects))
    target = min(done + rng.randint(1, 3 * threads), reachable)
    wait_for(lambda: len(executed_steps(effects)) >= target, f"{target} distinct steps executed", workers)
    time.sleep(rng.uniform(0.0, 0.05))  # land between steps too: in an ingest, an append, a park
    workers.kill(proc)


def results_of(runs: list[RunHandle], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    return {run.id: run.result(timeout=max(deadline - time.monotonic(), 0.1)) for run in runs}


# -- checking -----------------------------------------------------------------


def check_histories(runs: list[RunHandle], sent: dict[str, list[str]]) -> dict[tuple[str, int], float]:
    """Every step recorded exactly once, every send ingested once in send order; the time of each save's record."""
    recorded_at = {}
    for run in runs:
        history = run.history()
        kinds = Counter(e.kind for e in history if e.step is None)
        assert kinds == {"run_started": 1, "event_received": EVENTS_PER_RUN, "run_completed": 1}, (run.id, history)
        assert history[-1].kind == "run_completed", (run.id, history)
        received = [e.value for e in history if e.kind == "event_received"]
        assert received == sent[run.id], f"{run.id}: ingested {received}, sent {sent[run.id]}"
        steps = Counter((e.kind, e.step) for e in history if e.step is not None)
        duplicated = {k: n for k, n in steps.items() if n != 1}
        assert not duplicated, f"{run.id}: steps recorded more than once: {duplicated}\n{history}"
        assert set(steps) == SHAPE.records(), (run.id, history)
        for e in history:
            if e.kind == "step_completed":
                assert e.at is not None
                recorded_at[run.id, e.step] = e.at.timestamp()
    return recorded_at


def check_executions(
    effects: Path, recorded_at: dict[tuple[str, int], float], workers: WorkerProcesses, threads: int
) -> None:
    """Saves ran once, or again only when a kill cut them short before their result was recorded."""
    by_step = defaultdict(list)
    for e in read_executions(effects):
        by_step[e.run_id, e.step].append(e)
    saves = {key for key in recorded_at if key[1] in SHAPE.save_steps}
    assert set(by_step) == saves, f"executed {sorted(set(by_step) ^ saves)} unlike recorded"
    late = [e for key, runs in by_step.items() for e in runs if e.at > recorded_at[key] + TOLERANCE]
    assert not late, f"saves executed again after their result was recorded: {late}"
    cut_short = [e for key, runs in by_step.items() for e in sorted(runs, key=lambda e: e.at)[:-1]]
    by_live = [e for e in cut_short if e.pid not in workers.killed]
    assert not by_live, f"saves repeated though the process that ran them was not killed: {by_live}"
    per_kill = Counter(e.pid for e in cut_short)
    assert all(n <= threads for n in per_kill.values()), f"more repeats than threads per killed worker: {per_kill}"
    assert len(cut_short) <= len(workers.killed) * threads


def check_all(
    runs: list[RunHandle],
    sent: dict[str, list[str]],
    results: dict[str, Any],
    effects: Path,
    workers: WorkerProcesses,
    threads: int,
) -> None:
    for run in runs:
        assert results[run.id] == SHAPE.result(run.id, sent[run.id]), run.id
    check_executions(effects, check_histories(runs, sent), workers, threads)
    assert "Traceback" not in workers.logs()


# -- the tests ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(100)
def test_kill_9_at_random_instants_loses_no_result_and_no_send(
    conductor: Conductor, workers: WorkerProcesses, effects: Path
) -> None:
    rng = random.Random(20240611)
    threads, kills = 4, 5
    runs = start_chains(conductor, effects, 30)
    sent: dict[str, list[str]] = {run.id: [] for run in runs}
    proc = workers.start(threads=threads)
    for batch in plan_sends(rng, runs, kills):
        send(batch, sent)
        advance_then_kill(rng, effects, sent, workers, proc, threads)
        proc = workers.start(threads=threads)
    results = results_of(runs, timeout=45)
    assert len(workers.killed) == kills
    check_all(runs, sent, results, effects, workers, threads)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_forced_recovery_does_not_run_a_completed_step_again(
    conductor: Conductor, workers: WorkerProcesses, effects: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "step-2-started"
    run = conductor.start(recover, str(effects), str(marker), run_id="recover")
    first = workers.start(threads=2)
    wait_for(marker.exists, "step 2 to start", workers)
    assert Counter(e.step for e in read_executions(effects)) == {0: 1, 2: 1}
    assert [(e.kind, e.step) for e in run.history() if e.step is not None] == [
        ("step_completed", 0),
        ("timer_set", 1),
        ("timer_fired", 1),
    ]

    workers.kill(first)  # in the middle of step 2, after step 0 was recorded
    second = workers.start(threads=2)

    assert run.result(timeout=30) == [step_value("recover", s) for s in (0, 2, 3)]
    executions = read_executions(effects)
    assert Counter(e.step for e in executions) == {0: 1, 2: 2, 3: 1}, executions
    assert [e.pid for e in executions if e.step == 0] == [first.pid]
    assert [e.pid for e in executions if e.step == 2] == [first.pid, second.pid]
    steps = [(e.kind, e.step) for e in run.history() if e.step is not None]
    assert steps == [("step_completed", 0), ("timer_set", 1), ("timer_fired", 1)] + [
        ("step_completed", 2),
        ("step_completed", 3),
    ]


@pytest.mark.slow
@pytest.mark.timeout(100)
@pytest.mark.parametrize("cache_size", [1024, 0], ids=["cache-on", "cache-off"])
def test_two_workers_on_one_store_with_one_killed_again_and_again(
    conductor: Conductor, workers: WorkerProcesses, effects: Path, cache_size: int
) -> None:
    rng = random.Random(20240612 + cache_size)
    threads, kills = 3, 4
    runs = start_chains(conductor, effects, 20)
    sent: dict[str, list[str]] = {run.id: [] for run in runs}
    victim = workers.start(threads=threads, cache_size=cache_size)
    workers.start(threads=threads, cache_size=cache_size)  # the survivor
    for batch in plan_sends(rng, runs, kills):
        send(batch, sent)
        advance_then_kill(rng, effects, sent, workers, victim, threads)
        if rng.random() < 0.5:  # the survivor alone, taking over the victim's runs once their leases lapse
            done = len(executed_steps(effects))
            wait_for(lambda done=done: len(executed_steps(effects)) > done, "the survivor to run a step", workers)
        victim = workers.start(threads=threads, cache_size=cache_size)
    results = results_of(runs, timeout=45)
    assert len(workers.killed) == kills
    check_all(runs, sent, results, effects, workers, threads)
