"""Flask and Django are optional: importing the core never imports them."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import substantial, substantial.backends, substantial.cli, substantial.contrib
loaded = sorted(m for m in ("flask", "django", "werkzeug", "click") if m in sys.modules)
print(loaded)
"""


def test_importing_substantial_imports_no_framework() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
