"""What only the files backend has: framing, torn tails, folder names, buckets, post markers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from substantial.backends import FSBackend, Message, from_url
from substantial.backends.fs import _FILE_HEAD, POSTING_GRACE, frame, run_dir_name
from substantial.errors import Conflict, CorruptRecord, InvalidRunId


@pytest.fixture
def fs(tmp_path: Path) -> FSBackend:
    return FSBackend(tmp_path / "store")


def log_file(fs: FSBackend, run_id: str) -> Path:
    return fs.root / "runs" / run_dir_name(run_id) / "log"


@pytest.mark.parametrize(
    "tail",
    [
        frame(b"fourth")[:5],  # torn header
        frame(b"fourth")[:-2],  # torn body
        frame(b"fourth")[:-1] + b"\x00",  # last byte never written
        b"\x00" * 40,  # zeros past the end after a crash
    ],
    ids=["header", "body", "last-byte", "zeros"],
)
def test_a_torn_tail_is_dropped_and_truncated_by_the_next_append(tmp_path: Path, tail: bytes) -> None:
    fs = FSBackend(tmp_path / "store")
    fs.append_log("r", [b"one", b"two", b"three"], 0)
    with open(log_file(fs, "r"), "ab") as f:
        f.write(tail)
    fresh = FSBackend(fs.root)  # another process, nothing cached
    assert fresh.read_log("r") == ([b"one", b"two", b"three"], 3)
    assert fresh.append_log("r", [b"four"], 3) == 4
    assert FSBackend(fs.root).read_log("r") == ([b"one", b"two", b"three", b"four"], 4)


def test_corruption_in_the_middle_raises_for_that_run_only(fs: FSBackend) -> None:
    fs.append_log("bad", [b"one", b"two-two", b"three"], 0)
    fs.append_log("good", [b"fine"], 0)
    path = log_file(fs, "bad")
    data = bytearray(path.read_bytes())
    data[_FILE_HEAD + len(frame(b"one")) + 13] ^= 0xFF  # a byte inside the second record's payload
    path.write_bytes(bytes(data))
    fresh = FSBackend(fs.root)
    with pytest.raises(CorruptRecord, match="'bad'"):
        fresh.read_log("bad")
    with pytest.raises(CorruptRecord):
        fresh.append_log("bad", [b"x"], 3)
    assert fresh.read_log("good") == ([b"fine"], 1)


def test_a_damaged_header_in_the_middle_is_corruption(fs: FSBackend) -> None:
    fs.append_log("r", [b"one", b"two"], 0)
    path = log_file(fs, "r")
    data = bytearray(path.read_bytes())
    data[_FILE_HEAD + 1] ^= 0xFF  # the first record's length
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRecord):
        FSBackend(fs.root).read_log("r")


def test_folder_names_differ_beyond_case_and_stay_under_the_root(fs: FSBackend) -> None:
    ids = ["Run-A", "run-a", "RUN-A", "a.b_c:d@e", "x" * 128, "Y" * 128, "0"]
    names = {run_dir_name(i) for i in ids}
    assert len({n.lower() for n in names}) == len(ids)  # distinct even where case is ignored
    for run_id in ids:
        fs.write_info(run_id, run_id.encode())
        fs.append_log(run_id, [run_id.encode()], 0)
        folder = (fs.root / "runs" / run_dir_name(run_id)).resolve()
        assert folder.parent == (fs.root / "runs").resolve()
        assert len(folder.name) <= 255
    assert fs.list_runs(limit=100) == sorted(ids)
    assert [fs.read_info(i) for i in ids] == [i.encode() for i in ids]


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "/abs", "x\x00", "", "x" * 129, ".x", "a\\b"])
def test_ids_that_could_name_another_path_are_refused(fs: FSBackend, bad: str) -> None:
    with pytest.raises(InvalidRunId):
        fs.append_log(bad, [b"x"], 0)
    with pytest.raises(InvalidRunId):
        fs.post("q", "r", Message(bad, b""))
    assert list((fs.root / "runs").iterdir()) == []  # nothing was created anywhere


def test_a_poll_lists_a_bounded_number_of_names_however_many_runs_are_parked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = FSBackend(tmp_path / "store", fsync=False)
    now = time.time()
    listed: list[int] = []
    real_listdir = os.listdir

    def counting_listdir(path: object) -> list[str]:
        names = real_listdir(path)  # type: ignore[call-overload]
        listed.append(len(names))
        return names  # type: ignore[no-any-return]

    def names_listed_by_one_poll() -> int:
        listed.clear()
        monkeypatch.setattr(os, "listdir", counting_listdir)
        try:
            assert fs.due("q", now, 10) == ["due-now"]
        finally:
            monkeypatch.setattr(os, "listdir", real_listdir)
        return sum(listed)

    fs.schedule("q", "due-now", now - 1)
    empty = names_listed_by_one_poll()
    for i in range(3000):  # parked from a minute to ten years ahead
        fs.schedule("q", f"parked-{i}", now + 60 + i * 105_000)
    assert names_listed_by_one_poll() <= empty + 256 + 1440


def _die(*args: object, **kwargs: object) -> None:
    raise SystemExit("killed")


@pytest.mark.parametrize("crash_at", ["message", "due", "unmark"])
def test_a_poster_that_dies_between_any_two_writes_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    root = tmp_path / "store"
    fs = FSBackend(root)
    fs.unschedule("q", "r")
    if crash_at == "message":  # after the marker, before the message
        real_write = fs._write

        def write_then_die(path: Path, data: bytes, *, durable: bool = True) -> None:
            if path.parent.name == "inbox":
                _die()
            real_write(path, data, durable=durable)

        monkeypatch.setattr(fs, "_write", write_then_die)
    elif crash_at == "due":  # after the message, before the due entry
        monkeypatch.setattr(fs, "schedule", _die)
    else:  # after the due entry, before the marker goes
        monkeypatch.setattr(os, "unlink", _die)
    with pytest.raises(SystemExit):
        fs.post("q", "r", Message("m1", b"hello"))
    monkeypatch.undo()

    restarted = FSBackend(root)
    later = time.time() + POSTING_GRACE + 1
    assert restarted.due("q", later, 10) == ["r"]  # the run gets a turn
    expected = [] if crash_at == "message" else [Message("m1", b"hello")]
    assert restarted.take_inbox("r") == expected
    restarted.post("q", "r", Message("m1", b"hello"))  # the sender's retry
    assert restarted.take_inbox("r") == [Message("m1", b"hello")]
    assert list((root / "posting").iterdir()) == []


def test_from_url_makes_file_and_memory_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = from_url(f"file://{tmp_path}/abs")
    assert isinstance(backend, FSBackend) and backend.root == tmp_path / "abs"
    monkeypatch.chdir(tmp_path)
    relative = from_url("file:rel/dir")
    assert isinstance(relative, FSBackend) and relative.root == tmp_path / "rel" / "dir"
    assert type(from_url("memory://")).__name__ == "MemoryBackend"
    for bad in ["file://host/x", "ftp://x", "file:"]:
        with pytest.raises(ValueError):
            from_url(bad)


def test_a_conductor_with_no_backend_uses_the_environment_or_local_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from substantial import Conductor

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SUBSTANTIAL_URL", raising=False)
    default = Conductor().backend
    assert isinstance(default, FSBackend) and default.root == tmp_path / ".substantial"
    monkeypatch.setenv("SUBSTANTIAL_URL", f"file://{tmp_path}/env")
    configured = Conductor().backend
    assert isinstance(configured, FSBackend) and configured.root == tmp_path / "env"


@pytest.mark.parametrize("attempt", range(20))
def test_a_stale_client_cannot_append_after_the_log_was_replaced_or_deleted(tmp_path: Path, attempt: int) -> None:
    """Replacing or deleting a log frees its inode, which the next log file often gets again."""
    a, b = FSBackend(tmp_path / "store"), FSBackend(tmp_path / "store")
    a.append_log("r", [b"1", b"2", b"3"], 0)
    b.replace_log("r", [b"y"], 3)
    b.replace_log("r", [b"z"], 1)
    with pytest.raises(Conflict):
        a.append_log("r", [b"4"], 3)
    assert a.read_log("r", after=3) == ([], 1)
    b.delete_run("r")
    b.append_log("r", [b"new"], 0)
    with pytest.raises(Conflict):
        a.append_log("r", [b"5"], 3)
    assert b.read_log("r") == ([b"new"], 1)


def test_a_log_file_that_is_not_one_is_corruption(fs: FSBackend) -> None:
    fs.append_log("r", [b"one"], 0)
    path = log_file(fs, "r")
    path.write_bytes(b"garbage!" * 4)
    with pytest.raises(CorruptRecord, match="does not begin"):
        FSBackend(fs.root).read_log("r")
