"""`liv export`: into a folder, spreadsheet-safe CSVs, a plain per-session CSV, and the log's
verification status carried by every export."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sessions.cli import main
from sessions.log import SessionLog
from sessions.log.exchange import CSV_CELL_LIMIT, SESSION_CSV_COLUMNS
from tests.simhelpers import vouch_all
from tests.test_report_cli import ClinicHome, make_clinic_home, run, tamper


@pytest.fixture(scope="module")
def dense_template(tmp_path_factory: pytest.TempPathFactory) -> ClinicHome:
    """The clinic's history plus one full session with a real-sized envelope (10 points/s)."""
    home = make_clinic_home(tmp_path_factory.mktemp("export") / "home")
    with SessionLog(home.db) as log:
        first = log.summaries()[0]
        started = datetime.now(UTC) - timedelta(hours=1)
        sid = log.start_session(
            patient_id=first.patient_id, device_id=first.device_id,
            firmware_version=first.firmware_version, protocol_sha256=first.protocol_sha256,
            protocol_json=first.protocol_json, started_utc=started, timezone=first.timezone,
            local_date=started.astimezone(first.started_local.tzinfo).date(), slot=1,
            minutes_prescribed=10.0, target_g=0.3,
        )  # fmt: skip
        log.finish_session(
            sid, status="completed", reason="", ended_utc=started + timedelta(minutes=10),
            minutes_at_dose=10.0,
            envelope=[(k / 10, 0.3 + 0.00123 * (k % 7)) for k in range(6080)],
            freqs_hz=[30.0], safety_events=[], mean_error_pct=0.1, p95_abs_error_pct=0.4,
            exposure=None,
        )  # fmt: skip
    vouch_all(home.root, first.device_id)  # the plate countersigns it, as after a session
    return home


@pytest.fixture
def home(dense_template: ClinicHome, tmp_path: Path) -> ClinicHome:
    root = tmp_path / "home"
    shutil.copytree(dense_template.root, root)
    return ClinicHome(root, dense_template.today, dense_template.protocol_text)


def test_export_into_a_folder_writes_a_named_file_that_imports_back(
    home: ClinicHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    code, _, err = run(capsys, home.argv("export", "--out", str(folder)))
    assert code == 0, err
    written = folder / "liv-log.jsonl"
    assert written.is_file()
    assert f"to {written}" in err
    assert [p.name for p in folder.iterdir()] == ["liv-log.jsonl"]  # no temporary file left
    header = json.loads(written.read_text().splitlines()[0])
    assert header["schema"] == "liv.export_header/1"
    assert header["integrity"]["status"] == "verified"
    other = tmp_path / "clinic.db"
    assert main(["import", str(written), "--db", str(other), "--home", str(home.root)]) == 0
    with SessionLog(other) as copy, SessionLog(home.db) as original:
        assert len(copy.summaries()) == len(original.summaries()) == 69
        assert copy.verify().ok


def test_no_csv_cell_is_longer_than_a_spreadsheet_holds(
    home: ClinicHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "records.csv"
    code, _, err = run(capsys, home.argv("export", "--format", "csv-records", "--out", str(out)))
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert max(len(cell) for row in rows for cell in row) <= CSV_CELL_LIMIT
    dense = [r for r in rows if "6080 points" in r[rows[0].index("envelope")]]
    assert len(dense) == 1  # the long envelope says where it went
    short = rows[1][rows[0].index("envelope")]
    assert json.loads(short)[0] == [0, 0]  # a short one is still in its cell
    points = tmp_path / "envelopes.csv"
    assert main(home.argv("export", "--format", "csv-envelopes", "--out", str(points))) == 0
    lines = list(csv.reader(io.StringIO(points.read_text())))
    assert lines[0] == ["session_id", "t_s", "amplitude_g"]
    sid = dense[0][rows[0].index("session_id")]
    assert sum(1 for r in lines if r[0] == sid) == 6080


def test_the_plain_csv_has_one_row_per_session(
    home: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, home.argv("export", "--format", "csv"))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0])[: len(SESSION_CSV_COLUMNS)] == SESSION_CSV_COLUMNS
    assert len(rows) == 69
    first = rows[0]
    assert (first["start_time"], first["end_time"]) == ("08:06", "08:16")
    assert first["minutes_at_dose"] == "10.0"
    assert first["target_g"] == "0.30"
    assert {r["status"] for r in rows} == {"completed", "stopped_by_user", "tripped"}
    tripped = next(r for r in rows if r["status"] == "tripped")
    assert tripped["safety_events"] == "coil_temperature"
    assert all(r["log_integrity"].startswith("verified") for r in rows)
    assert max(len(line) for line in out.splitlines()) < 1000  # no envelope, no JSON blobs


def test_every_export_of_a_changed_log_says_so(
    home: ClinicHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(home)
    code, out, err = run(capsys, home.argv("export"))
    assert code == 0
    header = json.loads(out.splitlines()[0])
    assert header["integrity"]["status"] == "failed"
    assert "FAILED verification" in err
    for fmt in ("csv", "csv-records"):
        code, out, _ = run(capsys, home.argv("export", "--format", fmt))
        rows = list(csv.DictReader(io.StringIO(out)))
        assert all(r["log_integrity"].startswith("FAILED verification") for r in rows), fmt
    summary = tmp_path / "x.jsonl"
    code, out, _ = run(capsys, home.argv("export", "--out", str(summary), "--json"))
    data = json.loads(out)
    assert (data["schema"], data["records"], data["integrity"]["ok"]) == ("liv.export/1", 69, False)


def test_json_summary_needs_an_output_file(
    home: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, home.argv("export", "--json"))
    assert code == 2
    assert "--json needs --out" in err
    assert out == ""
