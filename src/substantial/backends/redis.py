"""The Redis backend: single node or Redis Cluster.

Keys (``p`` is the prefix)::

    p:{run}:log        list of records; appended by a Lua script that checks the length
    p:{run}:inbox      list of unacknowledged message ids, oldest first
    p:{run}:msgs       hash: message id -> body
    p:{run}:lease      the lease owner, with a PX expiry
    p:{run}:info       the run's summary
    p:{q:queue}:due    sorted set: run -> due time
    p:{q:queue}:posting  sorted set: posts in progress ("run\\nmessage id" -> time)
    p:runs             sorted set of run ids (all scores 0, listed by lex range)
    p:queues           set of queue names (for delete_run)
    p:wake:queue       pub/sub channel a post publishes on

Every key of a run carries the run's hash tag and every key of a queue the
queue's, so each Lua script touches one slot: the backend works unchanged on
Redis Cluster. The steps that span a run and a queue (a post) are ordered so
that no crash between them loses a message or a turn; see docs/backends.md.

Round trips: every operation is one, except ``post`` (four on a cluster,
where its steps go to different nodes in turn; one pipeline on a single
node, which runs a connection's commands in order), ``write_info`` (two on a
cluster, one on a node) and ``delete_run`` (two on a node). Of a turn's
operations together, ``open_turn`` is one script everywhere (none on a single
node after a claim here read it); ``start_run``, ``claim_due`` and
``close_turn`` (with its claim of the next runs) are one round trip on a
single node and the sum of their parts on a cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from substantial.backends.base import Backend, Claim, Message, Opened, check_run_id
from substantial.backends.redis_conn import Command, Connections
from substantial.errors import Conflict

#: A posting marker older than this is taken for the trace of a poster that died.
POSTING_GRACE = 5.0
#: How long what a claim read of a run stands in for the run's open_turn (seconds), and how many are kept.
_PEEK_FOR = 1.0
_PEEKS_KEPT = 1024

_APPEND = """
local n = redis.call('LLEN', KEYS[1])
if n ~= tonumber(ARGV[1]) then return {0, n} end
for i = 2, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
return {1, n + #ARGV - 1}
"""
_REPLACE = """
local n = redis.call('LLEN', KEYS[1])
if n ~= tonumber(ARGV[1]) then return {0, n} end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
return {1, #ARGV - 1}
"""
_READ = """
local n = redis.call('LLEN', KEYS[1])
return {n, redis.call('LRANGE', KEYS[1], ARGV[1], -1)}
"""
_POST = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then redis.call('RPUSH', KEYS[1], ARGV[1]) end
"""
# A post (with a summary first: a start) in one step, on a single node: no marker is needed when nothing can
# happen in between. KEYS: info, runs, queues, inbox, msgs, due. ARGV: the summary ('' for none), the run, the
# queue, the message's id and body, now, the wake-up channel.
_DELIVER = """
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
end
redis.call('SADD', KEYS[3], ARGV[3])
if redis.call('HSETNX', KEYS[5], ARGV[4], ARGV[5]) == 1 then redis.call('RPUSH', KEYS[4], ARGV[4]) end
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[2])
redis.call('PUBLISH', ARGV[7], ARGV[2])
"""
_TAKE = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
if #ids == 0 then return {} end
return {ids, redis.call('HMGET', KEYS[2], unpack(ids))}
"""
_ACK = """
for i = 1, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('LREM', KEYS[1], 0, ARGV[i])
end
"""
_MARK_DUE = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
"""
# Mark due the runs of posts whose poster died (markers older than ``stale``); the runs due at ``now``.
_DUE_FN = """
local function due_runs(due_key, posting_key, now, stale, scan)
  for _, marker in ipairs(redis.call('ZRANGEBYSCORE', posting_key, '-inf', stale)) do
    redis.call('ZADD', due_key, now, string.match(marker, '^(.-)\\n'))
    redis.call('ZREM', posting_key, marker)
  end
  return redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, scan)
end
"""
_DUE = _DUE_FN + "return due_runs(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])"
_TAKE_LEASE = """
local function take_lease(key, owner, ms)
  return redis.call('SET', key, owner, 'NX', 'PX', ms) ~= false
end
"""
_ACQUIRE = _TAKE_LEASE + "if take_lease(KEYS[1], ARGV[1], ARGV[2]) then return 1 end return 0"
# What open_turn(run, after=its log's length) returns, read with the claim that leased the run: the run, its
# inbox's ids and bodies, its log's length, its summary. ``base`` is "<prefix>{<run>}:".
_PEEK_FN = """
local function peek(base, run)
  local ids = redis.call('LRANGE', base .. 'inbox', 0, -1)
  local bodies = {}
  if #ids > 0 then bodies = redis.call('HMGET', base .. 'msgs', unpack(ids)) end
  return {run, ids, bodies, redis.call('LLEN', base .. 'log'), redis.call('GET', base .. 'info')}
end
"""
# The claim's arguments, from a[i] on: now, stale, scan, limit, owner, the run keys' prefix, ttl in ms, a run
# to mark due now first if its inbox (the next argument) has messages ('' for none), then the runs to skip.
# It returns a peek of each run leased. A single node only: the keys of the runs it leases
# ("<prefix><run>}:lease", ...) and that inbox are not declared.
_CLAIM_FN = (
    _DUE_FN
    + _TAKE_LEASE
    + _PEEK_FN
    + """
local function claim(due_key, posting_key, a, i)
  if a[i + 7] ~= '' and redis.call('LLEN', a[i + 8]) > 0 then redis.call('ZADD', due_key, a[i], a[i + 7]) end
  local skip, claimed, limit = {}, {}, tonumber(a[i + 3])
  if limit <= 0 then return claimed end
  for j = i + 9, #a do skip[a[j]] = true end
  for _, run in ipairs(due_runs(due_key, posting_key, a[i], a[i + 1], a[i + 2])) do
    if #claimed >= limit then break end
    if not skip[run] then
      skip[run] = true
      local base = a[i + 5] .. run .. '}:'
      if take_lease(base .. 'lease', a[i + 4], a[i + 6]) then claimed[#claimed + 1] = peek(base, run) end
    end
  end
  return claimed
end
"""
)
_CLAIM = _CLAIM_FN + "return claim(KEYS[1], KEYS[2], ARGV, 1)"
# A turn's close, on a single node. KEYS: log, info, runs, inbox, msgs, due, posting, lease. ARGV: the log's
# expected version, how many records, '1' if a summary follows, the summary, the run, due_at ('' to remove the
# due entry), the owner, how many acks; then the records, the acks, and the claim's arguments.
_CLOSE = (
    _CLAIM_FN
    + """
local n = redis.call('LLEN', KEYS[1])
if n ~= tonumber(ARGV[1]) then return {0, n} end
local i = 9
for _ = 1, tonumber(ARGV[2]) do
  redis.call('RPUSH', KEYS[1], ARGV[i])
  i = i + 1
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[2], ARGV[4])
  redis.call('ZADD', KEYS[3], 0, ARGV[5])
end
for _ = 1, tonumber(ARGV[8]) do
  redis.call('HDEL', KEYS[5], ARGV[i])
  redis.call('LREM', KEYS[4], 0, ARGV[i])
  i = i + 1
end
if ARGV[6] == '' then redis.call('ZREM', KEYS[6], ARGV[5]) else redis.call('ZADD', KEYS[6], ARGV[6], ARGV[5]) end
if redis.call('GET', KEYS[8]) == ARGV[7] then redis.call('DEL', KEYS[8]) end
return {1, claim(KEYS[6], KEYS[7], ARGV, i)}
"""
)
# KEYS: inbox, msgs, log, info; ARGV[1]: read the log from there
_OPEN = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local bodies = {}
if #ids > 0 then bodies = redis.call('HMGET', KEYS[2], unpack(ids)) end
local n = redis.call('LLEN', KEYS[3])
return {ids, bodies, n, redis.call('LRANGE', KEYS[3], ARGV[1], -1), redis.call('GET', KEYS[4])}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""

Client = redis.Redis | RedisCluster


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _messages(ids: list[bytes], bodies: list[bytes | None]) -> list[Message]:
    """An inbox's messages from its ids and their bodies (a body acknowledged meanwhile is gone)."""
    return [Message(_text(i), body) for i, body in zip(ids, bodies, strict=True) if body is not None]


def _opened(ids: list[bytes], bodies: list[bytes | None], version: int, records: list[bytes], info: Any) -> Opened:
    """What ``open_turn`` returns, from what the open script (or a claim's peek) read."""
    return Opened(_messages(ids, bodies), list(records), int(version), None if info is None else _bytes(info))


def _retry() -> Retry:
    """Ride out a restart or a failover: about 15 s of backoff before an error surfaces."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=40)


class RedisBackend(Backend):
    """Runs stored in Redis (``redis.Redis`` or ``redis.cluster.RedisCluster``)."""

    wakes_across_processes = True

    def __init__(self, client: str | Client, *, prefix: str = "substantial") -> None:
        self._r: Client = self._connect(client) if isinstance(client, str) else client
        if self._r.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisBackend needs a client with decode_responses=False: records are bytes")
        self.prefix = prefix
        self._scripts = {
            name: self._r.register_script(source)
            for name, source in {
                "append": _APPEND,
                "replace": _REPLACE,
                "read": _READ,
                "post": _POST,
                "deliver": _DELIVER,
                "take": _TAKE,
                "ack": _ACK,
                "mark_due": _MARK_DUE,
                "due": _DUE,
                "claim": _CLAIM,
                "close": _CLOSE,
                "open": _OPEN,
                "acquire": _ACQUIRE,
                "renew": _RENEW,
                "release": _RELEASE,
            }.items()
        }
        #: One node runs a pipeline's commands in the order sent; a cluster splits it between nodes.
        self._one_node = not isinstance(self._r, RedisCluster)
        #: A single node's hot path goes through connections of its own (see redis_conn.py); a cluster's through
        #: the client, which routes each command to its slot's node.
        self._conns = None if isinstance(self._r, RedisCluster) else Connections(self._r.connection_pool)
        self._known_queues: set[str] = set()
        #: What a claim read of each run it leased, until the run's open_turn (or the time given) consumes it.
        self._peeks: dict[str, tuple[float, Opened]] = {}
        #: One pub/sub connection per waiting thread and queue set: a connection is not thread-safe.
        self._pubsubs: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._pubsubs_lock = threading.Lock()

    @staticmethod
    def _connect(url: str, cluster: bool = False) -> Client:
        kwargs: dict[str, Any] = {
            "retry": _retry(),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
            "health_check_interval": 30,
        }
        if cluster:
            return RedisCluster.from_url(url, **kwargs)
        return redis.Redis.from_url(url, **kwargs)

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """``redis://host:port/db``, ``rediss://`` for TLS; ``?cluster=true`` and ``?prefix=`` are ours."""
        parsed = urlparse(url)
        query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
        cluster = query.pop("cluster", "false").lower() in ("1", "true", "yes")
        prefix = query.pop("prefix", "substantial")
        plain = urlunparse(parsed._replace(query=urlencode(query)))
        return cls(cls._connect(plain, cluster=cluster), prefix=prefix)

    # -- keys ----------------------------------------------------------------

    def _run_key(self, run_id: str, part: str) -> str:
        return f"{self.prefix}:{{{check_run_id(run_id)}}}:{part}"

    def _queue_key(self, queue: str, part: str) -> str:
        return f"{self.prefix}:{{q:{check_run_id(queue)}}}:{part}"

    def _note_queue(self, queue: str) -> None:
        if queue not in self._known_queues:
            self._r.sadd(f"{self.prefix}:queues", queue)
            self._known_queues.add(queue)

    def _pipelined(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one round trip and return their replies (a single node only).

        Scripts go by ``EVALSHA`` without redis-py's ``SCRIPT EXISTS`` check;
        if the server lost them (a restart, a flush), they are loaded and all
        the commands are sent again, so every caller must be safe to repeat.
        """
        assert self._conns is not None
        results = self._conns.exchange(commands)
        if any(isinstance(r, NoScriptError) for r in results):
            self._raise_any(self._conns.exchange([("SCRIPT", "LOAD", s.script) for s in self._scripts.values()]))
            results = self._conns.exchange(commands)
        self._raise_any(results)
        return results

    @staticmethod
    def _raise_any(results: list[Any]) -> None:
        for result in results:
            if isinstance(result, Exception):
                raise result

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        """Run one of the scripts: on a single node by ``EVALSHA`` on its own connections, else through the client."""
        if self._conns is None:
            return self._scripts[name](keys=keys, args=args)
        return self._pipelined([self._evalsha(name, keys, args)])[0]

    def _command(self, *command: Any) -> Any:
        """One command: on a single node on its own connections, else through the client (to the key's node)."""
        if self._conns is None:
            return self._r.execute_command(*command)  # type: ignore[no-untyped-call,unused-ignore]
        return self._pipelined([command])[0]

    def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Command:
        return ("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    # -- the log -----------------------------------------------------------

    def read_log(self, run_id: str, after: int = 0) -> tuple[list[bytes], int]:
        version, records = self._script("read", [self._run_key(run_id, "log")], [after])
        return list(records), int(version)

    def append_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        ok, version = self._script("append", [self._run_key(run_id, "log")], [expected_version, *records])
        if not ok:
            raise Conflict(f"run {run_id!r}: log is at version {version}, not {expected_version}")
        return int(version)

    def replace_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        ok, version = self._script("replace", [self._run_key(run_id, "log")], [expected_version, *records])
        if not ok:
            raise Conflict(f"run {run_id!r}: log is at version {version}, not {expected_version}")
        return int(version)

    # -- the inbox -----------------------------------------------------------

    def post(self, queue: str, run_id: str, message: Message) -> None:
        """Marker, message, then (atomically) due entry and marker removal, then a wake-up.

        The marker and the due entry live in the queue's slot, the message in
        the run's: a poster that dies after the marker leaves it, and a poll
        that finds an old marker marks its run due. On a single node, all of
        it is one script, and no marker is needed.
        """
        if self._one_node:
            self._deliver(queue, run_id, message, b"")
            return
        marker = f"{check_run_id(run_id)}\n{check_run_id(message.id)}"
        posting, due = self._queue_key(queue, "posting"), self._queue_key(queue, "due")
        inbox, msgs = self._run_key(run_id, "inbox"), self._run_key(run_id, "msgs")
        channel = f"{self.prefix}:wake:{queue}"
        self._note_queue(queue)
        self._r.zadd(posting, {marker: time.time()})
        self._script("post", [inbox, msgs], [message.id, message.body])
        self._script("mark_due", [due, posting], [time.time(), run_id, marker])
        self._r.publish(channel, run_id)

    def _deliver(self, queue: str, run_id: str, message: Message, info: bytes) -> None:
        """A single node's post, after writing the summary ``info`` unless empty: one script."""
        keys = [self._run_key(run_id, "info"), f"{self.prefix}:runs", f"{self.prefix}:queues"]
        keys += [self._run_key(run_id, "inbox"), self._run_key(run_id, "msgs"), self._queue_key(queue, "due")]
        args = [info, run_id, queue, check_run_id(message.id), message.body, time.time(), f"{self.prefix}:wake:{queue}"]
        self._script("deliver", keys, args)

    def take_inbox(self, run_id: str) -> list[Message]:
        found = self._script("take", [self._run_key(run_id, "inbox"), self._run_key(run_id, "msgs")])
        return _messages(*found) if found else []

    def ack(self, run_id: str, ids: Iterable[str]) -> None:
        ids = [check_run_id(i) for i in ids]
        if ids:
            self._script("ack", [self._run_key(run_id, "inbox"), self._run_key(run_id, "msgs")], ids)

    # -- the due index -----------------------------------------------------

    def schedule(self, queue: str, run_id: str, due_at: float) -> None:
        self._note_queue(queue)
        self._command("ZADD", self._queue_key(queue, "due"), due_at, check_run_id(run_id))

    def unschedule(self, queue: str, run_id: str) -> None:
        self._command("ZREM", self._queue_key(queue, "due"), check_run_id(run_id))

    def due(self, queue: str, now: float, limit: int) -> list[str]:
        keys = [self._queue_key(queue, "due"), self._queue_key(queue, "posting")]
        runs = self._script("due", keys, [now, now - POSTING_GRACE, limit])
        return [r.decode() for r in runs]

    # -- leases --------------------------------------------------------------

    def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        return bool(self._script("acquire", [self._run_key(run_id, "lease")], [owner, int(ttl * 1000)]))

    def renew_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        return bool(self._script("renew", [self._run_key(run_id, "lease")], [owner, int(ttl * 1000)]))

    def release_lease(self, run_id: str, owner: str) -> None:
        self._script("release", [self._run_key(run_id, "lease")], [owner])

    # -- visibility and retention ------------------------------------------

    def write_info(self, run_id: str, info: bytes) -> None:
        if self._one_node:
            self._pipelined(self._info_commands(run_id, info))
            return
        self._r.set(self._run_key(run_id, "info"), info)
        self._r.zadd(f"{self.prefix}:runs", {run_id: 0})

    def _info_commands(self, run_id: str, info: bytes) -> list[Command]:
        """``write_info`` in one round trip on a single node: in this order, as on a cluster, a listed run has its
        summary."""
        return [("SET", self._run_key(run_id, "info"), info), ("ZADD", f"{self.prefix}:runs", 0, run_id)]

    def read_info(self, run_id: str) -> bytes | None:
        value = self._command("GET", self._run_key(run_id, "info"))
        return _bytes(value) if value is not None else None

    def list_runs(self, *, after: str | None = None, limit: int = 100) -> list[str]:
        start = "-" if after is None else f"({after}"
        ids = self._r.zrangebylex(f"{self.prefix}:runs", start, "+", start=0, num=limit)
        return [_text(i) for i in ids]

    def delete_run(self, run_id: str) -> None:
        """The run's keys first, then its due entries, then its listing (one pipeline on a single node)."""
        keys = [self._run_key(run_id, part) for part in ("log", "inbox", "msgs", "lease", "info")]
        if self._one_node:
            queues = self._r.smembers(f"{self.prefix}:queues")
            pipe = self._r.pipeline(transaction=False)
            pipe.delete(*keys)
            for queue in queues:
                pipe.zrem(self._queue_key(_text(queue), "due"), run_id)
            pipe.zrem(f"{self.prefix}:runs", run_id)
            pipe.execute()
            return
        self._r.delete(*keys)
        for queue in self._r.smembers(f"{self.prefix}:queues"):
            self._r.zrem(self._queue_key(_text(queue), "due"), run_id)
        self._r.zrem(f"{self.prefix}:runs", run_id)

    # -- a turn's operations together ----------------------------------------

    def start_run(self, queue: str, run_id: str, info: bytes, message: Message) -> None:
        """One script on a single node (the summary, then the post)."""
        if not self._one_node:
            super().start_run(queue, run_id, info, message)
            return
        self._deliver(queue, run_id, message, info)

    def claim_due(
        self, queue: str, now: float, owner: str, ttl: float, *, limit: int, scan: int, skip: Collection[str] = ()
    ) -> list[str]:
        """One script on a single node; on a cluster the leases are in other slots than the due set."""
        if not self._one_node:
            return super().claim_due(queue, now, owner, ttl, limit=limit, scan=scan, skip=skip)
        keys, args = self._claim_call(queue, now, owner, Claim(ttl, limit, scan, skip))
        return self._claimed(self._script("claim", keys, args))

    def _claimed(self, peeks: list[list[Any]]) -> list[str]:
        """The runs a claim script leased; what it read of each is kept for their ``open_turn``."""
        if len(self._peeks) > _PEEKS_KEPT:
            self._peeks.clear()  # of claims whose runs were never opened
        runs = []
        for run, ids, bodies, version, info in peeks:
            run_id = _text(run)
            self._peeks[run_id] = (time.monotonic() + _PEEK_FOR, _opened(ids, bodies, version, [], info))
            runs.append(run_id)
        return runs

    def _claim_call(
        self, queue: str, now: float, owner: str, claim: Claim, recheck: str = ""
    ) -> tuple[list[str], list[str | float]]:
        """The claim script's keys and arguments; with a run ``recheck``, it first re-checks that run's inbox."""
        keys = [self._queue_key(queue, "due"), self._queue_key(queue, "posting")]
        inbox = self._run_key(recheck, "inbox") if recheck else ""
        run_prefix = f"{self.prefix}:{{"
        args: list[str | float] = [now, now - POSTING_GRACE, claim.scan, claim.limit, owner, run_prefix]
        return keys, [*args, int(claim.ttl * 1000), recheck, inbox, *claim.skip]

    def open_turn(self, run_id: str, after: int = 0) -> Opened:
        """One script: every key it reads is in the run's slot, on a cluster too.

        On a single node, a turn just claimed here needs none when its log has
        not grown past ``after``: the claim read the rest when it took the lease.
        """
        peeked = self._peeks.pop(run_id, None)
        if peeked is not None and peeked[0] > time.monotonic() and peeked[1].version == after:
            return peeked[1]
        keys = [self._run_key(run_id, part) for part in ("inbox", "msgs", "log", "info")]
        return _opened(*self._script("open", keys, [after]))

    def close_turn(
        self,
        queue: str,
        run_id: str,
        owner: str,
        *,
        info: bytes | None,
        ack: Sequence[str],
        due_at: float | None,
        recheck: bool,
        records: Sequence[bytes] = (),
        expected_version: int = 0,
        then_claim: Claim | None = None,
    ) -> list[str]:
        """One script on a single node (it reads lease keys it does not declare); the sum of the parts on a cluster."""
        if not self._one_node:
            return super().close_turn(
                queue,
                run_id,
                owner,
                info=info,
                ack=ack,
                due_at=due_at,
                recheck=recheck,
                records=records,
                expected_version=expected_version,
                then_claim=then_claim,
            )
        if due_at is not None:
            self._note_queue(queue)
        keys = [self._run_key(run_id, part) for part in ("log", "info")] + [f"{self.prefix}:runs"]
        keys += [self._run_key(run_id, "inbox"), self._run_key(run_id, "msgs")]
        keys += [self._queue_key(queue, "due"), self._queue_key(queue, "posting"), self._run_key(run_id, "lease")]
        claim = then_claim or Claim(0.0, 0, 0)
        _, claim_args = self._claim_call(queue, time.time(), owner, claim, recheck=run_id if recheck else "")
        head: list[Any] = [expected_version, len(records), "0" if info is None else "1", info or b"", run_id]
        head += ["" if due_at is None else due_at, owner, len(ack)]
        ok, result = self._script("close", keys, [*head, *records, *map(check_run_id, ack), *claim_args])
        if not ok:
            raise Conflict(f"run {run_id!r}: log is at version {result}, not {expected_version}")
        return self._claimed(result)

    # -- wake-up -------------------------------------------------------------

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block on the queues' channels: a post in any process wakes the worker within milliseconds.

        Each calling thread waits on a subscription of its own to the queues it
        names, so two workers sharing this backend each hear their own queues.
        """
        key = (threading.get_ident(), tuple(queues))
        pubsub = self._pubsubs.get(key)
        if pubsub is None:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
            pubsub.subscribe(*(f"{self.prefix}:wake:{queue}" for queue in queues))
            with self._pubsubs_lock:
                self._pubsubs[key] = pubsub
        return pubsub.get_message(timeout=timeout) is not None

    def close(self) -> None:
        with self._pubsubs_lock:
            pubsubs, self._pubsubs = list(self._pubsubs.values()), {}
        for pubsub in pubsubs:
            pubsub.close()
        if self._conns is not None:
            self._conns.close()
        self._r.close()
