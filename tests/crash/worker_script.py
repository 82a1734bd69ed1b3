"""A worker process for the crash tests: serves the crash workflows until it is killed.

    python worker_script.py URL READY_DIR [--threads N] [--lease-ttl S] [--cache-size N]

Once its worker is running it creates ``READY_DIR/<pid>``, so a test kills it
only once it can take runs. It needs ``crash_workflows`` importable (the
tests put this folder on ``PYTHONPATH``) and nothing else from the tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

import crash_workflows

from substantial import Conductor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("ready_dir")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--cache-size", type=int, default=1024)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    args = parser.parse_args()

    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s pid={os.getpid()} %(levelname)s %(name)s %(message)s"
    )
    conductor = Conductor(args.url)
    conductor.register(*crash_workflows.ALL)
    conductor.run(args.threads, lease_ttl=args.lease_ttl, cache_size=args.cache_size, poll_interval=args.poll_interval)
    (Path(args.ready_dir) / str(os.getpid())).touch()
    threading.Event().wait()  # serve until killed


if __name__ == "__main__":
    main()
