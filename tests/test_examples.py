"""The shipped examples run end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_roulette_prints_the_seeds_final_output() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "roulette.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "roulette: shot!" in lines  # the first attempt failed and was retried
    assert lines[-1] == "Final output 100"
