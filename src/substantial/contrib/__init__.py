"""Integrations: a worker embedded in a web process, or run in the foreground by a command.

``substantial.contrib.flask`` (the ``flask`` extra) and
``substantial.contrib.django`` (the ``django`` extra) build on the two
helpers here, which import no framework: importing ``substantial`` or
``substantial.contrib`` imports neither Flask nor Django.

- ``EmbeddedWorker``: at most one worker per process for a conductor,
  started where the process serves (never before a fork), stopped at exit.
- ``run_in_foreground``: a worker that serves until SIGINT or SIGTERM, for
  ``flask substantial worker`` and ``manage.py substantial_worker``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from substantial import defaults
from substantial.conductor import Conductor
from substantial.serve import STOP_TIMEOUT as SERVE_STOP_TIMEOUT
from substantial.serve import serve as run_in_foreground
from substantial.worker import Worker

__all__ = ["FOREGROUND_STOP_TIMEOUT", "STOP_TIMEOUT", "EmbeddedWorker", "log_to_stderr", "run_in_foreground"]

log = logging.getLogger("substantial.worker")

#: Seconds an embedded worker lets its turns finish when its process exits.
#: Below gunicorn's ``graceful_timeout`` (30 s), so the server does not kill it first.
STOP_TIMEOUT = 10.0
#: Seconds a foreground worker lets its turns finish once told to stop (as ``substantial worker``).
FOREGROUND_STOP_TIMEOUT = SERVE_STOP_TIMEOUT


class EmbeddedWorker:
    """At most one worker per process for ``conductor``, started after any fork.

    Web servers often import the app in one process and fork the processes
    that serve it (gunicorn ``--preload``, uWSGI without ``lazy-apps``), and
    a thread does not survive a fork. So nothing starts when this object is
    made: ``start_once()``, called on every request, starts the worker the
    first time the process serves, and again in any process forked from it;
    ``start()`` starts it now (from a post-fork hook, a script). The worker
    is stopped when the process exits, waiting at most ``stop_timeout``
    seconds for the turns in progress; unfinished turns leave their runs due,
    so nothing is lost.
    """

    def __init__(
        self,
        conductor: Conductor,
        *,
        threads: int = defaults.THREADS,
        queues: Iterable[str] | None = None,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.conductor = conductor
        self.threads = threads
        if isinstance(queues, str):
            queues = [queues]  # one queue named in a config file
        self.queues = sorted(queues) if queues is not None else None
        self.stop_timeout = stop_timeout
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        # The process whose life this object has decided: a worker was started
        # or stopped in it. Any other pid (0, or a parent's after a fork) means
        # start_once() has to start one.
        self._pid = 0
        _install_process_hooks(self)

    def __repr__(self) -> str:
        state = "running" if self.worker is not None else "not running"
        return f"<EmbeddedWorker {state} in process {os.getpid()}, {self.threads} thread(s)>"

    @property
    def worker(self) -> Worker | None:
        """The worker running in this process, if any."""
        return self._worker if self._pid == os.getpid() else None

    def start_once(self) -> None:
        """Start the worker unless this process already started or stopped one.

        Cheap when it did: meant to be called on every request.
        """
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._start()

    def start(self) -> Worker:
        """Start the worker in this process now, unless it runs already; return it."""
        with self._lock:
            if self.worker is None:
                self._start()
            assert self._worker is not None
            return self._worker

    def stop(self, timeout: float | None = None) -> bool:
        """Stop this process's worker, waiting up to ``timeout`` (default ``stop_timeout``) for its turns.

        ``start_once()`` does not start it again in this process; ``start()``
        does. Returns True if every turn finished (or no worker ran).
        """
        with self._lock:
            worker = self.worker
            self._worker = None
            self._pid = os.getpid()
            _running.discard(self)
        if worker is None:
            return True
        finished = worker.stop(self.stop_timeout if timeout is None else timeout)
        if finished:
            log.info("embedded worker %s stopped", worker.owner)
        else:
            log.warning("embedded worker %s stopped with turns still running: their runs stay due", worker.owner)
        return finished

    def _start(self) -> None:
        """Start a worker; the lock is held."""
        pid = os.getpid()
        if self._worker is not None and self._pid != pid:
            log.warning(
                "process %d was forked from process %d while its worker ran; the worker's threads did not "
                "survive the fork: starting one here. Start workers after the fork (see docs/integrations.md)",
                pid,
                self._pid,
            )
        self._worker = self.conductor.run(self.threads, queues=self.queues)
        self._pid = pid
        _running.add(self)
        log.info(
            "embedded worker %s serving queue(s) %s with %d thread(s)",
            self._worker.owner,
            ", ".join(self._worker.queues),
            self.threads,
        )

    def _after_fork_in_child(self) -> None:
        # Another thread of the parent may have held the lock at the fork: it
        # would stay locked forever in the child.
        self._lock = threading.Lock()


# -- process hooks ---------------------------------------------------------------

_instances: weakref.WeakSet[EmbeddedWorker] = weakref.WeakSet()
_running: set[EmbeddedWorker] = set()  # strong: a running worker is stopped at exit even if its app is gone
_hooks_installed = False
_hooks_lock = threading.Lock()


def _install_process_hooks(embedded: EmbeddedWorker) -> None:
    """Once per interpreter: renew locks after a fork, stop the running workers at exit."""
    global _hooks_installed
    with _hooks_lock:
        _instances.add(embedded)
        if _hooks_installed:
            return
        _hooks_installed = True
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    # CPython joins the pool threads of every ThreadPoolExecutor *before* it
    # runs atexit handlers; a hook registered here runs before that join, so
    # the stop timeout bounds the wait. Fall back to atexit elsewhere.
    register: Callable[[Callable[[], None]], object] = getattr(threading, "_register_atexit", atexit.register)
    with contextlib.suppress(RuntimeError):  # the interpreter is already shutting down
        register(_stop_running)


def _after_fork_in_child() -> None:
    for embedded in list(_instances):
        embedded._after_fork_in_child()


def _stop_running() -> None:
    """Stop every embedded worker of this process, all within the longest stop timeout."""
    running = [e for e in list(_running) if e.worker is not None]
    _running.clear()
    if not running:
        return
    deadline = time.monotonic() + max(e.stop_timeout for e in running)
    for embedded in running:
        try:
            embedded.stop(timeout=max(0.0, min(embedded.stop_timeout, deadline - time.monotonic())))
        except Exception:
            log.exception("stopping an embedded worker at exit failed")


# -- a worker in the foreground -----------------------------------------------------


def log_to_stderr(level: int | str = logging.INFO) -> None:
    """Show Substantial's logs on stderr at ``level``, unless logging is configured already."""
    logger = logging.getLogger("substantial")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
