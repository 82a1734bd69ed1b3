"""The files backend's due entries: hard links to a blank file, so moving a run makes and frees no inode."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from substantial.backends import FSBackend, Message


@pytest.fixture
def fs(tmp_path: Path) -> FSBackend:
    return FSBackend(tmp_path / "store")


def _entries(fs: FSBackend, queue: str = "q") -> list[Path]:
    return sorted(p for p in (fs.root / "queues" / queue).rglob("*") if p.is_file())


def _blanks(fs: FSBackend) -> list[str]:
    return sorted(os.listdir(fs.root / "blank"), key=int)


def _linking_fails(monkeypatch: pytest.MonkeyPatch, code: int, when: Callable[[str], bool]) -> list[str]:
    """Make ``os.link`` fail with ``code`` for the sources ``when`` picks; returns every source it was asked to link."""
    real, sources = os.link, []

    def link(src: str, dst: str) -> None:
        sources.append(os.path.basename(src))
        if when(src):
            raise OSError(code, os.strerror(code))
        real(src, dst)

    monkeypatch.setattr(os, "link", link)
    return sources


def test_entries_are_links_to_one_blank_and_moving_a_run_allocates_no_inode(fs: FSBackend) -> None:
    now = time.time()
    for run_id in ("a", "b", "c"):
        fs.schedule("q", run_id, now - 1)
    blank = (fs.root / "blank" / "0").stat()
    entries = _entries(fs)
    assert len(entries) == 3
    assert {e.stat().st_ino for e in entries} == {blank.st_ino}
    assert blank.st_nlink == 4
    fs.schedule("q", "a", now + 3600)  # a move: a new link, the old one removed
    fs.delete_run("b")
    assert {e.stat().st_ino for e in _entries(fs)} == {blank.st_ino}
    assert (fs.root / "blank" / "0").stat().st_nlink == 3
    assert fs.due("q", now, 10) == ["c"]
    assert fs.due("q", now + 3601, 10) == ["c", "a"]


def test_a_full_blank_is_followed_by_the_next_which_a_new_client_takes(
    fs: FSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    fs.schedule("q", "a", now - 1)
    sources = _linking_fails(monkeypatch, errno.EMLINK, lambda src: src.endswith(f"{os.sep}0"))
    fs.schedule("q", "b", now - 1)
    assert sources == ["0", "1"]
    assert _blanks(fs) == ["0", "1"]
    monkeypatch.undo()
    other = FSBackend(fs.root)
    other.schedule("q", "c", now - 1)
    inodes = {p.name.partition("-")[2]: p.stat().st_ino for p in _entries(fs)}
    assert inodes["a"] == (fs.root / "blank" / "0").stat().st_ino
    assert inodes["b"] == inodes["c"] == (fs.root / "blank" / "1").stat().st_ino
    assert fs.due("q", now, 10) == ["a", "b", "c"]


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV], ids=["no-links", "other-filesystem"])
def test_a_filesystem_without_hard_links_gets_plain_empty_entries(
    fs: FSBackend, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    now = time.time()
    sources = _linking_fails(monkeypatch, code, lambda src: True)
    fs.schedule("q", "a", now - 1)
    fs.schedule("q", "b", now - 1)
    assert len(sources) == 1  # asked once, then no more
    entries = _entries(fs)
    assert [e.stat().st_nlink for e in entries] == [1, 1]
    assert [e.read_bytes() for e in entries] == [b"", b""]
    assert fs.due("q", now, 10) == ["a", "b"]


def test_a_blank_removed_under_the_client_is_made_again(fs: FSBackend) -> None:
    now = time.time()
    fs.schedule("q", "a", now - 1)
    (fs.root / "blank" / "0").unlink()
    fs.schedule("q", "b", now - 1)
    assert _blanks(fs) == ["0"]
    assert _entries(fs)[-1].stat().st_ino == (fs.root / "blank" / "0").stat().st_ino
    assert fs.due("q", now, 10) == ["a", "b"]


def test_an_error_other_than_a_full_blank_or_no_links_is_raised(fs: FSBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    _linking_fails(monkeypatch, errno.ENOSPC, lambda src: True)
    with pytest.raises(OSError) as raised:
        fs.schedule("q", "a", time.time())
    assert raised.value.errno == errno.ENOSPC


def test_a_start_links_its_entry_too(fs: FSBackend) -> None:
    fs.start_run("q", "r", b"summary", Message("start", b"go"))
    (entry,) = _entries(fs)
    assert entry.stat().st_ino == (fs.root / "blank" / "0").stat().st_ino
    assert fs.due("q", time.time(), 10) == ["r"]


def test_an_entry_an_earlier_version_made_as_a_plain_file_is_found_and_moved(fs: FSBackend) -> None:
    now = time.time()
    fs.schedule("q", "r", now - 1)
    (entry,) = _entries(fs)
    entry.unlink()
    entry.touch()  # as an earlier version made it: its own inode
    assert fs.due("q", now, 10) == ["r"]
    fs.schedule("q", "r", now + 3600)
    assert not entry.exists()
    (moved,) = _entries(fs)
    assert moved.stat().st_ino == (fs.root / "blank" / "0").stat().st_ino


def _minute_bucket(fs: FSBackend, due_at: float, queue: str = "q") -> Path:
    return Path(fs._due.path(queue, "x", due_at)).parent


def test_a_bucket_of_this_minute_stays_when_its_last_entry_goes_and_is_used_again(
    fs: FSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_mkdir = os.mkdir
    for attempt in range(3):  # again if a new minute began in between
        now = time.time()
        fs.schedule("q", f"a{attempt}", now)
        fs.unschedule("q", f"a{attempt}")
        made.clear()
        monkeypatch.setattr(os, "mkdir", lambda path, *args: made.append(path) or real_mkdir(path, *args))
        fs.schedule("q", f"a{attempt}", now)
        monkeypatch.undo()
        if _minute_bucket(fs, now) == _minute_bucket(fs, time.time()):
            break
    assert made == []  # no bucket made again
    fs.unschedule("q", f"a{attempt}")
    assert _minute_bucket(fs, now).is_dir()
    assert _entries(fs) == []


def test_a_past_bucket_goes_with_its_last_entry(fs: FSBackend) -> None:
    now = time.time()
    past = now - 3 * 86400
    fs.schedule("q", "r", past)
    fs.schedule("q", "r", now + 3600)
    minute = _minute_bucket(fs, past)
    assert not minute.exists() and not minute.parent.exists()  # the minute's and the day's
    assert fs.due("q", now + 3600, 10) == ["r"]


@pytest.mark.parametrize("walk", ["due", "claim"])
def test_a_walk_removes_an_empty_bucket_once_it_is_past(fs: FSBackend, walk: str) -> None:
    now = time.time()
    fs.schedule("q", "r", now)
    fs.schedule("q", "r", now + 86400)  # this minute's bucket stays, empty
    minute = _minute_bucket(fs, now)
    assert minute.is_dir()
    if walk == "due":
        assert fs.due("q", now, 10) == []
    else:
        assert fs.claim_due("q", now, "w", 30, limit=1, scan=10) == []
    assert minute.is_dir()  # not past yet
    later = now + 120
    if walk == "due":
        assert fs.due("q", later, 10) == []
    else:
        assert fs.claim_due("q", later, "w", 30, limit=1, scan=10) == []
    assert not minute.exists()
    assert fs.due("q", now + 86400, 10) == ["r"]


@pytest.mark.parametrize("walk", ["due", "claim"])
def test_a_walk_removes_a_past_day_whose_minutes_went_while_it_was_today(fs: FSBackend, walk: str) -> None:
    now = time.time()
    fs.schedule("q", "r", now + 86400)  # the queue stays in use
    past = _minute_bucket(fs, now - 3 * 86400)
    past.parent.mkdir(parents=True)  # a day bucket with no minute left in it
    if walk == "due":
        assert fs.due("q", now, 10) == []
    else:
        assert fs.claim_due("q", now, "w", 30, limit=1, scan=10) == []
    assert not past.parent.exists()
    assert fs.due("q", now + 86400, 10) == ["r"]
