"""What ``compact()`` keeps of a log: the last step of each key, and all that replay still needs.

Pure: records in, records out. The engine checks the result by replaying it
before the worker swaps it in (see ``Execution._live_compact``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

from substantial import events as ev


def compact_log(log: Sequence[ev.Record], handled: Collection[str], marker: ev.StepCompleted) -> list[ev.Record]:
    """``log`` without the superseded keyed steps, steps renumbered in order, ``marker`` last.

    Kept: the start, every step without a key, the last step of each
    (command, key), the events those steps consumed, events nobody consumed
    yet, every event of a name with a handler (handlers see them all on
    replay), and patch markers before kept steps. Dropped: superseded keyed
    steps with the events and cancels they consumed, and log lines (emitted
    already). ``marker`` is the compact step's record; its step is set here.
    """
    dropped = _superseded(log) | {r.step for r in log if r.command == marker.command}  # the marker supersedes
    consumed = {r.message_id for r in log if isinstance(r, ev.EventConsumed) and r.step in dropped}
    cancels = _cancels_of(log, dropped)
    kept_steps = sorted({r.step for r in log if isinstance(r, ev.STEP_RECORDS) and r.step not in dropped})
    number = {step: i for i, step in enumerate(kept_steps)}
    next_steps = _next_steps(log)
    kept: list[ev.Record] = []
    for position, record in enumerate(log):
        if isinstance(record, ev.STEP_RECORDS):
            if record.step in number:
                kept.append(dataclasses.replace(record, step=number[record.step]))
        elif isinstance(record, ev.EventReceived):
            if record.message_id not in consumed or record.name in handled:
                kept.append(record)
        elif isinstance(record, ev.CancelRequested):
            if position not in cancels:
                kept.append(record)
        elif isinstance(record, ev.PatchMarked):
            if next_steps[position] not in dropped:
                kept.append(record)
        elif not isinstance(record, ev.Logged):
            kept.append(record)
    kept.append(dataclasses.replace(marker, step=len(kept_steps)))
    return kept


def _superseded(log: Sequence[ev.Record]) -> set[int]:
    """Steps of keyed commands that a later step of the same (command, key) replaces."""
    last: dict[tuple[str, str], int] = {}
    for record in log:
        if isinstance(record, ev.STEP_RECORDS) and record.keyed:
            last[record.command, record.fingerprint] = record.step
    return {
        r.step for r in log if isinstance(r, ev.STEP_RECORDS) and r.keyed and last[r.command, r.fingerprint] != r.step
    }


def _cancels_of(log: Sequence[ev.Record], dropped: set[int]) -> set[int]:
    """Positions of cancel requests whose cancellation (the next StepCancelled) is dropped."""
    waiting: list[int] = []
    gone: set[int] = set()
    for position, record in enumerate(log):
        if isinstance(record, ev.CancelRequested):
            waiting.append(position)
        elif isinstance(record, ev.StepCancelled) and waiting:
            if record.step in dropped:
                gone.update(waiting)
            waiting = []
    return gone


def _next_steps(log: Sequence[ev.Record]) -> list[int | None]:
    """For each position, the step of the first step record after it (None at the end)."""
    found: list[int | None] = [None] * len(log)
    step: int | None = None
    for position in range(len(log) - 1, -1, -1):
        found[position] = step
        record = log[position]
        if isinstance(record, ev.STEP_RECORDS):
            step = record.step
    return found
