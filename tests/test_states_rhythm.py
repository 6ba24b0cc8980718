"""The patient's twice-daily rhythm, run as real sessions on the simulated plate.

The scheduler's rules are unit-tested on made-up records (tests/test_scheduling.py,
tests/test_scheduling_dst.py); here whole sessions run through the session runner on a
simulated plate under a clock the test sets (``run_session(now=...)``, the runner's own
seam for time), so the dates, slots and gaps come from the records the runner itself wrote:
a second session the same day, an evening session that runs across midnight, and a day when
the clocks change. Each session's dose is checked against the simulator's truth file.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from sessions.home import LivHome
from sessions.log import SessionLog, SessionRecord, SessionStatus
from sessions.runner import Progress, SessionRefusedError, run_session
from sessions.scheduling import decide
from tests.simhelpers import install_signed, load_truth, truth_amplitude

DEVICE_ID = "SIM-DAY"


class PlateClock:
    """Civil time for the runner: starts where the test puts it and then follows the plate's
    own clock (the elapsed plate time each progress update reports), so a session at
    ``speed=max`` spans its true minute of civil time."""

    def __init__(self) -> None:
        self._at = datetime(2000, 1, 1, tzinfo=UTC)
        self._elapsed_s = 0.0
        self._base_s: float | None = None

    def set(self, local: datetime) -> None:
        self._at = local.astimezone(UTC)
        self._elapsed_s = 0.0
        self._base_s = None

    def follow(self, progress: Progress) -> None:
        """The runner's progress hook: the plate's clock moves civil time on."""
        if self._base_s is None:
            self._base_s = progress.elapsed_s
        self._elapsed_s = progress.elapsed_s - self._base_s

    def __call__(self) -> datetime:
        return self._at + timedelta(seconds=self._elapsed_s)


@pytest.fixture
def home(tmp_path: Path) -> LivHome:
    h = LivHome(tmp_path / "home")
    h.ensure()
    (h.root / "DEMO").write_text("demo\n")  # simulated sessions count: the schedule end to end
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
        h.calibrations().save(identify(device))
    return h


def session(home: LivHome, clock: PlateClock, truth_path: Path) -> SessionRecord:
    """One session due at ``clock()``, run to the end; its dose is checked against the truth."""
    protocol = home.protocol()
    url = f"sim://?speed=max&mass=70&seed=5&device_id={DEVICE_ID}&truth={truth_path}"
    with SessionLog(home.db_path()) as log:
        outcome = run_session(
            protocol=protocol, log=log, device_url=url, calibrations=home.calibrations(),
            now=clock, on_progress=clock.follow, demo=True,
        )  # fmt: skip
    record = outcome.record
    assert record.status is SessionStatus.COMPLETED, record.reason
    truth = load_truth(truth_path)
    hold = (truth["t_s"] > 4.0) & (truth["t_s"] < 60.0)
    assert truth_amplitude(truth, hold) == pytest.approx(protocol.target_g, rel=0.05)
    return record


def refused(home: LivHome, clock: Callable[[], datetime]) -> str:
    """The start at ``clock()`` is refused before the plate is opened; the patient's sentence."""
    with SessionLog(home.db_path()) as log, pytest.raises(SessionRefusedError) as no:
        run_session(
            protocol=home.protocol(), log=log, device_url="sim://?speed=max&mass=70",
            calibrations=home.calibrations(), now=clock, demo=True,
        )  # fmt: skip
    return str(no.value)


def local(zone: str, day: date, hour: int, minute: int, second: int = 0, fold: int = 0) -> datetime:
    return datetime(
        day.year, day.month, day.day, hour, minute, second, tzinfo=ZoneInfo(zone), fold=fold
    )


def test_a_second_session_the_same_day_and_an_evening_session_across_midnight(
    home: LivHome, tmp_path: Path
) -> None:
    zone = "Europe/Berlin"
    day = date(2026, 11, 30)
    install_signed(
        home, timezone=zone, study_start=(day - timedelta(days=5)).isoformat(),
        study_end=(day + timedelta(days=30)).isoformat(),
    )  # fmt: skip
    clock = PlateClock()
    clock.set(local(zone, day, 8, 0))
    morning = session(home, clock, tmp_path / "morning.npz")
    assert (morning.local_date, morning.slot) == (day, 1)

    # the same day: the gap holds the second session back, then lets it run
    clock.set(local(zone, day, 10, 0))
    assert "allowed from 11:0" in refused(home, clock)
    # the evening session starts a minute before midnight and ends after it
    clock.set(local(zone, day, 23, 59, 20))
    evening = session(home, clock, tmp_path / "evening.npz")
    assert (evening.local_date, evening.slot) == (day, 2)
    assert evening.started_utc.astimezone(ZoneInfo(zone)).date() == day
    assert evening.ended_utc is not None
    assert evening.ended_utc.astimezone(ZoneInfo(zone)).date() == day + timedelta(days=1)

    # past midnight: yesterday is complete (two full slots), today's first waits for the gap
    # counted from the evening session's end, in absolute time
    with SessionLog(home.db_path(), read_only=True) as log:
        summaries = log.summaries()
    assert sorted((s.local_date, s.slot, s.minutes_at_dose) for s in summaries) == [
        (day, 1, pytest.approx(1.0)), (day, 2, pytest.approx(1.0)),
    ]  # fmt: skip
    clock.set(local(zone, day + timedelta(days=1), 0, 30))
    wait = refused(home, clock)
    allowed = evening.ended_utc + timedelta(hours=3)
    assert f"allowed from {allowed.astimezone(ZoneInfo(zone)):%H:%M}" in wait
    clock.set(allowed.astimezone(ZoneInfo(zone)) + timedelta(minutes=1))
    next_day = session(home, clock, tmp_path / "next.npz")
    assert (next_day.local_date, next_day.slot) == (day + timedelta(days=1), 1)


@pytest.mark.parametrize(
    ("zone", "change_day", "first"),
    [
        # spring forward: 02:00 becomes 03:00; the morning session runs across the jump
        ("Europe/London", date(2026, 3, 29), (0, 59, 30, 0)),
        # fall back: 01:00-02:00 happens twice; the session starts in the first 01:30
        ("Europe/London", date(2026, 10, 25), (1, 30, 0, 0)),
        ("America/New_York", date(2026, 11, 1), (1, 30, 0, 0)),
    ],
    ids=["london-spring", "london-autumn", "new-york-autumn"],
)
def test_a_session_across_a_clock_change_counts_for_its_day_and_the_gap_is_real_hours(
    home: LivHome, tmp_path: Path, zone: str, change_day: date, first: tuple[int, int, int, int]
) -> None:
    install_signed(
        home, timezone=zone, study_start=(change_day - timedelta(days=3)).isoformat(),
        study_end=(change_day + timedelta(days=30)).isoformat(),
    )  # fmt: skip
    clock = PlateClock()
    hour, minute, second, fold = first
    clock.set(local(zone, change_day, hour, minute, second, fold))
    one = session(home, clock, tmp_path / "one.npz")
    assert (one.local_date, one.slot) == (change_day, 1)
    assert one.ended_utc is not None
    # three real hours after its end, not three hours of the wall clock
    just_before = one.ended_utc + timedelta(hours=3) - timedelta(minutes=2)
    clock.set(just_before.astimezone(ZoneInfo(zone)))
    assert "allowed from" in refused(home, clock)
    clock.set((one.ended_utc + timedelta(hours=3, minutes=1)).astimezone(ZoneInfo(zone)))
    two = session(home, clock, tmp_path / "two.npz")
    assert (two.local_date, two.slot) == (change_day, 2)
    assert two.started_utc - one.ended_utc >= timedelta(hours=3)
    # the day is done: nothing more is due on it
    end = two.ended_utc or two.started_utc
    with SessionLog(home.db_path(), read_only=True) as log:
        history = log.summaries()
    later = decide(home.protocol(), history, end + timedelta(hours=4))
    assert not later.allowed
    assert later.next_allowed_utc is not None
    assert later.next_allowed_utc.astimezone(ZoneInfo(zone)).date() > change_day
