"""kill -9 of worker processes: no recorded result and no accepted send is lost, no recorded step runs again.

DESIGN §6: "kill -9 at any instant loses no recorded result and no accepted
send; after restart every run finishes with the same result as without the
crash" and "a completed save is never executed again by replay".

Each save of the crash workflows leaves a durable line per execution (see
``crash_workflows``), so the tests count executions across processes: a save
may run again only if the process running it was killed before its result
was recorded, so at most ``threads`` repeats per kill and none after the
step's record was appended. Kills are placed by a seeded ``random.Random`` on
progress conditions (how many distinct steps have run), never on fixed
sleeps; ``SUBSTANTIAL_CRASH_SEED`` explores other schedules.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from crash_processes import WorkerProcesses
from crash_workflows import EVENT, EVENTS_PER_RUN, ChainShape, chain, read_executions, recover, step_value

from substantial import Conductor, RunHandle, RunStatus

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="kill -9 needs POSIX signals")

SEED = int(os.environ.get("SUBSTANTIAL_CRASH_SEED", "20240611"))
SHAPE = ChainShape(saves=4)
HOLD = 0.01  # seconds each save holds its turn after its side effect: the window a kill repeats it in
TOLERANCE = 1e-3  # seconds: rounding of the time in a side-effect line
RESULT_TIMEOUT = 30.0  # after the last restart; the runs need a few seconds


def wait_for(condition: Callable[[], bool], what: str, workers: WorkerProcesses, timeout: float = 30.0) -> None:
    """Poll ``condition`` until true; fail (naming ``what``) if a worker died on its own or time ran out."""
    deadline = time.monotonic() + timeout
    while not condition():
        workers.assert_alive()
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.005)


class Chains:
    """``chain`` runs, the events sent to them, and the checks that nothing was lost or repeated."""

    def __init__(
        self, conductor: Conductor, workers: WorkerProcesses, effects: Path, count: int, shape: ChainShape = SHAPE
    ) -> None:
        self.workers = workers
        self.effects = effects
        self.shape = shape
        self.runs = [
            conductor.start(chain, str(effects), shape.saves, HOLD, run_id=f"chain-{i:03d}") for i in range(count)
        ]
        self.sent: dict[str, list[str]] = {run.id: [] for run in self.runs}

    # -- driving --------------------------------------------------------------

    def plan_sends(self, rng: random.Random, batches: int) -> list[list[tuple[RunHandle, str]]]:
        """Every event of every run, in ``batches`` seeded-random batches; a run's events keep their order."""
        order = []
        for k in range(EVENTS_PER_RUN):
            wave = [(run, f"{run.id}:event-{k}") for run in self.runs]
            rng.shuffle(wave)
            order += wave
        cuts = [0, *sorted(rng.sample(range(1, len(order)), batches - 1)), len(order)]
        return [order[a:b] for a, b in itertools.pairwise(cuts)]

    def send(self, batch: list[tuple[RunHandle, str]]) -> None:
        for run, payload in batch:
            run.send(EVENT, payload)  # returned: accepted, so it must be delivered
            self.sent[run.id].append(payload)

    def executed(self) -> int:
        """How many distinct saves have run (at least once)."""
        return len({(e.run_id, e.step) for e in read_executions(self.effects)})

    def reachable(self) -> int:
        """How many distinct saves can run with the events sent so far."""
        return sum(self.shape.saves + (len(payloads) == EVENTS_PER_RUN) for payloads in self.sent.values())

    def advance(self, steps: int) -> None:
        """Wait until ``steps`` more saves have run, or as many as the events sent allow."""
        target = min(self.executed() + steps, self.reachable())
        wait_for(lambda: self.executed() >= target, f"{target} distinct saves executed", self.workers)

    def advance_then_kill(self, rng: random.Random, proc: subprocess.Popen[bytes], threads: int) -> None:
        """Let a seeded-random number of saves run, wait a seeded-random moment, kill ``proc``."""
        self.advance(rng.randint(1, 3 * threads))
        time.sleep(rng.uniform(0.0, 0.05))  # lands in a save's hold, an ingest, an append, a park…
        self.workers.kill(proc)

    # -- checking -------------------------------------------------------------

    def check(self, threads: int, timeout: float = RESULT_TIMEOUT) -> None:
        """Every run finished as without crashes; steps recorded once; saves repeated only by kills."""
        deadline = time.monotonic() + timeout
        for run in self.runs:
            try:
                result = run.result(timeout=max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                history = [(e.kind, e.step) for e in run.history()]
                raise AssertionError(f"{run.id} did not finish: {run.info()}\nits log: {history}") from None
            assert result == self.shape.result(run.id, self.sent[run.id]), run.id
        self.check_executions(self.check_histories(), threads)
        assert "Traceback" not in self.workers.logs()

    def check_histories(self) -> dict[tuple[str, int], float]:
        """Each step recorded exactly once, each send ingested once in send order; when each save was recorded."""
        recorded_at = {}
        for run in self.runs:
            history = run.history()
            kinds = Counter(e.kind for e in history if e.step is None)
            assert kinds == {"run_started": 1, "event_received": EVENTS_PER_RUN, "run_completed": 1}, history
            assert history[-1].kind == "run_completed", history
            received = [e.value for e in history if e.kind == "event_received"]
            assert received == self.sent[run.id], f"{run.id}: ingested {received}, sent {self.sent[run.id]}"
            steps = Counter((e.kind, e.step) for e in history if e.step is not None)
            repeated = {k: n for k, n in steps.items() if n != 1}
            assert not repeated, f"{run.id}: steps recorded more than once: {repeated}\n{history}"
            assert set(steps) == self.shape.records(), history
            for e in history:
                if e.kind == "step_completed":
                    assert e.at is not None and e.step is not None
                    recorded_at[run.id, e.step] = e.at.timestamp()
        return recorded_at

    def check_executions(self, recorded_at: dict[tuple[str, int], float], threads: int) -> None:
        """Each save ran once, or again only when a kill cut it short before its result was recorded."""
        by_step = defaultdict(list)
        for e in read_executions(self.effects):
            by_step[e.run_id, e.step].append(e)
        assert set(by_step) == set(recorded_at), f"executed unlike recorded: {set(by_step) ^ set(recorded_at)}"
        late = [e for key, execs in by_step.items() for e in execs if e.at > recorded_at[key] + TOLERANCE]
        assert not late, f"saves executed again after their result was recorded: {late}"
        cut_short = [e for execs in by_step.values() for e in sorted(execs, key=lambda e: e.at)[:-1]]
        by_live = [e for e in cut_short if e.pid not in self.workers.killed]
        assert not by_live, f"saves repeated though the process that ran them was not killed: {by_live}"
        per_kill = Counter(e.pid for e in cut_short)
        assert all(n <= threads for n in per_kill.values()), f"more repeats than threads per kill: {per_kill}"
        assert len(cut_short) <= len(self.workers.killed) * threads


# -- the tests ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(100)
def test_kill_9_at_random_instants_loses_no_result_and_no_send(
    conductor: Conductor, workers: WorkerProcesses, effects: Path
) -> None:
    rng = random.Random(SEED)
    threads, kills = 4, 10
    # 20 runs of 20 steps: 16 saves, a sleep, two receives and a last save
    chains = Chains(conductor, workers, effects, 20, ChainShape(saves=16))
    proc = workers.start(threads=threads)
    for batch in chains.plan_sends(rng, kills):
        chains.send(batch)
        chains.advance_then_kill(rng, proc, threads)
        proc = workers.start(threads=threads)
    assert len(workers.killed) == kills
    chains.check(threads)


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
    # a fired timer is appended with the next step's record (a replay fires it again the same way)
    recorded = [("step_completed", 0), ("timer_set", 1)]
    assert [(e.kind, e.step) for e in run.history() if e.step is not None] == recorded

    workers.kill(first)  # in the middle of step 2, long after step 0 was recorded
    second = workers.start(threads=2)

    assert run.result(timeout=RESULT_TIMEOUT) == [step_value("recover", s) for s in (0, 2, 3)]
    executions = read_executions(effects)
    assert Counter(e.step for e in executions) == {0: 1, 2: 2, 3: 1}, executions
    assert [e.pid for e in executions if e.step == 0] == [first.pid]
    assert [e.pid for e in executions if e.step == 2] == [first.pid, second.pid]
    steps = [(e.kind, e.step) for e in run.history() if e.step is not None]
    assert steps == [*recorded, ("timer_fired", 1), ("step_completed", 2), ("step_completed", 3)]


@pytest.mark.slow
@pytest.mark.timeout(100)
@pytest.mark.parametrize("cache_size", [1024, 0], ids=["cache-on", "cache-off"])
def test_two_workers_on_one_store_with_one_killed_again_and_again(
    conductor: Conductor, workers: WorkerProcesses, effects: Path, cache_size: int, backend_url: str
) -> None:
    rng = random.Random(SEED + 1 + cache_size)
    threads, kills = 3, 4
    # 200 runs on one root of files (the case); fewer where each request is a network round trip
    chains = Chains(conductor, workers, effects, 200 if cache_size and backend_url.startswith("file:") else 40)
    victim = workers.start(threads=threads, cache_size=cache_size)
    workers.start(threads=threads, cache_size=cache_size)  # the survivor, never killed
    for batch in chains.plan_sends(rng, kills):
        chains.send(batch)
        chains.advance_then_kill(rng, victim, threads)
        if rng.random() < 0.5:
            chains.advance(1)  # the survivor alone, taking the victim's runs once their leases lapse
        victim = workers.start(threads=threads, cache_size=cache_size)
    assert len(workers.killed) == kills
    chains.check(threads)


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "fault",
    [
        "before:run_started",  # the start and the sends taken from the inbox, not yet in the log
        "after:run_started",  # in the log, not yet acknowledged
        "after:step_completed",  # a save recorded, the turn not yet parked
        "after:timer_set",  # a sleep recorded, the due entry not yet moved
        "after:event_consumed",  # a receive recorded
        "after:run_completed",  # the run's end recorded, its summary not yet written
    ],
)
def test_kill_9_at_an_exact_append_loses_nothing(
    conductor: Conductor, workers: WorkerProcesses, effects: Path, fault: str, backend_url: str
) -> None:
    chains = Chains(conductor, workers, effects, 2)
    chains.send([(run, f"{run.id}:event-{k}") for k in range(EVENTS_PER_RUN) for run in chains.runs])
    workers.died(workers.start(threads=1, lease_ttl=0.5, die=fault))
    if fault == "after:run_completed" and backend_url.startswith("file:"):
        # files append a turn's last records first, under the run's lock: the kill came before the summary
        ended = [run for run in chains.runs if run.history()[-1].kind == "run_completed"]
        assert ended and all(run.status() is not RunStatus.COMPLETED for run in ended)
    workers.start(threads=1, lease_ttl=0.5)
    chains.check(threads=1, timeout=10)
