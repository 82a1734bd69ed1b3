"""A worker process for the benchmarks: python _serve.py URL THREADS.

Serves the benchmark workflows on the store at URL, prints "ready" once its
worker runs, and stops when its standard input closes.
"""

from __future__ import annotations

import sys

from _substantial import POLL, conductor_on


def main() -> None:
    url, threads = sys.argv[1], int(sys.argv[2])
    conductor = conductor_on(url)
    with conductor.run(threads=threads, poll_interval=POLL):
        print("ready", flush=True)
        sys.stdin.read()
    conductor.backend.close()


if __name__ == "__main__":
    main()
