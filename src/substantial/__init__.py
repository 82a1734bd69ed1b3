"""Substantial: brokerless durable execution for Python.

A workflow is a plain generator function; every result it depends on is
recorded in an append-only log, and the generator is replayed against it
after a crash, a restart or a deploy.
"""

from __future__ import annotations

from substantial.codec import Codec, JSONCodec, PickleCodec
from substantial.commands import Retry
from substantial.conductor import Conductor, RunHandle
from substantial.context import Context
from substantial.errors import (
    CodecError,
    CompactionError,
    Conflict,
    CorruptRecord,
    InvalidRunId,
    NonDeterminismError,
    RunCancelled,
    RunFailed,
    RunNotFound,
    RunReverted,
    StepFailed,
    StorageError,
    SubstantialError,
    UnknownWorkflow,
)
from substantial.events import Failure
from substantial.runs import HistoryEvent, RunInfo, RunStatus
from substantial.worker import Worker
from substantial.workflow import Workflow, workflow

__all__ = [
    "Codec",
    "CodecError",
    "CompactionError",
    "Conductor",
    "Conflict",
    "Context",
    "CorruptRecord",
    "Failure",
    "HistoryEvent",
    "InvalidRunId",
    "JSONCodec",
    "NonDeterminismError",
    "PickleCodec",
    "Retry",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "RunReverted",
    "RunStatus",
    "StepFailed",
    "StorageError",
    "SubstantialError",
    "UnknownWorkflow",
    "Worker",
    "Workflow",
    "workflow",
]
