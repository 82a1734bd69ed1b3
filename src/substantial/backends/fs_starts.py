"""A new run's folder in the files backend, made whole in ``tmp/`` before it is renamed into ``runs/``.

Every file and name is made before the first fsync: a journalling filesystem
(ext4, XFS) commits them all in that one, so the fsyncs after it only wait
for a flush of the disk's cache. ``remove_tree`` removes a staged folder whose
rename failed, and a deleted run's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from substantial.backends.base import Message
from substantial.backends.fs_due import DueEntries
from substantial.backends.fs_info import SLOTS, first_slot
from substantial.backends.fs_records import frame, fsync_path, pwrite_all, stamped


def stage_run(
    staged: str,
    run_id: str,
    queue: str,
    info: bytes,
    message: Message,
    *,
    name: str,
    due: DueEntries,
    fsync: bool,
) -> None:
    """Make ``staged`` the folder ``name`` of a new run: summary, start message, due pointer, empty log; then its
    due entry, due now. A hashed name (``~``) cannot spell the run id, which is kept in ``id``.
    """
    entry = due.path(queue, name, time.time())
    inbox = os.path.join(staged, "inbox")
    os.mkdir(staged)
    os.mkdir(inbox)
    message_fd = open_new(os.path.join(inbox, message.id), stamped(message.body))
    durable = []
    try:
        if name.startswith("~"):
            durable.append(os.path.join(staged, "id"))
            write_new(durable[-1], run_id.encode())
        # not fsync'd, as any summary
        write_new(os.path.join(staged, SLOTS[0]), first_slot(info))
        # not fsync'd: a pointer lost or torn by a crash reads "", which leaves the run's entries live
        write_new(os.path.join(staged, f"due.{queue}"), frame(entry.encode()))
        # an empty log, made durable by the folder's fsync: the first append then fsyncs no folder
        write_new(os.path.join(staged, "log"), b"")
        due.create(entry, durable=False)
        if fsync:
            os.fsync(message_fd)
    finally:
        os.close(message_fd)
    if fsync:
        for path in (*durable, inbox, staged, os.path.dirname(entry)):
            fsync_path(path)


def write_new(path: str, data: bytes) -> None:
    """A new file in a folder no one else sees yet, written in place (not fsync'd)."""
    os.close(open_new(path, data))


def open_new(path: str, data: bytes) -> int:
    """``write_new``, the file left open: its descriptor, which the caller closes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        pwrite_all(fd, data, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_tree(path: Path) -> None:
    """Remove a folder and everything in it (a staged start, a deleted run)."""
    for child in sorted(path.rglob("*"), reverse=True):
        if child.is_dir():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()
