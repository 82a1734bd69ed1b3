"""``manage.py substantial_worker``: a worker in a process of its own."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from substantial.contrib import FOREGROUND_STOP_TIMEOUT, log_to_stderr, run_in_foreground
from substantial.contrib.django import embedded_worker
from substantial.defaults import POLL_INTERVAL


class Command(BaseCommand):
    help = (
        "Serve the runs of the SUBSTANTIAL setting's conductor until SIGINT or SIGTERM: stop taking runs, let the "
        "turns in progress finish (up to --stop-timeout), exit. A second signal exits at once; nothing is lost "
        "either way, since an unfinished turn leaves its run due for the next worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--threads", type=_positive_int, default=None, help="turns run at once (default: SUBSTANTIAL THREADS)"
        )
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            metavar="QUEUE",
            help="a queue to serve; repeat for several (default: SUBSTANTIAL QUEUES, else the workflows' queues)",
        )
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=FOREGROUND_STOP_TIMEOUT,
            help="seconds to let turns in progress finish when stopping (default: %(default)s)",
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=POLL_INTERVAL,
            help="longest wait between looks at the due index (default: %(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        embedded = embedded_worker()
        log_to_stderr("DEBUG" if options["verbosity"] > 1 else "INFO")
        code = run_in_foreground(
            embedded.conductor,
            threads=options["threads"] or embedded.threads,
            queues=options["queues"] or embedded.queues,
            stop_timeout=options["stop_timeout"],
            poll_interval=options["poll_interval"],
        )
        if code:
            raise SystemExit(code)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
