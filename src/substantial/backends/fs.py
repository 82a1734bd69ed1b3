"""The local files backend: one folder per run, fsync'd appends under a file lock.

Layout under the root (see docs/backends.md)::

    runs/<name>/log            a random file id, then records framed with length and CRCs
    runs/<name>/lock           the run's lock file (log, lease, due pointer, summary)
    runs/<name>/inbox/<id>     one file per unacknowledged message
    runs/<name>/info.0, info.1 the run's summary: two numbered slots, the older rewritten
    runs/<name>/lease          owner and expiry of the lease: a framed record
    runs/<name>/due.<queue>    which due entry is the run's, on that queue: a framed record
    runs/<name>/id             the run id, when the name cannot spell it
    queues/<queue>/<256 days>/<day>/<minute>/<due ms>-<name>   the due index (links to a blank)
    blank/<n>                  the empty files due entries are hard links to
    posting/<ns>-<uuid>        a post in progress: its queue and run
    tmp/                       files being written, renamed into place

Messages and post markers are written to ``tmp/``, fsync'd and renamed into
place, and their folder fsync'd; the log is appended in place and fsync'd.
The small files rewritten every turn (lease, due pointer, summary) are framed
records written in place under the run's lock: one torn by a crash fails its
CRC, and each says what a torn one means. Several processes can share a root on one machine (or on a shared
filesystem that honours ``flock`` and atomic rename).

The run's lock is ``flock`` on its lock file, the lock ``filelock`` takes on
Unix, but on a descriptor each client keeps open for the runs it used last,
with the lease beside it (fs_locks.py); how records are framed and the small
files read and written is in fs_records.py; the log in fs_log.py, the
summary's slots in fs_info.py, a new run's staged folder in fs_starts.py,
folder names in fs_names.py; the due index's entry files, and how claims walk
them, in fs_due.py and fs_listings.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path

from substantial.backends import fs_info
from substantial.backends.base import Backend, Claim, Message, check_run_id
from substantial.backends.fs_due import DueEntries, buckets, split_entry
from substantial.backends.fs_locks import OPEN_LOCKS, Held, LockTable, RunLock, identity, lease_free
from substantial.backends.fs_log import RunLogs
from substantial.backends.fs_names import RunFolders, run_id_of
from substantial.backends.fs_records import (
    STAMP,
    frame,
    fsync_path,
    new_file_head,
    read_file,
    read_pointer,
    stamped,
    unique_name,
    write_pointer,
)
from substantial.backends.fs_starts import remove_tree, stage_run
from substantial.errors import Conflict, CorruptRecord

#: A post marker older than this is taken for the trace of a poster that died.
POSTING_GRACE = 5.0
_POSTS_EVERY = 1.0  # seconds between two looks for such markers, per queue


class FSBackend(Backend):
    """Runs stored as folders of files under ``root``."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, open_locks: int = OPEN_LOCKS) -> None:
        self.root = Path(root).absolute()
        self._fsync = fsync
        self._runs = self.root / "runs"
        self._queues = self.root / "queues"
        self._tmp = self.root / "tmp"
        self._posting = self.root / "posting"
        for folder in (self._runs, self._queues, self._tmp, self._posting):
            folder.mkdir(parents=True, exist_ok=True)
        self._locks = LockTable(open_locks)
        self._closer = weakref.finalize(self, self._locks.close)
        self._logs = RunLogs(fsync=fsync)
        self._claims = threading.Lock()
        self._posts_looked: dict[str, float] = {}  # queue -> ``now`` of the last look at its post markers
        self._folders = RunFolders(str(self._runs))
        self._due = DueEntries(str(self._queues), str(self.root / "blank"), self._sync_path)

    # -- files -------------------------------------------------------------

    def _folder(self, run_id: str) -> str:
        """The run's folder as a string (the hot paths skip pathlib); raises ``InvalidRunId``."""
        return self._folders.of(run_id)

    def _dir(self, run_id: str) -> Path:
        return Path(self._folder(run_id))

    def _ensure_dir(self, run_id: str) -> str:
        """The run's folder, made if needed; its inbox is made last, so a folder with one is complete."""
        folder = self._folder(run_id)
        if not os.path.isdir(os.path.join(folder, "inbox")):
            path = Path(folder)
            path.mkdir(exist_ok=True)
            if path.name.startswith("~"):
                self._write(path / "id", run_id.encode())
            (path / "inbox").mkdir(exist_ok=True)
            self._sync_path(path)  # the inbox's entry: a message in it is durable only with it
            self._sync_path(self._runs)
        return folder

    def _sync(self, fd: int) -> None:
        if self._fsync:
            os.fsync(fd)

    def _sync_path(self, path: str | Path) -> None:
        if self._fsync:
            fsync_path(path)

    def _write(self, path: Path, data: bytes, *, durable: bool = True) -> None:
        """Replace ``path`` atomically: write a temporary file, fsync it, rename it into place."""
        tmp = self._tmp / unique_name()
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                self._sync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise
        if durable:
            self._sync_path(path.parent)

    def _lock(self, run_id: str) -> tuple[RunLock, str]:
        """Take the run's lock, a thread lock within this client and ``flock`` across clients; ``_unlock`` it."""
        folder = self._folder(run_id)
        lock = self._locks.take(run_id)
        try:
            lock.thread.acquire()
            try:
                self._flock(run_id, folder, lock)
            except BaseException:
                lock.thread.release()
                raise
        except BaseException:
            self._locks.give_back(run_id, lock)
            raise
        return lock, folder

    def _unlock(self, run_id: str, lock: RunLock) -> None:
        try:
            fcntl.flock(lock.fd, fcntl.LOCK_UN)
        finally:
            lock.thread.release()
            self._locks.give_back(run_id, lock)

    @contextlib.contextmanager
    def _locked(self, run_id: str) -> Iterator[Path]:
        """Hold the run's lock; yields the run's folder."""
        lock, folder = self._lock(run_id)
        try:
            yield Path(folder)
        finally:
            self._unlock(run_id, lock)

    def _flock(self, run_id: str, folder: str, lock: RunLock) -> None:
        """Take ``flock`` on the run's lock file, opening it if needed; the thread lock is held.

        Once locked, the file must still be the one at the path: if the run
        was deleted since it was opened (here or by another process), the
        lock guards a file nobody else will look at, so it is reopened.
        """
        while True:
            if lock.fd < 0:
                lock.path = os.path.join(folder, "lock")
                try:
                    self._ensure_dir(run_id)
                    lock.fd = os.open(lock.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except FileNotFoundError:
                    continue  # the run's folder was deleted between the two
                lock.identity = identity(os.fstat(lock.fd))
            fcntl.flock(lock.fd, fcntl.LOCK_EX)
            try:
                if identity(os.stat(lock.path)) == lock.identity:
                    return
            except FileNotFoundError:
                pass
            lock.close()

    # -- the log -----------------------------------------------------------

    def read_log(self, run_id: str, after: int = 0) -> tuple[list[bytes], int]:
        try:
            return self._read_log(run_id, after)
        except CorruptRecord:
            with self._locked(run_id):  # not a write in progress, then?
                return self._read_log(run_id, after)

    def _read_log(self, run_id: str, after: int) -> tuple[list[bytes], int]:
        return self._logs.read(run_id, self._folder(run_id), after)

    def append_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        lock, folder = self._lock(run_id)
        try:
            return self._logs.append(run_id, folder, records, expected_version)
        finally:
            self._unlock(run_id, lock)

    def replace_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        with self._locked(run_id) as path:
            _, version = self._read_log(run_id, after=2**62)
            if version != expected_version:
                raise Conflict(f"run {run_id!r}: log is at version {version}, not {expected_version}")
            self._write(path / "log", new_file_head() + b"".join(frame(r) for r in records))
            self._logs.forget(run_id)
            return len(records)

    # -- the inbox -----------------------------------------------------------

    def post(self, queue: str, run_id: str, message: Message) -> None:
        """Marker, message, due entry, then the marker goes.

        A poster that dies between any two writes leaves its marker, and a
        poll that finds an old marker marks the run due: the message, if it
        was written, is then ingested once (its id dedupes it).
        """
        check_run_id(message.id)
        path = Path(self._ensure_dir(run_id), "inbox", message.id)
        marker = self._posting / f"{time.time_ns():020d}-{unique_name()}"
        self._write(marker, f"{check_run_id(queue)}\n{run_id}".encode())
        if not path.exists():
            self._write(path, stamped(message.body))
        self.schedule(queue, run_id, time.time())
        os.unlink(marker)

    def take_inbox(self, run_id: str) -> list[Message]:
        inbox = os.path.join(self._folder(run_id), "inbox")
        try:
            names = os.listdir(inbox)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            data = read_file(os.path.join(inbox, name))  # renamed into place whole: its size is final
            if data is not None and len(data) >= STAMP.size:
                found.append((STAMP.unpack_from(data)[0], name, data[STAMP.size :]))
        return [Message(name, body) for _, name, body in sorted(found)]

    def ack(self, run_id: str, ids: Iterable[str]) -> None:
        inbox = os.path.join(self._folder(run_id), "inbox")
        for message_id in ids:
            check_run_id(message_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(inbox, message_id))

    # -- the due index -----------------------------------------------------

    def _set_entry(self, queue: str, run_id: str, due_at: float | None) -> None:
        """Point the run at a new due entry (or none), then remove the old one; the run's lock is held.

        Two fsyncs: the new entry's folder, then the pointer. The entry must
        be durable before a pointer names it, and the pointer before the old
        entry goes, so after a crash the pointer names an entry that exists.
        Removals are not fsync'd: an entry that comes back is named by no
        pointer, and a poll removes it; a pointer that comes back names an
        entry that is gone, or one that makes a spurious turn.
        """
        folder = self._folder(run_id)
        pointer = os.path.join(folder, f"due.{check_run_id(queue)}")
        old = read_pointer(pointer)
        if due_at is not None:
            entry = self._due.path(queue, os.path.basename(folder), due_at)
            if old == entry:
                self._due.due_again(entry)
                return
            self._due.create(entry)
            write_pointer(pointer, entry, fsync=self._fsync)
        elif old is not None:
            write_pointer(pointer, "", fsync=False)  # names no entry
        if old:
            self._due.remove(old)

    def schedule(self, queue: str, run_id: str, due_at: float) -> None:
        with self._locked(run_id):
            self._set_entry(queue, run_id, due_at)

    def unschedule(self, queue: str, run_id: str) -> None:
        if not self._dir(run_id).is_dir():
            return
        with self._locked(run_id):
            self._set_entry(queue, run_id, None)

    def _recover_posts(self, queue: str, now: float) -> None:
        """Mark due the runs of posts whose poster died mid-way (old markers).

        Looked for at most once a second per queue (by ``now``): a marker
        matters only once it is ``POSTING_GRACE`` old, and the listing cost a
        claim five system calls.
        """
        looked = self._posts_looked.get(queue)
        if looked is not None and looked <= now < looked + _POSTS_EVERY:
            return
        self._posts_looked[queue] = now
        cutoff = f"{int((now - POSTING_GRACE) * 1e9):020d}"
        for marker in buckets(str(self._posting), cutoff):
            raw = read_file(marker)
            if raw is None:
                continue
            marker_queue, _, run_id = raw.decode().partition("\n")
            if marker_queue == queue:
                self.schedule(queue, run_id, now)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)

    def due(self, queue: str, now: float, limit: int) -> list[str]:
        self._recover_posts(queue, now)
        found: list[str] = []
        for entry, _ in self._due.walk(queue, now):
            run_id = self._live_entry(queue, entry, now)
            if run_id is not None and run_id not in found:  # listed mid-move: old and new entry
                found.append(run_id)
                if len(found) >= limit:
                    break
        return found

    def _live_entry(self, queue: str, entry: str, now: float) -> str | None:
        """The run of a due entry, or None (and the entry removed) if its run moved on."""
        run_id = self._entry_run(entry, now)
        if run_id is None:
            return None
        pointer = os.path.join(self._runs, split_entry(entry)[1], f"due.{queue}")
        if read_pointer(pointer) == entry:
            return run_id
        with self._locked(run_id):  # a schedule may be between writing the entry and its pointer
            return run_id if self._named_or_removed(pointer, entry) is not None else None

    def _entry_run(self, entry: str, now: float) -> str | None:
        """The run a due entry names, if its folder is there; None if not.

        An entry with no folder is removed once it is old enough for its
        start to have died (``POSTING_GRACE``), or at once if the run was deleted.
        """
        due_ms, name = split_entry(entry)
        if not os.path.isdir(os.path.join(self._runs, name)):
            # no folder: its run was deleted, or start_run is renaming it into place (the entry comes first)
            if int(due_ms) < (now - POSTING_GRACE) * 1000:
                self._due.remove(entry)
            return None
        run_id = self._run_id_in(name)
        if run_id is None:
            self._due.remove(entry)  # its run was deleted
        return run_id

    def _named_or_removed(self, pointer: str, entry: str) -> str | None:
        """Under the run's lock: what its pointer names, if that is ``entry`` or "" (torn); else None.

        A torn pointer keeps the entry live: the run's turn writes it again.
        An entry the pointer does not name is one its run has moved on from,
        and it is removed.
        """
        named = read_pointer(pointer)
        if named in (entry, ""):
            return named
        self._due.remove(entry)
        return None

    def _run_id_in(self, name: str) -> str | None:
        """The run id of a run folder's name; None if the id file of a hashed name is gone."""
        if not name.startswith("~"):
            return run_id_of(name)
        raw = read_file(self._runs / name / "id")
        return raw.decode() if raw is not None else None

    # -- a turn's operations together ----------------------------------------

    def claim_due(
        self, queue: str, now: float, owner: str, ttl: float, *, limit: int, scan: int, skip: Collection[str] = ()
    ) -> list[str]:
        """As ``due`` then ``acquire_lease``, but lazily: an entry of a run in ``skip`` is counted and not
        checked, and the walk stops once ``limit`` runs are leased.

        An entry this client removed after it was listed is passed over
        unread: the listing may predate the removal. (Made again since, it
        is found by the next claim.) Claims walk on through a minute's
        entries from where the last one stopped (see ``Cursors``).
        """
        with self._claims:
            return self._claim_due(queue, now, owner, ttl, limit=limit, scan=scan, skip=skip)

    def _claim_due(
        self, queue: str, now: float, owner: str, ttl: float, *, limit: int, scan: int, skip: Collection[str]
    ) -> list[str]:
        self._recover_posts(queue, now)
        claimed: list[str] = []
        seen: set[str] = set()
        if limit <= 0 or scan <= 0:
            return claimed
        # each entry taken from the walk is dealt with: the cursor has gone past it
        for entry, listing in self._due.walk(queue, now, claim=True):
            name = split_entry(entry)[1]
            if self._due.removed_since(entry, listing):
                pass
            elif not name.startswith("~") and (run_id := run_id_of(name)) in skip:
                seen.add(run_id)
            elif self._locks.leased.get(name, 0.0) > now:  # leased by this client: not free, nothing to read
                seen.add(name)
            elif (named := self._entry_run(entry, now)) is None or named in seen:
                pass  # (a run seen already was listed mid-move: old and new entry)
            elif named in skip:  # a hashed name: its id was read from its folder
                seen.add(named)
            elif (leased := self._lease_if_due(queue, named, entry, owner, ttl, now=now)) is not None:
                seen.add(named)  # its live entry
                if leased:
                    claimed.append(named)
            if len(claimed) >= limit or len(seen) >= scan:
                break
        return claimed

    def _lease_if_due(self, queue: str, run_id: str, entry: str, owner: str, ttl: float, *, now: float) -> bool | None:
        """Under one hold of the run's lock: True if the run is leased, False if ``entry`` is its live entry but
        the run is not due or its lease is held, None (and the entry removed) if the run has moved on from it.

        Its turn may have ended between the listing and the lock: such a claim
        would be a turn with nothing to do. A torn pointer counts as due.
        The pointer is read once, under the lock.
        """
        lock, folder = self._lock(run_id)
        try:
            named = self._named_or_removed(os.path.join(folder, f"due.{queue}"), entry)
            if named is None:
                return None
            due_ms = split_entry(named)[0]
            if due_ms.isdigit() and int(due_ms) > now * 1000:
                return False
            return self._locks.swap_lease(lock, os.path.basename(folder), owner, ttl, lease_free)
        finally:
            self._unlock(run_id, lock)

    def close_turn(
        self,
        queue: str,
        run_id: str,
        owner: str,
        *,
        info: bytes | None,
        ack: Sequence[str],
        due_at: float | None,
        recheck: bool,
        records: Sequence[bytes] = (),
        expected_version: int = 0,
        then_claim: Claim | None = None,
    ) -> list[str]:
        """As the base does it, under one hold of the run's lock (one ``flock``, where the parts took five).

        A post's ``schedule`` waits for the lock, so the inbox re-check under
        it sees the message, or the post marks the run due after the close.
        """
        lock, folder = self._lock(run_id)
        try:
            if records:
                self._logs.append(run_id, folder, records, expected_version)
            if info is not None:
                fs_info.write_slot(folder, info)
            self.ack(run_id, ack)
            self._set_entry(queue, run_id, due_at)
            if recheck and self._has_mail(folder):
                self._set_entry(queue, run_id, time.time())
            self._locks.release_lease(lock, os.path.basename(folder), owner)
        finally:
            self._unlock(run_id, lock)
        return self._claim_next(queue, owner, then_claim)

    @staticmethod
    def _has_mail(folder: str) -> bool:
        try:
            return bool(os.listdir(os.path.join(folder, "inbox")))
        except FileNotFoundError:
            return False

    def start_run(self, queue: str, run_id: str, info: bytes, message: Message) -> None:
        """A new run's folder is made whole in ``tmp/`` and renamed into place: five fsyncs, not nine.

        Its due entry is made before the rename: a poll passes over an entry
        whose run has no folder yet, and removes it once it is older than
        ``POSTING_GRACE`` (a start that died before its rename). A run whose
        folder exists already (a send came first) is started as ``write_info``
        and ``post`` start it, once its rename fails: looking first cost every
        start a system call for a case that is rare.
        """
        folder = self._folder(run_id)
        check_run_id(queue)
        check_run_id(message.id)
        staged, name = os.path.join(self._tmp, f"run-{unique_name()}"), os.path.basename(folder)
        try:
            stage_run(staged, run_id, queue, info, message, name=name, due=self._due, fsync=self._fsync)
            os.rename(staged, folder)  # fails if the folder exists, unless it is empty (a poster died in it)
        except OSError:
            remove_tree(Path(staged))
            if not os.path.isdir(folder):
                raise
        else:
            self._sync_path(self._runs)
            return
        super().start_run(queue, run_id, info, message)

    # -- leases --------------------------------------------------------------

    def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        return self._swap_lease(run_id, owner, ttl, lease_free)

    def renew_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        def ours(held: Held) -> bool:
            return held is not None and held[0] == owner and held[1] > time.time()

        return self._swap_lease(run_id, owner, ttl, ours)

    def _swap_lease(self, run_id: str, owner: str, ttl: float, may: Callable[[Held], bool]) -> bool:
        """Under the run's lock: give ``owner`` the lease for ``ttl`` if ``may(held lease)``."""
        lock, folder = self._lock(run_id)
        try:
            return self._locks.swap_lease(lock, os.path.basename(folder), owner, ttl, may)
        finally:
            self._unlock(run_id, lock)

    def release_lease(self, run_id: str, owner: str) -> None:
        if not os.path.isdir(self._folder(run_id)):
            return
        lock, folder = self._lock(run_id)
        try:
            self._locks.release_lease(lock, os.path.basename(folder), owner)
        finally:
            self._unlock(run_id, lock)
        self._due.let_go()

    # -- visibility and retention ------------------------------------------

    def write_info(self, run_id: str, info: bytes) -> None:
        """Overwrite the older of the two summary slots in place, numbered after the newer; no fsync (fs_info.py)."""
        lock, folder = self._lock(run_id)
        try:
            fs_info.write_slot(folder, info)
        finally:
            self._unlock(run_id, lock)

    def read_info(self, run_id: str) -> bytes | None:
        folder = self._folder(run_id)
        slots = fs_info.read_slots(folder)
        if fs_info.both_torn(slots):  # two writes during our reads
            with self._locked(run_id):
                slots = fs_info.read_slots(folder)
        return fs_info.newest(folder, slots)

    def list_runs(self, *, after: str | None = None, limit: int = 100) -> list[str]:
        ids = []
        for name in os.listdir(self._runs):
            if not fs_info.has_summary(os.path.join(self._runs, name)):
                continue
            raw = read_file(self._runs / name / "id") if name.startswith("~") else None
            ids.append(raw.decode() if raw is not None else run_id_of(name))
        ids.sort()
        if after is not None:
            ids = [i for i in ids if i > after]
        return ids[:limit]

    def delete_run(self, run_id: str) -> None:
        path = self._dir(run_id)
        if not path.is_dir():
            return
        with self._locked(run_id):
            for pointer in path.glob("due.*"):
                entry = read_pointer(str(pointer))
                if entry:
                    self._due.remove(entry)
            graveyard = self._tmp / f"deleted-{unique_name()}"
            os.rename(path, graveyard)
            self._logs.forget(run_id)
            self._locks.leased.pop(path.name, None)
        self._locks.forget(run_id)
        remove_tree(graveyard)

    def close(self) -> None:
        self._closer()
