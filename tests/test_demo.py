"""``liv demo``: two weeks of simulated history in a home of its own, then status and the report.

The history runs on the simulated plate (speed=max) under a simulated clock, so it is quick and
the same every time: a missed day, a day with one session, a session the patient cut short and
one the plate stopped for safety, each resumed in its slot.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from sessions.cli import main
from sessions.commands import demo
from sessions.commands.demo import DemoSession, demo_protocol, run_demo_history
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from sessions.stops import STOP_CTRL_C

TODAY = date(2026, 3, 20)


def history_home(tmp_path: Path, name: str) -> LivHome:
    home = LivHome(tmp_path / name)
    home.ensure()
    with DeviceClient.open(f"sim://?mass=0&seed=1&device_id={demo.DEMO_DEVICE}") as device:
        home.calibrations().save(identify(device))
    return home


SMALL_PLAN = [
    DemoSession(2, datetime.min.time().replace(hour=7, minute=40), stop_after_s=20.0),
    DemoSession(2, datetime.min.time().replace(hour=8, minute=10)),
    DemoSession(1, datetime.min.time().replace(hour=18, minute=30), plate="&sensor_stuck_at=16"),
]


def run_small(tmp_path: Path, name: str) -> list[tuple[object, ...]]:
    home = history_home(tmp_path, name)
    protocol = demo_protocol(TODAY - timedelta(days=14), "Europe/Berlin")
    with SessionLog(home.db_path()) as log:
        run_demo_history(log, protocol, home.calibrations(), TODAY, SMALL_PLAN)
        records = log.sessions()
        assert log.verify().ok
    return [
        (r.local_date, r.slot, r.status, r.reason, round(r.minutes_at_dose, 6), r.started_utc,
         r.ended_utc, r.resumed_from is not None)
        for r in records
    ]  # fmt: skip


def test_the_history_runs_under_a_simulated_clock_and_is_the_same_every_time(
    tmp_path: Path,
) -> None:
    first = run_small(tmp_path, "a")
    assert first == run_small(tmp_path, "b")  # deterministic: the same plate, clock, outcome
    cut, resumed, tripped = first
    # the patient's Ctrl-C, at the simulated 07:40 Berlin time, two days ago
    assert cut[2] is SessionStatus.STOPPED_BY_PATIENT
    assert cut[3] == STOP_CTRL_C
    assert cut[5] == datetime(2026, 3, 18, 6, 40, tzinfo=UTC)
    assert 19.9 / 60 <= cut[4] < 1.0
    # the clock moves with the plate: the session lasted its time at dose and its ramps
    assert timedelta(seconds=20) <= cut[6] - cut[5] <= timedelta(seconds=60)
    assert resumed[2] is SessionStatus.COMPLETED
    assert resumed[7]  # resumed in its slot
    assert resumed[0] == cut[0]
    assert resumed[1] == cut[1]
    assert tripped[2] is SessionStatus.TRIPPED
    assert tripped[3].startswith("accelerometer output is stuck")


def test_the_plan_has_two_weeks_with_what_a_clinician_looks_for() -> None:
    plan = demo.demo_history()
    days = {s.day for s in plan}
    assert max(days) >= 14
    assert set(range(1, 15)) - days == {demo.DEMO_MISSED_DAY}
    assert sum(1 for s in plan if s.day == demo.DEMO_MORNING_ONLY_DAY) == 1
    assert any(s.stop_after_s is not None for s in plan)
    assert any("_at=" in s.plate for s in plan)


@pytest.mark.timeout(400)  # two weeks of sessions; seconds of CPU on an idle machine
def test_liv_demo_shows_two_weeks_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "demo"
    began = time.monotonic()
    assert main(["demo", "--home", str(root)]) == 0
    assert time.monotonic() - began < 400
    out = capsys.readouterr().out
    assert (root / "DEMO").is_file()  # every session here is simulated
    report = root / "report.html"
    assert f"The clinician's report: {report}" in out
    assert f"liv status --home {root}" in out
    html = report.read_text(encoding="utf-8")
    assert "DEMO-001" in html
    with SessionLog(root / "liv.db", read_only=True) as log:
        records = log.sessions()
        assert log.verify().ok
    days = {r.local_date for r in records}
    today = datetime.now(UTC).date()
    assert min(days) <= today - timedelta(days=14)
    assert today - timedelta(days=demo.DEMO_MISSED_DAY) not in days
    statuses = {r.status for r in records}
    assert {SessionStatus.COMPLETED, SessionStatus.STOPPED_BY_PATIENT, SessionStatus.TRIPPED} <= (
        statuses
    )
    # status after the history: today's first session done, a streak in plain words
    assert "Session 1: done." in out
    assert re.search(r"Every session done \d+ days in a row\.", out)
