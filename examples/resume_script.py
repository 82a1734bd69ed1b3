"""A script whose run survives Ctrl-C: run it, press Ctrl-C while it waits, run it again.

    python examples/resume_script.py               # runs stored in ./.substantial-resume
    python examples/resume_script.py /tmp/runs     # or in a folder of your choice

The run imports five batches with a pause between them. Its id is fixed, so
``start`` is idempotent: the second invocation starts nothing new, it picks up
the run the first one left, and the batches already recorded are not imported
again. Once the run has finished, another invocation prints its result.
Delete the folder to start over.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from substantial import Conductor, Context, workflow
from substantial.backends import FSBackend

RUN_ID = "nightly-import"
BATCHES = 5


def import_batch(n: int) -> int:
    print(f"importing batch {n} (process {os.getpid()})", flush=True)
    return 100 * n  # rows imported: call your real import here


@workflow()
def nightly_import(c: Context, batches: int, pause: float):
    rows = 0
    for n in range(batches):
        rows += yield c.save(lambda n=n: import_batch(n), key=f"batch-{n}")
        if n + 1 < batches:
            yield c.sleep(pause)  # durable: stopping here loses nothing
    return {"batches": batches, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=".substantial-resume", help="where the runs are stored")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between batches (default: 2)")
    args = parser.parse_args(argv)

    conductor = Conductor(FSBackend(Path(args.folder)))
    conductor.register(nightly_import)
    run = conductor.start(nightly_import, BATCHES, args.pause, run_id=RUN_ID)  # or the existing run
    status = run.status()
    if not status.finished:
        print(f"run {run.id} is {status}: press Ctrl-C while it waits, then run this script again", flush=True)
    try:
        with conductor.run(threads=2):  # Ctrl-C stops the worker; the turn in progress finishes first
            result = run.result()
    except KeyboardInterrupt:
        print(f"\ninterrupted: run {run.id} is {run.status()} in {args.folder}; run this script again to resume it")
        return 130
    print(f"done: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
