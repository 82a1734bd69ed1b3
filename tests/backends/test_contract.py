"""The backend contract (DESIGN §4), run against every backend."""

from __future__ import annotations

import threading
import time

import pytest

from substantial.backends import Backend, Claim, Message
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
    assert not a.acquire_lease("r", "A", 30)  # not re-entrant: held, even by its owner
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


# -- a turn's operations together: what each does, whatever the round trips --


def test_start_run_writes_the_summary_and_posts_the_start(backend: Backend) -> None:
    backend.start_run("q", "r", b"summary", Message("start", b"go"))
    assert backend.read_info("r") == b"summary"
    assert backend.list_runs() == ["r"]
    assert backend.take_inbox("r") == [Message("start", b"go")]
    assert backend.due("q", time.time() + 1, 10) == ["r"]


def test_claim_due_leases_the_earliest_due_runs_it_can(connect: object) -> None:
    a, b = connect(), connect()  # type: ignore[operator]
    now = time.time()
    for i, run_id in enumerate(["r0", "r1", "r2", "r3", "r4"]):
        a.schedule("q", run_id, now - 10 + i)
    a.schedule("q", "later", now + 3600)
    assert b.acquire_lease("r1", "B", 30)  # another owner's
    claimed = a.claim_due("q", now, "A", 30, limit=2, scan=10, skip={"r0"})
    assert claimed == ["r2", "r3"]
    assert not b.acquire_lease("r2", "B", 30) and not b.acquire_lease("r3", "B", 30)
    assert b.acquire_lease("r4", "B", 30)  # past the limit: left alone
    assert b.acquire_lease("r0", "B", 30)  # skipped: not leased
    assert a.claim_due("q", now, "A", 30, limit=5, scan=10) == []  # all held: its own too, a lease is taken once
    a.release_lease("r2", "A")
    assert a.claim_due("q", now, "A", 30, limit=5, scan=1) == []  # only r0 looked at: B's
    assert a.claim_due("q", now, "A", 30, limit=5, scan=10) == ["r2"]
    assert a.due("q", now, 10) == ["r0", "r1", "r2", "r3", "r4"]  # claiming removes no due entry


def test_open_turn_reads_inbox_log_from_a_version_and_summary(backend: Backend) -> None:
    opened = backend.open_turn("r")
    assert (opened.messages, opened.records, opened.version, opened.info) == ([], [], 0, None)
    backend.append_log("r", [b"a", b"b", b"c"], 0)
    backend.post("q", "r", Message("m1", b"one"))
    backend.write_info("r", b"summary")
    opened = backend.open_turn("r")
    assert (opened.messages, opened.records, opened.version, opened.info) == (
        [Message("m1", b"one")],
        [b"a", b"b", b"c"],
        3,
        b"summary",
    )
    assert backend.open_turn("r", after=2).records == [b"c"]
    assert backend.open_turn("r", after=3).records == []
    assert backend.open_turn("r", after=3).version == 3
    assert backend.take_inbox("r") == [Message("m1", b"one")]  # opening removes nothing


def test_close_turn_writes_acks_moves_the_due_entry_and_lets_the_lease_go(connect: object) -> None:
    a, b = connect(), connect()  # type: ignore[operator]
    now = time.time()
    a.post("q", "r", Message("m1", b"one"))
    assert a.acquire_lease("r", "A", 30)
    a.close_turn("q", "r", "A", info=b"waiting", ack=["m1"], due_at=now + 3600, recheck=True)
    assert a.read_info("r") == b"waiting"
    assert a.take_inbox("r") == []
    assert a.due("q", now + 1, 10) == [] and a.due("q", now + 3601, 10) == ["r"]
    assert b.acquire_lease("r", "B", 30)  # released
    b.close_turn("q", "r", "B", info=None, ack=[], due_at=None, recheck=False)
    assert a.read_info("r") == b"waiting"  # no summary given: the one there stays
    assert a.due("q", now + 3601, 10) == []
    assert a.acquire_lease("r", "A", 30)


def test_close_turn_that_rechecks_marks_a_run_with_messages_due_now(backend: Backend) -> None:
    now = time.time()
    backend.post("q", "r", Message("m1", b"one"))
    backend.post("q", "r", Message("m2", b"two"))  # came during the turn: not ingested, not acknowledged
    backend.close_turn("q", "r", "A", info=b"s", ack=["m1"], due_at=None, recheck=True)
    assert backend.take_inbox("r") == [Message("m2", b"two")]
    assert backend.due("q", time.time() + 1, 10) == ["r"]
    backend.close_turn("q", "r", "A", info=b"s", ack=[], due_at=now + 3600, recheck=False)
    assert backend.due("q", now + 1, 10) == []  # no re-check: the due entry is where it was put


def test_close_turn_then_claims_the_next_due_runs(connect: object) -> None:
    a, b = connect(), connect()  # type: ignore[operator]
    now = time.time()
    a.schedule("q", "next", now - 2)
    a.schedule("q", "held", now - 3)
    a.schedule("q", "mine", now - 4)
    assert b.acquire_lease("held", "B", 30)
    assert a.acquire_lease("r", "A", 30)
    claim = Claim(ttl=30, limit=1, scan=10, skip={"mine"})
    assert a.close_turn("q", "r", "A", info=b"s", ack=[], due_at=None, recheck=False, then_claim=claim) == ["next"]
    assert not b.acquire_lease("next", "B", 30)
    # a close whose re-check finds a message marks its run due now, and may claim it again
    a.post("q", "r", Message("m", b"late"))
    assert a.acquire_lease("r", "A", 30)
    claim = Claim(ttl=30, limit=5, scan=10, skip={"mine", "next"})
    assert a.close_turn("q", "r", "A", info=b"s", ack=[], due_at=now + 60, recheck=True, then_claim=claim) == ["r"]
    assert not b.acquire_lease("r", "B", 30)


def test_close_turn_appends_the_turns_last_records_first_or_does_nothing(connect: object) -> None:
    a, b = connect(), connect()  # type: ignore[operator]
    now = time.time()
    a.append_log("r", [b"start"], 0)
    a.post("q", "r", Message("m1", b"one"))
    assert a.acquire_lease("r", "A", 30)
    b.append_log("r", [b"elsewhere"], 1)  # another worker moved the log
    with pytest.raises(Conflict):
        a.close_turn(
            "q", "r", "A", info=b"s", ack=["m1"], due_at=None, recheck=False, records=[b"x"], expected_version=1
        )
    assert a.read_log("r") == ([b"start", b"elsewhere"], 2)
    assert a.read_info("r") is None  # nothing else done: no summary, no ack, the due entry and the lease stay
    assert a.take_inbox("r") == [Message("m1", b"one")]
    assert a.due("q", now + 1, 10) == ["r"]
    assert not b.acquire_lease("r", "B", 30)
    a.close_turn(
        "q", "r", "A", info=b"s", ack=["m1"], due_at=None, recheck=False, records=[b"y", b"z"], expected_version=2
    )
    assert a.read_log("r") == ([b"start", b"elsewhere", b"y", b"z"], 4)
    assert a.read_info("r") == b"s" and a.take_inbox("r") == [] and a.due("q", now + 1, 10) == []
    assert b.acquire_lease("r", "B", 30)
