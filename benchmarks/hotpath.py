"""The hot path under a sampling profiler: W1 on files, W2 on Redis, and a report of py-spy's samples.

Run a workload in a loop under py-spy (``pip install py-spy``), then read the samples:

    py-spy record --idle -r 250 -f raw -o w1.txt -- python hotpath.py w1-files 20
    python hotpath.py report w1.txt --under _turn

``report`` prints the functions with the most samples of their own (self) and
in all (self and callees), as a share of the samples kept: every non-idle
sample, or with ``--under NAME`` every sample (idle ones too, as ``--idle``
records them) whose stack passes through a function of that name: the wall
time of, say, the turns.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path

from _jobs import one_step, sequential
from _redis import redis_server
from _substantial import POLL, conductor_on, start

from substantial import Conductor

_LINE = re.compile(r":\d+\)$")


def loop_w1(conductor: Conductor, seconds: float, steps: int = 200) -> int:
    """W1 over and over for ``seconds``; returns the steps run."""
    done = 0
    with conductor.run(threads=8, poll_interval=POLL):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start(conductor, sequential, steps).result(timeout=600)
            done += steps
    return done


def loop_w2(conductor: Conductor, seconds: float, count: int = 500) -> int:
    """W2 batches over and over for ``seconds``; returns the workflows run."""
    done = 0
    with conductor.run(threads=8, poll_interval=POLL):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for run in [start(conductor, one_step, i) for i in range(count)]:
                run.result(timeout=600)
            done += count
    return done


def _named(frame: str, name: str) -> bool:
    """Whether a frame ("Class.function (file)") is of the function ``name`` ("function" or "Class.function")."""
    function = frame.partition(" (")[0]
    return function == name or function.endswith(f".{name}")


def report(path: Path, under: str | None, top: int) -> None:
    """Top functions by self and total share of the samples kept."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    kept = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_LINE.sub(")", frame) for frame in stack.split(";") if frame]
        if under is not None and not any(_named(frame, under) for frame in frames):
            continue
        if under is None and not frames:
            continue
        n = int(count)
        kept += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(f"{kept} samples" + (f" through {under}" if under else ""))
    for title, counts in [("self", own), ("total (self and callees)", total)]:
        print(f"  by {title}:")
        for frame, n in counts.most_common(top):
            print(f"    {100 * n / kept:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["w1-files", "w2-redis", "report"])
    parser.add_argument("arg", nargs="?", help="seconds to loop (default 20), or the file to report on")
    parser.add_argument("--under", help="report: keep the samples whose stack passes through this function")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.what == "report":
        report(Path(args.arg), args.under, args.top)
        return
    seconds = float(args.arg or 20)
    if args.what == "w1-files":
        with tempfile.TemporaryDirectory(prefix="substantial-hotpath-") as folder:
            done = loop_w1(conductor_on(f"file://{folder}/store"), seconds)
        print(f"W1 on files: {done} steps in {seconds:.0f}s")
    else:
        with redis_server("--appendonly", "no") as url:
            done = loop_w2(conductor_on(f"{url}?prefix=hotpath"), seconds)
        print(f"W2 on Redis (appendonly no): {done} workflows in {seconds:.0f}s")


if __name__ == "__main__":
    main()
