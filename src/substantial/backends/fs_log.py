"""A run's log file in the files backend: its head, its framed records, and where each client knows it ends.

Readers take no lock; appends are made under the run's lock (fs.py). Each
client caches where the last record it knows ends, per log file: the file's
head carries a random id, so a log that was replaced or deleted (whose inode
number the next file may reuse) is never taken for the one cached.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from substantial.backends.fs_records import (
    FILE_HEAD,
    MAGIC,
    frame,
    fsync_path,
    new_file_head,
    open_or_make,
    parse,
    pwrite_all,
)
from substantial.errors import Conflict, CorruptRecord


class RunLogs:
    """The logs of one client: reads, appends, and the offset of the last record known per run."""

    def __init__(self, *, fsync: bool) -> None:
        self._fsync = fsync
        self._tails: dict[str, tuple[bytes, int, int]] = {}  # run -> (log file id, version, offset)

    def read(self, run_id: str, folder: str, after: int) -> tuple[list[bytes], int]:
        """The records from position ``after`` and the version; an empty log at 0 if there is no file."""
        try:
            fd = os.open(os.path.join(folder, "log"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return [], 0
        try:
            records, version, *_ = self._scan(run_id, fd, after)
        finally:
            os.close(fd)
        return records, version

    def append(self, run_id: str, folder: str, records: Sequence[bytes], expected_version: int) -> int:
        """Append if the log is at ``expected_version`` (``Conflict`` if not); the run's lock is held.

        No other writer can move or create the log meanwhile. A torn tail (or
        head) left by a crash is cut off before the records are written.
        """
        fd, created = open_or_make(os.path.join(folder, "log"), os.O_RDWR)
        try:
            _, version, file_id, offset, size = self._scan(run_id, fd, 2**62)
            if version != expected_version:
                raise Conflict(f"run {run_id!r}: log is at version {version}, not {expected_version}")
            if size != offset:
                os.ftruncate(fd, offset)
            if offset == 0:
                file_id = new_file_head()
                data = file_id + b"".join(frame(r) for r in records)
            else:
                data = b"".join(frame(r) for r in records)
            pwrite_all(fd, data, offset)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if created and self._fsync:
            fsync_path(folder)
        self._tails[run_id] = (file_id, version + len(records), offset + len(data))
        return version + len(records)

    def forget(self, run_id: str) -> None:
        """Drop what is known of the run's log: it was replaced or deleted."""
        self._tails.pop(run_id, None)

    def _scan(self, run_id: str, fd: int, after: int) -> tuple[list[bytes], int, bytes, int, int]:
        """Records from position ``after``, the version, the file's id, where its last whole record ends, its size.

        A file too short for its head is empty.
        """
        size = os.fstat(fd).st_size
        if size < FILE_HEAD:
            return [], 0, b"", 0, size
        file_id = os.pread(fd, FILE_HEAD, 0)
        if not file_id.startswith(MAGIC):
            raise CorruptRecord(f"run {run_id!r}: its log file does not begin as a Substantial log")
        known = self._tails.get(run_id)
        start_version, start_offset = 0, FILE_HEAD
        if known is not None and known[0] == file_id and known[1] <= after:
            start_version, start_offset = known[1], known[2]
        data = os.pread(fd, size - start_offset, start_offset) if size > start_offset else b""
        records, offset = parse(data, 0, run_id)
        offset += start_offset
        version = start_version + len(records)
        self._tails[run_id] = (file_id, version, offset)
        return records[max(after - start_version, 0) :], version, file_id, offset, size
