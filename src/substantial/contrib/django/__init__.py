"""Django integration: add ``"substantial.contrib.django"`` to ``INSTALLED_APPS``.

Configured by the ``SUBSTANTIAL`` setting, a dict (every key optional)::

    SUBSTANTIAL = {
        "URL": "file:///var/lib/myapp/runs",  # default: $SUBSTANTIAL_URL, else file:.substantial
        "WORKFLOWS": ["orders.workflows"],    # workflows, or modules whose workflows are all registered
        "THREADS": 8,                         # turns the worker runs at once
        "RUN_WORKER": True,                   # whether web processes run a worker thread
        "WORKER_COMMANDS": ["runserver"],     # management commands whose process runs one too
        "QUEUES": None,                       # default: the queues of the registered workflows
        "STOP_TIMEOUT": 10,                   # seconds to let turns finish when the process exits
    }

``"CONDUCTOR": "myapp.flows.conductor"`` uses a ``Conductor`` of yours (the
one ``substantial worker myapp.flows:conductor`` serves) instead of ``URL``.

Views use ``get_conductor()``. Under a WSGI or ASGI server the worker starts
at the first request a process serves, never in ``AppConfig.ready()``, which
gunicorn ``--preload`` runs in its master before forking (threads do not
survive a fork); under ``runserver`` (in the autoreloader's child) it starts
in ``ready()``; under any other management command (``migrate``, ``shell``,
``test``...) it does not start unless the command is in ``WORKER_COMMANDS``.
``manage.py substantial_worker`` runs a worker in a process of its own.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

try:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.utils.module_loading import import_string
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"substantial.contrib.django needs Django ({e}): pip install 'substantial[django]'") from e

from substantial.conductor import Conductor
from substantial.contrib import STOP_TIMEOUT, EmbeddedWorker
from substantial.defaults import THREADS
from substantial.worker import Worker
from substantial.workflow import Workflow

__all__ = ["Options", "embedded_worker", "get_conductor", "options", "start_worker", "stop_worker"]

_DEFAULTS: dict[str, Any] = {
    "URL": None,
    "CONDUCTOR": None,
    "WORKFLOWS": [],
    "THREADS": THREADS,
    "RUN_WORKER": True,
    "WORKER_COMMANDS": ["runserver"],
    "QUEUES": None,
    "STOP_TIMEOUT": STOP_TIMEOUT,
}


@dataclass(frozen=True)
class Options:
    """The ``SUBSTANTIAL`` setting, checked, with its defaults."""

    url: str | None
    conductor: str | None
    workflows: tuple[str, ...]
    threads: int
    run_worker: bool
    worker_commands: frozenset[str]
    queues: tuple[str, ...] | None
    stop_timeout: float


def options() -> Options:
    """The ``SUBSTANTIAL`` setting; ``ImproperlyConfigured`` if it is malformed."""
    given = getattr(settings, "SUBSTANTIAL", {})
    if not isinstance(given, dict):
        raise ImproperlyConfigured(f"SUBSTANTIAL must be a dict, got {type(given).__name__}")
    unknown = sorted(set(given) - set(_DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(f"SUBSTANTIAL has unknown keys {unknown}: use {sorted(_DEFAULTS)}")
    merged = {**_DEFAULTS, **given}
    if merged["URL"] and merged["CONDUCTOR"]:
        raise ImproperlyConfigured("SUBSTANTIAL sets both URL and CONDUCTOR: the conductor has its own backend")
    if isinstance(merged["WORKFLOWS"], str):
        merged["WORKFLOWS"] = [merged["WORKFLOWS"]]
    try:
        return Options(
            url=merged["URL"] or None,
            conductor=merged["CONDUCTOR"] or None,
            workflows=tuple(_text(w, "WORKFLOWS") for w in merged["WORKFLOWS"]),
            threads=_positive(merged["THREADS"]),
            run_worker=bool(merged["RUN_WORKER"]),
            worker_commands=frozenset(_text(c, "WORKER_COMMANDS") for c in merged["WORKER_COMMANDS"]),
            queues=None if merged["QUEUES"] is None else tuple(_text(q, "QUEUES") for q in merged["QUEUES"]),
            stop_timeout=float(merged["STOP_TIMEOUT"]),
        )
    except (TypeError, ValueError) as e:
        raise ImproperlyConfigured(f"SUBSTANTIAL: {e}") from None


def _text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{key} holds {value!r}, not a string")
    return value


def _positive(value: object) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"THREADS must be an integer of at least 1, got {value!r}")
    return value


# -- the process's conductor and worker ---------------------------------------------

_lock = threading.RLock()  # reentrant: a workflow module may call get_conductor() while it is imported
_embedded: EmbeddedWorker | None = None


def embedded_worker() -> EmbeddedWorker:
    """The conductor and worker of this process, made from the settings on first use."""
    global _embedded
    embedded = _embedded
    if embedded is not None:
        return embedded
    with _lock:
        if _embedded is None:
            opts = options()
            conductor = import_string(opts.conductor) if opts.conductor else Conductor(opts.url)
            if not isinstance(conductor, Conductor):
                raise ImproperlyConfigured(f"SUBSTANTIAL CONDUCTOR {opts.conductor!r} is not a Conductor")
            _embedded = EmbeddedWorker(
                conductor, threads=opts.threads, queues=opts.queues, stop_timeout=opts.stop_timeout
            )
            try:
                conductor.register(*resolve_workflows(opts.workflows))
            except BaseException:
                _embedded = None
                raise
        return _embedded


def resolve_workflows(paths: Iterable[str]) -> list[Workflow]:
    """The workflows named by dotted paths: a workflow, or a module whose workflows all count."""
    found: list[Workflow] = []
    for path in paths:
        try:
            target = _import(path)
        except ImportError as e:
            raise ImproperlyConfigured(f"SUBSTANTIAL WORKFLOWS: cannot import {path!r}: {e}") from e
        if isinstance(target, Workflow):
            found.append(target)
        elif isinstance(target, ModuleType):
            found.extend(v for v in vars(target).values() if isinstance(v, Workflow))
        else:
            raise ImproperlyConfigured(f"SUBSTANTIAL WORKFLOWS: {path!r} is a {type(target).__name__}, not a workflow")
    return found


def _import(path: str) -> object:
    """A module, or an attribute of one (``module.name``)."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name != path:
            raise  # a module that exists imports something missing
    return import_string(path)


def get_conductor() -> Conductor:
    """The conductor of this process, for views: ``get_conductor().start(order, ...)``."""
    return embedded_worker().conductor


def start_worker() -> Worker:
    """Start this process's worker now, unless it runs; return it.

    For a server's post-fork hook (gunicorn's ``post_worker_init``) or the end
    of ``wsgi.py`` under a server that does not fork after loading it. Never
    call it in a process that forks afterwards.
    """
    return embedded_worker().start()


def stop_worker(timeout: float | None = None) -> bool:
    """Stop this process's worker (default timeout: ``STOP_TIMEOUT``); requests do not restart it."""
    return embedded_worker().stop(timeout)


def _reset() -> None:
    """Stop the worker and forget the conductor: the next use reads the settings again."""
    global _embedded
    with _lock:
        embedded, _embedded = _embedded, None
    if embedded is not None:
        embedded.stop()
