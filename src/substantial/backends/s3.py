"""The S3 backend: the whole state in one bucket, coordinated by conditional writes.

Layout under the prefix (see docs/backends.md)::

    runs/<run>/log/<n>              the n-th write to the log: If-None-Match: * makes it the append
    runs/<run>/seg/<n>.base|.delta  merged segments: the log as of object n, or what it added to a base
    runs/<run>/inbox/<message id>   one object per unacknowledged message
    runs/<run>/lease                owner and expiry, replaced with If-Match: <etag>
    runs/<run>/due.<queue>          names the run's due entry on that queue, and the one before (If-Match)
    info/<run>                      the run's summary
    due/<queue>/<due µs>-<run>      the due index: keys sort by due time
    posting/<queue>/<ns>~<nonce>~<run>   a post in progress

No write spans two objects, so the order of writes carries every guarantee:
an object is written before anything that names it, and removed after.
boto3 is imported here and botocore in s3_requests.py, and nowhere else: they are the ``s3`` extra.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import boto3  # type: ignore[import-untyped]

from substantial.backends.base import Backend, Message, check_run_id
from substantial.backends.s3_log import (
    APPEND,
    BASE,
    DELTA,
    REPLACE,
    Chain,
    Piece,
    RunCache,
    decode_piece,
    encode_piece,
    seg_of,
    stitch,
)
from substantial.backends.s3_requests import Bucket, S3Error, client_config, no_expect_continue
from substantial.errors import Conflict, CorruptRecord, SubstantialError

__all__ = ["S3Backend", "S3Error"]  # S3Error is made in s3_requests.py; docs/backends.md names it here

log = logging.getLogger("substantial.backends.s3")

#: Log objects written after the last segment before the next append merges them.
MERGE_OBJECTS = 16
#: ... or bytes of records written since the last segment.
MERGE_BYTES = 64 * 1024
#: A post marker older than this (seconds) is taken for the trace of a poster that died.
POSTING_GRACE = 10.0
#: How often (seconds of the poller's ``now``) ``due`` looks for such markers.
POSTING_SCAN_EVERY = 5.0
#: Runs whose log, lease and due pointer a client keeps in memory (LRU).
CACHED_RUNS = 1024

_T = TypeVar("_T")
_STAMP = struct.Struct(">Q")  # a message's post time in ns, before its body


class S3Backend(Backend):
    """Runs stored as objects in ``bucket`` under ``prefix``.

    Args:
        bucket: an existing bucket.
        prefix: a key prefix, so several stores can share a bucket.
        client: a boto3 S3 client to use; otherwise one is made with boto3's
            usual credential chain, ``endpoint_url`` and ``region``.
        retry_for: seconds a request is retried (throttling, 5xx, timeouts,
            connection errors) before ``S3Error`` is raised.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        retry_for: float = 60.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._owns_client = client is None
        self.client = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=client_config()
        )
        # bodies are small: no "Expect: 100-continue", whose early replies (a 412, an empty PUT's 200)
        # botocore mishandles on a reused connection, reading the next reply as that stale one
        self.client.meta.events.register("before-send.s3", no_expect_continue, unique_id="substantial-no-expect")
        self._s3 = Bucket(self.client, bucket, retry_for)
        self._guard = threading.Lock()
        self._runs: OrderedDict[str, RunCache] = OrderedDict()
        self._seen: OrderedDict[tuple[str, str], set[str]] = OrderedDict()  # entries a poll returned
        self._scanned: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="substantial-s3")

    def __repr__(self) -> str:
        return f"S3Backend(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @property
    def retry_for(self) -> float:
        """Seconds a request is retried before ``S3Error`` is raised; may be changed."""
        return self._s3.retry_for

    @retry_for.setter
    def retry_for(self, seconds: float) -> None:
        self._s3.retry_for = seconds

    # -- keys, parallel reads, run caches -----------------------------------

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _map(self, f: Callable[[str], _T], keys: Sequence[str]) -> list[_T]:
        """``f`` of each key, in parallel when there are several."""
        if len(keys) <= 1:
            return [f(k) for k in keys]
        return list(self._pool.map(f, keys))

    def _run(self, run_id: str) -> RunCache:
        check_run_id(run_id)
        with self._guard:
            cache = self._runs.get(run_id)
            if cache is None:
                cache = self._runs[run_id] = RunCache()
                if len(self._runs) > CACHED_RUNS:
                    self._runs.popitem(last=False)
            else:
                self._runs.move_to_end(run_id)
            return cache

    # -- the log: reads ------------------------------------------------------

    def _log_key(self, run_id: str, n: int) -> str:
        return self._key("runs", run_id, "log", f"{n:016d}")

    def _seg_key(self, run_id: str, end: int, kind: int) -> str:
        return self._key("runs", run_id, "seg", f"{end:016d}" + (".base" if kind == BASE else ".delta"))

    def _piece(self, key: str) -> Piece | None:
        found = self._s3.get(key)
        return decode_piece(found[0], key) if found is not None else None

    def _chain(self, run_id: str, cache: RunCache) -> Chain:
        """The run's chain brought up to date: one LIST if this client knows the log, a cold read if not."""
        cache.chain = self._read_cold(run_id) if cache.chain is None else self._refresh(run_id, cache.chain)
        return cache.chain

    def _refresh(self, run_id: str, chain: Chain) -> Chain:
        """Objects written since the chain's last: one LIST, and a GET of the newest if there are any."""
        after = self._log_key(run_id, chain.next_n - 1) if chain.next_n else None
        keys = list(self._s3.list(self._key("runs", run_id, "log/"), after=after))
        if not keys:
            return chain
        top = self._piece(keys[-1])
        if top is None or not (top.v_from == 0 or (top.epoch == chain.epoch and top.v_from <= chain.version)):
            return self._read_cold(run_id)
        records = top.records if top.v_from == 0 else chain.records[: top.v_from] + top.records
        fresh = Chain(top.epoch, top.number + 1, records, stale=chain.stale)
        if top.epoch == chain.epoch:
            fresh.base, fresh.delta = chain.base, chain.delta
        fresh.learn(top)
        fresh.window_objects = top.number - fresh.window_end
        return fresh

    def _read_cold(self, run_id: str) -> Chain:
        """A log this client knows nothing of: two LISTs, then up to three GETs in parallel.

        The newest base segment, the newest delta over it and the newest log
        object (which holds every record since the segment its writer knew)
        make the whole log.
        """
        for _ in range(3):
            segs = {key: seg_of(key) for key in self._s3.list(self._key("runs", run_id, "seg/"))}
            last_end = max((end for end, _ in segs.values()), default=-1)
            after = self._log_key(run_id, last_end) if last_end >= 0 else None
            listed = self._s3.list(self._key("runs", run_id, "log/"), after=after)
            newest = next(iter(deque(listed, maxlen=1)), None)  # the newest object after the segments
            base = max((k for k, (_, kind) in segs.items() if kind == BASE), default=None)
            base_end = segs[base][0] if base else -1
            delta = max((k for k, (end, kind) in segs.items() if kind == DELTA and end > base_end), default=None)
            wanted = [k for k in (newest, base, delta) if k]
            pieces = self._map(self._piece, wanted)
            if any(p is None for p in pieces):
                continue  # a segment was merged away after the listing
            found = [p for p in pieces if p is not None]
            if not found:
                return Chain()
            records = stitch(found)
            if records is None:
                records, found = self._walk_back(run_id, found)
            return self._chain_of(run_id, found, records, segs)
        records, found = self._walk_back(run_id, [])
        return self._chain_of(run_id, found, records, {})

    def _walk_back(self, run_id: str, found: list[Piece]) -> tuple[list[bytes], list[Piece]]:
        """The slow path: read log objects from the newest back until they chain to version 0."""
        keys = list(self._s3.list(self._key("runs", run_id, "log/")))
        have = {p.number for p in found if p.kind in (APPEND, REPLACE)}
        todo = [k for k in reversed(keys) if int(k[-16:]) not in have]
        while True:
            records = stitch(found)
            if records is not None and found:
                return records, found
            if not todo:
                if not found:
                    return [], []
                raise CorruptRecord(f"run {run_id!r}: its log objects do not chain back to the start")
            batch, todo = todo[:8], todo[8:]
            found = found + [p for p in self._map(self._piece, batch) if p is not None]

    def _chain_of(
        self, run_id: str, found: list[Piece], records: list[bytes], segs: dict[str, tuple[int, int]]
    ) -> Chain:
        if not found:
            return Chain()
        top = max(found, key=lambda p: p.number)
        chain = Chain(top.epoch, top.number + 1, records)
        for piece in sorted(found, key=lambda p: (p.number, p.kind)):
            if piece.epoch != top.epoch:
                continue
            if piece.kind == BASE:
                chain.base, chain.delta = (piece.number, piece.v_to), None
            elif piece.kind == DELTA and chain.base is not None and piece.v_from <= chain.base[1]:
                chain.delta = (piece.number, piece.v_to)
            chain.learn(piece)
        live = {self._seg_key(run_id, s[0], kind) for kind, s in ((BASE, chain.base), (DELTA, chain.delta)) if s}
        chain.stale = set(segs) - live
        chain.window_objects = top.number - chain.window_end
        return chain

    def read_log(self, run_id: str, after: int = 0) -> tuple[list[bytes], int]:
        cache = self._run(run_id)
        with cache.lock:
            chain = self._chain(run_id, cache)
            return chain.records[after:], chain.version

    # -- the log: writes -----------------------------------------------------

    def _create(self, key: str, piece: Piece) -> bool:
        """Create the object unless it exists; True if it now holds ``piece`` (a retried write may have landed)."""
        if self._s3.put(key, encode_piece(piece), if_none_match=True) is not None:
            return True
        there = self._piece(key)
        return there is not None and there.token == piece.token

    def append_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        cache = self._run(run_id)
        with cache.lock:
            chain = cache.chain
            if chain is None or chain.version != expected_version or not records:
                chain = self._chain(run_id, cache)
            for _ in range(8):
                if chain.version != expected_version:
                    raise Conflict(f"run {run_id!r}: log is at version {chain.version}, not {expected_version}")
                if not records:
                    return chain.version
                start = chain.window_from
                piece = Piece(
                    APPEND, chain.epoch, chain.next_n, start, chain.version + len(records), chain.base, chain.delta,
                    uuid.uuid4().bytes, chain.records[start:] + list(records),
                )  # fmt: skip
                if self._create(self._log_key(run_id, chain.next_n), piece):
                    chain.records.extend(records)
                    chain.next_n += 1
                    chain.window_objects += 1
                    self._maybe_merge(run_id, cache, chain)
                    return chain.version
                chain = cache.chain = self._refresh(run_id, chain)  # another writer took that number
            raise Conflict(f"run {run_id!r}: the log kept moving under append at version {expected_version}")

    def _maybe_merge(self, run_id: str, cache: RunCache, chain: Chain) -> None:
        """Merge the window into a segment once it is long, in the background (the run's lock is held).

        A delta holds the records since the base; a new base (the whole log)
        replaces base and delta once the delta would outgrow half the base.
        Segments only save reads: a merge that fails or is overtaken only
        leaves the windows of the next appends longer.
        """
        window = chain.records[chain.window_from :]
        if chain.merging or (chain.window_objects < MERGE_OBJECTS and sum(map(len, window)) < MERGE_BYTES):
            return
        end, base_v = chain.next_n - 1, chain.base[1] if chain.base else 0
        since_base = sum(map(len, chain.records[base_v:]))
        kind = DELTA if chain.base and 2 * since_base <= sum(map(len, chain.records[:base_v])) else BASE
        start = base_v if kind == DELTA else 0
        base = chain.base if kind == DELTA else None
        piece = Piece(
            kind, chain.epoch, end, start, chain.version, base, None, uuid.uuid4().bytes, chain.records[start:]
        )
        try:
            self._pool.submit(self._merge, run_id, cache, chain, piece)
            chain.merging = True
        except RuntimeError:  # closed meanwhile: the append stands, the merge waits for another client
            pass

    def _merge(self, run_id: str, cache: RunCache, chain: Chain, piece: Piece) -> None:
        try:
            self._s3.put(self._seg_key(run_id, piece.number, piece.kind), encode_piece(piece), if_none_match=True)
        except SubstantialError as e:  # exists: a segment of the same records, as good
            log.warning("run %s: merging its log objects failed, a later append tries again: %s", run_id, e)
            with cache.lock:
                chain.merging = False
            return
        with cache.lock:
            chain.merging = False
            if cache.chain is not chain:
                return  # read anew meanwhile: the next reader lists the segment
            superseded = [(DELTA, chain.delta), (BASE, chain.base if piece.kind == BASE else None)]
            chain.stale.update(self._seg_key(run_id, seg[0], kind) for kind, seg in superseded if seg)
            if piece.kind == BASE:
                chain.base, chain.delta = (piece.number, piece.v_to), None
            else:
                chain.delta = (piece.number, piece.v_to)
            chain.window_objects = chain.next_n - 1 - piece.number
            stale, chain.stale = (sorted(chain.stale), set()) if len(chain.stale) >= 4 else ([], chain.stale)
        try:
            self._s3.delete(stale)
        except SubstantialError as e:
            log.warning("run %s: deleting superseded segments failed: %s", run_id, e)

    def replace_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        cache = self._run(run_id)
        with cache.lock:
            chain = self._chain(run_id, cache)
            for _ in range(8):
                if chain.version != expected_version:
                    raise Conflict(f"run {run_id!r}: log is at version {chain.version}, not {expected_version}")
                if self._start_epoch(run_id, cache, chain, list(records)):
                    return len(records)
                chain = cache.chain = self._refresh(run_id, chain)
            raise Conflict(f"run {run_id!r}: the log kept moving under replace at version {expected_version}")

    def _start_epoch(self, run_id: str, cache: RunCache, chain: Chain, records: list[bytes]) -> bool:
        """Write a replace object (a new generation of the log) and a base segment of it."""
        n = chain.next_n
        piece = Piece(REPLACE, n, n, 0, len(records), None, None, uuid.uuid4().bytes, records)
        if not self._create(self._log_key(run_id, n), piece):
            return False
        fresh = Chain(n, n + 1, list(records), stale=set(chain.stale))
        fresh.stale.update(self._seg_key(run_id, s[0], k) for k, s in ((BASE, chain.base), (DELTA, chain.delta)) if s)
        if records:  # so later appends hold only their own records; if this is lost, the first merge writes one
            base = replace(piece, kind=BASE, token=uuid.uuid4().bytes)
            try:
                self._s3.put(self._seg_key(run_id, n, BASE), encode_piece(base), if_none_match=True)
                fresh.base = (n, len(records))
            except SubstantialError as e:
                log.warning("run %s: writing the base segment of its replaced log failed: %s", run_id, e)
        cache.chain = fresh
        return True

    # -- the inbox -----------------------------------------------------------

    def post(self, queue: str, run_id: str, message: Message) -> None:
        """Marker, message, due entry (with its pointer), then the marker goes.

        A poster that dies between any two writes leaves its marker; a poll
        that finds a marker older than ``POSTING_GRACE`` marks its run due, so
        a message that was written always leads to a turn.
        """
        for name in (queue, run_id, message.id):
            check_run_id(name)
        marker = self._key("posting", queue, f"{time.time_ns():020d}~{uuid.uuid4().hex[:12]}~{run_id}")
        self._s3.put(marker, b"")
        stamped = _STAMP.pack(time.time_ns()) + message.body
        self._s3.put(
            self._key("runs", run_id, "inbox", message.id), stamped, if_none_match=True
        )  # a retry keeps the first
        self._set_due(queue, run_id, time.time(), also_delete=[marker])

    def take_inbox(self, run_id: str) -> list[Message]:
        check_run_id(run_id)
        prefix = self._key("runs", run_id, "inbox/")
        keys = list(self._s3.list(prefix))
        found = []
        for key, got in zip(keys, self._map(self._s3.get, keys), strict=True):
            if got is not None and len(got[0]) >= _STAMP.size:
                found.append((_STAMP.unpack_from(got[0])[0], key[len(prefix) :], got[0][_STAMP.size :]))
        return [Message(message_id, body) for _, message_id, body in sorted(found)]

    def ack(self, run_id: str, ids: Iterable[str]) -> None:
        check_run_id(run_id)
        self._s3.delete(self._key("runs", run_id, "inbox", check_run_id(i)) for i in ids)

    # -- the due index -----------------------------------------------------

    def _entry_key(self, queue: str, run_id: str, due_at: float) -> str:
        return self._key("due", queue, f"{max(int(due_at * 1e6), 0):017d}-{run_id}")

    def _pointer(self, run_id: str, queue: str) -> tuple[str | None, list[str]]:
        """The ETag of the run's due pointer on ``queue`` (None if absent), its entry and the one before."""
        got = self._s3.get(self._key("runs", run_id, f"due.{queue}"))
        return (got[1], got[0].decode().split("\n")) if got is not None else (None, [])

    def _set_due(self, queue: str, run_id: str, due_at: float | None, also_delete: Iterable[str] = ()) -> None:
        """Point the run at a new entry (or none), write that entry, then remove the old ones.

        The pointer is replaced with If-Match, so of two racing moves the
        second sees the first's entry and removes it. It names the new entry
        and the one it replaces: an entry is written only once a pointer names
        it, and removed only after the next one exists, so a crash between
        any two writes leaves an extra entry that the next move removes (or,
        after two crashes in a row, a spurious turn), never none.
        """
        check_run_id(queue)
        cache = self._run(run_id)
        new = self._entry_key(queue, run_id, due_at) if due_at is not None else ""
        pointer = self._key("runs", run_id, f"due.{queue}")
        with cache.lock:
            known = cache.pointers.get(queue)
            if known is None and not new:
                known = self._pointer(run_id, queue)
            etag, old = known or (None, [])  # unknown: try creating it (a new run), a 412 says otherwise
            while True:
                if etag is None and not new:
                    written: str | None = None
                    break  # no pointer and nothing to point at
                body = "\n".join([new, *old[:1]]).encode()
                written = self._s3.put(pointer, body, if_match=etag, if_none_match=etag is None)
                if written is not None:
                    break
                etag, old = self._pointer(run_id, queue)
            cache.pointers[queue] = (written, [new, *old[:1]]) if written else (None, [])
        if new:
            self._s3.put(new, run_id.encode())
        with self._guard:
            seen = self._seen.pop((queue, run_id), set())
        self._s3.delete(k for k in (*old, *seen, *also_delete) if k and k != new)

    def schedule(self, queue: str, run_id: str, due_at: float) -> None:
        self._set_due(queue, run_id, due_at)

    def unschedule(self, queue: str, run_id: str) -> None:
        self._set_due(queue, run_id, None)

    def due(self, queue: str, now: float, limit: int) -> list[str]:
        """One LIST of the queue's entries from the earliest (plus, every few seconds, one of post markers)."""
        check_run_id(queue)
        self._recover_posts(queue, now)
        prefix, cutoff = self._key("due", queue, ""), max(int(now * 1e6), 0)
        found: dict[str, None] = {}
        if limit <= 0:
            return []
        for key in self._s3.list(prefix, page=min(1000, 2 * limit + 8)):
            name = key[len(prefix) :]
            if int(name[:17]) > cutoff:
                break
            run_id = name[18:]
            with self._guard:  # remembered so this run's next move removes it, even if no pointer names it
                self._seen.setdefault((queue, run_id), set()).add(key)
                self._seen.move_to_end((queue, run_id))
                if len(self._seen) > 4 * CACHED_RUNS:
                    self._seen.popitem(last=False)
            found[run_id] = None
            if len(found) >= limit:
                break
        return list(found)

    def _recover_posts(self, queue: str, now: float) -> None:
        """Mark due the runs of posts whose poster died mid-way (markers older than the grace)."""
        last = self._scanned.get(queue)
        if last is not None and abs(now - last) < POSTING_SCAN_EVERY:
            return
        self._scanned[queue] = now
        prefix, cutoff = self._key("posting", queue, ""), int((now - POSTING_GRACE) * 1e9)
        for key in list(self._s3.list(prefix)):
            stamp, _, run_id = key[len(prefix) :].split("~", 2)
            if int(stamp) > cutoff:
                break
            log.warning("run %s: a post to it was interrupted; marking it due", run_id)
            self._set_due(queue, run_id, now, also_delete=[key])

    # -- leases --------------------------------------------------------------

    def _lease(self, run_id: str) -> tuple[str, str, float] | None:
        got = self._s3.get(self._key("runs", run_id, "lease"))
        if got is None:
            return None
        owner, _, expires = got[0].decode().rpartition("\n")
        return got[1], owner, float(expires)

    def _swap_lease(self, run_id: str, decide: Callable[[str, float], tuple[str, float] | None]) -> bool:
        """Replace the lease with ``decide(owner, expiry)`` (``("", 0)`` when free) if that gives one.

        The cached state (or, if there is none, no lease) is trusted only to
        try a write, which its condition refuses if it is stale; a refusal is
        always decided on a fresh read.
        """
        cache = self._run(run_id)
        key = self._key("runs", run_id, "lease")
        with cache.lock:
            state, fresh = cache.lease, False  # unknown: try creating it, a 412 says otherwise
            for _ in range(16):
                etag, owner, expires = state if state is not None else (None, "", 0.0)
                new = decide(owner, expires)
                if new is None and fresh:
                    cache.lease = state
                    return False
                if new is not None:
                    written = self._s3.put(
                        key, f"{new[0]}\n{new[1]!r}".encode(), if_match=etag, if_none_match=etag is None
                    )
                    if written is not None:
                        cache.lease = (written, *new)
                        return True
                state, fresh = self._lease(run_id), True  # a refusal or a failed write: ask the store
            return False

    def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        def decide(held_by: str, expires: float) -> tuple[str, float] | None:
            now = time.time()
            return (owner, now + ttl) if held_by == "" or expires <= now else None

        return self._swap_lease(run_id, decide)

    def renew_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        def decide(held_by: str, expires: float) -> tuple[str, float] | None:
            now = time.time()
            return (owner, now + ttl) if held_by == owner and expires > now else None

        return self._swap_lease(run_id, decide)

    def release_lease(self, run_id: str, owner: str) -> None:
        self._swap_lease(run_id, lambda held_by, _: ("", 0.0) if held_by == owner else None)

    # -- visibility and retention ------------------------------------------

    def write_info(self, run_id: str, info: bytes) -> None:
        self._s3.put(self._key("info", check_run_id(run_id)), info)

    def read_info(self, run_id: str) -> bytes | None:
        got = self._s3.get(self._key("info", check_run_id(run_id)))
        return got[0] if got is not None else None

    def list_runs(self, *, after: str | None = None, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        prefix = self._key("info", "")
        ids = []
        for key in self._s3.list(prefix, after=prefix + after if after is not None else None, page=min(limit, 1000)):
            ids.append(key[len(prefix) :])
            if len(ids) >= limit:
                break
        return ids

    def delete_run(self, run_id: str) -> None:
        """Remove everything but one empty replace object (a tombstone that fences stale appenders).

        A worker that still thinks it holds the run then fails its next
        append with ``Conflict`` instead of writing into a deleted log.
        """
        cache = self._run(run_id)
        with cache.lock:
            chain = self._chain(run_id, cache)
            keep = None
            if chain.next_n > 0:
                while chain.version > 0 and not self._start_epoch(run_id, cache, chain, []):
                    chain = cache.chain = self._refresh(run_id, chain)
                keep = self._log_key(run_id, cache.chain.next_n - 1 if cache.chain else 0)
            keys = list(self._s3.list(self._key("runs", run_id, "")))
            pointers = [k for k in keys if k.rsplit("/", 1)[1].startswith("due.")]
            entries = [e for got in self._map(self._s3.get, pointers) if got for e in got[0].decode().split("\n")]
            with self._guard:
                for queue_run in [qr for qr in self._seen if qr[1] == run_id]:
                    entries += self._seen.pop(queue_run)
            self._s3.delete(e for e in entries if e)
            self._s3.delete([k for k in keys if k != keep] + [self._key("info", run_id)])
            cache.lease, cache.pointers = None, {}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self._owns_client:
            self.client.close()
