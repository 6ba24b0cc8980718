"""Adherence from the session log: a crafted month whose every figure was counted by hand.

The month (Europe/London, 2 x 10 min a day, study 2026-03-02 Mon to 2026-03-31 Tue, 30 days):
every day has two complete sessions at 08:00 and 18:00 except

    03-05  nothing (another patient's session that day must not count)  missed    0/2  0 min
    03-08  slot 1 logs 12 min (capped at 10), slot 2 only 8               partial   1/2  18
    03-10  slot 1 stopped at 4 min, resumed at 08:30 for 6; slot 2        full      2/2  20
    03-12  both slots, then an extra third session by override            full      2/2  20
    03-14  slot 1 tripped at 2.5 min, never resumed; slot 2               partial   1/2  12.5
    03-17  slot 2 starts 23:55 and ends after midnight (still 03-17)      full      2/2  20
    03-20  slot 1 only                                                    partial   1/2  10
    03-22  slot 1 with a 3.1% p95 amplitude error (flagged, still dose)   full      2/2  20
    03-25  slot 2 interrupted at 7 min, never resumed                     partial   1/2  17
    03-29  spring forward: slot 1 00:50 GMT to 02:01 BST; slot 2 override full      2/2  20

plus sessions by override on 03-01 and 04-01, outside the study. Today is 2026-04-02.
25 full days, 4 partial, 1 missed: slots 25*2 + 4 = 54 of 60 (0.9); minutes
25*20 + 18 + 12.5 + 10 + 17 = 557.5 of 600.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sessions.adherence import AMPLITUDE_P95_LIMIT_PCT, AdherenceReport, compute_adherence
from sessions.protocol import PatientProtocol, protocol_from_dict
from sessions.report import render_csv, render_json, render_table

LONDON = ZoneInfo("Europe/London")
TODAY = date(2026, 4, 2)


def make_protocol(**changes: Any) -> PatientProtocol:
    data: dict[str, Any] = {
        "patient_id": "P-0042",
        "target_g": 0.3,
        "frequency_hz": 30.0,
        "minutes_per_session": 10.0,
        "sessions_per_day": 2,
        "min_gap_hours": 3.0,
        "daily_windows": [],
        "study_start": "2026-03-02",
        "study_end": "2026-03-31",
        "timezone": "Europe/London",
        "dose_tolerance": 0.1,
    }
    data.update(changes)
    return protocol_from_dict(data)


@dataclass(frozen=True)
class Rec:
    """The fields of a logged session that adherence and the report read."""

    session_id: str
    patient_id: str
    device_id: str
    firmware_version: str
    local_date: date
    slot: int
    status: str
    reason: str
    override: bool
    override_reason: str | None
    minutes_prescribed: float
    minutes_at_dose: float
    started_utc: datetime
    ended_utc: datetime | None
    target_g: float = 0.3
    p95_abs_error_pct: float | None = 0.4
    mean_error_pct: float | None = -0.05
    safety_events: tuple[dict[str, Any], ...] = ()
    envelope: tuple[tuple[float, float], ...] = ()
    protocol_json: str = ""
    timezone: str = "Europe/London"
    freqs_hz: tuple[float, ...] = (30.0,)
    exposure: dict[str, float] | None = None


def at(day: date, hour: int, minute: int = 0, fold: int = 0) -> datetime:
    """A local London wall-clock time, as UTC."""
    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=LONDON, fold=fold)
    return local.astimezone(UTC)


@dataclass
class Book:
    """Writes sessions the way the runner would: local date and slot of the slot's start."""

    patient_id: str = "P-0042"
    device_id: str = "LIV-0001"
    firmware_version: str = "1.0.0"
    records: list[Rec] = field(default_factory=list)

    def add(
        self,
        day: date,
        slot: int,
        hour: int,
        minute: int = 0,
        *,
        at_dose: float = 10.0,
        prescribed: float = 10.0,
        status: str = "completed",
        reason: str = "",
        override_reason: str | None = None,
        fold: int = 0,
        run_minutes: float | None = None,
        **extra: Any,
    ) -> Rec:
        start = at(day, hour, minute, fold)
        ended = start + timedelta(minutes=(run_minutes or at_dose) + 1.0)
        rec = Rec(
            session_id=f"S-{day:%m%d}-{slot}-{hour:02d}{minute:02d}-{fold}",
            patient_id=self.patient_id,
            device_id=self.device_id,
            firmware_version=self.firmware_version,
            local_date=day,
            slot=slot,
            status=status,
            reason=reason,
            override=override_reason is not None,
            override_reason=override_reason,
            minutes_prescribed=prescribed,
            minutes_at_dose=at_dose,
            started_utc=start,
            ended_utc=ended,
            **extra,
        )
        self.records.append(rec)
        return rec


def d(day: int, month: int = 3) -> date:
    return date(2026, month, day)


SPECIAL = {5, 8, 10, 12, 14, 17, 20, 22, 25, 29}


def crafted_month() -> list[Rec]:
    book = Book()
    book.add(d(1), 1, 9, override_reason="clinic demonstration before the study")
    for day in range(2, 32):
        if day == 16:
            book.device_id, book.firmware_version = "LIV-0002", "1.2.0"
        if day not in SPECIAL:
            book.add(d(day), 1, 8)
            book.add(d(day), 2, 18)
    other = Book(patient_id="P-0099", device_id="LIV-9999")
    other.add(d(5), 1, 8)
    other.add(d(5), 2, 18)
    book.records.extend(other.records)

    book.device_id, book.firmware_version = "LIV-0001", "1.0.0"
    book.add(d(8), 1, 8, at_dose=12.0)  # more than prescribed: capped at 10
    book.add(d(8), 2, 18, at_dose=8.0)
    book.add(d(10), 1, 8, at_dose=4.0, status="stopped_by_patient", reason="patient pressed stop")
    book.add(d(10), 1, 8, 30, at_dose=6.0, prescribed=6.0)  # the resumption
    book.add(d(10), 2, 18)
    book.add(d(12), 1, 8)
    book.add(d(12), 2, 18)
    book.add(d(12), 3, 21, override_reason="patient asked for a third session")
    book.add(
        d(14),
        1,
        8,
        at_dose=2.5,
        status="tripped",
        reason="coil over temperature",
        safety_events=({"reason": "coil_temperature", "t_s": 170.2, "detail": "71 C"},),
    )
    book.add(d(14), 2, 18)
    book.device_id, book.firmware_version = "LIV-0002", "1.2.0"
    book.add(d(17), 1, 8)
    book.add(d(17), 2, 23, 55)  # ends 00:06 on 03-18, still the slot of 03-17
    book.add(d(20), 1, 8)
    book.add(d(22), 1, 8, p95_abs_error_pct=3.1)
    book.add(d(22), 2, 18)
    book.add(d(25), 1, 8)
    book.add(d(25), 2, 18, at_dose=7.0, status="interrupted", reason="power lost")
    book.add(d(29), 1, 0, 50, run_minutes=70.0)  # 00:50 GMT to 02:01 BST
    book.add(d(29), 2, 18, override_reason="window waived by clinician")
    book.add(d(1, 4), 1, 9, override_reason="extra week agreed by phone")
    return book.records


def flag_pairs(report: AdherenceReport) -> list[tuple[str, int, str]]:
    return [(f.local_date.isoformat(), f.slot, f.kind) for f in report.flagged]


def month() -> AdherenceReport:
    return compute_adherence(make_protocol(), crafted_month(), today=TODAY)


def test_the_crafted_month_overall() -> None:
    report = month()
    assert report.period_start == d(2)
    assert report.period_end == d(31)  # the whole study: it ended before today
    assert len(report.days) == 30
    assert report.days_counted == 30
    assert (report.full_days, report.partial_days) == (25, 4)
    assert report.missed_days == (d(5),)
    assert (report.slots_completed, report.slots_prescribed) == (54, 60)
    assert report.session_adherence == pytest.approx(0.9)
    assert report.minutes_at_dose == pytest.approx(557.5)
    assert report.minutes_prescribed == pytest.approx(600.0)
    assert report.dose_adherence == pytest.approx(557.5 / 600.0)


@pytest.mark.parametrize(
    ("day", "status", "slots", "minutes", "slot_minutes", "logged", "sessions"),
    [
        (d(2), "full", 2, 20.0, (10.0, 10.0), 20.0, 2),
        (d(5), "missed", 0, 0.0, (0.0, 0.0), 0.0, 0),  # the other patient does not count
        (d(8), "partial", 1, 18.0, (10.0, 8.0), 20.0, 2),  # 12 min in slot 1 do not fill slot 2
        (d(10), "full", 2, 20.0, (10.0, 10.0), 20.0, 3),  # 4 + 6 after a stop
        (d(12), "full", 2, 20.0, (10.0, 10.0), 30.0, 3),  # the third session adds nothing
        (d(14), "partial", 1, 12.5, (2.5, 10.0), 12.5, 2),
        (d(17), "full", 2, 20.0, (10.0, 10.0), 20.0, 2),
        (d(18), "full", 2, 20.0, (10.0, 10.0), 20.0, 2),  # not three: 03-17's late session
        (d(20), "partial", 1, 10.0, (10.0, 0.0), 10.0, 1),
        (d(25), "partial", 1, 17.0, (10.0, 7.0), 17.0, 2),
        (d(29), "full", 2, 20.0, (10.0, 10.0), 20.0, 2),  # spring forward: a 23-hour day
    ],
)
def test_days_of_the_crafted_month(
    day: date,
    status: str,
    slots: int,
    minutes: float,
    slot_minutes: tuple[float, ...],
    logged: float,
    sessions: int,
) -> None:
    report = month()
    got = report.day(day)
    assert got is not None
    assert got.status == status
    assert got.counted
    assert got.slots_completed == slots
    assert got.slots_prescribed == 2
    assert got.minutes_at_dose == pytest.approx(minutes)
    assert got.minutes_prescribed == pytest.approx(20.0)
    assert got.slot_minutes == pytest.approx(slot_minutes)
    assert got.minutes_logged == pytest.approx(logged)
    assert got.sessions_logged == sessions
    assert got.session_adherence == pytest.approx(slots / 2)
    assert got.dose_adherence == pytest.approx(minutes / 20.0)


def test_iso_weeks_of_the_crafted_month() -> None:
    report = month()
    rows = [
        (
            w.label,
            w.first_day,
            w.last_day,
            w.days_counted,
            w.slots_completed,
            w.slots_prescribed,
            w.minutes_at_dose,
            w.minutes_prescribed,
            w.missed_days,
        )
        for w in report.weeks
    ]
    assert rows == [
        ("2026-W10", d(2), d(8), 7, 11, 14, 118.0, 140.0, (d(5),)),
        ("2026-W11", d(9), d(15), 7, 13, 14, 132.5, 140.0, ()),
        ("2026-W12", d(16), d(22), 7, 13, 14, 130.0, 140.0, ()),
        ("2026-W13", d(23), d(29), 7, 13, 14, 137.0, 140.0, ()),
        ("2026-W14", d(30), d(31), 2, 4, 4, 40.0, 40.0, ()),
    ]
    assert report.weeks[0].session_adherence == pytest.approx(11 / 14)
    assert report.weeks[1].dose_adherence == pytest.approx(132.5 / 140)


def test_flags_of_the_crafted_month() -> None:
    report = month()
    assert flag_pairs(report) == [
        ("2026-03-01", 1, "override"),
        ("2026-03-01", 1, "outside_study"),
        ("2026-03-08", 2, "under_dose"),
        ("2026-03-10", 1, "stopped_by_patient"),
        ("2026-03-10", 1, "under_dose"),
        ("2026-03-12", 3, "override"),
        ("2026-03-12", 3, "extra_session"),
        ("2026-03-14", 1, "tripped"),
        ("2026-03-14", 1, "fault"),
        ("2026-03-14", 1, "under_dose"),
        ("2026-03-22", 1, "amplitude_error"),
        ("2026-03-25", 2, "interrupted"),
        ("2026-03-25", 2, "under_dose"),
        ("2026-03-29", 2, "override"),
        ("2026-04-01", 1, "override"),
        ("2026-04-01", 1, "outside_study"),
    ]
    reasons = {(f.local_date.day, f.slot, f.kind): f.reason for f in report.flagged}
    assert reasons[(10, 1, "under_dose")] == (
        "4.0 of 10.0 min at dose; the slot was completed by a resumed session"
    )
    assert reasons[(14, 1, "under_dose")] == "2.5 of 10.0 min at dose"
    assert reasons[(10, 1, "stopped_by_patient")] == "stopped by the patient: patient pressed stop"
    assert reasons[(14, 1, "tripped")] == "safety trip: coil over temperature"
    assert reasons[(14, 1, "fault")] == "1 safety event: coil_temperature"
    assert reasons[(22, 1, "amplitude_error")] == (
        "95th-percentile amplitude error 3.10% (limit 2%)"
    )
    assert reasons[(12, 3, "override")] == "started by override: patient asked for a third session"
    assert reasons[(12, 3, "extra_session")] == "slot 3 of 2 a day: extra, not counted"
    assert reasons[(25, 2, "interrupted")] == "interrupted (crash, kill or power loss): power lost"


def test_local_start_times_keep_their_offset_across_the_clock_change() -> None:
    report = month()
    starts = {(f.local_date, f.slot): f.started_local for f in report.flagged}
    assert starts[(d(14), 1)] == "2026-03-14T08:00:00+00:00"
    assert starts[(d(29), 2)] == "2026-03-29T18:00:00+01:00"  # BST from 01:00 GMT that day


def test_devices_used() -> None:
    report = month()
    rows = [
        (u.device_id, u.firmware_versions, u.sessions, u.first_day, u.last_day)
        for u in report.devices
    ]
    # LIV-0001: 03-01, then 03-02..03-15 at two a day (28) less 03-05 (2) plus the resumption
    # on 03-10 and the third session on 03-12: 29. LIV-0002: 03-16..03-31 (32) less one on
    # 03-20, plus 04-01: 32. The other patient's LIV-9999 is not listed.
    assert rows == [
        ("LIV-0001", ("1.0.0",), 29, d(1), d(15)),
        ("LIV-0002", ("1.2.0",), 32, d(16), d(1, 4)),
    ]
    assert report.sessions_considered == 61


def test_the_report_is_reproducible() -> None:
    protocol = make_protocol()
    records = crafted_month()
    first = compute_adherence(protocol, records, today=TODAY)
    shuffled = list(records)
    random.Random(7).shuffle(shuffled)
    second = compute_adherence(protocol, shuffled, today=TODAY)
    assert first == second
    assert first.to_dict() == second.to_dict()
    assert render_json(first) == render_json(second)
    assert render_csv(first) == render_csv(second)
    assert render_table(first) == render_table(second)
    assert json.loads(render_json(first)) == first.to_dict()


def test_to_dict_is_plain_json() -> None:
    report = month()
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["overall"] == {
        "days_counted": 30,
        "full_days": 25,
        "partial_days": 4,
        "slots_prescribed": 60,
        "slots_completed": 54,
        "minutes_prescribed": 600.0,
        "minutes_at_dose": 557.5,
        "session_adherence": 0.9,
        "dose_adherence": 0.929167,
    }
    assert data["missed_days"] == ["2026-03-05"]
    assert data["days"][3] == {
        "date": "2026-03-05",
        "status": "missed",
        "counted": True,
        "slots_prescribed": 2,
        "slots_completed": 0,
        "minutes_prescribed": 20.0,
        "minutes_at_dose": 0.0,
        "slot_minutes": [0.0, 0.0],
        "minutes_logged": 0.0,
        "sessions_logged": 0,
        "session_adherence": 0.0,
        "dose_adherence": 0.0,
        "protocol_sha256": make_protocol().sha256,
    }
    assert data["weeks"][0]["week"] == "2026-W10"
    assert data["flagged"][0]["started_local"] == "2026-03-01T09:00:00+00:00"


def test_the_terminal_table() -> None:
    text = render_table(month())
    lines = [" ".join(line.split()) for line in text.splitlines()]  # columns, not spacing
    assert lines[0] == "Adherence of patient P-0042 (local dates and times in Europe/London)"
    assert "sessions completed at dose 54 of 60 90.0%" in lines
    assert "minutes at dose 557.5 of 600.0 92.9%" in lines
    assert "days full / partial / missed 25 / 4 / 1" in lines
    assert "missed days: 2026-03-05" in lines
    assert "2026-W10 7 11/14 78.6% 118.0/140.0 84.3% 1 ###############.|... below" in lines
    assert "2026-03-05 Thu missed 0/2 0.0/20.0" in lines
    assert "2026-03-12 Thu full 2/2 20.0/20.0 30.0 min in 3" in lines
    assert "Flagged sessions: 9 (16 flags)" in lines
    assert "LIV-0002: 32 session(s) from 2026-03-16 to 2026-04-01, firmware 1.2.0" in lines
    assert text.endswith("\n")


def test_a_period_is_clipped_to_the_study_and_flags_follow_the_period() -> None:
    report = compute_adherence(
        make_protocol(), crafted_month(), since=d(20, 2), until=d(10), today=TODAY
    )
    assert (report.period_start, report.period_end) == (d(2), d(10))
    assert [x.day for x in report.days] == [d(k) for k in range(2, 11)]
    assert (report.slots_completed, report.slots_prescribed) == (15, 18)  # 03-05, 03-08
    assert report.minutes_at_dose == pytest.approx(7 * 20 + 18)
    assert [w.label for w in report.weeks] == ["2026-W10", "2026-W11"]
    assert (report.weeks[1].first_day, report.weeks[1].last_day) == (d(9), d(10))
    # the pre-study session falls in the requested period, so it is flagged (not counted)
    assert flag_pairs(report)[:2] == [
        ("2026-03-01", 1, "override"),
        ("2026-03-01", 1, "outside_study"),
    ]
    assert flag_pairs(report)[-1] == ("2026-03-10", 1, "under_dose")

    later = compute_adherence(make_protocol(), crafted_month(), since=d(30), today=TODAY)
    assert [x.day for x in later.days] == [d(30), d(31)]
    assert flag_pairs(later) == [("2026-04-01", 1, "override"), ("2026-04-01", 1, "outside_study")]


def test_today_is_in_progress_and_the_future_is_not_counted() -> None:
    protocol = make_protocol()
    mid = d(20)
    records = [r for r in crafted_month() if r.local_date <= mid]
    by_default = compute_adherence(protocol, records, today=mid)
    assert by_default.period_end == mid  # the whole study up to today
    assert by_default.days[-1].status == "today"
    assert not by_default.days[-1].counted
    assert by_default.days_counted == 18  # 03-02 .. 03-19
    # 03-05 missed, 03-08 and 03-14 partial; the rest of 03-02..03-19 full
    assert (by_default.slots_completed, by_default.slots_prescribed) == (32, 36)

    asked = compute_adherence(protocol, records, until=d(31), today=mid)
    assert asked.period_end == d(31)
    assert [x.status for x in asked.days[-12:]] == ["today"] + ["future"] * 11
    assert asked.days_counted == 18
    assert asked.slots_prescribed == 36
    assert asked.weeks[-1].label == "2026-W14"
    assert asked.weeks[-1].days_counted == 0
    assert asked.weeks[-1].session_adherence is None


def test_a_session_dated_after_today_is_flagged_not_counted() -> None:
    book = Book()
    book.add(d(10), 1, 8)
    book.add(d(12), 1, 8)  # a device clock ahead of the clinic's
    report = compute_adherence(make_protocol(), book.records, until=d(12), today=d(11))
    assert report.day(d(12)) is not None
    assert report.days_counted == 9
    assert report.minutes_at_dose == pytest.approx(10.0)
    assert flag_pairs(report) == [("2026-03-12", 1, "after_today")]


def test_a_study_that_has_not_started() -> None:
    report = compute_adherence(make_protocol(), [], today=d(20, 2))
    assert report.days == ()
    assert report.weeks == ()
    assert report.session_adherence is None
    assert report.dose_adherence is None
    assert report.to_dict()["overall"]["dose_adherence"] is None
    assert "has no days" in render_table(report)
    assert render_csv(report).count("\n") == 1  # the header only


def test_since_after_until_is_refused() -> None:
    with pytest.raises(ValueError, match="after until"):
        compute_adherence(make_protocol(), [], since=d(10), until=d(9), today=TODAY)


def test_autumn_clock_change_day() -> None:
    protocol = make_protocol(study_start="2026-10-19", study_end="2026-10-31")
    book = Book()
    autumn = date(2026, 10, 25)  # 02:00 BST becomes 01:00 GMT: a 25-hour day
    # Slot 1 starts at 01:30 BST, is stopped at 3 min, and resumed at 01:10 GMT: earlier on the
    # clock, 40 minutes later in absolute time. Slot 2 at 23:58 runs past midnight.
    book.add(autumn, 1, 1, 30, at_dose=3.0, status="stopped_by_patient")
    book.add(autumn, 1, 1, 10, at_dose=7.0, prescribed=7.0, fold=1)
    book.add(autumn, 2, 23, 58)
    book.add(date(2026, 10, 26), 1, 8)
    book.add(date(2026, 10, 26), 2, 18)
    report = compute_adherence(
        protocol, book.records, since=autumn, until=date(2026, 10, 26), today=date(2026, 11, 2)
    )
    assert [x.status for x in report.days] == ["full", "full"]
    assert report.session_adherence == pytest.approx(1.0)
    assert flag_pairs(report) == [
        ("2026-10-25", 1, "stopped_by_patient"),
        ("2026-10-25", 1, "under_dose"),
    ]
    assert report.flagged[0].started_local == "2026-10-25T01:30:00+01:00"
    assert "completed by a resumed session" in report.flagged[1].reason


def test_today_defaults_to_the_patients_local_date() -> None:
    report = compute_adherence(make_protocol(study_end="2031-03-02"), [])  # the longest study
    assert report.today == datetime.now(LONDON).date() or report.today == (
        datetime.now(LONDON).date() - timedelta(days=1)  # the test ran across midnight
    )


@pytest.mark.parametrize(("p95", "flagged"), [(AMPLITUDE_P95_LIMIT_PCT, False), (2.01, True)])
def test_the_amplitude_limit_is_exclusive(p95: float, flagged: bool) -> None:
    book = Book()
    book.add(d(10), 1, 8, p95_abs_error_pct=p95)
    report = compute_adherence(make_protocol(), book.records, since=d(10), until=d(10), today=TODAY)
    assert ("amplitude_error" in {f.kind for f in report.flagged}) is flagged


def test_a_running_session_counts_its_minutes_so_far_and_is_flagged() -> None:
    book = Book()
    rec = book.add(d(10), 1, 8, at_dose=4.5, status="running")
    book.records[-1] = replace(rec, ended_utc=None)
    report = compute_adherence(make_protocol(), book.records, since=d(10), until=d(10), today=TODAY)
    assert report.minutes_at_dose == pytest.approx(4.5)
    assert report.days[0].status == "partial"
    assert flag_pairs(report) == [("2026-03-10", 1, "running")]


def test_a_fault_on_a_completed_session_is_flagged() -> None:
    book = Book()
    event = {"reason": "sensor_dc", "t_s": 3.0, "detail": "recovered"}
    book.add(d(10), 1, 8, safety_events=(event, event))
    report = compute_adherence(make_protocol(), book.records, since=d(10), until=d(10), today=TODAY)
    assert [(f.kind, f.reason) for f in report.flagged] == [("fault", "2 safety events: sensor_dc")]
