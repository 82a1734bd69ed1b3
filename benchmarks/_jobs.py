"""The trivial step every benchmark runs: importable, so RQ workers can find it."""

from __future__ import annotations


def job(i: int) -> dict[str, int]:
    return {"i": i}
