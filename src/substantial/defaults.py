"""Tunables in one place; each is overridable by keyword argument."""

from __future__ import annotations

#: Pool threads a worker runs turns on.
THREADS = 8
#: Seconds a lease lasts unless renewed; renewed every third of it during a turn.
LEASE_TTL = 30.0
#: Seconds a turn runs before its run's status shows ``running`` (shorter turns never write it).
RUNNING_AFTER = 0.25
#: Suspended generators a worker keeps (LRU); 0 turns the sticky cache off.
CACHE_SIZE = 1024
#: Longest idle wait of the poller, in seconds, when nothing wakes it sooner.
POLL_INTERVAL = 0.5
#: Due runs the poller asks for at most in one call.
DUE_BATCH = 64
#: Ends of runs a Conductor's own workers finished that it keeps (LRU), so that ``result()`` reads no log,
#: and the largest kept (its result's encoded bytes).
ENDS_KEPT = 4096
ENDS_KEPT_BYTES = 64 * 1024
#: Backoff of a turn that could not run (non-determinism, unknown workflow).
TURN_RETRY_INITIAL = 1.0
TURN_RETRY_MAX = 60.0
#: Backend of a Conductor given none, when $SUBSTANTIAL_URL is not set.
URL = "file:.substantial"
#: Queue of workflows that name none.
QUEUE = "default"
#: Longest run id, in characters.
MAX_RUN_ID = 128
