"""A computer steadily slower than the plate is stopped, softly, with its true reason.

The plate sends a block every 20 ms whether or not the host reads. A host slower than that
(here: the progress display stalls on every update, so the host runs at about 0.75x of the
plate's pace) falls further behind: it acts on older and older feedback, and before
``host_too_slow`` the plate's watchdog ended the session as a "device fault" (the host's
heartbeat is timed on the blocks it has read) or the session drove on feedback seconds old.
Judged from the simulator's truth file (tests/test_states_slow_host.py has the harness).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from controller.safety import SafetyLimits, SafetySupervisor, TripReason
from firmware_bridge.client import SampleBlock
from sessions.log import SessionStatus
from sessions.runner import Progress, StopRequest
from sessions.stops import STOP_CTRL_C
from sessions.wording import outcome_sentence, say
from tests.test_fault_matrix import Truth
from tests.test_states_slow_host import delivered_s, slow_session

LIMITS = SafetyLimits()
LIMITS_RAMP_DOWN_S = 1.0  # the sessions' ramp-down (ExposureSettings.ramp_down_s)
FS = 1600.0
N = 32
BLOCK_S = N / FS
# One stall on every progress update (every 0.1 s of plate time): the host then needs about
# 0.13 s for each 0.1 s the plate sends, 0.75x of its pace (0.72-0.74x measured).
SLOW_STALL_S = 0.125
ONSET_AT_DOSE_S = 10.0
# From the first stall to the plate at rest (truth): the backlog passes host_backlog_s within
# about 0.6 s of plate time at 0.75x, is held host_backlog_hold_s, the plate is then up to
# 0.5 s ahead of the host, and the ramp-down takes ramp_down_s (1 s). Measured: 2.2-2.6 s.
STOPPED_WITHIN_S = 3.5


def descent_s(truth: Truth) -> float:
    """Plate seconds from the drive's last sample at 80% of its hold level to zero (truth).
    A 1-s linear ramp-down takes 0.8 s; one cut short by the output switched off early
    (the plate's 0.2 s stop ramp takes the rest) takes less."""
    zero_s = truth.zero_drive_s
    t, drive = truth.t_s, np.abs(truth.drive)
    hold = float(np.median(drive[(t >= zero_s - 2.0) & (t < zero_s - 1.2)]))
    high = np.flatnonzero((drive >= 0.8 * hold) & (t < zero_s))
    return zero_s - float(t[high[-1]])


def slow_from_10_s_at_dose(stall_s: float) -> tuple[list[float], Callable[[Progress], float]]:
    """A progress display that stalls ``stall_s`` on every update from 10 s at dose on, and
    the list that receives the session time of the first stall."""
    onset: list[float] = []

    def stall(p: Progress) -> float:
        if onset or (p.state.startswith("at dose") and p.at_dose_s >= ONSET_AT_DOSE_S):
            if not onset:
                onset.append(p.elapsed_s)
            return stall_s
        return 0.0

    return onset, stall


def test_the_supervisor_trips_only_a_backlog_held_past_its_hold() -> None:
    """Above host_backlog_s for host_backlog_hold_s of consecutive blocks trips; one block
    back under the limit starts the count again."""
    sup = SafetySupervisor(LIMITS, FS, N)
    over = int(LIMITS.host_backlog_s / BLOCK_S) + 1  # blocks behind just above the limit
    hold_blocks = round(LIMITS.host_backlog_hold_s / BLOCK_S)
    counts = np.zeros(N, dtype=np.int16)

    def block(k: int) -> SampleBlock:
        return SampleBlock(k * N, counts, np.ones(N), 0.0, 30.0, 0.0, 0)

    k = 0
    for _ in range(hold_blocks - 1):
        assert sup.check_backlog(k * BLOCK_S, block(k), over) is None
        k += 1
    assert sup.check_backlog(k * BLOCK_S, block(k), 0) is None  # caught up: a new count
    k += 1
    for _ in range(hold_blocks - 1):
        assert sup.check_backlog(k * BLOCK_S, block(k), over) is None
        k += 1
    trip = sup.check_backlog(k * BLOCK_S, block(k), over)
    assert trip is not None
    assert trip.reason is TripReason.HOST_TOO_SLOW
    assert trip.values["behind_s"] == pytest.approx(over * BLOCK_S)
    assert trip.values["held_s"] == pytest.approx(LIMITS.host_backlog_hold_s)


@pytest.mark.parametrize(
    ("watchdog_s", "hold_s"), [(None, 0.3), (0.5, 0.3), (2.0, 0.3), (0.3, 0.12), (0.2, 0.03)]
)
def test_the_hold_keeps_limit_plus_hold_under_the_plates_watchdog(
    watchdog_s: float | None, hold_s: float
) -> None:
    """The protocol allows watchdog_ms 200-2000: a plate with a short watchdog gets a shorter
    hold (limit + hold within 90% of its watchdog), so the host's soft stop comes first; a
    long one keeps the limits' hold. The trip comes after that many blocks over the limit."""
    sup = SafetySupervisor(LIMITS, FS, N, watchdog_s)
    assert sup.backlog_hold_s == pytest.approx(hold_s, abs=1e-9)
    if watchdog_s is not None:
        assert LIMITS.host_backlog_s + sup.backlog_hold_s <= 0.9 * watchdog_s + 1e-9
    over = int(LIMITS.host_backlog_s / BLOCK_S) + 1
    counts = np.zeros(N, dtype=np.int16)
    k = 0
    while sup.check_backlog(k * BLOCK_S, _block_at(k, counts), over) is None:
        k += 1
        assert k < 100
    assert k * BLOCK_S == pytest.approx(hold_s, abs=BLOCK_S)


def _block_at(k: int, counts: np.ndarray[tuple[int], np.dtype[np.int16]]) -> SampleBlock:
    return SampleBlock(k * N, counts, np.ones(N), 0.0, 30.0, 0.0, 0)


@pytest.mark.slow
def test_a_host_steadily_slower_than_the_plate_is_stopped_softly_as_too_slow(
    tmp_path: Path,
) -> None:
    """From 10 s at dose the host runs at about 0.75x of the plate: the session ends within
    a bounded time as ``host_too_slow`` (not as the plate's watchdog), the plate ramps down
    over the normal 1 s, the record keeps no more dose than the truth shows, and the patient
    reads that this computer was too busy."""
    onset, stall = slow_from_10_s_at_dose(SLOW_STALL_S)
    run = slow_session(tmp_path, stall)
    truth, rec = run.truth, run.record
    assert onset, "the host was never made slow"
    assert "fault:HOST_WATCHDOG" not in truth.events, truth.events
    assert rec.status is SessionStatus.TRIPPED, rec.reason
    event = rec.safety_events[0]
    assert event["reason"] == "host_too_slow", rec.safety_events
    assert event["values"]["behind_s"] > LIMITS.host_backlog_s
    assert event["values"]["held_s"] >= LIMITS.host_backlog_hold_s
    # stopped within a bounded time of the host turning slow (the plate's own clock)
    zero_s = truth.zero_drive_s
    assert zero_s - truth.output_start_s - onset[0] <= STOPPED_WITHIN_S
    # softly: the plate came down over the normal ramp-down (1 s), not the 0.25 s trip ramp
    # nor cut short by an output switched off early (its 0.2 s stop ramp)
    assert descent_s(truth) == pytest.approx(0.8 * LIMITS_RAMP_DOWN_S, abs=0.03)
    # the dose it keeps is dose the plate delivered, and it kept what came before the stop
    assert ONSET_AT_DOSE_S <= rec.minutes_at_dose * 60.0 <= delivered_s(truth)
    assert run.outcome.message == outcome_sentence(
        "tripped", rec.reason, rec.minutes_at_dose, "host_too_slow"
    )
    assert run.outcome.message.startswith(say("outcome.trip.host"))


@pytest.mark.slow
def test_a_host_at_a_third_of_the_plates_pace_still_ramps_the_plate_down_over_1_s(
    tmp_path: Path,
) -> None:
    """At about 0.33x (a 0.2 s stall per 0.1 s update) the host is 0.3-1 s behind when it
    trips: the ramp-down is timed on the plate's clock, not on the newest block decoded, so
    the output is not switched off while the plate is still high (the truth's descent: before
    the fix the last half or more of the drive went in the plate's 0.2 s stop ramp)."""
    run = slow_session(tmp_path, slow_from_10_s_at_dose(0.2)[1])
    rec = run.record
    assert "fault:HOST_WATCHDOG" not in run.truth.events, run.truth.events
    assert rec.safety_events[0]["reason"] == "host_too_slow", rec.safety_events
    assert descent_s(run.truth) == pytest.approx(0.8 * LIMITS_RAMP_DOWN_S, abs=0.03)


@pytest.mark.slow
def test_a_watchdog_fault_met_in_the_soft_stop_after_host_too_slow_is_recorded(
    tmp_path: Path,
) -> None:
    """At about 0.25x (a 0.3 s stall per 0.1 s update) the plate's watchdog fires while the
    host is behind, and host_too_slow usually trips on blocks older than the plate's FAULT,
    which the soft stop then reads: the record names the fault (the truth shows the watchdog
    fired), never host_too_slow alone. Before, the fault only reached a log warning."""
    run = slow_session(tmp_path, slow_from_10_s_at_dose(0.3)[1])
    rec = run.record
    assert "fault:HOST_WATCHDOG" in run.truth.events, run.truth.events
    reasons = [e["reason"] for e in rec.safety_events]
    assert rec.status is SessionStatus.TRIPPED, rec.reason
    assert "device_fault" in reasons, rec.safety_events
    fault = next(e for e in rec.safety_events if e["reason"] == "device_fault")
    assert "watchdog" in fault["detail"], fault


@pytest.mark.slow
def test_one_stall_under_the_watchdog_does_not_stop_the_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A single 0.3 s stall at dose puts the host 0.3 s behind, above host_backlog_s, but it
    catches up within the hold: the session runs on at dose (until the patient stops it 3 s
    later), and the engineer's log notes how far behind it fell."""
    caplog.set_level(logging.INFO, logger="controller.safety")
    stalled_at: list[float] = []

    def once_at_dose(p: Progress) -> float:
        if stalled_at:
            if p.elapsed_s - stalled_at[0] >= 3.0:
                raise StopRequest(STOP_CTRL_C)
            return 0.0
        if p.state.startswith("at dose") and p.at_dose_s >= ONSET_AT_DOSE_S:
            stalled_at.append(p.elapsed_s)
            return 0.3
        return 0.0

    # speed 3: a loaded machine's hiccups on top of the stall stay well inside the hold
    run = slow_session(tmp_path, once_at_dose, speed="3")
    rec = run.record
    assert run.stalls == 1
    assert rec.status is SessionStatus.STOPPED_BY_PATIENT, rec.reason
    assert rec.reason == STOP_CTRL_C
    assert not [e for e in rec.safety_events if e["reason"] == "host_too_slow"]
    assert "fault:HOST_WATCHDOG" not in run.truth.events
    # it went on at dose after the stall: the dose clock ran on (about 3 s more)
    assert rec.minutes_at_dose * 60.0 >= ONSET_AT_DOSE_S + 2.0
    assert rec.minutes_at_dose * 60.0 <= delivered_s(run.truth)
    notes = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"fell (\d+\.\d+) s behind the plate", r.getMessage()))
    ]
    assert notes, "the log does not say the host fell behind"
    assert max(notes) > LIMITS.host_backlog_s


def test_the_patient_reads_that_the_computer_was_too_busy() -> None:
    """Plain words: what happened (this computer could not keep up), what was done (stopped
    safely), what to do next (close other programs, start again), and the time counted."""
    text = outcome_sentence("tripped", "whatever the record says", 4.5, "host_too_slow")
    assert text == (
        "The plate stopped safely because this computer was too busy to keep up with it. "
        "4 minutes counted. Close the other programs on this computer, then run liv "
        "start again; if it stops again, call your clinic."
    )
