"""Records, codecs, retry policies and the workflow decorator."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from substantial import CodecError, Context, CorruptRecord, JSONCodec, PickleCodec, Retry, workflow
from substantial import events as ev
from substantial.codec import encode_at

FAILURE = ev.Failure("ValueError", "bad", "Traceback ...")
ALL_RECORDS: list[ev.Record] = [
    ev.RunStarted(message_id="start", workflow="w", queue="q", args=b"{}"),
    ev.StepCompleted(step=3, at=1.5, command="save", fingerprint="f", value=b"1", compensable=True),
    ev.StepFailed(step=1, command="save", fingerprint="f", error=FAILURE, attempts=3),
    ev.StepAttempt(step=1, command="save", fingerprint="f", attempt=2, error=FAILURE, next_at=9.5),
    ev.TimerSet(step=2, command="sleep", fire_at=10.0),
    ev.TimerFired(step=2, command="sleep"),
    ev.EventReceived(message_id="m", name="n", payload=b"null"),
    ev.EventConsumed(step=4, command="receive", fingerprint="n", message_id="m"),
    ev.Logged(seq=0, level=20, message="hi"),
    ev.CancelRequested(message_id="c", reason="why"),
    ev.StepCancelled(step=5, command="sleep", reason="why"),
    ev.RunCompleted(value=b"2"),
    ev.RunFailed(error=FAILURE),
    ev.RunCancelled(reason="why"),
]


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_survives_encoding(record: ev.Record) -> None:
    assert ev.decode(ev.encode(record)) == record


def test_empty_records_keep_their_kind() -> None:
    assert isinstance(ev.decode(ev.encode(ev.TimerFired())), ev.TimerFired)
    assert isinstance(ev.decode(ev.encode(ev.RunCompleted(value=b""))), ev.RunCompleted)


@pytest.mark.parametrize(
    "record", ALL_RECORDS[:1] + ALL_RECORDS[6:7] + ALL_RECORDS[9:10], ids=lambda r: type(r).__name__
)
def test_inbox_messages_survive_encoding(record: Any) -> None:
    decoded = ev.decode_message(ev.encode_message(record), at=7.0)
    assert decoded == dataclasses.replace(record, at=7.0)


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"", ev.encode(ev.TimerFired())[:-1] + b"\x99"])
def test_garbage_is_a_corrupt_record(data: bytes) -> None:
    with pytest.raises(CorruptRecord):
        ev.decode(data)


def test_json_codec_round_trips_plain_data_and_refuses_the_rest() -> None:
    codec = JSONCodec()
    value = {"a": [1, 2.5, None, True, "é"], "b": {}}
    assert codec.decode(codec.encode(value)) == value
    for bad in [{1, 2}, object(), float("nan"), b"bytes"]:
        with pytest.raises(CodecError):
            codec.encode(bad)
    with pytest.raises(CodecError, match="run 'r', step 4"):
        encode_at(codec, {1}, "r", "step 4")
    with pytest.raises(CodecError):
        codec.decode(b"{not json")


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b' {"a": 1}\n', {"a": 1}),  # written by hand or another tool: whitespace
        (b'\xef\xbb\xbf{"a":1}', {"a": 1}),  # a byte order mark
        ('{"é":[1]}'.encode("utf-16"), {"é": [1]}),
        ('"é"'.encode(), "é"),  # UTF-8 as it is
        (b'"\\u00e9"', "é"),
    ],
)
def test_json_codec_reads_whatever_json_loads_reads(data: bytes, value: Any) -> None:
    assert JSONCodec().decode(data) == value


@pytest.mark.parametrize("data", [b"", b"[1,2", b"1 2", b'{"a":1}x', b"\xff", b"{'a': 1}"])
def test_json_codec_refuses_what_json_loads_refuses(data: bytes) -> None:
    with pytest.raises(CodecError, match="not valid JSON"):
        JSONCodec().decode(data)


def test_pickle_codec_round_trips_objects() -> None:
    codec = PickleCodec()
    assert codec.decode(codec.encode({1, 2})) == {1, 2}
    with pytest.raises(CodecError):
        codec.encode(lambda: None)


def test_retry_delays_grow_and_are_capped() -> None:
    policy = Retry(max_attempts=10, initial=timedelta(seconds=1), backoff=3, max_interval=10)
    assert [policy.delay(n) for n in range(1, 5)] == [1, 3, 9, 10]
    assert policy.retries(ValueError(), 9) and not policy.retries(ValueError(), 10)
    assert not Retry(non_retryable=(KeyError,)).retries(KeyError(), 1)


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"backoff": 0.5}, {"initial": -1}])
def test_bad_retry_policies_are_refused(kwargs: Any) -> None:
    with pytest.raises(ValueError):
        Retry(**kwargs)


def test_workflow_names_default_to_module_and_qualname() -> None:
    @workflow()
    def wf(c: Context) -> Any:
        yield c.now()

    @workflow
    def bare(c: Context) -> Any:
        yield c.now()

    assert wf.name == f"{__name__}.test_workflow_names_default_to_module_and_qualname.<locals>.wf"
    assert bare.queue == "default"
    assert workflow("named", queue="q")(wf.fn).name == "named"


def test_a_workflow_must_be_a_generator_function() -> None:
    with pytest.raises(TypeError, match="generator"):

        @workflow()
        def plain(c: Context) -> int:
            return 1
