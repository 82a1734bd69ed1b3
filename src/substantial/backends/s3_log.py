"""The S3 backend's log objects: their byte format, and what a client knows of a run's log.

Pure data and bytes; the requests that store them are in ``s3.py``.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from substantial.errors import CorruptRecord

MAGIC = b"SBS1"
# kind, epoch, number, v_from, v_to, base end, base version, delta end, delta version, token, record count
HEAD = struct.Struct(">4sBQQQQqQqQ16sI")
LEN = struct.Struct(">I")
APPEND, REPLACE, BASE, DELTA = 0, 1, 2, 3
SEG_KINDS = {".base": BASE, ".delta": DELTA}


@dataclass(frozen=True)
class Piece:
    """One stored object of a log: the records of versions [v_from, v_to) as of log object ``number``."""

    kind: int
    epoch: int  # number of the log object that began this generation of the log (a replace, or 0)
    number: int
    v_from: int
    v_to: int
    base: tuple[int, int] | None  # (end, version) of the base segment its writer knew
    delta: tuple[int, int] | None  # (end, version) of the delta segment its writer knew
    token: bytes
    records: list[bytes]


def encode_piece(piece: Piece) -> bytes:
    base, delta = piece.base or (-1, 0), piece.delta or (-1, 0)
    head = HEAD.pack(
        MAGIC, piece.kind, piece.epoch, piece.number, piece.v_from, piece.v_to, *base, *delta, piece.token,
        len(piece.records),
    )  # fmt: skip
    body = b"".join([head, *(LEN.pack(len(r)) + r for r in piece.records)])
    return body + LEN.pack(zlib.crc32(body))


def decode_piece(data: bytes, key: str) -> Piece:
    if len(data) < HEAD.size + LEN.size or data[:4] != MAGIC:
        raise CorruptRecord(f"S3 object {key!r} is not a log object of this format")
    (crc,) = LEN.unpack_from(data, len(data) - LEN.size)
    if zlib.crc32(data[: -LEN.size]) != crc:
        raise CorruptRecord(f"S3 object {key!r} is damaged (checksum mismatch)")
    _, kind, epoch, number, v_from, v_to, b_end, b_v, d_end, d_v, token, count = HEAD.unpack_from(data)
    records, offset = [], HEAD.size
    for _ in range(count):
        (length,) = LEN.unpack_from(data, offset)
        records.append(data[offset + LEN.size : offset + LEN.size + length])
        offset += LEN.size + length
    if offset != len(data) - LEN.size or v_to - v_from != count:
        raise CorruptRecord(f"S3 object {key!r} is damaged (its records do not add up)")
    base = (b_end, b_v) if b_end >= 0 else None
    delta = (d_end, d_v) if d_end >= 0 else None
    return Piece(kind, epoch, number, v_from, v_to, base, delta, token, records)


def stitch(pieces: Iterable[Piece]) -> list[bytes] | None:
    """The whole log from pieces: the newest piece, then older ones of its epoch back to version 0."""
    pieces = list(pieces)
    if not pieces:
        return []
    top = max(pieces, key=lambda p: (p.number, p.kind in (APPEND, REPLACE)))
    same = [p for p in pieces if p.epoch == top.epoch]
    chosen = [top]
    while chosen[-1].v_from > 0:
        start = chosen[-1].v_from
        covering = [p for p in same if p.v_from < start <= p.v_to]
        if not covering:
            return None
        chosen.append(min(covering, key=lambda p: p.v_from))
    records: list[bytes] = []
    for piece in reversed(chosen):  # pieces of one epoch agree wherever they overlap
        records = records[: piece.v_from] + piece.records
    return records


@dataclass
class Chain:
    """What a client knows of a run's log: its records, the next object number, its segments."""

    epoch: int = 0
    next_n: int = 0
    records: list[bytes] = field(default_factory=list)
    base: tuple[int, int] | None = None
    delta: tuple[int, int] | None = None
    window_objects: int = 0  # log objects written since the segment the window starts at
    stale: set[str] = field(default_factory=set)  # segment keys superseded, to delete
    merging: bool = False  # a segment of this chain is being written

    @property
    def version(self) -> int:
        return len(self.records)

    @property
    def window_from(self) -> int:
        """The version the next append's object starts at: the end of the newest segment known."""
        return self.delta[1] if self.delta else self.base[1] if self.base else 0

    @property
    def window_end(self) -> int:
        """The last log object the newest segment known covers (the one before the epoch if none)."""
        return self.delta[0] if self.delta else self.base[0] if self.base else self.epoch - 1

    def learn(self, piece: Piece) -> None:
        """Adopt the newer segments another writer knew, within this epoch."""
        if piece.epoch != self.epoch:
            return
        if piece.base and (self.base is None or piece.base[0] > self.base[0]):
            self.base, self.delta = piece.base, None
        newer = piece.delta and (self.delta is None or piece.delta[0] > self.delta[0])
        if piece.delta and newer and self.base and piece.delta[1] >= self.base[1]:
            self.delta = piece.delta


class RunCache:
    """A client's memory of one run: its log chain, lease and due pointers (with their ETags)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.chain: Chain | None = None
        self.lease: tuple[str, str, float] | None = None  # etag, owner, expiry
        self.pointers: dict[str, tuple[str | None, list[str]]] = {}  # queue -> (etag or None, entry keys)


def seg_of(key: str) -> tuple[int, int]:
    name = key.rsplit("/", 1)[1]
    return int(name[:16]), SEG_KINDS[name[16:]]
