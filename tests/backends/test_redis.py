"""What only the Redis backend has: hash-tagged keys, push wake-ups, surviving a Redis restart."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import key_slot

from servers import unavailable
from servers.redis_server import RedisServer
from substantial import Conductor, Context, RunStatus, workflow
from substantial.backends import Message, RedisBackend


@pytest.fixture(params=["redis_url", "redis_cluster_url"], ids=["node", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


def test_every_key_of_a_run_is_in_the_runs_slot(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    backend = RedisBackend.from_url(f"{redis_url}?prefix={prefix}")
    backend.append_log("Run-1", [b"x"], 0)
    backend.post("q", "Run-1", Message("m", b""))
    backend.acquire_lease("Run-1", "me", 30)
    backend.write_info("Run-1", b"{}")
    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.scan_iter(f"{prefix}:{{Run-1}}:*")]
    assert {k.rsplit(":", 1)[1] for k in keys} == {"log", "inbox", "msgs", "lease", "info"}
    assert len({key_slot(k.encode()) for k in keys}) == 1
    queue_keys = [k.decode() for k in client.scan_iter(f"{prefix}:{{q:q}}:*")]
    assert queue_keys == [f"{prefix}:{{q:q}}:due"]  # the posting marker is gone once the post returned
    backend.close()
    client.close()


@workflow()
def waits(c: Context) -> Any:
    return (yield c.receive("go"))


def test_a_post_from_another_process_wakes_an_idle_worker_at_once(url: str) -> None:
    store = f"{url}{'&' if '?' in url else '?'}prefix=t{uuid.uuid4().hex[:8]}"
    client, worker_side = Conductor(store), Conductor(store)  # two clients, as two processes would be
    client.register(waits)
    worker_side.register(waits)
    with worker_side.run(threads=2, poll_interval=30):
        time.sleep(0.2)  # the poller is idle in a 30 s wait
        began = time.monotonic()
        run = client.start(waits)
        while run.status() != RunStatus.WAITING:
            assert time.monotonic() - began < 5, "the start did not wake the worker"
            time.sleep(0.005)
        run.send("go", 1)
        assert run.result(timeout=5) == 1
    client.backend.close()
    worker_side.backend.close()


@workflow(queue="other")
def waits_elsewhere(c: Context) -> Any:
    return (yield c.receive("go"))


def test_two_workers_sharing_a_backend_are_each_woken_on_their_own_queue(url: str) -> None:
    store = f"{url}{'&' if '?' in url else '?'}prefix=t{uuid.uuid4().hex[:8]}"
    client, worker_side = Conductor(store), Conductor(store)
    for conductor in (client, worker_side):
        conductor.register(waits)
        conductor.register(waits_elsewhere)
    first = worker_side.run(threads=2, queues=["default"], poll_interval=30)
    second = worker_side.run(threads=2, queues=["other"], poll_interval=30)
    try:
        time.sleep(0.2)  # both pollers are idle in a 30 s wait; only a wake-up can start the runs
        runs = [client.start(waits), client.start(waits_elsewhere)]
        began = time.monotonic()
        for run in runs:
            while run.status() != RunStatus.WAITING:
                assert time.monotonic() - began < 5, f"the start of {run.id} did not wake its worker"
                time.sleep(0.005)
    finally:
        first.stop(timeout=5)
        second.stop(timeout=5)
        client.backend.close()
        worker_side.backend.close()


steps_run: Counter[str] = Counter()


@workflow()
def several_steps(c: Context, i: int) -> Any:
    total = 0
    for step in range(5):
        total += yield c.save(lambda step=step: steps_run.update([f"{i}-{step}"]) or step * i)
        yield c.sleep(0.05)
    return total


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_survive_redis_being_killed_and_restarted(tmp_path: Path) -> None:
    if not shutil.which("redis-server"):
        unavailable("redis-server is not installed: the restart test needs its own server")
    server = RedisServer(tmp_path / "redis", args=("--appendonly", "yes", "--appendfsync", "always")).start()
    try:
        conductor = Conductor(f"{server.url}?prefix=fault")
        conductor.register(several_steps)
        with conductor.run(threads=4, poll_interval=0.05, lease_ttl=2):
            runs = [conductor.start(several_steps, i) for i in range(50)]
            deadline = time.monotonic() + 30
            while sum(steps_run.values()) < 60:  # well under way
                assert time.monotonic() < deadline
                time.sleep(0.01)
            server.kill()
            time.sleep(0.5)  # Redis stays away for a while
            server.start()
            results = [run.result(timeout=120) for run in runs]
        assert results == [sum(step * i for step in range(5)) for i in range(50)]
        for run in runs:
            recorded = Counter(e.step for e in run.history() if e.kind == "step_completed")
            assert set(recorded.values()) == {1}, f"a step recorded twice in {run.id}"
        assert len(steps_run) == 250
        conductor.backend.close()
    finally:
        server.kill()


class RoundTrips:
    """Counts the requests every connection sends: a pipeline is one, as is a command."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = redis.connection.Connection.send_packed_command

        def counting(connection: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(connection, *args, **kwargs)

        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)

    def of(self, call: Callable[[], object]) -> int:
        before = self.count
        call()
        return self.count - before


def test_round_trips_per_operation_on_one_node(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = RedisBackend.from_url(f"{redis_url}?prefix=t{uuid.uuid4().hex[:8]}")
    version = 0

    def append() -> None:
        nonlocal version
        version = backend.append_log("r", [b"x"], version)

    operations: dict[str, tuple[Callable[[], object], int]] = {
        "read_log": (lambda: backend.read_log("r"), 1),
        "append_log": (append, 1),
        "post": (lambda: backend.post("q", "r", Message(uuid.uuid4().hex, b"hi")), 1),
        "take_inbox": (lambda: backend.take_inbox("r"), 1),
        "ack": (lambda: backend.ack("r", ["m"]), 1),
        "schedule": (lambda: backend.schedule("q", "r", 1.0), 1),
        "unschedule": (lambda: backend.unschedule("q", "r"), 1),
        "due": (lambda: backend.due("q", time.time(), 10), 1),
        "acquire_lease": (lambda: backend.acquire_lease("r", "me", 30), 1),
        "renew_lease": (lambda: backend.renew_lease("r", "me", 30), 1),
        "release_lease": (lambda: backend.release_lease("r", "me"), 1),
        "write_info": (lambda: backend.write_info("r", b"{}"), 1),
        "read_info": (lambda: backend.read_info("r"), 1),
        "list_runs": (backend.list_runs, 1),
        "delete_run": (lambda: backend.delete_run("other"), 2),
        "start_run": (lambda: backend.start_run("q", "r", b"{}", Message(uuid.uuid4().hex, b"hi")), 1),
        "claim_due": (lambda: backend.claim_due("q", time.time() + 2, "me", 30, limit=4, scan=8, skip={"s"}), 1),
        "open_turn": (lambda: backend.open_turn("r", after=1), 1),
        "close_turn": (lambda: backend.close_turn("q", "t", "me", info=b"{}", ack=["m"], due_at=None, recheck=True), 1),
    }
    trips = RoundTrips(monkeypatch)
    for call, _ in operations.values():
        call()  # the first call of a script loads it
    counted = {name: trips.of(call) for name, (call, _) in operations.items()}
    assert counted == {name: expected for name, (_, expected) in operations.items()}
    backend.close()


def test_a_run_just_claimed_opens_with_no_round_trip_and_as_a_fresh_open_would(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = RedisBackend.from_url(f"{redis_url}?prefix=t{uuid.uuid4().hex[:8]}")
    fresh = RedisBackend(backend._r, prefix=backend.prefix)  # another client: nothing kept from a claim
    backend.start_run("q", "r", b"summary", Message("start", b"go"))
    backend.append_log("r", [b"one", b"two"], 0)
    trips = RoundTrips(monkeypatch)
    assert backend.claim_due("q", time.time(), "me", 30, limit=1, scan=4) == ["r"]
    assert trips.of(lambda: backend.open_turn("r", after=2)) == 0
    backend.claim_due("q", time.time(), "me", 30, limit=1, scan=4, skip={"other"})  # r is leased: not again
    assert trips.of(lambda: backend.open_turn("r", after=2)) == 1  # used once: a second open reads
    backend.release_lease("r", "me")
    assert backend.claim_due("q", time.time(), "me", 30, limit=1, scan=4) == ["r"]
    peeked = backend.open_turn("r", after=2)
    assert peeked == fresh.open_turn("r", after=2)
    assert peeked.messages == [Message("start", b"go")] and peeked.version == 2 and peeked.info == b"summary"
    backend.release_lease("r", "me")
    assert backend.claim_due("q", time.time(), "me", 30, limit=1, scan=4) == ["r"]
    assert trips.of(lambda: backend.open_turn("r", after=0)) == 1  # a log past the version asked: read
    backend.close()


def test_what_a_claim_read_is_not_used_once_stale(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = RedisBackend.from_url(f"{redis_url}?prefix=t{uuid.uuid4().hex[:8]}")
    backend.start_run("q", "r", b"summary", Message("start", b"go"))
    assert backend.claim_due("q", time.time(), "me", 30, limit=1, scan=4) == ["r"]
    backend.ack("r", ["start"])  # written after the claim read the inbox
    clock = time.monotonic() + 1.5  # later than a claim's reading stands in for an open
    monkeypatch.setattr(time, "monotonic", lambda: clock)
    assert backend.open_turn("r").messages == []
    backend.close()


def test_a_post_after_the_server_lost_its_scripts_loads_them_and_completes(redis_url: str) -> None:
    backend = RedisBackend.from_url(f"{redis_url}?prefix=t{uuid.uuid4().hex[:8]}")
    backend.post("q", "r", Message("m1", b"one"))
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    backend.post("q", "r", Message("m2", b"two"))
    assert backend.take_inbox("r") == [Message("m1", b"one"), Message("m2", b"two")]
    assert backend.due("q", time.time(), 10) == ["r"]
    assert client.zcard(f"{backend.prefix}:{{q:q}}:posting") == 0  # no post left its marker
    backend.close()
    client.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Python 3.12 warns of a fork in a threaded process
def test_a_forked_child_uses_connections_of_its_own(redis_url: str) -> None:
    # a child sharing its parent's socket would read the parent's replies (gunicorn forks after imports)
    backend = RedisBackend.from_url(f"{redis_url}?prefix=t{uuid.uuid4().hex[:8]}")
    backend.write_info("parent", b"p")  # the parent now holds an idle connection
    pid = os.fork()
    if pid == 0:  # the child: its answers must be its own, over 200 calls
        ok = all(backend.read_info("parent") == b"p" and backend.read_info("none") is None for _ in range(200))
        os._exit(0 if ok else 1)
    for _ in range(200):
        assert backend.read_info("parent") == b"p"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    backend.close()
