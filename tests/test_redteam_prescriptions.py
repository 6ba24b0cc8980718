"""Red team: sessions run under a prescription the patient signed herself.

The home trusts whichever clinic key it is enrolled with, and `liv enroll --replace` (or an
edited clinic-key.pem) swaps it on the patient's computer. A patient who does that can sign
her own prescription, say one minute once a day, within the dose limits, and run real sessions
on her registered plate: every record is genuine and vouched for. The clinic judges adherence
against the prescription the records carry, so before this fix it showed 100% for a tenth of
the prescribed therapy, with no check saying so. The clinic now knows what it signed
(`liv protocol sign` records each prescription in its database) and flags every session run
under anything else.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from benchmarks.make_log import completed_record
from sessions.cli import main
from sessions.log import GENESIS_HASH
from sessions.protocol import PatientProtocol, parse_protocol
from tests.simhelpers import protocol_yaml
from tests.test_clinic_db import plate_key_hex, write_export

PLATE = "LIV-P1"
PRESCRIBED = {"patient_id": "P1", "minutes_per_session": 10, "sessions_per_day": 2}
SELF_MADE = {"patient_id": "P1", "minutes_per_session": 1, "sessions_per_day": 1}


def _records(protocol: PatientProtocol, days: int) -> list[dict[str, Any]]:
    """Every prescribed session of the last ``days`` days, completed, on plate LIV-P1."""
    log_id, prev, out = str(uuid.uuid4()), GENESIS_HASH, []
    today = datetime.now(UTC).date()
    for k in range(days):
        day = today - timedelta(days=days - k)
        for slot in range(1, protocol.sessions_per_day + 1):
            started = datetime(day.year, day.month, day.day, 4 * slot, tzinfo=UTC)
            raw = completed_record(
                log_id=log_id,
                chain_index=len(out),
                prev_hash=prev,
                session_id=str(uuid.uuid4()),
                device_id=PLATE,
                firmware_version="1.2.0",
                protocol=protocol,
                started=started,
                ended=started + timedelta(minutes=protocol.minutes_per_session, seconds=3),
                slot=slot,
                mean_error_pct=-0.4,
                p95_abs_error_pct=1.2,
                envelope=[[0.0, 0.3]],
            )
            prev = raw["record_hash"]
            out.append(raw)
    return out


def _clinic(tmp_path: Path) -> list[str]:
    """A clinic: its key, P1's prescription signed, plate LIV-P1 registered; --clinic-dir."""
    where = ["--clinic-dir", str(tmp_path / "clinic")]
    assert main(["clinic", "init", *where]) == 0
    rx = tmp_path / "p1.yaml"
    rx.write_text(protocol_yaml(**PRESCRIBED), encoding="utf-8")
    assert main(["protocol", "sign", str(rx), *where]) == 0
    assert main(["clinic", "plate", "add", PLATE, plate_key_hex(PLATE), *where]) == 0
    return where


def _overview(where: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["clinic", "overview", "--format", "json", *where]) == 0
    rows = json.loads(capsys.readouterr().out)["patients"]
    return {row["patient_id"]: row for row in rows}


def test_sessions_under_a_prescription_the_clinic_never_signed_are_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = _clinic(tmp_path)
    self_made = parse_protocol(protocol_yaml(**SELF_MADE))
    export = write_export(tmp_path / "export.jsonl", _records(self_made, 10))
    capsys.readouterr()
    assert main(["clinic", "import", str(export), *where]) == 0
    err = capsys.readouterr().err
    assert (
        "patient P1: 10 therapy session(s) ran under a prescription this clinic never signed" in err
    )
    assert self_made.sha256[:12] in err
    row = _overview(where, capsys)["P1"]
    assert row["last_7_days"]["session_adherence"] == 1.0  # judged against her own prescription
    assert row["open_flags"]["integrity"] == 1  # ... and flagged


def test_sessions_under_the_prescription_the_clinic_signed_are_not_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = _clinic(tmp_path)
    prescribed = parse_protocol(protocol_yaml(**PRESCRIBED))
    export = write_export(tmp_path / "export.jsonl", _records(prescribed, 10))
    capsys.readouterr()
    assert main(["clinic", "import", str(export), *where]) == 0
    assert "never signed" not in capsys.readouterr().err
    assert _overview(where, capsys)["P1"]["open_flags"]["integrity"] == 0
