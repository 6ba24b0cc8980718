"""Which session is due: slots per local day, the minimum gap, daily windows, the study period.

Pure logic over the protocol, the sessions already logged and the time now, so every rule
(midnight, daylight-saving changes, resuming a cut-short session) is tested without a plate.

Rules (docs/sessions.md):
- days are the patient's local days (the protocol's IANA time zone); the study runs from
  ``study_start`` to ``study_end`` inclusive;
- a day has ``sessions_per_day`` slots, taken in order; a slot is done when the minutes at dose
  of its sessions add up to the prescription;
- a slot that was cut short (stopped, tripped, interrupted) is resumed by the next start on
  the same local day, for the minutes still missing, without a new gap, whatever it delivered
  (a session that ended before any minute at dose included);
- a new slot needs ``min_gap_hours`` since the previous session ended (absolute time, so a
  clock change neither shortens nor lengthens it) and, when daily windows are prescribed, must
  start inside one; extra sessions never count towards another day;
- an explicit override lifts the gap, window, study-period and daily-count rules, and is
  recorded with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

AT_DOSE_EPSILON_MIN = 1e-6
TERMINAL = ("completed", "stopped_by_patient", "tripped", "interrupted")


class LoggedSession(Protocol):
    """The fields of a logged session that scheduling reads."""

    @property
    def session_id(self) -> str: ...
    @property
    def local_date(self) -> date: ...
    @property
    def slot(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def minutes_at_dose(self) -> float: ...
    @property
    def started_utc(self) -> datetime: ...
    @property
    def ended_utc(self) -> datetime | None: ...


class Prescription(Protocol):
    """The fields of a patient protocol that scheduling reads."""

    @property
    def minutes_per_session(self) -> float: ...
    @property
    def sessions_per_day(self) -> int: ...
    @property
    def min_gap_hours(self) -> float: ...
    @property
    def study_start(self) -> date: ...
    @property
    def study_end(self) -> date: ...
    @property
    def timezone(self) -> str: ...
    @property
    def daily_windows(self) -> tuple[_Window, ...]: ...


class _Window(Protocol):
    @property
    def start(self) -> time: ...
    @property
    def end(self) -> time: ...


@dataclass(frozen=True)
class Decision:
    """Whether a session may start now, and which."""

    allowed: bool
    message: str  # one sentence for the patient
    local_date: date
    slot: int = 0
    minutes: float = 0.0  # minutes at dose to deliver
    resumed_from: str | None = None
    override_reason: str | None = None
    next_allowed_utc: datetime | None = None


def history_start(protocol: Prescription, now_utc: datetime) -> date:
    """The first local date whose sessions can change :func:`decide` at ``now_utc``.

    ``decide`` reads today's slots and the last session's end (for the gap). A session of an
    earlier local date ended within a day of its start (in any time zone), so one older than
    the gap plus two days can no longer hold the next start back: reading from here gives
    the same decision as reading the whole log, in time that does not grow with the log.
    """
    today = now_utc.astimezone(ZoneInfo(protocol.timezone)).date()
    return today - timedelta(days=math.ceil(protocol.min_gap_hours / 24.0) + 2)


def slot_minutes(sessions: Sequence[LoggedSession], day: date, slot: int) -> float:
    return sum(s.minutes_at_dose for s in sessions if s.local_date == day and s.slot == slot)


def day_summary(
    protocol: Prescription, sessions: Sequence[LoggedSession], day: date
) -> list[float]:
    """Minutes at dose delivered in each slot of ``day`` (index 0 is slot 1)."""
    return [slot_minutes(sessions, day, k) for k in range(1, protocol.sessions_per_day + 1)]


def decide(
    protocol: Prescription,
    sessions: Sequence[LoggedSession],
    now_utc: datetime,
    override_reason: str | None = None,
) -> Decision:
    """The session due at ``now_utc`` (or why none is)."""
    zone = ZoneInfo(protocol.timezone)
    local_now = now_utc.astimezone(zone)
    today = local_now.date()
    prescribed = protocol.minutes_per_session
    done = day_summary(protocol, sessions, today)
    open_slots = [k for k, m in enumerate(done, start=1) if m < prescribed - AT_DOSE_EPSILON_MIN]
    finished = [s for s in sessions if s.status in TERMINAL and s.ended_utc is not None]
    last = max(finished, key=lambda s: s.ended_utc or s.started_utc, default=None)

    if override_reason is not None:
        slot = open_slots[0] if open_slots else protocol.sessions_per_day + 1
        return _start(protocol, sessions, today, slot, override_reason, "override")

    if today < protocol.study_start:
        return Decision(
            False,
            f"The study starts on {protocol.study_start.isoformat()}; no session is due yet.",
            today,
            next_allowed_utc=_local_start_of(protocol.study_start, zone),
        )
    if today > protocol.study_end:
        return Decision(
            False, f"The study ended on {protocol.study_end.isoformat()}; no session is due.", today
        )
    if not open_slots:
        tomorrow = today + timedelta(days=1)
        when = (
            f"tomorrow ({tomorrow.isoformat()})"
            if tomorrow <= protocol.study_end
            else "no more: the study ends today"
        )
        return Decision(
            False,
            f"Today's {protocol.sessions_per_day} sessions are done; the next one is due {when}.",
            today,
            next_allowed_utc=_local_start_of(tomorrow, zone)
            if tomorrow <= protocol.study_end
            else None,
        )
    slot = open_slots[0]
    # Any session already logged for an open slot today was cut short (stopped, tripped,
    # interrupted), whatever it delivered, 0 minutes included: the next start resumes it.
    resuming = bool(_slot_sessions(sessions, today, slot))
    if not resuming and last is not None and last.ended_utc is not None:
        allowed_at = last.ended_utc + timedelta(hours=protocol.min_gap_hours)
        if now_utc < allowed_at:
            local = allowed_at.astimezone(zone)
            return Decision(
                False,
                f"Please wait: the next session is allowed from {_clock(local, local_now)} "
                f"({protocol.min_gap_hours:g} h after the last one ended).",
                today,
                slot=slot,
                next_allowed_utc=allowed_at,
            )
    if not resuming and protocol.daily_windows:
        window_open = _window_containing(protocol, local_now)
        if not window_open:
            nxt = _next_window_start(protocol, local_now, zone)
            text = (
                f"Sessions can start only within the prescribed times; the next window opens "
                f"at {_clock(nxt, local_now)}."
                if nxt is not None
                else "Sessions can start only within the prescribed times; none is left today."
            )
            return Decision(False, text, today, slot=slot, next_allowed_utc=nxt)
    return _start(protocol, sessions, today, slot, None, "resume" if resuming else "new")


def _start(
    protocol: Prescription,
    sessions: Sequence[LoggedSession],
    today: date,
    slot: int,
    override_reason: str | None,
    kind: str,
) -> Decision:
    delivered = slot_minutes(sessions, today, slot)
    minutes = max(protocol.minutes_per_session - delivered, 0.0) or protocol.minutes_per_session
    previous = _slot_sessions(sessions, today, slot)
    resumed_from = previous[-1].session_id if previous else None
    if kind == "override":
        message = f"Starting session {slot} of today by override ({override_reason})."
    elif resumed_from is not None:
        message = f"Resuming session {slot} of today: {minutes:.1f} minutes to go."
    else:
        message = f"Starting session {slot} of {protocol.sessions_per_day} today."
    return Decision(True, message, today, slot, minutes, resumed_from, override_reason)


def _slot_sessions(sessions: Sequence[LoggedSession], day: date, slot: int) -> list[LoggedSession]:
    """The sessions of one slot of one local day, oldest first."""
    mine = [s for s in sessions if s.local_date == day and s.slot == slot]
    return sorted(mine, key=lambda s: (s.started_utc, s.session_id))


def _local_start_of(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=zone)


def _clock(when: datetime, now: datetime) -> str:
    text = when.strftime("%H:%M")
    return text if when.date() == now.date() else f"{when.date().isoformat()} {text}"


def _window_containing(protocol: Prescription, local_now: datetime) -> bool:
    t = local_now.time()
    return any(w.start <= t < w.end for w in protocol.daily_windows)


def _next_window_start(
    protocol: Prescription, local_now: datetime, zone: ZoneInfo
) -> datetime | None:
    t = local_now.time()
    later = sorted(w.start for w in protocol.daily_windows if w.start > t)
    if not later:
        return None
    return datetime.combine(local_now.date(), later[0], tzinfo=zone)
