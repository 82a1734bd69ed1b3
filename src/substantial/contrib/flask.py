"""Flask integration: a conductor per app, a worker thread per serving process.

::

    from flask import Flask
    from substantial.contrib.flask import Substantial, conductor

    from myapp.flows import order

    substantial = Substantial(workflows=[order])


    def create_app() -> Flask:
        app = Flask(__name__)
        app.config.from_prefixed_env()  # FLASK_SUBSTANTIAL_URL=file:///var/lib/myapp/runs, ...
        substantial.init_app(app)

        @app.post("/orders/<order_id>")
        def create(order_id: str):
            run = conductor.start(order, order_id, 30, run_id=f"order-{order_id}")
            return {"run": run.id}, 202

        return app

Configuration, from ``app.config``:

- ``SUBSTANTIAL_URL``: the backend (default: ``$SUBSTANTIAL_URL``, else
  ``file:.substantial``); leave it unset when passing ``conductor=``.
- ``SUBSTANTIAL_THREADS``: turns the worker runs at once (default 8).
- ``SUBSTANTIAL_RUN_WORKER``: whether the processes that serve this app run a
  worker (default True); False when workers run apart (``flask substantial
  worker``, ``substantial worker``).
- ``SUBSTANTIAL_QUEUES``: the queues the worker serves (default: those of the
  registered workflows).
- ``SUBSTANTIAL_STOP_TIMEOUT``: seconds the worker lets its turns finish when
  the process exits (default 10).

The worker starts at the first request a process serves, never at import:
so not in the Werkzeug reloader's parent (only its child serves), and never
in a gunicorn ``--preload`` master, whose threads would not survive the fork
(each forked process starts its own at its first request). Call
``start_worker()`` to start it sooner, from a post-fork hook.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

try:
    import click
    from flask import Flask, current_app
    from flask.cli import with_appcontext
    from werkzeug.local import LocalProxy
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"substantial.contrib.flask needs Flask ({e}): pip install 'substantial[flask]'") from e

from substantial.conductor import Conductor
from substantial.contrib import FOREGROUND_STOP_TIMEOUT, STOP_TIMEOUT, EmbeddedWorker, log_to_stderr, run_in_foreground
from substantial.defaults import POLL_INTERVAL, THREADS
from substantial.worker import Worker
from substantial.workflow import Workflow

__all__ = ["EXTENSION", "Substantial", "conductor", "embedded_worker"]

#: The key of ``app.extensions`` under which each app keeps its ``EmbeddedWorker``.
EXTENSION = "substantial"

_CONFIG: dict[str, Any] = {
    "SUBSTANTIAL_URL": None,
    "SUBSTANTIAL_THREADS": THREADS,
    "SUBSTANTIAL_RUN_WORKER": True,
    "SUBSTANTIAL_QUEUES": None,
    "SUBSTANTIAL_STOP_TIMEOUT": STOP_TIMEOUT,
}


class Substantial:
    """The Flask extension: ``Substantial(app)``, or ``Substantial()`` then ``init_app(app)``.

    Each app gets its conductor (made from ``SUBSTANTIAL_URL``, or the one
    given as ``conductor=``) with ``workflows`` registered, kept with the
    app's worker in ``app.extensions["substantial"]`` (an
    ``EmbeddedWorker``); views reach it as ``substantial.contrib.flask.conductor``
    or ``ext.conductor``. ``flask substantial worker`` runs a worker in the
    foreground instead.
    """

    def __init__(
        self, app: Flask | None = None, *, conductor: Conductor | None = None, workflows: Iterable[Workflow] = ()
    ) -> None:
        self._conductor = conductor
        self._workflows = list(workflows)
        self._embedded: list[EmbeddedWorker] = []  # of the apps initialised so far
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Give ``app`` its conductor and worker, read from ``app.config``; start nothing yet."""
        if EXTENSION in app.extensions:
            raise RuntimeError(f"Substantial is already initialised on app {app.name!r}")
        for key, value in _CONFIG.items():
            app.config.setdefault(key, value)
        config = app.config
        if self._conductor is not None and config["SUBSTANTIAL_URL"]:
            raise ValueError(
                "SUBSTANTIAL_URL is set but Substantial() was given a conductor: the conductor's backend is "
                "used, so unset SUBSTANTIAL_URL or do not pass conductor="
            )
        conductor = self._conductor or Conductor(config["SUBSTANTIAL_URL"])
        conductor.register(*self._workflows)
        embedded = EmbeddedWorker(
            conductor,
            threads=int(config["SUBSTANTIAL_THREADS"]),
            queues=config["SUBSTANTIAL_QUEUES"],
            stop_timeout=float(config["SUBSTANTIAL_STOP_TIMEOUT"]),
        )
        app.extensions[EXTENSION] = embedded
        self._embedded.append(embedded)
        if _flag(config["SUBSTANTIAL_RUN_WORKER"], "SUBSTANTIAL_RUN_WORKER"):
            app.before_request(embedded.start_once)
        app.cli.add_command(_cli)

    def register(self, *workflows: Workflow) -> None:
        """Register workflows with the conductors of the apps initialised so far and of those to come."""
        self._workflows.extend(workflows)
        for embedded in self._embedded:
            embedded.conductor.register(*workflows)

    @property
    def conductor(self) -> Conductor:
        """The current app's conductor (needs an app context)."""
        return embedded_worker().conductor

    def start_worker(self, app: Flask | None = None) -> Worker:
        """Start the worker of ``app`` (default: the current app) in this process now; return it.

        For a server's post-fork hook (gunicorn's ``post_worker_init``) or a
        script. Never call it before the server forks.
        """
        return embedded_worker(app).start()

    def stop_worker(self, app: Flask | None = None, timeout: float | None = None) -> bool:
        """Stop this process's worker of ``app`` (default: the current app); requests do not restart it."""
        return embedded_worker(app).stop(timeout)


def embedded_worker(app: Flask | None = None) -> EmbeddedWorker:
    """The ``EmbeddedWorker`` (conductor and worker) of ``app``, by default the current app."""
    target = app if app is not None else current_app
    try:
        embedded = target.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError(f"Substantial is not initialised on app {target.name!r}: call init_app(app)") from None
    return cast(EmbeddedWorker, embedded)


def _current_conductor() -> Conductor:
    return embedded_worker().conductor


#: The current app's conductor, for views: ``conductor.start(order, ...)``.
conductor: Conductor = cast(Conductor, LocalProxy(_current_conductor))


def _flag(value: object, name: str) -> bool:
    """A boolean setting, which ``from_prefixed_env`` or a config file may give as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ValueError(f"{name} must be true or false, got {value!r}")


# -- flask substantial worker -------------------------------------------------------


@click.group("substantial", help="Durable workflows with Substantial.")
def _cli() -> None:
    pass


@_cli.command(
    "worker",
    help="Serve this app's runs until SIGINT or SIGTERM (a second signal exits at once). "
    "Set SUBSTANTIAL_RUN_WORKER=False for the web processes when workers run apart.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="turns run at once [SUBSTANTIAL_THREADS]")
@click.option("--queue", "queues", multiple=True, help="a queue to serve; repeat for several [SUBSTANTIAL_QUEUES]")
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=FOREGROUND_STOP_TIMEOUT,
    show_default=True,
    help="seconds to let turns in progress finish when stopping",
)
@click.option("--poll-interval", type=click.FloatRange(min=0), default=POLL_INTERVAL, show_default=True)
@with_appcontext
def _worker(threads: int | None, queues: tuple[str, ...], stop_timeout: float, poll_interval: float) -> None:
    embedded = embedded_worker()
    log_to_stderr()
    code = run_in_foreground(
        embedded.conductor,
        threads=threads or embedded.threads,
        queues=queues or embedded.queues,
        stop_timeout=stop_timeout,
        poll_interval=poll_interval,
    )
    raise SystemExit(code)
