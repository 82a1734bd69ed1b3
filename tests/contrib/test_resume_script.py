"""examples/resume_script.py: a run interrupted by Ctrl-C resumes when the script starts again."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from contrib_support import EXAMPLES, Processes, example_env, wait_until

SCRIPT = EXAMPLES / "resume_script.py"


def test_a_run_interrupted_by_ctrl_c_resumes_on_the_next_start(processes: Processes, tmp_path: Path) -> None:
    store = tmp_path / "runs"
    command = [sys.executable, str(SCRIPT), str(store), "--pause", "0.3"]
    env = example_env(store, tmp_path)

    log = tmp_path / "first.log"
    first = processes.start(command, log=log, env=env)
    wait_until(lambda: "importing batch 1" in log.read_text(), what="the second batch")
    assert processes.stop(first, signal.SIGINT) == 130
    before = log.read_text()
    assert "interrupted: run nightly-import is waiting" in before

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("run nightly-import is waiting")  # the same run, picked up
    assert "done: {'batches': 5, 'rows': 1000}" in second.stdout
    imported = re.findall(r"importing batch (\d)", before + second.stdout)
    assert sorted(imported) == ["0", "1", "2", "3", "4"]  # each once: the recorded ones were not imported again
    assert "importing batch 0" not in second.stdout

    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert third.stdout == "done: {'batches': 5, 'rows': 1000}\n"  # finished: the result at once
