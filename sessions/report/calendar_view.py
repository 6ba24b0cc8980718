"""The HTML calendar of the report period: a row per week, each day coloured by its status."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta

from sessions.adherence import (
    AdherenceReport,
    DayAdherence,
)
from sessions.report.context import ReportContext
from sessions.report.words import _WEEKDAYS, _change_text, _changes_on, _e, _long_date, _min, _pct

_STATUS_TEXT = {
    "full": "all sessions at dose",
    "partial": "partly done",
    "missed": "missed: no minutes at dose",
    "today": "today: in progress, not counted yet",
    "future": "future",
    "other": "in the study, outside this report's period",
    "outside": "outside the study",
}


def _calendar_status(report: AdherenceReport, day: date, days: Mapping[date, DayAdherence]) -> str:
    found = days.get(day)
    if found is not None:
        return found.status
    if not report.in_study(day):
        return "outside"
    if day > report.today:
        return "future"
    return "other"


# Before the study starts the report period is empty: the calendar shows its first weeks.
_CALENDAR_PREVIEW_DAYS = 42


def _calendar_span(report: AdherenceReport) -> tuple[date, date]:
    """First and last day the calendar shows: the report period, never the whole study."""
    if report.days:
        first, last = report.days[0].day, report.days[-1].day
        # a period that runs past today (an --until in the future) ends its calendar today
        return first, min(last, max(report.today, first))
    start = report.study_start
    return start, min(report.study_end, start + timedelta(days=_CALENDAR_PREVIEW_DAYS - 1))


def _calendar(report: AdherenceReport, ctx: ReportContext) -> str:
    days = {d.day: d for d in report.days}
    changes = _changes_on(report)
    weeks = {(w.iso_year, w.iso_week): w for w in report.weeks}
    span_start, span_end = _calendar_span(report)
    first = span_start - timedelta(days=span_start.weekday())
    last = span_end + timedelta(days=6 - span_end.weekday())
    rows = [
        '<table class="cal"><caption class="sr">Calendar of the report period, one row per '
        "week; "
        "each day shows the sessions completed at dose of those prescribed.</caption>"
        '<thead><tr><th class="wk" scope="col">Week</th>'
        + "".join(f'<th scope="col">{name}</th>' for name in _WEEKDAYS)
        + '<th class="fig" scope="col">Sessions</th><th class="fig" scope="col">Dose</th>'
        "</tr></thead><tbody>"
    ]
    monday = first
    previous_month = 0
    while monday <= last:
        iso = monday.isocalendar()
        month_day = next(
            (
                monday + timedelta(days=k)
                for k in range(7)
                if (monday + timedelta(days=k)).month != previous_month
            ),
            None,
        )
        month = f" {month_day:%b %Y}" if month_day is not None else ""
        previous_month = (monday + timedelta(days=6)).month
        cells = [
            f'<td class="wk"><b>{iso.year}-W{iso.week:02d}</b>'
            f'<span class="mo">{_e(month.strip())}</span></td>'
        ]
        for k in range(7):
            day = monday + timedelta(days=k)
            status = _calendar_status(report, day, days)
            found = days.get(day)
            count = ""
            title = f"{_long_date(day)}: {_STATUS_TEXT[status]}"
            if ctx.starts.get(day):
                title += f"; started at {', '.join(ctx.starts[day])}"
            if found is not None and status in {"full", "partial", "missed", "today"}:
                count = f"{found.slots_completed}/{found.slots_prescribed}"
                title += (
                    f"; {found.slots_completed} of {found.slots_prescribed} sessions at dose, "
                    f"{_min(found.minutes_at_dose)} of {_min(found.minutes_prescribed)} min"
                )
                if found.minutes_logged > found.minutes_at_dose + 0.005:
                    title += f" ({_min(found.minutes_logged)} min logged in all)"
            mark = ""
            for change in changes.get(day, []):
                title += f"; {_change_text(change)}"
                mark = (
                    '<span class="pc" aria-hidden="true">Rx</span>'
                    '<span class="sr"> protocol changed</span>'
                )
            cells.append(
                f'<td><div class="day {status}" title="{_e(title)}">'
                f'<span class="n">{day.day}</span><span class="sr"> {_e(_STATUS_TEXT[status])}'
                f'</span>{mark}<span class="c">{count}</span></div></td>'
            )
        week = weeks.get((iso.year, iso.week))
        if week is not None and week.days_counted:
            cells.append(
                f'<td class="fig" title="{_e(week.label)}: {week.slots_completed} of '
                f'{week.slots_prescribed} sessions">{_pct(week.session_adherence)}</td>'
                f'<td class="fig" title="{_e(week.label)}: {_min(week.minutes_at_dose)} of '
                f'{_min(week.minutes_prescribed)} min">{_pct(week.dose_adherence)}</td>'
            )
        else:
            cells.append('<td class="fig"></td><td class="fig"></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
        monday += timedelta(days=7)
    rows.append("</tbody></table>")
    legend = "".join(
        f'<li><span class="day {status}" aria-hidden="true"></span>{_e(text)}</li>'
        for status, text in (
            ("full", "full: every session at dose"),
            ("partial", "partial: some minutes at dose"),
            ("missed", "missed: no minutes at dose"),
            ("today", "today (not counted yet)"),
            ("future", "future"),
            ("other", "outside this report's period"),
            ("outside", "outside the study"),
        )
    )
    if report.protocol_changes:
        legend += (
            '<li><span class="day other" aria-hidden="true"><span class="pc">Rx</span></span>'
            "a new protocol came into force that day (hover for what changed)</li>"
        )
    rows.append(
        f'<ul class="legend">{legend}</ul><p class="note-line">The figure in each day is '
        "sessions completed at dose / sessions prescribed; hover over a day for minutes. "
        "The two columns on the right are the week's session and dose adherence.</p>"
    )
    return "".join(rows)
