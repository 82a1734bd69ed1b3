"""How the files backend names a run's folder, and reads a run id back from a folder's name."""

from __future__ import annotations

import hashlib
import os

from substantial.backends.base import check_run_id

NAME_MAX = 200  # longer folder names become a hash
_REMEMBERED = 4096  # run id -> folder, kept for the hot paths


def run_dir_name(run_id: str) -> str:
    """A folder name for a run id that no two ids share, even on case-insensitive filesystems.

    Upper-case letters become ``+`` and the lower-case letter; a name that
    would be too long becomes ``~`` and a hash (the id is then kept in ``id``).
    """
    name = "".join(f"+{ch.lower()}" if ch.isupper() else ch for ch in check_run_id(run_id))
    if len(name) > NAME_MAX:
        return "~" + hashlib.sha256(run_id.encode()).hexdigest()
    return name


def run_id_of(name: str) -> str:
    """The run id a folder name spells (not a hashed ``~`` name: its id is in its ``id`` file)."""
    out, upper = [], False
    for ch in name:
        if ch == "+":
            upper = True
            continue
        out.append(ch.upper() if upper else ch)
        upper = False
    return "".join(out)


class RunFolders:
    """Run id -> its folder under ``runs``, as a string (the hot paths skip pathlib), remembered."""

    def __init__(self, runs: str) -> None:
        self._runs = runs
        self._known: dict[str, str] = {}

    def of(self, run_id: str) -> str:
        """The run's folder; raises ``InvalidRunId``."""
        folder = self._known.get(run_id) if type(run_id) is str else None
        if folder is None:
            folder = os.path.join(self._runs, run_dir_name(run_id))
            if len(self._known) >= _REMEMBERED:
                self._known.clear()
            self._known[run_id] = folder
        return folder
