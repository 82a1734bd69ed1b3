"""The error types of Substantial.

Every error derives from one root::

    SubstantialError
    ├── NonDeterminismError   the code no longer yields what the log recorded
    ├── StepFailed            a save failed for good (raised inside the workflow)
    ├── RunFailed             a run ended failed (raised by RunHandle.result)
    ├── RunCancelled          a run was cancelled (inside the workflow and by result)
    ├── RunReverted           a run ended by c.revert() (raised by RunHandle.result)
    ├── UnknownWorkflow       no workflow registered under that name
    ├── RunNotFound           no run with that id
    ├── InvalidRunId          a run id that is not allowed
    ├── CodecError            a value the codec cannot encode or decode
    ├── Conflict              the log moved under a conditional write
    ├── CorruptRecord         a stored record that cannot be decoded
    └── StorageError          the store failed for good (S3Error for S3)
"""

from __future__ import annotations


class SubstantialError(Exception):
    """Root of every error Substantial raises."""


class NonDeterminismError(SubstantialError):
    """The workflow code yielded something other than what its log recorded.

    The run is left untouched and retried with backoff, so deploying code that
    yields the recorded commands again resumes it.
    """

    def __init__(self, run_id: str, step: int, recorded: str, yielded: str, cause: str) -> None:
        self.run_id = run_id
        self.step = step
        self.recorded = recorded
        self.yielded = yielded
        super().__init__(
            f"run {run_id!r}, step {step}: the log holds {recorded} but the code "
            f"{yielded}. {cause} Deploy the previous code until runs already past "
            "this point have finished; the run resumes once the code matches its log."
        )


class StepFailed(SubstantialError):
    """A save failed for good; raised inside the workflow at its ``yield``.

    Keeps the original error's type name, message and traceback text, since
    the original exception object does not survive a replay.
    """

    def __init__(self, error_type: str, message: str, traceback: str, attempts: int = 1) -> None:
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        self.attempts = attempts
        super().__init__(f"{error_type}: {message} (after {attempts} attempt(s))")


class RunFailed(SubstantialError):
    """The run ended with an uncaught error; raised by ``RunHandle.result``."""

    def __init__(self, run_id: str, error_type: str, message: str, traceback: str) -> None:
        self.run_id = run_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        super().__init__(f"run {run_id!r} failed: {error_type}: {message}")


class RunCancelled(SubstantialError):
    """The run was cancelled.

    Raised inside the workflow at the next ``yield`` after ``cancel()``, so
    ``finally`` blocks run; raised by ``RunHandle.result`` once it ended so.
    """

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__(f"run cancelled: {reason}" if reason else "run cancelled")


class RunReverted(SubstantialError):
    """The run called ``c.revert()``: its compensations ran and it has no result."""

    def __init__(self, run_id: str, reason: str = "") -> None:
        self.run_id = run_id
        self.reason = reason
        because = f" ({reason})" if reason else ""
        super().__init__(f"run {run_id!r} was reverted{because}: its compensations ran, it has no result")


class UnknownWorkflow(SubstantialError):
    """No workflow is registered under this name in this conductor."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"no workflow named {name!r} is registered: call conductor.register() with it "
            "in every process that starts or runs it"
        )


class RunNotFound(SubstantialError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}: check the id, or start the run first")


class InvalidRunId(SubstantialError):
    """A run id that backends cannot store safely."""


class CodecError(SubstantialError):
    """A value the codec cannot encode or decode."""


class Conflict(SubstantialError):
    """A conditional write lost: the log moved since the version it named."""


class CorruptRecord(SubstantialError):
    """A stored record cannot be decoded; only its own run is affected."""


class StorageError(SubstantialError):
    """A request to the store failed in a way retrying cannot fix, or retries ran out."""


class CompactionError(SubstantialError):
    """``compact()`` would leave a log that replay cannot follow; the log was kept whole.

    Compaction keeps the last step of each key and every step without one, so
    a replay must meet them in that order: give every command inside the
    loop a key (and keep state in their results), or compact outside it.
    """
