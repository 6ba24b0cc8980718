"""The session log split along its seams, and two leftovers around it.

``sessions/log/storage.py`` was one class of ~1,600 lines; :class:`SessionStore` is now
assembled from parts (``store_open``, ``store_read``, ``store_write``, ``store_vouch``), and
every name importable from ``storage`` before stays importable. ``liv demo`` removes the log's
folder of running sessions' locks by the name the log gives it, not one it builds itself; and
``liv status`` reads the study's summaries once, also when sessions were recorded with the clock
set back.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pytest_mock import MockerFixture

import sessions.log
from sessions.cli import main
from sessions.commands.demo import drop_running_locks_folder
from sessions.commands.status import _status_reads
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStore, storage
from sessions.protocol import protocol_from_dict
from sessions.scheduling import history_start
from tests.simhelpers import install_signed
from tests.test_clinic_db import protocol_dict
from tests.test_clock_set_back import _write

ZONE = "Europe/Berlin"


def test_the_names_storage_held_before_the_split_are_still_importable_from_it() -> None:
    for name in ("SessionStore", "default_db_path", "_SCHEMA_V1", "_MIGRATIONS", "_tighten",
                 "_ALL_BUT_ENVELOPE", "set_back_records"):  # fmt: skip
        assert hasattr(storage, name), name
    assert storage.SessionStore is sessions.log.SessionStore
    assert issubclass(SessionLog, storage.SessionStore)


# --- liv demo and the log agree on the lock folder ------------------------------------------


def test_the_demo_removes_the_lock_folder_the_log_made_and_nothing_else(tmp_path: Path) -> None:
    """Whatever the log names its folder of running sessions' locks, the demo's cleanup removes
    that folder: it would stay behind if the name were changed in one place only."""
    db = tmp_path / "liv.db"
    beside = {"liv.db", "liv.db-wal", "liv.db-shm"}
    protocol = protocol_from_dict(protocol_dict("P1", date(2026, 1, 1), 365))
    with SessionLog(db) as log:
        _write(log, protocol, datetime(2026, 2, 2, 7, tzinfo=UTC), 1)  # takes a lock, frees it
    made = [p for p in tmp_path.iterdir() if p.name not in beside]
    assert [p.is_dir() for p in made] == [True], made  # the log's lock folder, now empty
    assert made[0] == sessions.log.running_locks_folder(db)
    drop_running_locks_folder(db)
    assert {p.name for p in tmp_path.iterdir()} <= beside


def test_the_demo_keeps_a_lock_folder_that_still_holds_a_lock(tmp_path: Path) -> None:
    db = tmp_path / "liv.db"
    folder = sessions.log.running_locks_folder(db)
    folder.mkdir()
    (folder / "some-session.lock").write_bytes(b"{}")
    drop_running_locks_folder(db)
    assert (folder / "some-session.lock").is_file()


# --- liv status reads the summaries once ----------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> LivHome:
    h = LivHome(tmp_path / "home")
    h.ensure()
    today = datetime.now(ZoneInfo(ZONE)).date()
    install_signed(
        h, timezone=ZONE, study_start=(today - timedelta(days=40)).isoformat(),
        study_end=(today + timedelta(days=30)).isoformat(),
    )  # fmt: skip
    return h


def _status(home: LivHome, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(["status", *argv, "--home", str(home.root)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return out


def test_status_reads_the_summaries_once_with_and_without_set_back_sessions(
    home: LivHome, capsys: pytest.CaptureFixture[str], mocker: MockerFixture
) -> None:
    protocol = home.protocol()
    now = datetime.now(UTC)
    reads = mocker.spy(SessionStore, "summaries")
    with SessionLog(home.db_path()) as log:
        _write(log, protocol, now - timedelta(days=20), 1)
    _status(home, capsys)
    assert reads.call_count == 1
    with SessionLog(home.db_path()) as log:  # one set back long ago, one in the recent days
        old = _write(log, protocol, now - timedelta(days=21), 2)
        _write(log, protocol, now - timedelta(days=3), 1)
        recent = _write(log, protocol, now - timedelta(days=4), 2)
    reads.reset_mock()
    out = _status(home, capsys)
    assert reads.call_count == 1, reads.call_args_list
    day = (now - timedelta(days=4)).astimezone(protocol.zone).date()
    assert f"The session dated {day:%A} {day.day} {day:%B %Y} started before" in out
    reads.reset_mock()
    data = json.loads(_status(home, capsys, "--json"))
    assert reads.call_count == 1, reads.call_args_list
    assert data["clock_set_back_sessions"] == [old, recent]


def test_status_lists_the_same_recent_sessions_as_a_read_from_the_history_start(
    home: LivHome,
) -> None:
    """The recent sessions taken from the study's summaries are those a read from the history
    start lists, in the same order, less the ones set back."""
    protocol = home.protocol()
    now = datetime.now(UTC)
    with SessionLog(home.db_path()) as log:
        for days in (25, 9, 2, 1):
            _write(log, protocol, now - timedelta(days=days, hours=5), 1)
            _write(log, protocol, now - timedelta(days=days), 2)
        back = _write(log, protocol, now - timedelta(days=1, hours=12), 2)  # set back
        recent, minutes, set_back = _status_reads(log, protocol, now, demo=False)
        listed = log.summaries(protocol.patient_id, since=history_start(protocol, now))
    assert list(set_back) == [back]
    assert recent == [s for s in listed if s.session_id != back]
    assert len(recent) == len(listed) - 1 > 0
    assert sum(minutes.values()) == pytest.approx(10.0 * 8)


def test_status_counts_a_session_dated_on_the_history_start_among_the_recent(
    home: LivHome,
) -> None:
    """With set-back sessions, the recent ones are taken from the study's summaries from the
    history start on, that day included (as ``summaries(since=...)`` bounds it): a session
    dated that very day is listed, one of the day before is not."""
    protocol = home.protocol()
    now = datetime.now(UTC)
    since = history_start(protocol, now)

    def noon(day: date) -> datetime:
        return datetime.combine(day, time(12), tzinfo=protocol.zone).astimezone(UTC)

    with SessionLog(home.db_path()) as log:
        _write(log, protocol, noon(since - timedelta(days=1)), 1)
        first = _write(log, protocol, noon(since), 1)
        later = _write(log, protocol, noon(since + timedelta(days=1)), 1)
        back = _write(log, protocol, noon(since + timedelta(days=1)) - timedelta(hours=3), 2)
        recent, _, set_back = _status_reads(log, protocol, now, demo=False)
    assert list(set_back) == [back]  # it ended three hours before the one written before it
    assert [s.session_id for s in recent] == [first, later]
