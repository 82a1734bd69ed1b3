"""The Django app: reads the ``SUBSTANTIAL`` setting and decides when this process runs a worker."""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Mapping, Sequence
from types import FrameType
from typing import Any, Literal

from django.apps import AppConfig
from django.core.signals import request_started, setting_changed
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV

from substantial.contrib import django as integration

When = Literal["now", "first request", "never"]


class SubstantialConfig(AppConfig):
    """``INSTALLED_APPS = [..., "substantial.contrib.django"]``."""

    name = "substantial.contrib.django"
    label = "substantial"
    verbose_name = "Substantial"

    def ready(self) -> None:
        opts = integration.options()  # a malformed setting fails at startup
        integration.resolve_workflows(opts.workflows)  # so does a wrong workflow path
        setting_changed.connect(_setting_changed, dispatch_uid="substantial.setting_changed")
        if not opts.run_worker:
            return
        command, argv = management_command()
        when = when_to_start(command, argv, os.environ, opts.worker_commands)
        if when == "now":
            integration.start_worker()
        elif when == "first request":
            request_started.connect(_start_on_request, dispatch_uid="substantial.request_started")


def when_to_start(
    command: str | None, argv: Sequence[str], environ: Mapping[str, str], worker_commands: Collection[str]
) -> When:
    """When a process started so runs its worker.

    ``command`` is the management command it runs, None under a WSGI or ASGI
    server. A server may fork after ``ready()`` (gunicorn ``--preload``), so
    there the worker waits for the process's first request. Under
    ``runserver``'s autoreloader, only the child serves.
    """
    if command is None:
        return "first request"
    if command not in worker_commands:
        return "never"
    if command == "runserver" and "--noreload" not in argv and environ.get(DJANGO_AUTORELOAD_ENV) != "true":
        return "never"  # the autoreloader's parent: it only restarts its child
    return "now"


def management_command() -> tuple[str | None, list[str]]:
    """The management command this process runs and its argv, or (None, []) when it runs none.

    Found on the call stack: ``django.setup()``, hence ``ready()``, runs
    inside ``ManagementUtility.execute`` for commands, and outside it under a
    server.
    """
    from django.core.management import ManagementUtility

    code = ManagementUtility.execute.__code__
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            argv = list(getattr(frame.f_locals.get("self"), "argv", []))
            return (argv[1] if len(argv) > 1 else "help"), argv
        frame = frame.f_back
    return None, []


def _start_on_request(sender: object, **kwargs: Any) -> None:
    if integration.options().run_worker:  # read again: tests change the setting
        integration.embedded_worker().start_once()


def _setting_changed(sender: object, *, setting: str, **kwargs: Any) -> None:
    if setting == "SUBSTANTIAL":
        integration._reset()
