"""Adherence reports for people: a terminal table, CSV, JSON, and one self-contained HTML page.

The HTML page is a single file a clinician can open or attach to a record: inline CSS and
inline SVG, no script, no font, image or style fetched from anywhere. Every piece of text that
came from a protocol or a log (patient id, device id, reasons) is escaped. Nothing in the output
depends on the clock or on the order sessions were given in, so the same log gives the same
file. ``docs/adherence.md`` explains the figures.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Protocol, cast

from sessions.adherence import (
    AMPLITUDE_P95_LIMIT_PCT,
    PRESENCE_EVENT,
    AdherenceReport,
    DayAdherence,
    Flag,
    Plan,
    ProtocolPeriod,
    SessionLike,
    WeekAdherence,
)
from sessions.jsonshapes import status_word
from sessions.log import TrustResult, VerifyResult, spreadsheet_text
from sessions.text import terminal_line

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_ADHERENCE_TARGET",
    "LINE_WIDTH",
    "ReportContext",
    "ReportProtocol",
    "ReportSession",
    "ReportSummary",
    "render_csv",
    "render_html",
    "render_json",
    "render_session_svg",
    "render_table",
]

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
MAX_TRACES = 6  # envelope charts of flagged sessions in the HTML report, most recent first
_TRACE_KINDS = frozenset(
    {"tripped", "fault", "interrupted", "stopped_by_patient", "under_dose", "amplitude_error"}
)
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LINE_WIDTH = 100  # the text report's lines never run longer
# The weekly session adherence the trend is drawn against when the protocol names none: the
# share of prescribed sessions commonly asked of home device therapy (e.g. CPAP's 70%, here a
# little higher). A protocol's own ``adherence_target`` (a fraction) takes its place.
DEFAULT_ADHERENCE_TARGET = 0.8


@dataclass(frozen=True)
class ReportContext:
    """What the report says beside the adherence figures: facts from the log as a whole.

    ``integrity`` is the log's verification (None: not checked); ``last_session`` the local day
    of the patient's latest session up to today; ``target`` the weekly adherence target and
    ``target_source`` where it comes from; ``starts`` the local start times (HH:MM) by day.
    """

    integrity: VerifyResult | None = None
    trust: TrustResult | None = None  # what the plate vouches for (None: not checked)
    last_session: date | None = None
    target: float = DEFAULT_ADHERENCE_TARGET
    target_source: str = "the report's default; the protocol sets none"
    starts: Mapping[date, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        report: AdherenceReport,
        protocol: object,
        sessions: Iterable[SessionLike],
        integrity: VerifyResult | None,
        trust: TrustResult | None = None,
    ) -> ReportContext:
        theirs = sorted(
            (s for s in sessions if s.patient_id == report.patient_id),
            key=lambda s: (s.local_date, s.slot, _start_text(s)),
        )
        past = [s.local_date for s in theirs if s.local_date <= report.today]
        starts: dict[date, list[str]] = defaultdict(list)
        for s in theirs:
            starts[s.local_date].append(_start_text(s))
        own: object = getattr(protocol, "adherence_target", None)
        target = DEFAULT_ADHERENCE_TARGET
        known = isinstance(own, int | float) and not isinstance(own, bool) and 0 < own <= 1
        if known and isinstance(own, int | float):
            target = float(own)
        return cls(
            integrity=integrity,
            trust=trust,
            last_session=max(past) if past else None,
            target=target,
            target_source="the protocol's" if known else cls.target_source,
            starts={d: tuple(v) for d, v in starts.items()},
        )

    @property
    def integrity_failed(self) -> bool:
        if self.integrity is None:
            return False
        return not self.integrity.ok or (self.trust is not None and not self.trust.ok)

    def integrity_text(self) -> str:
        """The log's verification status in one sentence (two when the plate's vouching fails)."""
        if self.integrity is None:
            return "Log integrity: not checked."
        trust = self.trust
        if self.integrity.ok and trust is not None and not trust.ok:
            more = trust.problem_count - 1
            also = f" ({more} more; 'liv verify' lists them)" if more > 0 else ""
            first = trust.problems[0] if trust.problems else "a countersignature does not hold"
            return (
                "LOG NOT VOUCHED FOR BY THE PLATE: the hash chains are intact, but the plate's "
                f"countersignatures do not cover these records as they stand: {first}{also}. "
                "These figures cannot be trusted until 'liv verify' passes; contact the clinic."
            )
        if self.integrity.ok:
            vouched = (
                ""
                if trust is None
                else f"; {trust.vouched} vouched for by the plate"
                + (f", {trust.legacy} recorded before device signatures" if trust.legacy else "")
            )
            return (
                f"Log integrity: verified ({self.integrity.records_checked} records, every "
                f"hash chain intact{vouched})."
            )
        bad = self.integrity.first_bad
        where = (
            ""
            if bad is None
            else f" Record {bad.chain_index} (session {bad.session_id}) of chain {bad.chain}: "
            f"{bad.what}."
        )
        return (
            "LOG INTEGRITY FAILED: the session log was changed after it was written, so these "
            f"figures cannot be trusted.{where} Run 'liv verify' and contact the clinic."
        )

    def last_session_text(self, today: date) -> str:
        if self.last_session is None:
            return "no session logged"
        days = (today - self.last_session).days
        ago = "today" if days == 0 else "yesterday" if days == 1 else f"{days} days ago"
        return f"{self.last_session.isoformat()} ({ago})"


def _start_text(session: object) -> str:
    """HH:MM of a session's local start (protocol's zone, as the log stores it)."""
    started = getattr(session, "started_local", "")
    text = started if isinstance(started, str) else started.isoformat()
    return str(text)[11:16]


class ReportProtocol(Plan, Protocol):
    """The fields of a patient protocol the HTML report shows (all of ``Plan``)."""


class ReportSummary(SessionLike, Protocol):
    """The fields of a logged session the HTML report reads (``sessions.log.SessionSummary``)."""

    @property
    def target_g(self) -> float: ...
    @property
    def protocol_json(self) -> str: ...


class ReportSession(ReportSummary, Protocol):
    """A logged session with its envelope, as the session chart draws it (``SessionRecord``)."""

    @property
    def envelope(self) -> Sequence[tuple[float, float]]: ...


# --------------------------------------------------------------------------------------------
# Small formatting helpers


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def _min(value: float) -> str:
    return f"{value:.1f}"


def _number(value: float | None) -> str:
    """A number for CSV: at most 6 decimals, as the log stores it, without trailing zeros."""
    if value is None:
        return ""
    text = f"{round(value, 6) + 0.0:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _printable(text: str) -> str:
    """Text for a terminal: control characters from a log are shown, never sent."""
    return terminal_line(text)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _long_date(day: date) -> str:
    return f"{_WEEKDAYS[day.weekday()]} {day.day} {day:%b %Y}"


def _columns(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def _flags_by_session(flags: Iterable[Flag]) -> list[list[Flag]]:
    grouped: dict[str, list[Flag]] = {}
    for flag in flags:
        grouped.setdefault(flag.session_id, []).append(flag)
    return list(grouped.values())


def _since_text(p: ProtocolPeriod) -> str:
    return "the start of its study" if p.in_force_from is None else p.in_force_from.isoformat()


def _until_text(p: ProtocolPeriod) -> str:
    if p.in_force_until is None:
        return "now (in force)"
    if p.in_force_from is not None and p.in_force_until < p.in_force_from:
        return "the same day (replaced)"
    return p.in_force_until.isoformat()


def _changes_on(report: AdherenceReport) -> dict[date, list[ProtocolPeriod]]:
    """The protocols that came into force, by the day they did."""
    found: dict[date, list[ProtocolPeriod]] = defaultdict(list)
    for p in report.protocol_changes:
        assert p.in_force_from is not None
        found[p.in_force_from].append(p)
    return found


def _change_text(p: ProtocolPeriod) -> str:
    return f"protocol {p.short_sha} in force: " + "; ".join(p.changes)


def _change_cell(report: AdherenceReport, day: date) -> str:
    """What changed on ``day`` (protocols that came into force), for a CSV cell."""
    return " | ".join(_change_text(p) for p in report.protocol_changes if p.in_force_from == day)


# --------------------------------------------------------------------------------------------
# Text, CSV, JSON


def accuracy_text(p95_pct: float | None, uncertainty_pct: float | None) -> str:
    """A session's accuracy as shown: "p95 error 0.80% +/- 0.30%" (the +/- is the standard
    uncertainty of one 1-s window; records from before it was kept show the p95 alone)."""
    if p95_pct is None:
        return "no accuracy figure"
    spread = f" +/- {uncertainty_pct:.2f}%" if uncertainty_pct is not None else ""
    return f"p95 error {p95_pct:.2f}%{spread}"


def _wrapped(text: str, indent: str = "", first: str | None = None) -> list[str]:
    """``text`` in lines of at most LINE_WIDTH characters (a long word is broken)."""
    return textwrap.wrap(
        text,
        width=LINE_WIDTH,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_on_hyphens=False,
    ) or [indent.rstrip()]


def empty_period_text(report: AdherenceReport) -> str:
    """Why the report period has no days, in one sentence."""
    first = min((p.study_start for p in report.protocols), default=report.study_start)
    last = max((p.study_end for p in report.protocols), default=report.study_end)
    if report.today < first and report.period_start <= first:
        return (
            f"The report period has no days: the study has not started yet (it starts on "
            f"{first.isoformat()})."
        )
    if report.period_start > last:
        return (
            f"The report period has no days: it starts on {report.period_start.isoformat()}, "
            f"after the study ended on {last.isoformat()}; choose an earlier --since."
        )
    if report.period_end < first:
        return (
            f"The report period has no days: it ends on {report.period_end.isoformat()}, "
            f"before the study starts on {first.isoformat()}; choose a later --until."
        )
    if report.period_start > report.today:
        return (
            f"The report period has no days: it starts on {report.period_start.isoformat()}, "
            f"after today ({report.today.isoformat()}); nothing has happened in it yet."
        )
    return "The report period has no days."


def _bar(ratio: float | None, target: float, width: int = 20) -> str:
    """A text bar of ``ratio`` (0..1) with the target marked ``|``."""
    if ratio is None:
        return ""
    filled = math.floor(min(max(ratio, 0.0), 1.0) * width + 1e-9)
    cells = ["#" if k < filled else "." for k in range(width)]
    mark = min(width - 1, round(target * width))
    cells[mark] = "|"
    return "".join(cells)


def render_table(report: AdherenceReport, context: ReportContext | None = None) -> str:
    """The report as plain text for a terminal, no line longer than LINE_WIDTH."""
    ctx = ReportContext() if context is None else context
    out: list[str] = [report.label.upper()] if report.label else []
    if ctx.integrity_failed:
        out.append("!" * LINE_WIDTH)
        out.extend(_wrapped(ctx.integrity_text(), "!! "))
        out.append("!" * LINE_WIDTH)
    several = len(report.protocols) > 1
    out.extend(
        [
            f"Adherence of patient {_printable(report.patient_id)} "
            f"(local dates and times in {_printable(report.timezone)})",
            f"Study{' (protocol in force now)' if several else ''} "
            f"{report.study_start} to {report.study_end}; today is {report.today}.",
            f"Prescribed{' now' if several else ''}: "
            f"{report.sessions_per_day} session(s) a day of "
            f"{report.minutes_per_session:g} min at dose.",
        ]
    )
    if not ctx.integrity_failed:
        out.append(ctx.integrity_text())
    out.append(f"Last session: {ctx.last_session_text(report.today)}.")
    if several:
        changed_on = ", ".join(_since_text(p) for p in report.protocol_changes)
        out.extend(_wrapped(f"THE PROTOCOL CHANGED on {changed_on}: see below."))
        out.append("Protocols (each day is judged by the protocol in force that day):")
        for p in report.protocols:
            out.extend(
                _wrapped(
                    f"{p.short_sha} from {_since_text(p)} to {_until_text(p)}: "
                    f"{_printable(p.describe())}",
                    "      ",
                    "  ",
                )
            )
            if p.changes:
                out.extend(
                    _wrapped(
                        f"changed on {_since_text(p)}: {_printable('; '.join(p.changes))}",
                        "      ",
                        "    ",
                    )
                )
    if not report.days:
        out.append(empty_period_text(report))
        return "\n".join(out) + "\n"
    out.append(f"Report period {report.period_start} to {report.period_end}.")
    out.append("")
    out.append(f"Overall, {report.days_counted} day(s) counted (today and later are not):")
    out.extend(
        "  " + line
        for line in _columns(
            [
                [
                    "sessions completed at dose",
                    f"{report.slots_completed} of {report.slots_prescribed}",
                    _pct(report.session_adherence),
                ],
                [
                    "minutes at dose",
                    f"{_min(report.minutes_at_dose)} of {_min(report.minutes_prescribed)}",
                    _pct(report.dose_adherence),
                ],
                [
                    "days full / partial / missed",
                    f"{report.full_days} / {report.partial_days} / {len(report.missed_days)}",
                    "",
                ],
            ],
            right=frozenset({1, 2}),
        )
    )
    if report.missed_days:
        out.extend(
            _wrapped(
                ", ".join(d.isoformat() for d in report.missed_days), "    ", "  missed days: "
            )
        )
    out.append("")
    out.extend(
        _wrapped(
            f"Weekly session adherence against the target of {100 * ctx.target:g}% "
            f"({ctx.target_source}; | marks it in the trend):"
        )
    )
    out.extend(_columns(_week_rows(report.weeks, ctx.target), right=frozenset({1, 2, 3, 4, 5, 6})))
    out.append("")
    out.extend(_columns(_day_rows(report, ctx), right=frozenset({3, 4})))
    out.append("")
    if report.flagged:
        sessions = _flags_by_session(report.flagged)
        out.append(f"Flagged sessions: {len(sessions)} ({len(report.flagged)} flags)")
        for group in sessions:
            first = group[0]
            out.append(
                f"  {first.local_date.isoformat()} {first.started_local[11:16]} slot "
                f"{first.slot}  session {_printable(first.session_id)}  plate "
                f"{_printable(first.device_id)}"[:LINE_WIDTH]
            )
            for flag in group:
                kind = flag.kind.replace("stopped_by_patient", "stopped_by_user")
                out.extend(_wrapped(_printable(flag.reason), " " * 26, f"    {kind:<20}  "))
    else:
        out.append("Flagged sessions: none.")
    out.append("")
    out.append("Devices:")
    if not report.devices:
        out.append("  none in this period")
    for use in report.devices:
        out.extend(
            _wrapped(
                f"{_printable(use.device_id)}: {use.sessions} session(s) from {use.first_day} "
                f"to {use.last_day}, firmware {_printable(', '.join(use.firmware_versions))}",
                "    ",
                "  ",
            )
        )
    out.extend(_set_apart_lines(report))
    if report.label:
        out.append(report.label.upper())
    # A table row made wide by unusual data (many sessions in a day, long ids) wraps too.
    fitted = [
        part
        for line in out
        for part in (_wrapped(line, " " * 12) if len(line) > LINE_WIDTH else [line])
    ]
    return "\n".join(fitted) + "\n"


def _set_apart_lines(report: AdherenceReport) -> list[str]:
    """The sessions that do not count (simulated, engineering), apart from everything above."""
    if not report.set_apart:
        return []
    rows = [["date", "slot", "start", "session", "device", "kind", "status", "minutes"]]
    rows += [
        [
            s.local_date.isoformat(), str(s.slot), s.started_local[11:16],
            _printable(s.session_id), _printable(s.device_id), s.kind, s.status,
            _min(s.minutes_at_dose),
        ]
        for s in report.set_apart
    ]  # fmt: skip
    return [
        "",
        f"Not counted (not therapy): {len(report.set_apart)} session(s) on a simulator or "
        "engineering run(s)",
        *_columns(rows),
    ]


def _not_counted_cell(report: AdherenceReport, day: date) -> str:
    kinds: dict[str, int] = {}
    for s in report.set_apart:
        if s.local_date == day:
            kinds[s.kind] = kinds.get(s.kind, 0) + 1
    return "; ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))


def _week_rows(weeks: Sequence[WeekAdherence], target: float) -> list[list[str]]:
    rows = [["week", "days", "sessions", "", "min at dose", "", "missed", "trend", ""]]
    for w in weeks:
        if not w.days_counted:
            continue  # this week has no day that has ended yet
        ratio = w.session_adherence
        rows.append(
            [
                w.label,
                str(w.days_counted),
                f"{w.slots_completed}/{w.slots_prescribed}",
                _pct(ratio),
                f"{_min(w.minutes_at_dose)}/{_min(w.minutes_prescribed)}",
                _pct(w.dose_adherence),
                str(len(w.missed_days)),
                _bar(ratio, target),
                "" if ratio is None else "below" if ratio < target - 1e-9 else "",
            ]
        )
    return rows


def _day_rows(report: AdherenceReport, ctx: ReportContext) -> list[list[str]]:
    several = len(report.protocols) > 1  # then a column says where each protocol starts
    changes = _changes_on(report)
    rows = [["date", "day", "status", "sessions", "min at dose", "logged", "started at"]]
    if several:
        rows[0].append("protocol")
    for d in report.days:
        shown = d.counted or d.status == "today"
        marks = [f"changed to {p.short_sha}" for p in changes.get(d.day, [])]
        rows.append(
            [
                d.day.isoformat(),
                _WEEKDAYS[d.day.weekday()],
                d.status,
                f"{d.slots_completed}/{d.slots_prescribed}" if shown else "",
                f"{_min(d.minutes_at_dose)}/{_min(d.minutes_prescribed)}" if shown else "",
                f"{_min(d.minutes_logged)} min in {d.sessions_logged}" if d.sessions_logged else "",
                " ".join(ctx.starts.get(d.day, ())[:3])
                + (f" +{len(ctx.starts[d.day]) - 3}" if len(ctx.starts.get(d.day, ())) > 3 else ""),
                *([", ".join(marks)] if several else []),
            ]
        )
    return rows


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


# --------------------------------------------------------------------------------------------
# SVG charts


def _f(value: float) -> str:
    """A coordinate: two decimals, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


_SVG_LOOK = {  # presentation attributes, so an SVG looks right outside the page too
    "grid": 'stroke="#e6e8ec" stroke-width="1"',
    "frame": 'fill="none" stroke="#b9bec7" stroke-width="1"',
    "tick": 'font-size="11" fill="#5b6472"',
    "axis": 'font-size="11.5" fill="#5b6472"',
    "note": 'font-size="11.5" font-weight="600" fill="#1d2430"',
    "limit-text": 'font-size="11.5" font-weight="600" fill="#cf3f3f"',
    "chart-title": 'font-size="12" font-weight="600" fill="#1d2430"',
    "tickmark": 'stroke="#b9bec7" stroke-width="1"',
    "prescribed": 'stroke="#1d2430" stroke-width="1.5" stroke-dasharray="6 4"',
    "extra": 'fill="#b8bec8"',
    "zero": 'stroke="none"',
    "limit": 'stroke="#cf3f3f" stroke-width="1.5" stroke-dasharray="6 4"',
    "ok": 'fill="#2f6db3" fill-opacity="0.75"',
    "over": 'fill="#cf3f3f" stroke="#7a1010" stroke-width="1"',
    "nodata": 'stroke="#8a919c" stroke-width="2"',
    "band": 'fill="#3f9e5f" fill-opacity="0.16"',
    "target": 'stroke="#3f9e5f" stroke-width="1.2" stroke-dasharray="5 3"',
    "envelope": 'fill="none" stroke="#2f6db3" stroke-width="1.4" stroke-linejoin="round"',
    "event": 'stroke="#cf3f3f" stroke-width="2"',
    "change": 'stroke="#6b3fa0" stroke-width="2" stroke-dasharray="2 3"',
    "change-text": 'font-size="11" font-weight="600" fill="#6b3fa0"',
    "event-text": 'font-size="11" font-weight="600" fill="#cf3f3f"',
    "nobody": 'fill="#8a919c" fill-opacity="0.22"',
    "nobody-text": 'font-size="11" font-weight="600" fill="#5b6472"',
}
_L = {name: f'class="{name}" {look}' for name, look in _SVG_LOOK.items()}
_SVG_FONT = "Segoe UI, Helvetica Neue, Arial, Liberation Sans, DejaVu Sans, sans-serif"


def _svg_open(width: int, height: int, label: str, css_class: str, standalone: bool) -> str:
    namespace = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    return (
        f'<svg{namespace} class="{css_class}" viewBox="0 0 {width} {height}" '
        f'font-family="{_SVG_FONT}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(label)}">'
        f"<title>{_e(label)}</title>"
    )


def _downsampled(points: Sequence[tuple[float, float]], buckets: int) -> list[tuple[float, float]]:
    """At most ``2 * buckets`` points keeping each bucket's lowest and highest amplitude."""
    if len(points) <= 2 * buckets:
        return list(points)
    size = len(points) / buckets
    kept: list[tuple[float, float]] = []
    for b in range(buckets):
        chunk = points[int(b * size) : int((b + 1) * size)]
        if not chunk:
            continue
        low = min(chunk, key=lambda p: p[1])
        high = max(chunk, key=lambda p: p[1])
        kept.extend(sorted({low, high}))
    return kept


def _tolerance_of(record: ReportSummary) -> float | None:
    try:
        value = json.loads(record.protocol_json).get("dose_tolerance")
    except (ValueError, AttributeError):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    return None


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(ticks, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * power:
            return m * power
    return 10.0 * power


def render_session_svg(
    record: ReportSession,
    *,
    dose_tolerance: float | None = None,
    width: int = 720,
    height: int = 240,
    standalone: bool = False,
) -> str:
    """The envelope of one session: measured amplitude against time, with the target band.

    The band is ``target_g * (1 +/- dose_tolerance)``; the tolerance is read from the
    session's own protocol unless given. ``standalone`` adds the SVG namespace so the text
    can be saved as an ``.svg`` file; inside HTML it is not needed.
    """
    tolerance = dose_tolerance if dose_tolerance is not None else _tolerance_of(record)
    target = record.target_g
    points = sorted((t, g) for t, g in record.envelope if math.isfinite(t) and math.isfinite(g))
    left, right, top, bottom = 52, 26, 26, 50  # the legend sits under the time axis
    plot_w, plot_h = width - left - right, height - top - bottom
    t_end = max([points[-1][0] if points else 0.0, 60.0])
    timed = [e for e in record.safety_events if isinstance(e.get("t_s"), int | float)]
    events = [e for e in timed if e.get("reason") != PRESENCE_EVENT]
    absent_s = _absent_s(record)
    nobody = _nobody_span(record, points)
    t_end = max([t_end, *(float(e["t_s"]) for e in events)])
    g_top = max([target * 1.5, *(g * 1.05 for _, g in points)])

    def x(t_s: float) -> float:
        return left + plot_w * t_s / t_end

    def y(g: float) -> float:
        return top + plot_h * (1.0 - g / g_top)

    label = (
        f"Session {record.session_id}, {record.local_date.isoformat()} slot {record.slot}: "
        f"measured amplitude against time; target {target:g} g"
        + (f" +/- {100 * tolerance:g}%" if tolerance is not None else "")
        + f"; {record.minutes_at_dose:.1f} of {record.minutes_prescribed:.1f} min at dose; "
        f"status {record.status}"
    )
    parts = [_svg_open(width, height, label, "trace", standalone)]
    status = status_word(str(record.status)).replace("_", " ")
    parts.append(
        f'<text x="{left}" y="16" {_L["chart-title"]}>{_e(record.local_date.isoformat())} '
        f"{_e(_start_text(record))} slot {record.slot} &#183; {_e(status)} &#183; "
        f"{record.minutes_at_dose:.1f}/{record.minutes_prescribed:.1f} min at dose</text>"
    )
    if nobody is not None:
        x0, x1 = x(nobody[0]), x(nobody[1])
        parts.append(
            f'<rect {_L["nobody"]} x="{_f(x0)}" y="{top}" width="{_f(max(x1 - x0, 1.0))}" '
            f'height="{plot_h}"><title>nobody on the plate from {nobody[0]:.0f} s to '
            f"{nobody[1]:.0f} s: the session stopped</title></rect>"
            f'<text {_L["nobody-text"]} x="{_f(x0 + 3)}" y="{top + 12}">nobody on the plate'
            "</text>"
        )
    if tolerance is not None:
        band_top, band_bottom = y(target * (1 + tolerance)), y(target * (1 - tolerance))
        parts.append(
            f'<rect {_L["band"]} x="{left}" y="{_f(band_top)}" width="{plot_w}" '
            f'height="{_f(band_bottom - band_top)}"><title>target band {target:g} g '
            f"+/- {100 * tolerance:g}%</title></rect>"
        )
    parts.append(
        f'<line {_L["target"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(target))}" '
        f'y2="{_f(y(target))}"/>'
    )
    step_g = _nice_step(g_top, 4)
    tick = 0.0
    while tick <= g_top + 1e-9:
        parts.append(
            f'<line {_L["grid"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(tick))}" '
            f'y2="{_f(y(tick))}"/><text {_L["tick"]} x="{left - 6}" y="{_f(y(tick) + 4)}" '
            f'text-anchor="end">{tick:g}</text>'
        )
        tick = round(tick + step_g, 9)
    step_s = _nice_step(t_end, 6) if t_end < 120 else 60.0 * _nice_step(t_end / 60.0, 6)
    tick = 0.0
    while tick <= t_end + 1e-9:
        text = f"{tick:g} s" if t_end < 120 else f"{tick / 60:g} min"
        parts.append(
            f'<text {_L["tick"]} x="{_f(x(tick))}" y="{top + plot_h + 16}" '
            f'text-anchor="middle">{text}</text>'
        )
        tick = round(tick + step_s, 9)
    parts.append(
        f'<text {_L["axis"]} x="14" y="{_f(top + plot_h / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_f(top + plot_h / 2)})">peak g</text>'
    )
    if points:
        line = " ".join(f"{_f(x(t))},{_f(y(g))}" for t, g in _downsampled(points, plot_w))
        parts.append(f'<polyline {_L["envelope"]} points="{line}"/>')
    else:
        parts.append(
            f'<text {_L["tick"]} x="{_f(left + plot_w / 2)}" y="{_f(top + plot_h / 2)}" '
            'text-anchor="middle">no amplitude recorded</text>'
        )
    for event in events:
        at = x(float(event["t_s"]))
        name = str(event.get("reason", "safety event"))
        kind = "trip" if record.status == "tripped" else "event"
        parts.append(
            f"<g><title>{_e(name)} at {float(event['t_s']):.1f} s: "
            f'{_e(event.get("detail", ""))}</title><line {_L["event"]} x1="{_f(at)}" '
            f'x2="{_f(at)}" y1="{top}" y2="{top + plot_h}"/><text {_L["event-text"]} '
            f'x="{_f(at - 3)}" y="{top + 12}" text-anchor="end">{kind}: {_e(name)}</text></g>'
        )
    parts.append(f'<rect {_L["frame"]} x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>')
    parts.append(_trace_legend(left, height - 10, tolerance is not None, bool(events),
                               nobody is not None, absent_s))  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


_NOBODY = re.compile(r"nobody on the plate for (\d+(?:\.\d+)?) minute")


def _nobody_span(
    record: ReportSession, points: Sequence[tuple[float, float]]
) -> tuple[float, float] | None:
    """When nobody was on the plate, as far as the record tells: the minutes before a session
    stopped because nobody was on it (its reason says how long). Earlier step-offs are only
    counted (the presence event's ``absent_s``), not timed, so they are not drawn."""
    found = _NOBODY.search(str(record.reason))
    if found is None or not points:
        return None
    end = points[-1][0]
    return max(0.0, end - 60.0 * float(found.group(1))), end


def _absent_s(record: ReportSummary) -> float:
    """Seconds nobody was on the plate during the hold, from the record's presence event."""
    for event in record.safety_events:
        values = event.get("values")
        if event.get("reason") == PRESENCE_EVENT and isinstance(values, dict):
            absent = values.get("absent_s")
            if isinstance(absent, int | float) and not isinstance(absent, bool):
                return float(absent)
    return 0.0


def _trace_legend(
    left: float, base: float, band: bool, events: bool, nobody: bool, absent_s: float
) -> str:
    """The key under a session chart: only what the chart shows."""
    items = [(f'<line {_L["envelope"]} x1="0" x2="14" y1="-4" y2="-4"/>', "measured amplitude")]
    if band:
        items.append((f'<rect {_L["band"]} x="0" y="-9" width="14" height="10"/>', "target band"))
    if events:
        items.append((f'<line {_L["event"]} x1="7" x2="7" y1="-10" y2="2"/>', "trip / event"))
    if nobody:
        items.append(
            (f'<rect {_L["nobody"]} x="0" y="-9" width="14" height="10"/>', "nobody on the plate")
        )
    parts = []
    x = left
    for mark, text in items:
        parts.append(
            f'<g transform="translate({_f(x)},{_f(base)})">{mark}<text {_L["tick"]} x="18" '
            f'y="0">{_e(text)}</text></g>'
        )
        x += 26 + 6.2 * len(text)
    if absent_s > 0:
        parts.append(
            f'<text {_L["tick"]} x="{_f(x)}" y="{_f(base)}">off the plate {absent_s:.0f} s in '
            "all</text>"
        )
    return "".join(parts)


_DAY_FILL = {
    "full": "#3f9e5f",
    "partial": "#e9a62b",
    "missed": "#cf3f3f",
    "today": "#4a78c2",
    "future": "#d9dde3",
    "outside": "#e4e6ea",
}


def _minutes_chart(report: AdherenceReport) -> str:
    days = [d for d in report.days if d.status != "future"]
    width, height = 1040, 250
    left, right, top, bottom = 52, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    prescribed = report.minutes_per_session * report.sessions_per_day
    y_top = max([prescribed, *(d.minutes_prescribed for d in days)]) * 1.5
    steps = _prescribed_steps(days)
    label = (
        f"Minutes at dose per day, {report.period_start.isoformat()} to "
        f"{report.period_end.isoformat()}, against "
        + (
            f"{prescribed:g} minutes prescribed"
            if len(steps) <= 1
            else "the minutes prescribed by the protocol in force each day"
        )
    )
    parts = [_svg_open(width, height, label, "chart", False)]
    if not days:
        parts.append(f'<text {_L["tick"]} x="{left}" y="{top + 20}">no days yet</text></svg>')
        return "".join(parts)

    def y(minutes: float) -> float:
        return top + plot_h * (1.0 - min(minutes, y_top) / y_top)

    step = _nice_step(y_top, 5)
    tick = 0.0
    while tick <= y_top + 1e-9:
        parts.append(
            f'<line {_L["grid"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(tick))}" '
            f'y2="{_f(y(tick))}"/><text {_L["tick"]} x="{left - 6}" y="{_f(y(tick) + 4)}" '
            f'text-anchor="end">{tick:g}</text>'
        )
        tick = round(tick + step, 9)
    slot_w = plot_w / len(days)
    gap = slot_w * 0.18 if slot_w >= 4 else 0.0
    for k, d in enumerate(days):
        x0 = left + k * slot_w + gap / 2
        bar_w = max(slot_w - gap, 0.5)
        extra = max(d.minutes_logged - d.minutes_at_dose, 0.0)
        title = (
            f"{_long_date(d.day)}: {_min(d.minutes_at_dose)} of {_min(d.minutes_prescribed)} "
            f"min at dose ({d.status})"
            + (f"; {_min(extra)} min more logged, not counted" if extra > 0.005 else "")
        )
        parts.append(f"<g><title>{_e(title)}</title>")
        if d.minutes_at_dose > 0:
            parts.append(
                f'<rect x="{_f(x0)}" y="{_f(y(d.minutes_at_dose))}" width="{_f(bar_w)}" '
                f'height="{_f(y(0) - y(d.minutes_at_dose))}" fill="{_DAY_FILL[d.status]}"/>'
            )
        else:
            parts.append(
                f'<rect {_L["zero"]} x="{_f(x0)}" y="{_f(y(0) - 3)}" width="{_f(bar_w)}" '
                f'height="3" fill="{_DAY_FILL[d.status]}"/>'
            )
        if extra > 0.005:
            parts.append(
                f'<rect {_L["extra"]} x="{_f(x0)}" y="{_f(y(d.minutes_logged))}" '
                f'width="{_f(bar_w)}" height="{_f(y(d.minutes_at_dose) - y(d.minutes_logged))}"/>'
            )
        parts.append("</g>")
    for first_k, last_k, minutes in steps:  # one level per run of days with one prescription
        x1, x2 = left + first_k * slot_w, left + (last_k + 1) * slot_w
        parts.append(
            f'<line {_L["prescribed"]} x1="{_f(x1)}" x2="{_f(x2)}" y1="{_f(y(minutes))}" '
            f'y2="{_f(y(minutes))}"/>'
        )
    if steps:
        _, last_k, minutes = steps[-1]
        parts.append(
            f'<text {_L["note"]} x="{_f(left + (last_k + 1) * slot_w - 4)}" '
            f'y="{_f(y(minutes) - 5)}" text-anchor="end">prescribed {minutes:g} min</text>'
        )
    index = {d.day: k for k, d in enumerate(days)}
    for p in report.protocol_changes:
        at_k = index.get(p.in_force_from) if p.in_force_from is not None else None
        if at_k is None:
            continue
        x = left + at_k * slot_w
        parts.append(
            f'<g class="protocol-change"><title>{_e(_since_text(p))}: {_e(_change_text(p))}'
            f'</title><line {_L["change"]} x1="{_f(x)}" x2="{_f(x)}" y1="{top}" '
            f'y2="{top + plot_h}"/><text {_L["change-text"]} x="{_f(x + 3)}" y="{top + 11}">'
            f"protocol {_e(p.short_sha[:7])}</text></g>"
        )
    parts.extend(_date_axis(days[0].day, len(days), left, slot_w, top + plot_h))
    parts.append(
        f'<text {_L["axis"]} x="14" y="{_f(top + plot_h / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_f(top + plot_h / 2)})">minutes</text>'
    )
    parts.append(
        f'<rect {_L["frame"]} x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/></svg>'
    )
    return "".join(parts)


def _prescribed_steps(days: Sequence[DayAdherence]) -> list[tuple[int, int, float]]:
    """Runs of consecutive days with the same minutes prescribed: (first, last, minutes)."""
    steps: list[tuple[int, int, float]] = []
    for k, d in enumerate(days):
        if d.slots_prescribed == 0:  # no study in force that day: nothing prescribed
            continue
        if steps and steps[-1][1] == k - 1 and steps[-1][2] == d.minutes_prescribed:
            steps[-1] = (steps[-1][0], k, d.minutes_prescribed)
        else:
            steps.append((k, k, d.minutes_prescribed))
    return steps


def _date_axis(first: date, count: int, left: float, slot_w: float, base: float) -> list[str]:
    """Labels under a chart of ``count`` days from ``first``: Mondays, or months if long."""
    parts = []
    for k in range(count):
        day = first + timedelta(days=k)
        if count <= 70:
            show, text = day.weekday() == 0 or k == 0, f"{day.day} {day:%b}"
        else:
            show, text = (
                day.day == 1 or k == 0,
                f"{day:%b %Y}" if day.month == 1 or k == 0 else f"{day:%b}",
            )
        if not show:
            continue
        x = left + k * slot_w
        parts.append(
            f'<line {_L["tickmark"]} x1="{_f(x)}" x2="{_f(x)}" y1="{_f(base)}" '
            f'y2="{_f(base + 5)}"/><text {_L["tick"]} x="{_f(x)}" y="{_f(base + 18)}">'
            f"{_e(text)}</text>"
        )
    return parts


def _accuracy_chart(report: AdherenceReport, sessions: Sequence[ReportSummary]) -> str:
    days = [d for d in report.days if d.status != "future"]
    width, height = 1040, 230
    left, right, top, bottom = 52, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    limit = AMPLITUDE_P95_LIMIT_PCT
    label = (
        "Amplitude accuracy per session: 95th-percentile absolute error of the delivered peak "
        f"acceleration, percent of target; flag limit {limit:g}%"
    )
    parts = [_svg_open(width, height, label, "chart", False)]
    if not days:
        parts.append(f'<text {_L["tick"]} x="{left}" y="{top + 20}">no days yet</text></svg>')
        return "".join(parts)
    first = days[0].day
    measured = [s.p95_abs_error_pct for s in sessions if s.p95_abs_error_pct is not None]
    y_top = max(2.0 * limit, min(max(measured, default=0.0) * 1.15, 5.0 * limit))

    def y(pct: float) -> float:
        return top + plot_h * (1.0 - min(pct, y_top) / y_top)

    step = _nice_step(y_top, 4)
    tick = 0.0
    while tick <= y_top + 1e-9:
        parts.append(
            f'<line {_L["grid"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(tick))}" '
            f'y2="{_f(y(tick))}"/><text {_L["tick"]} x="{left - 6}" y="{_f(y(tick) + 4)}" '
            f'text-anchor="end">{tick:g}%</text>'
        )
        tick = round(tick + step, 9)
    slot_w = plot_w / len(days)
    per_day: dict[date, list[ReportSummary]] = defaultdict(list)
    for s in sessions:
        per_day[s.local_date].append(s)
    radius = max(1.6, min(4.0, slot_w / 4))
    for day, members in per_day.items():
        k = (day - first).days
        for j, s in enumerate(members):
            x = left + slot_w * (k + (j + 1) / (len(members) + 1))
            p95 = s.p95_abs_error_pct
            mean = s.mean_error_pct
            text = (
                f"{day.isoformat()} {_start_text(s)} slot {s.slot} ({s.session_id}): "
                # a summary that predates the field (or a test's stand-in) has no uncertainty
                + accuracy_text(p95, getattr(s, "error_uncertainty_pct", None))
                + (f", mean error {mean:+.2f}%" if mean is not None else "")
            )
            if p95 is None:
                parts.append(
                    f'<g><title>{_e(text)}</title><line {_L["nodata"]} x1="{_f(x)}" '
                    f'x2="{_f(x)}" y1="{_f(y(0))}" y2="{_f(y(0) - 8)}"/></g>'
                )
                continue
            over = p95 > limit
            shape = "over" if over else "ok"
            if over and p95 > y_top:
                parts.append(
                    f'<g><title>{_e(text)}</title><path {_L["over"]} d="M{_f(x - 5)},'
                    f"{_f(top + 9)} L{_f(x)},{_f(top + 1)} L{_f(x + 5)},{_f(top + 9)} "
                    f'Z"/></g>'
                )
            else:
                parts.append(
                    f'<g><title>{_e(text)}</title><circle {_L[shape]} cx="{_f(x)}" '
                    f'cy="{_f(y(p95))}" r="{_f(radius + (1 if over else 0))}"/></g>'
                )
    parts.append(
        f'<line {_L["limit"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(limit))}" '
        f'y2="{_f(y(limit))}"/><text {_L["limit-text"]} x="{left + plot_w - 4}" '
        f'y="{_f(y(limit) - 5)}" text-anchor="end">flag limit {limit:g}%</text>'
    )
    parts.extend(_date_axis(first, len(days), left, slot_w, top + plot_h))
    parts.append(
        f'<text {_L["axis"]} x="14" y="{_f(top + plot_h / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_f(top + plot_h / 2)})">p95 |error|</text>'
    )
    parts.append(
        f'<rect {_L["frame"]} x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/></svg>'
    )
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --line: #d5d9e0; --full: #3f9e5f;
  --partial: #e9a62b; --missed: #cf3f3f; --today: #4a78c2; --future: #eef0f3; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: var(--ink);
  font: 14px/1.45 "Segoe UI", "Helvetica Neue", Arial, "Liberation Sans", "DejaVu Sans",
  sans-serif; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 40px; background: #fff; }
header { border-bottom: 3px solid var(--ink); padding-bottom: 12px; margin-bottom: 18px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h1 .pid { font-family: "DejaVu Sans Mono", Consolas, monospace; background: #eef1f6;
  padding: 1px 8px; border-radius: 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
.sub { color: var(--muted); margin: 0; }
.integrity.ok { color: var(--muted); font-size: 12.5px; margin: 0 0 6px; }
.integrity.failed { background: #cf3f3f; color: #fff; font-size: 16px; padding: 12px 16px;
  border-radius: 6px; margin: 0 0 14px; }
h2.changed { color: #6b3fa0; }
.changed-note { color: #6b3fa0; font-weight: 600; margin: 6px 0 0; }
.cal td.wk .mo { display: block; font-size: 11px; }
.facts { display: grid; grid-template-columns: repeat(3, 1fr); gap: 2px 24px; margin: 0;
  font-size: 13px; }
.facts div { display: flex; gap: 8px; padding: 3px 0; border-bottom: 1px dotted var(--line); }
.facts dt { color: var(--muted); min-width: 118px; }
.facts dd { margin: 0; font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px;
  border-top: 5px solid var(--ink); }
.card .big { font-size: 30px; font-weight: 700; line-height: 1.15; }
.card .what { font-weight: 600; }
.card .detail { color: var(--muted); font-size: 12.5px; }
.card.good { border-top-color: var(--full); }
.card.fair { border-top-color: var(--partial); }
.card.poor { border-top-color: var(--missed); }
.demo-banner { background: #fff3cd; border: 2px solid #c99a00; padding: 8px 12px; }
.note-line { color: var(--muted); font-size: 12.5px; margin: 6px 0 0; }
table { border-collapse: collapse; }
.cal { width: 100%; table-layout: fixed; font-size: 12px; }
.cal th { color: var(--muted); font-weight: 600; padding: 2px 3px; text-align: center; }
.cal th.wk, .cal td.wk { width: 92px; text-align: left; white-space: nowrap; }
.cal th.fig, .cal td.fig { width: 76px; text-align: right; white-space: nowrap; }
.cal td { padding: 2px; height: 36px; }
.cal td.wk { color: var(--muted); padding-left: 2px; }
.cal td.wk b { color: var(--ink); }
.cal td.fig { font-variant-numeric: tabular-nums; padding-right: 6px; }
.day { border-radius: 4px; height: 32px; padding: 2px 5px; position: relative;
  border: 1px solid transparent; }
.day .n { font-size: 11px; font-weight: 600; }
.day .c { position: absolute; right: 5px; bottom: 2px; font-size: 11.5px; font-weight: 700; }
.day.full { background: var(--full); color: #fff; }
.day.partial { background: repeating-linear-gradient(135deg, #f2c462 0 6px, #e9a62b 6px 12px);
  color: #2b1d00; }
.day.missed { background: var(--missed); color: #fff; }
.day.missed .c::before { content: "\\2715\\00a0"; }
.day.today { background: #fff; border: 2px solid var(--today); color: var(--today); }
.day.future { background: var(--future); border: 1px dashed #c3c8d0; color: #8a919c; }
.day.other { background: #e4e6ea; color: #7a818c; }
.day.outside { background: transparent; color: #c0c4ca; border: 1px dotted #e1e3e7; }
.day .pc { position: absolute; right: 3px; top: 2px; font-size: 9.5px; font-weight: 700;
  line-height: 13px; padding: 0 3px; border-radius: 3px; background: #6b3fa0; color: #fff; }
.legend .day .pc { top: 2px; right: 8px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 10px 0 0; padding: 0;
  list-style: none; font-size: 12.5px; }
.legend li { display: flex; align-items: center; gap: 6px; }
.legend .day { width: 30px; height: 18px; padding: 0; display: inline-block; }
svg { display: block; max-width: 100%; height: auto; font-family: inherit; }
.chart-legend { display: flex; gap: 18px; font-size: 12.5px; color: var(--muted);
  margin: 4px 0 0 52px; flex-wrap: wrap; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  vertical-align: -1px; margin-right: 5px; }
.data { width: 100%; font-size: 12.5px; }
.data th { text-align: left; color: var(--muted); font-weight: 600;
  border-bottom: 2px solid var(--line); padding: 5px 8px; }
.data td { border-bottom: 1px solid var(--line); padding: 5px 8px; vertical-align: top; }
.data td.id { font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 11.5px;
  word-break: break-all; max-width: 220px; }
.data td.sha { font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 11.5px;
  white-space: nowrap; }
.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
.data ul { margin: 0; padding: 0; list-style: none; }
.data li + li { margin-top: 2px; }
.tag { display: inline-block; min-width: 118px; font-size: 11px; font-weight: 700;
  padding: 0 6px; border-radius: 3px; margin-right: 6px; background: #e8ebf0; color: #333b47;
  text-transform: uppercase; letter-spacing: 0.02em; }
.tag.serious { background: #f6d5d5; color: #7a1010; }
.tag.dose { background: #fbe6bd; color: #5a3b00; }
.traces { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.traces figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
.traces figcaption { font-size: 11.5px; color: var(--muted); word-break: break-all; }
.rules { color: var(--muted); font-size: 12.5px; }
.rules li { margin: 2px 0; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0);
  white-space: nowrap; }
footer { margin-top: 28px; padding-top: 8px; border-top: 1px solid var(--line);
  color: var(--muted); font-size: 12px; }
@media (max-width: 700px) {
  main { padding: 12px 10px 24px; }
  .facts { grid-template-columns: 1fr; }
  .cards { grid-template-columns: 1fr 1fr; }
  .traces { grid-template-columns: 1fr; }
  .cal th.fig, .cal td.fig { display: none; }
  .cal th.wk, .cal td.wk { width: 58px; font-size: 10px; }
  .day { padding: 1px 2px; }
  .day .c { right: 2px; font-size: 10px; }
  .data { display: block; overflow-x: auto; }
  .chart-legend { margin-left: 0; }
}
@media print { body { background: #fff; } main { padding: 0; max-width: none; }
  h2 { break-after: avoid; } .cal tr, .data tr, figure { break-inside: avoid; } }
"""

_STATUS_TEXT = {
    "full": "all sessions at dose",
    "partial": "partly done",
    "missed": "missed: no minutes at dose",
    "today": "today: in progress, not counted yet",
    "future": "future",
    "other": "in the study, outside this report's period",
    "outside": "outside the study",
}
_SERIOUS = frozenset({"tripped", "fault", "interrupted", "running", "amplitude_error"})
_DOSE = frozenset({"under_dose", "stopped_by_patient"})


def _card(what: str, big: str, detail: str, ratio: float | None) -> str:
    grade = "" if ratio is None else "good" if ratio >= 0.9 else "fair" if ratio >= 0.7 else "poor"
    return (
        f'<div class="card {grade}"><div class="what">{_e(what)}</div>'
        f'<div class="big">{_e(big)}</div><div class="detail">{_e(detail)}</div></div>'
    )


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


def _integrity_banner(ctx: ReportContext) -> str:
    """The log's verification status; a failed one as a red block above everything else."""
    if ctx.integrity_failed:
        return (
            '<div class="integrity failed" role="alert"><strong>LOG INTEGRITY FAILED</strong> '
            f"{_e(ctx.integrity_text().removeprefix('LOG INTEGRITY FAILED: '))}</div>"
        )
    return f'<p class="integrity ok">{_e(ctx.integrity_text())}</p>'


def _weekly_chart(report: AdherenceReport, ctx: ReportContext) -> str:
    """Session adherence of each ISO week that has a counted day, against the target line."""
    weeks = [w for w in report.weeks if w.days_counted and w.session_adherence is not None]
    width, height = 1040, 190
    left, right, top, bottom = 52, 16, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    label = (
        f"Weekly session adherence, {len(weeks)} week(s), against a target of {100 * ctx.target:g}%"
    )
    parts = [_svg_open(width, height, label, "chart weekly", False)]
    if not weeks:
        parts.append(
            f'<text {_L["tick"]} x="{left}" y="{top + 20}">no week counted yet</text></svg>'
        )
        return "".join(parts)

    def y(ratio: float) -> float:
        return top + plot_h * (1.0 - min(max(ratio, 0.0), 1.0))

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line {_L["grid"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(tick))}" '
            f'y2="{_f(y(tick))}"/><text {_L["tick"]} x="{left - 6}" y="{_f(y(tick) + 4)}" '
            f'text-anchor="end">{100 * tick:g}%</text>'
        )
    slot_w = plot_w / max(len(weeks), 4)
    every = max(1, math.ceil(len(weeks) / 12))  # at most about 12 week labels
    for k, w in enumerate(weeks):
        ratio = w.session_adherence or 0.0
        below = ratio < ctx.target - 1e-9
        x0 = left + k * slot_w + slot_w * 0.15
        title = (
            f"{w.label}: {_pct(ratio)} of sessions ({w.slots_completed} of "
            f"{w.slots_prescribed}), {_pct(w.dose_adherence)} of minutes"
            + (" - below the target" if below else "")
        )
        parts.append(
            f'<g><title>{_e(title)}</title><rect x="{_f(x0)}" y="{_f(y(ratio))}" '
            f'width="{_f(slot_w * 0.7)}" height="{_f(max(y(0) - y(ratio), 1.0))}" '
            f'fill="{_DAY_FILL["partial" if below else "full"]}"/></g>'
        )
        if k % every == 0:
            parts.append(
                f'<text {_L["tick"]} x="{_f(x0 + slot_w * 0.35)}" y="{top + plot_h + 16}" '
                f'text-anchor="middle">{_e(w.label)}</text>'
            )
    parts.append(
        f'<line {_L["prescribed"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(ctx.target))}" '
        f'y2="{_f(y(ctx.target))}"/><text {_L["note"]} x="{left + plot_w - 4}" '
        f'y="{_f(y(ctx.target) - 5)}" text-anchor="end">target {100 * ctx.target:g}%</text>'
    )
    parts.append(
        f'<rect {_L["frame"]} x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/></svg>'
    )
    return "".join(parts)


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


def _protocol_table(report: AdherenceReport) -> str:
    """Every protocol of the patient's history, when it was in force and what changed."""
    rows = [
        '<table class="data protocols"><thead><tr><th scope="col">In force from</th>'
        '<th scope="col">Until</th><th scope="col">Protocol</th>'
        '<th scope="col">Prescription</th><th scope="col">Sessions</th>'
        '<th scope="col">What changed</th></tr></thead><tbody>'
    ]
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
    rows.append("</tbody></table>")
    return "".join(rows)


def _tag_class(kind: str) -> str:
    if kind in _SERIOUS:
        return " serious"
    return " dose" if kind in _DOSE else ""


def _flag_table(report: AdherenceReport) -> str:
    groups = _flags_by_session(report.flagged)
    if not groups:
        return '<p class="note-line">No session was flagged in this period.</p>'
    rows = [
        '<table class="data"><thead><tr><th scope="col">Date</th><th scope="col">Start</th>'
        '<th scope="col">Slot</th><th scope="col">Session</th><th scope="col">Device</th>'
        '<th scope="col">Why it is flagged</th></tr></thead><tbody>'
    ]
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
    rows.append("</tbody></table>")
    return "".join(rows)


def _device_table(report: AdherenceReport) -> str:
    if not report.devices:
        return '<p class="note-line">No session in this period.</p>'
    rows = [
        '<table class="data"><thead><tr><th scope="col">Device</th><th scope="col">Firmware</th>'
        '<th scope="col">Sessions</th><th scope="col">First day</th><th scope="col">Last day</th>'
        '<th scope="col">Minutes at dose logged</th></tr></thead><tbody>'
    ]
    for use in report.devices:
        rows.append(
            f'<tr><td class="id">{_e(use.device_id)}</td>'
            f"<td>{_e(', '.join(use.firmware_versions))}</td>"
            f'<td class="num">{use.sessions}</td><td>{_e(use.first_day.isoformat())}</td>'
            f'<td>{_e(use.last_day.isoformat())}</td><td class="num">'
            f"{_min(use.minutes_at_dose)}</td></tr>"
        )
    rows.append("</tbody></table>")
    return "".join(rows)


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
