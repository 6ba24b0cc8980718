"""Session log: durability, permissions, the hash chain, tamper detection, export/import, errors.

Every test works on real SQLite files in tmp_path. Tampering is done the way an attacker would:
with raw sqlite3 on the file, dropping the append-only triggers first. The chain is also
re-verified by an independent auditor written here from docs/log-format.md, so a mistake shared
by the writer and ``verify`` still shows up.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.errors import LivError
from sessions.log import (
    EXPORT_FIELDS,
    GENESIS_HASH,
    OPTIONAL_FIELDS,
    RECOVERY_REASON,
    SCHEMA_VERSION,
    LogError,
    LogErrorReason,
    SessionLog,
    SessionRecord,
    SessionStatus,
    _explain_sqlite,
    canonical_json,
    default_db_path,
    record_hash,
)

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 1, 10, 7, 30, tzinfo=UTC)
DAY = date(2025, 1, 10)
PROTOCOL = '{"name":"AI bone loss","target_g":0.3,"freq_hz":[30,45],"minutes":10}'
PROTOCOL_SHA = hashlib.sha256(PROTOCOL.encode()).hexdigest()
EXPOSURE = {"a_w_m_s2": 0.886, "a8_m_s2": 0.181, "vdv_m_s1_75": 5.8, "duration_s": 600.0}
TRIP = {
    "reason": "over_acceleration",
    "text": "measured peak acceleration above the ceiling",
    "t_s": 312.4,
    "sample_index": 312400,
    "detail": "0.52 g > 0.50 g",
    "values": {"peak_g": 0.52, "ceiling_g": 0.5, "ratio": float("inf")},
}


# --- helpers -------------------------------------------------------------------------------------


def envelope(minutes: float) -> list[tuple[float, float]]:
    """About 10 points per second, amplitude wobbling around 0.3 g."""
    return [(i / 10, 0.3 + 0.0011 * (i % 7) - 0.003) for i in range(int(minutes * 600))]


def measured(minutes: float, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "minutes_at_dose": minutes,
        "envelope": envelope(minutes),
        "freqs_hz": [30.0, 45.0],
        "safety_events": [],
        "mean_error_pct": -0.42,
        "p95_abs_error_pct": 1.37,
        "error_uncertainty_pct": 0.31,
        "exposure": dict(EXPOSURE),
    }
    values.update(overrides)
    return values


def start(
    log: SessionLog,
    *,
    patient: str = "P001",
    day: date = DAY,
    slot: int = 1,
    started: datetime = T0,
    **kwargs: Any,
) -> str:
    return log.start_session(
        patient_id=patient,
        device_id=kwargs.pop("device_id", "LIV-0001"),
        firmware_version="1.2.0",
        protocol_sha256=PROTOCOL_SHA,
        protocol_json=PROTOCOL,
        started_utc=started,
        timezone=kwargs.pop("timezone", "Europe/Berlin"),
        local_date=day,
        slot=slot,
        minutes_prescribed=10.0,
        target_g=0.3,
        **kwargs,
    )


def finish(
    log: SessionLog,
    session_id: str,
    *,
    status: str = "completed",
    reason: str = "",
    minutes: float = 10.0,
    ended: datetime | None = None,
    **overrides: Any,
) -> SessionRecord:
    return log.finish_session(
        session_id,
        status=status,
        reason=reason,
        ended_utc=ended or T0 + timedelta(minutes=minutes, seconds=3),
        **measured(minutes, **overrides),
    )


def fill(log: SessionLog, patient: str = "P001", device_id: str = "LIV-0001") -> list[str]:
    """Three finished sessions; the middle one uses every optional field.

    Their envelopes hold one point a second (the product writes ten) to keep the suite fast;
    the full density is exercised by the round-trip and recovery tests.
    """
    first = start(log, patient=patient, device_id=device_id)
    finish(
        log,
        first,
        status="stopped_by_patient",
        reason="patient stepped off",
        minutes=2.5,
        envelope=envelope(2.5)[::10],
    )
    second = start(
        log,
        patient=patient,
        device_id=device_id,
        started=T0 + timedelta(minutes=5),
        override_reason="clinician allowed a session after the stop",
        resumed_from=first,
    )
    finish(
        log,
        second,
        status="tripped",
        reason="over_acceleration",
        minutes=5.2,
        safety_events=[TRIP],
        envelope=envelope(5.2)[::10],
    )
    third = start(
        log, patient=patient, device_id=device_id, slot=2, started=T0 + timedelta(hours=4)
    )
    finish(log, third, ended=T0 + timedelta(hours=4, minutes=10), envelope=envelope(10.0)[::10])
    return [first, second, third]


@contextlib.contextmanager
def raw_db(path: Path, *, drop_triggers: bool = False) -> Iterator[sqlite3.Connection]:
    """The attacker's view: plain sqlite3 on the file, triggers dropped if asked."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        if drop_triggers:
            names = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
            ]
            for name in names:
                conn.execute(f"DROP TRIGGER {name}")
        yield conn
        conn.commit()


def db_path(tmp_path: Path, name: str = "liv") -> Path:
    return tmp_path / name / "liv.db"


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SessionLog]:
    with SessionLog(db_path(tmp_path)) as opened:
        yield opened


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A closed log holding the three sessions of :func:`fill` (copied by tamper tests)."""
    path = tmp_path_factory.mktemp("template") / "liv.db"
    with SessionLog(path) as log:
        ids = fill(log)
    return path, ids


def filled_copy(template: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    source, ids = template
    path = db_path(tmp_path)
    path.parent.mkdir(mode=0o700)
    shutil.copyfile(source, path)  # closed: the WAL is checkpointed into the main file
    return path, ids


def export_text(log: SessionLog) -> str:
    out = io.StringIO()
    log.export_jsonl(out)
    return out.getvalue()


# An auditor's verifier written from docs/log-format.md alone (not from sessions.log).
def auditor_canonical(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        text = f"{value:.6f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(auditor_canonical(v) for v in value) + "]"
    items = [
        json.dumps(k, ensure_ascii=False) + ":" + auditor_canonical(value[k]) for k in sorted(value)
    ]
    return "{" + ",".join(items) + "}"


def auditor_verify(jsonl: str) -> dict[str, int]:
    """Re-verify an export; returns records per chain, raises AssertionError on any fault."""
    chains: dict[str, list[dict[str, Any]]] = {}
    for line in jsonl.splitlines():
        record = json.loads(line)
        chains.setdefault(record["log_id"], []).append(record)
    for records in chains.values():
        prev = "0" * 64
        for index, record in enumerate(sorted(records, key=lambda r: r["chain_index"])):
            assert record["chain_index"] == index
            assert record["prev_hash"] == prev
            # the two hashes and the plate's countersignature are not hashed (log-format.md 7)
            body = {
                k: v
                for k, v in record.items()
                if k not in ("prev_hash", "record_hash", "device_voucher")
            }
            digest = hashlib.sha256((prev + auditor_canonical(body)).encode("utf-8")).hexdigest()
            assert digest == record["record_hash"]
            prev = digest
    return {log_id: len(records) for log_id, records in chains.items()}


# --- round trip, durability settings, permissions ------------------------------------------------


def test_start_checkpoint_finish_round_trip(log: SessionLog) -> None:
    session_id = start(log)
    running = log.get(session_id)
    assert running.status is SessionStatus.RUNNING
    assert running.chain_index is None
    assert running.record_hash is None
    assert running.minutes_at_dose == 0.0

    log.checkpoint(session_id, **measured(4.0), now_utc=T0 + timedelta(minutes=4))
    mid = log.get(session_id)
    assert mid.status is SessionStatus.RUNNING
    assert mid.minutes_at_dose == 4.0
    assert len(mid.envelope) == 2400
    assert mid.last_checkpoint_utc == T0 + timedelta(minutes=4)

    done = finish(log, session_id, safety_events=[TRIP], status="tripped", reason="over")
    assert log.get(session_id) == done
    assert done.status is SessionStatus.TRIPPED
    assert done.reason == "over"
    assert (done.chain_index, done.prev_hash) == (0, GENESIS_HASH)
    assert done.record_hash is not None
    assert len(done.record_hash) == 64
    assert done.log_id == log.log_id
    assert done.patient_id == "P001"
    assert done.device_id == "LIV-0001"
    assert done.firmware_version == "1.2.0"
    assert (done.protocol_sha256, done.protocol_json) == (PROTOCOL_SHA, PROTOCOL)
    assert done.started_utc == T0
    assert done.started_local.isoformat() == "2025-01-10T08:30:00+01:00"  # Berlin, winter
    assert done.ended_utc == T0 + timedelta(minutes=10, seconds=3)
    assert done.ended_local is not None
    assert done.ended_local.isoformat() == "2025-01-10T08:40:03+01:00"
    assert (done.timezone, done.local_date, done.slot) == ("Europe/Berlin", DAY, 1)
    assert (done.override, done.override_reason, done.resumed_from) == (False, None, None)
    assert (done.minutes_prescribed, done.minutes_at_dose, done.target_g) == (10.0, 10.0, 0.3)
    assert done.freqs_hz == (30.0, 45.0)
    assert (done.mean_error_pct, done.p95_abs_error_pct) == (-0.42, 1.37)
    assert done.error_uncertainty_pct == 0.31
    assert done.exposure == EXPOSURE
    assert len(done.envelope) == 6000
    assert done.envelope[7] == (0.7, 0.297)  # quantized to 1 ms and 10 micro-g
    event = done.safety_events[0]
    assert event["values"] == {"peak_g": 0.52, "ceiling_g": 0.5, "ratio": "Infinity"}
    assert event["reason"] == "over_acceleration"
    assert event["sample_index"] == 312400


def test_local_time_follows_the_zone_and_summer_time(log: SessionLog) -> None:
    summer = datetime(2025, 7, 1, 6, 0, tzinfo=UTC)
    session_id = start(log, started=summer, timezone="America/New_York", day=date(2025, 7, 1))
    record = log.get(session_id)
    assert record.started_local.isoformat() == "2025-07-01T02:00:00-04:00"


def test_database_folder_and_files_are_private(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with SessionLog(path) as log:
        start(log)
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        for name in ("liv.db", "liv.db-wal", "liv.db-shm"):
            assert stat.S_IMODE(os.stat(path.parent / name).st_mode) == 0o600, name
        running = path.parent / "liv.db.running"  # per-session liveness locks
        assert stat.S_IMODE(os.stat(running).st_mode) == 0o700
        (lock,) = running.iterdir()
        assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600


def test_existing_file_with_loose_permissions_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "liv.db"
    with SessionLog(path):
        pass
    os.chmod(path, 0o644)
    with SessionLog(path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_wal_full_sync_and_meta(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with SessionLog(path) as log:
        log_id = log.log_id
        conn = log._conn  # the log's own connection: synchronous is per connection
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with raw_db(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(raw.execute("SELECT key, value FROM meta").fetchall())
    assert meta == {
        "schema_version": str(SCHEMA_VERSION),
        "log_id": log_id,
        "vouched_from_index": "0",  # a new log: every record is countersigned by the plate
    }
    with SessionLog(path) as again:
        assert again.log_id == log_id  # created once


# --- the chain and verify ------------------------------------------------------------------------


def test_verify_passes_on_a_good_log(log: SessionLog) -> None:
    ids = fill(log)
    running = start(log, slot=2, started=T0 + timedelta(hours=9))  # running rows are not chained
    result = log.verify()
    assert result.ok
    assert result.first_bad is None
    assert result.records_checked == 3
    records = [log.get(i) for i in ids]
    assert [r.chain_index for r in records] == [0, 1, 2]
    assert records[1].prev_hash == records[0].record_hash
    assert records[2].prev_hash == records[1].record_hash
    assert result.heads == {log.log_id: records[2].record_hash}
    assert log.get(running).chain_index is None


def test_an_independent_auditor_reproduces_every_hash(log: SessionLog) -> None:
    fill(log)
    assert auditor_verify(export_text(log)) == {log.log_id: 3}


def _doc_block(language: str) -> str:
    text = (REPO / "docs" / "log-format.md").read_text(encoding="utf-8")
    start = text.index(f"```{language}\n") + len(language) + 4
    return text[start : text.index("```", start)]


def test_the_example_line_in_the_docs_verifies() -> None:
    line = _doc_block("json").strip()
    record = json.loads(line)
    # every field a record must have, its plate's countersignature, and optional ones (kind)
    assert set(EXPORT_FIELDS) - OPTIONAL_FIELDS <= set(record) - {"device_voucher"}
    assert set(record) <= {*EXPORT_FIELDS, "device_voucher"}
    assert auditor_verify(line) == {record["log_id"]: 1}
    assert canonical_json(record) == line


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_javascript_verifier_in_the_docs_agrees(tmp_path: Path) -> None:
    script = tmp_path / "verify.js"
    script.write_text(_doc_block("js"), encoding="utf-8")
    with SessionLog(db_path(tmp_path, "a")) as a, SessionLog(db_path(tmp_path, "b")) as b:
        fill(a)
        fill(b, patient="P002", device_id="LIV-0002")
        b.import_jsonl(io.StringIO(export_text(a)))
        text = export_text(b)
    good = tmp_path / "good.jsonl"
    good.write_text(text, encoding="utf-8")
    run = [shutil.which("node") or "node", str(script)]
    proc = subprocess.run(
        [*run, str(good)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("3 records") == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_tamper_line(text, 4, target_g=0.31), encoding="utf-8")
    proc = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert "BAD" in proc.stdout


def test_canonical_json_golden_vector() -> None:
    value = {
        "b": [1.0, 0.1, -0.0, 2.5e-7, 1e-6, 100, -3.25, 0.30000000000000004],
        "a": 'é\n"\\/\u2028\x01\x7f',
        "c": None,
        "d": [True, False],
        "ä": {"z": 1, "y": 2},
    }
    expected = (
        '{"a":"é\\n\\"\\\\/\u2028\\u0001\x7f","b":[1,0.1,0,0,0.000001,100,-3.25,0.3],'
        '"c":null,"d":[true,false],"ä":{"y":2,"z":1}}'
    )
    assert canonical_json(value) == expected
    assert auditor_canonical(value) == expected
    # The hash of a fixed record is frozen: changing the rule would orphan every existing log.
    record = {"session_id": "s", "minutes_at_dose": 9.5, "status": "completed"}
    assert (
        record_hash(GENESIS_HASH, record)
        == hashlib.sha256(
            (
                GENESIS_HASH + '{"minutes_at_dose":9.5,"session_id":"s","status":"completed"}'
            ).encode()
        ).hexdigest()
    )
    assert record_hash(GENESIS_HASH, record) == (
        "a2f145b2528978e80f2d7e32b18bcb60ecd164216380c28a4cffb52af9615c5b"
    )


def _edit(column: str, value: Any) -> Any:
    """A plausible forged value for one column of a chained row."""
    if column == "freqs_hz":
        return json.dumps([*json.loads(value), 90])
    if column == "envelope":
        points = json.loads(value)
        points[100][1] += 0.05
        return json.dumps(points)
    if column == "safety_events":
        events = json.loads(value)
        events[0]["detail"] = "nothing happened"
        return json.dumps(events)
    if column == "exposure":
        figures = json.loads(value)
        figures["vdv_m_s1_75"] = 1.0
        return json.dumps(figures)
    if column == "status":
        return "completed"
    if column == "kind":
        return "therapy" if value != "therapy" else "simulated"
    if column in ("prev_hash", "record_hash"):
        return value[:-1] + ("0" if value[-1] != "0" else "1")
    if column == "override":
        return 1 - value
    if column == "chain_index":
        return value + 100
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    assert isinstance(value, str), column
    return value + " "


def test_a_copied_log_verifies(template: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, ids = filled_copy(template, tmp_path)
    with SessionLog(path) as log:
        assert log.verify().ok
        assert [r.session_id for r in log.sessions()] == ids


@pytest.mark.parametrize("column", EXPORT_FIELDS)
def test_editing_any_column_of_a_chained_row_is_detected(
    tmp_path: Path, column: str, template: tuple[Path, list[str]]
) -> None:
    path, ids = filled_copy(template, tmp_path)
    with raw_db(path, drop_triggers=True) as raw:
        rowid, value = raw.execute(
            f"SELECT rowid, {column} FROM sessions WHERE session_id = ?", (ids[1],)
        ).fetchone()
        assert value is not None, f"the test record should fill {column}"
        raw.execute(
            f"UPDATE sessions SET {column} = ? WHERE rowid = ?", (_edit(column, value), rowid)
        )
        after = raw.execute(
            "SELECT log_id, chain_index, session_id FROM sessions WHERE rowid = ?", (rowid,)
        ).fetchone()
    with SessionLog(path) as log:
        result = log.verify()
    assert not result.ok
    assert result.first_bad is not None
    assert tuple(result.first_bad[:3]) == tuple(after), result.first_bad


def test_an_edit_below_the_stored_precision_is_detected(
    tmp_path: Path, template: tuple[Path, list[str]]
) -> None:
    path, ids = filled_copy(template, tmp_path)
    with raw_db(path, drop_triggers=True) as raw:
        raw.execute(
            "UPDATE sessions SET minutes_at_dose = minutes_at_dose + 1e-9 WHERE session_id = ?",
            (ids[0],),
        )
    with SessionLog(path) as log:
        result = log.verify()
    assert result.first_bad is not None
    assert (result.first_bad.chain_index, result.first_bad.session_id) == (0, ids[0])
    assert "canonical" in result.first_bad.what


def test_a_deleted_record_is_detected(tmp_path: Path, template: tuple[Path, list[str]]) -> None:
    path, ids = filled_copy(template, tmp_path)
    with raw_db(path, drop_triggers=True) as raw:
        raw.execute("DELETE FROM sessions WHERE session_id = ?", (ids[1],))
    with SessionLog(path) as log:
        result = log.verify()
    assert not result.ok
    assert result.records_checked == 2
    assert result.first_bad is not None
    assert (result.first_bad.chain_index, result.first_bad.session_id) == (2, ids[2])
    assert "record 1 before it is missing" in result.first_bad.what


def test_reordered_records_are_detected(tmp_path: Path, template: tuple[Path, list[str]]) -> None:
    path, ids = filled_copy(template, tmp_path)
    with raw_db(path, drop_triggers=True) as raw:
        raw.execute("UPDATE sessions SET chain_index = 99 WHERE session_id = ?", (ids[1],))
        raw.execute("UPDATE sessions SET chain_index = 1 WHERE session_id = ?", (ids[2],))
        raw.execute("UPDATE sessions SET chain_index = 2 WHERE session_id = ?", (ids[1],))
    with SessionLog(path) as log:
        result = log.verify()
    assert result.first_bad is not None
    assert (result.first_bad.chain_index, result.first_bad.session_id) == (1, ids[2])


def test_a_replaced_record_with_a_valid_own_hash_breaks_the_next_link(tmp_path: Path) -> None:
    """The forger rehashes the record they changed, but not everything after it."""
    path = db_path(tmp_path)
    with SessionLog(path) as log:
        ids = fill(log)
        export = [json.loads(line) for line in export_text(log).splitlines()]
    forged = dict(export[1], minutes_at_dose=10.0, status="completed", reason="")
    forged["record_hash"] = record_hash(forged["prev_hash"], forged)
    with raw_db(path, drop_triggers=True) as raw:
        raw.execute(
            "UPDATE sessions SET minutes_at_dose = 10.0, status = 'completed', reason = '', "
            "record_hash = ? WHERE session_id = ?",
            (forged["record_hash"], ids[1]),
        )
    with SessionLog(path) as log:
        result = log.verify()
    assert result.first_bad is not None
    assert (result.first_bad.chain_index, result.first_bad.session_id) == (2, ids[2])
    assert "prev_hash" in result.first_bad.what


def test_triggers_refuse_changes_to_finished_records(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with SessionLog(path) as log:
        ids = fill(log)
        running = start(log, slot=2, started=T0 + timedelta(hours=9))
    with raw_db(path) as raw:
        with pytest.raises(sqlite3.IntegrityError, match="never changed"):
            raw.execute("UPDATE sessions SET minutes_at_dose = 10 WHERE session_id = ?", (ids[0],))
        for session_id in (ids[0], running):
            with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
                raw.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
        with pytest.raises(sqlite3.IntegrityError, match="never changed"):
            raw.execute("UPDATE meta SET value = 'x' WHERE key = 'log_id'")


def test_a_finished_session_cannot_be_changed_through_the_api(log: SessionLog) -> None:
    session_id = start(log)
    finish(log, session_id)
    with pytest.raises(LogError, match="already finished") as info:
        log.checkpoint(session_id, **measured(1.0), now_utc=T0)
    assert info.value.reason is LogErrorReason.FINISHED
    with pytest.raises(LogError, match="already finished"):
        finish(log, session_id, status="interrupted", reason="again")
    with pytest.raises(LogError) as unknown:
        log.checkpoint("no-such-session", **measured(1.0), now_utc=T0)
    assert unknown.value.reason is LogErrorReason.UNKNOWN_SESSION
    assert log.verify().ok


# --- recovery ------------------------------------------------------------------------------------


def test_recover_interrupted_keeps_the_checkpointed_minutes(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with SessionLog(path) as log:
        done = start(log)
        finish(log, done)
        session_id = start(log, slot=2, started=T0 + timedelta(hours=4))
        checkpoint_at = T0 + timedelta(hours=4, minutes=6)
        log.checkpoint(session_id, **measured(6.25), now_utc=checkpoint_at)
        # the process ends without finishing (close stands in for the end of the process)
    now = T0 + timedelta(hours=9)
    with SessionLog(path) as log:
        recovered = log.recover_interrupted(now)
        assert [r.session_id for r in recovered] == [session_id]
        record = recovered[0]
        assert log.get(session_id) == record
        assert record.status is SessionStatus.INTERRUPTED
        assert record.reason == RECOVERY_REASON.format(stamp="2025-01-10T16:30:00.000+00:00")
        assert record.reason.startswith(
            "process ended without closing the session (crash, kill or power loss); recovered "
        )
        assert record.minutes_at_dose == 6.25
        assert len(record.envelope) == 3750
        assert record.ended_utc == checkpoint_at  # last moment it is known to have run
        assert record.chain_index == 1
        assert log.verify().ok
        assert log.recover_interrupted(now) == []


def test_recovery_leaves_a_session_running_in_another_process_alone(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with SessionLog(path) as runner:
        session_id = start(runner)
        runner.checkpoint(session_id, **measured(1.0), now_utc=T0 + timedelta(minutes=1))
        with SessionLog(path) as report:
            assert report.recover_interrupted(T0 + timedelta(minutes=2)) == []
            assert runner.recover_interrupted(T0 + timedelta(minutes=2)) == []
        finish(runner, session_id)
        assert runner.get(session_id).status is SessionStatus.COMPLETED
        assert runner.verify().ok


def test_recovery_after_a_real_kill_9(tmp_path: Path) -> None:
    path = db_path(tmp_path)
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
        envelope = [(i / 10, 0.3) for i in range(4350)]
        log.checkpoint(session_id, minutes_at_dose=7.25, envelope=envelope, freqs_hz=[30.0],
            safety_events=[], mean_error_pct=0.1, p95_abs_error_pct=0.9, exposure=None,
            now_utc=t0 + timedelta(minutes=7, seconds=15))
        print(session_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    session_id = proc.stdout.strip()
    with SessionLog(path) as log:
        assert log.get(session_id).status is SessionStatus.RUNNING
        (record,) = log.recover_interrupted(T0 + timedelta(hours=1))
        assert record.session_id == session_id
        assert record.status is SessionStatus.INTERRUPTED
        assert record.minutes_at_dose == 7.25
        assert len(record.envelope) == 4350
        assert log.verify().ok


# --- export and import ---------------------------------------------------------------------------


def test_export_import_round_trip(tmp_path: Path) -> None:
    with SessionLog(db_path(tmp_path, "a")) as a, SessionLog(db_path(tmp_path, "b")) as b:
        fill(a)
        text = export_text(a)
        assert len(text.splitlines()) == 3
        line = json.loads(text.splitlines()[0])
        assert sorted(line) == sorted([*EXPORT_FIELDS, "device_voucher"])
        assert line["device_voucher"] is None  # written by the log alone, no plate vouched
        result = b.import_jsonl(io.StringIO(text))
        assert (result.added, result.skipped_duplicates) == (3, 0)
        assert b.sessions() == a.sessions()
        assert b.verify().ok
        assert b.verify().heads == a.verify().heads
        assert b.log_id != a.log_id
        again = b.import_jsonl(io.StringIO(text))
        assert (again.added, again.skipped_duplicates) == (0, 3)
        assert len(b.sessions()) == 3
        assert export_text(b) == text  # the export is canonical: byte for byte the same


def test_export_and_import_through_files(tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    with SessionLog(db_path(tmp_path, "a")) as a, SessionLog(db_path(tmp_path, "b")) as b:
        fill(a)
        assert a.export_jsonl(out) == 3
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
        assert b.import_jsonl(out).added == 3
        assert b.verify().ok


def test_import_merges_two_devices_and_two_patients(tmp_path: Path) -> None:
    with (
        SessionLog(db_path(tmp_path, "a")) as a,
        SessionLog(db_path(tmp_path, "c")) as c,
        SessionLog(db_path(tmp_path, "clinic")) as clinic,
    ):
        fill(a, patient="P001", device_id="LIV-0001")
        fill(c, patient="P002", device_id="LIV-0002")
        own = start(clinic, patient="P003")
        finish(clinic, own)
        assert clinic.import_jsonl(io.StringIO(export_text(a))).added == 3
        assert clinic.import_jsonl(io.StringIO(export_text(c))).added == 3
        result = clinic.verify()
        assert result.ok
        assert result.records_checked == 7
        assert set(result.heads) == {a.log_id, c.log_id, clinic.log_id}
        assert {r.device_id for r in clinic.sessions(patient_id="P002")} == {"LIV-0002"}
        assert len(clinic.sessions()) == 7
        merged = export_text(clinic)
        assert auditor_verify(merged) == {clinic.log_id: 1, a.log_id: 3, c.log_id: 3}
        # new own sessions keep chaining on the clinic's own chain only
        later = start(clinic, patient="P003", day=DAY + timedelta(days=1))
        assert finish(clinic, later).chain_index == 1
        assert clinic.verify().ok


def _tamper_line(text: str, line: int, **changes: Any) -> str:
    lines = text.splitlines()
    record = json.loads(lines[line])
    record.update(changes)
    lines[line] = json.dumps(record)
    return "\n".join(lines) + "\n"


def test_a_tampered_export_is_refused_whole(tmp_path: Path) -> None:
    with (
        SessionLog(db_path(tmp_path, "a")) as a,
        SessionLog(db_path(tmp_path, "c")) as c,
        SessionLog(db_path(tmp_path, "b")) as b,
    ):
        ids = fill(a)
        fill(c, patient="P002", device_id="LIV-0002")
        text = export_text(a)
        tampered = _tamper_line(text, 1, minutes_at_dose=10.0)
        with pytest.raises(LogError) as info:
            b.import_jsonl(io.StringIO(export_text(c) + tampered))
        error = info.value
        assert error.reason is LogErrorReason.TAMPERED
        assert error.bad_record is not None
        assert error.bad_record.chain == a.log_id
        assert (error.bad_record.chain_index, error.bad_record.session_id) == (1, ids[1])
        assert f"session {ids[1]}" in str(error)
        assert "line 5" in str(error)  # three lines of c, then the second of a
        assert "nothing was imported" in str(error)
        assert b.sessions() == []  # not even the sound chain of c
        # a deleted line is refused too
        lines = text.splitlines()
        with pytest.raises(LogError, match="missing") as gap:
            b.import_jsonl(io.StringIO("\n".join([lines[0], lines[2]])))
        assert gap.value.bad_record is not None
        assert gap.value.bad_record.session_id == ids[2]
        assert b.sessions() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not json\n", "line 1 is not valid JSON"),
        ("[1, 2]\n", "line 1 is not a JSON object"),
        ('{"log_id": "x"}\n', "line 1 lacks the field"),
    ],
)
def test_an_unreadable_import_file_is_refused(log: SessionLog, text: str, expected: str) -> None:
    with pytest.raises(LogError, match=expected) as info:
        log.import_jsonl(io.StringIO(text))
    assert info.value.reason is LogErrorReason.BAD_FILE


def test_an_import_that_conflicts_with_held_records_is_refused(tmp_path: Path) -> None:
    """Two copies of one log that went separate ways: same log_id and chain_index, other hash."""
    fork_a, fork_b = db_path(tmp_path, "fork_a"), db_path(tmp_path, "fork_b")
    with SessionLog(fork_a) as log:
        first = start(log)
        finish(log, first)
    fork_b.parent.mkdir(mode=0o700)
    fork_b.write_bytes(fork_a.read_bytes())
    with SessionLog(fork_a) as a, SessionLog(fork_b) as b, SessionLog(db_path(tmp_path, "x")) as x:
        assert a.log_id == b.log_id
        finish(a, start(a, slot=2), minutes=8.0)
        finish(b, start(b, slot=2), minutes=9.0)
        assert x.import_jsonl(io.StringIO(export_text(a))).added == 2
        before = x.sessions()
        with pytest.raises(LogError, match="already holds a different record 1") as info:
            x.import_jsonl(io.StringIO(export_text(b)))
        assert info.value.reason is LogErrorReason.CONFLICT
        assert x.sessions() == before
        assert x.verify().ok


def test_export_csv_has_every_field_as_a_flat_column(log: SessionLog) -> None:
    fill(log)
    out = io.StringIO()
    assert log.export_csv(out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 3
    assert tuple(rows[0]) == EXPORT_FIELDS
    tripped = rows[1]
    assert tripped["status"] == "tripped"
    assert tripped["override"] == "true"
    assert tripped["minutes_at_dose"] == "5.2"
    assert json.loads(tripped["freqs_hz"]) == [30, 45]
    assert json.loads(tripped["safety_events"])[0]["reason"] == "over_acceleration"
    assert json.loads(tripped["exposure"])["vdv_m_s1_75"] == 5.8
    assert len(json.loads(tripped["envelope"])) == 312
    assert rows[0]["override_reason"] == ""  # null is an empty cell


# --- queries -------------------------------------------------------------------------------------


def test_queries_for_the_runner_and_the_reports(log: SessionLog) -> None:
    day2 = DAY + timedelta(days=1)
    a1 = start(log, patient="P001")
    finish(log, a1, status="interrupted", reason="power loss", minutes=3.0)
    a1b = start(log, patient="P001", started=T0 + timedelta(minutes=20), resumed_from=a1)
    finish(log, a1b, minutes=7.0, ended=T0 + timedelta(minutes=27))
    b1 = start(log, patient="P002", started=T0 + timedelta(hours=1))
    a2 = start(log, patient="P001", day=day2, started=T0 + timedelta(days=1))

    assert [r.session_id for r in log.sessions(patient_id="P001")] == [a1, a1b, a2]
    assert [r.session_id for r in log.sessions(since=day2)] == [a2]
    assert [r.session_id for r in log.sessions(until=DAY)] == [a1, a1b, b1]
    assert log.sessions(patient_id="P002", since=day2) == []
    latest = log.latest_for_slot("P001", DAY, 1)
    assert latest is not None
    assert latest.session_id == a1b
    assert latest.resumed_from == a1
    assert log.latest_for_slot("P001", DAY, 2) is None
    with pytest.raises(LogError, match="must be a date"):
        log.sessions(since=datetime(2025, 1, 1, tzinfo=UTC))


def test_default_db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIV_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"
    monkeypatch.delenv("LIV_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_db_path() == tmp_path / "data" / "liv" / "liv.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "liv" / "liv.db"


# --- errors: one class, one readable sentence ----------------------------------------------------


def test_a_locked_database_gives_a_readable_error(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with SessionLog(path, busy_timeout_s=0.05) as log:
        finish(log, start(log))
        with contextlib.closing(sqlite3.connect(path)) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(LogError) as info:
                start(log, slot=2)
            error = info.value
            assert isinstance(error, LivError)
            assert error.reason is LogErrorReason.LOCKED
            assert str(error).startswith("Could not record the start of the session: ")
            assert "is in use by another program" in str(error)
            assert "Traceback" not in str(error)
            assert len(log.sessions()) == 1  # reading still works (WAL)
            other.rollback()
        start(log, slot=2)
        assert len(log.sessions()) == 2
        assert log.verify().ok


def test_a_damaged_file_is_reported_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "liv.db"
    garbage = b"this is not a session log " * 200
    path.write_bytes(garbage)
    with pytest.raises(LogError, match="damaged or is not a liv session log") as info:
        SessionLog(path)
    assert info.value.reason is LogErrorReason.CORRUPT
    assert path.read_bytes() == garbage


def test_another_kind_of_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(LogError, match="another kind of database"):
        SessionLog(path)


def test_a_folder_instead_of_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="is a folder") as info:
        SessionLog(tmp_path)
    assert info.value.reason is LogErrorReason.CANNOT_OPEN


def test_a_log_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with SessionLog(path):
        pass
    with raw_db(path) as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LogError, match="newer version") as info:
        SessionLog(path)
    assert info.value.reason is LogErrorReason.NEWER_SCHEMA


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_is_a_readable_error(tmp_path: Path) -> None:
    path = db_path(tmp_path)
    with SessionLog(path):
        pass
    os.chmod(path, 0o000)
    try:
        with pytest.raises(LogError) as info:
            SessionLog(path)
        assert info.value.reason in (LogErrorReason.PERMISSION, LogErrorReason.CANNOT_OPEN)
    finally:
        os.chmod(path, 0o600)


@pytest.mark.parametrize(
    ("exc", "reason", "words"),
    [
        (sqlite3.OperationalError("database is locked"), LogErrorReason.LOCKED, "in use"),
        (sqlite3.OperationalError("database or disk is full"), LogErrorReason.DISK_FULL, "full"),
        (sqlite3.DatabaseError("file is not a database"), LogErrorReason.CORRUPT, "damaged"),
        (
            sqlite3.DatabaseError("database disk image is malformed"),
            LogErrorReason.CORRUPT,
            "damaged",
        ),
        (
            sqlite3.OperationalError("attempt to write a readonly database"),
            LogErrorReason.READ_ONLY,
            "read but not written",
        ),
        (
            sqlite3.OperationalError("unable to open database file"),
            LogErrorReason.CANNOT_OPEN,
            "folder exists",
        ),
        (sqlite3.OperationalError("disk I/O error"), LogErrorReason.IO, "read or write error"),
    ],
)
def test_sqlite_errors_become_sentences(
    exc: sqlite3.Error, reason: LogErrorReason, words: str
) -> None:
    got_reason, sentence = _explain_sqlite(exc, Path("/data/liv.db"))
    assert got_reason is reason
    assert words in sentence
    assert "/data/liv.db" in sentence


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"started": datetime(2025, 1, 10, 7, 30)}, "time zone"),  # naive
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"slot": 0}, "slot"),
        ({"override_reason": " "}, "override_reason must not be empty"),
    ],
)
def test_bad_start_values_are_refused(log: SessionLog, change: dict[str, Any], words: str) -> None:
    with pytest.raises(LogError, match=words) as info:
        start(log, **change)
    assert info.value.reason is LogErrorReason.INVALID
    assert log.sessions() == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"status": "running"}, "status must be one of"),
        ({"status": "tripped", "reason": ""}, "reason must not be empty"),
        ({"minutes_at_dose": float("nan")}, "finite"),
        ({"minutes_at_dose": -1.0}, "negative"),
        ({"envelope": [(0.0, 0.3, 1.0)]}, "pair"),
        ({"freqs_hz": [30.0, float("inf")]}, "finite"),
        ({"exposure": {"a_w_m_s2": 0.9}}, "exposure lacks"),
        ({"safety_events": [{"detail": "no reason"}]}, "reason"),
        ({"ended_utc": datetime(2025, 1, 10, 8, 0)}, "time zone"),  # naive
    ],
)
def test_bad_finish_values_are_refused_and_the_session_stays_running(
    log: SessionLog, change: dict[str, Any], words: str
) -> None:
    session_id = start(log)
    kwargs: dict[str, Any] = {
        "status": "completed",
        "reason": "",
        "ended_utc": T0 + timedelta(minutes=10),
        **measured(10.0),
    }
    kwargs.update(change)
    with pytest.raises(LogError, match=words) as info:
        log.finish_session(session_id, **kwargs)
    assert info.value.reason is LogErrorReason.INVALID
    assert log.get(session_id).status is SessionStatus.RUNNING


def test_a_closed_log_says_so(tmp_path: Path) -> None:
    log = SessionLog(db_path(tmp_path))
    log.close()
    log.close()  # idempotent
    with pytest.raises(LogError, match="closed"):
        log.sessions()
