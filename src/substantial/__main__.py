"""``python -m substantial``: the command line."""

from __future__ import annotations

from substantial.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
