"""What only the files backend has: framing, torn tails, folder names, buckets, post markers."""

from __future__ import annotations

import contextlib
import os
import random
import select
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from substantial.backends import FSBackend, Message, from_url, fs_listings
from substantial.backends import fs as fs_module
from substantial.backends.fs import POSTING_GRACE
from substantial.backends.fs_names import run_dir_name
from substantial.backends.fs_records import FILE_HEAD, READ_AT_ONCE, frame, read_file, unique_name
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
    data[FILE_HEAD + len(frame(b"one")) + 13] ^= 0xFF  # a byte inside the second record's payload
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
    data[FILE_HEAD + 1] ^= 0xFF  # the first record's length
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


def _store_fds(root: Path) -> int:
    """How many descriptors this process has open on files under ``root``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(root)):
                count += 1
    return count


def _finishes_within(seconds: float, call: Callable[[], object]) -> threading.Thread:
    """Start ``call`` in a thread; the thread, once joined for ``seconds`` (alive if it blocked)."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


@needs_proc
def test_idle_lock_files_stay_open_for_the_runs_used_last_and_no_more(tmp_path: Path) -> None:
    fs = FSBackend(tmp_path / "store", fsync=False, open_locks=8)
    for i in range(50):
        fs.append_log(f"r{i}", [b"x"], 0)
    assert _store_fds(fs.root) == 8
    fs.append_log("r49", [b"y"], 1)  # a run used last keeps its lock file open: no reopening
    assert _store_fds(fs.root) == 8
    fs.delete_run("r49")
    assert _store_fds(fs.root) == 7
    fs.close()
    assert _store_fds(fs.root) == 0


def test_a_run_deleted_and_made_again_gets_a_fresh_lock(tmp_path: Path) -> None:
    """A client's open lock file of a deleted run must not be taken for the new run's lock."""
    a, b = FSBackend(tmp_path / "store"), FSBackend(tmp_path / "store")
    a.append_log("r", [b"old"], 0)  # a keeps r's lock file open
    b.delete_run("r")
    b.append_log("r", [b"new"], 0)
    with a._locked("r"):
        blocked = _finishes_within(0.3, lambda: b.append_log("r", [b"b"], 1))
        assert blocked.is_alive()  # b waits for a: both lock the new run's file
    blocked.join(10)
    assert not blocked.is_alive()
    assert a.read_log("r") == ([b"new", b"b"], 2)


@pytest.mark.parametrize("change", ["replace", "delete"])
def test_an_append_after_another_client_moved_the_log_goes_to_the_new_one(tmp_path: Path, change: str) -> None:
    a, b = FSBackend(tmp_path / "store"), FSBackend(tmp_path / "store")
    a.append_log("r", [b"old"], 0)  # a has read and cached the log's tail
    if change == "replace":
        assert b.replace_log("r", [b"new"], 1) == 1
    else:
        b.delete_run("r")
        b.append_log("r", [b"new"], 0)
    assert a.append_log("r", [b"a"], 1) == 2
    assert b.read_log("r") == ([b"new", b"a"], 2)
    with pytest.raises(Conflict):
        a.append_log("r", [b"stale"], 1)


@pytest.fixture
def random_state() -> Iterator[None]:
    """The random module's state, put back after the test seeds it."""
    state = random.getstate()
    yield
    random.setstate(state)


@pytest.mark.usefixtures("random_state")
def test_names_and_log_ids_do_not_repeat_when_code_seeds_the_random_module(tmp_path: Path) -> None:
    a, b = FSBackend(tmp_path / "store"), FSBackend(tmp_path / "store")
    random.seed(7)
    a.append_log("r", [b"x"] * 5, 0)
    b.read_log("r")  # b caches the tail of the file with this head
    random.seed(7)  # as a step or a test plugin may
    assert a.replace_log("r", [b"y"], 5) == 1
    with pytest.raises(Conflict):  # the new file has another head: b reads it, not its cached tail
        b.append_log("r", [b"z"], 5)
    random.seed(7)
    first = unique_name()
    random.seed(7)
    assert unique_name() != first


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_other_names_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, unique_name().encode())
        os._exit(0)
    os.close(write)
    ours = unique_name()
    with os.fdopen(read) as pipe:
        theirs = pipe.read()
    os.waitpid(pid, 0)
    assert len(theirs) == 32 and theirs != ours


def test_a_lease_file_stays_open_with_its_lock_and_closes_with_it(tmp_path: Path) -> None:
    fs = FSBackend(tmp_path / "store", fsync=False, open_locks=4)
    for i in range(10):
        assert fs.acquire_lease(f"r{i}", "w", 30)
    assert _store_fds(fs.root) == 8  # the four runs used last: their lock and lease files
    fs.release_lease("r9", "w")
    assert fs.acquire_lease("r9", "v", 30)  # read and written through the open file
    assert _store_fds(fs.root) == 8
    fs.close()
    assert _store_fds(fs.root) == 0


def test_a_run_deleted_and_made_again_gets_a_fresh_lease(tmp_path: Path) -> None:
    """A client's open lease file of a deleted run must not be taken for the new run's lease."""
    a, b = FSBackend(tmp_path / "store"), FSBackend(tmp_path / "store")
    assert a.acquire_lease("r", "a", 30)  # a keeps r's lock and lease files open
    b.delete_run("r")
    b.append_log("r", [b"new"], 0)
    assert a.acquire_lease("r", "a-again", 30)  # the new run's lease is free
    assert not b.acquire_lease("r", "b", 30)  # and a wrote it in the new run's folder
    a.release_lease("r", "a-again")
    assert b.acquire_lease("r", "b", 30)


def test_a_lock_held_by_a_killed_process_is_released(tmp_path: Path) -> None:
    root = tmp_path / "store"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from substantial.backends import FSBackend\n"
            "fs = FSBackend(sys.argv[1])\n"
            "with fs._locked('r'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n",
            str(root),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        fs = FSBackend(root)
        waiting = _finishes_within(0.3, lambda: fs.acquire_lease("r", "me", 10))
        assert waiting.is_alive()  # the other process holds the run's lock
        holder.kill()
        holder.wait(10)
        waiting.join(10)
        assert not waiting.is_alive()  # the kernel released the dead process's lock
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


class ForkedChild:
    """A forked child that waits for ``go()``, runs ``work`` and sends back the one byte it returns."""

    def __init__(self, work: Callable[[], bytes]) -> None:
        self._go_read, self._go_write = os.pipe()
        self._done_read, self._done_write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with other threads alive (3.12)
            self.pid = os.fork()
        if self.pid == 0:
            try:
                os.read(self._go_read, 1)
                os.write(self._done_write, work())
            finally:
                os._exit(0)

    def go(self) -> None:
        os.write(self._go_write, b"x")

    def answer(self, timeout: float) -> bytes | None:
        """The child's byte, or None if it sent none within ``timeout`` seconds."""
        if select.select([self._done_read], [], [], timeout)[0] == []:
            return None
        return os.read(self._done_read, 1)

    def close(self) -> None:
        os.waitpid(self.pid, 0)
        for fd in (self._go_read, self._go_write, self._done_read, self._done_write):
            os.close(fd)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_share_its_parents_lock(fs: FSBackend) -> None:
    """A child's copy of a descriptor shares the parent's flock: the child must open its own."""
    fs.append_log("r", [b"one"], 0)  # the lock file is open when the process forks

    def lease() -> bytes:
        fs.acquire_lease("r", "child", 10)  # waits while the parent holds the run's lock
        return b"x"

    child = ForkedChild(lease)
    try:
        with fs._locked("r"):
            child.go()
            assert child.answer(0.5) is None  # the child waits for the parent
        assert child.answer(10) == b"x"
    finally:
        child.close()


def test_a_lease_written_over_a_longer_one_reads_back_and_a_torn_one_is_free(fs: FSBackend) -> None:
    assert fs.acquire_lease("r", "a-worker-with-a-long-name", 30)
    fs.release_lease("r", "a-worker-with-a-long-name")
    assert fs.acquire_lease("r", "b", 30)  # shorter: the end of the longer record stays in the file
    assert not fs.acquire_lease("r", "a-worker-with-a-long-name", 30)
    assert fs.renew_lease("r", "b", 30)
    lease = fs.root / "runs" / run_dir_name("r") / "lease"
    torn = bytearray(lease.read_bytes())
    torn[len(frame(b"")) + 1] ^= 0xFF  # a byte of the record's payload: a crash tore the write
    lease.write_bytes(bytes(torn))
    assert fs.acquire_lease("r", "c", 30)
    assert not fs.renew_lease("r", "b", 30)


def _pointer(fs: FSBackend, run_id: str, queue: str = "q") -> Path:
    return fs.root / "runs" / run_dir_name(run_id) / f"due.{queue}"


def test_a_due_pointer_torn_by_a_crash_keeps_its_run_due_until_a_schedule_writes_it_whole(fs: FSBackend) -> None:
    now = time.time()
    fs.schedule("q", "r", now - 1)
    pointer = _pointer(fs, "r")
    torn = bytearray(pointer.read_bytes())
    torn[len(frame(b"")) + 2] ^= 0xFF  # a byte of the entry's path
    pointer.write_bytes(bytes(torn))
    assert fs.due("q", now, 10) == ["r"]  # not taken for stale: the run keeps its entry
    assert FSBackend(fs.root).due("q", now, 10) == ["r"]
    fs.schedule("q", "r", now + 3600)  # the turn parks the run: the pointer is whole again
    assert fs.due("q", now, 10) == []  # and the entry the torn pointer named is stale
    assert fs.due("q", now + 3601, 10) == ["r"]
    fs.unschedule("q", "r")
    assert fs.due("q", now + 3601, 10) == []


def test_a_due_pointer_written_whole_by_an_earlier_version_is_read(fs: FSBackend) -> None:
    now = time.time()
    fs.schedule("q", "r", now - 1)
    entry = Path(fs._due.path("q", run_dir_name("r"), now - 1))
    _pointer(fs, "r").write_bytes(str(entry).encode())  # the path, not a framed record
    assert fs.due("q", now, 10) == ["r"]
    fs.schedule("q", "r", now + 3600)
    assert not entry.exists()


@pytest.mark.parametrize("run_id", ["r", "Run-A", "Y" * 128])
def test_a_due_entry_is_empty_and_names_its_run_by_its_file_name(fs: FSBackend, run_id: str) -> None:
    now = time.time()
    fs.schedule("q", run_id, now - 1)
    (entry,) = (p for p in (fs.root / "queues" / "q").rglob("*") if p.is_file())
    assert entry.read_bytes() == b""
    assert fs.due("q", now, 10) == [run_id]
    fs.delete_run(run_id)
    assert fs.due("q", now, 10) == []
    assert not entry.exists()


@pytest.mark.parametrize("size", [0, 100, READ_AT_ONCE - 1, READ_AT_ONCE, READ_AT_ONCE + 1, 5 * READ_AT_ONCE])
def test_files_of_any_size_are_read_whole(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f"
    data = bytes(i % 251 for i in range(size))
    path.write_bytes(data)
    assert read_file(str(path)) == data
    assert read_file(str(tmp_path / "missing")) is None


def test_a_small_file_is_read_in_three_system_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"summary")
    calls = [_recorded(monkeypatch, os, name) for name in ("open", "read", "pread", "fstat", "close")]
    assert read_file(str(path)) == b"summary"
    assert [len(c) for c in calls] == [1, 1, 0, 0, 1]


def test_a_summary_torn_by_a_crash_leaves_the_one_before(fs: FSBackend) -> None:
    fs.write_info("r", b"first, and longer")
    fs.write_info("r", b"second")
    assert fs.read_info("r") == b"second"
    newest = fs.root / "runs" / "r" / "info.1"
    torn = bytearray(newest.read_bytes())
    torn[-1] ^= 0xFF
    newest.write_bytes(bytes(torn))
    assert FSBackend(fs.root).read_info("r") == b"first, and longer"
    fs.write_info("r", b"third")  # over the torn slot
    assert FSBackend(fs.root).read_info("r") == b"third"
    fs.write_info("r", b"4")  # over the longer first: its end stays in the file, past the record
    assert FSBackend(fs.root).read_info("r") == b"4"
    assert fs.list_runs() == ["r"]


def test_a_summary_written_whole_by_an_earlier_version_is_read(fs: FSBackend) -> None:
    fs.append_log("r", [b"x"], 0)
    (fs.root / "runs" / "r" / "info").write_bytes(b"legacy")
    assert fs.read_info("r") == b"legacy"
    assert fs.list_runs() == ["r"]
    fs.write_info("r", b"new")
    assert fs.read_info("r") == b"new"


def test_a_reader_never_sees_a_summary_half_written(tmp_path: Path) -> None:
    writer, reader = FSBackend(tmp_path / "store", fsync=False), FSBackend(tmp_path / "store", fsync=False)
    written = [b"%d:" % i + b"x" * (i % 97) for i in range(3000)]
    writer.write_info("r", written[0])
    thread = threading.Thread(target=lambda: [writer.write_info("r", s) for s in written[1:]])
    thread.start()
    seen = set()
    while thread.is_alive():
        seen.add(reader.read_info("r"))
    thread.join()
    assert seen <= set(written)
    assert reader.read_info("r") == written[-1]


def test_a_schedule_makes_its_buckets_again_when_another_move_removes_one(
    fs: FSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run's move removes empty buckets: one may go between our mkdir of it and of the folder in it."""
    now = time.time()
    fs.append_log("r", [b"x"], 0)
    real_mkdir = os.mkdir
    raced: list[Path] = []

    def racing_mkdir(path: str, *args: Any, **kwargs: Any) -> None:
        folder = Path(path)
        if not raced and folder.parent.parent.parent.name == "q":  # the minute bucket, in a day bucket just made
            raced.append(folder)
            folder.parent.rmdir()
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    fs.schedule("q", "r", now - 1)
    monkeypatch.undo()
    assert raced
    assert fs.due("q", now, 10) == ["r"]


@pytest.mark.parametrize("run_id", ["r", "Mixed-Case"], ids=["plain-name", "hashed-name"])
def test_a_start_whose_process_dies_before_its_rename_leaves_an_entry_a_poll_removes_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_id: str
) -> None:
    root = tmp_path / "store"
    fs = FSBackend(root)
    monkeypatch.setattr(os, "rename", _die)
    with pytest.raises(SystemExit):
        fs.start_run("q", run_id, b"summary", Message("start", b"go"))
    monkeypatch.undo()

    restarted = FSBackend(root)
    entries = lambda: [p for p in (root / "queues").rglob("*") if p.is_file()]  # noqa: E731
    assert len(entries()) == 1
    assert restarted.due("q", time.time() + 1, 10) == []  # no folder yet: passed over, left for the rename
    assert len(entries()) == 1
    assert restarted.due("q", time.time() + POSTING_GRACE + 1, 10) == []  # too old for a rename to come: removed
    assert entries() == []
    assert restarted.read_info(run_id) is None and restarted.list_runs() == []
    restarted.start_run("q", run_id, b"summary", Message("start", b"go"))  # the caller's retry
    assert restarted.due("q", time.time() + 1, 10) == [run_id]
    assert restarted.take_inbox(run_id) == [Message("start", b"go")]


def test_a_start_after_a_send_to_the_same_run_keeps_both(fs: FSBackend) -> None:
    fs.post("q", "r", Message("early", b"sent first"))
    fs.start_run("q", "r", b"summary", Message("start", b"go"))  # the folder exists: the ordinary way
    assert fs.read_info("r") == b"summary"
    assert fs.take_inbox("r") == [Message("early", b"sent first"), Message("start", b"go")]
    assert fs.due("q", time.time() + 1, 10) == ["r"]
    assert list((fs.root / "tmp").iterdir()) == []


def test_a_start_replaces_the_empty_folder_a_dead_poster_left(fs: FSBackend) -> None:
    (fs.root / "runs" / run_dir_name("r")).mkdir()  # made by a poster that died before its inbox
    fs.start_run("q", "r", b"summary", Message("start", b"go"))
    assert fs.read_info("r") == b"summary"
    assert fs.take_inbox("r") == [Message("start", b"go")]
    assert fs.due("q", time.time() + 1, 10) == ["r"]
    assert fs.list_runs() == ["r"]


def test_a_start_makes_five_fsyncs(fs: FSBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    for attempt in range(3):  # again if a new minute began between the two calls (its bucket is new)
        minute = int(time.time() // 60)
        fs.schedule("q", "warm", time.time())  # the due index's buckets of this minute exist
        calls.clear()
        monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
        fs.start_run("q", f"r{attempt}", b"summary", Message("start", b"go"))
        monkeypatch.undo()
        if int(time.time() // 60) == minute:
            break
    assert len(calls) == 5  # message, inbox folder, run folder, due entry's bucket, runs folder


def _checks(fs: FSBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The due entries a claim reads (``_entry_run``), recorded as it goes."""
    read: list[str] = []
    real = fs._entry_run

    def entry_run(entry: str, now: float) -> str | None:
        read.append(entry)
        return real(entry, now)

    monkeypatch.setattr(fs, "_entry_run", entry_run)
    return read


def test_a_claim_passes_over_the_runs_this_client_leased_without_reading_them(
    fs: FSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    for run_id in ("a", "b"):
        fs.schedule("q", run_id, now - 1)
    assert fs.claim_due("q", time.time(), "w1", 30, limit=1, scan=10) == ["a"]
    read = _checks(fs, monkeypatch)
    assert fs.claim_due("q", time.time(), "w2", 30, limit=1, scan=10) == ["b"]
    assert [os.path.basename(e).partition("-")[2] for e in read] == ["b"]  # "a" is leased here: not read
    fs.release_lease("a", "w1")
    assert fs.claim_due("q", time.time(), "w2", 30, limit=1, scan=10) == ["a"]  # let go: free again


def test_a_claim_reads_a_runs_pointer_once_under_its_lock(fs: FSBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    fs.schedule("q", "a", time.time() - 1)
    pointers = _recorded(monkeypatch, fs_module, "read_pointer")
    assert fs.claim_due("q", time.time(), "w", 30, limit=1, scan=10) == ["a"]
    assert len(pointers) == 1


def test_a_claim_removes_a_stale_entry_and_leases_its_run_by_the_live_one(fs: FSBackend) -> None:
    now = time.time()
    fs.schedule("q", "r", now - 0.5)
    (live,) = (p for p in (fs.root / "queues" / "q").rglob("*") if p.is_file())
    stale = live.with_name(f"{int((now - 1) * 1000):015d}-r")  # left by a crash mid-move: earlier, so walked first
    stale.touch()
    assert fs.claim_due("q", time.time(), "w", 30, limit=1, scan=10) == ["r"]
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("skipped", ["a", "Y" * 128], ids=["plain-name", "hashed-name"])
def test_a_run_in_skip_counts_toward_the_claims_scan(fs: FSBackend, skipped: str) -> None:
    now = time.time()
    fs.schedule("q", skipped, now - 2)
    fs.schedule("q", "b", now - 1)
    assert fs.claim_due("q", now, "w", 30, limit=1, scan=1, skip={skipped}) == []
    assert fs.claim_due("q", now, "w", 30, limit=1, scan=2, skip={skipped}) == ["b"]


def test_a_lease_this_client_holds_is_claimed_once_it_expires(fs: FSBackend) -> None:
    fs.schedule("q", "a", time.time() - 1)
    assert fs.claim_due("q", time.time(), "w1", 0.05, limit=1, scan=10) == ["a"]
    assert fs.claim_due("q", time.time(), "w2", 30, limit=1, scan=10) == []
    deadline = time.monotonic() + 10
    while fs.claim_due("q", time.time(), "w2", 30, limit=1, scan=10) != ["a"]:
        assert time.monotonic() < deadline, "an expired lease was never claimed"
        time.sleep(0.01)


def test_a_claim_passes_over_an_entry_removed_after_its_listing_and_finds_one_made_again(
    fs: FSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    due = time.time() - 1
    for run_id in ("a", "b"):
        fs.schedule("q", run_id, due)
    listed = list(fs._due.walk("q", time.time()))
    real_walk = fs._due.walk

    def walk_then_remove(queue: str, now: float, *, claim: bool = False) -> Iterator[tuple[str, int]]:
        fs.unschedule("q", "a")  # a close of this client, after the walk began and its listing was taken
        yield from listed

    monkeypatch.setattr(fs._due, "walk", walk_then_remove)
    read = _checks(fs, monkeypatch)
    assert fs.claim_due("q", time.time(), "w", 30, limit=2, scan=10) == ["b"]
    assert read == [listed[1][0]]  # a's entry, removed here after the listing, is not read
    monkeypatch.setattr(fs._due, "walk", real_walk)
    fs.release_lease("b", "w")
    fs.schedule("q", "a", due)  # the same entry, made again: the next claim takes it
    assert fs.claim_due("q", time.time(), "w", 30, limit=2, scan=10) == ["a", "b"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_reads_the_leases_its_parent_took(fs: FSBackend) -> None:
    """The parent may let a lease go without the child's copy of its memory knowing."""
    fs.schedule("q", "a", time.time() - 1)
    assert fs.claim_due("q", time.time(), "parent", 30, limit=1, scan=10) == ["a"]
    child = ForkedChild(
        lambda: b"y" if fs.claim_due("q", time.time(), "child", 30, limit=1, scan=10) == ["a"] else b"n"
    )
    try:
        fs.release_lease("a", "parent")
        child.go()
        assert child.answer(10) == b"y"
    finally:
        child.close()


def test_post_markers_are_looked_for_once_a_second_and_then_found(
    fs: FSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    later = time.time() + POSTING_GRACE + 1  # a marker written now is old by then
    assert fs.due("q", later, 10) == []  # looks: there is none
    monkeypatch.setattr(fs, "schedule", _die)  # a poster that dies after its message, before the due entry
    with pytest.raises(SystemExit):
        fs.post("q", "r", Message("m1", b"hello"))
    monkeypatch.undo()
    assert fs.due("q", later + 0.5, 10) == []  # within the second: not looked for
    assert fs.claim_due("q", later + 0.5, "w", 30, limit=1, scan=10) == []
    assert fs.due("q", later + 1, 10) == ["r"]  # a second on: found, the run is due
    assert list((fs.root / "posting").iterdir()) == []


def _recorded(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[Any]:
    """The first arguments (a folder, a path, a descriptor) ``owner.name`` is called with from now on, as it runs."""
    calls: list[Any] = []
    real = getattr(owner, name)

    def recording(first: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(first)
        return real(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls


def _wait_until_quiet(folder: Path, quiet_ns: int) -> None:
    """Sleep until ``folder`` was last changed more than ``quiet_ns`` ago."""
    st = folder.stat()
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    time.sleep(max(changed + quiet_ns - time.time_ns(), 0) / 1e9 + 0.02)


def test_a_listing_is_kept_while_its_folder_is_unchanged_and_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet = 50_000_000
    monkeypatch.setattr(fs_listings, "QUIET_NS", quiet)
    calls = _recorded(monkeypatch, fs_listings, "listed")
    folder = tmp_path / "bucket"
    folder.mkdir()
    for name in ("b", "a"):
        (folder / name).touch()
    listings = fs_listings.Listings()
    _wait_until_quiet(folder, quiet)
    assert listings.names(str(folder)) == ["a", "b"]
    assert listings.names(str(folder)) == ["a", "b"]
    assert len(calls) == 1  # kept: the second look was a stat
    (folder / "c").touch()
    assert listings.names(str(folder)) == ["a", "b", "c"]  # changed: listed again
    assert listings.names(str(folder)) == ["a", "b", "c"]
    assert len(calls) == 3  # changed just now: not kept, so a change in the same tick is not missed
    _wait_until_quiet(folder, quiet)
    listings.names(str(folder))
    listings.names(str(folder))
    assert len(calls) == 4
    (folder / "a").unlink()
    assert listings.names(str(folder)) == ["b", "c"]
    for name in ("b", "c"):
        (folder / name).unlink()
    folder.rmdir()
    assert listings.names(str(folder)) == []


def test_a_claim_lists_only_the_minute_bucket_once_the_upper_ones_are_quiet_and_sees_new_ones(
    fs: FSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet = 50_000_000
    monkeypatch.setattr(fs_listings, "QUIET_NS", quiet)
    now = time.time()
    fs.schedule("q", "two-days-ago", now - 2 * 86400)
    queue = fs.root / "queues" / "q"
    day = next(next(queue.iterdir()).iterdir())
    minute = next(day.iterdir())
    for folder in (queue, day.parent, day):
        _wait_until_quiet(folder, quiet)
    assert fs.due("q", time.time(), 10) == ["two-days-ago"]  # lists every level, keeps the quiet ones
    listed = _recorded(monkeypatch, os, "listdir")
    assert fs.due("q", time.time(), 10) == ["two-days-ago"]
    assert [path for path in map(str, listed) if path.startswith(str(queue))] == [str(minute)]  # its entries only
    fs.schedule("q", "a-day-ago", now - 86400)  # a new day bucket: its parent changed
    assert fs.due("q", time.time(), 10) == ["two-days-ago", "a-day-ago"]


@pytest.fixture
def walk_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claims walk on through a minute's listing until they reach its end, however long that takes."""
    monkeypatch.setattr(fs_listings, "CURSOR_FOR", 3600.0)


def _in_one_minute(fs: FSBackend, *run_ids: str, gap: float = 0.01) -> float:
    """Schedule ``run_ids`` ``gap`` seconds apart in this minute's bucket; the due time of the first."""
    first = (time.time() // 60) * 60 + 0.5
    for i, run_id in enumerate(run_ids):
        fs.schedule("q", run_id, first + i * gap)
    return first


@pytest.mark.usefixtures("walk_kept")
def test_claims_walk_on_through_a_minute_listed_once(fs: FSBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [f"r{i:03d}" for i in range(200)]
    now = _in_one_minute(fs, *runs, gap=0.001) + 1
    listed = _recorded(monkeypatch, fs_listings, "listed")
    read = _checks(fs, monkeypatch)
    taken = [fs.claim_due("q", now, "w", 30, limit=1, scan=10) for _ in runs]
    assert taken == [[run_id] for run_id in runs]
    minutes = [folder for folder in listed if len(os.path.basename(folder)) == 11]  # (upper buckets: not quiet yet)
    assert len(minutes) == 1  # the minute's entries, listed once: each claim went on from where the last stopped
    assert len(read) == len(runs)  # and read only the entry it leased
    assert fs.claim_due("q", now, "w", 30, limit=1, scan=10) == []  # at the end: listed again, all leased


@pytest.mark.usefixtures("walk_kept")
def test_an_entry_this_client_makes_behind_the_walk_is_found_by_the_next_claim(fs: FSBackend) -> None:
    first = _in_one_minute(fs, "a", "b", "c")
    now = first + 1
    assert fs.claim_due("q", now, "w", 30, limit=2, scan=10) == ["a", "b"]
    fs.schedule("q", "early", first + 0.001)  # between a and b: behind the walk's place
    assert fs.claim_due("q", now, "w", 30, limit=1, scan=10) == ["early"]
    assert fs.claim_due("q", now, "w", 30, limit=1, scan=10) == ["c"]


@pytest.mark.usefixtures("walk_kept")
def test_a_run_let_go_without_its_turn_is_found_by_the_next_claim(fs: FSBackend) -> None:
    now = _in_one_minute(fs, "a", "b") + 1
    assert fs.claim_due("q", now, "w", 30, limit=1, scan=10) == ["a"]
    fs.release_lease("a", "w")  # its entry stays, still due, behind the walk
    assert fs.claim_due("q", now, "w", 30, limit=2, scan=10) == ["a", "b"]


@pytest.mark.usefixtures("walk_kept")
def test_a_walk_stops_before_entries_not_yet_due_and_takes_them_once_due(fs: FSBackend) -> None:
    first = _in_one_minute(fs, "a", "later", "later-still", "last", gap=5.0)
    assert fs.claim_due("q", first + 1, "w", 30, limit=5, scan=10) == ["a"]
    assert fs.claim_due("q", first + 2, "w", 30, limit=5, scan=10) == []
    assert fs.claim_due("q", first + 5, "w", 30, limit=5, scan=10) == ["later"]
    assert fs.claim_due("q", first + 15, "w", 30, limit=5, scan=10) == ["later-still", "last"]


def test_an_entry_another_client_makes_behind_the_walk_is_found_soon(tmp_path: Path) -> None:
    mine, other = FSBackend(tmp_path / "store"), FSBackend(tmp_path / "store")
    first = _in_one_minute(mine, *(f"r{i}" for i in range(5)))
    now = first + 1
    assert mine.claim_due("q", now, "w", 30, limit=2, scan=10) == ["r0", "r1"]
    other.schedule("q", "early", first + 0.001)  # between r0 and r1: behind the walk's place
    deadline = time.monotonic() + 10
    found: list[str] = []
    while "early" not in found:  # within CURSOR_FOR, or once the walk reaches the end of its listing
        assert time.monotonic() < deadline, "an entry made behind the walk was never claimed"
        found += mine.claim_due("q", now, "w", 30, limit=1, scan=10)
    assert found[-1] == "early"
