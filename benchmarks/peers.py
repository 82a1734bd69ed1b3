"""Substantial against its peers, DBOS Transact and RQ, on three workloads; then how it scales.

Every step is ``_jobs.job``, a trivial function returning {"i": i}.

- W1: one workflow of 200 sequential steps: µs per step (median of 5 after a warm-up).
- W2: 500 one-step workflows started, then all awaited, 8 worker threads: workflows per second.
  Substantial's W2 runs twice: with the worker in the process that starts the
  runs, and in a worker process of its own (``_serve.py``), the starting
  process only starting and watching: the two share no GIL.
- W3: 100 workflows of 20 steps running at once, 8 worker threads: steps per second.

Substantial runs on files, on Redis with ``appendonly no`` and on Redis with
``appendfsync always`` (each a redis-server of its own on a free port); DBOS
Transact keeps its system database on a throwaway PostgreSQL database (see
_dbos.py); RQ (a SimpleWorker, W2 only) runs on the same two Redis servers.
Targets: W1 at least 10x DBOS, W2 and W3 at least 5x DBOS (its better
variant), W2 at least 3x RQ.

Then, on files and Redis (appendonly no): W2 with 100,000 parked runs in the
store against none (target at least 0.8x), W3 on two worker processes against
one, and a cold replay (sticky cache off) of a 10,000-step run against a
1,000-step one (linear: the same ms per 1,000 steps). Last, the backend calls
a turn makes, per step and per turn (see _counting.py).

Run: python benchmarks/peers.py [--quick] [--only w1,w2,w3,parked,processes,replay,counts]
Every count is an option (--help), whose default $SUBSTANTIAL_BENCH_<OPTION> overrides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import _counting
import _scale
from _substantial import (
    STORE_PARENT,
    Store,
    conductor_on,
    create_us,
    stores,
    w1_us_per_step,
    w2_per_second,
    w3_steps_per_second,
)

SECTIONS = ("w1", "w2", "w3", "parked", "processes", "replay", "counts")
OPTIONS = {  # name: (default, quick, help)
    "w1_steps": (200, 200, "steps of W1's workflow"),
    "w1_repeats": (5, 3, "timed W1 runs (the median is shown)"),
    "w2_count": (500, 200, "W2's one-step workflows"),
    "w3_runs": (100, 40, "W3's workflows"),
    "w3_steps": (20, 20, "steps of each W3 workflow"),
    "repeats": (3, 1, "timed batches of W2 and W3 (the median is shown)"),
    "parked": (100_000, 5_000, "parked runs added to the store"),
    "replay_steps": (10_000, 3_000, "steps of the long cold replay (the short one has 1,000)"),
    "replay_repeats": (3, 1, "cold replays of each length (the median is shown)"),
}


@dataclass
class Row:
    workload: str
    system: str
    value: float
    unit: str
    ratios: list[str] = field(default_factory=list)


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, workload: str, system: str, value: float, unit: str) -> Row:
        row = Row(workload, system, value, unit)
        self.rows.append(row)
        return row

    def print(self) -> None:
        print(f"{'workload':<26} {'system':<42} {'figure':>9} {'unit':<12} ratios (target)")
        for row in self.rows:
            ratios = "; ".join(row.ratios)
            print(f"{row.workload:<26} {row.system:<42} {row.value:9.1f} {row.unit:<12} {ratios}".rstrip())
        for note in self.notes:
            print(note)


def ratio(value: float, of: float, name: str, target: float) -> str:
    r = value / of
    return f"{r:.2f}x {name} (>= {target:g}: {'met' if r >= target else 'NOT met'})"


#: A peer's figures: by workload ("w1", "w2", "w3"), a value by system.
Figures = dict[str, dict[str, float]]


def our_figures(args: argparse.Namespace, subjects: list[Store]) -> Figures:
    """W1, W2 and W3 on each store; W2 also with the 8 worker threads in a process of their own."""
    ours: Figures = {"w1": {}, "w2": {}, "w2_apart": {}, "w3": {}}
    for label, namespace in subjects:
        system = f"Substantial, {label}"
        if "w1" in args.only:
            ours["w1"][system] = w1_us_per_step(conductor_on(namespace("w1")), args.w1_steps, args.w1_repeats)
        if "w2" in args.only:
            ours["w2"][system] = w2_per_second(conductor_on(namespace("w2")), args.w2_count, args.repeats)
            ours["w2_apart"][system] = _scale.w2_processes(namespace("w2-apart"), 1, args.w2_count, args.repeats)
        if "w3" in args.only:
            conductor = conductor_on(namespace("w3"))
            ours["w3"][system] = w3_steps_per_second(conductor, args.w3_runs, args.w3_steps, args.repeats)
    return ours


def peers(args: argparse.Namespace, table: Table, subjects: list[Store]) -> None:
    """W1, W2 and W3 on each store, on DBOS and (W2) on RQ; the ratios to DBOS's better variant and RQ."""
    ours = our_figures(args, subjects)
    dbos, rq = dbos_figures(args, table), rq_figures(args, table, subjects)
    workloads = {  # ours: (row label, unit, target, the peers' figures it is compared with)
        "w1": (f"W1 {args.w1_steps} steps", "µs/step", 10, "w1"),
        "w2": (f"W2 {args.w2_count} workflows", "workflows/s", 5, "w2"),
        "w2_apart": (f"W2 {args.w2_count}, worker process", "workflows/s", 5, "w2"),
        "w3": (f"W3 {args.w3_runs}x{args.w3_steps} steps", "steps/s", 5, "w3"),
    }
    for key, (workload, unit, target, peer) in workloads.items():
        for system, value in ours[key].items():
            row = table.add(workload, system, value, unit)
            if dbos.get(peer) and peer == "w1":  # µs per step: DBOS's over ours is the ratio of speeds
                row.ratios.append(ratio(min(dbos[peer].values()), value, "DBOS", target))
            elif dbos.get(peer):
                row.ratios.append(ratio(value, max(dbos[peer].values()), "DBOS", target))
            rq_here = rq.get(f"RQ SimpleWorker, {system.partition(', ')[2]}") or rq.get(
                "RQ SimpleWorker, Redis appendonly no"
            )
            if peer == "w2" and rq_here:
                row.ratios.append(ratio(value, rq_here, "RQ", 3))
        if key != peer:
            continue  # the peers' rows are shown once, under the workload they ran
        for system, value in dbos.get(key, {}).items():
            table.add(workload, system, value, unit)
        if key == "w2":
            for system, value in rq.items():
                table.add(workload, system, value, "jobs/s")


def dbos_figures(args: argparse.Namespace, table: Table) -> Figures:
    """DBOS's figures: W1 called directly, W2 and W3 through its queue of 8 and its executor."""
    wanted = [w for w in ("w1", "w2", "w3") if w in args.only]
    if not wanted:
        return {}
    try:
        import _dbos
    except ImportError as e:
        table.notes.append(f"DBOS Transact left out: {e}")
        return {}
    figures: Figures = {w: {} for w in wanted}
    system = "DBOS Transact, PostgreSQL"
    with _dbos.launched() as queue:
        if "w1" in wanted:
            figures["w1"][system] = _dbos.w1_us_per_step(args.w1_steps, args.w1_repeats)
        for name, start in _dbos.starters(queue).items():
            if "w2" in wanted:
                figures["w2"][f"{system}, {name}"] = _dbos.w2_per_second(start, args.w2_count, args.repeats)
            if "w3" in wanted:
                rate = _dbos.w3_steps_per_second(start, args.w3_runs, args.w3_steps, args.repeats)
                figures["w3"][f"{system}, {name}"] = rate
    return figures


def rq_figures(args: argparse.Namespace, table: Table, subjects: list[Store]) -> dict[str, float]:
    """RQ's W2 jobs per second on each Redis store."""
    if "w2" not in args.only:
        return {}
    try:
        from vs_rq import rq_per_second
    except ImportError as e:
        table.notes.append(f"RQ left out: {e}")
        return {}
    figures = {}
    for label, namespace in subjects:
        if label.startswith("Redis"):
            url = namespace("rq").partition("?")[0]
            rq_per_second(url, min(args.w2_count, 50))
            rate = statistics.median(rq_per_second(url, args.w2_count) for _ in range(args.repeats))
            figures[f"RQ SimpleWorker, {label}"] = rate
    return figures


def scaling(args: argparse.Namespace, table: Table, subjects: list[Store]) -> None:
    """Parked runs, worker processes and cold replay on files and Redis (appendonly no)."""
    for label, namespace in subjects[:2]:
        system = f"Substantial, {label}"
        if "parked" in args.only:
            empty, took, full = _scale.parked_w2(
                namespace("unparked"), namespace("parked"), args.parked, args.w2_count, args.repeats
            )
            table.add("W2, no parked run", system, empty, "workflows/s")
            row = table.add(f"W2, {args.parked:,} parked", system, full, "workflows/s")
            row.ratios.append(ratio(full, empty, "no parked run", 0.8))
            table.add(f"parking {args.parked:,} runs", system, args.parked / took, "runs/s").ratios.append(
                f"{took:.1f}s in all"
            )
        if "processes" in args.only:
            one, two = (
                _scale.w3_processes(namespace(f"processes-{n}"), n, args.w3_runs, args.w3_steps, args.repeats)
                for n in (1, 2)
            )
            table.add("W3, 1 worker process", system, one, "steps/s")
            row = table.add("W3, 2 worker processes", system, two, "steps/s")
            row.ratios.append(f"{two / one:.2f}x speed-up over 1 process")
        if "replay" in args.only:
            short, long = _scale.replay_ms_per_1000(namespace("replay"), [1000, args.replay_steps], args.replay_repeats)
            table.add("cold replay, 1,000 steps", system, short, "ms/1k steps")
            row = table.add(f"cold replay, {args.replay_steps:,} steps", system, long, "ms/1k steps")
            verdict = "met" if long <= 1.2 * short else "NOT met"
            row.ratios.append(f"{long / short:.2f}x the cost per step at 1,000 (linear, <= 1.2: {verdict})")


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run of a minute or two")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument(
        "--store-dir",
        default=os.environ.get("SUBSTANTIAL_BENCH_STORE_DIR", str(STORE_PARENT)),
        help=f"the folder the files store is made in [{STORE_PARENT}, $SUBSTANTIAL_BENCH_STORE_DIR]",
    )
    for name, (default, _, text) in OPTIONS.items():
        env = f"SUBSTANTIAL_BENCH_{name.upper()}"
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"{text} [{default}, ${env}]")
    args = parser.parse_args()
    for name, (default, quick, _) in OPTIONS.items():
        if getattr(args, name) is None:
            env = os.environ.get(f"SUBSTANTIAL_BENCH_{name.upper()}")
            setattr(args, name, int(env) if env else quick if args.quick else default)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose among {SECTIONS}")
    return args


def timed(what: str, run: Callable[[], None]) -> None:
    began = time.perf_counter()
    run()
    print(f"[{what}: {time.perf_counter() - began:.0f}s]", flush=True)


def main() -> None:
    args = options()
    began = time.perf_counter()
    table = Table()
    with stores(args.store_dir) as subjects:
        timed("W1-W3", lambda: peers(args, table, subjects))
        timed("scaling", lambda: scaling(args, table, subjects))
        # last: the probe deletes what it makes, and on ext4 without a journal every inode freed
        # slows the creates of the next 5 to 35 seconds (docs/benchmarks.md, "The disk")
        where = {args.store_dir: create_us(args.store_dir), tempfile.gettempdir(): create_us(tempfile.gettempdir())}
        table.notes.append(
            "a folder and a file made, median, after the runs: "
            + "; ".join(f"{us:.0f} µs in {folder}" for folder, us in where.items())
            + f" (the files store is in {args.store_dir})"
        )
    print()
    table.print()
    if "counts" in args.only:
        print("\nBackend calls per step and per turn, on files. A turn is counted by its close_turn ('appending':")
        print("one that appends the turn's last records); claim_due is the poller's, idle polls included;")
        print("start/run is Conductor.start; sticky: a save then a 1 ms sleep, 50 times, so every turn after")
        print("the first takes the run from the sticky cache. Composite calls count once: on Redis each is one")
        print("round trip, on files the primitives they are made of.")
        print("\n".join(_counting.report()))
    print(f"\npeers.py took {time.perf_counter() - began:.0f}s")


if __name__ == "__main__":
    main()
