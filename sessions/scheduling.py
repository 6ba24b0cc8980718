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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from sessions.wording import day_text, hours_text, say, start_sentence

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
    message: str  # one sentence for the patient (sessions/wording.py)
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
        first = _next_start(protocol, _local_start_of(protocol.study_start, zone))
        return Decision(
            False,
            say(
                "wait.before_study",
                day=day_text(protocol.study_start),
                away=_days_away(protocol.study_start, today),
            ),
            today,
            next_allowed_utc=None if first is None else first.astimezone(UTC),
        )
    if today > protocol.study_end:
        return Decision(
            False,
            say("wait.after_study", day=day_text(protocol.study_end)),
            today,
        )
    if not open_slots:
        tomorrow = today + timedelta(days=1)
        nxt = _next_start(protocol, _local_start_of(tomorrow, zone))
        per_day = protocol.sessions_per_day
        text = (
            say("wait.day_done", per_day=per_day, when=_from_clock(nxt, protocol))
            if nxt is not None
            else say("wait.day_done_last", per_day=per_day)
        )
        return Decision(
            False,
            text,
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
            gap = hours_text(protocol.min_gap_hours)
            if nxt is None:
                text = say("wait.gap_study_ends", day=day_text(protocol.study_end), gap=gap)
            elif nxt.astimezone(UTC) == allowed_at.astimezone(UTC):
                text = say("wait.gap", when=_when(nxt, local_now), gap=gap)
            else:
                text = say("wait.gap_window", when=_when(nxt, local_now), gap=gap)
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
                say("wait.window", when=_when(nxt, local_now, at=True))
                if nxt is not None
                else say("wait.window_none")
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
    message = start_sentence(
        slot,
        protocol.sessions_per_day,
        minutes,
        resumed=resumed_from is not None,
        override=kind == "override",
    )
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
    return say("when.twice_after" if when.fold else "when.twice_before", clock=text)


def _days_away(day: date, today: date) -> str:
    days = (day - today).days
    return say("when.tomorrow") if days == 1 else say("when.days_away", days=days)


def _when(when: datetime, now: datetime, at: bool = False) -> str:
    """'from 11:11', 'tomorrow from 07:00', 'on 7 May 2026 from 07:00' ('at' for a window)."""
    word = "at" if at else "from"
    clock = clock_text(when)
    if when.date() == now.date():
        return say(f"when.{word}_today", clock=clock)
    if when.date() == now.date() + timedelta(days=1):
        return say(f"when.{word}_tomorrow", clock=clock)
    return say(f"when.{word}_day", day=day_text(when.date()), clock=clock)


def _from_clock(when: datetime, protocol: Prescription) -> str:
    """'tomorrow', or 'tomorrow from 07:00' when daily windows say when."""
    if not protocol.daily_windows:
        return say("when.tomorrow")
    return say("when.from_tomorrow", clock=clock_text(when))


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
