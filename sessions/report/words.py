"""Wording every form of the report shares: percentages, minutes, dates, protocol periods."""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable
from datetime import date

from sessions.adherence import (
    AdherenceReport,
    Flag,
    ProtocolPeriod,
)

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def _min(value: float) -> str:
    return f"{value:.1f}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _long_date(day: date) -> str:
    return f"{_WEEKDAYS[day.weekday()]} {day.day} {day:%b %Y}"


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
