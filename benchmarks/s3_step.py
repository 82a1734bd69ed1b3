"""ms per save step on S3Backend against a raw conditional PutObject loop, on moto and SeaweedFS.

Run: python benchmarks/s3_step.py [steps] [s3://bucket/prefix?endpoint_url=...&region=... ...]

With no URL it starts moto's server and SeaweedFS (``weed mini``) on free
loopback ports, as the tests do. For each server it prints the ms of a raw
``PutObject`` with ``If-None-Match: *`` (the floor: one conditional write per
step), the ms per save step of a workflow, their ratio (target: at most 1.3),
the requests one step costs, and what a cold read and a cold replay of the
run's log cost (requests and ms) for a client that has never seen the run.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers.s3_server import (
    CREDENTIALS,
    make_bucket,
    moto_command,
    running,
    s3_client,
    seaweedfs_command,
    weed_binary,
)
from substantial import Conductor, Context, workflow
from substantial import events as ev
from substantial.backends.s3 import S3Backend

marks: list[tuple[float, int]] = []  # (time, requests so far) at each step's execution
counter = [0]
#: the threads whose requests are counted: a turn's, and the backend's pool (its parallel GETs);
#: not the poller's, whose polls while a turn runs are no step's cost
TURN = ("substantial-turn", "substantial-s3")
counted = [TURN]


def count(**kwargs: Any) -> None:
    if threading.current_thread().name.startswith(counted[0]):
        counter[0] += 1


def step(i: int) -> dict[str, int]:
    marks.append((time.perf_counter(), counter[0]))
    return {"i": i}


@workflow()
def sequential(c: Context, steps: int) -> Any:
    for i in range(steps):
        yield c.save(lambda i=i: step(i))
    yield c.receive("go")  # parked: a fresh worker replays the whole log to finish it
    return steps


@dataclass
class Target:
    name: str
    bucket: str
    prefix: str
    client_args: dict[str, Any]

    def backend(self) -> tuple[S3Backend, Any]:
        client = s3_client(**self.client_args)
        client.meta.events.register("before-send.s3", count)
        return S3Backend(self.bucket, prefix=self.prefix, client=client), client


def raw_put_ms(target: Target, steps: int) -> list[float]:
    """The floor: one conditional PutObject of a step's record per step, on a client like ours; ms of each."""
    backend, client = target.backend()
    record = ev.encode(
        ev.StepCompleted(
            step=steps, at=time.time(), command="save", fingerprint="sequential.<locals>.<lambda>", value=b'{"i":1234}'
        )
    )
    times = []
    run = uuid.uuid4().hex[:8]
    for i in range(steps):
        began = time.perf_counter()
        key = f"{target.prefix}raw/{run}/{i:016d}"
        client.put_object(Bucket=target.bucket, Key=key, Body=record, IfNoneMatch="*")
        times.append((time.perf_counter() - began) * 1000)
    backend.close()
    return times


def substantial_steps(target: Target, steps: int) -> tuple[list[float], float, str]:
    """ms of each save step (from one step's execution to the next), requests per step, the parked run."""
    backend, _ = target.backend()
    conductor = Conductor(backend)
    conductor.register(sequential)
    marks.clear()
    with conductor.run(threads=2, poll_interval=0.1):
        run = conductor.start(sequential, steps)
        deadline = time.monotonic() + 3600
        while len(marks) < steps or run.status().value != "waiting":
            assert time.monotonic() < deadline, "the run did not park"
            time.sleep(0.01)
    times = [(b[0] - a[0]) * 1000 for a, b in itertools.pairwise(marks)]
    backend.close()
    return times, (marks[-1][1] - marks[0][1]) / (steps - 1), run.id


def cold(target: Target, run_id: str, steps: int) -> tuple[int, float, int, float]:
    """A client that never saw the run: its read of the log, then a worker's turn that replays it all."""
    backend, _ = target.backend()
    counter[0], counted[0] = 0, ("MainThread", "substantial-s3")
    began = time.perf_counter()
    records, _ = backend.read_log(run_id)
    read = counter[0], (time.perf_counter() - began) * 1000
    counted[0] = TURN
    assert len(records) > steps
    backend.close()

    backend, _ = target.backend()
    conductor = Conductor(backend)
    conductor.register(sequential)
    run = conductor.get(run_id)
    run.send("go")
    counter[0] = 0
    began = time.perf_counter()
    with conductor.run(threads=1, poll_interval=0.01):
        assert run.result(timeout=600) == steps
    replay = counter[0], (time.perf_counter() - began) * 1000  # until the result is seen
    backend.close()
    return (*read, *replay)


def measure(target: Target, steps: int) -> None:
    """Raw loop, workflow, raw loop again: the floor is both loops, so load drifting during the run evens out."""
    raw = raw_put_ms(target, steps // 2)
    ours, requests, run_id = substantial_steps(target, steps)
    raw += raw_put_ms(target, steps - steps // 2)
    read_requests, read_ms, replay_requests, replay_ms = cold(target, run_id, steps)
    raw_mean, ours_mean = statistics.mean(raw), statistics.mean(ours)
    raw_median, ours_median = statistics.median(raw), statistics.median(ours)
    print(f"{target.name}: {steps} steps")
    print(f"  raw conditional PutObject: {raw_mean:6.2f} ms (median {raw_median:.2f})")
    print(f"  substantial save step:     {ours_mean:6.2f} ms (median {ours_median:.2f})")
    ratio, median_ratio = ours_mean / raw_mean, ours_median / raw_median
    print(f"  ratio:                     {ratio:6.2f} (median {median_ratio:.2f}; target <= 1.3)")
    print(f"  requests per step:         {requests:6.3f}")
    print(f"  cold read of the log:      {read_requests} requests, {read_ms:.1f} ms")
    print(f"  cold replay (a fresh worker's turn over the whole log): {replay_requests} requests, {replay_ms:.1f} ms")
    print("    (the turn's requests: the lease the poller took and the send that woke the run come on top)")


@contextlib.contextmanager
def local_servers(folder: Path) -> Iterator[list[Target]]:
    """moto and SeaweedFS on free loopback ports, each with a bucket; killed on exit."""
    with contextlib.ExitStack() as stack:
        targets = []
        launchers = [("moto", moto_command)]
        weed = weed_binary()
        if weed is not None:
            launchers.append(("seaweedfs", lambda: seaweedfs_command(weed, folder)))
        for name, command in launchers:
            try:
                endpoint = stack.enter_context(running(name, command, folder))
                server = make_bucket(name, endpoint)
            except pytest.skip.Exception as e:  # what the tests would skip on
                print(f"{name}: not measured: {e}")
                continue
            args = {"endpoint_url": endpoint, **CREDENTIALS}
            targets.append(Target(name, server.bucket, f"bench-{uuid.uuid4().hex[:8]}/", args))
        yield targets


def url_target(url: str) -> Target:
    parsed = urlparse(url)
    query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    prefix = parsed.path.strip("/")
    prefix = f"{prefix}/bench-{uuid.uuid4().hex[:8]}/" if prefix else f"bench-{uuid.uuid4().hex[:8]}/"
    args = {"endpoint_url": query.get("endpoint_url"), "region": query.get("region")}
    return Target(query.get("endpoint_url") or parsed.netloc, parsed.netloc, prefix, args)


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    urls = sys.argv[2:]
    threading.excepthook = lambda args: None if args.exc_type is SystemExit else sys.__excepthook__(*args[:3])
    if urls:
        for url in urls:
            measure(url_target(url), steps)
        return
    with tempfile.TemporaryDirectory() as folder, local_servers(Path(folder)) as targets:
        for target in targets:
            measure(target, steps)


if __name__ == "__main__":
    main()
