"""One view of every patient: adherence, last session, open flags, device; who needs attention.

Each patient's days are judged by ``sessions.adherence.compute_adherence`` when their records
are imported (``patient_summary``) and kept as summary rows (``patient_days``,
``patient_flags``, ``patients``); the overview reads those rows, never the records or their
envelopes, and sums the days before each patient's own today (in their protocol's time zone).
The attention order is ``attention_key`` (docs/clinic.md, "Who needs attention first").
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sessions.adherence import (
    MAX_REPORT_DAYS,
    AdherenceReport,
    CountedDaySums,
    compute_adherence,
)
from sessions.clinic.db import ClinicDb
from sessions.clinic.importer import THERAPY, HeldSession, load_record, load_sessions
from sessions.clinic.problems import Problem, acknowledged_counts, all_problems
from sessions.log.records import SessionSummary
from sessions.protocol import PatientProtocol, protocol_from_dict
from sessions.text import terminal_line

WINDOWS_DAYS = (7, 30)
OPEN_FLAG_DAYS = 30  # a session flag is open while the session is at most this many days old
# Overview flag columns and the adherence flag kinds (sessions/adherence.py FLAG_KINDS) in each.
FLAG_COLUMNS: dict[str, tuple[str, ...]] = {
    "under_dose": ("under_dose",),
    "trips": ("tripped", "fault"),
    "overrides": ("override",),
    "simulated": ("simulated", "engineering"),
}
INTEGRITY = "integrity"
CLOCK_AHEAD = "clock_ahead"  # a session flag: dated ahead by the home's clock, not counted


# --- at import: one patient's summary rows ------------------------------------------------------


@dataclass(frozen=True)
class PatientSummary:
    """What the overview keeps of one patient (rows for patient_days and patient_flags)."""

    timezone: str
    days: tuple[tuple[str, str, int, int, float, float], ...]  # day, status, slots, minutes
    flags: tuple[tuple[str, str, str, str], ...]  # session_id, kind, local_date, reason
    last_session_day: date | None
    device_id: str | None
    firmware_version: str | None
    devices_json: str


def current_protocol(sessions: Sequence[SessionSummary]) -> PatientProtocol:
    """The protocol in force now: the one the latest session ran under (as ``liv report``)."""
    latest = max(sessions, key=lambda s: (s.started_utc, s.session_id))
    return protocol_from_dict(json.loads(latest.protocol_json))


def patient_summary(patient_id: str, held: Sequence[HeldSession]) -> PatientSummary:
    """Judge every day of one patient's studies with compute_adherence, today-independent.

    "Today" is put after every study day and every session, so each day is judged as it will
    be once it is over; the overview counts only the days before its own today. Records that
    are not therapy (simulated, engineering) are never counted: they become flags.
    """
    therapy = [h.summary for h in held if h.kind == THERAPY and h.counted]
    set_back = _set_back(held)
    others = [h for h in held if h.kind != THERAPY]
    flags: list[tuple[str, str, str, str]] = [
        (h.summary.session_id, h.kind, h.summary.local_date.isoformat(), f"{h.kind} session")
        for h in others
    ]
    flags += [
        (
            h.summary.session_id,
            CLOCK_AHEAD,
            h.summary.local_date.isoformat(),
            "dated ahead by the home computer's clock: not counted",
        )
        for h in held
        if not h.counted
    ]
    days: list[tuple[str, str, int, int, float, float]] = []
    devices_json = "[]"
    timezone = "UTC"
    if therapy:
        protocol = current_protocol(therapy)
        timezone = protocol.timezone
        report = _judged(protocol, therapy, set_back)
        days = [
            (
                d.day.isoformat(),
                d.status,
                d.slots_prescribed,
                d.slots_completed,
                d.minutes_prescribed,
                d.minutes_at_dose,
            )
            for d in report.days
            if d.counted
        ]
        flags += [
            (f.session_id, f.kind, f.local_date.isoformat(), f.reason) for f in report.flagged
        ]
        devices_json = json.dumps([d.to_dict() for d in report.devices], sort_keys=True)
    latest = (
        max(held, key=lambda h: (h.summary.started_utc, h.summary.session_id)) if held else None
    )
    last_day = max((s.local_date for s in therapy), default=None)
    return PatientSummary(
        timezone=timezone,
        days=tuple(days),
        flags=tuple(flags),
        last_session_day=last_day,
        device_id=None if latest is None else latest.summary.device_id,
        firmware_version=None if latest is None else latest.summary.firmware_version,
        devices_json=devices_json,
    )


def _set_back(held: Sequence[HeldSession]) -> frozenset[str]:
    """The held records dated before one recorded before them (the home's clock set back):
    flagged ``clock_set_back`` by compute_adherence and credited to no day."""
    return frozenset(h.summary.session_id for h in held if h.set_back is not None)


def _judged(
    protocol: PatientProtocol, therapy: Sequence[SessionSummary], set_back: frozenset[str]
) -> AdherenceReport:
    plans = {protocol_from_dict(json.loads(t)) for t in {s.protocol_json for s in therapy}}
    horizon = max(
        [p.study_end for p in plans] + [s.local_date for s in therapy] + [protocol.study_end]
    ) + timedelta(days=1)
    try:
        return compute_adherence(protocol, therapy, today=horizon, set_back=set_back)
    except ValueError:  # studies spanning more than a report covers: the most recent days
        since = horizon - timedelta(days=MAX_REPORT_DAYS)
        return compute_adherence(protocol, therapy, since=since, today=horizon, set_back=set_back)


# --- the overview ---------------------------------------------------------------------------


@dataclass
class Window(CountedDaySums):
    """The counted days of one window (7 days, 30 days, the study), summed a day at a time."""

    slots_prescribed: int = 0
    slots_completed: int = 0
    minutes_prescribed: float = 0.0
    minutes_at_dose: float = 0.0
    days_counted: int = 0

    def add(self, slots: int, done: int, minutes: float, at_dose: float) -> None:
        self.slots_prescribed += slots
        self.slots_completed += done
        self.minutes_prescribed += minutes
        self.minutes_at_dose += at_dose
        self.days_counted += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "days_counted": self.days_counted,
            "slots_prescribed": self.slots_prescribed,
            "slots_completed": self.slots_completed,
            "session_adherence": _round(self.session_adherence),
            "dose_adherence": _round(self.dose_adherence),
        }


@dataclass
class OverviewRow:
    """One patient on the overview."""

    patient_id: str
    timezone: str
    today: date
    last_7: Window = field(default_factory=Window)
    last_30: Window = field(default_factory=Window)
    study: Window = field(default_factory=Window)
    last_session_day: date | None = None
    device_id: str | None = None
    firmware_version: str | None = None
    flags: dict[str, int] = field(default_factory=dict)
    recent_trips: int = 0  # trips in the last 7 days (the attention rule)
    acknowledged_problems: int = 0  # problems a clinician acknowledged (not in the flags)

    @property
    def days_since_last(self) -> int | None:
        if self.last_session_day is None:
            return None
        return (self.today - self.last_session_day).days

    def to_dict(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "timezone": self.timezone,
            "today": self.today.isoformat(),
            "last_7_days": self.last_7.to_dict(),
            "last_30_days": self.last_30.to_dict(),
            "study": self.study.to_dict(),
            "last_session_day": None
            if self.last_session_day is None
            else self.last_session_day.isoformat(),
            "days_since_last_session": self.days_since_last,
            "open_flags": dict(self.flags),
            "acknowledged_problems": self.acknowledged_problems,
            "device_id": self.device_id,
            "firmware_version": self.firmware_version,
            "report_command": f"liv clinic report {self.patient_id}",
            "report_file": report_file_name(self.patient_id),
        }


def attention_key(row: OverviewRow) -> tuple[Any, ...]:
    """Who needs attention first (docs/clinic.md):

    1. an open integrity problem (a refused, conflicting or rolled-back export), one no
       clinician has acknowledged;
    2. a safety trip or fault in the last 7 days;
    3. the lowest session adherence over the last 7 days (no counted day: after every figure);
    4. the longest time since the last session (never: first);
    5. the patient id, so the order is stable.
    """
    adherence = row.last_7.session_adherence
    since = row.days_since_last
    return (
        row.flags.get(INTEGRITY, 0) == 0,
        row.recent_trips == 0,
        math.inf if adherence is None else adherence,
        -(math.inf if since is None else since),
        row.patient_id,
    )


def _today_in(zone: str, now: datetime) -> date:
    try:
        return now.astimezone(ZoneInfo(zone)).date()
    except (KeyError, ValueError):
        return now.astimezone(UTC).date()


def overview(
    db: ClinicDb, now: datetime | None = None, problems: Sequence[Problem] | None = None
) -> list[OverviewRow]:
    """Every patient's overview row, sorted by ``attention_key``. Reads summary rows only
    (and ``problems``, every recorded problem, when the caller has not read them)."""
    now = datetime.now(UTC) if now is None else now
    rows: dict[str, OverviewRow] = {}
    for patient_id, zone, last_day, device, firmware in db.query(
        "SELECT patient_id, timezone, last_session_day, device_id, firmware_version FROM patients"
    ):
        rows[patient_id] = OverviewRow(
            patient_id=patient_id,
            timezone=zone,
            today=_today_in(zone, now),
            last_session_day=None if last_day is None else date.fromisoformat(last_day),
            device_id=device,
            firmware_version=firmware,
            flags=dict.fromkeys((*FLAG_COLUMNS, INTEGRITY), 0),
        )
    for patient_id, day_text, slots, done, minutes, at_dose in db.stream(
        "SELECT patient_id, day, slots_prescribed, slots_completed, minutes_prescribed,"
        " minutes_at_dose FROM patient_days"
    ):
        row = rows.get(patient_id)
        if row is None:
            continue
        day = date.fromisoformat(day_text)
        age = (row.today - day).days
        if age < 1:
            continue  # today and later are not over yet
        row.study.add(slots, done, minutes, at_dose)
        if age <= 30:
            row.last_30.add(slots, done, minutes, at_dose)
            if age <= 7:
                row.last_7.add(slots, done, minutes, at_dose)
    column_of = {kind: name for name, kinds in FLAG_COLUMNS.items() for kind in kinds}
    oldest = (now - timedelta(days=OPEN_FLAG_DAYS + 2)).date().isoformat()
    for patient_id, kind, day_text in db.query(
        "SELECT patient_id, kind, local_date FROM patient_flags WHERE local_date >= ?", (oldest,)
    ):
        row = rows.get(patient_id)
        name = column_of.get(kind)
        if row is None or name is None:
            continue
        age = (row.today - date.fromisoformat(day_text)).days
        if age <= OPEN_FLAG_DAYS:
            row.flags[name] += 1
            if name == "trips" and age <= 7:
                row.recent_trips += 1
    for problem in all_problems(db) if problems is None else problems:  # open ones counted
        row = rows.get(problem.patient_id or "")
        if row is None:
            continue
        if problem.open:
            row.flags[INTEGRITY] += 1
        else:
            row.acknowledged_problems += 1
    return sorted(rows.values(), key=attention_key)


def clinic_problems(db: ClinicDb, problems: Sequence[Problem] | None = None) -> list[str]:
    """Open problems no overview row shows: files that name no patient (unreadable, not an
    export) or only patients the clinic holds no record of (e.g. a first export refused)."""
    held = set(patients(db))
    return [
        p.detail
        for p in (all_problems(db) if problems is None else problems)
        if p.open and (p.patient_id is None or p.patient_id not in held)
    ]


def acknowledged_problems(db: ClinicDb, problems: Sequence[Problem] | None = None) -> int:
    """How many recorded problems a clinician acknowledged (liv clinic problems --all)."""
    return acknowledged_counts(all_problems(db) if problems is None else problems)[1]


def _acknowledged_text(count: int) -> str:
    return (
        f"{count} problem(s) acknowledged, not counted above: 'liv clinic problems --all' "
        "shows them with their notes"
    )


# --- rendering ------------------------------------------------------------------------------


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _flags_text(row: OverviewRow) -> str:
    found = [f"{name} {count}" for name, count in row.flags.items() if count]
    return ", ".join(found) or "none"


def report_file_name(patient_id: str) -> str:
    """A file name for a patient's report, safe whatever characters the id holds."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", patient_id)[:40].lstrip(".") or "patient"
    tag = json.dumps(patient_id).encode()
    return f"reports/{safe}-{hashlib.sha256(tag).hexdigest()[:8]}.html"


_HEADERS = (
    "patient",
    "7 d",
    "30 d",
    "study",
    "dose 30 d",
    "last session",
    "open flags",
    "device",
    "firmware",
)


def _cells(row: OverviewRow) -> list[str]:
    since = row.days_since_last
    return [
        row.patient_id,
        _pct(row.last_7.session_adherence),
        _pct(row.last_30.session_adherence),
        _pct(row.study.session_adherence),
        _pct(row.last_30.dose_adherence),
        "never" if since is None else f"{since} d ago",
        _flags_text(row),
        row.device_id or "-",
        row.firmware_version or "-",
    ]


def render_table(
    rows: Sequence[OverviewRow], problems: Sequence[str] = (), acknowledged: int = 0
) -> str:
    table = [list(_HEADERS)] + [[terminal_line(c) for c in _cells(r)] for r in rows]
    widths = [max(len(line[k]) for line in table) for k in range(len(_HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in table]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{len(rows)} patient(s); adherence = prescribed sessions completed at dose")
    lines += [f"problem: {terminal_line(p)}" for p in problems]
    if acknowledged:
        lines.append(_acknowledged_text(acknowledged))
    return "\n".join(lines) + "\n"


def render_json(
    rows: Sequence[OverviewRow], problems: Sequence[str] = (), acknowledged: int = 0
) -> str:
    data = {
        "patients": [r.to_dict() for r in rows],
        "problems": list(problems),
        "acknowledged_problems": acknowledged,
        "attention_rule": (attention_key.__doc__ or "").strip(),
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render_html(
    rows: Sequence[OverviewRow], problems: Sequence[str] = (), acknowledged: int = 0
) -> str:
    """One self-contained page; each row links to the patient's report file next to it."""
    e = html.escape
    body = []
    for rank, row in enumerate(rows, 1):
        cells = _cells(row)
        attention = " attention" if attention_key(row)[:2] != (True, True) else ""
        body.append(
            f'<tr class="patient{attention}" data-patient="{e(row.patient_id)}">'
            f"<td>{rank}</td>"
            f'<td><a href="{e(report_file_name(row.patient_id))}">{e(cells[0])}</a></td>'
            + "".join(f"<td>{e(c)}</td>" for c in cells[1:])
            + "</tr>"
        )
    problem_items = "".join(f"<li>{e(p)}</li>" for p in problems)
    head = "".join(f"<th>{e(h)}</th>" for h in ("#", *_HEADERS))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>LIV clinic overview</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "th,td{border:1px solid #999;padding:.25em .6em;text-align:left}"
        "tr.attention td{background:#fde2e1}</style></head><body>"
        "<h1>LIV clinic overview</h1>"
        f"<p>{len(rows)} patient(s), who needs attention first. Adherence = prescribed "
        "sessions completed at dose (days before today, in each patient's time zone).</p>"
        f'<table id="overview"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
        "</table>"
        + (f'<h2>Problems</h2><ul id="problems">{problem_items}</ul>' if problems else "")
        + (
            f'<p id="acknowledged">{e(_acknowledged_text(acknowledged))}</p>'
            if acknowledged
            else ""
        )
        + "</body></html>\n"
    )


# --- one patient's full report ---------------------------------------------------------------


def patient_report(
    db: ClinicDb,
    patient_id: str,
    fmt: str,
    since: date | None = None,
    until: date | None = None,
    today: date | None = None,
) -> str:
    """The existing clinician report (sessions/report/) of one patient, from the clinic DB."""
    from sessions.report import render_csv
    from sessions.report import render_html as report_html
    from sessions.report import render_json as report_json
    from sessions.report import render_table as report_table

    held = load_sessions(db, patient_id)
    therapy = [h.summary for h in held if h.kind == THERAPY and h.counted]
    if not therapy:
        raise LookupError(patient_id)
    protocol = current_protocol(therapy)
    report = compute_adherence(
        protocol, therapy, since=since, until=until, today=today, set_back=_set_back(held)
    )
    if fmt == "html":
        return report_html(report, protocol, therapy, lambda s: load_record(db, s.session_id))
    renderer = {"table": report_table, "csv": render_csv, "json": report_json}[fmt]
    return renderer(report)


def patients(db: ClinicDb) -> list[str]:
    return [str(p) for (p,) in db.query("SELECT patient_id FROM patients ORDER BY patient_id")]
