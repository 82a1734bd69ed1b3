"""The due index's entries on local files: empty files named by due time and run, in buckets.

``queues/<queue>/<256 days>/<day>/<minute>/<due ms>-<run folder name>``: a
poll lists the buckets up to now and reaches the entries that are due,
touching a bounded number of names however many runs are parked. Which entry
is a run's current one is the run's due pointer, kept by ``FSBackend``.

Entries are hard links to an empty file in ``blank/`` (``Blanks``): making
one costs no new inode and removing one frees none. Making a file cost 55 to
800 µs of kernel CPU on ext4 without a journal here (it passes over every
inode freed in the last half minute), a hard link 11 µs.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from substantial.backends.base import check_run_id
from substantial.backends.fs_listings import Cursors, Listings, listed

_REMOVED_KEPT = 4096  # due entries removed, remembered so a claim passes them over

T = TypeVar("T")


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


class Blanks:
    """The empty files due entries are hard links to: ``blank/<n>``, the highest ``n`` in use.

    A blank that has as many links as its filesystem allows (``EMLINK``:
    65,000 on ext4) is followed by the next. On a filesystem without hard
    links entries are plain empty files, as before.
    """

    def __init__(self, folder: str, sync_path: Callable[[str], None]) -> None:
        self._folder = folder
        self._sync_path = sync_path
        self._path: str | None = None
        self.linking = True

    def make(self, entry: str) -> None:
        """Make ``entry`` (kept if it exists) a link to the current blank.

        Raises ``FileNotFoundError`` if the entry's bucket is not there.
        """
        while self.linking:
            blank = self._current()
            try:
                os.link(blank, entry)
                return
            except FileExistsError:
                return
            except FileNotFoundError:
                if os.path.exists(blank):
                    raise  # the entry's bucket is missing
                self._path = None  # the blank was removed under us: find or make one again
            except OSError as e:
                if e.errno == errno.EMLINK:
                    self._current(full=blank)
                elif e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
                    self.linking = False
                else:
                    raise
        os.close(os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))

    def _current(self, full: str | None = None) -> str:
        """The blank to link to: the highest in the folder (made if none is), or the one after ``full``.

        Threads that get here at once find the same one: the blank is made
        with ``O_EXCL``, and each takes the highest.
        """
        if self._path is not None and self._path != full:
            return self._path  # another thread found it, or moved on past ``full``, already
        os.makedirs(self._folder, exist_ok=True)
        number = max((int(name) for name in os.listdir(self._folder) if name.isdigit()), default=0)
        path = os.path.join(self._folder, str(number))
        if path == full:
            path = os.path.join(self._folder, str(number + 1))
        if not os.path.exists(path):
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            self._sync_path(path)
            self._sync_path(self._folder)
        self._path = path
        return path


class DueEntries:
    """One client's view of a store's due entries: it makes, removes and walks them.

    It numbers the entries it removes and the listings its walks take in one
    sequence, so a claim can pass over an entry removed after it was listed
    (``removed_since``). ``sync_path`` makes a folder durable (or not, with
    fsync off).
    """

    def __init__(self, queues: str, blanks: str, sync_path: Callable[[str], None]) -> None:
        self._queues = queues
        self._sync_path = sync_path
        self.blanks = Blanks(blanks, sync_path)
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
                self.blanks.make(entry)
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
        """Remove the entry (not fsync'd: one that comes back is stale), then its buckets if empty and past.

        A bucket of this minute or later stays, empty or not: the next run due
        now would make it again, with its parents (a folder each, each fsync'd
        into its parent). A walk removes it once it is past and empty.
        """
        if len(self._removed) >= _REMOVED_KEPT:
            self._removed.clear()
        self._removed[entry] = next(self._numbers)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry)
        self._prune(os.path.dirname(entry), time.time())

    @staticmethod
    def _prune(bucket: str, now: float, level: int = 2) -> None:
        """Remove ``bucket``, then the buckets above it, each if empty and wholly before ``now``.

        ``level`` is the bucket's: 2 a minute's, 1 a day's, 0 256 days'.
        Empty buckets go, so polls list only live ones.
        """
        folder = bucket
        for current in reversed(_bucket_names(now, "")[: level + 1]):
            if os.path.basename(folder) >= current:
                return
            try:
                os.rmdir(folder)
            except OSError:  # not empty, or gone already
                return
            folder = os.path.dirname(folder)

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
        (``Cursors``). A bucket found empty is removed once it is wholly past.
        """
        last_days, last_day, last_minute, last = _bucket_names(now, "\uffff")
        kept = self._listings.names
        began = next(self._numbers)
        for days in buckets(self.queue_dir(queue), last_days, kept):
            for day in self._pruned(days, now, 0, buckets(days, last_day, kept)):
                for minute in self._pruned(day, now, 1, buckets(day, last_minute, kept)):
                    if claim:
                        listing = self._cursors.entries(minute, last, self._numbers.__next__)
                    else:
                        listing = ((entry, began) for entry in buckets(minute, last))
                    yield from self._pruned(minute, now, 2, listing)

    def _pruned(self, bucket: str, now: float, level: int, items: Iterator[T]) -> Iterator[T]:
        """``items``, what ``bucket`` holds; then, if it held none, ``bucket`` pruned (see ``_prune``).

        A day's bucket can be left empty for good: its minutes went while it
        was today, so it was not yet past when the last one was pruned.
        """
        empty = True
        for item in items:
            empty = False
            yield item
        if empty:
            self._prune(bucket, now, level)
