"""µs per save step on FSBackend against a raw append + fsync loop on the same disk.

Run: python benchmarks/fs_step.py [steps] [folder]
Prints both costs and their ratio (target: at most 1.3, issue 9): the medians
of five rounds of ``steps``, the raw loop and the save steps in turn.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from _jobs import alternate, sequential_step_us, step_record

from substantial import Conductor
from substantial.backends import FSBackend
from substantial.backends.fs_records import frame

ROUNDS = 5


def substantial_step_us(root: Path, steps: int) -> float:
    return sequential_step_us(Conductor(FSBackend(root / "store")), steps)


def raw_append_fsync_us(root: Path, steps: int) -> float:
    """The floor: the same framed record bytes appended and fsync'd, one per step."""
    record = step_record(steps)
    data = frame(record)
    with open(root / "raw.log", "ab") as f:
        began = time.perf_counter()
        for _ in range(steps):
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        elapsed = time.perf_counter() - began
    return elapsed / steps * 1e6


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    parent = sys.argv[2] if len(sys.argv) > 2 else None
    with tempfile.TemporaryDirectory(dir=parent) as folder:
        root = Path(folder)
        raw, ours = alternate(
            lambda n: raw_append_fsync_us(root, n), lambda n: substantial_step_us(root, n), steps, ROUNDS
        )
    print(f"steps: {steps} on {root.parent}")
    print(f"raw append + fsync:    {raw:9.1f} µs per record")
    print(f"substantial save step: {ours:9.1f} µs per step")
    print(f"ratio: {ours / raw:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
