"""Checkpoints store only what is new; the finished record is the same bytes as before.

A checkpoint of a running session appends the envelope points added since the one before it
(sessions/log/store_write.py, table ``envelope_chunks``), so its work and the bytes it writes do
not grow with the session. The finished or recovered record is assembled once, and its
canonical bytes and hash are exactly those the log wrote when every checkpoint rewrote the
whole envelope (golden values below, taken from that code, commit 7d8f794).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import SupportsIndex, overload

import pytest

from sessions.log import LogError, LogErrorReason, SessionLog, SessionStatus, canonical_json
from tests.simhelpers import downgrade_log
from tests.test_log import (
    PROTOCOL,
    PROTOCOL_SHA,
    REPO,
    T0,
    TRIP,
    envelope,
    finish,
    measured,
    start,
)

# Golden values of the records written by _write_golden_log, from the code before appended
# chunks (every checkpoint rewrote the whole envelope): commit 7d8f794, re-taken on the main
# line just before the chunks were merged, once records carried their kind (schema 4).
GOLDEN = {
    "finished_hash": "22aa75a2b0f38ee3b6296061fa127ab0eec4dfb41bbf15c20645e2211cca2cad",
    "recovered_hash": "86c5373ba51e2a3f1cdfdc2fdb9cdd4c98a75b8ab262589a528c91c1d80c6b06",
    "envelope_column_sha256": "162a5c429f40ce7cdb45a43b02b0bd7eb934f4eca1ed607c3338e58b67b424c7",
    # the export (not the records) gained `device_voucher` (null here) with protocol 2.1
    "export_sha256": "8f4658cbd673bbd08a491599fb432fe5c2ed11490c4280e798441a60f774e397",
}


@pytest.fixture
def fixed_uuids(monkeypatch: pytest.MonkeyPatch) -> None:
    """log_id and session ids 00000000-...-0001, -0002, ...: a log written twice is the same."""
    numbers = itertools.count(1)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=next(numbers)))


def _write_golden_log(path: Path) -> tuple[str, str]:
    """A finished session checkpointed 20 times and one recovered after 4 checkpoints."""
    with SessionLog(path) as log:
        done = start(log)
        for half_minutes in range(1, 21):
            minutes = half_minutes / 2
            events = [TRIP] if minutes >= 6 else []
            log.checkpoint(
                done,
                **measured(minutes, safety_events=events),
                now_utc=T0 + timedelta(minutes=minutes),
            )
        finish(log, done, safety_events=[TRIP], status="tripped", reason="over")
        cut = start(log, slot=2, started=T0 + timedelta(hours=4))
        for minutes in (1.0, 2.0, 3.0, 3.7):
            log.checkpoint(
                cut, **measured(minutes), now_utc=T0 + timedelta(hours=4, minutes=minutes)
            )
    with SessionLog(path) as log:
        (recovered,) = log.recover_interrupted(T0 + timedelta(hours=9))
        assert recovered.session_id == cut
    return done, cut


def test_finished_and_recovered_records_keep_their_bytes_and_hashes(
    tmp_path: Path, fixed_uuids: None
) -> None:
    path = tmp_path / "liv.db"
    done, cut = _write_golden_log(path)
    with SessionLog(path, read_only=True) as log:
        assert log.verify().ok
        finished, recovered = log.get(done), log.get(cut)
        out = io.StringIO()
        assert log.export_jsonl(out) == 2
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (column,) = conn.execute(
            "SELECT envelope FROM sessions WHERE session_id = ?", (done,)
        ).fetchone()
    assert recovered.status is SessionStatus.INTERRUPTED
    assert len(recovered.envelope) == 2220  # every point of the last checkpoint
    assert len(finished.envelope) == 6000
    actual = {
        "finished_hash": finished.record_hash,
        "recovered_hash": recovered.record_hash,
        "envelope_column_sha256": hashlib.sha256(column.encode()).hexdigest(),
        "export_sha256": hashlib.sha256(out.getvalue().encode()).hexdigest(),
    }
    assert actual == GOLDEN


# --- the work of a checkpoint does not grow with the session -------------------------------------


class CountedEnvelope(list[tuple[float, float]]):
    """An envelope that counts the points read from it (by iteration or by index)."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        super().__init__(points)
        self.read = 0

    def __iter__(self) -> Iterator[tuple[float, float]]:
        for point in super().__iter__():
            self.read += 1
            yield point

    @overload
    def __getitem__(self, index: SupportsIndex) -> tuple[float, float]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[float, float]]: ...
    def __getitem__(
        self, index: SupportsIndex | slice
    ) -> tuple[float, float] | list[tuple[float, float]]:
        if isinstance(index, slice):
            part = super().__getitem__(index)
            self.read += len(part)
            return part
        self.read += 1
        return super().__getitem__(index)


def _wal_frames(conn: sqlite3.Connection) -> int:
    """Pages in the write-ahead log (a separate connection's passive checkpoint reports it)."""
    busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0
    return int(frames)


def test_the_work_of_a_checkpoint_does_not_grow_with_the_envelope(tmp_path: Path) -> None:
    """Points read and pages written per checkpoint, at 1 and at 10 minutes (5-s checkpoints).

    Before, each checkpoint read (checked, rounded, serialised) every point so far and
    rewrote the whole envelope: 600 points at 1 minute, 6000 at 10, and about 25 more pages.
    """
    path = tmp_path / "liv.db"
    full = envelope(10.0)
    reads: dict[int, int] = {}
    pages: dict[int, int] = {}
    with (
        SessionLog(path) as log,
        contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other,
    ):
        session_id = start(log)
        for step in range(1, 121):  # a checkpoint every 5 s: 50 new points each
            minutes = step / 12
            points = CountedEnvelope(full[: step * 50])
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the log starts empty
            log.checkpoint(
                session_id,
                **measured(minutes, envelope=points),
                now_utc=T0 + timedelta(minutes=minutes),
            )
            reads[step], pages[step] = points.read, _wal_frames(other)
        assert len(log.get(session_id).envelope) == 6000
    for step in (12, 120):  # 1 and 10 minutes
        assert reads[step] <= 51, f"checkpoint {step} read {reads[step]} points for 50 new"
    late, early = max(pages[s] for s in range(110, 121)), max(pages[s] for s in range(2, 13))
    assert late <= early, f"pages written per checkpoint: {early} at 1 minute, {late} at 10"
    assert late <= 6


# --- a killed host leaves every checkpointed point -----------------------------------------------


def _stored(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """The points as the log stores them (1 ms, 10 micro-g)."""
    return tuple((round(t, 3), round(g, 5)) for t, g in points)


def _chunk_rows(path: Path, session_id: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM envelope_chunks WHERE session_id = ?", (session_id,)
        ).fetchone()
    return int(count)


def test_recovery_after_kill_9_keeps_every_appended_chunk(tmp_path: Path) -> None:
    """Six checkpoints, each appending a minute of envelope, then SIGKILL mid-session."""
    path = tmp_path / "liv.db"
    code = textwrap.dedent(
        f"""
        import os, signal
        from datetime import UTC, date, datetime, timedelta
        from pathlib import Path
        from sessions.log import SessionLog

        t0 = datetime(2025, 1, 10, 7, 30, tzinfo=UTC)
        log = SessionLog(Path({str(path)!r}))
        session_id = log.start_session(
            patient_id="P001", device_id="LIV-0001", firmware_version="1.2.0",
            protocol_sha256={PROTOCOL_SHA!r}, protocol_json={PROTOCOL!r}, started_utc=t0,
            timezone="Europe/Berlin", local_date=date(2025, 1, 10), slot=1,
            minutes_prescribed=10.0, target_g=0.3)
        envelope = []
        for minute in range(1, 7):
            envelope += [((600 * (minute - 1) + i) / 10, 0.3 + 0.00001 * (i % 13))
                         for i in range(600)]
            log.checkpoint(session_id, minutes_at_dose=minute, envelope=envelope,
                freqs_hz=[30.0], safety_events=[], mean_error_pct=0.1, p95_abs_error_pct=0.9,
                exposure=None, now_utc=t0 + timedelta(minutes=minute))
        envelope.append((360.0, 0.31))  # measured after the last checkpoint: lost
        print(session_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
        check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    session_id = proc.stdout.strip()
    expected = [(i / 10, 0.3 + 0.00001 * (i % 600 % 13)) for i in range(3600)]
    assert _chunk_rows(path, session_id) == 6  # one chunk per checkpoint
    with SessionLog(path, read_only=True) as audit:  # the running record, as far as it got
        running = audit.get(session_id)
    assert running.status is SessionStatus.RUNNING
    assert running.envelope == _stored(expected)
    with SessionLog(path) as log:
        (record,) = log.recover_interrupted(T0 + timedelta(hours=1))
        assert log.get(session_id) == record
        assert log.verify().ok
    assert record.status is SessionStatus.INTERRUPTED
    assert record.minutes_at_dose == 6.0
    assert record.envelope == _stored(expected)
    assert record.ended_utc == T0 + timedelta(minutes=6)
    assert _chunk_rows(path, session_id) == 0  # the record holds them now
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (column,) = conn.execute(
            "SELECT envelope FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
    assert column == canonical_json([list(p) for p in record.envelope])


# --- what a checkpoint's envelope may be ---------------------------------------------------------


def test_an_envelope_that_does_not_extend_the_stored_one_replaces_it(tmp_path: Path) -> None:
    with SessionLog(tmp_path / "liv.db") as log:
        session_id = start(log)
        log.checkpoint(session_id, **measured(2.0), now_utc=T0 + timedelta(minutes=2))
        shorter = envelope(1.0)
        log.checkpoint(
            session_id, **measured(2.0, envelope=shorter), now_utc=T0 + timedelta(minutes=2.1)
        )
        assert log.get(session_id).envelope == _stored(shorter)
        changed = [*shorter[:-1], (59.9, 0.25), (60.0, 0.3)]  # its last stored point differs
        log.checkpoint(
            session_id, **measured(2.0, envelope=changed), now_utc=T0 + timedelta(minutes=2.2)
        )
        assert log.get(session_id).envelope == _stored(changed)
        longer = [*changed, (60.1, 0.31)]
        log.checkpoint(
            session_id, **measured(2.0, envelope=longer), now_utc=T0 + timedelta(minutes=2.3)
        )
        assert log.get(session_id).envelope == _stored(longer)
        assert _chunk_rows(log.path, session_id) == 2  # the replacement, then one point
        record = finish(log, session_id, envelope=longer)
        assert record.envelope == _stored(longer)
        assert log.verify().ok


def test_a_bad_new_point_writes_nothing_of_the_checkpoint(tmp_path: Path) -> None:
    with SessionLog(tmp_path / "liv.db") as log:
        session_id = start(log)
        log.checkpoint(session_id, **measured(1.0), now_utc=T0 + timedelta(minutes=1))
        bad = [*envelope(1.0), (60.0, float("nan"))]
        with pytest.raises(LogError, match=r"envelope\[600\] amplitude_g") as info:
            log.checkpoint(
                session_id, **measured(2.0, envelope=bad), now_utc=T0 + timedelta(minutes=2)
            )
        assert info.value.reason is LogErrorReason.INVALID
        kept = log.get(session_id)
        assert kept.minutes_at_dose == 1.0
        assert len(kept.envelope) == 600


def test_a_running_session_of_older_software_keeps_its_envelope(tmp_path: Path) -> None:
    """Schema 4 kept a running envelope in sessions.envelope: read, migrated and recovered."""
    path = tmp_path / "liv.db"
    points = envelope(3.0)
    with SessionLog(path) as log:
        session_id = start(log)
    column = canonical_json([[t, round(g, 5)] for t, g in points])
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        downgrade_log(conn, 4)
        conn.execute(
            "UPDATE sessions SET envelope = ?, minutes_at_dose = 3 WHERE session_id = ?",
            (column, session_id),
        )
    with SessionLog(path, read_only=True) as audit:  # read as it is, never migrated
        assert audit.get(session_id).envelope == _stored(points)
    with SessionLog(path) as log:
        (record,) = log.recover_interrupted(T0 + timedelta(hours=1))
        assert log.verify().ok
    assert record.envelope == _stored(points)
    assert record.minutes_at_dose == 3.0
