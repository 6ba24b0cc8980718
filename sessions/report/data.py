"""The report as data: one CSV row per day (CSV_COLUMNS) and the JSON of AdherenceReport."""

from __future__ import annotations

import csv
import io
import json
from datetime import date

from sessions.adherence import (
    AdherenceReport,
)
from sessions.log import spreadsheet_text
from sessions.report.context import ReportContext
from sessions.report.words import _WEEKDAYS, _change_text

CSV_COLUMNS = (
    "patient_id",
    "date",
    "weekday",
    "iso_week",
    "status",
    "counted",
    "slots_prescribed",
    "slots_completed",
    "minutes_prescribed",
    "minutes_at_dose",
    "minutes_logged",
    "sessions_logged",
    "session_adherence",
    "dose_adherence",
    "protocol",
    "protocol_change",
    "not_counted",  # sessions of the day that do not count: "simulated 1; engineering 2"
    "label",  # "demo: simulated sessions, not therapy" in a demo home, else empty
)


def _number(value: float | None) -> str:
    """A number for CSV: at most 6 decimals, as the log stores it, without trailing zeros."""
    if value is None:
        return ""
    text = f"{round(value, 6) + 0.0:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _change_cell(report: AdherenceReport, day: date) -> str:
    """What changed on ``day`` (protocols that came into force), for a CSV cell."""
    return " | ".join(_change_text(p) for p in report.protocol_changes if p.in_force_from == day)


def _not_counted_cell(report: AdherenceReport, day: date) -> str:
    kinds: dict[str, int] = {}
    for s in report.set_apart:
        if s.local_date == day:
            kinds[s.kind] = kinds.get(s.kind, 0) + 1
    return "; ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))


def render_csv(report: AdherenceReport, context: ReportContext | None = None) -> str:
    """One row per day of the report period, columns ``CSV_COLUMNS`` (RFC 4180 line ends).

    With a checked log (``context.integrity``) a last column ``log_integrity`` holds the
    log's verification status on every row, so no copy of the figures goes without it.
    """
    integrity = [] if context is None or context.integrity is None else [context.integrity_text()]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*CSV_COLUMNS, *(["log_integrity"] if integrity else [])])
    for d in report.days:
        iso = d.day.isocalendar()
        writer.writerow(
            [
                spreadsheet_text(report.patient_id),  # free text: never a live formula
                d.day.isoformat(),
                _WEEKDAYS[d.day.weekday()],
                f"{iso.year}-W{iso.week:02d}",
                spreadsheet_text(d.status),
                "yes" if d.counted else "no",
                d.slots_prescribed,
                d.slots_completed,
                _number(d.minutes_prescribed),
                _number(d.minutes_at_dose),
                _number(d.minutes_logged),
                d.sessions_logged,
                _number(d.session_adherence),
                _number(d.dose_adherence),
                (d.protocol_sha256 or "")[:12],
                _change_cell(report, d.day),
                _not_counted_cell(report, d.day),
                report.label or "",
                *integrity,
            ]
        )
    return buffer.getvalue()


def render_json(report: AdherenceReport) -> str:
    """``report.to_dict()`` as indented JSON, ending in a newline."""
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
