"""The clinician's commands on a real log: report, show, sessions, as a clinician uses them.

``clinic_home`` writes a home with an installed one-year protocol and five weeks of logged
history (a missed day, a session cut short, a trip, a session nobody stood through), through the
session log's own API, so the commands read what a plate would have written.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sessions.cli import main
from sessions.home import LivHome
from sessions.log import SessionLog
from sessions.protocol import PatientProtocol
from tests.simhelpers import install_signed, protocol_yaml, vouch_all
from tests.test_log import raw_db

ZONE = "Europe/Paris"
HISTORY_DAYS = 35
PRESENCE = {
    "reason": "presence",
    "text": "presence was judged throughout the hold",
    "detail": "absent 120.0 s (1 step-offs)",
    "values": {"absent_s": 120.0, "absences": 1, "loaded_s": 300.0},
}
MISSED_AGO = 9  # days before today with no session
TRIP_AGO = 4
SHORT_AGO = 6  # slot 2 stopped by the patient after 4 of 10 minutes
NOBODY_AGO = 12  # slot 1: nobody on the plate for a while, then completed


@dataclass(frozen=True)
class ClinicHome:
    root: Path
    today: date
    protocol_text: str

    @property
    def db(self) -> Path:
        return self.root / "liv.db"

    def argv(self, *words: str) -> list[str]:
        return [*words, "--home", str(self.root)]


def _envelope(minutes: float, stop_s: float | None = None) -> list[tuple[float, float]]:
    """One point a second (a small log): a 4-s ramp up, the hold, a 4-s ramp down."""
    end_s = (stop_s if stop_s is not None else minutes * 60.0) + 8.0
    return [
        (float(k), round(0.3 * min(1.0, k / 4.0, max(end_s - k, 0.0) / 4.0), 5))
        for k in range(int(end_s) + 1)
    ]


def write_history(
    log: SessionLog, protocol: PatientProtocol, today: date, *, days: int = HISTORY_DAYS
) -> list[str]:
    """Two sessions a day for ``days`` days before today, with the special days above."""
    patient = protocol.patient_id
    zone = ZoneInfo(protocol.timezone)
    ids = []
    for ago in range(days, 0, -1):
        day = today - timedelta(days=ago)
        if ago == MISSED_AGO:
            continue
        for slot, hour in ((1, 8), (2, 19)):
            start_local = datetime.combine(day, time(hour, 5 + slot), zone)
            minutes = protocol.minutes_per_session
            status, reason, stop_s = "completed", "", None
            events: list[dict[str, Any]] = []
            if ago == TRIP_AGO and slot == 1:
                minutes, stop_s = 3.0, 190.0
                status, reason = "tripped", "safety trip: coil over temperature"
                events = [{"reason": "coil_temperature", "t_s": 190.0, "detail": "71 C"}]
            elif ago == SHORT_AGO and slot == 2:
                minutes, stop_s = 4.0, 250.0
                status, reason = "stopped_by_patient", "stopped by the patient (Ctrl-C)"
            elif ago == NOBODY_AGO and slot == 1:  # stepped off; stopped after 2 minutes
                minutes, stop_s = 5.0, 430.0
                status, reason = "stopped_by_patient", "nobody on the plate for 2 minutes"
                events = [PRESENCE | {"t_s": 430.0}]
            sid = log.start_session(
                patient_id=patient,
                device_id="LIV-0007",
                firmware_version="1.4.2",
                protocol_sha256=protocol.sha256,
                protocol_json=protocol.canonical_json(),
                started_utc=start_local.astimezone(UTC),
                timezone=protocol.timezone,
                local_date=day,
                slot=slot,
                minutes_prescribed=protocol.minutes_per_session,
                target_g=protocol.target_g,
            )
            ended = start_local.astimezone(UTC) + timedelta(minutes=minutes, seconds=8)
            log.finish_session(
                sid,
                status=status,
                reason=reason,
                ended_utc=ended,
                minutes_at_dose=minutes,
                envelope=_envelope(minutes, stop_s),
                freqs_hz=[30.0],
                safety_events=events,
                mean_error_pct=-0.2,
                p95_abs_error_pct=0.8,
                exposure=None,
            )
            ids.append(sid)
    return ids


def make_clinic_home(root: Path, **protocol_fields: Any) -> ClinicHome:
    today = datetime.now(ZoneInfo(ZONE)).date()
    fields: dict[str, Any] = {
        "minutes_per_session": 10,
        "study_start": (today - timedelta(days=40)).isoformat(),
        "study_end": (today + timedelta(days=320)).isoformat(),
        "timezone": ZONE,
        **protocol_fields,
    }
    text = protocol_yaml(**fields)
    root.mkdir(parents=True, exist_ok=True)
    source = root.parent / f"{root.name}-protocol.yaml"
    source.write_text(text, encoding="utf-8")
    home = LivHome(root)
    home.ensure()
    protocol = install_signed(home, text)
    with SessionLog(root / "liv.db") as log:
        write_history(log, protocol, today)
    vouch_all(home, "LIV-0007")  # the plate countersigns the history, as sessions would have
    return ClinicHome(root, today, text)


@pytest.fixture(scope="module")
def clinic_template(tmp_path_factory: pytest.TempPathFactory) -> ClinicHome:
    return make_clinic_home(tmp_path_factory.mktemp("clinic") / "home")


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def clinic(clinic_template: ClinicHome, tmp_path: Path) -> ClinicHome:
    """A private copy of the template home (tests may change its log)."""
    root = tmp_path / "home"
    shutil.copytree(clinic_template.root, root)
    return ClinicHome(root, clinic_template.today, clinic_template.protocol_text)


def tamper(home: ClinicHome) -> None:
    """What someone holding the file can do: drop the triggers and add minutes to a session."""
    with raw_db(home.db, drop_triggers=True) as conn:
        conn.execute(
            "UPDATE sessions SET minutes_at_dose = 10.0 WHERE rowid = "
            "(SELECT rowid FROM sessions WHERE minutes_at_dose < 10 ORDER BY rowid LIMIT 1)"
        )


def ids(capsys: pytest.CaptureFixture[str], home: ClinicHome) -> list[str]:
    assert main(home.argv("sessions", "--json")) == 0
    return [s["session_id"] for s in json.loads(capsys.readouterr().out)]


# ---- the text report ------------------------------------------------------------------------


def test_report_lines_fit_a_terminal(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, clinic_template.argv("report"))
    assert code == 0
    too_long = [line for line in out.splitlines() if len(line) > 100]
    assert not too_long
    assert "Flagged sessions: 3" in out
    assert "coil over temperature" in out  # flag reasons are wrapped, never cut


def test_report_says_when_the_last_session_was_and_when_each_started(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, clinic_template.argv("report"))
    assert code == 0
    yesterday = clinic_template.today - timedelta(days=1)
    assert f"Last session: {yesterday.isoformat()} (yesterday)." in out.splitlines()
    day_line = next(line for line in out.splitlines() if line.startswith(yesterday.isoformat()))
    assert day_line.split()[-2:] == ["08:06", "19:07"]  # local times in Europe/Paris
    missed = clinic_template.today - timedelta(days=MISSED_AGO)
    missed_line = next(line for line in out.splitlines() if line.startswith(missed.isoformat()))
    assert ":" not in missed_line  # no session, no start time


def test_report_draws_the_weekly_trend_against_the_target(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, clinic_template.argv("report"))
    assert code == 0
    assert "against the target of 80%" in out
    weeks = [line for line in out.splitlines() if re.match(r"\d{4}-W\d\d ", line)]
    assert weeks, out
    missed = (clinic_template.today - timedelta(days=MISSED_AGO)).isocalendar()
    label = f"{missed.year}-W{missed.week:02d}"
    week = next(line for line in weeks if line.startswith(label))
    assert week.endswith("below")  # a missed day takes that week under 80%
    assert "|" in week.split()[-2]
    full = [line for line in weeks if "100.0%" in line]
    assert full
    assert all(not line.endswith("below") for line in full)


def test_a_log_that_fails_verification_says_so_at_the_top_of_every_report(
    clinic: ClinicHome, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, clinic.argv("report"))
    assert code == 0
    assert "Log integrity: verified" in out
    tamper(clinic)
    code, out, _ = run(capsys, clinic.argv("report"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("!!!")
    assert "LOG INTEGRITY FAILED" in lines[1]
    assert "verified" not in out
    code, out, _ = run(capsys, clinic.argv("report", "--format", "html"))
    assert out.index("LOG INTEGRITY FAILED") < out.index("<header>")
    code, out, _ = run(capsys, clinic.argv("report", "--format", "csv"))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows
    assert all(r["log_integrity"].startswith("LOG INTEGRITY FAILED") for r in rows)
    code, out, err = run(capsys, clinic.argv("report", "--json"))
    assert json.loads(out)["integrity"]["status"] == "failed"
    assert "FAILED verification" in err  # also said where a person looks when --out is used


def test_since_after_until_is_a_usage_error(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("report", "sessions"):
        argv = clinic_template.argv(command, "--since", "2026-11-10", "--until", "2026-11-01")
        code, out, err = run(capsys, argv)
        assert code == 2, command
        assert "--since 2026-11-10 is after --until 2026-11-01" in err
        assert "Traceback" not in err
        assert out == ""


def test_since_beyond_the_study_says_the_study_has_ended(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    after = clinic_template.today + timedelta(days=400)  # the study ends 320 days from today
    code, out, _ = run(capsys, clinic_template.argv("report", "--since", after.isoformat()))
    assert code == 0
    assert "after the study ended on" in out
    assert "not started" not in out


def test_the_calendar_shows_the_period_up_to_today_with_iso_years(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    far = clinic_template.today + timedelta(days=200)
    since = clinic_template.today - timedelta(days=20)
    argv = clinic_template.argv("report", "--format", "html", "--since", since.isoformat(),
                                "--until", far.isoformat())  # fmt: skip
    code, page, _ = run(capsys, argv)
    assert code == 0
    labels = re.findall(r'<td class="wk"><b>(\d{4})-W(\d\d)</b>', page)
    weeks = {(since + timedelta(days=k)).isocalendar()[:2] for k in range(21)}
    assert {(int(y), int(w)) for y, w in labels} == weeks  # no week after today's
    assert page.count('<td><div class="day future"') <= 6  # only the rest of this week


def test_an_iso_week_is_labelled_with_its_iso_year() -> None:
    from sessions.adherence import compute_adherence
    from sessions.report import render_html, render_table
    from tests.test_adherence import Book, make_protocol

    protocol = make_protocol(study_start="2026-12-21", study_end="2027-01-31")
    book = Book()
    book.add(date(2027, 1, 2), 1, 8)  # a Saturday of ISO week 2026-W53
    report = compute_adherence(protocol, book.records, today=date(2027, 1, 5))
    page = render_html(report, protocol, book.records)
    assert "<b>2026-W53</b>" in page
    assert "<b>2027-W01</b>" in page
    assert "2026-W53" in render_table(report)


def test_the_session_chart_labels_trips_and_nobody_on_the_plate_with_a_legend(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    code, page, _ = run(capsys, clinic_template.argv("report", "--format", "html"))
    assert code == 0
    traces = re.findall(r'<svg class="trace".*?</svg>', page, flags=re.DOTALL)
    tripped = next(t for t in traces if "tripped" in t)
    assert ">trip: coil_temperature</text>" in tripped
    assert ">trip / event</text>" in tripped  # the legend names the red line
    nobody = next(t for t in traces if "nobody on the plate for 2 minutes" in page and
                  'class="nobody"' in t)  # fmt: skip
    shade = re.search(r'<rect class="nobody"[^>]* x="([\d.]+)"[^>]* width="([\d.]+)"', nobody)
    assert shade is not None
    assert ">nobody on the plate</text>" in nobody  # in the legend
    assert "off the plate 120 s in all" in nobody
    assert "trip / event" not in nobody  # the presence event is not drawn as a trip


# ---- show and sessions ----------------------------------------------------------------------


def test_sessions_lists_the_start_time(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, clinic_template.argv("sessions"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["session", "patient", "local", "day", "start"]
    assert lines[1].split()[3] == "08:06"
    assert lines[2].split()[3] == "19:07"
    assert "stopped_by_patient" not in out  # one vocabulary: stopped_by_user
    assert "stopped_by_user" in out


def test_show_prints_plain_rounded_values(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    every = ids(capsys, clinic_template)
    code, out, _ = run(capsys, clinic_template.argv("show", every[-1]))
    assert code == 0
    for python in ("None", "[]", "{", "}", "'", "T19:07:00"):
        assert python not in out
    assert "10.0 of 10.0 minutes" in out
    assert "0.30 g peak" in out
    assert "19:07 to 19:17 (Europe/Paris)" in out
    assert "within 0.8% of the target, mean -0.2%" in out
    numbers = re.findall(r"-?\d+\.\d+", out)
    assert all(len(n.split(".")[1]) <= 2 for n in numbers)


def test_show_accepts_a_unique_prefix_and_lists_an_ambiguous_one(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    every = ids(capsys, clinic_template)
    target = every[3]
    prefix = next(
        target[:n] for n in range(1, 37) if sum(i.startswith(target[:n]) for i in every) == 1
    )
    code, out, _ = run(capsys, clinic_template.argv("show", prefix))
    assert code == 0
    assert target in out
    code, out, _ = run(capsys, clinic_template.argv("show", prefix.upper()))
    assert code == 0
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in every) > 1)
    code, out, err = run(capsys, clinic_template.argv("show", shared))
    assert code == 1
    assert f"'{shared}' is the start of" in err
    assert sum(i in err for i in every if i.startswith(shared)) >= 2
    assert "Traceback" not in err
    code, out, err = run(capsys, clinic_template.argv("show", "zzz"))
    assert code == 1
    assert "no session id starts with 'zzz'" in err


def test_every_text_line_fits_with_a_protocol_change_and_busy_days() -> None:
    from sessions.report import ReportContext, render_table
    from tests.test_adherence_protocols import NEW_RX, changed_report

    report = changed_report()
    busy = ("07:01", "09:15", "12:30", "15:45", "18:00")
    text = render_table(report, ReportContext(starts={d.day: busy for d in report.days}))
    assert max(len(line) for line in text.splitlines()) <= 100
    assert f"changed to {NEW_RX.sha256[:12]}" in " ".join(text.split())
    assert "07:01 09:15 12:30 +2" in text


def test_a_protocol_change_is_named_before_the_figures() -> None:
    from sessions.report import render_html, render_table
    from tests.test_adherence_protocols import NEW_RX, changed_report, mid_study_change

    report = changed_report()
    text = render_table(report)
    assert "THE PROTOCOL CHANGED on 2026-03-05: see below." in text.splitlines()
    assert text.index("THE PROTOCOL CHANGED") < text.index("Overall")
    page = render_html(report, NEW_RX, mid_study_change())
    note = page.index('<p class="changed-note">The prescription changed during this study on')
    assert note < page.index("<h2>Overall adherence</h2>")
