"""``liv status``: today's sessions, the next one and the streak, read from summaries."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sessions.adherence import counted_kinds, session_kind
from sessions.commands.common import home_of, open_log, print_json
from sessions.log import (
    SessionLog,
    SessionSummary,
)
from sessions.log.clockorder import SetBack, set_back_ids
from sessions.protocol import (
    PatientProtocol,
)
from sessions.scheduling import LoggedSession, day_summary, decide, history_start
from sessions.text import echo
from sessions.wording import (
    day_text,
    minutes_text,
    say,
    streak_sentence,
)


def status_lines(
    protocol: PatientProtocol,
    sessions: Sequence[LoggedSession],
    now: datetime,
    minutes: Mapping[tuple[date, int], float] | None = None,
    *,
    demo: bool = False,
    running: bool = False,
    heading: bool = True,
) -> list[str]:
    """Today, the next session and the streak (``running``: a session is running now, in a
    living process, which is said instead of the next one; ``heading``: a demo home's lines
    open with the sentence saying so, which a caller that has just said it leaves out).

    ``sessions`` needs to hold only the sessions since :func:`history_start` (all ``decide``
    reads); ``minutes`` the minutes at dose per (day, slot) the streak counts back through
    (``SessionStore.slot_minutes`` of the kinds that count; by default summed from
    ``sessions``). Only therapy counts (and, in a demo home, ``demo``, simulated sessions):
    today's other sessions are named on a line of their own.
    """
    counted = counted_kinds(demo)
    recent = [s for s in sessions if session_kind(s) in counted]
    if minutes is None:
        minutes = _minutes_by_slot(recent)
    zone = protocol.zone
    today = now.astimezone(zone).date()
    done = day_summary(protocol, recent, today)
    goal = protocol.minutes_per_session
    lines = [say("status.demo")] if demo and heading else []
    lines.append(
        say("status.today", day=f"{today:%A} {today.day} {today:%B %Y}", zone=protocol.timezone)
    )
    # Outside the study no slot is due; the next line says when it starts or that it ended.
    in_study = protocol.study_start <= today <= protocol.study_end
    for k, delivered in enumerate(done if in_study else [], start=1):
        if delivered >= goal - 1e-6:
            lines.append("  " + say("status.slot_done", slot=k))
        elif delivered > 0:
            counted_text, of = minutes_text(delivered), minutes_text(goal)
            lines.append("  " + say("status.slot_part", slot=k, counted=counted_text, goal=of))
        else:
            lines.append("  " + say("status.slot_due", slot=k))
    if any(s.local_date == today and session_kind(s) not in counted for s in sessions):
        lines.append("  " + say("status.not_counted"))
    decision = decide(protocol, recent, now)
    if running:
        lines.append(say("status.running"))
    elif decision.allowed:
        lines.append(say("status.next_now", slot=decision.slot))
    else:
        lines.append(say("status.next", message=decision.message))
    if in_study:  # before or after the study, "today can be the first" is not true
        lines.append(streak_sentence(streak(protocol, minutes, today)))
    return lines


def streak(
    protocol: PatientProtocol, minutes: Mapping[tuple[date, int], float], today: date
) -> int:
    """Consecutive complete days ending today (or yesterday, if today is still open).

    ``minutes`` maps (local day, slot) to the minutes at dose logged in it
    (``SessionStore.slot_minutes``): one lookup per day, however long the log.
    """
    goal = protocol.minutes_per_session
    slots = range(1, protocol.sessions_per_day + 1)

    def complete(day: date) -> bool:
        return all(minutes.get((day, k), 0.0) >= goal - 1e-6 for k in slots)

    day = today if complete(today) else today - timedelta(days=1)
    count = 0
    while day >= protocol.study_start and complete(day):
        count += 1
        day -= timedelta(days=1)
    return count


def _minutes_by_slot(sessions: Sequence[LoggedSession]) -> dict[tuple[date, int], float]:
    totals: dict[tuple[date, int], float] = {}
    for s in sessions:
        key = (s.local_date, s.slot)
        totals[key] = totals.get(key, 0.0) + s.minutes_at_dose
    return totals


# How long ``liv status`` names a session recorded with the clock set back: the two weeks a
# patient looks back on, long enough to be seen by one who runs status a few times a week. A
# false flag (a clock that ran fast put right, docs/trust.md) cannot be cleared by the patient,
# so it must not be said for the rest of the study; the clinic sees every one, for good.
SET_BACK_WINDOW = timedelta(days=14)


def set_back_lines(
    protocol: PatientProtocol, found: Mapping[str, SetBack], now: datetime
) -> list[str]:
    """The sentence naming the days of the sessions recorded with the clock set back within
    :data:`SET_BACK_WINDOW` of ``now``. A set-back record's own date is not when it ran: it
    ran after the record it is dated before ended, so the later of the two times is used."""
    dated = [(b.started_utc.astimezone(protocol.zone).date(), b) for b in found.values()]
    since = now - SET_BACK_WINDOW
    recent = sorted({day for day, b in dated if max(b.started_utc, b.earlier_ended_utc) >= since})
    if not recent:
        return []
    named = [f"{day:%A} {day_text(day)}" for day in recent]
    days = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    many = sum(day in recent for day, _ in dated) > 1
    return [say("status.set_back_many" if many else "status.set_back_one", day=days)]


def _status_of_log(
    log: SessionLog, protocol: PatientProtocol, now: datetime, demo: bool = False
) -> tuple[list[SessionSummary], dict[tuple[date, int], float]]:
    """What ``status`` reads: recent summaries (every kind) and the per-slot minutes of the
    kinds that count, never an envelope."""
    recent = log.summaries(protocol.patient_id, since=history_start(protocol, now))
    return recent, log.slot_minutes(protocol.patient_id, kinds=counted_kinds(demo))


def _status_reads(
    log: SessionLog, protocol: PatientProtocol, now: datetime, demo: bool = False
) -> tuple[list[SessionSummary], dict[tuple[date, int], float], dict[str, SetBack]]:
    """What ``status`` reads: recent summaries (every kind) and the per-slot minutes of the
    kinds that count, never an envelope, both without the sessions recorded with the clock set
    back (credited to no day), and those.

    The summaries are read once: the recent ones alone, or, when sessions were set back (they
    may be older than the recent ones), the study's, which hold the recent ones too."""
    set_back = log.set_back(protocol.patient_id, now, quick=True)
    if not set_back:
        recent, minutes = _status_of_log(log, protocol, now, demo)
        return recent, minutes, {}
    study = log.summaries(protocol.patient_id)
    since = history_start(protocol, now)
    recent = [s for s in study if s.local_date >= since]  # as summaries(since=...) lists them
    counted = counted_kinds(demo)
    minutes = log.slot_minutes(protocol.patient_id, kinds=counted)
    for s in study:
        if s.session_id in set_back and session_kind(s) in counted:
            key = (s.local_date, s.slot)
            minutes[key] = minutes.get(key, 0.0) - s.minutes_at_dose
    return [s for s in recent if s.session_id not in set_back], minutes, set_back


def status_shape(
    protocol: PatientProtocol,
    sessions: Sequence[LoggedSession],
    now: datetime,
    minutes: Mapping[tuple[date, int], float],
    *,
    demo: bool = False,
    running: bool = False,
    set_back: Mapping[str, SetBack] | None = None,
) -> dict[str, Any]:
    """``liv status --json`` (liv.status/1): the figures ``status_lines`` says in words
    (``running``: a session runs now, so none may start and the message says so;
    ``set_back``: the sessions recorded with the clock set back, left out of the figures).

    Only the kinds that count are in the figures (therapy; in a demo home, simulated too)."""
    counted = counted_kinds(demo)
    sessions = [s for s in sessions if session_kind(s) in counted]
    today = now.astimezone(protocol.zone).date()
    in_study = protocol.study_start <= today <= protocol.study_end
    goal = protocol.minutes_per_session
    slots = []
    for k, delivered in enumerate(day_summary(protocol, sessions, today) if in_study else [], 1):
        state = "done" if delivered >= goal - 1e-6 else "partial" if delivered else "due"
        slots.append({"slot": k, "state": state, "minutes_at_dose": round(delivered, 1) + 0.0})
    decision = decide(protocol, sessions, now)
    at = decision.next_allowed_utc
    return {
        "schema": "liv.status/1",
        "today": today.isoformat(),
        "timezone": protocol.timezone,
        "in_study": in_study,
        "slots": slots,
        "next_allowed": decision.allowed and not running,
        "next_message": say("status.running") if running else decision.message,
        "next_allowed_local": None
        if at is None
        else at.astimezone(protocol.zone).isoformat(timespec="minutes"),
        "streak_days": streak(protocol, minutes, today),
        "demo": demo,
        "clock_set_back_sessions": set_back_ids(set_back or {}),
    }


def cmd_status(args: argparse.Namespace) -> int:
    home = home_of(args)
    protocol = home.protocol()
    now = datetime.now(UTC)
    with open_log(args, home) as log:
        recent, minutes, set_back = _status_reads(log, protocol, now, home.is_demo)
        running = bool(log.live_sessions())
        behind = log.clock_behind(now, protocol.patient_id) is not None
    if getattr(args, "json", False):
        shape = status_shape(
            protocol, recent, now, minutes, demo=home.is_demo, running=running, set_back=set_back
        )
        print_json(shape)
        return 0
    lines = status_lines(protocol, recent, now, minutes, demo=home.is_demo, running=running)
    lines += set_back_lines(protocol, set_back, now)
    if behind:
        lines.append(say("status.clock_behind"))
    echo("\n".join(lines))
    # the patient reads that the prescription is the clinic's; the key's detail is for -v
    echo(say("status.prescription_ok"))
    if getattr(args, "verbose", False):
        echo(f"liv: prescription {home.protocol_signature().describe()}", file=sys.stderr)
    return 0
