"""The Django app and the Django example (examples/django_project), through Django's test client."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from contrib_support import EXAMPLES, Processes, example_env, wait_until

from substantial import Conductor
from substantial.backends import FSBackend, MemoryBackend

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402

PROJECT = EXAMPLES / "django_project"
#: A conductor of the test's own, named by SUBSTANTIAL["CONDUCTOR"].
OWN = Conductor(MemoryBackend())


@pytest.fixture(scope="module", autouse=True)
def django_setup() -> Iterator[None]:
    """Settings made here (Django allows it once per process); the URLs and workflows are the example's."""
    sys.path.insert(0, str(PROJECT))
    if not settings.configured:
        settings.configure(
            SECRET_KEY="test",
            ALLOWED_HOSTS=["testserver"],
            INSTALLED_APPS=["substantial.contrib.django"],
            MIDDLEWARE=[],
            ROOT_URLCONF="shop.urls",
            DATABASES={},
            USE_TZ=True,
            SUBSTANTIAL={"URL": "memory://", "WORKFLOWS": ["shop.workflows"]},
        )
        django.setup()
    yield
    sys.path.remove(str(PROJECT))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """SUBSTANTIAL pointing at a fresh store; the worker is stopped when the test ends."""
    from django.test import override_settings

    options = {"URL": f"file:{tmp_path / 'store'}", "WORKFLOWS": ["shop.workflows"], "THREADS": 2}
    with override_settings(SUBSTANTIAL=options):
        yield options


def client() -> Any:
    from django.test import Client

    return Client()


def order_state(c: Any, order_id: str) -> dict[str, Any]:
    response = c.get(f"/orders/{order_id}")
    assert response.status_code == 200, response.content
    state: dict[str, Any] = response.json()
    return state


def waiting_for_approval(c: Any, order_id: str) -> bool:
    state = order_state(c, order_id)
    return state["status"] == "waiting" and state["waiting_for"] == "receive 'approval'"


def post(c: Any, path: str, payload: Any) -> Any:
    return c.post(path, payload, content_type="application/json")


def test_a_request_starts_an_order_and_another_delivers_its_approval(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from substantial.contrib.django import embedded_worker

    c = client()
    created = post(c, "/orders", {"order_id": "o-1", "amount": 30})
    assert created.status_code == 202, created.content
    assert created.json()["run_id"] == "order-o-1"
    assert embedded_worker().worker is not None  # started by the first request
    wait_until(lambda: waiting_for_approval(c, "o-1"), what="the order to wait for its approval")

    sent = post(c, "/orders/o-1/approval", {"approved": True})
    assert sent.status_code == 202, sent.content
    done = wait_until(lambda: (s := order_state(c, "o-1"))["status"] == "completed" and s, what="completion")
    assert done["result"] == {"order": "o-1", "approved": True, "charge": "charge-o-1-30", "shipment": "shipment-o-1"}
    assert post(c, "/orders/o-1/approval", {"approved": True}).status_code == 409
    assert c.get("/orders/nope").status_code == 404
    assert post(c, "/orders", {"order_id": "o-2"}).status_code == 400
    out = capsys.readouterr().out
    assert out.count("step charge: order o-1") == 1
    assert out.count("step ship: order o-1") == 1


def test_a_waiting_run_resumes_when_the_worker_starts_again(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from django.test import override_settings

    from substantial.contrib.django import embedded_worker, stop_worker

    c = client()
    post(c, "/orders", {"order_id": "o-1", "amount": 30})
    wait_until(lambda: waiting_for_approval(c, "o-1"), what="the order to wait for its approval")
    assert stop_worker(timeout=10)
    assert post(c, "/orders/o-1/approval", {"approved": True}).status_code == 202
    assert embedded_worker().worker is None  # a request does not restart a stopped worker
    assert order_state(c, "o-1")["status"] == "waiting"  # no worker anywhere: the approval waits in the store

    with override_settings(SUBSTANTIAL=dict(store)):  # as a restart: a new conductor, its worker not started
        assert embedded_worker().worker is None
        done = wait_until(lambda: (s := order_state(c, "o-1"))["status"] == "completed" and s, what="completion")
        assert done["result"]["shipment"] == "shipment-o-1"
    assert capsys.readouterr().out.count("step charge: order o-1") == 1  # recorded: not run again


def test_start_worker_restarts_a_stopped_worker(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from substantial.contrib.django import get_conductor, start_worker, stop_worker

    c = client()
    post(c, "/orders", {"order_id": "o-1", "amount": 30})
    wait_until(lambda: waiting_for_approval(c, "o-1"), what="the order to wait for its approval")
    assert stop_worker(timeout=10)
    get_conductor().get("order-o-1").send("approval", False)
    worker = start_worker()
    assert start_worker() is worker
    done = wait_until(lambda: (s := order_state(c, "o-1"))["status"] == "reverted" and s, what="the revert")
    assert done["result"] is None
    assert capsys.readouterr().out.count("step refund: order o-1") == 1  # the charge's compensation


def test_run_worker_false_keeps_the_worker_out_of_the_web_process(store: dict[str, Any]) -> None:
    from django.test import override_settings

    from substantial.contrib.django import embedded_worker

    with override_settings(SUBSTANTIAL={**store, "RUN_WORKER": False}):
        c = client()
        assert post(c, "/orders", {"order_id": "o-1", "amount": 30}).status_code == 202
        assert embedded_worker().worker is None
        assert order_state(c, "o-1")["status"] == "pending"


@pytest.mark.parametrize(
    ("command", "argv", "environ", "expected"),
    [
        (None, [], {}, "first request"),  # a WSGI or ASGI server: it may fork after ready()
        ("runserver", ["manage.py", "runserver"], {}, "never"),  # the autoreloader's parent
        ("runserver", ["manage.py", "runserver"], {"RUN_MAIN": "true"}, "now"),  # its child, which serves
        ("runserver", ["manage.py", "runserver", "--noreload"], {}, "now"),
        ("migrate", ["manage.py", "migrate"], {}, "never"),
        ("makemigrations", ["manage.py", "makemigrations"], {}, "never"),
        ("shell", ["manage.py", "shell"], {}, "never"),
        ("test", ["manage.py", "test"], {}, "never"),
        ("substantial_worker", ["manage.py", "substantial_worker"], {}, "never"),  # it runs its own
    ],
)
def test_when_the_worker_starts(command: str | None, argv: list[str], environ: dict[str, str], expected: str) -> None:
    from substantial.contrib.django.apps import when_to_start

    assert when_to_start(command, argv, environ, {"runserver"}) == expected


def test_a_command_in_worker_commands_starts_it_in_ready() -> None:
    from substantial.contrib.django.apps import when_to_start

    assert when_to_start("test", ["manage.py", "test"], {}, {"runserver", "test"}) == "now"


def test_no_management_command_runs_under_pytest() -> None:
    from substantial.contrib.django.apps import management_command

    assert management_command() == (None, [])


def test_a_management_command_starts_no_worker(tmp_path: Path) -> None:
    code = (
        "import threading; from substantial.contrib.django.apps import management_command; "
        "print(management_command()[0], sorted(t.name for t in threading.enumerate()))"
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=PROJECT,
        env=example_env(tmp_path / "store", tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "shell ['MainThread']"


def test_settings_are_checked(store: dict[str, Any]) -> None:
    from django.test import override_settings

    from substantial.contrib.django import get_conductor

    bad = [
        ({"UNKNOWN": 1}, "unknown keys"),
        ({"URL": "memory://", "CONDUCTOR": "x.y"}, "both URL and CONDUCTOR"),
        ({"THREADS": 0}, "THREADS"),
        ({"WORKFLOWS": ["shop.nowhere"]}, "cannot import"),
        ({"WORKFLOWS": ["shop.workflows.charge_card"]}, "not a workflow"),
        ({"CONDUCTOR": "shop.workflows.order"}, "not a Conductor"),
    ]
    for options, message in bad:
        with override_settings(SUBSTANTIAL=options), pytest.raises(ImproperlyConfigured, match=message):
            get_conductor()
    with override_settings(SUBSTANTIAL={"CONDUCTOR": f"{__name__}.OWN", "WORKFLOWS": "shop.workflows.order"}):
        assert get_conductor() is OWN
        assert OWN.registry.get("shop.workflows.order")


def test_substantial_worker_serves_runs_until_sigterm(processes: Processes, tmp_path: Path) -> None:
    from shop.workflows import order

    store, log = tmp_path / "store", tmp_path / "worker.log"
    command = [sys.executable, "manage.py", "substantial_worker", "--poll-interval", "0.05", "--threads", "2"]
    worker = processes.start(command, log=log, cwd=PROJECT, env=example_env(store, tmp_path))
    wait_until(lambda: "serving queue" in log.read_text(), what="the worker to start")
    backend = FSBackend(store)
    try:
        here = Conductor(backend)  # starts and signals runs, runs no worker
        here.register(order)
        run = here.start(order, "o-9", 5, run_id="order-o-9")
        wait_until(lambda: run.info().waiting_for == "receive 'approval'", what="the run to wait for its approval")
        run.send("approval", True)
        assert run.result(timeout=20)["shipment"] == "shipment-o-9"
    finally:
        backend.close()
    assert processes.stop(worker, signal.SIGTERM) == 0
    text = log.read_text()
    assert "SIGTERM: stopping" in text and "stopped" in text


def test_substantial_worker_stops_on_sigint(processes: Processes, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    command = [sys.executable, "manage.py", "substantial_worker"]
    worker = processes.start(command, log=log, cwd=PROJECT, env=example_env(tmp_path / "store", tmp_path))
    wait_until(lambda: "serving queue" in log.read_text(), what="the worker to start")
    assert processes.stop(worker, signal.SIGINT) == 0
    assert "SIGINT: stopping" in log.read_text()
