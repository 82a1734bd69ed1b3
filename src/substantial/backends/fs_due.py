"""The due index's entries on local files: empty files named by due time and run, in buckets.

``queues/<queue>/<256 days>/<day>/<minute>/<due ms>-<run folder name>``: a
poll lists the buckets up to now and reaches the entries that are due,
touching a bounded number of names however many runs are parked. Which entry
is a run's current one is the run's due pointer, kept by ``FSBackend``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator

from substantial.backends.base import check_run_id
from substantial.backends.fs_listings import Cursors, Listings, listed

_REMOVED_KEPT = 4096  # due entries removed, remembered so a claim passes them over


def split_entry(entry: str) -> tuple[str, str]:
    """A due entry's path as (its due time in ms, the run's folder name)."""
    due_ms, _, name = os.path.basename(entry).partition("-")
    return due_ms, name


def _bucket_names(due_at: float, name: str) -> tuple[str, str, str, str]:
    """The names of a due entry's three buckets and of the entry itself."""
    ms = max(int(due_at * 1000), 0)
    day = ms // 86_400_000
    return f"{day // 256:05d}", f"{day:08d}", f"{ms // 60_000:011d}", f"{ms:015d}-{name}"


def buckets(folder: str, upto: str, names: Callable[[str], list[str]] = listed) -> Iterator[str]:
    """The paths of ``folder``'s names up to ``upto``, in order."""
    prefix = folder + os.sep
    for name in names(folder):
        if name > upto:
            return
        yield prefix + name


class DueEntries:
    """One client's view of a store's due entries: it makes, removes and walks them.

    It numbers the entries it removes and the listings its walks take in one
    sequence, so a claim can pass over an entry removed after it was listed
    (``removed_since``). ``sync_path`` makes a folder durable (or not, with
    fsync off).
    """

    def __init__(self, queues: str, sync_path: Callable[[str], None]) -> None:
        self._queues = queues
        self._sync_path = sync_path
        self._dirs: dict[str, str] = {}
        self._removed: dict[str, int] = {}
        self._numbers = itertools.count()
        self._listings = Listings()
        self._cursors = Cursors()

    def queue_dir(self, queue: str) -> str:
        folder = self._dirs.get(queue)
        if folder is None:
            folder = self._dirs[queue] = os.path.join(self._queues, check_run_id(queue))
        return folder

    def path(self, queue: str, name: str, due_at: float) -> str:
        """The entry of the run folder ``name`` due at ``due_at``: buckets of 256 days, of a day, of a minute."""
        return os.path.join(self.queue_dir(queue), *_bucket_names(due_at, name))

    def create(self, entry: str, *, durable: bool = True) -> None:
        """Make the entry (and its buckets), made durable (unless not ``durable``: then by the caller)."""
        while True:
            try:
                os.close(os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
                break
            except FileNotFoundError:
                pass
            with contextlib.suppress(FileNotFoundError):  # another run's move removed an empty bucket: again
                self._make_buckets(os.path.dirname(entry))
        self._cursors.made(entry)
        if durable:
            self._sync_path(os.path.dirname(entry))  # not empty now: no one removes it

    def _make_buckets(self, bucket: str) -> None:
        """Make the missing folders down to ``bucket``, each made durable in its parent."""
        missing = []
        while not os.path.isdir(bucket):
            missing.append(bucket)
            bucket = os.path.dirname(bucket)
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder)
            self._sync_path(os.path.dirname(folder))

    def due_again(self, entry: str) -> None:
        """``entry`` stays its run's and is due again: a claim's walk may have passed it."""
        self._cursors.made(entry)

    def let_go(self) -> None:
        """A run was let go without its turn: its entry, still due, may lie behind a claim's walk."""
        self._cursors.forget()

    def remove(self, entry: str) -> None:
        """Remove the entry (not fsync'd: one that comes back is stale), then its buckets if empty."""
        if len(self._removed) >= _REMOVED_KEPT:
            self._removed.clear()
        self._removed[entry] = next(self._numbers)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry)
        folder = entry
        for _ in range(3):
            folder = os.path.dirname(folder)
            try:
                os.rmdir(folder)  # empty buckets go, so polls list only live ones
            except OSError:
                break

    def removed_since(self, entry: str, number: int) -> bool:
        """Whether this client removed ``entry`` after the listing numbered ``number`` was taken."""
        return self._removed.get(entry, -1) > number

    def walk(self, queue: str, now: float, *, claim: bool = False) -> Iterator[tuple[str, int]]:
        """The queue's entries due at or before ``now``, earliest first, live or not, listed lazily, each with
        the number of the listing it came from.

        Paths are strings: a claim may list thousands of names to take one, so
        none costs a ``Path``. The upper buckets' listings are kept while they
        are unchanged (``Listings``); a minute's entries are listed afresh, or,
        for a ``claim``, walked on from where this client's last claim stopped
        (``Cursors``).
        """
        last_days, last_day, last_minute, last = _bucket_names(now, "\uffff")
        kept = self._listings.names
        began = next(self._numbers)
        for days in buckets(self.queue_dir(queue), last_days, kept):
            for day in buckets(days, last_day, kept):
                for minute in buckets(day, last_minute, kept):
                    if claim:
                        yield from self._cursors.entries(minute, last, self._numbers.__next__)
                    else:
                        yield from ((entry, began) for entry in buckets(minute, last))
