"""What status and start say about time: the study's bounds, daily windows and clock changes.

Real zones across both of their 2026 changes:
- Europe/London: 01:00 GMT -> 02:00 BST on 29 March; 02:00 BST -> 01:00 GMT on 25 October.
- America/New_York: 02:00 EST -> 03:00 EDT on 8 March; 02:00 EDT -> 01:00 EST on 1 November.
- Australia/Sydney: 03:00 AEDT -> 02:00 AEST on 5 April; 02:00 AEST -> 03:00 AEDT on 4 October.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from sessions.commands.status import status_lines
from sessions.protocol import protocol_from_dict
from sessions.scheduling import decide
from sessions.wording import say
from tests.test_scheduling import Logged


@dataclass(frozen=True)
class Window:
    start: time
    end: time


@dataclass(frozen=True)
class Plan:
    timezone: str
    minutes_per_session: float = 10.0
    sessions_per_day: int = 2
    min_gap_hours: float = 1.0
    study_start: date = date(2026, 1, 1)
    study_end: date = date(2026, 12, 31)
    daily_windows: tuple[Window, ...] = field(default_factory=tuple)


def ended_at(zone: str, end_utc: datetime, slot: int = 1) -> Logged:
    """A completed 10-minute session of slot ``slot`` that ended at ``end_utc``."""
    start = end_utc - timedelta(minutes=11)
    day = start.astimezone(ZoneInfo(zone)).date()
    return Logged("s1", day, slot, "completed", 10.0, start, end_utc)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# ---- the study's bounds ----------------------------------------------------------------------


def rx(start: str, end: str, zone: str = "Europe/London") -> object:
    return protocol_from_dict(
        {
            "patient_id": "P-1",
            "target_g": 0.3,
            "frequency_hz": 30,
            "minutes_per_session": 10,
            "sessions_per_day": 2,
            "min_gap_hours": 3,
            "study_start": start,
            "study_end": end,
            "timezone": zone,
        }
    )


def test_status_lists_nothing_due_before_the_study_starts() -> None:
    protocol = rx("2026-06-01", "2027-05-31")
    lines = status_lines(protocol, [], utc(2026, 5, 29, 9))  # type: ignore[arg-type]
    text = "\n".join(lines)
    assert ": due" not in text
    assert say("wait.before_study", day="1 June 2026", away="in 3 days") in text


def test_status_lists_nothing_due_after_the_study_ended() -> None:
    protocol = rx("2025-06-01", "2026-05-31")
    lines = status_lines(protocol, [], utc(2026, 6, 2, 9))  # type: ignore[arg-type]
    text = "\n".join(lines)
    assert ": due" not in text
    assert say("wait.after_study", day="31 May 2026") in text


def test_status_lists_the_slots_during_the_study() -> None:
    protocol = rx("2026-06-01", "2027-05-31")
    text = "\n".join(status_lines(protocol, [], utc(2026, 6, 2, 9)))  # type: ignore[arg-type]
    assert "Session 1: not done yet." in text
    assert "Session 2: not done yet." in text


# ---- the wait honours the daily windows ------------------------------------------------------

WINDOWS = (Window(time(7), time(11)), Window(time(17), time(21)))


@pytest.mark.parametrize("zone", ["Europe/London", "America/New_York", "Australia/Sydney"])
def test_a_gap_ending_after_the_last_window_waits_for_tomorrows_first(zone: str) -> None:
    plan = Plan(zone, min_gap_hours=3.0, daily_windows=WINDOWS)
    tz = ZoneInfo(zone)
    end = datetime(2026, 6, 10, 20, 11, tzinfo=tz).astimezone(UTC)  # gap ends 23:11 local
    decision = decide(plan, [ended_at(zone, end)], end + timedelta(minutes=20))
    assert not decision.allowed
    assert "allowed tomorrow from 07:00" in decision.message
    assert decision.next_allowed_utc == datetime(2026, 6, 11, 7, 0, tzinfo=tz)
    assert "23:11" not in decision.message


def test_a_gap_ending_between_windows_waits_for_the_next_window() -> None:
    zone = "Europe/London"
    plan = Plan(zone, min_gap_hours=3.0, daily_windows=WINDOWS)
    end = datetime(2026, 6, 10, 9, 0, tzinfo=ZoneInfo(zone)).astimezone(UTC)  # gap ends 12:00
    decision = decide(plan, [ended_at(zone, end)], end + timedelta(minutes=20))
    assert decision.message == say("wait.gap_window", when="from 17:00", gap="3 hours")


def test_when_the_day_is_done_the_next_is_due_at_tomorrows_first_window() -> None:
    zone = "America/New_York"
    plan = Plan(zone, sessions_per_day=1, daily_windows=WINDOWS)
    end = datetime(2026, 6, 10, 8, 0, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    decision = decide(plan, [ended_at(zone, end)], end + timedelta(hours=1))
    assert decision.message == say("wait.day_done", per_day=1, when="tomorrow from 07:00")


# ---- clocks going back: a time that occurs twice says which ----------------------------------


@pytest.mark.parametrize(
    ("zone", "end_utc", "expected"),
    [
        # 01:10 BST, + 1 h = 01:10 GMT
        ("Europe/London", utc(2026, 10, 25, 0, 10), "01:10 (after the clocks went back)"),
        # 00:30 BST, + 1 h = 01:30 BST, the first of the two
        ("Europe/London", utc(2026, 10, 24, 23, 30), "01:30 (before the clocks went back)"),
        # 01:20 EDT, + 1 h = 01:20 EST
        ("America/New_York", utc(2026, 11, 1, 5, 20), "01:20 (after the clocks went back)"),
        # 02:10 AEDT, + 1 h = 02:10 AEST
        ("Australia/Sydney", utc(2026, 4, 4, 15, 10), "02:10 (after the clocks went back)"),
    ],
)
def test_a_time_that_occurs_twice_says_which(zone: str, end_utc: datetime, expected: str) -> None:
    plan = Plan(zone, min_gap_hours=1.0)
    decision = decide(plan, [ended_at(zone, end_utc)], end_utc + timedelta(minutes=5))
    assert not decision.allowed
    assert f"allowed from {expected}" in decision.message
    assert decision.next_allowed_utc == end_utc + timedelta(hours=1)


def test_a_time_that_occurs_once_on_a_change_day_is_plain() -> None:
    zone = "Europe/London"
    end = utc(2026, 10, 25, 8, 0)  # 08:00 GMT
    decision = decide(Plan(zone), [ended_at(zone, end)], end + timedelta(minutes=5))
    assert decision.message == say("wait.gap", when="from 09:00", gap="1 hour")


# ---- clocks going forward: a window inside the missing hour ----------------------------------


@pytest.mark.parametrize(
    ("zone", "day", "window", "now_local", "opens", "opens_utc"),
    [
        # London skips 01:00-02:00: a window from 01:30 opens at 02:00 BST (01:00 UTC)
        ("Europe/London", date(2026, 3, 29), time(1, 30), time(0), "02:00", utc(2026, 3, 29, 1)),
        # New York skips 02:00-03:00: a window from 02:15 opens at 03:00 EDT (07:00 UTC)
        ("America/New_York", date(2026, 3, 8), time(2, 15), time(1), "03:00", utc(2026, 3, 8, 7)),
        # Sydney skips 02:00-03:00: from 02:30 opens at 03:00 AEDT (16:00 UTC the day before)
        (
            "Australia/Sydney",
            date(2026, 10, 4),
            time(2, 30),
            time(1),
            "03:00",
            utc(2026, 10, 3, 16),
        ),
    ],
)
def test_a_window_opening_in_the_missing_hour_opens_at_the_first_time_that_exists(
    zone: str, day: date, window: time, now_local: time, opens: str, opens_utc: datetime
) -> None:
    plan = Plan(zone, daily_windows=(Window(window, time(5)),))
    now = datetime.combine(day, now_local, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    decision = decide(plan, [], now)
    assert not decision.allowed
    assert decision.message == say("wait.window", when=f"at {opens}")
    assert decision.next_allowed_utc == opens_utc
    assert decide(plan, [], opens_utc).allowed


def test_a_window_in_the_missing_hour_announced_the_evening_before() -> None:
    zone = "America/New_York"
    plan = Plan(zone, daily_windows=(Window(time(2, 15), time(5)),))
    now = datetime(2026, 3, 7, 22, 0, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    decision = decide(plan, [], now)
    assert decision.message == say("wait.window", when="tomorrow at 03:00")
