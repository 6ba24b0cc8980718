"""Which session is due: slots, the gap, windows, midnight and daylight-saving changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from sessions.scheduling import decide
from sessions.wording import say

LONDON = ZoneInfo("Europe/London")


@dataclass(frozen=True)
class Window:
    start: time
    end: time


@dataclass(frozen=True)
class Plan:
    minutes_per_session: float = 10.0
    sessions_per_day: int = 2
    min_gap_hours: float = 3.0
    study_start: date = date(2026, 1, 1)
    study_end: date = date(2026, 12, 31)
    timezone: str = "Europe/London"
    daily_windows: tuple[Window, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Logged:
    """A logged session as scheduling reads it (test_wording and test_scheduling_dst use it)."""

    session_id: str
    local_date: date
    slot: int
    status: str
    minutes_at_dose: float
    started_utc: datetime
    ended_utc: datetime | None


def local(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=LONDON).astimezone(UTC)


def done(sid: str, start: datetime, slot: int, minutes: float = 10.0, status: str = "completed"):
    end = start + timedelta(minutes=minutes + 1)
    return Logged(sid, start.astimezone(LONDON).date(), slot, status, minutes, start, end)


def test_outside_the_study_nothing_is_due() -> None:
    plan = Plan(study_start=date(2026, 3, 1), study_end=date(2026, 3, 31))
    before = decide(plan, [], local(2026, 2, 28, 9))
    assert not before.allowed
    assert before.message == say("wait.before_study", day="1 March 2026", away="tomorrow")
    after = decide(plan, [], local(2026, 4, 1, 9))
    assert not after.allowed
    assert after.message == say("wait.after_study", day="31 March 2026")


def test_two_slots_a_gap_and_then_done_for_the_day() -> None:
    plan = Plan()
    first = decide(plan, [], local(2026, 5, 4, 8))
    assert first.allowed
    assert first.slot == 1
    assert first.minutes == 10.0
    log = [done("a", local(2026, 5, 4, 8), 1)]
    too_soon = decide(plan, log, local(2026, 5, 4, 9))
    assert not too_soon.allowed
    assert "allowed from 11:11" in too_soon.message
    second = decide(plan, log, local(2026, 5, 4, 11, 11))
    assert second.allowed
    assert second.slot == 2
    log.append(done("b", local(2026, 5, 4, 12), 2))
    finished = decide(plan, log, local(2026, 5, 4, 18))
    assert not finished.allowed
    assert finished.message == say("wait.day_done", per_day=2, when="tomorrow")


def test_a_cut_short_session_is_resumed_in_the_same_slot_without_a_gap() -> None:
    plan = Plan()
    log = [done("a", local(2026, 5, 4, 8), 1, minutes=6.0, status="stopped_by_patient")]
    again = decide(plan, log, local(2026, 5, 4, 8, 20))
    assert again.allowed
    assert again.slot == 1
    assert again.minutes == pytest.approx(4.0)
    assert again.resumed_from == "a"


def test_the_gap_runs_across_midnight_and_days_are_local() -> None:
    plan = Plan()
    late = done("late", local(2026, 5, 4, 23, 50), 1)  # ends 00:01 on the 5th
    assert late.local_date == date(2026, 5, 4)
    early = decide(plan, [late], local(2026, 5, 5, 1))
    assert not early.allowed
    assert early.local_date == date(2026, 5, 5)
    assert "allowed from 03:01" in early.message
    assert decide(plan, [late], local(2026, 5, 5, 3, 1)).slot == 1


def test_spring_forward_the_gap_is_three_real_hours() -> None:
    # 2026-03-29: London clocks go from 01:00 GMT to 02:00 BST
    plan = Plan(min_gap_hours=3.0)
    start = datetime(2026, 3, 29, 0, 10, tzinfo=UTC)  # 00:10 GMT, ends 00:21
    log = [done("a", start, 1)]
    blocked = decide(plan, log, datetime(2026, 3, 29, 3, 0, tzinfo=UTC))
    assert not blocked.allowed
    assert "allowed from 04:21" in blocked.message  # 03:21 UTC is 04:21 BST
    assert decide(plan, log, datetime(2026, 3, 29, 3, 21, tzinfo=UTC)).allowed


def test_fall_back_the_gap_is_three_real_hours() -> None:
    # 2026-10-25: London clocks go from 02:00 BST back to 01:00 GMT
    plan = Plan(min_gap_hours=3.0)
    start = datetime(2026, 10, 24, 23, 30, tzinfo=UTC)  # 00:30 BST on the 25th
    log = [done("a", start, 1)]
    assert log[0].local_date == date(2026, 10, 25)
    blocked = decide(plan, log, datetime(2026, 10, 25, 2, 0, tzinfo=UTC))
    assert not blocked.allowed
    assert "allowed from 02:41" in blocked.message  # 02:41 UTC is 02:41 GMT
    later = decide(plan, log, datetime(2026, 10, 25, 2, 41, tzinfo=UTC))
    assert later.allowed
    assert later.slot == 2


def test_windows_gate_new_sessions() -> None:
    plan = Plan(daily_windows=(Window(time(7), time(11)), Window(time(17), time(21))))
    outside = decide(plan, [], local(2026, 5, 4, 12))
    assert not outside.allowed
    assert outside.message == say("wait.window", when="at 17:00")
    assert decide(plan, [], local(2026, 5, 4, 17, 30)).allowed
    late = decide(plan, [], local(2026, 5, 4, 22))
    assert not late.allowed
    assert late.message == say("wait.window", when="tomorrow at 07:00")


def test_an_override_is_allowed_and_recorded() -> None:
    plan = Plan()
    log = [done("a", local(2026, 5, 4, 8), 1), done("b", local(2026, 5, 4, 12), 2)]
    extra = decide(plan, log, local(2026, 5, 4, 13), override_reason="clinic visit")
    assert extra.allowed
    assert extra.override_reason == "clinic visit"
    assert extra.slot == 3  # beyond the prescription: never counted for another slot
