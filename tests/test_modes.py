"""Simulated is never therapy; engineering commands are not a back door (issue 10).

A session on a simulator (HELLO capability SIMULATED, a ``sim://`` URL, a served simulator) is
logged as ``simulated`` and never counts; ``liv run``, ``liv device drive`` and ``liv calibrate``
refuse without ``--engineer`` and, with it, stay under the ceilings (judged from the simulator's
truth) and are logged as ``engineering`` runs that never count. A demo home (a file ``DEMO``)
counts simulated sessions and says so on every output.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from firmware_bridge.dose_limits import DOSE_LIMITS
from sessions.adherence import DEMO_LABEL, compute_adherence
from sessions.cli import main
from sessions.commands.status import status_lines
from sessions.home import LivHome
from sessions.log import SessionKind, SessionLog, SessionStatus, record_hash
from sessions.protocol import load_protocol
from sessions.runner import device_kind
from sessions.wording import say
from tests.simhelpers import install_signed, load_truth, protocol_yaml, truth_envelope
from tests.test_sessions import liv

DEVICE_ID = "LIV-0042"  # looks like a real plate's id: it must not make a simulator therapy
PATIENT = "P-0123"
REFUSAL = "This is a command for service engineers. It is not needed for your sessions."


def sim(params: str = "") -> str:
    return f"sim://?speed=max&mass=70&seed=4&device_id={DEVICE_ID}{params}"


@pytest.fixture
def home(tmp_path: Path) -> LivHome:
    """An installation with a 1-minute protocol and a calibrated simulated plate."""
    h = LivHome(tmp_path / "home")
    h.ensure()
    install_signed(h)
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as dev:
        h.calibrations().save(identify(dev))
    return h


def logged(home: LivHome) -> list[Any]:
    with SessionLog(home.db_path()) as log:
        return list(log.sessions())


def make_demo(home: LivHome) -> None:
    """What ``liv demo`` leaves in its home: a file named DEMO in the root."""
    (home.root / "DEMO").write_text("a demo home: simulated sessions, not therapy\n")


# ---- simulated is never therapy ----------------------------------------------------------------


def test_a_session_on_the_simulator_is_logged_as_simulated_and_does_not_count(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start", "--device", sim()) == 0
    out = capsys.readouterr().out
    assert say("outcome.completed") in out
    assert say("start.simulated") in out
    (rec,) = logged(home)
    assert rec.kind is SessionKind.SIMULATED
    assert rec.device_id == DEVICE_ID
    assert rec.minutes_at_dose == pytest.approx(1.0)
    # status: the slot is still due, and the simulated session is named apart
    assert liv(home, "status") == 0
    status = capsys.readouterr().out
    assert "Session 1: not done yet." in status
    assert say("status.not_counted") in status
    assert say("status.streak_0") in status
    # a second session right away is not refused by the gap: the first one was not therapy
    assert liv(home, "start", "--device", sim()) == 0
    assert [r.kind for r in logged(home)] == [SessionKind.SIMULATED] * 2
    assert liv(home, "verify") == 0


def test_report_adherence_leaves_simulated_sessions_out_and_lists_them_apart(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start", "--device", sim()) == 0
    (rec,) = logged(home)
    capsys.readouterr()
    assert liv(home, "report", "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    today = [d for d in data["days"] if d["date"] == rec.local_date.isoformat()]
    assert today == [] or today[0]["minutes_logged"] == 0
    assert data["overall"]["minutes_at_dose"] == 0
    assert data["devices"] == []
    assert data["demo"] is False
    assert data["label"] is None
    assert [(s["session_id"], s["kind"]) for s in data["set_apart"]] == [
        (rec.session_id, "simulated")
    ]
    assert liv(home, "report") == 0
    table = capsys.readouterr().out
    assert "Not counted (not therapy): 1 session(s)" in table
    assert rec.session_id in table
    html = tmp_path / "r.html"
    assert liv(home, "report", "--format", "html", "--out", str(html)) == 0
    capsys.readouterr()
    page = html.read_text()
    assert "Not counted: simulated sessions and engineering runs (1)" in page
    assert rec.session_id in page
    assert liv(home, "report", "--format", "csv") == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split(",")[-3:-1] == ["not_counted", "label"]
    # sessions / show / export name the kind
    assert liv(home, "sessions") == 0
    assert "simulated (not therapy)" in capsys.readouterr().out
    assert liv(home, "sessions", "--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "simulated"
    assert listed["counts_as_therapy"] is False
    assert liv(home, "show", rec.session_id) == 0
    assert "simulated (not therapy)" in capsys.readouterr().out
    exported = tmp_path / "log.jsonl"
    assert liv(home, "export", "--out", str(exported)) == 0
    header, record = (json.loads(line) for line in exported.read_text().splitlines())
    assert header["schema"] == "liv.export_header/1"
    assert record["kind"] == "simulated"


def test_a_served_simulator_is_simulated_whatever_its_url(tmp_path: Path) -> None:
    """The HELLO bit decides, not the URL: a served simulator reached on a pty or TCP port."""
    with DeviceClient.open(sim()) as device:
        info = device.info
    assert "SIMULATED" in info.capabilities
    assert device_kind(info, "socket://127.0.0.1:4000") is SessionKind.SIMULATED
    assert device_kind(info, "/dev/ttyACM0") is SessionKind.SIMULATED
    real = dataclasses.replace(info, capabilities=["COIL_TEMPERATURE"])
    assert device_kind(real, "/dev/ttyACM0") is SessionKind.THERAPY
    # a sim:// URL is the simulator even if a (modified) simulator left the bit out
    assert device_kind(real, "sim://?device_id=LIV-0042") is SessionKind.SIMULATED
    assert device_kind(real, " SIM://?seed=1") is SessionKind.SIMULATED


def test_status_and_adherence_count_therapy_records_only(home: LivHome) -> None:
    """Records built directly: one therapy, one simulated, one engineering in the same slot."""
    protocol = load_protocol(home.protocol_path)
    # noon today (the protocol's zone is UTC): "five hours ago" run before 05:00 was yesterday,
    # and the test failed every night
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    today = now.date()
    with SessionLog(home.db_path()) as log:
        for kind in (SessionKind.SIMULATED, SessionKind.ENGINEERING):
            sid = log.start_session(**_fields(protocol, now - timedelta(hours=5)), kind=kind)
            _finish(log, sid, now - timedelta(hours=5), minutes=1.0)
        recent = log.summaries(PATIENT)
        minutes = log.slot_minutes(PATIENT)
        assert minutes == {}
        lines = status_lines(protocol, recent, now, minutes)
        assert "  Session 1: not done yet." in lines
        assert "  " + say("status.not_counted") in lines
        report = compute_adherence(protocol, recent, today=today + timedelta(days=1))
        assert report.minutes_at_dose == 0
        assert {s.kind for s in report.set_apart} == {"simulated", "engineering"}
        # the same slot with a therapy record: counted, and the others still are not
        sid = log.start_session(**_fields(protocol, now - timedelta(hours=4)))
        _finish(log, sid, now - timedelta(hours=4), minutes=1.0)
        recent = log.summaries(PATIENT)
        assert log.slot_minutes(PATIENT) == {(today, 1): 1.0}
        report = compute_adherence(protocol, recent, today=today + timedelta(days=1))
        assert report.day(today) is not None
        assert report.day(today).minutes_logged == pytest.approx(1.0)  # type: ignore[union-attr]
        assert report.day(today).sessions_logged == 1  # type: ignore[union-attr]
        assert len(report.set_apart) == 2


def _fields(protocol: Any, started: datetime, slot: int = 1) -> dict[str, Any]:
    return {
        "patient_id": protocol.patient_id,
        "device_id": DEVICE_ID,
        "firmware_version": "1.0",
        "protocol_sha256": protocol.sha256,
        "protocol_json": protocol.canonical_json(),
        "started_utc": started,
        "timezone": protocol.timezone,
        "local_date": started.astimezone(protocol.zone).date(),
        "slot": slot,
        "minutes_prescribed": protocol.minutes_per_session,
        "target_g": protocol.target_g,
    }


def _finish(log: SessionLog, session_id: str, started: datetime, minutes: float) -> None:
    log.finish_session(
        session_id,
        status="completed",
        reason="prescribed minutes at dose delivered",
        ended_utc=started + timedelta(minutes=minutes),
        minutes_at_dose=minutes,
        envelope=[(0.0, 0.0), (1.0, 0.3)],
        freqs_hz=[45.0],
        safety_events=[],
        mean_error_pct=0.1,
        p95_abs_error_pct=0.5,
        exposure=None,
    )


# ---- old records, the hash, import -------------------------------------------------------------


def test_a_record_from_before_kinds_keeps_its_hash_and_reads_as_therapy(tmp_path: Path) -> None:
    """A record written without ``kind`` (NULL in the row) hashes without it and verifies."""
    path = tmp_path / "liv.db"
    with SessionLog(path) as log:
        started = datetime(2025, 1, 10, 7, 30, tzinfo=UTC)
        protocol = load_protocol(_protocol_file(tmp_path))
        sid = log.start_session(**_fields(protocol, started))
        _finish(log, sid, started, 1.0)
    with sqlite3.connect(path) as db:  # write the record as the software before kinds did
        for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            db.execute(f'DROP TRIGGER "{trigger}"')
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM sessions").fetchone())
    with SessionLog(path) as log:
        raw = json.loads(_export(log))
    old = {k: v for k, v in raw.items() if k != "kind"}
    old["record_hash"] = record_hash(old["prev_hash"], old)
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE sessions SET kind = NULL, record_hash = ? WHERE session_id = ?",
            (old["record_hash"], row["session_id"]),
        )
    with SessionLog(path, read_only=True) as log:
        assert log.verify().ok
        (rec,) = log.sessions()
        assert rec.kind is SessionKind.THERAPY
        line = _export(log)
        assert "kind" not in json.loads(line)  # exported as written: its hash still holds
        assert log.slot_minutes(PATIENT) == {(date(2025, 1, 10), 1): 1.0}
    other = tmp_path / "clinic.db"
    with SessionLog(other) as clinic:  # an old export imports, and verifies there
        assert clinic.import_jsonl(io.StringIO(line)).added == 1
        assert clinic.verify().ok
        assert clinic.sessions()[0].kind is SessionKind.THERAPY
    # turning a simulated record into an "old" one (kind removed) breaks its hash
    with SessionLog(tmp_path / "sim.db") as log:
        sid = log.start_session(**_fields(protocol, started), kind=SessionKind.SIMULATED)
        _finish(log, sid, started, 1.0)
        edited = json.loads(_export(log))
    del edited["kind"]
    with SessionLog(tmp_path / "clinic2.db") as clinic, pytest.raises(Exception, match="edited"):
        clinic.import_jsonl(io.StringIO(json.dumps(edited)))


def _protocol_file(tmp_path: Path) -> Path:
    path = tmp_path / "proto.yaml"
    path.write_text(protocol_yaml(study_start="2025-01-01", study_end="2025-06-30"))
    return path


def _export(log: SessionLog) -> str:
    out = io.StringIO()
    log.export_jsonl(out)
    return out.getvalue().strip()


# ---- a demo home -------------------------------------------------------------------------------


def test_a_demo_home_counts_simulated_sessions_and_labels_every_output(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not home.is_demo
    make_demo(home)
    assert home.is_demo
    assert liv(home, "start", "--device", sim()) == 0
    out = capsys.readouterr().out
    assert say("status.demo") in out
    (rec,) = logged(home)
    assert rec.kind is SessionKind.SIMULATED  # still recorded as what it was
    assert liv(home, "status") == 0
    status = capsys.readouterr().out
    assert say("status.demo") in status
    assert "Session 1: done." in status
    assert liv(home, "start", "--device", sim()) == 1  # the schedule counts it: the gap holds
    # "allowed from 14:03", or "allowed tomorrow from 00:03" late in the day
    assert re.search(r"allowed (tomorrow )?from \d\d:\d\d", capsys.readouterr().err)
    assert liv(home, "report", "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["demo"] is True
    assert data["label"] == DEMO_LABEL
    assert data["set_apart"] == []
    assert data["devices"][0]["sessions"] == 1
    for fmt in ("table", "csv", "html"):
        assert liv(home, "report", "--format", fmt) == 0
        assert DEMO_LABEL.upper() in capsys.readouterr().out.upper(), fmt
    for argv in (["sessions"], ["show", rec.session_id], ["verify"]):
        assert liv(home, *argv) == 0
        assert DEMO_LABEL.upper() in capsys.readouterr().out, argv
    assert liv(home, "sessions", "--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["label"] == DEMO_LABEL
    assert listed["counts_as_therapy"] is True
    assert liv(home, "export", "--out", str(tmp_path / "x.jsonl")) == 0
    assert DEMO_LABEL in capsys.readouterr().err


# ---- engineer mode -----------------------------------------------------------------------------

ENGINEERING_ARGV = {
    "run": ["run", "--device", "DEVICE", "--freq", "45", "--amplitude", "0.3", "--seconds", "2"],
    "drive": [
        "device",
        "drive",
        "--device",
        "DEVICE",
        "--freq",
        "45",
        "--drive",
        "0.05",
        "--seconds",
        "1",
    ],
    "calibrate": ["calibrate", "--device", "DEVICE"],
    "calibrate --sensor": ["calibrate", "--sensor", "--device", "DEVICE"],
}


def empty_plate(truth: Path, params: str = "") -> str:
    return f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}&truth={truth}{params}"


@pytest.mark.parametrize("which", sorted(ENGINEERING_ARGV))
def test_engineering_commands_refuse_without_engineer_mode(
    home: LivHome, tmp_path: Path, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = tmp_path / "truth.npz"
    argv = [empty_plate(truth) if a == "DEVICE" else a for a in ENGINEERING_ARGV[which]]
    assert liv(home, *argv) == 1
    captured = capsys.readouterr()
    assert captured.err == f"liv: {REFUSAL}\n"
    assert captured.out == ""
    assert not truth.exists()  # the plate was never opened, let alone moved
    assert not home.db_path().exists() or logged(home) == []
    # typed bare, as a patient might: the same sentence, not a usage message
    assert main([argv[0], *(["drive"] if argv[0] == "device" else [])]) == 1
    assert capsys.readouterr().err == f"liv: {REFUSAL}\n"


def test_help_of_an_engineering_command_needs_no_engineer_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    assert "--engineer" in capsys.readouterr().out


def test_liv_run_in_engineer_mode_is_logged_as_engineering_and_stays_under_the_ceiling(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth_path = tmp_path / "truth.npz"
    device = f"sim://?speed=max&mass=70&seed=4&device_id={DEVICE_ID}&truth={truth_path}"
    argv = ["run", "--engineer", "--device", device, "--freq", "45", "--amplitude", "0.3"]
    assert liv(home, *argv, "--seconds", "3") == 0
    capsys.readouterr()
    truth = load_truth(truth_path)
    _, amp_g = truth_envelope(truth, truth["t_s"], 0.0, float(truth["t_s"][-1]), 1 / 45)
    assert 0.25 < float(amp_g.max()) <= DOSE_LIMITS.over_acceleration_ceiling_g
    (rec,) = logged(home)
    assert rec.kind is SessionKind.ENGINEERING
    assert rec.status is SessionStatus.COMPLETED
    assert rec.patient_id == PATIENT  # filed under the installation's patient, apart
    assert rec.minutes_at_dose == 0.0
    assert rec.target_g == pytest.approx(0.3)
    assert rec.minutes_prescribed == pytest.approx(3 / 60)
    assert json.loads(rec.protocol_json)["command"] == "liv run"
    assert "held 3.0 of 3 s at 0.3 g" in rec.reason
    assert rec.envelope  # the measured amplitude, as for a session
    assert liv(home, "status") == 0
    status = capsys.readouterr().out
    assert "Session 1: not done yet." in status
    assert say("status.not_counted") in status
    make_demo(home)  # not even a demo home counts an engineering run
    assert liv(home, "report", "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overall"]["minutes_at_dose"] == 0
    assert [s["kind"] for s in data["set_apart"]] == ["engineering"]


def test_liv_run_in_engineer_mode_keeps_the_dose_table(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = tmp_path / "truth.npz"
    for extra in (["--amplitude", "0.45"], ["--freq", "20"]):
        argv = ["run", "--engineer", "--device", empty_plate(truth), "--seconds", "2"]
        with pytest.raises(SystemExit) as usage:
            liv(home, *argv, *(["--freq", "45"] if "--freq" not in extra else []), *extra)
        assert usage.value.code == 2
        assert "is not allowed" in capsys.readouterr().err
    assert not truth.exists()


def test_device_drive_is_refused_above_the_calibrated_limit(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """By the empty plate's calibration, drive 0.9 at 45 Hz is far above 0.5 g: refused."""
    truth = tmp_path / "truth.npz"
    argv = ["device", "drive", "--engineer", "--device", empty_plate(truth), "--freq", "45"]
    assert liv(home, *argv, "--drive", "0.9", "--seconds", "1") == 2
    err = capsys.readouterr().err
    assert "--drive 0.9 at 45 Hz is not allowed" in err
    assert "use at most" in err
    assert "Traceback" not in err
    assert not np.any(load_truth(truth)["drive"])  # opened to read its id; never driven
    assert logged(home) == []


def test_device_drive_within_the_calibrated_limit_runs_and_is_logged(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cal = home.calibrations().load(DEVICE_ID)
    assert cal is not None
    limit = DOSE_LIMITS.over_acceleration_ceiling_g / cal.gain_at(45.0)
    truth_path = tmp_path / "truth.npz"
    argv = ["device", "drive", "--engineer", "--device", empty_plate(truth_path), "--freq", "45"]
    assert liv(home, *argv, "--drive", f"{0.9 * limit:.4f}", "--seconds", "1") == 0
    capsys.readouterr()
    truth = load_truth(truth_path)
    _, amp_g = truth_envelope(truth, truth["t_s"], 0.0, float(truth["t_s"][-1]), 1 / 45)
    assert float(amp_g.max()) <= DOSE_LIMITS.over_acceleration_ceiling_g
    (rec,) = logged(home)
    assert rec.kind is SessionKind.ENGINEERING
    assert rec.status is SessionStatus.COMPLETED
    assert json.loads(rec.protocol_json)["command"] == "liv device drive"
    assert "peak" in rec.reason


def test_device_drive_without_a_calibration_is_held_by_the_firmware_and_logged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No calibration: only the firmware's ceiling bounds it; the trip is the record's reason."""
    from tests.test_firmware_limits import assert_held_to_the_ceiling

    bare = LivHome(tmp_path / "bare")
    truth_path = tmp_path / "truth.npz"
    device = f"sim://?speed=max&seed=3&mass=0&device_id={DEVICE_ID}&truth={truth_path}"
    argv = ["device", "drive", "--engineer", "--device", device, "--freq", "20", "--drive", "0.9"]
    assert main([*argv, "--seconds", "2", "--home", str(bare.root)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    truth = load_truth(truth_path)
    assert_held_to_the_ceiling(truth, 20.0)  # true peak within the documented margin
    (rec,) = logged(bare)
    assert rec.kind is SessionKind.ENGINEERING
    assert rec.status is SessionStatus.TRIPPED
    assert "the plate stopped itself" in rec.reason
    assert rec.patient_id == "engineering"  # no protocol installed


def test_liv_calibrate_in_engineer_mode_is_logged_as_engineering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = LivHome(tmp_path / "bare")
    truth_path = tmp_path / "truth.npz"
    argv = ["calibrate", "--engineer", "--device", empty_plate(truth_path)]
    assert main([*argv, "--home", str(bare.root)]) == 0
    capsys.readouterr()
    truth = load_truth(truth_path)
    assert (
        np.max(np.abs(truth["accel_g"] - np.median(truth["accel_g"])))
        < DOSE_LIMITS.firmware_ceiling_g
    )
    (rec,) = logged(bare)
    assert rec.kind is SessionKind.ENGINEERING
    assert rec.status is SessionStatus.COMPLETED
    assert json.loads(rec.protocol_json)["command"] == "liv calibrate"
    assert bare.calibrations().load(DEVICE_ID) is not None
