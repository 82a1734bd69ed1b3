"""How the files backend stores bytes: framed records, a log file's head, and the small files rewritten in place.

A record is framed with its length and two CRC32s (of that header, of the
payload), so one torn by a crash is told from a whole one. A log file begins
with a magic and a random id; the lease, a due pointer and each summary slot
hold one framed record, overwritten in place (what a torn one means: for the
pointer in ``read_pointer``, for a summary slot in fs_info.py, for the lease
in ``read_lease``). A message's file is its post time, then its body.
"""

from __future__ import annotations

import os
import random
import struct
import time
import zlib
from pathlib import Path

from substantial.errors import CorruptRecord

HEADER = struct.Struct(">II")  # payload length, CRC32 of the payload
HEADER_CRC = struct.Struct(">I")  # CRC32 of the header above
FRAME = HEADER.size + HEADER_CRC.size
SEQUENCE = struct.Struct(">Q")  # a summary's number, before it in its slot
STAMP = struct.Struct(">Q")  # a message's post time in ns, before its body in its file
#: Every log file begins with a magic and a random id: a cache of offsets is per file, not per inode.
MAGIC = b"SUBSTL1\n"
FILE_HEAD = len(MAGIC) + 8
POINTER_READ = 4_160  # a due pointer holds one path (PATH_MAX is 4,096) in a frame
READ_AT_ONCE = 16_384  # what read_file reads in one call: messages and summaries are mostly smaller


#: Where names and log ids come from: a generator of our own, seeded from the system, not ``random``'s,
#: which any code in the process (a step, a test plugin) may seed to repeat its values.
_NAMES = random.Random(os.urandom(32))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _NAMES.seed(os.urandom(32)))


def new_file_head() -> bytes:
    """A log file's head: the magic, then 64 random bits that tell this file from any other log."""
    return MAGIC + _NAMES.getrandbits(64).to_bytes(8, "big")


def unique_name() -> str:
    """128 random bits in hex, for a file in ``tmp/`` or ``posting/`` that no other will be named.

    ``uuid4`` costs a system call each (``os.urandom``); this generator is
    seeded from the system once, and again in a forked child.
    """
    return f"{_NAMES.getrandbits(128):032x}"


def frame(record: bytes) -> bytes:
    """One record as the log file stores it."""
    header = HEADER.pack(len(record), zlib.crc32(record))
    return header + HEADER_CRC.pack(zlib.crc32(header)) + record


def parse(data: bytes, start: int, run_id: str) -> tuple[list[bytes], int]:
    """The whole records from ``start``, and the offset after the last one.

    A record cut short at the end of the data (a torn write) is left out; a
    damaged record with data after it raises ``CorruptRecord``.
    """
    records, offset, end = [], start, len(data)
    while offset < end:
        if end - offset < FRAME:
            break  # torn header at the tail
        header = data[offset : offset + HEADER.size]
        (crc,) = HEADER_CRC.unpack_from(data, offset + HEADER.size)
        if zlib.crc32(header) != crc:
            if not any(data[offset:]):
                break  # zeros a crash left past the tail
            raise CorruptRecord(f"run {run_id!r}: damaged record header at byte {offset} of its log")
        length, payload_crc = HEADER.unpack(header)
        body_end = offset + FRAME + length
        if body_end > end:
            break  # torn body at the tail
        payload = data[offset + FRAME : body_end]
        if zlib.crc32(payload) != payload_crc:
            if body_end == end:
                break  # the last record was torn
            raise CorruptRecord(f"run {run_id!r}: damaged record at byte {offset} of its log")
        records.append(payload)
        offset = body_end
    return records, offset


def stamped(body: bytes) -> bytes:
    """A message's file: the time it is posted, then its body (an inbox is read oldest first)."""
    return STAMP.pack(time.time_ns()) + body


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def read_lease(fd: int) -> tuple[str, float] | None:
    """The lease in the open lease file, or None if it is free (or torn by a crash: leases decide nothing)."""
    data = os.pread(fd, 512, 0)
    if len(data) < FRAME:
        return None
    length = HEADER.unpack_from(data)[0]
    if FRAME + length > len(data):
        data += os.pread(fd, FRAME + length - len(data), len(data))
    payload = first_record(data)
    if not payload:
        return None
    owner, _, expires = payload.decode().rpartition("\n")
    return owner, float(expires)


def write_lease(fd: int, payload: bytes) -> None:
    """Overwrite the lease in place: bytes a longer lease left after the record are ignored.

    Every reader holds the run's lock, so none sees a write half done; a
    crash may tear it, and a torn lease reads as free. No fsync: after a
    crash a lease may be lost, and leases never decide correctness.
    """
    pwrite_all(fd, frame(payload), 0)


def first_record(data: bytes) -> bytes | None:
    """The record framed at the start of ``data``, or None if it is cut short or damaged."""
    if len(data) < FRAME:
        return None
    header = data[: HEADER.size]
    if zlib.crc32(header) != HEADER_CRC.unpack_from(data, HEADER.size)[0]:
        return None
    length, payload_crc = HEADER.unpack(header)
    payload = data[FRAME : FRAME + length]
    if len(payload) != length or zlib.crc32(payload) != payload_crc:
        return None
    return payload


def read_pointer(path: str) -> str | None:
    """The due entry a run's pointer names; None if it names none, "" if a crash tore it."""
    data = read_file(path, most=POINTER_READ)
    if data is None:
        return None
    if data.startswith(b"/"):  # an absolute path, as earlier versions wrote it whole
        return data.decode()
    record = first_record(data)
    if record is None:
        return ""
    return record.decode() or None


def open_or_make(path: str, flags: int) -> tuple[int, bool]:
    """Open ``path`` with ``flags``, making it if it is missing: its descriptor, and whether it was made.

    An existing file is opened without ``O_CREAT``, so only a caller that made
    it fsyncs its folder.
    """
    try:
        return os.open(path, flags | os.O_CLOEXEC), False
    except FileNotFoundError:
        return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o644), True


def write_pointer(path: str, entry: str, *, fsync: bool) -> None:
    """Write a run's due pointer in place: one framed record; with ``fsync``, fsync'd (its folder too when new).

    A write torn by a crash reads as "" (see ``read_pointer``): then no entry
    of the run is taken for stale until a schedule writes it whole.
    """
    fd, created = open_or_make(path, os.O_WRONLY)
    try:
        pwrite_all(fd, frame(entry.encode()), 0)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if created and fsync:
        fsync_path(os.path.dirname(path))


def read_file(path: str | os.PathLike[str], most: int | None = None) -> bytes | None:
    """A file's bytes (its first ``most``), in three system calls where ``Path.read_bytes`` makes nine.

    None if there is no such file. Whole, a file of up to ``READ_AT_ONCE``
    bytes is read by one ``read`` (a short read of a file is its end); a
    longer one to the size ``fstat`` gives: for files renamed into place
    whole, or rewritten under a lock.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if most is not None:
            return os.read(fd, most)
        data = os.read(fd, READ_AT_ONCE)
        if len(data) < READ_AT_ONCE:
            return data
        return data + os.pread(fd, max(os.fstat(fd).st_size - len(data), 0), len(data))
    finally:
        os.close(fd)


def read_info_slot(path: str) -> tuple[int, bytes] | None:
    """(number, summary) in one summary slot; None if there is no such file, (-1, b"") if it is torn."""
    data = read_file(path)
    if data is None:
        return None
    record = first_record(data)
    if record is None or len(record) < SEQUENCE.size:
        return -1, b""
    return SEQUENCE.unpack_from(record)[0], record[SEQUENCE.size :]


def fsync_path(path: str | Path) -> None:
    """fsync a folder, or a file written earlier, through a descriptor of its own."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
