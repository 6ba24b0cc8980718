"""Patient wording: one table, short plain sentences, and what the patient really reads.

The sentences come from sessions/wording.py; these tests keep them short and free of jargon,
check docs/wording.md against the table, and run ``liv start``/``liv status`` on the simulated
plate to read what a patient sees at the end of a completed, a stopped and a tripped session
and on a refused start, while the record keeps the technical reason.
"""

from __future__ import annotations

import re
import string
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.calibration import identify
from controller.safety import TripReason
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import DeviceNotFoundError, LinkLostError, SampleIndexError
from sessions import wording
from sessions.cli import main
from sessions.commands.status import status_lines, streak
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from sessions.prescription import public_key_pem
from sessions.protocol import PatientProtocol, protocol_from_dict
from sessions.stops import STOP_CTRL_C, STOP_PIPE, STOP_SIGHUP, STOP_SIGTERM
from sessions.wording import say
from tests.simhelpers import (
    enrol_home,
    install_signed,
    protocol_yaml,
    signed_protocol,
    write_signed,
)
from tests.test_scheduling import Logged
from tests.test_sessions import liv

DOC = Path(__file__).resolve().parents[1] / "docs" / "wording.md"
DEVICE_ID = "SIM-W1"
MAX_WORDS = 25

# Words a patient should not have to know (whole words, any case).
JARGON = (
    "g", "hz", "link", "firmware", "accelerometer", "latched", "latch", "sigterm", "sighup",
    "sigint", "pipe", "dose", "amplitude", "calibration", "calibrate", "protocol", "exception",
    "error", "traceback", "none", "true", "false", "nak", "crc", "frame", "frames", "setpoint",
    "hold", "ramp", "trip", "tripped", "stderr", "stdout", "peak", "mg", "usb", "url", "h",
    "override",
)  # fmt: skip
_JARGON_RE = re.compile(r"\b(" + "|".join(JARGON) + r")\b", re.IGNORECASE)
_RAW_NUMBER_RE = re.compile(r"\d+\.\d+")  # 0.299, 9.7: numbers a patient should not parse
_MACHINE_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")  # 2026-06-11: a person writes 11 June 2026
_REPR_RE = re.compile(r"'[^']*'|\"[^\"]*\"|<[^>]*>|\w+\(")  # quoted values, <objects>, calls
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


def plain_problems(text: str) -> list[str]:
    """What makes ``text`` unfit for a patient (empty: fit)."""
    problems = []
    for sentence in _SENTENCE_END_RE.split(text.strip()):
        if len(sentence.split()) > MAX_WORDS:
            problems.append(f"over {MAX_WORDS} words: {sentence!r}")
    if found := _JARGON_RE.findall(text):
        problems.append(f"jargon {found}")
    if _RAW_NUMBER_RE.search(text):
        problems.append("an unrounded number")
    if _MACHINE_DATE_RE.search(text):
        problems.append("a machine date")
    if _REPR_RE.search(text.replace("prescription's", "").replace("plate's", "")):
        problems.append("a repr or quoted value")
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth > 1:
            problems.append("nested parentheses")
            break
    if any(ord(c) < 32 for c in text):
        problems.append("a control character")
    return problems


SAMPLES: dict[str, object] = {
    "counted": "9 minutes",
    "counted_cap": "9 minutes",
    "left": "9:28",
    "slot": 2,
    "per_day": 2,
    "goal": "10 minutes",
    "days": 12,
    "day": "30 November 2026",
    "zone": "Europe/London",
    "message": "Please wait: the next session is allowed from 14:05.",
    "minutes": "10 minutes",
    "first": "1 January 2026",
    "last": "31 December 2030",
    "when": "tomorrow from 07:00",
    "gap": "3 hours",
    "away": "in 3 days",
    "clock": "01:30",
    "path": "Downloads/clinic-public.pem",
}


def fill(template: str) -> str:
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    assert names <= SAMPLES.keys(), f"a blank without a sample: {names - SAMPLES.keys()}"
    return template.format(**SAMPLES)


# ---- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(wording.WORDING))
def test_every_sentence_in_the_table_is_short_and_plain(key: str) -> None:
    text = fill(wording.WORDING[key])
    assert plain_problems(text) == [], text


def test_the_checker_catches_what_the_issue_found() -> None:
    """The sentences the issue quoted fail the checks that the table passes."""
    quoted = [
        "Session stopped (stopped by the patient (Ctrl-C or a stop signal)); 0.5 minutes at dose "
        "were recorded.",
        "link to the plate lost: link to the device lost: no data.",
        "accelerometer output is stuck: 32 identical samples (1.117 g).",
        "streak 0 day(s) in a row, 0.299 g of 0.300 g.",
        "no device at 'sim://?x=1'.",
        "Please wait: the next session is allowed from 23:05 (3 h after the last one ended).",
        "Today's 2 sessions are done; the next one is due tomorrow (2026-06-11) from 07:00.",
        "no protocol is installed in /home/ann/.local/share/liv: ask your clinic for it, then "
        "run 'liv protocol install FILE'",
    ]
    for text in quoted:
        assert plain_problems(text), text
    assert plain_problems(" ".join(["word"] * 26) + ".")


def test_the_doc_is_the_table() -> None:
    assert DOC.read_text(encoding="utf-8") == wording.wording_markdown(), (
        "docs/wording.md is out of date: python -m sessions.wording > docs/wording.md"
    )


def test_every_safety_stop_and_stop_reason_has_a_plain_sentence() -> None:
    assert set(wording.TRIP_WORDING) == {r.value for r in TripReason}
    reasons = [STOP_CTRL_C, STOP_SIGTERM, STOP_SIGHUP, STOP_PIPE]
    reasons += ["nobody on the plate for 2 minutes", "the session ran out of time before ..."]
    said = set()
    for reason in reasons:
        text = wording.outcome_sentence("stopped_by_patient", reason, 4.98, None)
        assert plain_problems(text) == [], text
        assert "4 minutes counted" in text  # never rounded up to time not delivered
        said.add(text)
    assert len(said) == len(reasons)  # each reason says what happened in its own words
    for trip in TripReason:
        text = wording.outcome_sentence("tripped", "technical: 1.117 g", 0.2, trip.value)
        assert plain_problems(text) == [], text
        assert text.startswith("The plate stopped")
        assert "Less than a minute counted" in text


@pytest.mark.parametrize(
    ("minutes", "said"),
    [(0.0, "no time"), (0.4, "less than a minute"), (1.0, "1 minute"), (9.99, "9 minutes")],
)
def test_minutes_are_said_in_whole_minutes_never_rounded_up(minutes: float, said: str) -> None:
    assert wording.minutes_text(minutes) == said


@pytest.mark.parametrize(
    ("hours", "said"),
    [(3.0, "3 hours"), (1.0, "1 hour"), (2.5, "2 hours 30 minutes"), (0.25, "15 minutes")],
)
def test_a_wait_is_said_in_hours_and_minutes_not_h(hours: float, said: str) -> None:
    assert wording.hours_text(hours) == said


@pytest.mark.parametrize(("days", "said"), [(0, "No day"), (1, "1 day in"), (12, "12 days in")])
def test_the_streak_is_natural_text(days: int, said: str) -> None:
    text = wording.streak_sentence(days)
    assert said in text
    assert "(s)" not in text
    assert plain_problems(text) == []


def test_device_errors_are_told_in_plain_words() -> None:
    for exc in (DeviceNotFoundError("/dev/ttyACM9", "gone"), LinkLostError("socket closed")):
        text = wording.refusal_sentence(exc)
        assert text is not None
        assert plain_problems(text) == [], text


def test_a_plate_whose_sample_clock_goes_back_is_not_called_unreachable() -> None:
    # the plate answers, so "check that it is plugged in" would send the patient after the
    # cable; its firmware is at fault, and the clinic is the next step
    text = wording.refusal_sentence(SampleIndexError(1000, 800))
    assert text == wording.say("refused.plate_readings")
    assert text != wording.say("refused.no_plate")
    assert plain_problems(text) == [], text


# ---- what a patient really reads -----------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> LivHome:
    h = LivHome(tmp_path / "home")
    h.ensure()
    install_signed(h, minutes_per_session="1")
    with DeviceClient.open(f"sim://?mass=0&seed=1&device_id={DEVICE_ID}") as dev:
        h.calibrations().save(identify(dev))
    return h


def sim(params: str = "") -> str:
    return f"sim://?mass=70&seed=4&device_id={DEVICE_ID}{params}"


def patient_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def assert_plain(text: str) -> None:
    for line in patient_lines(text):
        said = re.sub(r"^liv: ", "", line)
        assert plain_problems(said) == [], said


def test_a_completed_session_and_the_status_after_it_read_plainly(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start", "--device", sim()) == 0
    out, err = capsys.readouterr()
    assert_plain(out + err)
    assert "Step onto the plate now" in out
    assert "press Ctrl-C to stop" in out
    # the outcome, then (on this simulated plate) that it does not count
    assert patient_lines(out)[-2:] == [
        wording.say("outcome.completed"),
        wording.say("start.simulated"),
    ]
    assert liv(home, "status") == 0
    status = capsys.readouterr().out
    assert_plain(status)
    # a simulated plate's session does not count: status says so in plain words
    assert "Session 1: not done yet." in status
    assert wording.say("status.not_counted") in status
    assert "day(s)" not in status


def test_a_tripped_session_reads_plainly_and_the_record_keeps_the_detail(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert liv(home, "start", "--device", sim("&sensor_stuck_at=20")) == 1
    out, err = capsys.readouterr()
    assert_plain(out + err)
    assert patient_lines(out)[-2].startswith(wording.say("outcome.trip.sensor"))
    with SessionLog(home.db_path()) as log:
        (record,) = log.sessions()
    assert record.status is SessionStatus.TRIPPED
    assert record.reason.startswith("accelerometer output is stuck: ")  # the engineer's words
    assert liv(home, "status") == 0
    assert_plain(capsys.readouterr().out)


def test_a_start_that_cannot_reach_the_plate_reads_plainly_and_verbose_shows_why(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(home.root / "no-such-port")
    assert liv(home, "start", "--device", missing) == 1
    out, err = capsys.readouterr()
    assert err.strip() == "liv: " + wording.say("refused.no_plate")
    assert_plain(out + err)
    assert main(["-v", "start", "--device", missing, "--home", str(home.root)]) == 1
    assert "no-such-port" in capsys.readouterr().err  # the technical detail, for engineers


def test_an_uncalibrated_plate_is_refused_in_plain_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = LivHome(tmp_path / "bare")
    h.ensure()
    install_signed(h, minutes_per_session="1")
    assert liv(h, "start", "--device", sim()) == 1
    err = capsys.readouterr().err
    assert_plain(err)  # the first start also pairs the plate, and says so
    assert err.splitlines()[-1] == "liv: " + wording.say("refused.not_calibrated")


def test_protocol_install_reads_plainly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signed = signed_protocol(tmp_path / "h")
    assert main(["protocol", "install", str(signed), "--home", str(tmp_path / "h")]) == 0
    out, err = capsys.readouterr()
    assert_plain(out + err)
    assert patient_lines(out)[0] == wording.say("install.done")


def test_status_lines_for_a_part_done_day_read_plainly() -> None:
    protocol = protocol_from_dict(
        {
            "patient_id": "P1", "target_g": 0.3, "frequency_hz": 30.0,
            "minutes_per_session": 10.0, "sessions_per_day": 2, "min_gap_hours": 3.0,
            "daily_windows": [], "study_start": "2026-01-01", "study_end": "2026-12-31",
            "timezone": "UTC", "dose_tolerance": 0.1,
        }
    )  # fmt: skip
    now = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)
    minutes = {(date(2026, 6, 2), 1): 10.0, (date(2026, 6, 2), 2): 10.0}
    lines = status_lines(protocol, [], now, minutes)
    assert lines[0] == "Today is Wednesday 3 June 2026 (UTC time)."
    assert lines[-1] == "Every session done 1 day in a row."
    assert streak(protocol, minutes, now.date()) == 1
    for line in lines:
        assert plain_problems(line) == [], line


def test_device_text_in_the_technical_detail_is_made_safe(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    """The detail shown with -v can hold what a device or a URL said: never raw escapes."""
    hostile = str(home.root / "port\x1b]0;owned\x07\x1b[2J")
    assert main(["-v", "start", "--device", hostile, "--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\x07" not in err
    assert "\\x1b" in err  # shown, visibly
    assert err.splitlines()[-1] == "liv: " + wording.say("refused.no_plate")


# ---- every situation liv status, liv start and the setup commands can report -----------------


def prescription(**fields: object) -> PatientProtocol:
    values: dict[str, object] = {
        "patient_id": "P1", "target_g": 0.3, "frequency_hz": 30.0,
        "minutes_per_session": 10.0, "sessions_per_day": 2, "min_gap_hours": 3.0,
        "daily_windows": [], "study_start": "2026-06-01", "study_end": "2027-05-31",
        "timezone": "Europe/London", "dose_tolerance": 0.1,
    }  # fmt: skip
    return protocol_from_dict({**values, **fields})


def london(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo("Europe/London")).astimezone(UTC)


def status_says(protocol: PatientProtocol, sessions: list[Logged], now: datetime) -> str:
    """``liv status``'s lines, each checked by the same rules as the table; the whole text."""
    lines = status_lines(protocol, sessions, now, {})  # type: ignore[arg-type]
    for line in lines:
        assert plain_problems(line) == [], line
    return "\n".join(lines)


def test_status_before_the_study_reads_plainly() -> None:
    text = status_says(prescription(), [], london(2026, 5, 29, 9))
    assert (
        say("status.next", message=say("wait.before_study", day="1 June 2026", away="in 3 days"))
        in text
    )
    assert "not done yet" not in text
    assert say("status.streak_0") not in text  # not "today can be the first" before the study
    assert "Next: Please wait:" not in text


def test_status_after_the_study_reads_plainly() -> None:
    protocol = prescription(study_start="2025-06-01", study_end="2026-05-31")
    text = status_says(protocol, [], london(2026, 6, 2, 9))
    assert say("wait.after_study", day="31 May 2026") in text
    assert "not done yet" not in text


def test_status_between_windows_reads_plainly() -> None:
    windows = [{"start": "07:00", "end": "11:00"}, {"start": "17:00", "end": "21:00"}]
    text = status_says(prescription(daily_windows=windows), [], london(2026, 6, 10, 12))
    assert say("wait.window", when="at 17:00") in text


def test_status_during_the_gap_reads_plainly() -> None:
    start = london(2026, 6, 10, 8)
    done = Logged(
        "a", date(2026, 6, 10), 1, "completed", 10.0, start, start + timedelta(minutes=11)
    )
    text = status_says(prescription(), [done], london(2026, 6, 10, 9))
    assert say("wait.gap", when="from 11:11", gap="3 hours") in text


def test_a_gap_of_part_hours_and_a_day_done_read_plainly() -> None:
    start = london(2026, 6, 10, 8)
    first = Logged(
        "a", date(2026, 6, 10), 1, "completed", 10.0, start, start + timedelta(minutes=11)
    )
    text = status_says(prescription(min_gap_hours=2.5), [first], london(2026, 6, 10, 9))
    assert say("wait.gap", when="from 10:41", gap="2 hours 30 minutes") in text
    later = london(2026, 6, 10, 12)
    second = Logged(
        "b", date(2026, 6, 10), 2, "completed", 10.0, later, later + timedelta(minutes=11)
    )
    text = status_says(prescription(), [first, second], london(2026, 6, 10, 18))
    assert say("wait.day_done", per_day=2, when="tomorrow") in text


def setup_refusal(argv: list[str], home: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What a setup command prints when it refuses: one plain line on stderr, exit 1."""
    assert main([*argv, "--home", str(home)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("liv: ")
    assert plain_problems(line.removeprefix("liv: ")) == [], line
    return line.removeprefix("liv: ")


def test_status_with_no_prescription_installed_reads_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enrol_home(tmp_path / "home")
    said = setup_refusal(["status"], tmp_path / "home", capsys)
    assert said == say("setup.no_prescription")


def test_install_on_a_computer_not_enrolled_reads_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = write_signed(tmp_path / "rx.yaml", protocol_yaml())
    said = setup_refusal(["protocol", "install", str(signed)], tmp_path / "home", capsys)
    assert said == say("setup.not_enrolled")


def test_an_unsigned_prescription_reads_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enrol_home(tmp_path / "home")
    unsigned = tmp_path / "rx.yaml"
    unsigned.write_text(protocol_yaml(), encoding="utf-8")
    said = setup_refusal(["protocol", "install", str(unsigned)], tmp_path / "home", capsys)
    assert said == say("setup.not_signed")


def test_enrolling_with_another_clinic_reads_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enrol_home(tmp_path / "home")
    other = tmp_path / "other-clinic.pem"
    other.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    said = setup_refusal(["enroll", str(other)], tmp_path / "home", capsys)
    assert said == say("setup.other_clinic")
