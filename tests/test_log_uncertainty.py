"""The accuracy's uncertainty in the session record (issue 9): stored, shown, and optional.

Records written before the field existed carry no ``error_uncertainty_pct``; they must hash,
verify, export and import exactly as before, and an older log must still open.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sessions.cli import main
from sessions.home import LivHome
from sessions.log import SCHEMA_VERSION, SessionLog, canonical_json
from tests.simhelpers import downgrade_log, install_signed

T0 = datetime(2025, 1, 10, 7, 30, tzinfo=UTC)
PROTOCOL = '{"target_g":0.3}'


def _session(log: SessionLog, slot: int, uncertainty: float | None) -> str:
    session_id = log.start_session(
        patient_id="P001", device_id="LIV-0001", firmware_version="1.2.0",
        protocol_sha256="9f" * 32, protocol_json=PROTOCOL, started_utc=T0 + timedelta(hours=slot),
        timezone="Europe/Berlin", local_date=date(2025, 1, 10), slot=slot,
        minutes_prescribed=1.0, target_g=0.3,
    )  # fmt: skip
    extra: dict[str, Any] = {} if uncertainty is None else {"error_uncertainty_pct": uncertainty}
    log.finish_session(
        session_id, status="completed", reason="", ended_utc=T0 + timedelta(hours=slot, minutes=1),
        minutes_at_dose=1.0, envelope=[(0.0, 0.3), (0.1, 0.3)], freqs_hz=[30.0],
        safety_events=[], mean_error_pct=-0.2, p95_abs_error_pct=0.8, exposure=None, **extra,
    )  # fmt: skip
    return session_id


def _export(log: SessionLog) -> list[dict[str, Any]]:
    out = io.StringIO()
    log.export_jsonl(out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_uncertainty_is_stored_hashed_exported_and_imported(tmp_path: Path) -> None:
    with SessionLog(tmp_path / "a.db") as log:
        session_id = _session(log, 1, 0.31)
        record = log.get(session_id)
        assert record.error_uncertainty_pct == 0.31
        (summary,) = log.summaries()
        assert summary.error_uncertainty_pct == 0.31
        (exported,) = _export(log)
        assert log.verify().ok
    assert exported["error_uncertainty_pct"] == 0.31
    # the hash covers it: an auditor's sha256 over every exported field but the two hashes
    body = {
        k: v for k, v in exported.items() if k not in ("prev_hash", "record_hash", "device_voucher")
    }
    digest = hashlib.sha256((exported["prev_hash"] + canonical_json(body)).encode()).hexdigest()
    assert digest == exported["record_hash"]
    with SessionLog(tmp_path / "b.db") as other:
        assert other.import_jsonl(io.StringIO(json.dumps(exported) + "\n")).added == 1
        assert other.get(session_id).error_uncertainty_pct == 0.31
        assert other.verify().ok


def test_a_record_without_it_hashes_as_records_did_before_the_field(tmp_path: Path) -> None:
    """The hash of a record with no uncertainty is the old rule's: the field is not in it."""
    with SessionLog(tmp_path / "a.db") as log:
        _session(log, 1, None)
        (exported,) = _export(log)
        assert log.verify().ok
    assert "error_uncertainty_pct" not in exported
    body = {
        k: v for k, v in exported.items() if k not in ("prev_hash", "record_hash", "device_voucher")
    }
    digest = hashlib.sha256((exported["prev_hash"] + canonical_json(body)).encode()).hexdigest()
    assert digest == exported["record_hash"]
    # an export written before the field existed (no such key) imports and verifies
    with SessionLog(tmp_path / "b.db") as other:
        assert other.import_jsonl(io.StringIO(json.dumps(exported) + "\n")).added == 1
        assert other.verify().ok


def test_editing_the_uncertainty_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with SessionLog(path) as log:
        _session(log, 1, 0.31)
        _session(log, 2, None)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TRIGGER sessions_finished_never_change")
        conn.execute("UPDATE sessions SET error_uncertainty_pct = 0.01 WHERE slot = 1")
        conn.execute("UPDATE sessions SET error_uncertainty_pct = 0.5 WHERE slot = 2")
    with SessionLog(path, read_only=True) as log:
        result = log.verify()
    assert not result.ok
    assert result.first_bad is not None
    assert result.first_bad.chain_index == 0


def test_a_log_from_before_the_field_opens_read_only_and_migrates(tmp_path: Path) -> None:
    """A schema-2 log (records written with neither the uncertainty nor a kind) reads as it is
    read-only, and a writer migrates it without touching a hash."""
    from benchmarks.make_log import make_log

    path = tmp_path / "old.db"
    count = make_log(path, years=4 / 365)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:  # schema 2
        downgrade_log(conn, 2)
    with SessionLog(path, read_only=True) as log:  # an audit reads it as it is
        summaries = log.summaries()
        assert len(summaries) == count
        assert {s.error_uncertainty_pct for s in summaries} == {None}
        assert log.get(summaries[0].session_id).error_uncertainty_pct is None
        assert log.verify().ok
        assert all("error_uncertainty_pct" not in r for r in _export(log))
    with SessionLog(path) as log:  # a writer migrates it, and the old chain still verifies
        assert log.verify().ok
        _session(log, 3, 0.4)
        assert log.verify().ok
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),  # 3 and every later step
        )


def test_a_session_records_it_and_show_prints_it_next_to_the_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.calibration import identify
    from firmware_bridge.client import DeviceClient

    home = LivHome(tmp_path / "home")
    home.ensure()
    install_signed(home, minutes_per_session="1")
    with DeviceClient.open("sim://?mass=0&seed=1&device_id=SIM-U1") as dev:
        home.calibrations().save(identify(dev))
    url = "sim://?mass=70&seed=4&device_id=SIM-U1&speed=max"
    assert main(["start", "--device", url, "--home", str(home.root)]) == 0
    with SessionLog(home.db_path()) as log:
        (record,) = log.sessions()
    assert record.p95_abs_error_pct is not None
    assert record.error_uncertainty_pct is not None
    assert 0.0 < record.error_uncertainty_pct < record.p95_abs_error_pct
    capsys.readouterr()
    assert main(["show", record.session_id, "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    shown = (
        f"within {record.p95_abs_error_pct:.1f}% of the target "
        f"(+/- {record.error_uncertainty_pct:.1f}%"
    )
    assert any(line.startswith("accuracy") and shown in line for line in out.splitlines())


def test_the_accuracy_is_shown_with_its_uncertainty_when_the_record_has_one() -> None:
    from sessions.report import accuracy_text

    assert accuracy_text(0.8, 0.3) == "p95 error 0.80% +/- 0.30%"
    assert accuracy_text(0.8, None) == "p95 error 0.80%"  # a record from before the field
    assert accuracy_text(None, None) == "no accuracy figure"
