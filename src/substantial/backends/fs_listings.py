"""Listings of the due index's buckets, kept from one claim to the next.

A claim walks the queue's folder, a bucket of 256 days and a bucket of a day
before it reaches a bucket of a minute's entries. The upper three change a
few times a day, yet listing each cost five system calls on every claim; a
``stat`` is one (``Listings``). A minute's entries change on every start and
turn, so claims walk on through one listing of them instead (``Cursors``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

#: A folder unchanged for this long may have its listing kept. Longer than any file system's timestamp
#: granularity (FAT's is 2 s), so a change made after the listing gives the folder a new mtime.
QUIET_NS = 2_500_000_000
_KEPT = 1024  # listings remembered


class Listings:
    """Sorted folder listings, reused while ``stat`` shows the folder as it was when listed.

    A listing is kept only if the folder's mtime and ctime were already
    ``QUIET_NS`` old when it was listed: any later change then stamps the
    folder with a time after them. (A clock stepped back by more than that
    could hide a change until the folder changes again.)
    """

    def __init__(self) -> None:
        self._kept: dict[str, tuple[tuple[int, int, int], list[str]]] = {}

    def names(self, folder: str) -> list[str]:
        """The names in ``folder``, sorted; empty if it does not exist."""
        listed_at = time.time_ns()
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            self._kept.pop(folder, None)
            return []
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        kept = self._kept.get(folder)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        names = listed(folder)
        if max(st.st_mtime_ns, st.st_ctime_ns) < listed_at - QUIET_NS:
            if len(self._kept) >= _KEPT:
                self._kept.clear()
            self._kept[folder] = (stamp, names)
        return names


def listed(folder: str) -> list[str]:
    """The names in ``folder``, sorted; empty if it does not exist."""
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


#: How long claims walk on through a minute's listing before they list it again, in seconds.
CURSOR_FOR = 0.1
_CURSORS_KEPT = 1024


class _Cursor:
    __slots__ = ("at", "listed_at", "names", "number")

    def __init__(self, names: list[str], listed_at: float, number: int) -> None:
        self.names = names
        self.listed_at = listed_at
        self.number = number
        self.at = 0


class Cursors:
    """Where one client's claims stopped in each minute bucket's listing.

    A busy minute holds hundreds of entries and a claim takes one or two:
    listing and sorting them all on every claim cost as much as a turn. A
    claim goes on from where the last one stopped, and lists the bucket again
    once it reaches the end or the listing is ``CURSOR_FOR`` old. An entry
    made meanwhile is made after the listed ones, and is found then; so is one
    passed over while its run was leased elsewhere. This client's own entries
    made behind the walk, and runs it lets go, are found at the next claim
    (``made``, ``forget``).
    """

    def __init__(self) -> None:
        self._kept: dict[str, _Cursor] = {}

    def entries(self, folder: str, upto: str, number: Callable[[], int]) -> Iterator[tuple[str, int]]:
        """The paths of ``folder``'s entries up to ``upto``, from where the last walk stopped, each with the
        ``number()`` taken when they were listed."""
        cursor = self._kept.get(folder)
        now = time.monotonic()
        if cursor is None or cursor.at >= len(cursor.names) or now - cursor.listed_at > CURSOR_FOR:
            if len(self._kept) >= _CURSORS_KEPT:
                self._kept.clear()
            cursor = self._kept[folder] = _Cursor(listed(folder), now, number())
        prefix = folder + os.sep
        names = cursor.names
        while cursor.at < len(names):
            name = names[cursor.at]
            if name > upto:
                return
            cursor.at += 1  # before the yield: a walk that stops after this entry goes on after it
            yield prefix + name, cursor.number

    def made(self, entry: str) -> None:
        """``entry`` was made (or is due again): if the walk went past its place, list its bucket again."""
        folder, name = os.path.split(entry)
        cursor = self._kept.get(folder)
        if cursor is not None and cursor.at > 0 and name <= cursor.names[cursor.at - 1]:
            del self._kept[folder]

    def forget(self) -> None:
        """List every bucket again at the next walk."""
        self._kept.clear()
