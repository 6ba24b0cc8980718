"""Sessions end to end: real protocol files, real SQLite logs, real simulated sessions, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from sessions.cli import main
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from tests.simhelpers import enrol_home, protocol_yaml, write_signed

DEVICE_ID = "SIM-T1"


def protocol_text(minutes: float = 1.0, gap_h: float = 3.0, target: float = 0.3) -> str:
    return protocol_yaml(
        minutes_per_session=f"{minutes:g}", min_gap_hours=f"{gap_h:g}", target_g=target
    )


@pytest.fixture
def home(tmp_path: Path) -> LivHome:
    """An installation with a protocol, a calibrated simulated plate and an empty log."""
    h = LivHome(tmp_path / "home")
    h.ensure()
    write_signed(tmp_path / "p.yaml", protocol_text())
    enrol_home(h).install_protocol(tmp_path / "p.yaml")
    with DeviceClient.open(f"sim://?mass=0&seed=1&device_id={DEVICE_ID}") as dev:
        h.calibrations().save(identify(dev))
    return h


def liv(home: LivHome, *argv: str) -> int:
    return main([*argv, "--home", str(home.root)])


def sim(params: str = "") -> str:
    return f"sim://?mass=70&seed=4&device_id={DEVICE_ID}{params}"


def records(home: LivHome) -> list:
    with SessionLog(home.db_path()) as log:
        return log.sessions()


def make_demo(home: LivHome) -> None:
    """A demo home (a file DEMO): the only home where sessions on the simulator count, so the
    schedule (gap, resumption) can be run end to end on it (docs/adherence.md)."""
    (home.root / "DEMO").write_text("demo\n")


def test_a_session_runs_is_logged_and_the_next_is_refused_until_the_gap(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    make_demo(home)
    assert liv(home, "start", "--device", sim()) == 0
    out = capsys.readouterr().out
    assert "Session complete, well done" in out
    (rec,) = records(home)
    assert rec.status is SessionStatus.COMPLETED
    assert rec.slot == 1
    assert rec.minutes_at_dose == pytest.approx(1.0)
    assert rec.device_id == DEVICE_ID
    assert rec.exposure is not None
    assert 0.5 < rec.exposure["a_w_m_s2"] < 1.0  # 0.3 g at 45 Hz: 2.08 m/s^2 rms x Wk 0.28
    assert len(rec.envelope) > 5 * 60  # about 10 points a second over > 60 s
    assert rec.p95_abs_error_pct is not None
    assert rec.p95_abs_error_pct < 2.0
    assert rec.freqs_hz == (45.0,)
    # too soon for the second session: refused, with the time it will be allowed
    assert liv(home, "start", "--device", sim()) == 1
    err = capsys.readouterr().err
    # "allowed from 14:03", or "allowed tomorrow from 00:03" late in the day
    assert re.search(r"allowed (tomorrow )?from \d\d:\d\d", err), err
    assert len(records(home)) == 1
    assert liv(home, "status") == 0
    status = capsys.readouterr().out
    assert "Session 1: done." in status
    assert "Session 2: not done yet." in status
    # an override runs it anyway and says so in the log
    assert liv(home, "start", "--device", sim(), "--override", "clinic visit") == 0
    second = records(home)[-1]
    assert second.override
    assert second.override_reason == "clinic visit"
    assert liv(home, "verify") == 0


def test_no_configured_plate_is_an_error_not_a_simulator(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start") == 1
    assert "No plate is set up on this computer" in capsys.readouterr().err
    assert records(home) == []


def test_a_safety_trip_is_recorded_with_its_reason(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start", "--device", sim("&open_circuit_at=20")) == 1
    out = capsys.readouterr().out
    assert "stopped itself for safety" in out
    (rec,) = records(home)
    assert rec.status is SessionStatus.TRIPPED
    assert "respond" in rec.reason
    assert rec.safety_events[0]["reason"] == "no_response"
    assert 0.0 < rec.minutes_at_dose < 1.0


def _session_process(home: LivHome, speed: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sessions.cli", "start", "--device", sim(f"&speed={speed}"),
         "--home", str(home.root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_checkpoint(home: LivHome, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if home.db_path().exists():
            with sqlite3.connect(home.db_path()) as db:
                try:
                    row = db.execute(
                        "SELECT minutes_at_dose FROM sessions WHERE status = 'running'"
                    ).fetchone()
                except sqlite3.OperationalError:
                    row = None
            if row and row[0] > 0.0:
                return
        time.sleep(0.2)
    raise AssertionError("no checkpoint with minutes at dose was written")


def test_kill_9_mid_session_is_recovered_as_interrupted_and_resumed(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    make_demo(home)
    proc = _session_process(home, speed=4)
    try:
        _wait_for_checkpoint(home)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    # the next start recovers the dead session, then resumes the same slot for what is left
    assert liv(home, "start", "--device", sim()) == 0
    first, second = records(home)
    assert first.status is SessionStatus.INTERRUPTED
    assert "crash, kill or power loss" in first.reason
    assert 0.0 < first.minutes_at_dose < 1.0
    assert second.resumed_from == first.session_id
    assert second.slot == first.slot == 1
    assert second.minutes_prescribed == pytest.approx(1.0 - first.minutes_at_dose, abs=1e-6)
    assert first.minutes_at_dose + second.minutes_at_dose == pytest.approx(1.0, abs=1e-6)
    assert liv(home, "verify") == 0
    assert "every chain intact" in capsys.readouterr().out


def test_sigterm_stops_the_session_as_ctrl_c_does_with_the_computers_reason(home: LivHome) -> None:
    make_demo(home)
    proc = _session_process(home, speed=4)
    try:
        _wait_for_checkpoint(home)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (rec,) = records(home)
    assert rec.status is SessionStatus.STOPPED_BY_PATIENT
    assert rec.reason == "stopped by the computer (a stop signal, SIGTERM)"


def test_an_edited_row_is_caught_by_verify(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start", "--device", sim()) == 0
    capsys.readouterr()
    with sqlite3.connect(home.db_path()) as db:
        for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            db.execute(f'DROP TRIGGER "{trigger}"')
        db.execute("UPDATE sessions SET minutes_at_dose = 9.5")
    assert liv(home, "verify") == 1
    err = capsys.readouterr().err
    assert "LOG CHANGED" in err
    assert records(home)[0].session_id in err


def test_export_and_import_round_trip(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start", "--device", sim()) == 0
    exported = tmp_path / "log.jsonl"
    assert liv(home, "export", "--out", str(exported)) == 0
    other = tmp_path / "clinic.db"
    assert main(["import", str(exported), "--db", str(other), "--home", str(home.root)]) == 0
    assert main(["import", str(exported), "--db", str(other), "--home", str(home.root)]) == 0
    assert "0 records (1 already present)" in capsys.readouterr().out.splitlines()[-1].replace(
        "imported ", ""
    )
    with SessionLog(other) as log:
        (rec,) = log.sessions()
        assert log.verify().ok
    assert rec.session_id == records(home)[0].session_id
    assert main(["sessions", "--json", "--db", str(other), "--home", str(home.root)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["patient_id"] == "P-0123"


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "html"])
def test_report_in_every_format(
    home: LivHome, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start", "--device", sim()) == 0
    out_file = tmp_path / f"report.{fmt}"
    assert liv(home, "report", "--format", fmt, "--out", str(out_file)) == 0
    text = out_file.read_text()
    assert "P-0123" in text
    if fmt == "json":
        data = json.loads(text)
        # a session on the simulator is listed apart, never counted (tests/test_modes.py)
        assert data["set_apart"][0]["device_id"] == DEVICE_ID
        assert data["devices"] == []
    if fmt == "html":
        assert text.lstrip().lower().startswith("<!doctype html")


def test_show_writes_the_amplitude_chart(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start", "--device", sim()) == 0
    (rec,) = records(home)
    svg = tmp_path / "s.svg"
    assert liv(home, "show", rec.session_id, "--svg", str(svg)) == 0
    assert "amplitude" in capsys.readouterr().out
    assert svg.read_text().startswith("<svg")


def test_report_names_the_patient_when_the_log_holds_several(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_log = tmp_path / "none.db"
    SessionLog(empty_log).close()  # a log with no sessions (reading never creates one)
    assert main(["report", "--db", str(empty_log), "--home", str(tmp_path / "nohome")]) == 1
    assert "--patient" in capsys.readouterr().err
