"""A run's summary in the files backend: two numbered slots, the older one rewritten in place.

Readers take no lock: one that meets the slot being written finds it torn
(its CRC fails) and reads the other, the summary before. A crash tears at
most that slot, so the previous summary survives it. The summary is derived
from the log and rewritten by the next turn, so it is not fsync'd (replacing
it by rename cost 100 to 250 µs on the benchmark machine; a write in place,
about 20 µs).
"""

from __future__ import annotations

import os
from pathlib import Path

from substantial.backends.fs_records import SEQUENCE, frame, pwrite_all, read_file, read_info_slot

SLOTS = ("info.0", "info.1")
_WHOLE = "info"  # where earlier versions wrote the summary whole, by rename

Slots = list[tuple[int, bytes] | None]


def first_slot(info: bytes) -> bytes:
    """What slot 0 of a new run holds: the summary numbered 0."""
    return _slot(0, info)


def _slot(number: int, info: bytes) -> bytes:
    return frame(SEQUENCE.pack(number) + info)


def read_slots(folder: str) -> Slots:
    """Each slot's (number, summary): None if it does not exist, (-1, b"") if it is torn."""
    return [read_info_slot(os.path.join(folder, name)) for name in SLOTS]


def both_torn(slots: Slots) -> bool:
    """Whether no slot holds a summary, though one was written: two writes during the reads."""
    return slots != [None, None] and all(slot is None or slot[0] < 0 for slot in slots)


def newest(folder: str, slots: Slots) -> bytes | None:
    """The newest summary in ``slots`` (or the whole one an earlier version wrote); None if there is none."""
    if slots == [None, None]:
        return read_file(os.path.join(folder, _WHOLE))
    found = max((slot for slot in slots if slot is not None), default=(-1, b""))
    return found[1] if found[0] >= 0 else None


def write_slot(folder: str, info: bytes) -> None:
    """Overwrite the older slot in place, numbered after the newer; the run's lock is held. No fsync."""
    numbers = [slot[0] if slot is not None else -1 for slot in read_slots(folder)]
    target = numbers.index(min(numbers))  # slot 0 first: list_runs looks for it
    fd = os.open(os.path.join(folder, SLOTS[target]), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        pwrite_all(fd, _slot(max(numbers) + 1, info), 0)
    finally:
        os.close(fd)


def has_summary(folder: str) -> bool:
    """Whether the run's folder holds a summary (slot 0 is written first; ``info`` by earlier versions)."""
    return Path(folder, SLOTS[0]).exists() or Path(folder, _WHOLE).exists()  # raises on EACCES, EIO
