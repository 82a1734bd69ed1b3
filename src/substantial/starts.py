"""Posting a run's start, shared by the conductor (``start``) and the worker (``child``)."""

from __future__ import annotations

import time

from substantial import events as ev
from substantial.backends.base import Backend, Message
from substantial.runs import RunStatus, Summary

START_ID = "start"  # one start message per run: a repeated start is ingested once


def post_start(backend: Backend, run_id: str, started: ev.RunStarted, *, fresh: bool = False) -> Summary:
    """Write the run's summary unless it exists, then post its start; returns the summary.

    The start is posted even when the run exists, so a start that died
    between the two writes is completed; a run of another workflow under
    that id is left alone. A ``fresh`` id (one just made up) cannot exist:
    it is not looked up.
    """
    raw = None if fresh else backend.read_info(run_id)
    message = Message(START_ID, ev.encode_message(started))
    if raw is None:
        now = time.time()
        summary = Summary(started.workflow, started.queue, RunStatus.PENDING, now, now, parent=started.parent)
        backend.start_run(started.queue, run_id, summary.to_bytes(), message)
        return summary
    summary = Summary.from_bytes(raw)
    if summary.workflow == started.workflow:
        backend.post(started.queue, run_id, message)
    return summary


def is_finished(backend: Backend, run_id: str) -> bool:
    """Whether the run's summary says it has ended (False for a run with no summary)."""
    raw = backend.read_info(run_id)
    return raw is not None and Summary.from_bytes(raw).status.finished
