"""What only the S3 backend has: segments, request counts, crash points of a post, retries, fencing.

Requests are counted (and faults injected) with botocore ``before-send`` hooks
on a client of the test's own, so nothing else running can be counted.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

from servers.s3_server import BACKENDS, CREDENTIALS, S3Server, s3_client
from substantial.backends import Message, from_url
from substantial.backends.s3 import MERGE_OBJECTS, POSTING_GRACE, S3Backend, S3Error
from substantial.errors import Conflict, CorruptRecord

SERVERS = {"s3-moto": "s3_moto", "s3-seaweedfs": "s3_seaweedfs", "s3-url": "s3_url"}


@pytest.fixture(params=[name for name in SERVERS if name in BACKENDS])
def server(request: pytest.FixtureRequest) -> S3Server:
    found: S3Server = request.getfixturevalue(SERVERS[request.param])
    return found


@dataclass
class Store:
    """One fresh store (a prefix) on a server, and clients of it that each have their own boto3 client."""

    server: S3Server
    prefix: str = field(default_factory=lambda: f"test-s3/{uuid.uuid4().hex[:12]}/")
    opened: list[S3Backend] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)

    def client(self, **config: Any) -> Any:
        credentials = CREDENTIALS if self.server.name != "url" else {}
        made = s3_client(self.server.endpoint_url, self.server.region, **credentials, **config)
        self.clients.append(made)
        return made

    def connect(self, client: Any = None, **kwargs: Any) -> S3Backend:
        backend = S3Backend(
            self.server.bucket, prefix=self.server.prefix + self.prefix, client=client or self.client(), **kwargs
        )
        self.opened.append(backend)
        return backend

    def keys(self, under: str = "") -> list[str]:
        pages = self.server.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.server.bucket, Prefix=self.server.prefix + self.prefix + under
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture
def store(server: S3Server) -> Iterator[Store]:
    made = Store(server)
    yield made
    for backend in made.opened:
        backend.close()
    for client in made.clients:
        client.close()


class Requests:
    """Counts the HTTP requests a client sends (retries included), by operation."""

    def __init__(self, client: Any) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        client.meta.events.register("before-send.s3", self._count)

    def _count(self, request: Any, **kwargs: Any) -> None:
        with self._lock:
            self.seen.append((kwargs["event_name"].rsplit(".", 1)[1], request.url))

    def __len__(self) -> int:
        return len(self.seen)

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


def error_reply(request: Any, status: int, code: str) -> AWSResponse:
    """What an S3 server answers with an error ``code``."""
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>injected</Message></Error>"
    headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
    return AWSResponse(request.url, status, headers, _Raw(body.encode()))


def faults(client: Any, operation: str, count: int, make: Callable[[Any], Any]) -> list[int]:
    """Make the first ``count`` attempts of ``operation`` fail with ``make(request)``; returns the attempt log."""
    attempts: list[int] = []

    def hook(request: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) <= count:
            result = make(request)
            if isinstance(result, BaseException):
                raise result
            return result
        return None

    client.meta.events.register(f"before-send.s3.{operation}", hook)
    return attempts


# -- segments: what a read costs ------------------------------------------------


def test_a_cold_read_of_a_1000_record_log_takes_a_handful_of_requests(store: Store) -> None:
    writer = store.connect()
    writes = Requests(writer.client)
    for i in range(1000):
        assert writer.append_log("r", [f"record-{i}".encode()], i) == i + 1
    # one PutObject per append, plus a segment every MERGE_OBJECTS appends and a cleanup now and then
    assert len(writes) <= 1000 * (1 + 1.5 / MERGE_OBJECTS)
    assert any("/seg/" in url and ".base" in url for _, url in writes.seen)
    assert any("/seg/" in url and ".delta" in url for _, url in writes.seen)
    # the log at rest: a merge still in the writer's background pool may delete a segment the cold read
    # listed, and that read then lists again (9 requests once in CI)
    writer._pool.shutdown(wait=True)

    reader = store.connect()
    reads = Requests(reader.client)
    records, version = reader.read_log("r")
    assert version == 1000 and records == [f"record-{i}".encode() for i in range(1000)]
    assert len(reads) <= 5, reads.seen  # two LISTs, then the base, the delta and the newest object
    reads.clear()
    assert reader.read_log("r", after=1000) == ([], 1000)
    assert len(reads) == 1  # a client that knows the log asks only whether it moved


def test_logs_shaped_by_appends_merges_and_replaces_read_back_whole(store: Store) -> None:
    rng = random.Random(6)
    writers = [store.connect(), store.connect()]
    expected: list[bytes] = []
    for i in range(300):
        client = rng.choice(writers)
        if rng.random() < 0.03:
            kept = expected[rng.randrange(len(expected) + 1) :] if expected else []
            assert client.replace_log("r", kept, len(expected)) == len(kept)
            expected = list(kept)
        else:
            batch = [f"{i}-{k}".encode() * rng.randint(1, 40) for k in range(rng.choice([1, 1, 1, 2, 5]))]
            assert client.append_log("r", batch, len(expected)) == len(expected) + len(batch)
            expected += batch
        if i % 37 == 0:
            assert store.connect().read_log("r") == (expected, len(expected))  # a cold client
    for client in [*writers, store.connect()]:
        assert client.read_log("r") == (expected, len(expected))


def test_a_damaged_object_is_corruption_of_that_run_only(store: Store) -> None:
    backend = store.connect()
    backend.append_log("bad", [b"one", b"two"], 0)
    backend.append_log("good", [b"fine"], 0)
    (key,) = store.keys("runs/bad/log/")
    data = bytearray(store.server.client.get_object(Bucket=store.server.bucket, Key=key)["Body"].read())
    data[-6] ^= 0xFF
    store.server.client.put_object(Bucket=store.server.bucket, Key=key, Body=bytes(data))
    fresh = store.connect()
    with pytest.raises(CorruptRecord, match="checksum"):
        fresh.read_log("bad")
    assert fresh.read_log("good") == ([b"fine"], 1)


# -- fencing ------------------------------------------------------------------------


def test_an_append_whose_reply_was_lost_is_recorded_once_and_succeeds(store: Store) -> None:
    client = store.client()
    backend = store.connect(client)
    backend.append_log("r", [b"a"], 0)
    direct = store.client()

    def land_then_lose_the_reply(request: Any) -> BaseException:
        key = unquote(request.url.split(f"/{store.server.bucket}/", 1)[1].split("?")[0])
        body = request.body.read() if hasattr(request.body, "read") else request.body
        if hasattr(request.body, "seek"):
            request.body.seek(0)
        direct.put_object(Bucket=store.server.bucket, Key=key, Body=body, IfNoneMatch="*")
        return ConnectionClosedError(endpoint_url=request.url)

    attempts = faults(client, "PutObject", 1, land_then_lose_the_reply)
    assert backend.append_log("r", [b"b"], 1) == 2  # botocore's retry gets a 412: the object is ours
    assert len(attempts) == 2
    assert store.connect().read_log("r") == ([b"a", b"b"], 2)


def test_a_worker_still_holding_a_deleted_run_cannot_write_into_it(store: Store) -> None:
    stale, other = store.connect(), store.connect()
    stale.append_log("r", [b"a", b"b"], 0)
    other.read_log("r")
    other.delete_run("r")
    with pytest.raises(Conflict):
        stale.append_log("r", [b"c"], 2)
    assert stale.read_log("r") == ([], 0)
    assert len(store.keys("runs/r/")) == 1  # the tombstone
    assert other.append_log("r", [b"new"], 0) == 1  # the id can be used again
    assert store.connect().read_log("r") == ([b"new"], 1)


# -- the due index and posts -----------------------------------------------------------


def test_due_is_one_list_request_whatever_the_number_of_parked_runs(store: Store) -> None:
    backend = store.connect()
    now = time.time()
    backend.schedule("q", "due-now", now - 1)
    requests = Requests(backend.client)
    backend.due("q", now, 10)  # the first poll also looks for interrupted posts

    def one_poll() -> int:
        requests.clear()
        assert backend.due("q", now, 10) == ["due-now"]
        return len(requests)

    assert one_poll() == 1
    with ThreadPoolExecutor(16) as pool:  # parked from a minute to ten years ahead
        list(pool.map(lambda i: backend.schedule("q", f"parked-{i}", now + 60 + i * 105_000), range(300)))
    assert one_poll() == 1
    assert requests.seen[0][0] == "ListObjectsV2"


def _crash(request: Any) -> BaseException:
    return SystemExit("the poster died here")


@pytest.mark.parametrize(
    ("crash_at", "operation", "url_part"),
    [
        ("message", "PutObject", "/inbox/"),  # after the marker
        ("pointer", "PutObject", "/due.q"),  # after the message
        ("entry", "PutObject", "/due/q/"),  # after the pointer names the new entry
        ("cleanup", "DeleteObjects", ""),  # after the entry, the marker not yet removed
    ],
)
def test_a_poster_that_dies_between_any_two_writes_loses_nothing(
    store: Store, crash_at: str, operation: str, url_part: str
) -> None:
    setup = store.connect()
    setup.schedule("q", "r", time.time() + 3600)  # parked on a timer an hour ahead
    client = store.client()
    poster = store.connect(client)
    crashed: list[str] = []

    def hook(request: Any, **kwargs: Any) -> None:
        if url_part in request.url and not crashed:
            crashed.append(request.url)
            raise SystemExit("the poster died here")

    client.meta.events.register(f"before-send.s3.{operation}", hook)
    with pytest.raises(SystemExit):
        poster.post("q", "r", Message("m1", b"hello"))
    assert crashed

    restarted = store.connect()
    later = time.time() + POSTING_GRACE + 1
    assert restarted.due("q", later, 10) == ["r"]  # the run gets a turn
    expected = [] if crash_at == "message" else [Message("m1", b"hello")]
    assert restarted.take_inbox("r") == expected
    restarted.post("q", "r", Message("m1", b"hello"))  # the sender's retry
    assert restarted.take_inbox("r") == [Message("m1", b"hello")]
    assert store.keys("posting/") == []
    restarted.unschedule("q", "r")
    assert restarted.due("q", later + 7200, 10) == []  # no entry was left behind


def test_a_poll_cleans_up_an_entry_no_pointer_names(store: Store) -> None:
    backend = store.connect()
    backend.schedule("q", "r", 100.0)
    backend.client.put_object(  # as left by a crash between writing a new entry and removing the old one
        Bucket=store.server.bucket, Key=store.server.prefix + store.prefix + f"due/q/{50_000_000:017d}-r", Body=b"r"
    )
    assert backend.due("q", 200.0, 10) == ["r"]  # the orphan makes a spurious turn ...
    backend.schedule("q", "r", 4e9)  # ... at whose end it goes
    assert backend.due("q", 1e9, 10) == []


# -- retries and errors ---------------------------------------------------------------


def test_throttling_is_retried_with_backoff(store: Store) -> None:
    client = store.client()
    backend = store.connect(client)
    attempts = faults(client, "PutObject", 2, lambda request: error_reply(request, 503, "SlowDown"))
    assert backend.append_log("r", [b"a"], 0) == 1
    assert len(attempts) == 3
    assert store.connect().read_log("r") == ([b"a"], 1)


def test_failures_past_botocores_attempts_are_retried_until_the_deadline(store: Store) -> None:
    client = store.client(retries={"mode": "standard", "total_max_attempts": 2})
    backend = store.connect(client, retry_for=30.0)
    attempts = faults(client, "ListObjectsV2", 5, lambda request: EndpointConnectionError(endpoint_url=request.url))
    assert backend.read_log("r") == ([], 0)
    assert len(attempts) >= 6

    hopeless = store.connect(client, retry_for=0.5)
    faults(client, "GetObject", 10**6, lambda request: error_reply(request, 503, "SlowDown"))
    with pytest.raises(S3Error, match=r"SlowDown.*still failing"):
        hopeless.read_info("r")

    backend.retry_for = 0.5  # changed after it was made: its requests give up as soon
    assert backend.retry_for == 0.5
    with pytest.raises(S3Error, match=r"SlowDown.*still failing after 0s"):
        backend.read_info("r")


def test_other_errors_are_typed_and_say_what_to_do(store: Store) -> None:
    client = store.client()
    backend = store.connect(client)
    attempts = faults(client, "GetObject", 10**6, lambda request: error_reply(request, 403, "AccessDenied"))
    with pytest.raises(S3Error, match=r"AccessDenied.*credentials") as e:
        backend.read_info("r")
    assert e.value.code == "AccessDenied" and len(attempts) == 1  # not retried
    faults(client, "PutObject", 10**6, lambda request: error_reply(request, 404, "NoSuchBucket"))
    with pytest.raises(S3Error, match=r"NoSuchBucket.*create it"):
        backend.write_info("r", b"x")


def test_from_url_uses_the_endpoint_region_and_credential_chain(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    if store.server.name == "url":
        pytest.skip("the URL server's credentials are the environment's")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    url = f"s3://{store.server.bucket}/{store.prefix}?endpoint_url={store.server.endpoint_url}&region=eu-west-1"
    backend = from_url(url)
    try:
        assert isinstance(backend, S3Backend) and backend.prefix == store.prefix
        assert backend.client.meta.region_name == "eu-west-1"
        backend.write_info("r", b"summary")
        assert store.connect().read_info("r") == b"summary"
    finally:
        backend.close()
