"""Opening a log to audit it: never creates one, works on a read-only copy, safe CSV cells."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from sessions.cli import main
from sessions.home import LivHome
from sessions.log import LogError, LogErrorReason, SessionLog
from sessions.report import render_csv
from tests.simhelpers import enrol_home, write_signed
from tests.test_log import PROTOCOL, finish, start
from tests.test_report_html import month_report
from tests.test_resume import DEVICE_ID, protocol_text, sim

REPO = Path(__file__).resolve().parents[1]
FORMULAS = ['=HYPERLINK("http://x","ok")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]


@pytest.mark.parametrize(
    "argv",
    [["verify"], ["sessions"], ["export"], ["export", "--format", "csv"], ["report"]],
    ids=" ".join,
)
def test_a_mistyped_log_is_refused_and_never_created(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "no-such-folder" / "lvi.db"
    code = main([*argv, "--db", str(typo), "--home", str(tmp_path / "home")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "verified" not in out
    assert f"There is no session log at {typo}" in err
    assert "Traceback" not in err
    assert not typo.exists()
    assert not typo.parent.exists()


def test_opening_for_reading_never_creates_and_refuses_a_non_log(tmp_path: Path) -> None:
    with pytest.raises(LogError) as missing:
        SessionLog(tmp_path / "absent.db", read_only=True)
    assert missing.value.reason is LogErrorReason.CANNOT_OPEN
    assert not (tmp_path / "absent.db").exists()
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(LogError) as not_a_log:
        SessionLog(empty, read_only=True)
    assert not_a_log.value.reason is LogErrorReason.CORRUPT
    assert empty.stat().st_size == 0, "an empty file was turned into a log"


def _read_only_mount_works(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c",
         f"mount --bind '{where}' '{where}' && mount -o remount,ro,bind '{where}' '{where}'"],
        capture_output=True, check=False,
    )  # fmt: skip
    return probe.returncode == 0


AUDIT_SCRIPT = """\
set -e
mount --bind "$COPY" "$COPY"
mount -o remount,ro,bind "$COPY" "$COPY"
touch "$COPY/probe" 2>/dev/null && { echo "the copy is writable" >&2; exit 9; }
liv() { "$PYTHON" -m sessions.cli "$@" --db "$COPY/liv.db" --home "$COPY"; }
liv verify > "$OUT/verify.txt" 2>&1 || echo "exit $?" >> "$OUT/verify.txt"
liv sessions --json > "$OUT/sessions.json"
liv export --format jsonl --out "$OUT/export.jsonl"
liv report --format csv > "$OUT/report.csv"
"""


def test_a_read_only_copy_of_a_home_can_be_audited(tmp_path: Path) -> None:
    """verify, sessions, export and report on a log whose files and folder cannot be written.

    The copy is mounted read-only in a private mount namespace, which holds even for root
    (file modes do not).
    """
    copy = tmp_path / "copy"
    copy.mkdir()
    if not _read_only_mount_works(copy):
        pytest.skip("needs 'unshare -rm' and a read-only bind mount in a user namespace")
    home = LivHome(tmp_path / "home")
    home.ensure()
    write_signed(tmp_path / "p.yaml", protocol_text())
    enrol_home(home).install_protocol(tmp_path / "p.yaml")
    with DeviceClient.open(f"sim://?mass=0&seed=1&device_id={DEVICE_ID}") as dev:
        home.calibrations().save(identify(dev))
    db = home.db_path()
    assert main(["start", "--device", sim(), "--home", str(home.root), "--db", str(db)]) == 0
    with SessionLog(db) as log:
        sid = start(log, patient="P-0456", started=datetime.now(UTC) - timedelta(days=1))
        finish(log, sid, status="stopped_by_patient", reason="stepped off", minutes=0.5)
        ids = [r.session_id for r in log.sessions()]
    shutil.copy2(db, copy / "liv.db")
    shutil.copy2(home.protocol_path, copy / home.protocol_path.name)
    shutil.copy2(home.clinic_key_path, copy / home.clinic_key_path.name)  # checks the protocol
    assert not db.with_name("liv.db-wal").exists()  # a cleanly closed log: the main file only
    out = tmp_path / "out"
    out.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "COPY": str(copy), "OUT": str(out)}
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", AUDIT_SCRIPT], capture_output=True, text=True, cwd=REPO,
        env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    verified = (out / "verify.txt").read_text()
    # the chains are intact; the record written without a plate is not vouched for (exit 1)
    assert "LOG CHANGED" not in verified
    assert "is not vouched for by the plate: awaiting the plate's countersignature" in verified
    assert verified.rstrip().endswith("exit 1")
    assert [s["session_id"] for s in json.loads((out / "sessions.json").read_text())] == ids
    lines = (out / "export.jsonl").read_text().splitlines()
    # the export's header says what verify says: chains intact, not vouched for by the plate
    assert json.loads(lines[0])["integrity"]["status"] == "not_vouched"
    assert len(lines) == 1 + 2
    assert (out / "report.csv").read_text().startswith("patient_id,date")
    copied = ["liv.db", home.protocol_path.name, home.clinic_key_path.name]
    assert sorted(p.name for p in copy.iterdir()) == sorted(copied)


def test_log_csv_cells_never_become_spreadsheet_formulas(tmp_path: Path) -> None:
    with SessionLog(tmp_path / "liv.db") as log:
        for i, reason in enumerate(FORMULAS):
            sid = start(log, slot=i + 1, override_reason=reason)
            finish(log, sid, status="stopped_by_patient", reason=reason, minutes=1.0)
        buffer = io.StringIO()
        log.export_csv(buffer)
        jsonl = io.StringIO()
        log.export_jsonl(jsonl)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert [r["override_reason"] for r in rows] == ["'" + f for f in FORMULAS]
    assert [r["reason"] for r in rows] == ["'" + f for f in FORMULAS]
    assert all(r["protocol_json"] == PROTOCOL for r in rows)
    assert rows[0]["mean_error_pct"] == "-0.42", "numbers are numbers, not text"
    # the audit format keeps the text exactly as recorded
    exported = [json.loads(line) for line in jsonl.getvalue().splitlines()]
    assert [r["override_reason"] for r in exported] == FORMULAS


@pytest.mark.parametrize("patient", ["-A1+1", "=1+1", "@A1", "+A1"])
def test_report_csv_cells_never_become_spreadsheet_formulas(patient: str) -> None:
    report, _, _ = month_report()
    lines = render_csv(dataclasses.replace(report, patient_id=patient)).splitlines()
    assert all(line.startswith(f"'{patient},") for line in lines[1:])
