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
from sessions.protocol import (
    PatientProtocol,
)
from sessions.scheduling import LoggedSession, day_summary, decide, history_start
from sessions.text import echo
from sessions.wording import (
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
) -> list[str]:
    """Today, the next session and the streak (``running``: a session is running now, in a
    living process, which is said instead of the next one).

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
    lines = [say("status.demo")] if demo else []
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


# Said under the status when sessions are dated before one already recorded (a clock set back,
# sessions/log/clockorder.py); kept here, not in sessions/wording.py, which another change owns.
# Short sentences, no numbers, as docs/wording.md asks.
SET_BACK_ONE = (
    "A session is dated earlier than one recorded before it, so this computer's clock was set "
    "back. It does not count for the day it shows. Set the computer's clock to the right time; "
    "your clinic will see this."
)
SET_BACK_MANY = (
    "Some sessions are dated earlier than ones recorded before them, so this computer's clock "
    "was set back. They do not count for the days they show. Set the computer's clock to the "
    "right time; your clinic will see this."
)


def _status_of_log(
    log: SessionLog, protocol: PatientProtocol, now: datetime, demo: bool = False
) -> tuple[list[SessionSummary], dict[tuple[date, int], float]]:
    """What ``status`` reads: recent summaries (every kind) and the per-slot minutes of the
    kinds that count, never an envelope."""
    recent = log.summaries(protocol.patient_id, since=history_start(protocol, now))
    return recent, log.slot_minutes(protocol.patient_id, kinds=counted_kinds(demo))


def _status_reads(
    log: SessionLog, protocol: PatientProtocol, now: datetime, demo: bool = False
) -> tuple[list[SessionSummary], dict[tuple[date, int], float], int]:
    """What ``status`` reads: recent summaries (every kind) and the per-slot minutes of the
    kinds that count, never an envelope, both without the sessions recorded with the clock set
    back (credited to no day), and how many those are."""
    recent, minutes = _status_of_log(log, protocol, now, demo)
    set_back = log.set_back(protocol.patient_id, now, quick=True)
    if not set_back:
        return recent, minutes, 0
    counted = counted_kinds(demo)
    for s in log.summaries(protocol.patient_id):
        if s.session_id in set_back and session_kind(s) in counted:
            key = (s.local_date, s.slot)
            minutes[key] = minutes.get(key, 0.0) - s.minutes_at_dose
    return [s for s in recent if s.session_id not in set_back], minutes, len(set_back)


def status_shape(
    protocol: PatientProtocol,
    sessions: Sequence[LoggedSession],
    now: datetime,
    minutes: Mapping[tuple[date, int], float],
    *,
    demo: bool = False,
    running: bool = False,
) -> dict[str, Any]:
    """``liv status --json`` (liv.status/1): the figures ``status_lines`` says in words
    (``running``: a session runs now, so none may start and the message says so).

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
    }


def cmd_status(args: argparse.Namespace) -> int:
    home = home_of(args)
    protocol = home.protocol()
    now = datetime.now(UTC)
    with open_log(args, home) as log:
        recent, minutes, set_back = _status_reads(log, protocol, now, home.is_demo)
        running = bool(log.live_sessions())
    if getattr(args, "json", False):
        print_json(status_shape(protocol, recent, now, minutes, demo=home.is_demo, running=running))
        return 0
    lines = status_lines(protocol, recent, now, minutes, demo=home.is_demo, running=running)
    if set_back:
        lines.append(SET_BACK_ONE if set_back == 1 else SET_BACK_MANY)
    echo("\n".join(lines))
    # the patient reads that the prescription is the clinic's; the key's detail is for -v
    echo(say("status.prescription_ok"))
    if getattr(args, "verbose", False):
        echo(f"liv: prescription {home.protocol_signature().describe()}", file=sys.stderr)
    return 0
