"""Where liv keeps its data, tested from the states users are really in.

The real ``liv`` command runs in a subprocess with ``HOME`` (and ``XDG_DATA_HOME`` where it
matters) pointed at a temporary directory and no ``LIV_*`` variable unless a test sets one: the
default data directory, a second demo on the same machine, planted symbolic links, homes other
users could change, damaged calibrations.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from controller.calibration import Calibration
from sessions.adherence import compute_adherence
from sessions.log import SessionLog
from sessions.protocol import MAX_STUDY_DAYS, ProtocolFileError, load_protocol
from sessions.report import render_html, render_table
from sessions.wording import say
from tests.simhelpers import enrol_home, write_signed

SIM = "sim://?speed=max"
EMPTY = "sim://?speed=max&mass=0"  # calibrations are of the empty plate
_OURS = ("LIV_HOME", "LIV_DB", "LIV_CALIBRATION_DIR", "XDG_DATA_HOME")


@dataclass
class Machine:
    """A user's machine: a home directory and the environment ``liv`` runs in."""

    user: Path
    env: dict[str, str]

    @property
    def default_home(self) -> Path:
        return self.user / ".local" / "share" / "liv"

    def liv(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sessions.cli", *argv],
            env={**self.env, **env}, capture_output=True, text=True, timeout=110, check=False,
        )  # fmt: skip


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    user = tmp_path / "user"
    user.mkdir(mode=0o700)
    scratch = tmp_path / "tmp"
    scratch.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in _OURS}
    env.update(HOME=str(user), TMPDIR=str(scratch))
    return Machine(user, env)


def one_sentence(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The command failed with ``code`` and one line on stderr, no traceback; that line."""
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    # the first start on a plate pairs it and says so, and an engineer's calibration shows its
    # progress (docs/cli.md); the refusal is the one line after those
    lines = [
        line
        for line in done.stderr.strip().splitlines()
        if line != say("start.paired") and not line.startswith("calibrating: ")
    ]
    assert len(lines) == 1, done.stderr
    return lines[0]


def protocol_text(start: date | None = None, end: date | None = None, minutes: float = 1.0) -> str:
    first = start or date.today() - timedelta(days=1)
    last = end or first + timedelta(days=90)
    return (
        "patient_id: P-0042\ntarget_g: 0.3\nfrequency_hz: 30\n"
        f"minutes_per_session: {minutes:g}\nsessions_per_day: 2\nmin_gap_hours: 3\n"
        f"study_start: {first.isoformat()}\nstudy_end: {last.isoformat()}\n"
        "timezone: UTC\n"
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256), to show nothing changed."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---- 1. one resolver of the data directory for every command ---------------------------------


def test_liv_home_holds_the_calibration_that_calibrate_writes_and_run_and_start_read(
    machine: Machine, tmp_path: Path
) -> None:
    home = tmp_path / "clinic-home"
    env = {"LIV_HOME": str(home)}
    assert machine.liv("calibrate", "--engineer", "--device", EMPTY, **env).returncode == 0
    assert (home / "calibration" / "SIM-0001.json").is_file()
    assert not machine.default_home.exists()

    run = machine.liv("run", "--engineer", "--device", SIM, "--freq", "30", "--seconds", "1", **env)
    assert run.returncode == 0, run.stderr
    elsewhere = machine.liv(
        "run",
        "--engineer",
        "--device",
        SIM,
        "--freq",
        "30",
        "--seconds",
        "1",
        LIV_HOME=str(tmp_path / "b"),
    )
    assert f"no calibration for SIM-0001 in {tmp_path / 'b' / 'calibration'}" in one_sentence(
        elsewhere, 2
    )

    # the session commands find the same calibration through the same rule
    source = write_signed(tmp_path / "rx.yaml", protocol_text())
    enrol_home(home)
    assert machine.liv("protocol", "install", str(source), **env).returncode == 0
    assert machine.liv("device", "set", SIM, **env).returncode == 0
    start = machine.liv("start", **env)
    assert start.returncode == 0, start.stdout + start.stderr
    assert (home / "liv.db").is_file()
    assert not machine.default_home.exists()


@pytest.mark.parametrize("xdg", [False, True])
def test_with_nothing_set_calibrate_and_run_use_the_default_home(
    machine: Machine, tmp_path: Path, xdg: bool
) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")} if xdg else {}
    home = tmp_path / "xdg" / "liv" if xdg else machine.default_home
    assert machine.liv("calibrate", "--engineer", "--device", EMPTY, **env).returncode == 0
    assert (home / "calibration" / "SIM-0001.json").is_file()
    run = machine.liv("run", "--engineer", "--device", SIM, "--freq", "30", "--seconds", "1", **env)
    assert run.returncode == 0, run.stderr
    assert (home.stat().st_mode & 0o777) == 0o700


def test_the_home_option_works_for_calibrate_and_run(machine: Machine, tmp_path: Path) -> None:
    home = tmp_path / "given"
    assert (
        machine.liv("calibrate", "--engineer", "--device", EMPTY, "--home", str(home)).returncode
        == 0
    )
    assert (home / "calibration" / "SIM-0001.json").is_file()
    run = machine.liv(
        "run", "--engineer", "--device", SIM, "--freq", "30", "--seconds", "1", "--home", str(home)
    )
    assert run.returncode == 0, run.stderr
    assert not machine.default_home.exists()


# ---- 2. the demo keeps to its own home ------------------------------------------------------


def test_the_demo_leaves_the_default_home_alone_and_runs_twice(machine: Machine) -> None:
    real = machine.default_home
    real.mkdir(parents=True, mode=0o700)
    (real / "protocol.yaml").write_text(protocol_text())
    (real / "device").write_text("/dev/ttyACM0\n")
    with SessionLog(real / "liv.db"):
        pass
    before = snapshot(real)

    for _ in range(2):
        done = machine.liv("demo")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr
        assert "Session complete" in done.stdout
        assert "Traceback" not in done.stderr

    assert snapshot(real) == before
    demos = sorted((Path(machine.env["TMPDIR"])).glob("liv-demo-*"))
    assert len(demos) == 2
    assert all((d / "liv.db").is_file() for d in demos)


def test_the_demo_refuses_a_home_that_holds_data(machine: Machine) -> None:
    real = machine.default_home
    real.mkdir(parents=True, mode=0o700)
    (real / "protocol.yaml").write_text(protocol_text())
    before = snapshot(real)
    line = one_sentence(machine.liv("demo", "--home", str(real)))
    assert "is not empty" in line
    assert snapshot(real) == before


# ---- 3. no write follows a planted link -----------------------------------------------------


@pytest.mark.parametrize("at", ["file", "temp file"])
@pytest.mark.parametrize("what", ["protocol", "device", "calibration"])
def test_a_planted_symlink_is_refused_and_the_outside_file_untouched(
    machine: Machine, tmp_path: Path, what: str, at: str
) -> None:
    home = tmp_path / "home"
    (home / "calibration").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    name = {
        "protocol": "protocol.yaml",
        "device": "device",
        "calibration": "calibration/SIM-0001.json",
    }[what]
    link = home / (name if at == "file" else name + ".tmp")
    link.symlink_to(outside)
    source = write_signed(tmp_path / "rx.yaml", protocol_text())
    enrol_home(home)
    argv = {
        "protocol": ["protocol", "install", str(source)],
        "device": ["device", "set", SIM],
        "calibration": ["calibrate", "--engineer", "--device", EMPTY],
    }[what]
    line = one_sentence(machine.liv(*argv, "--home", str(home)))
    assert f"refusing to write {home / name}" in line
    assert "symbolic link" in line
    assert outside.read_text() == "precious\n"
    assert link.is_symlink()


# ---- 4. a home other users could change is refused ------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_a_default_home_other_users_can_write_is_refused(machine: Machine, mode: int) -> None:
    real = machine.default_home
    real.mkdir(parents=True)
    (real / "protocol.yaml").write_text(protocol_text())
    real.chmod(mode)
    for argv in (
        ["status"],
        ["start", "--device", SIM],
        ["calibrate", "--engineer", "--device", EMPTY],
    ):
        line = one_sentence(machine.liv(*argv))
        assert f"{real} can be changed by other users" in line
        assert f"run 'chmod 700 {real}'" in line
    assert not (real / "calibration").exists()


def test_a_calibration_dir_other_users_can_write_is_refused(
    machine: Machine, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / "calibration").mkdir(parents=True, mode=0o700)
    (home / "calibration").chmod(0o777)
    calibrate = ["calibrate", "--engineer", "--device", EMPTY]
    run = ["run", "--engineer", "--device", SIM, "--freq", "30", "--seconds", "1"]
    for argv in (calibrate, run):
        line = one_sentence(machine.liv(*argv, "--home", str(home)))
        assert f"chmod 700 {home / 'calibration'}" in line
    assert list((home / "calibration").iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_a_home_owned_by_another_user_is_refused(machine: Machine, tmp_path: Path) -> None:
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    (home / "protocol.yaml").write_text(protocol_text())
    os.chown(home, 65534, 65534)
    line = one_sentence(machine.liv("status", "--home", str(home)))
    assert f"{home} belongs to another user (uid 65534)" in line


# ---- 5. a damaged calibration is one sentence -----------------------------------------------


def _good_calibration() -> dict[str, object]:
    return Calibration(
        device_id="SIM-0001",
        freqs_hz=(25.0, 60.0, 100.0),
        g_per_drive=(0.8, 0.9, 0.7),
        phase_rad=(0.1, 0.2, 0.3),
        drive=0.08,
        created_utc="2026-01-01T00:00:00+00:00",
    ).to_dict()


def _with(**changes: object) -> bytes:
    return json.dumps({**_good_calibration(), **changes}).encode()


DAMAGED = {
    "truncated": json.dumps(_good_calibration()).encode()[:57],
    "not JSON": b"calibration? what calibration\n",
    "not UTF-8": b"\xff\xfe{\x00",
    "a list": b"[1, 2, 3]",
    "gains are text": _with(g_per_drive=["0.8", "0.9", "0.7"]),
    "frequencies are one number": _with(freqs_hz=30),
    "device id is a number": _with(device_id=7),
    "a missing field": json.dumps(
        {k: v for k, v in _good_calibration().items() if k != "phase_rad"}
    ).encode(),
    "NaN gain": _with(g_per_drive=[0.8, math.nan, 0.7]),
    "NaN drive": _with(drive=math.nan),
    "infinite phase": _with(phase_rad=[0.1, math.inf, 0.3]),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_damaged_calibration_is_one_sentence(machine: Machine, tmp_path: Path, kind: str) -> None:
    home = tmp_path / "home"
    (home / "calibration").mkdir(parents=True, mode=0o700)
    path = home / "calibration" / "SIM-0001.json"
    path.write_bytes(DAMAGED[kind])
    line = one_sentence(
        machine.liv(
            "run",
            "--engineer",
            "--device",
            SIM,
            "--freq",
            "30",
            "--seconds",
            "1",
            "--home",
            str(home),
        )
    )
    assert line == (
        f"liv: the calibration file {path} is damaged or unreadable: run 'liv calibrate' "
        "again with nobody on the plate"
    )


def test_a_damaged_calibration_stops_a_session_before_the_plate_moves(
    machine: Machine, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / "calibration").mkdir(parents=True, mode=0o700)
    (home / "calibration" / "SIM-0001.json").write_bytes(DAMAGED["NaN gain"])
    source = write_signed(tmp_path / "rx.yaml", protocol_text())
    enrol_home(home)
    assert machine.liv("protocol", "install", str(source), "--home", str(home)).returncode == 0
    line = one_sentence(machine.liv("start", "--device", SIM, "--home", str(home)))
    assert line == f"liv: {say('refused.setup_damaged')}", line  # the patient's words
    verbose = machine.liv("-v", "start", "--device", SIM, "--home", str(home))
    assert "run 'liv calibrate' again" in verbose.stderr  # the engineer's, with -v


def test_a_calibration_that_does_not_cover_the_protocol_is_one_sentence(
    machine: Machine, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / "calibration").mkdir(parents=True, mode=0o700)
    narrow = {**_good_calibration(), "freqs_hz": [40.0, 50.0, 60.0]}
    (home / "calibration" / "SIM-0001.json").write_text(json.dumps(narrow))
    source = write_signed(tmp_path / "rx.yaml", protocol_text())  # 30 Hz: below 40-60 Hz
    enrol_home(home)
    assert machine.liv("protocol", "install", str(source), "--home", str(home)).returncode == 0
    done = machine.liv("start", "--device", SIM, "--home", str(home))
    line = one_sentence(done)
    assert line == f"liv: {say('refused.not_calibrated')}", line  # the patient's words
    verbose = machine.liv("-v", "start", "--device", SIM, "--home", str(home))
    assert "does not cover" in verbose.stderr  # the engineer's detail, with -v
    assert "liv calibrate" in verbose.stderr
    with SessionLog(home / "liv.db", read_only=True) as log:
        assert log.sessions() == []  # refused before the session row


def test_the_calibration_round_trips(tmp_path: Path) -> None:
    from controller.calibration import CalibrationStore

    store = CalibrationStore(tmp_path / "cal")
    cal = Calibration.from_dict(_good_calibration())
    store.save(cal)
    assert store.load("SIM-0001") == cal


# ---- 7. a study is at most five years; a report is bounded by its period ---------------------


def test_a_study_from_year_1_to_9999_is_not_installed(machine: Machine, tmp_path: Path) -> None:
    source = write_signed(tmp_path / "rx.yaml", protocol_text(date(1, 1, 1), date(9999, 12, 31)))
    home = tmp_path / "home"
    enrol_home(home)  # signed by the enrolled clinic: only the study's length can refuse it
    done = machine.liv("protocol", "install", str(source), "--home", str(home))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"a study lasts at most {MAX_STUDY_DAYS} days (five years)" in done.stderr
    assert not (home / "protocol.yaml").exists()


def test_the_longest_study_is_allowed_and_one_day_more_is_not(tmp_path: Path) -> None:
    first = date(2028, 3, 1)  # five years with two leap days (2028, 2032)
    longest = tmp_path / "longest.yaml"
    longest.write_text(protocol_text(first, first + timedelta(days=MAX_STUDY_DAYS - 1)))
    protocol = load_protocol(longest)
    assert (protocol.study_end - protocol.study_start).days + 1 == MAX_STUDY_DAYS == 1827
    too_long = tmp_path / "too-long.yaml"
    too_long.write_text(protocol_text(first, first + timedelta(days=MAX_STUDY_DAYS)))
    with pytest.raises(ProtocolFileError, match=f"{MAX_STUDY_DAYS + 1} days long"):
        load_protocol(too_long)


@dataclass(frozen=True)
class _Schedule:
    def describe(self) -> str:
        return "30 Hz"


@dataclass(frozen=True)
class _EndlessStudy:
    """A prescription as an old log could hold it, from before studies were bounded."""

    patient_id: str = "P-0042"
    target_g: float = 0.3
    dose_tolerance: float = 0.1
    schedule: _Schedule = _Schedule()
    sha256: str = "0" * 64
    minutes_per_session: float = 10.0
    sessions_per_day: int = 2
    min_gap_hours: float = 3.0
    daily_windows: tuple[object, ...] = ()
    study_start: date = date(1, 1, 1)
    study_end: date = date(9999, 12, 31)
    timezone: str = "UTC"


def test_a_report_on_an_endless_study_is_bounded_by_its_period() -> None:
    plan = _EndlessStudy()
    began = time.perf_counter()
    report = compute_adherence(
        plan, [], since=date(2026, 3, 2), until=date(2026, 3, 8), today=date(2026, 6, 1)
    )
    page = render_html(report, plan, [])
    table = render_table(report)
    assert time.perf_counter() - began < 5.0
    assert len(report.days) == 7
    assert page.count('<td><div class="day ') == 7  # one week row, not 3.6 million days
    assert len(page) < 200_000
    assert "Report period 2026-03-02 to 2026-03-08." in table

    with pytest.raises(ValueError, match="choose a shorter period with --since and --until"):
        compute_adherence(plan, [], today=date(2026, 6, 1))  # year 1 to today: refused


def test_the_calendar_covers_the_report_period_not_the_study(tmp_path: Path) -> None:
    first = date(2026, 3, 2)  # a Monday
    source = tmp_path / "rx.yaml"
    source.write_text(protocol_text(first, first + timedelta(days=MAX_STUDY_DAYS - 1)))
    protocol = load_protocol(source)
    report = compute_adherence(
        protocol, [], since=date(2026, 4, 6), until=date(2026, 4, 19), today=date(2026, 5, 1)
    )
    cells = re.findall(r'<td><div class="day (\w+)" title="(\w+ \d+ \w+ \d+)', render_html(
        report, protocol, []
    ))  # fmt: skip
    assert len(cells) == 14
    assert cells[0][1] == "Mon 6 Apr 2026"
    assert cells[-1][1] == "Sun 19 Apr 2026"
