"""The whole report as one self-contained HTML page, with traces of the flagged sessions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import cast

from sessions.adherence import (
    AMPLITUDE_P95_LIMIT_PCT,
    AdherenceReport,
)
from sessions.report.blocks import (
    _card,
    _device_table,
    _flag_table,
    _integrity_banner,
    _protocol_facts,
    _protocol_table,
    _set_apart_html,
)
from sessions.report.calendar_view import _calendar
from sessions.report.charts import _accuracy_chart, _minutes_chart, _weekly_chart
from sessions.report.context import ReportContext, ReportProtocol, ReportSession, ReportSummary
from sessions.report.style import _CSS
from sessions.report.svg import _DAY_FILL
from sessions.report.trace import render_session_svg
from sessions.report.words import (
    _e,
    _flags_by_session,
    _long_date,
    _min,
    _pct,
    _since_text,
    empty_period_text,
)

MAX_TRACES = 6  # envelope charts of flagged sessions in the HTML report, most recent first
_TRACE_KINDS = frozenset(
    {"tripped", "fault", "interrupted", "stopped_by_patient", "under_dose", "amplitude_error"}
)


def _traces(
    report: AdherenceReport,
    sessions: Sequence[ReportSummary],
    record_of: Callable[[ReportSummary], ReportSession],
) -> str:
    wanted = {f.session_id for f in report.flagged if f.kind in _TRACE_KINDS}
    candidates = sorted(
        (s for s in sessions if s.session_id in wanted),
        key=lambda s: (s.started_utc, s.session_id),
        reverse=True,
    )
    chosen: list[ReportSession] = []
    for summary in candidates:  # envelopes are read only for the traces drawn
        record = record_of(summary)
        if record.envelope:
            chosen.append(record)
            if len(chosen) == MAX_TRACES:
                break
    if not chosen:
        return ""
    figures = "".join(
        f"<figure>{render_session_svg(s, width=500, height=200)}"
        f"<figcaption>{_e(s.session_id)} &#183; {_e(s.device_id)}</figcaption></figure>"
        for s in chosen
    )
    more = len(wanted) - len(chosen)  # flagged for a reason a trace explains
    return (
        f'<h2>Amplitude traces of flagged sessions</h2><p class="note-line">Measured peak '
        f"acceleration through each session (blue) against the target band (green); red "
        f"lines mark safety events. The {len(chosen)} most recent "
        f"{'is' if len(chosen) == 1 else 'are'} shown"
        + (f"; {more} more flagged session(s) are listed above." if more > 0 else ".")
        + f'</p><div class="traces">{figures}</div>'
    )


def _as_record(session: ReportSummary) -> ReportSession:
    """The session itself, when the caller gave full records (with envelopes)."""
    if not hasattr(session, "envelope"):
        raise TypeError("render_html needs record_of to draw traces from session summaries")
    return cast("ReportSession", session)


def _counted_to(report: AdherenceReport) -> str:
    counted = [d.day for d in report.days if d.counted]
    if not counted:
        return "No day has been counted yet."
    return f"Counted from {_long_date(counted[0])} to {_long_date(counted[-1])}."


def render_html(
    report: AdherenceReport,
    protocol: ReportProtocol,
    sessions: Iterable[ReportSummary],
    record_of: Callable[[ReportSummary], ReportSession] | None = None,
    context: ReportContext | None = None,
) -> str:
    """One self-contained HTML page of the report, for a clinician to open, print or attach.

    ``sessions`` may be summaries: ``record_of`` then gives the full record (envelope) of the
    few flagged sessions whose traces are drawn. Without it the sessions must be full records.
    ``context`` (default: worked out from ``sessions``, log not checked) adds the log's
    integrity, the last session and the adherence target.
    """
    record_of = _as_record if record_of is None else record_of
    sessions = list(sessions)
    ctx = ReportContext.of(report, protocol, sessions, None) if context is None else context
    apart = {s.session_id for s in report.set_apart}
    in_period = sorted(
        (
            s
            for s in sessions
            if s.patient_id == report.patient_id
            and s.session_id not in apart
            and report.period_start <= s.local_date <= min(report.period_end, report.today)
        ),
        key=lambda s: (s.local_date, s.slot, s.started_utc, s.session_id),
    )
    flagged_sessions = len(_flags_by_session(report.flagged))
    missed = len(report.missed_days)
    if report.days_counted:
        cards = "".join(
            [
                _card(
                    "Sessions completed at dose",
                    _pct(report.session_adherence),
                    f"{report.slots_completed} of {report.slots_prescribed} prescribed sessions",
                    report.session_adherence,
                ),
                _card(
                    "Minutes at dose",
                    _pct(report.dose_adherence),
                    f"{_min(report.minutes_at_dose)} of {_min(report.minutes_prescribed)} "
                    "prescribed minutes",
                    report.dose_adherence,
                ),
                _card(
                    "Days",
                    f"{report.full_days} full",
                    f"{report.partial_days} partial, {missed} missed, of "
                    f"{report.days_counted} days counted",
                    report.full_days / report.days_counted,
                ),
                _card(
                    "Flagged sessions",
                    str(flagged_sessions),
                    f"{len(report.flagged)} flag(s); see the table below",
                    None,
                ),
            ]
        )
    elif report.days:
        cards = '<p class="note-line">No day of the study has ended yet: nothing to count.</p>'
    else:
        cards = f'<p class="note-line">{_e(empty_period_text(report))}</p>'
    missed_line = (
        '<p class="note-line">Missed days: '
        + ", ".join(_e(_long_date(d)) for d in report.missed_days)
        + ".</p>"
        if report.missed_days
        else ""
    )
    several = len(report.protocols) > 1
    title = f"LIV therapy adherence: {report.patient_id}"
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        _integrity_banner(ctx),
        f'<header><h1>Therapy adherence <span class="pid">{_e(report.patient_id)}</span></h1>',
        '<p class="sub">Low-intensity vibration (LIV) plate: sessions as logged by the device. '
        f"{_e(_counted_to(report))} Dates and times are the patient's local ones "
        f"({_e(report.timezone)}).</p>",
        *(
            [f'<p class="demo-banner"><strong>{_e(report.label.upper())}</strong></p>']
            if report.label
            else []
        ),
        *(
            [
                '<p class="changed-note">The prescription changed during this study on '
                + _e(", ".join(_since_text(p) for p in report.protocol_changes))
                + ": each day is judged by the protocol in force that day (see Protocol "
                "changes).</p>"
            ]
            if several
            else []
        ),
        "</header>",
        "<h2>Overall adherence</h2>",
        f'<div class="cards">{cards}</div>',
        missed_line,
        f"<h2>Weekly adherence against the {100 * ctx.target:g}% target</h2>",
        _weekly_chart(report, ctx),
        '<div class="chart-legend"><span><span class="swatch" style="background:#3f9e5f">'
        "</span>week at or above the target</span><span>"
        '<span class="swatch" style="background:#e9a62b"></span>week below the target</span>'
        f"<span>dashed line: the target, {100 * ctx.target:g}% of prescribed sessions "
        f"({_e(ctx.target_source)})</span></div>",
        "<h2>Calendar</h2>",
        _calendar(report, ctx),
        "<h2>Prescription in force now</h2>" if several else "<h2>Prescription</h2>",
        _protocol_facts(protocol, report, ctx),
        *(
            [
                f'<h2 class="changed">Protocol changes ({len(report.protocol_changes)}): the '
                "prescription changed during the study</h2>",
                '<p class="note-line">Each day is judged by the protocol in force that day; '
                "a change is marked Rx in the calendar and by a purple line in the chart.</p>",
                _protocol_table(report),
            ]
            if several
            else []
        ),
        "<h2>Minutes at dose per day</h2>",
        _minutes_chart(report),
        '<div class="chart-legend">'
        + "".join(
            f'<span><span class="swatch" style="background:{_DAY_FILL[k]}"></span>{_e(t)}</span>'
            for k, t in (("full", "full day"), ("partial", "partial day"), ("today", "today"))
        )
        + '<span><span class="swatch" style="background:#b8bec8"></span>logged beyond the '
        "prescription (not counted)</span><span>dashed line: minutes prescribed</span></div>",
        "<h2>Amplitude accuracy per session</h2>",
        _accuracy_chart(report, in_period),
        '<div class="chart-legend"><span><span class="swatch" style="background:#2f6db3">'
        "</span>95th-percentile error of 1-s amplitude windows</span><span>"
        '<span class="swatch" style="background:#cf3f3f"></span>above the flag limit</span>'
        "<span>grey tick: no accuracy figure (session ended before settling)</span></div>",
        f"<h2>Flagged sessions ({flagged_sessions})</h2>",
        _flag_table(report),
        _traces(report, in_period, record_of),
        "<h2>Devices used</h2>",
        _device_table(report),
        *_set_apart_html(report),
        "<h2>How the figures are counted</h2>",
        '<ul class="rules">',
        "<li>Only therapy counts: sessions on a simulated plate and engineering runs are "
        "recorded as such, listed apart and never counted"
        + (" (this is a demo: its simulated sessions are counted)" if report.demo else "")
        + ".</li>",
        "<li>A day has "
        f"{report.sessions_per_day} session slot(s) of {report.minutes_per_session:g} min. "
        "A slot is completed when the minutes at dose of its sessions reach the prescription; "
        "a session that was cut short and then resumed the same day counts as one slot.</li>",
        "<li>Minutes at dose are capped at the prescription slot by slot: extra sessions and "
        "extra minutes never make up for another slot or another day.</li>",
        "<li>Only days that have ended are counted: today and later days are not.</li>",
        "<li>Each day is judged by the protocol in force that day: a protocol comes into "
        "force when its first session ran (or, for the protocol installed now, when it was "
        "installed), so a new protocol never changes how earlier days are counted.</li>",
        "<li>A day is missed when no minutes at dose were delivered in any of its slots.</li>",
        f"<li>A session is flagged for an amplitude error when the 95th percentile of its 1-s "
        f"amplitude error is above {AMPLITUDE_P95_LIMIT_PCT:g}% of the target.</li>",
        "</ul>",
        f"<footer>Generated from the session log ({report.sessions_considered} session(s) "
        "of this patient in the period) by the LIV platform software. "
        "The report is for clinical review; it does not diagnose."
        + (f" {_e(report.label.upper())}." if report.label else "")
        + "</footer>",
        "</main></body></html>",
    ]
    return "\n".join(body) + "\n"
