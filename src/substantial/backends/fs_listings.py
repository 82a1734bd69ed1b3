"""Listings of the due index's upper buckets, kept while the folder is unchanged.

A claim walks the queue's folder, a bucket of 256 days and a bucket of a day
before it reaches a bucket of entries. The upper three change a few times a
day, yet listing each cost five system calls on every claim; a ``stat`` is one.
"""

from __future__ import annotations

import os
import time

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
