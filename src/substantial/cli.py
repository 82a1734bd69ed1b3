"""The command line: ``substantial worker``, ``substantial runs ...``, ``substantial demo``.

Every command returns an exit code: 0 on success, 2 on a usage error or an
error the user can fix (a bad module path, an unknown or invalid run id, bad
JSON), reported as one line on stderr without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from substantial import defaults, demo
from substantial.backends import FSBackend, from_url
from substantial.conductor import Conductor, RunHandle
from substantial.errors import SubstantialError
from substantial.events import Failure
from substantial.runs import HistoryEvent, RunInfo, RunStatus
from substantial.serve import serve

log = logging.getLogger("substantial.worker")

#: Seconds ``substantial worker`` waits for turns in progress once told to stop.
STOP_TIMEOUT = 30.0

Handler = Callable[[argparse.Namespace], int]


class CLIError(Exception):
    """An error the user can fix, shown as one line on stderr (exit code 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = _parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (CLIError, SubstantialError) as e:
        print(f"substantial: error: {e}", file=sys.stderr)
        return 2


# -- the parser ----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="substantial", description="Brokerless durable execution: run workers, inspect and signal runs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_worker(commands)
    _add_runs(commands)
    demo = commands.add_parser(
        "demo",
        help="the quick start on local files: a run survives a killed worker",
        description="Start a worker process, start a run, SIGKILL the worker while the run sleeps, start another "
        "worker and see the run finish without running its recorded steps again.",
    )
    demo.add_argument("folder", nargs="?", help="where to store the runs (default: a new temporary folder)")
    demo.set_defaults(handler=_demo)
    return parser


def _add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker",
        help="run a worker until SIGINT or SIGTERM",
        description="Import MODULE, take its Conductor ATTRIBUTE and serve its runs until SIGINT or SIGTERM; "
        "a second signal exits at once (nothing is lost: unfinished turns are taken up again).",
    )
    worker.add_argument("target", metavar="MODULE:ATTRIBUTE", help="where the Conductor is, e.g. myapp.flows:conductor")
    worker.add_argument(
        "--threads", type=_positive_int, default=defaults.THREADS, help="turns run at once (default: %(default)s)"
    )
    worker.add_argument(
        "--queue",
        action="append",
        dest="queues",
        metavar="QUEUE",
        help="a queue to serve; repeat for several (default: the queues of the registered workflows)",
    )
    worker.add_argument(
        "--stop-timeout",
        type=_seconds,
        default=STOP_TIMEOUT,
        help="seconds to let turns in progress finish when stopping (default: %(default)s)",
    )
    worker.add_argument(
        "--poll-interval",
        type=_seconds,
        default=defaults.POLL_INTERVAL,
        help="longest wait between looks at the due index (default: %(default)s)",
    )
    worker.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default: INFO)",
    )
    worker.set_defaults(handler=_worker)


def _add_runs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--url",
        help=f"the backend (default: $SUBSTANTIAL_URL, else {defaults.URL}), e.g. file:///var/lib/app/runs",
    )
    runs = commands.add_parser("runs", help="list, show, signal and cancel runs")
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[store], help="list runs, in id order")
    listing.add_argument("--status", choices=[s.value for s in RunStatus], help="only runs with this status")
    listing.add_argument("--workflow", help="only runs of this workflow (its registered name)")
    listing.add_argument("--parent", metavar="ID", help="only the children of this run (started with child())")
    listing.add_argument("--limit", type=_positive_int, default=100, help="at most this many (default: 100)")
    listing.set_defaults(handler=_runs_list)

    show = actions.add_parser("show", parents=[store], help="a run's status, result and history")
    show.add_argument("run_id", metavar="ID")
    show.set_defaults(handler=_runs_show)

    send = actions.add_parser("send", parents=[store], help="send an event to a run")
    send.add_argument("run_id", metavar="ID")
    send.add_argument("name", metavar="NAME", help="the event name, as the workflow receives or handles it")
    send.add_argument("payload", metavar="JSON", nargs="?", default="null", help="the payload (default: null)")
    send.set_defaults(handler=_runs_send)

    cancel = actions.add_parser("cancel", parents=[store], help="ask a run to stop")
    cancel.add_argument("run_id", metavar="ID")
    cancel.add_argument("--reason", default=None, help="why; RunCancelled carries it")
    cancel.set_defaults(handler=_runs_cancel)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


# -- substantial worker ------------------------------------------------------------


def load_conductor(target: str) -> Conductor:
    """The ``Conductor`` named by ``module:attribute`` (the attribute may be dotted).

    The working directory is importable, as it is for ``python -m``.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise CLIError(f"{target!r} is not MODULE:ATTRIBUTE, e.g. myapp.flows:conductor")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: object = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise  # the module exists but imports something missing: show the traceback
        raise CLIError(f"cannot import module {module_name!r}: check the name and the working directory") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise CLIError(f"{module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not isinstance(found, Conductor):
        raise CLIError(f"{target!r} is a {type(found).__name__}, not a Conductor")
    return found


def _worker(args: argparse.Namespace) -> int:
    conductor = load_conductor(args.target)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not conductor.registry.queues():
        log.warning("%s has no registered workflows: every run it takes will fail to load", args.target)
    return serve(
        conductor,
        threads=args.threads,
        queues=args.queues,
        poll_interval=args.poll_interval,
        stop_timeout=args.stop_timeout,
    )


# -- substantial runs ----------------------------------------------------------


def _store(args: argparse.Namespace) -> Conductor:
    """A conductor on the backend of ``--url``, ``$SUBSTANTIAL_URL`` or the default.

    It registers no workflows: handles work by run id alone. A file store must
    exist already, so a mistyped URL is reported instead of creating a folder.
    """
    url: str = args.url or os.environ.get("SUBSTANTIAL_URL") or defaults.URL
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        raise CLIError(f"{url!r} is one process's memory: there are no runs to see from here")
    local = parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path
    if local and not Path(parsed.path).is_dir():
        raise CLIError(f"no store at {Path(parsed.path).absolute()}: give --url or set $SUBSTANTIAL_URL")
    try:
        return Conductor(from_url(url))
    except ValueError as e:
        raise CLIError(str(e)) from None


def _runs_list(args: argparse.Namespace) -> int:
    runs = _store(args).list_runs(status=args.status, workflow=args.workflow, limit=args.limit, parent=args.parent)
    rows = [("ID", "WORKFLOW", "STATUS", "UPDATED", "WAITING FOR")]
    rows += [(r.id, r.workflow, r.status.value, _time(r.updated_at), r.waiting_for) for r in runs]
    if not runs:
        print("no runs")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _runs_show(args: argparse.Namespace) -> int:
    run = _store(args).get(args.run_id)
    info = run.info()
    history = run.history()
    for line in _info_lines(info):
        print(line)
    print(f"history ({len(history)} events):")
    for event in history:
        print("  " + _event_line(event))
    return 0


def _runs_send(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as e:
        raise CLIError(f"the payload {args.payload!r} is not JSON ({e}); quote strings: '\"text\"'") from None
    run = _store(args).get(args.run_id)
    _warn_if_finished(run)
    run.send(args.name, payload)
    print(f"sent {args.name!r} to run {run.id}")
    return 0


def _runs_cancel(args: argparse.Namespace) -> int:
    run = _store(args).get(args.run_id)
    _warn_if_finished(run)
    run.cancel(args.reason)
    print(f"asked run {run.id} to cancel")
    return 0


def _warn_if_finished(run: RunHandle) -> None:
    status = run.status()
    if status.finished:
        print(f"substantial: note: run {run.id} has finished ({status}): it will ignore this", file=sys.stderr)


def _info_lines(info: RunInfo) -> list[str]:
    fields: list[tuple[str, str]] = [
        ("id", info.id),
        ("workflow", info.workflow),
        ("queue", info.queue),
        ("status", info.status.value),
        ("created", _time(info.created_at)),
        ("updated", _time(info.updated_at)),
    ]
    if info.parent:
        fields.append(("parent", info.parent))
    if info.generation:
        fields.append(("generation", str(info.generation)))
    if info.waiting_for:
        fields.append(("waiting for", info.waiting_for))
    if info.due_at is not None:
        fields.append(("due", _time(info.due_at)))
    if info.status is RunStatus.COMPLETED:
        fields.append(("result", _value(info.result)))
    if info.error is not None:
        fields.append(("error", _value(info.error)))
    if info.last_error:
        fields.append(("last error", info.last_error))
    lines = [f"{name + ':':<13}{value}" for name, value in fields]
    if info.error is not None and info.error.traceback:
        lines += ["  " + line for line in info.error.traceback.rstrip().splitlines()]
    return lines


def _event_line(event: HistoryEvent) -> str:
    at = _time(event.at) if event.at is not None else "-"
    step = "-" if event.step is None else str(event.step)
    what = f"{event.command} {event.fingerprint!r}" if event.fingerprint else event.command
    if event.kind == "timer_set" and isinstance(event.value, float):
        shown = _time(datetime.fromtimestamp(event.value, tz=timezone.utc))  # when it fires
    else:
        shown = "" if event.value is None else _value(event.value)
    return "  ".join(part for part in (at, f"{step:>3}", f"{event.kind:<16}", what, shown) if part).rstrip()


def _time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _value(value: Any) -> str:
    if isinstance(value, Failure):
        return f"{value.type}: {value.message}"
    return json.dumps(value, ensure_ascii=False, default=repr)


# -- substantial demo ----------------------------------------------------------

#: Longest wait for each stage of the demo, in seconds.
DEMO_TIMEOUT = 20.0
#: The owner name the demo uses to check that no worker holds a run's lease.
_DEMO_OWNER = "substantial-demo"

Process = subprocess.Popen[bytes]


def _demo(args: argparse.Namespace) -> int:
    folder = Path(args.folder or tempfile.mkdtemp(prefix="substantial-demo-")).absolute()
    conductor = Conductor(FSBackend(folder))
    conductor.register(demo.order)
    _say(f"runs are stored in {folder}")
    workers: list[Process] = []
    try:
        try:
            code = _demo_steps(conductor, folder, workers)
        finally:
            _stop_all(workers)  # on an error or Ctrl-C too: never leave a worker behind
    except KeyboardInterrupt:
        print("substantial: demo interrupted; its workers are stopped", file=sys.stderr)
        return 130
    return code


def _demo_steps(conductor: Conductor, folder: Path, workers: list[Process]) -> int:
    """The demo, with the workers it starts in ``workers``; 1 if a step recorded before the kill ran again."""
    first = _start_worker(folder, workers)
    run = conductor.start(demo.order, "o-1", 30)
    _say(f"started run {run.id} of {demo.order.name}")

    def sleeping() -> bool:
        info = run.info()
        return info.status is RunStatus.WAITING and info.waiting_for.startswith("sleep")

    _wait_until("the run to reach its sleep", sleeping, first)
    # The turn that parked the run lets its lease go just after recording the status: kill the
    # worker after that, so that the next worker takes the run at once (a worker killed within a
    # turn holds its run's lease until it expires, lease_ttl: 30 s by default).
    _wait_until("the worker to let the run's lease go", lambda: _lease_free(conductor, run.id), first)
    recorded = _recorded_steps(run)
    _say(f"the run sleeps {demo.SLEEP:g}s after {len(recorded)} recorded steps ({', '.join(recorded)})")
    first.kill()
    first.wait()
    _say(f"killed worker 1 (pid {first.pid}) with SIGKILL")
    info = run.info()
    due = "" if info.due_at is None else f", due in {max(info.due_at.timestamp() - time.time(), 0):.1f}s"
    steps = len(_recorded_steps(run))
    _say(f"status: {info.status} ({info.waiting_for}{due}), {steps} steps recorded, no worker running")

    second = _start_worker(folder, workers)
    _wait_until("the run to wait for 'approval'", lambda: run.info().waiting_for.startswith("receive"), second)
    _say(f"status: {run.status()} ({run.info().waiting_for}): worker 2 took the run over after the sleep")
    run.send("approval", True)
    _say("sent 'approval' = true")
    try:
        result = run.result(timeout=DEMO_TIMEOUT)
    except TimeoutError:
        raise CLIError(f"run {run.id} did not finish within {DEMO_TIMEOUT:g}s: {run.info()}") from None
    _say(f"result: {_value(result)}")
    history = run.history()
    _say(f"history ({len(history)} events):")
    for event in history:
        _say("  " + _event_line(event))

    pids = {first.pid: "worker 1", second.pid: "worker 2"}
    ran = _step_executions(folder / demo.STEPS_FILE, run.id)
    counts = [f"{step} {len(by)}x ({', '.join(pids.get(pid, f'pid {pid}') for pid in by)})" for step, by in ran.items()]
    _say(f"step executions (from {demo.STEPS_FILE}): {'; '.join(counts)}")
    again = [step for step in recorded if len(ran.get(step, [])) != 1]
    if again:
        print(
            f"substantial: steps recorded before the kill did not run exactly once: {', '.join(again)}", file=sys.stderr
        )
    else:
        _say("the steps recorded before the kill did not run again: worker 2 replayed their results from the log")

    second.terminate()
    try:
        code = second.wait(timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CLIError(f"worker 2 (pid {second.pid}) did not stop within {DEMO_TIMEOUT:g}s of SIGTERM") from None
    _say(f"stopped worker 2 (pid {second.pid}) with SIGTERM: exit code {code}")
    _say(f"see it again with: substantial runs show {run.id} --url {folder.as_uri()}")
    return 1 if again else 0


def _say(text: str) -> None:
    print(text, flush=True)  # flushed, so that it comes in order with what the workers print


def _start_worker(folder: Path, workers: list[Process]) -> Process:
    """``python -m substantial worker substantial.demo:conductor`` on ``folder``, quiet but for problems."""
    package_root = str(Path(__file__).resolve().parent.parent)  # the child imports this very substantial
    env = {**os.environ, "SUBSTANTIAL_URL": folder.as_uri()}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "substantial", "worker", "substantial.demo:conductor"]
    command += ["--threads", "2", "--poll-interval", "0.05", "--stop-timeout", "5", "--log-level", "WARNING"]
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    workers.append(process)
    _say(f"started worker {len(workers)} (pid {process.pid}): python {' '.join(command[1:5])}")
    return process


def _stop_all(workers: list[Process]) -> None:
    """Kill the workers still running, and reap them."""
    for process in workers:
        if process.poll() is None:
            process.kill()
        process.wait()


def _wait_until(what: str, done: Callable[[], bool], worker: Process) -> None:
    """Poll ``done`` until it holds; a ``CLIError`` if the worker exits or ``DEMO_TIMEOUT`` passes first."""
    deadline = time.monotonic() + DEMO_TIMEOUT
    while not done():
        if worker.poll() is not None:
            raise CLIError(f"the worker (pid {worker.pid}) exited with code {worker.returncode} before {what}")
        if time.monotonic() > deadline:
            raise CLIError(f"gave up waiting {DEMO_TIMEOUT:g}s for {what}")
        time.sleep(0.02)


def _lease_free(conductor: Conductor, run_id: str) -> bool:
    """True if no worker holds the run's lease (the demo takes it and gives it back at once)."""
    if not conductor.backend.acquire_lease(run_id, _DEMO_OWNER, 1.0):
        return False
    conductor.backend.release_lease(run_id, _DEMO_OWNER)
    return True


def _recorded_steps(run: RunHandle) -> list[str]:
    return [e.fingerprint for e in run.history() if e.kind == "step_completed"]


def _step_executions(steps_file: Path, run_id: str) -> dict[str, list[int]]:
    """The pids that ran each step of the run, in order, from the steps file."""
    ran: dict[str, list[int]] = {}
    lines = steps_file.read_text(encoding="utf-8").splitlines() if steps_file.exists() else []
    for line in lines:
        run, step, pid = line.split()
        if run == run_id:
            ran.setdefault(step, []).append(int(pid))
    return ran
