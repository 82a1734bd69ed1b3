"""The run locks of one files-backend client: a thread lock each, and ``flock`` on the run's lock file kept open.

``filelock``'s ``FileLock`` opens, checks and closes its file on every
acquire, which cost as much as the fsync of an append; a client here keeps
the lock files of the runs it used last open, and a forked child drops the
ones it inherited. A run's lease is taken and let go with its lock held,
through its lease file, which stays open beside the lock file.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable

from substantial.backends.fs_records import read_lease, write_lease

#: A run's lease as its file holds it: owner and expiry, or None when free.
Held = tuple[str, float] | None

#: How many runs' lock files a client keeps open when no thread holds them (the runs it used last).
OPEN_LOCKS = 128


class RunLock:
    """One run's lock in one client: a thread lock, and the run's lock file kept open for ``flock``.

    ``identity`` is the (device, inode) of the open file: while the file is
    open its inode number cannot be given to another file, so a lock file
    whose path no longer has that identity was deleted with its run. The
    run's lease file stays open beside it, and is closed with it: both belong
    to the same folder.
    """

    __slots__ = ("fd", "identity", "lease_fd", "path", "thread", "users")

    def __init__(self) -> None:
        self.thread = threading.Lock()
        self.fd = -1
        self.lease_fd = -1
        self.path = ""
        self.identity = (0, 0)
        self.users = 0  # threads holding or waiting for it: it is closed only at 0

    def lease(self, *, create: bool) -> int:
        """The run's lease file, opened on first use (made if ``create``); -1 if it does not exist.

        Called with the lock held, so the lock file, and with it the folder,
        is the run's own.
        """
        if self.lease_fd < 0:
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
            try:
                self.lease_fd = os.open(os.path.join(os.path.dirname(self.path), "lease"), flags, 0o644)
            except FileNotFoundError:
                if create:
                    raise
        return self.lease_fd

    def close(self) -> None:
        for fd in (self.fd, self.lease_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the lock file's releases this descriptor's flock, if held
        self.fd = self.lease_fd = -1


class LockTable:
    """The run locks of one client; at most ``size`` idle ones stay open, the least recently used go first.

    ``leased`` holds the expiry of each lease this client wrote and has not
    let go, by run folder name: until then the lease file says the same, so a
    claim passes such a run without reading it (see ``claim_due``).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.guard = threading.Lock()
        self.locks: OrderedDict[str, RunLock] = OrderedDict()
        self.leased: dict[str, float] = {}
        _TABLES.add(self)

    def take(self, run_id: str) -> RunLock:
        with self.guard:
            lock = self.locks.get(run_id)
            if lock is None:
                lock = self.locks[run_id] = RunLock()
            else:
                self.locks.move_to_end(run_id)
            lock.users += 1
            return lock

    def give_back(self, run_id: str, lock: RunLock) -> None:
        with self.guard:
            lock.users -= 1
            if self.locks.get(run_id) is not lock:  # dropped by close() while in use
                if lock.users == 0:
                    lock.close()
                return
            excess = len(self.locks) - self.size
            if excess <= 0:
                return
            idle = []
            for other_id, other in self.locks.items():
                if other.users == 0:
                    idle.append(other_id)
                    if len(idle) == excess:
                        break
            for other_id in idle:
                self.locks.pop(other_id).close()

    def swap_lease(self, lock: RunLock, name: str, owner: str, ttl: float, may: Callable[[Held], bool]) -> bool:
        """With ``lock`` held: give ``owner`` the lease of the run (folder ``name``) for ``ttl`` if ``may(held)``."""
        fd = lock.lease(create=True)
        if not may(read_lease(fd)):
            return False
        expiry = time.time() + ttl
        write_lease(fd, f"{owner}\n{expiry}".encode())
        self.leased[name] = expiry
        return True

    def release_lease(self, lock: RunLock, name: str, owner: str) -> None:
        """With ``lock`` held: free the run's lease if ``owner`` holds it."""
        fd = lock.lease(create=False)
        if fd < 0:
            return
        held = read_lease(fd)
        if held is not None and held[0] == owner:
            write_lease(fd, b"")  # free
            self.leased.pop(name, None)

    def forget(self, run_id: str) -> None:
        """Close the run's lock file now if no thread uses it (its run was deleted)."""
        with self.guard:
            lock = self.locks.get(run_id)
            if lock is not None and lock.users == 0:
                self.locks.pop(run_id).close()

    def close(self) -> None:
        with self.guard:
            for lock in self.locks.values():
                if lock.users == 0:
                    lock.close()  # the others close when their last thread gives them back
            self.locks = OrderedDict()

    def after_fork(self) -> None:
        """In a forked child: drop every inherited descriptor and lock, held or not.

        A child's copy of a descriptor shares the parent's flock: locking it
        would succeed while the parent holds it, and unlocking it would release
        the parent's. Closing the copy leaves the parent's lock alone.
        """
        self.guard = threading.Lock()
        for lock in self.locks.values():
            lock.close()
        self.locks = OrderedDict()
        self.leased = {}  # the parent's: it may let them go without this copy knowing


_TABLES: weakref.WeakSet[LockTable] = weakref.WeakSet()


def _forget_locks_after_fork() -> None:
    for table in list(_TABLES):
        table.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_after_fork)


def lease_free(held: Held) -> bool:
    """Whether a lease may be taken: none is held, or it expired (a lease is taken once, even by its owner)."""
    return held is None or held[1] <= time.time()


def identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino
