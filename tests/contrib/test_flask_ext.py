"""The Flask extension, through Flask's test client and the Flask example (examples/flask_app)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from contrib_support import EXAMPLES, Processes, example_env, wait_until

from substantial import Conductor, Context, RunStatus, workflow
from substantial.backends import FSBackend, MemoryBackend

flask = pytest.importorskip("flask")

from substantial.contrib.flask import Substantial, conductor, embedded_worker  # noqa: E402

MakeApp = Callable[..., Any]


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example's ``app`` module (its ``flows`` is importable as a top-level module, as when run)."""
    monkeypatch.syspath_prepend(str(EXAMPLES / "flask_app"))
    return importlib.import_module("app")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def make_app(example: ModuleType, store: Path) -> Iterator[MakeApp]:
    """Makes example apps on one store; stops their workers after the test."""
    apps: list[Any] = []

    def make(**config: Any) -> Any:
        app = example.create_app({"SUBSTANTIAL_URL": f"file:{store}", "SUBSTANTIAL_THREADS": 2, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        embedded_worker(app).stop(timeout=10)


def order_state(client: Any, order_id: str) -> dict[str, Any]:
    response = client.get(f"/orders/{order_id}")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json
    return state


def waiting_for_approval(client: Any, order_id: str) -> bool:
    state = order_state(client, order_id)
    return state["status"] == "waiting" and state["waiting_for"] == "receive 'approval'"


def pollers() -> int:
    return sum(t.name == "substantial-poller" for t in threading.enumerate())


def test_a_request_starts_an_order_and_another_delivers_its_approval(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app()
    embedded = embedded_worker(app)
    assert embedded.worker is None  # nothing starts with the app
    client = app.test_client()

    created = client.post("/orders", json={"order_id": "o-1", "amount": 30})
    assert created.status_code == 202, created.text
    assert created.json["run_id"] == "order-o-1"
    assert embedded.worker is not None  # the first request started it
    wait_until(lambda: waiting_for_approval(client, "o-1"), what="the order to wait for its approval")

    sent = client.post("/orders/o-1/approval", json={"approved": True})
    assert sent.status_code == 202, sent.text
    done = wait_until(lambda: (s := order_state(client, "o-1"))["status"] == "completed" and s, what="completion")
    assert done["result"] == {"order": "o-1", "approved": True, "charge": "charge-o-1-30", "shipment": "shipment-o-1"}
    assert client.post("/orders/o-1/approval", json={"approved": True}).status_code == 409
    assert client.get("/orders/nope").status_code == 404
    assert client.post("/orders", json={"order_id": "o-2"}).status_code == 400
    out = capsys.readouterr().out
    assert out.count("step charge: order o-1") == 1
    assert out.count("step ship: order o-1") == 1


def test_a_waiting_run_resumes_when_the_worker_starts_again(
    make_app: MakeApp, capsys: pytest.CaptureFixture[str]
) -> None:
    first = make_app()
    client = first.test_client()
    client.post("/orders", json={"order_id": "o-1", "amount": 30})
    wait_until(lambda: waiting_for_approval(client, "o-1"), what="the order to wait for its approval")

    assert embedded_worker(first).stop(timeout=10)
    assert client.post("/orders/o-1/approval", json={"approved": True}).status_code == 202
    assert embedded_worker(first).worker is None  # a request does not restart a stopped worker
    assert order_state(client, "o-1")["status"] == "waiting"  # no worker anywhere: the approval waits in the store

    # The process restarts: a new app on the same store; its first request starts its worker.
    second = make_app()
    again = second.test_client()
    done = wait_until(lambda: (s := order_state(again, "o-1"))["status"] == "completed" and s, what="completion")
    assert done["result"]["shipment"] == "shipment-o-1"
    assert capsys.readouterr().out.count("step charge: order o-1") == 1  # recorded: not run again


def test_start_worker_restarts_a_stopped_worker(
    make_app: MakeApp, example: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app()
    client = app.test_client()
    client.post("/orders", json={"order_id": "o-1", "amount": 30})
    wait_until(lambda: waiting_for_approval(client, "o-1"), what="the order to wait for its approval")
    assert example.substantial.stop_worker(app, timeout=10)
    client.post("/orders/o-1/approval", json={"approved": False})
    with app.app_context():
        worker = example.substantial.start_worker()
        assert example.substantial.start_worker() is worker  # once per process
    done = wait_until(lambda: (s := order_state(client, "o-1"))["status"] == "reverted" and s, what="the revert")
    assert done["result"] is None
    assert capsys.readouterr().out.count("step refund: order o-1") == 1  # the charge's compensation


def test_the_worker_starts_once_per_process_under_concurrent_first_requests(make_app: MakeApp) -> None:
    app = make_app()
    before = pollers()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: app.test_client().get("/orders/none").status_code, range(16)))
    assert codes == [404] * 16
    assert pollers() == before + 1
    worker = embedded_worker(app).worker
    app.test_client().get("/orders/none")
    assert embedded_worker(app).worker is worker


def test_a_forked_process_starts_its_own_worker(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    embedded = embedded_worker(app)
    app.test_client().get("/orders/none")
    inherited = embedded.worker
    assert inherited is not None
    pid = os.getpid()
    with monkeypatch.context() as patch:
        patch.setattr(os, "getpid", lambda: pid + 1)  # as in a child forked after the worker started
        assert embedded.worker is None  # the parent's worker threads are not in the child
        app.test_client().get("/orders/none")
        own = embedded.worker
        assert own is not None and own is not inherited
        assert embedded.stop(timeout=10)
    assert "forked" in caplog.text
    assert inherited.stop(timeout=10)


def test_run_worker_false_keeps_the_worker_out_of_the_web_process(make_app: MakeApp) -> None:
    app = make_app(SUBSTANTIAL_RUN_WORKER="false", SUBSTANTIAL_QUEUES="default")  # as a config file may give them
    assert embedded_worker(app).queues == ["default"]
    client = app.test_client()
    assert client.post("/orders", json={"order_id": "o-1", "amount": 30}).status_code == 202
    assert embedded_worker(app).worker is None
    assert order_state(client, "o-1")["status"] == "pending"
    assert "substantial" in app.cli.commands


@workflow("greet")
def greet(c: Context, name: str):
    text = yield c.save(lambda: f"hello {name}")
    return text


def test_a_conductor_of_your_own_serves_the_views() -> None:
    own = Conductor(MemoryBackend())
    app = flask.Flask("own")
    ext = Substantial(app, conductor=own)
    ext.register(greet)

    @app.post("/greet/<name>")
    def start(name: str) -> dict[str, Any]:
        run = conductor.start(greet, name)
        return {"result": run.result(timeout=10)}

    try:
        assert app.test_client().post("/greet/ada").json == {"result": "hello ada"}
        assert app.extensions["substantial"].conductor is own
        with app.app_context():
            assert ext.conductor is own
            assert conductor.list_runs(status=RunStatus.COMPLETED)[0].workflow == "greet"
    finally:
        ext.stop_worker(app, timeout=10)


def test_configuration_errors_are_clear() -> None:
    app = flask.Flask("errors")
    app.config["SUBSTANTIAL_URL"] = "memory://"
    with pytest.raises(ValueError, match="SUBSTANTIAL_URL is set"):
        Substantial(app, conductor=Conductor(MemoryBackend()))
    Substantial(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        Substantial(app)
    other = flask.Flask("other")
    other.config["SUBSTANTIAL_RUN_WORKER"] = "maybe"
    with pytest.raises(ValueError, match="SUBSTANTIAL_RUN_WORKER"):
        Substantial(other)
    with pytest.raises(RuntimeError, match="not initialised"):
        embedded_worker(flask.Flask("bare"))
    with pytest.raises(RuntimeError, match="application context"):
        conductor.list_runs()


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from flask import Flask
    from substantial import Context, workflow
    from substantial.contrib.flask import Substantial, conductor

    def tick(i):
        time.sleep(0.02)
        return i

    @workflow("slow")
    def slow(c: Context):
        total = 0
        for i in range(1000):  # 20 s of steps: an exit that waited for them would time out
            total += yield c.save(lambda i=i: tick(i))
        return total

    app = Flask("exit")
    app.config.update(SUBSTANTIAL_URL=sys.argv[1], SUBSTANTIAL_STOP_TIMEOUT=0.5)
    Substantial(app, workflows=[slow])

    @app.post("/slow")
    def start():
        return {"run": conductor.start(slow, run_id="slow").id}

    app.test_client().post("/slow")
    with app.app_context():
        run = conductor.get("slow")
        while len(run.history()) < 5:  # a few steps recorded: the turn is in progress
            time.sleep(0.01)
    print("exiting", flush=True)
    """
)


def test_the_worker_stops_at_exit_within_its_timeout(tmp_path: Path) -> None:
    store = tmp_path / "store"
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, f"file:{store}"], capture_output=True, text=True, timeout=60, check=False
    )
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert "exiting" in done.stdout
    assert "stopped with turns still running" in done.stderr  # the turn was cut at a step boundary
    assert elapsed < 15, elapsed
    backend = FSBackend(store)
    try:
        records, _ = backend.read_log("slow")
        assert 5 <= len(records) < 1000  # it stopped mid-run; the run stays due for the next worker
        assert not Conductor(backend).get("slow").status().finished
    finally:
        backend.close()


def test_flask_substantial_worker_serves_runs_until_sigterm(
    example: ModuleType, processes: Processes, tmp_path: Path
) -> None:
    store, log = tmp_path / "store", tmp_path / "worker.log"
    command = [sys.executable, "-m", "flask", "--app", "app", "substantial", "worker", "--poll-interval", "0.05"]
    worker = processes.start(command, log=log, cwd=EXAMPLES / "flask_app", env=example_env(store, tmp_path))
    wait_until(lambda: "serving queue" in log.read_text(), what="the worker to start")
    flows = sys.modules["flows"]
    backend = FSBackend(store)
    try:
        here = Conductor(backend)  # starts and signals runs, runs no worker
        here.register(flows.order)
        run = here.start(flows.order, "o-9", 5, run_id="order-o-9")
        wait_until(lambda: run.info().waiting_for == "receive 'approval'", what="the run to wait for its approval")
        run.send("approval", True)
        assert run.result(timeout=20)["shipment"] == "shipment-o-9"
    finally:
        backend.close()
    assert processes.stop(worker, signal.SIGTERM) == 0
    text = log.read_text()
    assert "SIGTERM: stopping" in text and "stopped" in text
