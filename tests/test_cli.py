"""The command line: runs list/show/send/cancel by id, errors, the demo, a standalone worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from substantial import Conductor, Context, RunCancelled, RunHandle, RunStatus, Worker, workflow
from substantial import cli as cli_module
from substantial.backends import FSBackend
from substantial.cli import main


@workflow("cli_test.approve")
def approve(c: Context, order: str) -> Any:
    ok = yield c.receive("approval")
    return {"order": order, "ok": ok}


@workflow("cli_test.quick")
def quick(c: Context, value: Any) -> Any:
    return (yield c.save(lambda: value, key="value"))


def _boom() -> None:
    raise LookupError("no such card")


@workflow("cli_test.parent")
def parent_of_quick(c: Context) -> Any:
    return (yield c.child(quick, "from the parent"))


@workflow("cli_test.fails")
def fails(c: Context) -> Any:
    yield c.save(_boom)


@workflow("cli_test.double")
def double(c: Context, x: int) -> Any:
    return (yield c.save(lambda: x * 2, key="double"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def url(root: Path) -> str:
    return root.as_uri()


@pytest.fixture
def files(root: Path) -> Conductor:
    conductor = Conductor(FSBackend(root))
    conductor.register(approve, quick, fails, parent_of_quick)
    return conductor


@pytest.fixture
def worker(files: Conductor) -> Iterator[Worker]:
    worker = files.run(threads=2, poll_interval=0.02)
    yield worker
    worker.stop(timeout=10)


@pytest.fixture(autouse=True)
def _keep_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the worker command may add the working directory


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``main`` in-process; returns the exit code, stdout and stderr."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        time.sleep(0.01)


def waiting_for_approval(run: RunHandle) -> None:
    wait_until(lambda: run.info().waiting_for.startswith("receive"))


def assert_one_line_error(code: int, out: str, err: str, expected: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("substantial: error: ")
    assert expected in err
    assert err.count("\n") == 1  # one line, no traceback


# -- runs send / cancel ------------------------------------------------------------


def test_send_delivers_a_json_payload_by_run_id(cli: Cli, files: Conductor, worker: Worker, url: str) -> None:
    run = files.start(approve, "o-1")
    waiting_for_approval(run)
    code, out, _ = cli("runs", "send", run.id, "approval", '{"by": "ann", "n": [1, 2]}', "--url", url)
    assert code == 0
    assert run.id in out
    assert run.result(timeout=10) == {"order": "o-1", "ok": {"by": "ann", "n": [1, 2]}}


def test_send_without_a_payload_sends_null(cli: Cli, files: Conductor, worker: Worker, url: str) -> None:
    run = files.start(approve, "o-1", run_id="o-1")
    assert cli("runs", "send", "o-1", "approval", "--url", url)[0] == 0
    assert run.result(timeout=10) == {"order": "o-1", "ok": None}


def test_send_with_bad_json_posts_nothing(cli: Cli, files: Conductor, url: str) -> None:
    run = files.start(approve, "o-1")
    assert_one_line_error(*cli("runs", "send", run.id, "approval", "{yes", "--url", url), "is not JSON")
    run.send("approval", "the good one")
    with files.run(threads=1, poll_interval=0.02):
        # receive takes the oldest event: a bad payload that got through would come first
        assert run.result(timeout=10) == {"order": "o-1", "ok": "the good one"}


def test_cancel_passes_its_reason(cli: Cli, files: Conductor, worker: Worker, url: str) -> None:
    run = files.start(approve, "o-1")
    waiting_for_approval(run)
    code, out, _ = cli("runs", "cancel", run.id, "--reason", "out of stock", "--url", url)
    assert code == 0
    assert "cancel" in out
    with pytest.raises(RunCancelled) as caught:
        run.result(timeout=10)
    assert caught.value.reason == "out of stock"
    assert run.status() is RunStatus.CANCELLED


def test_sending_to_a_finished_run_says_so(cli: Cli, files: Conductor, worker: Worker, url: str) -> None:
    run = files.start(quick, 1)
    run.result(timeout=10)
    code, _, err = cli("runs", "send", run.id, "approval", "true", "--url", url)
    assert code == 0
    assert "has finished (completed)" in err


# -- runs show / list ------------------------------------------------------------


def test_show_prints_status_result_and_one_line_per_event(cli: Cli, files: Conductor, worker: Worker, url: str) -> None:
    run = files.start(approve, "o-1")
    waiting_for_approval(run)
    run.send("approval", True)
    run.result(timeout=10)
    code, out, _ = cli("runs", "show", run.id, "--url", url)
    assert code == 0
    lines = out.splitlines()
    assert f"id:          {run.id}" in lines
    assert "workflow:    cli_test.approve" in lines
    assert "status:      completed" in lines
    assert 'result:      {"order": "o-1", "ok": true}' in lines
    history = run.history()
    start = lines.index(f"history ({len(history)} events):")
    events = lines[start + 1 :]
    assert len(events) == len(history)
    assert [e.kind for e in history] == [line.split()[2] for line in events]
    assert "receive 'approval'" in events[[e.kind for e in history].index("event_consumed")]
    assert events[-1].endswith('{"order": "o-1", "ok": true}')


def test_show_a_waiting_run(cli: Cli, files: Conductor, worker: Worker, url: str) -> None:
    run = files.start(approve, "o-1")
    waiting_for_approval(run)
    code, out, _ = cli("runs", "show", run.id, "--url", url)
    assert code == 0
    assert "status:      waiting" in out.splitlines()
    assert "waiting for: receive 'approval'" in out.splitlines()
    assert "result:" not in out


def test_show_a_run_no_worker_has_taken_yet(cli: Cli, files: Conductor, url: str) -> None:
    run = files.start(approve, "o-1")
    code, out, _ = cli("runs", "show", run.id, "--url", url)
    assert code == 0
    lines = out.splitlines()
    assert "status:      pending" in lines
    assert lines[-1] == "history (0 events):"


def test_show_a_failed_run_with_its_error_and_traceback(cli: Cli, files: Conductor, worker: Worker, url: str) -> None:
    run = files.start(fails)
    wait_until(lambda: run.status() is RunStatus.FAILED)
    code, out, _ = cli("runs", "show", run.id, "--url", url)
    assert code == 0
    assert "status:      failed" in out.splitlines()
    error = next(line for line in out.splitlines() if line.startswith("error:"))
    assert "StepFailed" in error
    assert "no such card" in error
    assert "Traceback" in out


def test_list_filters_by_status_and_workflow_and_limits(cli: Cli, files: Conductor, worker: Worker, url: str) -> None:
    waiting = [files.start(approve, f"o-{i}", run_id=f"w-{i}") for i in range(3)]
    done = files.start(quick, 1, run_id="q-1")
    done.result(timeout=10)
    for run in waiting:
        waiting_for_approval(run)

    def ids(*options: str) -> list[str]:
        code, out, _ = cli("runs", "list", "--url", url, *options)
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["ID", "WORKFLOW", "STATUS"]
        return [line.split()[0] for line in lines[1:]]

    assert ids() == ["q-1", "w-0", "w-1", "w-2"]
    assert ids("--status", "waiting") == ["w-0", "w-1", "w-2"]
    assert ids("--status", "completed") == ["q-1"]
    assert ids("--workflow", "cli_test.quick") == ["q-1"]
    assert ids("--workflow", "cli_test.approve", "--limit", "2") == ["w-0", "w-1"]
    assert cli("runs", "list", "--url", url, "--status", "failed")[1] == "no runs\n"


def test_list_shows_a_runs_children_and_show_names_the_parent(
    cli: Cli, files: Conductor, worker: Worker, url: str
) -> None:
    assert files.start(parent_of_quick, run_id="p").result(timeout=10) == "from the parent"
    files.start(quick, 1, run_id="other").result(timeout=10)
    code, out, _ = cli("runs", "list", "--url", url, "--parent", "p")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["p.0"]
    code, out, _ = cli("runs", "show", "p.0", "--url", url)
    assert code == 0 and "parent:      p" in out.splitlines()


def test_the_store_comes_from_the_environment_then_the_default(
    cli: Cli, files: Conductor, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files.start(quick, 1, run_id="q-1")
    monkeypatch.setenv("SUBSTANTIAL_URL", url)
    assert cli("runs", "show", "q-1")[0] == 0

    monkeypatch.delenv("SUBSTANTIAL_URL")
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*cli("runs", "show", "q-1"), "no store at")
    default = Conductor()  # file:.substantial in the working directory
    default.register(quick)
    default.start(quick, 2, run_id="here")
    code, out, _ = cli("runs", "list")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["here"]


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["runs", "show", "nope"], "no run with id 'nope'"),
        (["runs", "show", "../etc"], "invalid run id"),
        (["runs", "send", "nope", "approval", "1"], "no run with id 'nope'"),
        (["runs", "cancel", "nope"], "no run with id 'nope'"),
    ],
)
def test_run_errors_are_one_line_and_exit_2(
    cli: Cli, files: Conductor, url: str, argv: list[str], expected: str
) -> None:
    assert_one_line_error(*cli(*argv, "--url", url), expected)


def test_a_missing_store_is_reported_not_created(cli: Cli, tmp_path: Path) -> None:
    absent = tmp_path / "absent"
    assert_one_line_error(*cli("runs", "list", "--url", absent.as_uri()), f"no store at {absent}")
    assert not absent.exists()


@pytest.mark.parametrize("url", ["memory://", "ftp://example/x", "file://otherhost/x"])
def test_unusable_urls_are_one_line_errors(cli: Cli, url: str) -> None:
    code, out, err = cli("runs", "list", "--url", url)
    assert_one_line_error(code, out, err, repr(url))


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("no_such_module_here:conductor", "cannot import module 'no_such_module_here'"),
        ("json", "is not MODULE:ATTRIBUTE"),
        ("json:no_such_attribute", "has no attribute 'no_such_attribute'"),
        ("json:dumps", "not a Conductor"),
    ],
)
def test_worker_rejects_bad_targets(cli: Cli, target: str, expected: str) -> None:
    assert_one_line_error(*cli("worker", target), expected)


def test_worker_shows_the_traceback_of_a_module_that_fails_to_import(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cli_test_broken.py").write_text("import no_such_dependency_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_here"):
        cli("worker", "cli_test_broken:conductor")


# -- the demo ----------------------------------------------------------------------


def pid_of(out: str, prefix: str) -> int:
    """The pid in ``prefix (pid N)...``, from the demo's output."""
    [line] = [line for line in out.splitlines() if line.startswith(prefix)]
    return int(line.split("(pid ")[1].split(")")[0])


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no such process


def test_demo_survives_a_killed_worker(cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    started = time.monotonic()
    code, out, err = cli("demo", str(folder))
    assert code == 0, err
    assert time.monotonic() - started < 10
    lines = out.splitlines()
    first, second = pid_of(out, "started worker 1"), pid_of(out, "started worker 2")
    assert f"killed worker 1 (pid {first}) with SIGKILL" in lines
    after_kill = lines[lines.index(f"killed worker 1 (pid {first}) with SIGKILL") + 1]
    assert after_kill.startswith("status: waiting (sleep, due in ")
    assert after_kill.endswith("2 steps recorded, no worker running")
    assert lines.index(f"killed worker 1 (pid {first}) with SIGKILL") < lines.index("sent 'approval' = true")
    result = {"reservation": "reservation-o-1", "charge": "charge-o-1-30", "approved": True, "shipment": "shipment-o-1"}
    assert f"result: {json.dumps(result)}" in lines
    assert f"stopped worker 2 (pid {second}) with SIGTERM: exit code 0" in lines
    assert "the steps recorded before the kill did not run again" in out

    [info] = Conductor(FSBackend(folder)).list_runs()
    assert info.status is RunStatus.COMPLETED
    assert f"substantial runs show {info.id} --url {folder.as_uri()}" in out
    # every step ran once: the two before the kill in worker 1, the last in worker 2
    executions = [line.split() for line in (folder / "steps.log").read_text().splitlines()]
    assert executions == [
        [info.id, "reserve", str(first)],
        [info.id, "charge", str(first)],
        [info.id, "ship", str(second)],
    ]
    assert_gone(first)
    assert_gone(second)


def test_an_interrupted_demo_leaves_no_worker_running(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[subprocess.Popen[bytes]] = []
    start_worker = cli_module._start_worker

    def start(folder: Path, workers: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        started.append(start_worker(folder, workers))
        return started[-1]

    def interrupted(conductor: Conductor, run_id: str) -> bool:
        raise KeyboardInterrupt  # Ctrl-C while the run sleeps, before the kill

    monkeypatch.setattr(cli_module, "_start_worker", start)
    monkeypatch.setattr(cli_module, "_lease_free", interrupted)
    code, _, err = cli("demo", str(tmp_path / "demo"))
    assert code == 130
    assert "demo interrupted; its workers are stopped" in err
    [worker] = started
    assert worker.returncode == -signal.SIGKILL
    assert_gone(worker.pid)


# -- a standalone worker -------------------------------------------------------------

WORKER_MODULE = """
    import os
    import time
    from pathlib import Path

    from substantial import Conductor, Context, workflow

    FOLDER = Path(os.environ["CLI_TEST_DIR"])


    def wait_for_go() -> str:
        (FOLDER / "started").touch()
        deadline = time.monotonic() + 30
        while not (FOLDER / "go").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("nobody said go")
            time.sleep(0.01)
        return "done"


    @workflow("cli_test.double")
    def double(c: Context, x: int):
        return (yield c.save(lambda: x * 2, key="double"))


    @workflow("cli_test.slow")
    def slow(c: Context):
        return (yield c.save(wait_for_go))


    conductor = Conductor()  # $SUBSTANTIAL_URL
    conductor.register(double, slow)
"""


@workflow("cli_test.slow")
def slow(c: Context) -> Any:
    return (yield c.save(lambda: "never run here"))


class WorkerProcess:
    """``python -m substantial worker`` on the test's store, its stderr collected as it comes."""

    def __init__(self, tmp_path: Path, url: str, options: Sequence[str] = ()) -> None:
        (tmp_path / "cli_test_flows.py").write_text(textwrap.dedent(WORKER_MODULE))
        env = {**os.environ, "SUBSTANTIAL_URL": url, "CLI_TEST_DIR": str(tmp_path)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-m", "substantial", "worker", "cli_test_flows:conductor", "--poll-interval", "0.05"]
        command += options
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.lines.append(line)

    def wait_for_line(self, text: str) -> None:
        wait_until(lambda: any(text in line for line in self.lines))

    def exit_code(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        return code

    def stderr(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)


@pytest.fixture
def worker_process(tmp_path: Path, url: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*options: str) -> WorkerProcess:
        started.append(WorkerProcess(tmp_path, url, options))
        return started[-1]

    yield start
    (tmp_path / "go").touch()
    for process in started:
        process.kill()


@pytest.fixture
def starter(root: Path) -> Conductor:
    conductor = Conductor(FSBackend(root))
    conductor.register(double, slow)
    return conductor


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_serves_runs_until_signalled(
    worker_process: Callable[..., WorkerProcess], starter: Conductor, signum: int
) -> None:
    worker = worker_process()
    assert starter.start(double, 21).result(timeout=20) == 42
    assert worker.proc.poll() is None
    worker.proc.send_signal(signum)
    assert worker.exit_code() == 0, worker.stderr()
    assert f"{signal.Signals(signum).name}: stopping" in worker.stderr()
    assert worker.lines[-1].rstrip().endswith("stopped")


def test_a_stopping_worker_finishes_the_turn_in_progress(
    worker_process: Callable[..., WorkerProcess], starter: Conductor, tmp_path: Path
) -> None:
    worker = worker_process()
    run = starter.start(slow)
    wait_until((tmp_path / "started").exists, timeout=20)
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for_line("SIGTERM: stopping")
    assert worker.proc.poll() is None  # still waiting for the turn
    (tmp_path / "go").touch()
    assert worker.exit_code() == 0, worker.stderr()
    assert run.status() is RunStatus.COMPLETED  # recorded before the worker exited
    assert run.result(timeout=0) == "done"


def test_a_second_signal_exits_at_once(
    worker_process: Callable[..., WorkerProcess], starter: Conductor, tmp_path: Path
) -> None:
    worker = worker_process()
    run = starter.start(slow)
    wait_until((tmp_path / "started").exists, timeout=20)
    wait_until(lambda: run.status() is RunStatus.RUNNING, timeout=20)  # shown once the turn lasts RUNNING_AFTER
    worker.proc.send_signal(signal.SIGINT)
    worker.wait_for_line("SIGINT: stopping")
    worker.proc.send_signal(signal.SIGINT)
    assert worker.exit_code() == 128 + signal.SIGINT, worker.stderr()
    assert "SIGINT again: exiting now" in worker.stderr()
    assert run.status() is RunStatus.RUNNING  # its turn was cut short; the run stays due for the next worker


def test_the_stop_timeout_bounds_the_stop(
    worker_process: Callable[..., WorkerProcess], starter: Conductor, tmp_path: Path
) -> None:
    worker = worker_process("--stop-timeout", "0.1")
    run = starter.start(slow)
    wait_until((tmp_path / "started").exists, timeout=20)
    wait_until(lambda: run.status() is RunStatus.RUNNING, timeout=20)  # shown once the turn lasts RUNNING_AFTER
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.exit_code() == 0, worker.stderr()  # "go" never comes: the step is still running
    assert "turns still running" in worker.stderr()
    assert not (tmp_path / "go").exists()
    assert run.status() is RunStatus.RUNNING
