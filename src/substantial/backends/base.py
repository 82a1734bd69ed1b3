"""The backend contract: a small blocking interface every store implements.

Correctness rests on one primitive, the conditional append: two workers may
both run a step, but only one append of its record wins. Everything else
(leases, the due index, wake-ups) saves work or latency.

Rules every backend keeps (see docs/backends.md):

- the due entry of a run outlives a turn: only the end of a turn whose records
  were appended moves or removes it;
- ``post`` writes the message, then marks the run due now; a turn that parks
  a run moves its due entry first, then looks at the inbox once more;
- messages carry ids, and the log records them, so ingesting twice is a no-op.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from substantial import defaults
from substantial.errors import InvalidRunId


@dataclass(frozen=True)
class Message:
    """A message posted to a run's inbox: an id unique within the run, and its body."""

    id: str
    body: bytes


@dataclass(frozen=True)
class Opened:
    """What a turn reads first (``Backend.open_turn``): the inbox, the log from a version on, the summary."""

    messages: list[Message]
    records: list[bytes]
    version: int
    info: bytes | None


@dataclass(frozen=True)
class Claim:
    """What ``close_turn`` leases once the turn is closed: as ``claim_due`` does, on the turn's queue."""

    ttl: float
    limit: int
    scan: int
    skip: Collection[str] = ()


class Backend(ABC):
    """Storage for run logs, inboxes, the due index, leases and run info.

    Times (``now``, ``due_at``) are seconds since the epoch; ``ttl`` is in
    seconds. Every method may be called from many threads at once.
    """

    #: True when ``wait_for_work`` wakes on posts made by other processes.
    wakes_across_processes = False

    # -- the log -----------------------------------------------------------

    @abstractmethod
    def read_log(self, run_id: str, after: int = 0) -> tuple[list[bytes], int]:
        """The records of the log from position ``after`` on, and the log's version.

        The version is the number of records in the log; an unknown run has
        an empty log at version 0.
        """

    @abstractmethod
    def append_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        """Append ``records`` atomically if the log is at ``expected_version``.

        Returns the new version. Raises ``Conflict`` (and appends nothing) if
        the log has another version.
        """

    @abstractmethod
    def replace_log(self, run_id: str, records: Sequence[bytes], expected_version: int) -> int:
        """Replace the whole log atomically if it is at ``expected_version``.

        Returns the new version (``len(records)``); raises ``Conflict`` if the
        log moved.
        """

    # -- the inbox -----------------------------------------------------------

    @abstractmethod
    def post(self, queue: str, run_id: str, message: Message) -> None:
        """Store ``message`` durably in the run's inbox, then mark the run due now on ``queue``.

        Posting an id that is already in the inbox keeps one copy.
        """

    @abstractmethod
    def take_inbox(self, run_id: str) -> list[Message]:
        """Every unacknowledged message of the run, oldest first; nothing is removed."""

    @abstractmethod
    def ack(self, run_id: str, ids: Iterable[str]) -> None:
        """Remove these messages from the inbox; unknown ids are ignored."""

    # -- the due index -----------------------------------------------------

    @abstractmethod
    def schedule(self, queue: str, run_id: str, due_at: float) -> None:
        """Set (or move) the run's due entry on ``queue`` to ``due_at``."""

    @abstractmethod
    def unschedule(self, queue: str, run_id: str) -> None:
        """Remove the run's due entry on ``queue``, if any."""

    @abstractmethod
    def due(self, queue: str, now: float, limit: int) -> list[str]:
        """Up to ``limit`` runs due at or before ``now``, earliest first; nothing is removed.

        Costs the same however many runs are parked in the future.
        """

    # -- leases --------------------------------------------------------------

    @abstractmethod
    def acquire_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        """Take the run's lease for ``ttl`` seconds if it is free or expired; False if held, even by ``owner``.

        Not re-entrant: of two claims of one worker that race for a run, one takes it.
        """

    @abstractmethod
    def renew_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        """Extend the lease if ``owner`` still holds it; False if it was lost."""

    @abstractmethod
    def release_lease(self, run_id: str, owner: str) -> None:
        """Free the lease if ``owner`` holds it; otherwise do nothing."""

    # -- visibility and retention ------------------------------------------

    @abstractmethod
    def write_info(self, run_id: str, info: bytes) -> None:
        """Store the run's summary (status, workflow, times), replacing the previous one."""

    @abstractmethod
    def read_info(self, run_id: str) -> bytes | None:
        """The run's summary, or None for an unknown run."""

    @abstractmethod
    def list_runs(self, *, after: str | None = None, limit: int = 100) -> list[str]:
        """Ids of runs that have a summary, in id order, starting after ``after``."""

    @abstractmethod
    def delete_run(self, run_id: str) -> None:
        """Remove everything stored for the run: log, inbox, summary, lease, due entries."""

    # -- a turn's operations together ----------------------------------------
    # Each is the primitives above in a fixed order; a store that can do them
    # in fewer round trips (one Lua script, one pipeline, one lock) overrides it.

    def start_run(self, queue: str, run_id: str, info: bytes, message: Message) -> None:
        """Write a new run's summary, then post its start message: ``write_info``, then ``post``."""
        self.write_info(run_id, info)
        self.post(queue, run_id, message)

    def claim_due(
        self, queue: str, now: float, owner: str, ttl: float, *, limit: int, scan: int, skip: Collection[str] = ()
    ) -> list[str]:
        """Lease up to ``limit`` of the first ``scan`` runs due at or before ``now``: ``due``, then ``acquire_lease``.

        Returns the runs leased, earliest first, each once. Runs in ``skip``
        (those the caller has in hand) and runs another owner holds are passed over.
        """
        claimed: list[str] = []
        for run_id in self.due(queue, now, scan):
            if len(claimed) >= limit:
                break
            if run_id in skip or run_id in claimed:  # a store may list a run twice while its due entry moves
                continue
            if self.acquire_lease(run_id, owner, ttl):
                claimed.append(run_id)
        return claimed

    def open_turn(self, run_id: str, after: int = 0) -> Opened:
        """The run's inbox (``take_inbox``), then its log from ``after`` (``read_log``), then its summary."""
        messages = self.take_inbox(run_id)
        records, version = self.read_log(run_id, after)
        return Opened(messages, records, version, self.read_info(run_id))

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
        """End a turn, in this order (the rules above hold in every interleaving).

        Append the turn's last ``records`` as ``append_log`` does (``Conflict``,
        and nothing else done, if the log moved); write the summary ``info``
        (unless None), acknowledge the messages
        ``ack``, move the run's due entry to ``due_at`` (None: remove it), and
        with ``recheck`` mark the run due now if its inbox is not empty; then
        release ``owner``'s lease. Last, with ``then_claim``, lease the next
        due runs of ``queue`` (``claim_due``) and return them: the thread that
        ran this turn goes on with the next without a poll.
        """
        if records:
            self.append_log(run_id, records, expected_version)
        if info is not None:
            self.write_info(run_id, info)
        if ack:
            self.ack(run_id, ack)
        if due_at is None:
            self.unschedule(queue, run_id)
        else:
            self.schedule(queue, run_id, due_at)
        if recheck and self.take_inbox(run_id):
            self.schedule(queue, run_id, time.time())
        self.release_lease(run_id, owner)
        return self._claim_next(queue, owner, then_claim)

    def _claim_next(self, queue: str, owner: str, claim: Claim | None) -> list[str]:
        """A close's claim of the queue's next due runs (``claim_due``); none without a ``Claim``."""
        if claim is None:
            return []
        return self.claim_due(queue, time.time(), owner, claim.ttl, limit=claim.limit, scan=claim.scan, skip=claim.skip)

    # -- wake-up -------------------------------------------------------------

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until work may be due on one of ``queues`` or ``timeout`` passes; True if woken.

        The default only sleeps; stores that can push (Redis) override it and
        set ``wakes_across_processes``.
        """
        time.sleep(timeout)
        return False

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and files; the backend is unusable afterwards."""


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")


def check_run_id(run_id: object) -> str:
    """Return ``run_id`` if every backend can store it safely; ``InvalidRunId`` otherwise.

    Allowed: 1 to 128 characters of letters, digits and ``. _ : @ -``, starting
    with a letter or digit; so no id can name a path or a key of another run.
    """
    if not isinstance(run_id, str) or len(run_id) > defaults.MAX_RUN_ID or not _RUN_ID.fullmatch(run_id):
        raise InvalidRunId(
            f"invalid run id {run_id!r}: use 1 to {defaults.MAX_RUN_ID} letters, digits and '._:@-', "
            "starting with a letter or digit"
        )
    return run_id
