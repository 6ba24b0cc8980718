"""The report as plain text for a terminal, no line longer than LINE_WIDTH."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

from sessions.adherence import (
    AdherenceReport,
    WeekAdherence,
)
from sessions.report.context import ReportContext
from sessions.report.words import (
    _WEEKDAYS,
    _changes_on,
    _flags_by_session,
    _min,
    _pct,
    _since_text,
    _until_text,
    empty_period_text,
)
from sessions.text import terminal_line

LINE_WIDTH = 100  # the text report's lines never run longer


def _printable(text: str) -> str:
    """Text for a terminal: control characters from a log are shown, never sent."""
    return terminal_line(text)


def _columns(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def _wrapped(text: str, indent: str = "", first: str | None = None) -> list[str]:
    """``text`` in lines of at most LINE_WIDTH characters (a long word is broken)."""
    return textwrap.wrap(
        text,
        width=LINE_WIDTH,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_on_hyphens=False,
    ) or [indent.rstrip()]


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
