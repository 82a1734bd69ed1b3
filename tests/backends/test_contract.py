"""The backend contract (DESIGN §4), run against every backend."""

from __future__ import annotations

import threading
import time

import pytest

from substantial.backends import Backend, Message
from substantial.errors import Conflict


def test_an_unknown_log_is_empty_at_version_zero(backend: Backend) -> None:
    assert backend.read_log("r") == ([], 0)


def test_append_is_conditional_on_the_version(backend: Backend) -> None:
    assert backend.append_log("r", [b"a", b"b"], 0) == 2
    with pytest.raises(Conflict):
        backend.append_log("r", [b"x"], 0)
    with pytest.raises(Conflict):
        backend.append_log("r", [b"x"], 3)
    assert backend.append_log("r", [b"c"], 2) == 3
    assert backend.read_log("r") == ([b"a", b"b", b"c"], 3)
    assert backend.read_log("r", after=2) == ([b"c"], 3)
    assert backend.read_log("r", after=3) == ([], 3)


def test_records_keep_any_bytes(backend: Backend) -> None:
    records = [b"", b"\x00\n\r\xff" * 10, bytes(range(256)), b"x" * 100_000]
    backend.append_log("r", records, 0)
    assert backend.read_log("r")[0] == records


def test_racing_appends_record_each_record_once_with_contiguous_versions(connect: object) -> None:
    clients = [connect() for _ in range(8)]  # type: ignore[operator]
    written: list[bytes] = []
    lock = threading.Lock()

    def writer(client: Backend, name: int) -> None:
        for i in range(25):
            while True:
                _, version = client.read_log("r")
                record = f"{name}-{i}".encode()
                try:
                    assert client.append_log("r", [record], version) == version + 1
                except Conflict:
                    continue
                with lock:
                    written.append(record)
                break

    threads = [threading.Thread(target=writer, args=(c, n)) for n, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    log, version = clients[0].read_log("r")
    assert version == len(log) == 200
    assert sorted(log) == sorted(written) and len(set(log)) == 200


def test_replace_log_checks_the_version(backend: Backend) -> None:
    backend.append_log("r", [b"a", b"b", b"c"], 0)
    with pytest.raises(Conflict):
        backend.replace_log("r", [b"z"], 2)
    assert backend.replace_log("r", [b"z"], 3) == 1
    assert backend.read_log("r") == ([b"z"], 1)
    assert backend.append_log("r", [b"y"], 1) == 2


def test_post_take_ack_lose_and_duplicate_nothing(backend: Backend) -> None:
    backend.post("q", "r", Message("m1", b"one"))
    backend.post("q", "r", Message("m2", b"two"))
    backend.post("q", "r", Message("m1", b"one"))  # a sender's retry
    assert backend.take_inbox("r") == [Message("m1", b"one"), Message("m2", b"two")]
    assert backend.take_inbox("r") == [Message("m1", b"one"), Message("m2", b"two")]  # taking removes nothing
    backend.ack("r", ["m1", "unknown"])
    assert backend.take_inbox("r") == [Message("m2", b"two")]
    backend.ack("r", ["m2"])
    assert backend.take_inbox("r") == []
    assert backend.take_inbox("other") == []


def test_post_marks_the_run_due_now(backend: Backend) -> None:
    backend.schedule("q", "r", time.time() + 3600)
    backend.post("q", "r", Message("m", b""))
    assert backend.due("q", time.time() + 1, 10) == ["r"]


def test_due_orders_by_time_and_honours_the_limit(backend: Backend) -> None:
    now = time.time()
    backend.schedule("q", "late", now - 1)
    backend.schedule("q", "early", now - 3)
    backend.schedule("q", "middle", now - 2)
    backend.schedule("q", "future", now + 3600)
    backend.schedule("other", "elsewhere", now - 5)
    assert backend.due("q", now, 10) == ["early", "middle", "late"]
    assert backend.due("q", now, 2) == ["early", "middle"]
    backend.schedule("q", "early", now + 10)  # moved, not added
    assert backend.due("q", now, 10) == ["middle", "late"]
    backend.unschedule("q", "middle")
    backend.unschedule("q", "never-scheduled")
    assert backend.due("q", now, 10) == ["late"]
    assert backend.due("q", now + 3600, 10) == ["late", "early", "future"]


def test_a_lease_is_exclusive_until_released(connect: object) -> None:
    a, b = connect(), connect()  # type: ignore[operator]
    assert a.acquire_lease("r", "A", 30)
    assert not b.acquire_lease("r", "B", 30)
    assert a.acquire_lease("r", "A", 30)  # re-entrant for its owner
    b.release_lease("r", "B")  # not the owner: nothing happens
    assert not b.acquire_lease("r", "B", 30)
    a.release_lease("r", "A")
    assert b.acquire_lease("r", "B", 30)


def test_a_lease_expires_and_only_its_owner_renews_it(connect: object) -> None:
    a, b = connect(), connect()  # type: ignore[operator]
    assert a.acquire_lease("r", "A", 0.2)
    assert not b.renew_lease("r", "B", 30)
    assert a.renew_lease("r", "A", 0.2)
    deadline = time.monotonic() + 10
    while not b.acquire_lease("r", "B", 30):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not a.renew_lease("r", "A", 30)  # lapsed and taken over


def test_one_contender_takes_an_expired_lease(connect: object) -> None:
    clients = [connect() for _ in range(8)]  # type: ignore[operator]
    assert clients[0].acquire_lease("r", "old", 0.05)
    time.sleep(0.1)
    barrier = threading.Barrier(8)
    won: list[str] = []

    def contend(client: Backend, name: str) -> None:
        barrier.wait()
        if client.acquire_lease("r", name, 30):
            won.append(name)

    threads = [threading.Thread(target=contend, args=(c, f"w{i}")) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(won) == 1


def test_info_list_and_delete(backend: Backend) -> None:
    for run_id in ["b", "a", "c"]:
        backend.write_info(run_id, run_id.encode())
    backend.write_info("a", b"A")
    assert backend.read_info("a") == b"A"
    assert backend.read_info("zz") is None
    assert backend.list_runs() == ["a", "b", "c"]
    assert backend.list_runs(after="a", limit=1) == ["b"]
    backend.append_log("a", [b"x"], 0)
    backend.post("q", "a", Message("m", b""))
    backend.schedule("q", "a", 0)
    backend.acquire_lease("a", "me", 30)
    backend.delete_run("a")
    assert backend.read_info("a") is None
    assert backend.read_log("a") == ([], 0)
    assert backend.take_inbox("a") == []
    assert backend.due("q", time.time(), 10) == []
    assert backend.acquire_lease("a", "other", 30)
    assert backend.list_runs() == ["b", "c"]
