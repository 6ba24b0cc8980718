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
  recorded with its reason;
- the time a refusal names is one that exists and says which: the wait honours the windows
  ("tomorrow from 07:00"), a local time that occurs twice says "(before/after the clocks went
  back)", and a window whose start falls in the skipped spring hour opens at the first time
  after the jump.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
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
        first = _next_start(protocol, _local_start_of(protocol.study_start, zone))
        return Decision(
            False,
            f"The study starts on {protocol.study_start.isoformat()}"
            f"{_days_away(protocol.study_start, today)}; no session is due before then.",
            today,
            next_allowed_utc=None if first is None else first.astimezone(UTC),
        )
    if today > protocol.study_end:
        return Decision(
            False,
            f"The study ended on {protocol.study_end.isoformat()}; no more sessions are due.",
            today,
        )
    if not open_slots:
        tomorrow = today + timedelta(days=1)
        nxt = _next_start(protocol, _local_start_of(tomorrow, zone))
        when = (
            f"tomorrow ({tomorrow.isoformat()}){_from_clock(nxt, protocol)}"
            if nxt is not None
            else "no more: the study ends today"
        )
        return Decision(
            False,
            f"Today's {protocol.sessions_per_day} sessions are done; the next one is due {when}.",
            today,
            next_allowed_utc=None if nxt is None else nxt.astimezone(UTC),
        )
    slot = open_slots[0]
    # Any session already logged for an open slot today was cut short (stopped, tripped,
    # interrupted), whatever it delivered, 0 minutes included: the next start resumes it.
    resuming = bool(_slot_sessions(sessions, today, slot))
    if not resuming and last is not None and last.ended_utc is not None:
        allowed_at = last.ended_utc + timedelta(hours=protocol.min_gap_hours)
        if now_utc < allowed_at:
            # The gap is absolute time; the windows may then push the start later still.
            nxt = _next_start(protocol, allowed_at.astimezone(zone))
            gap = f"{protocol.min_gap_hours:g} h after the last one ended"
            if nxt is None:
                text = (
                    f"Please wait: no more sessions are due, because the study ends on "
                    f"{protocol.study_end.isoformat()} before {gap}."
                )
            elif nxt.astimezone(UTC) == allowed_at.astimezone(UTC):
                text = f"Please wait: the next session is allowed {_when(nxt, local_now)} ({gap})."
            else:
                text = (
                    f"Please wait: the next session is allowed {_when(nxt, local_now)} "
                    f"(at least {gap}, within the prescribed times)."
                )
            return Decision(
                False,
                text,
                today,
                slot=slot,
                next_allowed_utc=None if nxt is None else nxt.astimezone(UTC),
            )
    if not resuming and protocol.daily_windows:
        window_open = _window_containing(protocol, local_now)
        if not window_open:
            nxt = _next_start(protocol, local_now)
            text = (
                f"Sessions can start only within the prescribed times; the next window opens "
                f"{_when(nxt, local_now, at=True)}."
                if nxt is not None
                else "Sessions can start only within the prescribed times; none is left in "
                "the study."
            )
            return Decision(
                False,
                text,
                today,
                slot=slot,
                next_allowed_utc=None if nxt is None else nxt.astimezone(UTC),
            )
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
    return wall_time(day, time(0, 0), zone)


def wall_time(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """``clock`` on ``day`` in ``zone`` as a time that exists: the earlier one when it occurs
    twice (clocks going back), the first time after the jump when it does not occur at all
    (clocks going forward: a window from 01:30 on the day London skips 01:00-02:00 opens at
    02:00)."""
    naive = datetime.combine(day, clock)
    early = naive.replace(tzinfo=zone, fold=0)
    late = naive.replace(tzinfo=zone, fold=1)
    if _round_trips(early) or _round_trips(late):
        return early if _round_trips(early) else late
    # In the spring gap: the jump lies between the two readings of the offset. Find the
    # first instant after it (transitions fall on whole seconds).
    low = late.astimezone(UTC)  # read with the offset after the jump: before it
    high = early.astimezone(UTC)  # read with the offset before the jump: after it
    before = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        mid = low + (high - low) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(zone).utcoffset() == before:
            low = mid
        else:
            high = mid
    return high.astimezone(zone)


def _round_trips(when: datetime) -> bool:
    back = when.astimezone(UTC).astimezone(when.tzinfo)
    return back.replace(tzinfo=None) == when.replace(tzinfo=None)


def ambiguous(when: datetime) -> bool:
    """Whether the local time of ``when`` occurs twice that day (clocks going back)."""
    other = when.replace(fold=1 - when.fold)
    return other.utcoffset() != when.utcoffset() and _round_trips(other)


def clock_text(when: datetime) -> str:
    """HH:MM, saying which one when the clocks went back and that time occurs twice."""
    text = when.strftime("%H:%M")
    if not ambiguous(when):
        return text
    return f"{text} ({'after' if when.fold else 'before'} the clocks went back)"


def _days_away(day: date, today: date) -> str:
    days = (day - today).days
    return " (tomorrow)" if days == 1 else f" (in {days} days)"


def _when(when: datetime, now: datetime, at: bool = False) -> str:
    """'from 11:11', 'tomorrow from 07:00', 'from 2026-05-07 07:00' ('at' for a window)."""
    word = "at" if at else "from"
    if when.date() == now.date():
        return f"{word} {clock_text(when)}"
    if when.date() == now.date() + timedelta(days=1):
        return f"tomorrow {word} {clock_text(when)}"
    return f"on {when.date().isoformat()} {word} {clock_text(when)}"


def _from_clock(when: datetime | None, protocol: Prescription) -> str:
    if when is None or not protocol.daily_windows:
        return ""
    return f" from {clock_text(when)}"


def _window_containing(protocol: Prescription, local_now: datetime) -> bool:
    t = local_now.time()
    return any(w.start <= t < w.end for w in protocol.daily_windows)


def _next_start(protocol: Prescription, after: datetime) -> datetime | None:
    """The first time at or after ``after`` (local) when a new session may start by the
    windows and the study period; None when the study ends first."""
    zone = after.tzinfo
    assert isinstance(zone, ZoneInfo)
    first_day = max(after.date(), protocol.study_start)
    if first_day > after.date():
        after = _local_start_of(first_day, zone)
    if after.date() > protocol.study_end:
        return None
    if not protocol.daily_windows:
        return after
    if _window_containing(protocol, after):
        return after
    day = after.date()
    while day <= min(protocol.study_end, after.date() + timedelta(days=2)):
        for w in sorted(protocol.daily_windows, key=lambda w: w.start):
            opens = wall_time(day, w.start, zone)
            if opens.astimezone(UTC) >= after.astimezone(UTC):
                return opens
        day += timedelta(days=1)
    return None
