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
cluster, one on a node) and ``delete_run`` (two on a node).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from substantial.backends.base import Backend, Message, check_run_id
from substantial.errors import Conflict

#: A posting marker older than this is taken for the trace of a poster that died.
POSTING_GRACE = 5.0

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
_DUE = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
for _, marker in ipairs(stale) do
  local run = string.match(marker, '^(.-)\\n')
  redis.call('ZADD', KEYS[1], ARGV[1], run)
  redis.call('ZREM', KEYS[2], marker)
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
"""
_ACQUIRE = """
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
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
                "take": _TAKE,
                "ack": _ACK,
                "mark_due": _MARK_DUE,
                "due": _DUE,
                "acquire": _ACQUIRE,
                "renew": _RENEW,
                "release": _RELEASE,
            }.items()
        }
        #: One node runs a pipeline's commands in the order sent; a cluster splits it between nodes.
        self._one_node = not isinstance(self._r, RedisCluster)
        self._known_queues: set[str] = set()
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

    def _pipelined(self, queue_commands: Callable[[Any], None]) -> list[Any]:
        """Send the commands ``queue_commands`` puts on a pipeline in one round trip (a single node only).

        Scripts go by ``EVALSHA`` without redis-py's ``SCRIPT EXISTS`` check
        before each pipeline; if the server lost them (a restart, a flush),
        they are loaded and the whole pipeline is sent again, so every caller
        must be safe to repeat.
        """
        results = self._send(queue_commands)
        if any(isinstance(r, NoScriptError) for r in results):
            loader = self._r.pipeline(transaction=False)
            for script in self._scripts.values():
                loader.script_load(script.script)
            loader.execute()
            results = self._send(queue_commands)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def _send(self, queue_commands: Callable[[Any], None]) -> list[Any]:
        pipe = self._r.pipeline(transaction=False)
        queue_commands(pipe)
        results: list[Any] = pipe.execute(raise_on_error=False)
        return results

    def _evalsha(self, pipe: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)

    # -- the log -----------------------------------------------------------

    def read_log(self, run_id: str, after: int = 0) -> tuple[list[bytes], int]:
        version, records = self._scripts["read"](keys=[self._run_key(run_id, "log")], args=[after])
        return list(records), int(version)

    def append_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        ok, version = self._scripts["append"](keys=[self._run_key(run_id, "log")], args=[expected_version, *records])
        if not ok:
            raise Conflict(f"run {run_id!r}: log is at version {version}, not {expected_version}")
        return int(version)

    def replace_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        ok, version = self._scripts["replace"](keys=[self._run_key(run_id, "log")], args=[expected_version, *records])
        if not ok:
            raise Conflict(f"run {run_id!r}: log is at version {version}, not {expected_version}")
        return int(version)

    # -- the inbox -----------------------------------------------------------

    def post(self, queue: str, run_id: str, message: Message) -> None:
        """Marker, message, then (atomically) due entry and marker removal, then a wake-up.

        The marker and the due entry live in the queue's slot, the message in
        the run's: a poster that dies after the marker leaves it, and a poll
        that finds an old marker marks its run due.
        """
        check_run_id(message.id)
        marker = f"{check_run_id(run_id)}\n{message.id}"
        posting, due = self._queue_key(queue, "posting"), self._queue_key(queue, "due")
        inbox, msgs = self._run_key(run_id, "inbox"), self._run_key(run_id, "msgs")
        channel = f"{self.prefix}:wake:{queue}"
        if self._one_node:

            def commands(pipe: Any) -> None:
                pipe.sadd(f"{self.prefix}:queues", queue)
                pipe.zadd(posting, {marker: time.time()})
                self._evalsha(pipe, "post", [inbox, msgs], [message.id, message.body])
                self._evalsha(pipe, "mark_due", [due, posting], [time.time(), run_id, marker])
                pipe.publish(channel, run_id)

            self._pipelined(commands)
            return
        self._note_queue(queue)
        self._r.zadd(posting, {marker: time.time()})
        self._scripts["post"](keys=[inbox, msgs], args=[message.id, message.body])
        self._scripts["mark_due"](keys=[due, posting], args=[time.time(), run_id, marker])
        self._r.publish(channel, run_id)

    def take_inbox(self, run_id: str) -> list[Message]:
        found = self._scripts["take"](keys=[self._run_key(run_id, "inbox"), self._run_key(run_id, "msgs")])
        if not found:
            return []
        ids, bodies = found
        return [Message(i.decode(), body) for i, body in zip(ids, bodies, strict=True) if body is not None]

    def ack(self, run_id: str, ids: Iterable[str]) -> None:
        ids = [check_run_id(i) for i in ids]
        if ids:
            self._scripts["ack"](keys=[self._run_key(run_id, "inbox"), self._run_key(run_id, "msgs")], args=ids)

    # -- the due index -----------------------------------------------------

    def schedule(self, queue: str, run_id: str, due_at: float) -> None:
        self._note_queue(queue)
        self._r.zadd(self._queue_key(queue, "due"), {check_run_id(run_id): due_at})

    def unschedule(self, queue: str, run_id: str) -> None:
        self._r.zrem(self._queue_key(queue, "due"), check_run_id(run_id))

    def due(self, queue: str, now: float, limit: int) -> list[str]:
        keys = [self._queue_key(queue, "due"), self._queue_key(queue, "posting")]
        runs = self._scripts["due"](keys=keys, args=[now, now - POSTING_GRACE, limit])
        return [r.decode() for r in runs]

    # -- leases --------------------------------------------------------------

    def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        return bool(self._scripts["acquire"](keys=[self._run_key(run_id, "lease")], args=[owner, int(ttl * 1000)]))

    def renew_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        return bool(self._scripts["renew"](keys=[self._run_key(run_id, "lease")], args=[owner, int(ttl * 1000)]))

    def release_lease(self, run_id: str, owner: str) -> None:
        self._scripts["release"](keys=[self._run_key(run_id, "lease")], args=[owner])

    # -- visibility and retention ------------------------------------------

    def write_info(self, run_id: str, info: bytes) -> None:
        key, runs = self._run_key(run_id, "info"), f"{self.prefix}:runs"
        if self._one_node:  # in this order, as on a cluster: a listed run has its summary
            pipe = self._r.pipeline(transaction=False)
            pipe.set(key, info)
            pipe.zadd(runs, {run_id: 0})
            pipe.execute()
            return
        self._r.set(key, info)
        self._r.zadd(runs, {run_id: 0})

    def read_info(self, run_id: str) -> bytes | None:
        value = self._r.get(self._run_key(run_id, "info"))
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

    # -- wake-up -------------------------------------------------------------

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block on the queues' channels: a post in any process wakes the worker within milliseconds.

        Each calling thread waits on a subscription of its own to the queues it
        names, so two workers sharing this backend each hear their own queues.
        """
        key = (threading.get_ident(), tuple(queues))
        pubsub = self._pubsubs.get(key)
        if pubsub is None:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            pubsub.subscribe(*(f"{self.prefix}:wake:{queue}" for queue in queues))
            with self._pubsubs_lock:
                self._pubsubs[key] = pubsub
        return pubsub.get_message(timeout=timeout) is not None

    def close(self) -> None:
        with self._pubsubs_lock:
            pubsubs, self._pubsubs = list(self._pubsubs.values()), {}
        for pubsub in pubsubs:
            pubsub.close()
        self._r.close()
