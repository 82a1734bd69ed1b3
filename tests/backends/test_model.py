"""A hypothesis state machine: every backend against a plain model of the contract (DESIGN §4).

Each rule calls one operation on the backend under test (through one of two
clients of the same store, so caches of one client cannot hide the writes of
the other) and on a dict-based model, and compares the results. It runs
against every backend of tests/servers (the ``backend_stores`` fixture), each
example on a fresh store.

Times: ``schedule`` draws due times far in the past (1..100) or far in the
future (4e9..5e9); a ``post`` marks the run due at the real time now, which
lies between the two, so the model stands it in by ``POSTED`` and ``due`` is
only asked about times outside the window of real time. Runs due at the same
time (all posted runs count as tied) may come back in any order.

The model is deterministic, so a ``FlakyFailure`` here means the backend gave
different answers to the same operations on replay (its answer depended on
inode numbers, the clock, ...): a bug of the backend; the first sub-exception
is the failure itself.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, multiple, rule, run_state_machine_as_test

from servers import Stores
from servers.local_server import BACKENDS as LOCAL_BACKENDS
from substantial.backends import Backend, Message
from substantial.errors import Conflict

# Run ids: case variants, every allowed punctuation, long ones (plain, and long
# enough with capitals that the files backend hashes the folder name).
RUNS = [
    "run-a",
    "Run-A",
    "r.1:b@c_d",
    "x" * 120,
    "X" * 120,
    "X" * 119 + "x",
    "Ab" * 64,
]
AFTERS = [None, "", "R", "Run-B", "r", "s", "X", "x", "zzz", *RUNS]
QUEUES = ["q", "other"]
MESSAGE_IDS = ["m1", "M1", "m.2", "3@x"]
BLOBS = [b"", b"a", b"bc", b"\x00\xff\n\r"]
OWNERS = ["A", "B", "worker-1"]
TTL = 3600.0

PAST = [1.0, 2.0, 3.0, 100.0]
FUTURE = [4e9, 4.5e9, 5e9]
POSTED = 2.5e9  # the model's stand-in for "the real time of the post"; real time is below, 3e9 above
NOWS = [0.0, 1.0, 2.0, 2.5, 100.0, 3e9, 4e9, 4.6e9, 1e10]
LIMITS = [1, 2, 3, 100]

queues = st.sampled_from(QUEUES)
clients = st.integers(0, 1)
records = st.lists(st.sampled_from(BLOBS), max_size=3)
owners = st.sampled_from(OWNERS)
message_ids = st.sampled_from(MESSAGE_IDS)
blobs = st.sampled_from(BLOBS)


def check_due(got: list[str], entries: dict[str, float], now: float, limit: int) -> None:
    """``got`` is a valid answer of ``due(now, limit)``: the earliest entries, ties in any order."""
    due = {run_id: at for run_id, at in entries.items() if at <= now}
    expected = sorted(due.items(), key=lambda item: (item[1], item[0]))[:limit]
    assert len(got) == len(expected), (got, expected)
    assert len(set(got)) == len(got), got
    assert set(got) <= set(due), (got, due)
    # the same due times, in order, as the expected answer: only runs of equal times may differ
    assert [due[run_id] for run_id in got] == [at for _, at in expected], (got, expected)


class BackendModel(RuleBasedStateMachine):
    """The backend whose stores ``stores`` makes, against dicts."""

    stores: Stores  # set on a subclass per backend

    def __init__(self) -> None:
        super().__init__()
        self.make = type(self).stores()  # a fresh store, and how to open clients of it
        self.opened: list[Backend] = []
        self.clients: list[Backend] = []
        # the model
        self.logs: dict[str, list[bytes]] = {}
        self.inbox: dict[str, dict[str, bytes]] = {}  # insertion order is post order
        self.due_at: dict[str, dict[str, float]] = {q: {} for q in QUEUES}
        self.leases: dict[str, str] = {}
        self.info: dict[str, bytes] = {}

    def connect(self) -> Backend:
        backend = self.make()
        self.opened.append(backend)
        return backend

    hot_runs = Bundle("hot_runs")

    @initialize(target=hot_runs, ids=st.lists(st.sampled_from(RUNS), min_size=1, max_size=3, unique=True))
    def choose_runs(self, ids: list[str]) -> object:
        """A few runs per example, so that operations on one run meet (and case variants meet)."""
        return multiple(*ids)

    @initialize()
    def open_clients(self) -> None:
        self.clients = [self.connect(), self.connect()]

    def teardown(self) -> None:
        for backend in self.opened:
            backend.close()

    def version(self, run_id: str) -> int:
        return len(self.logs.get(run_id, []))

    # -- the log -----------------------------------------------------------

    @rule(c=clients, run_id=hot_runs, new=records, delta=st.sampled_from([0, 0, 0, 1, 2, -1]))
    def append_log(self, c: int, run_id: str, new: list[bytes], delta: int) -> None:
        version = self.version(run_id)
        expected = version + delta if version + delta >= 0 else version + 1
        if expected != version:
            try:
                self.clients[c].append_log(run_id, new, expected)
            except Conflict:
                return
            raise AssertionError(f"append at {expected} to a log at {version} did not raise Conflict")
        assert self.clients[c].append_log(run_id, new, expected) == version + len(new)
        self.logs.setdefault(run_id, []).extend(new)

    @rule(c=clients, run_id=hot_runs, new=records, delta=st.sampled_from([0, 0, 1, -1]))
    def replace_log(self, c: int, run_id: str, new: list[bytes], delta: int) -> None:
        version = self.version(run_id)
        expected = version + delta if version + delta >= 0 else version + 1
        if expected != version:
            try:
                self.clients[c].replace_log(run_id, new, expected)
            except Conflict:
                return
            raise AssertionError(f"replace at {expected} of a log at {version} did not raise Conflict")
        assert self.clients[c].replace_log(run_id, new, expected) == len(new)
        self.logs[run_id] = list(new)

    @rule(c=clients, run_id=hot_runs, after=st.integers(0, 6))
    def read_log(self, c: int, run_id: str, after: int) -> None:
        log = self.logs.get(run_id, [])
        assert self.clients[c].read_log(run_id, after=after) == (log[after:], len(log))

    # -- the inbox -----------------------------------------------------------

    @rule(c=clients, queue=queues, run_id=hot_runs, message_id=message_ids, body=blobs)
    def post(self, c: int, queue: str, run_id: str, message_id: str, body: bytes) -> None:
        assert time.time() < 3e9  # the due times drawn below assume it
        self.clients[c].post(queue, run_id, Message(message_id, body))
        self.inbox.setdefault(run_id, {}).setdefault(message_id, body)
        self.due_at[queue][run_id] = POSTED

    @rule(c=clients, run_id=hot_runs)
    def take_inbox(self, c: int, run_id: str) -> None:
        expected = [Message(i, body) for i, body in self.inbox.get(run_id, {}).items()]
        assert self.clients[c].take_inbox(run_id) == expected

    @rule(c=clients, run_id=hot_runs, ids=st.lists(st.sampled_from(MESSAGE_IDS), max_size=3))
    def ack(self, c: int, run_id: str, ids: list[str]) -> None:
        self.clients[c].ack(run_id, ids)
        for message_id in ids:
            self.inbox.get(run_id, {}).pop(message_id, None)

    # -- the due index -----------------------------------------------------

    @rule(c=clients, queue=queues, run_id=hot_runs, due_at=st.sampled_from(PAST + FUTURE))
    def schedule(self, c: int, queue: str, run_id: str, due_at: float) -> None:
        self.clients[c].schedule(queue, run_id, due_at)
        self.due_at[queue][run_id] = due_at

    @rule(c=clients, queue=queues, run_id=hot_runs)
    def unschedule(self, c: int, queue: str, run_id: str) -> None:
        self.clients[c].unschedule(queue, run_id)
        self.due_at[queue].pop(run_id, None)

    @rule(c=clients, queue=queues, now=st.sampled_from(NOWS), limit=st.sampled_from(LIMITS))
    def due(self, c: int, queue: str, now: float, limit: int) -> None:
        check_due(self.clients[c].due(queue, now, limit), self.due_at[queue], now, limit)

    # -- leases --------------------------------------------------------------

    @rule(c=clients, run_id=hot_runs, owner=owners)
    def acquire_lease(self, c: int, run_id: str, owner: str) -> None:
        free = run_id not in self.leases
        assert self.clients[c].acquire_lease(run_id, owner, TTL) is free
        if free:
            self.leases[run_id] = owner

    @rule(c=clients, run_id=hot_runs, owner=owners)
    def renew_lease(self, c: int, run_id: str, owner: str) -> None:
        assert self.clients[c].renew_lease(run_id, owner, TTL) is (self.leases.get(run_id) == owner)

    @rule(c=clients, run_id=hot_runs, owner=owners)
    def release_lease(self, c: int, run_id: str, owner: str) -> None:
        self.clients[c].release_lease(run_id, owner)
        if self.leases.get(run_id) == owner:
            del self.leases[run_id]

    # -- visibility and retention ------------------------------------------

    @rule(c=clients, run_id=hot_runs, info=st.sampled_from(BLOBS))
    def write_info(self, c: int, run_id: str, info: bytes) -> None:
        self.clients[c].write_info(run_id, info)
        self.info[run_id] = info

    @rule(c=clients, run_id=hot_runs)
    def read_info(self, c: int, run_id: str) -> None:
        assert self.clients[c].read_info(run_id) == self.info.get(run_id)

    @rule(c=clients, after=st.sampled_from(AFTERS), limit=st.sampled_from(LIMITS))
    def list_runs(self, c: int, after: str | None, limit: int) -> None:
        ids = sorted(i for i in self.info if after is None or i > after)
        assert self.clients[c].list_runs(after=after, limit=limit) == ids[:limit]

    @rule(c=clients, run_id=hot_runs)
    def delete_run(self, c: int, run_id: str) -> None:
        self.clients[c].delete_run(run_id)
        self.logs.pop(run_id, None)
        self.inbox.pop(run_id, None)
        self.leases.pop(run_id, None)
        self.info.pop(run_id, None)
        for entries in self.due_at.values():
            entries.pop(run_id, None)

    # -- clients and the whole picture ---------------------------------------

    @rule(c=clients)
    def reconnect(self, c: int) -> None:
        """A new client of the same store replaces this one: nothing may live only in a client."""
        self.clients[c].close()
        self.opened.remove(self.clients[c])
        self.clients[c] = self.connect()

    @rule(c=clients)
    def everything_matches(self, c: int) -> None:
        backend = self.clients[c]
        for run_id in RUNS:
            log = self.logs.get(run_id, [])
            assert backend.read_log(run_id) == (log, len(log))
            assert backend.take_inbox(run_id) == [Message(i, b) for i, b in self.inbox.get(run_id, {}).items()]
            assert backend.read_info(run_id) == self.info.get(run_id)
        assert backend.list_runs(limit=1000) == sorted(self.info)
        for queue in QUEUES:
            check_due(backend.due(queue, 1e10, 1000), self.due_at[queue], 1e10, 1000)


MODEL_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: Stores behind a server pay a round trip (or several) per operation: fewer, shorter examples.
SERVER_SETTINGS = settings(MODEL_SETTINGS, max_examples=20, stateful_step_count=30)


def test_backend_matches_the_model(backend_stores: Stores, request: pytest.FixtureRequest) -> None:
    local = request.node.callspec.params["backend_stores"] in LOCAL_BACKENDS
    machine = type("BackendModelOf", (BackendModel,), {"stores": staticmethod(backend_stores)})
    run_state_machine_as_test(machine, settings=MODEL_SETTINGS if local else SERVER_SETTINGS)
