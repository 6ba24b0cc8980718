"""The HTML page's blocks: cards, integrity banner, prescription facts and its four tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sessions.adherence import (
    AdherenceReport,
)
from sessions.jsonshapes import status_word
from sessions.report.context import ReportContext, ReportProtocol
from sessions.report.words import _e, _flags_by_session, _min, _since_text, _until_text

_SERIOUS = frozenset({"tripped", "fault", "interrupted", "running", "amplitude_error"})
_DOSE = frozenset({"under_dose", "stopped_by_patient"})


def _card(what: str, big: str, detail: str, ratio: float | None) -> str:
    grade = "" if ratio is None else "good" if ratio >= 0.9 else "fair" if ratio >= 0.7 else "poor"
    return (
        f'<div class="card {grade}"><div class="what">{_e(what)}</div>'
        f'<div class="big">{_e(big)}</div><div class="detail">{_e(detail)}</div></div>'
    )


def _integrity_banner(ctx: ReportContext) -> str:
    """The log's verification status; a failed one as a red block above everything else,
    headed by what failed: the hash chains (LOG INTEGRITY FAILED) or the plate's
    countersignatures (LOG NOT VOUCHED FOR BY THE PLATE)."""
    if ctx.integrity_failed:
        heading, _, rest = ctx.integrity_text().partition(": ")
        return (
            f'<div class="integrity failed" role="alert"><strong>{_e(heading)}</strong> '
            f"{_e(rest)}</div>"
        )
    return f'<p class="integrity ok">{_e(ctx.integrity_text())}</p>'


def _protocol_facts(protocol: ReportProtocol, report: AdherenceReport, ctx: ReportContext) -> str:
    windows = (
        ", ".join(f"{w.start:%H:%M}-{w.end:%H:%M}" for w in protocol.daily_windows)
        or "any time of day"
    )
    facts = [
        ("Target", f"{protocol.target_g:g} g peak, +/-{100 * protocol.dose_tolerance:g}%"),
        ("Frequency", protocol.schedule.describe()),
        (
            "Sessions",
            f"{protocol.sessions_per_day} a day x {protocol.minutes_per_session:g} min at dose",
        ),
        ("Rest between", f"at least {protocol.min_gap_hours:g} h"),
        ("Daily windows", windows),
        ("Time zone", protocol.timezone),
        ("Study", f"{protocol.study_start.isoformat()} to {protocol.study_end.isoformat()}"),
        ("This report", f"{report.period_start.isoformat()} to {report.period_end.isoformat()}"
         if report.days else "no days yet"),
        ("Protocol", f"sha256 {protocol.sha256[:12]}"),
        ("Last session", ctx.last_session_text(report.today)),
        ("Weekly target", f"{100 * ctx.target:g}% of sessions"),
    ]  # fmt: skip
    return (
        '<dl class="facts">'
        + "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
        + "</dl>"
    )


def _data_table(headings: Sequence[str], rows: Iterable[str], css_class: str = "data") -> str:
    """A table of the page's data style: a header row of ``headings``, then ``rows`` (``<tr>``)."""
    head = "".join(f'<th scope="col">{_e(heading)}</th>' for heading in headings)
    return (
        f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


def _protocol_table(report: AdherenceReport) -> str:
    """Every protocol of the patient's history, when it was in force and what changed."""
    headings = ("In force from", "Until", "Protocol", "Prescription", "Sessions", "What changed")
    rows = []
    for p in report.protocols:
        changed = (
            "".join(f"<li>{_e(c)}</li>" for c in p.changes)
            if p.changes
            else "<li>the first protocol in this log</li>"
        )
        rows.append(
            f"<tr><td>{_e(_since_text(p))}</td><td>{_e(_until_text(p))}</td>"
            f'<td class="sha" title="sha256 {_e(p.sha256)}">{_e(p.short_sha)}</td>'
            f'<td>{_e(p.describe())}</td><td class="num">{p.sessions}</td>'
            f"<td><ul>{changed}</ul></td></tr>"
        )
    return _data_table(headings, rows, "data protocols")


def _tag_class(kind: str) -> str:
    if kind in _SERIOUS:
        return " serious"
    return " dose" if kind in _DOSE else ""


def _flag_table(report: AdherenceReport) -> str:
    groups = _flags_by_session(report.flagged)
    if not groups:
        return '<p class="note-line">No session was flagged in this period.</p>'
    headings = ("Date", "Start", "Slot", "Session", "Device", "Why it is flagged")
    rows = []
    for group in groups:
        first = group[0]
        items = "".join(
            f'<li><span class="tag{_tag_class(f.kind)}">'
            f"{_e(status_word(f.kind).replace('_', ' '))}</span>{_e(f.reason)}</li>"
            for f in group
        )
        rows.append(
            f"<tr><td>{_e(first.local_date.isoformat())}</td>"
            f'<td title="{_e(first.started_local)}">{_e(first.started_local[11:16])}</td>'
            f'<td class="num">{first.slot}</td><td class="id">{_e(first.session_id)}</td>'
            f'<td class="id">{_e(first.device_id)}</td><td><ul>{items}</ul></td></tr>'
        )
    return _data_table(headings, rows)


def _device_table(report: AdherenceReport) -> str:
    if not report.devices:
        return '<p class="note-line">No session in this period.</p>'
    headings = ("Device", "Firmware", "Sessions", "First day", "Last day", "Minutes at dose logged")
    rows = []
    for use in report.devices:
        rows.append(
            f'<tr><td class="id">{_e(use.device_id)}</td>'
            f"<td>{_e(', '.join(use.firmware_versions))}</td>"
            f'<td class="num">{use.sessions}</td><td>{_e(use.first_day.isoformat())}</td>'
            f'<td>{_e(use.last_day.isoformat())}</td><td class="num">'
            f"{_min(use.minutes_at_dose)}</td></tr>"
        )
    return _data_table(headings, rows)


def _set_apart_html(report: AdherenceReport) -> list[str]:
    """The table of sessions that do not count, under a heading of its own."""
    if not report.set_apart:
        return []
    rows = "".join(
        f"<tr><td>{_e(s.local_date.isoformat())}</td><td>{s.slot}</td>"
        f"<td>{_e(s.started_local[11:16])}</td><td>{_e(s.session_id)}</td>"
        f"<td>{_e(s.device_id)}</td><td>{_e(s.kind)}</td><td>{_e(s.status)}</td>"
        f"<td>{_e(_min(s.minutes_at_dose))}</td></tr>"
        for s in report.set_apart
    )
    return [
        f"<h2>Not counted: simulated sessions and engineering runs ({len(report.set_apart)})</h2>",
        '<p class="note-line">Recorded on a simulated plate or by a service engineer: not '
        "therapy, not in any figure above.</p>",
        "<table><thead><tr><th>Date</th><th>Slot</th><th>Start</th><th>Session</th>"
        "<th>Device</th><th>Kind</th><th>Status</th><th>Minutes</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>",
    ]
