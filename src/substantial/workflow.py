"""The ``@workflow`` decorator and the registry of workflows by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, overload

from substantial import defaults
from substantial.errors import UnknownWorkflow

WorkflowFn = Callable[..., Generator[Any, Any, Any]]


@dataclass(frozen=True)
class Workflow:
    """A registered workflow: its generator function, name and queue."""

    fn: WorkflowFn
    name: str
    queue: str = defaults.QUEUE

    def __call__(self, *args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        return self.fn(*args, **kwargs)


@overload
def workflow(name: WorkflowFn, *, queue: str = ...) -> Workflow: ...
@overload
def workflow(name: str | None = None, *, queue: str = ...) -> Callable[[WorkflowFn], Workflow]: ...


def workflow(
    name: str | WorkflowFn | None = None, *, queue: str = defaults.QUEUE
) -> Workflow | Callable[[WorkflowFn], Workflow]:
    """Declare a generator function as a workflow.

    Use as ``@workflow()``, ``@workflow("name", queue="q")`` or bare
    ``@workflow``. The name defaults to ``module.qualname``; it is what the
    log records, so keep it stable across deploys.
    """
    if callable(name):
        return workflow(queue=queue)(name)

    def wrap(fn: WorkflowFn) -> Workflow:
        if not inspect.isgeneratorfunction(fn):
            raise TypeError(
                f"{fn.__qualname__} is not a generator function: a workflow yields its "
                "commands, as in `value = yield c.save(f)`"
            )
        return Workflow(fn=fn, name=name or f"{fn.__module__}.{fn.__qualname__}", queue=queue)

    return wrap


class Registry:
    """Workflows by name, as one conductor knows them."""

    def __init__(self) -> None:
        self._by_name: dict[str, Workflow] = {}

    def add(self, workflows: Iterable[Workflow]) -> None:
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise TypeError(f"{wf!r} is not a workflow: decorate it with @workflow()")
            known = self._by_name.get(wf.name)
            if known is not None and known.fn is not wf.fn:
                raise ValueError(f"two different workflows are named {wf.name!r}: give one a name=")
            self._by_name[wf.name] = wf

    def get(self, name: str) -> Workflow:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownWorkflow(name) from None

    def resolve(self, wf: Workflow | str) -> Workflow:
        """The registered workflow for an object or a name; ``UnknownWorkflow`` if none."""
        found = self.get(wf if isinstance(wf, str) else wf.name)
        if not isinstance(wf, str) and found.fn is not wf.fn:
            raise UnknownWorkflow(wf.name)
        return found

    def queues(self) -> set[str]:
        return {wf.queue for wf in self._by_name.values()}
