"""The log never delays the control loop, and a log that cannot be written is recorded as such.

Checkpoints are written by a thread (sessions/runner.py ``_CheckpointWriter``): a slow or locked
database must not stretch the time between control updates, which is measured here on the
host's own timer. A final write that fails (database locked, disk full) is recorded by the next
recovery with that reason, never as "crash, kill or power loss", with the dose delivered.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sessions import runner
from sessions.home import LivHome
from sessions.log import LogError, LogErrorReason, SessionLog, SessionStatus
from sessions.runner import CHECKPOINT_S, Progress, run_session
from tests.test_checkpoint_chunks import CountedEnvelope
from tests.test_resume import DEVICE_ID, home, sim  # noqa: F401  (home is a fixture)

SLOW_WRITE_S = 0.5  # one checkpoint on a slow disk (or a busy one, under load)
LOCK_WAIT_S = 0.4  # how long a checkpoint waits for a locked log in these tests


class SlowLog(SessionLog):
    """A log on a slow disk: every checkpoint takes SLOW_WRITE_S."""

    def checkpoint(self, session_id: str, **kwargs: Any) -> None:
        time.sleep(SLOW_WRITE_S)
        super().checkpoint(session_id, **kwargs)


class CountingLog(SessionLog):
    """Notes, per checkpoint, the envelope's length and how many of its points were read."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.checkpoints: list[tuple[int, int]] = []

    def checkpoint(self, session_id: str, **kwargs: Any) -> None:
        points = CountedEnvelope(kwargs.pop("envelope"))
        super().checkpoint(session_id, envelope=points, **kwargs)
        self.checkpoints.append((len(points), points.read))


class UpdateGaps:
    """The longest wall time between two control updates (progress calls), on perf_counter."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.longest = 0.0
        self.calls = 0

    def __call__(self, progress: Progress) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.longest = max(self.longest, now - self.last)
        self.last = now
        self.calls += 1


def test_a_slow_log_does_not_delay_control_updates(home: LivHome) -> None:  # noqa: F811
    gaps = UpdateGaps()
    with SlowLog(home.db_path()) as log:
        outcome = run_session(
            protocol=home.protocol(), log=log, device_url=sim(),
            calibrations=home.calibrations(), on_progress=gaps,
        )  # fmt: skip
        record = log.get(outcome.record.session_id)
    assert record.status is SessionStatus.COMPLETED
    # a 1-minute session checkpoints about 12 times; in-line, each would hold the loop 0.5 s.
    # The display is told every 0.1 s of plate time (runner.PROGRESS_EVERY_S): 5 updates.
    assert gaps.calls > 500
    assert gaps.longest < SLOW_WRITE_S / 2, f"a control update waited {gaps.longest:.3f} s"
    assert record.minutes_at_dose == pytest.approx(1.0)


def test_each_checkpoint_of_a_session_reads_only_its_new_points(home: LivHome) -> None:  # noqa: F811
    """The writer thread's work per checkpoint is the points added since the last one.

    Before, every checkpoint read (checked, rounded, serialised) the whole envelope so far: at
    the end of a 10-minute session 6000 points, 25-67 ms of CPU holding the GIL.
    """
    with CountingLog(home.db_path()) as log:
        outcome = run_session(
            protocol=home.protocol(), log=log, device_url=sim(),
            calibrations=home.calibrations(),
        )  # fmt: skip
    assert outcome.record.status is SessionStatus.COMPLETED
    # a 1-minute session asks for a checkpoint every 5 s (about 12); at speed=max the writer
    # thread folds the ones it could not keep up with into the next (7 in a loaded run)
    assert len(log.checkpoints) >= 4
    stored = 0
    for length, read in log.checkpoints:
        assert read <= length - stored + 1, f"read {read} points of {length}, {stored} stored"
        stored = length
    assert len(outcome.record.envelope) >= stored > 500


def test_a_locked_log_mid_session_does_not_delay_updates_and_is_recorded(
    home: LivHome,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another program holds the log from the first update to 30 s at dose (and 0.8 s).

    Each checkpoint may wait LOCK_WAIT_S for the lock: in the control loop that would hold
    every update due meanwhile.
    """
    monkeypatch.setattr(runner, "CHECKPOINT_WAIT_S", LOCK_WAIT_S)
    gaps = UpdateGaps()
    other = sqlite3.connect(home.db_path(), isolation_level=None, check_same_thread=False)
    state = {"locked_at": 0.0, "released": False}

    def progress(p: Progress) -> None:
        gaps(p)
        if not state["locked_at"]:
            other.execute("BEGIN EXCLUSIVE")
            state["locked_at"] = time.perf_counter()
            gaps.last = time.perf_counter()  # our own lock taking is not the loop's wait
        elif (
            not state["released"]
            and p.at_dose_s >= 30.0
            and (time.perf_counter() - state["locked_at"] >= 2 * LOCK_WAIT_S or p.at_dose_s > 55)
        ):
            other.execute("ROLLBACK")
            state["released"] = True
            gaps.last = time.perf_counter()

    # At speed=max a fast computer passes 30-55 s at dose in under 2 x LOCK_WAIT_S of wall
    # time, before any checkpoint has given up waiting: 20x real time keeps the lock held long
    # enough on any computer that keeps up with 20x.
    plate = f"sim://?mass=70&seed=4&speed=20&device_id={DEVICE_ID}"
    try:
        with SessionLog(home.db_path()) as log:
            outcome = run_session(
                protocol=home.protocol(), log=log, device_url=plate,
                calibrations=home.calibrations(), on_progress=progress,
            )  # fmt: skip
    finally:
        other.close()
    assert state["released"]
    assert gaps.longest < LOCK_WAIT_S / 2, f"a control update waited {gaps.longest:.3f} s"
    record = outcome.record
    assert record.status is SessionStatus.COMPLETED
    (event,) = [e for e in record.safety_events if e["reason"] == "log_write_failed"]
    assert event["values"]["first_error"] == LogErrorReason.LOCKED.value
    assert event["values"]["checkpoints_failed"] >= 1
    assert event["values"]["checkpoints_written"] >= 1  # after the release
    assert 0.0 < event["t_s"] < 30.0 + CHECKPOINT_S


def test_a_final_write_that_fails_is_recovered_with_its_reason_and_dose(
    home: LivHome,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log is locked from 50 s at dose until after the session: its end cannot be written."""
    monkeypatch.setattr(runner, "CHECKPOINT_WAIT_S", 0.05)
    other = sqlite3.connect(home.db_path(), isolation_level=None, check_same_thread=False)

    def progress(p: Progress) -> None:
        if p.at_dose_s >= 50.0 and not other.in_transaction:
            other.execute("BEGIN EXCLUSIVE")

    with contextlib.closing(other):
        with SessionLog(home.db_path(), busy_timeout_s=0.2) as log:
            with pytest.raises(LogError) as failed:
                run_session(
                    protocol=home.protocol(), log=log, device_url=sim(),
                    calibrations=home.calibrations(), on_progress=progress,
                )  # fmt: skip
            (row,) = log.sessions()
        other.execute("ROLLBACK")
    assert failed.value.reason is LogErrorReason.LOCKED
    assert row.status is SessionStatus.RUNNING
    assert row.minutes_at_dose < 50.0 / 60.0  # the checkpoints after the lock were lost
    with SessionLog(home.db_path()) as log:
        (recovered,) = log.recover_interrupted(datetime.now().astimezone())
    assert recovered.status is SessionStatus.INTERRUPTED
    assert "crash, kill or power loss" not in recovered.reason
    assert recovered.reason.startswith(
        "the session log could not be written when the session ended (locked: "
    )
    assert "the session itself ended completed (prescribed minutes at dose delivered)" in (
        recovered.reason
    )
    assert recovered.minutes_at_dose == pytest.approx(1.0)
    assert recovered.ended_utc is not None
    assert recovered.last_checkpoint_utc is not None
    assert recovered.ended_utc > recovered.last_checkpoint_utc  # the true end, from the note
    assert not any((Path(str(home.db_path()) + ".running")).iterdir())
