"""Red team: the files at the session log's path are not always the log.

Whoever holds the computer can put another program's database where the log should be, or a
symbolic link to a file outside the home. The log must refuse both without changing a byte,
a mode or a neighbour of that file (docs/log-format.md section 1: "left unchanged").
"""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from pathlib import Path

import pytest

from sessions.cli import main
from sessions.home import LivHome
from sessions.log import LogError, LogErrorReason, SessionLog
from tests.simhelpers import install_signed


def _other_database(path: Path, journal: str = "delete") -> Path:
    """Another program's SQLite database, readable by others (a browser's, a mail client's)."""
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.execute("CREATE TABLE bookmarks (url TEXT)")
    conn.execute("INSERT INTO bookmarks VALUES ('https://example.org')")
    conn.commit()
    conn.close()
    path.chmod(0o644)
    return path


def _state(path: Path) -> tuple[str, int, list[str]]:
    """The file's bytes, its mode and the names beside it."""
    return (
        hashlib.sha256(path.read_bytes()).hexdigest(),
        stat.S_IMODE(path.stat().st_mode),
        sorted(p.name for p in path.parent.iterdir()),
    )


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_programs_database_at_the_log_path_is_left_byte_for_byte_unchanged(
    tmp_path: Path, journal: str
) -> None:
    """Before: opening it to write switched it to WAL (header bytes changed), made it 0600 and
    put -wal and -shm files beside it, then said "it was left unchanged"."""
    other = _other_database(tmp_path / "places.sqlite", journal)
    before = _state(other)
    with pytest.raises(LogError) as refused:
        SessionLog(other)
    assert refused.value.reason is LogErrorReason.CORRUPT
    assert "it holds another kind of database; it was left unchanged" in str(refused.value)
    assert _state(other) == before


def _home_with_link(tmp_path: Path, target: Path) -> LivHome:
    home = LivHome(tmp_path / "home")
    install_signed(home)
    home.db_path().symlink_to(target)
    return home


@pytest.mark.parametrize("target", ["another database", "an empty file"])
def test_a_log_path_that_is_a_symbolic_link_is_not_written_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if target == "an empty file":
        victim = outside / "notes.txt"
        victim.write_bytes(b"")
        victim.chmod(0o644)
    else:
        victim = _other_database(outside / "places.sqlite")
    before = _state(victim)
    home = _home_with_link(tmp_path, victim)
    capsys.readouterr()
    assert main(["status", "--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "is a link to another file, so nothing was written to it" in err
    assert _state(victim) == before
    assert home.db_path().is_symlink()
