"""A slow computer: the host is late on some blocks while the plate keeps its own clock.

The plate runs in real time (here 3-6x real time, in process: ``sim://?speed=6`` advances with
the wall clock whether or not the host reads, as a plate on a wire does), and the session's
progress display, the hook the runner calls on every update, stalls the loop now and then, as
a busy second core or a slow terminal does. Judged from the simulator's truth file: the session
is never credited with time at dose the plate did not deliver, and every stop carries its true
reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from sessions.home import LivHome
from sessions.log import SessionLog, SessionRecord, SessionStatus
from sessions.runner import Progress, SessionOutcome, StopRequest, run_session
from sessions.stops import STOP_CTRL_C
from sessions.wording import say
from tests.simhelpers import install_signed
from tests.test_fault_matrix import DOSE_TOLERANCE, WATCHDOG_S, Truth

SPEED = 6.0  # plate seconds per wall second: a 1-minute session in about 11 s
DEVICE_ID = "SIM-SLOW"
TARGET_G = 0.3
# One stall: at most this long in plate time, under the plate's 0.5 s watchdog with room for
# the heartbeat period and scheduling on a busy machine.
SHORT_STALL_S = 0.25
LONG_STALL_S = 1.5  # three times the watchdog


@dataclass
class SlowRun:
    outcome: SessionOutcome
    truth: Truth
    stalls: int

    @property
    def record(self) -> SessionRecord:
        return self.outcome.record


def slow_session(
    tmp_path: Path, stall: Callable[[Progress], float], speed: str = f"{SPEED:g}"
) -> SlowRun:
    """One 1-minute session on a plate paced at ``speed``; ``stall`` says how long (plate s)
    the hook sleeps at each progress call."""
    home = LivHome(tmp_path / "home")
    home.ensure()
    (home.root / "DEMO").write_text("demo\n")  # simulated sessions count (schedule end to end)
    protocol = install_signed(home, minutes_per_session=1, target_g=TARGET_G)
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
        home.calibrations().save(identify(device))
    truth_path = tmp_path / "truth.npz"
    url = f"sim://?speed={speed}&mass=70&seed=2&device_id={DEVICE_ID}&truth={truth_path}"
    stalls = 0

    def hook(progress: Progress) -> None:
        nonlocal stalls
        plate_s = stall(progress)
        if plate_s > 0.0:
            stalls += 1
            time.sleep(plate_s / float(speed))

    with SessionLog(home.db_path()) as log:
        outcome = run_session(
            protocol=protocol, log=log, device_url=url, calibrations=home.calibrations(),
            on_progress=hook, demo=True,
        )  # fmt: skip
    return SlowRun(outcome, Truth.load(truth_path), stalls)


def delivered_s(truth: Truth) -> float:
    """Seconds the plate truly held the target within the protocol's tolerance."""
    return truth.at_dose_s(TARGET_G, truth.output_start_s, float(truth.t_s[-1]))


@pytest.mark.slow
def test_a_host_late_on_some_blocks_is_credited_only_what_the_plate_delivered(
    tmp_path: Path,
) -> None:
    """Late by 0.25 s once a second of the hold (under the watchdog): the session completes,
    and the minutes it records are minutes the truth shows at dose."""
    next_stall = [3.0]

    def every_second(p: Progress) -> float:
        if p.state.startswith("at dose") and p.elapsed_s >= next_stall[0]:
            next_stall[0] = p.elapsed_s + 1.0
            return SHORT_STALL_S
        return 0.0

    run = slow_session(tmp_path, every_second, speed="4")  # a loaded machine's hiccups on top
    # of the stalls stay under the watchdog
    assert run.stalls >= 40, "the host was not made late"
    assert not run.truth.faults_before(float(run.truth.t_s[-1]) + 1.0), run.truth.events
    assert run.record.status is SessionStatus.COMPLETED, run.record.reason
    assert run.record.minutes_at_dose == pytest.approx(1.0)
    # never credited more than the plate delivered (the truth's in-band seconds include the
    # in-band ends of the ramps, which the dose clock does not count)
    assert run.record.minutes_at_dose * 60.0 <= delivered_s(run.truth)
    # and the late host still held the dose: the error the record states is the truth's
    assert run.record.p95_abs_error_pct is not None
    assert run.record.p95_abs_error_pct < 100 * DOSE_TOLERANCE


@pytest.mark.slow
def test_a_host_stalled_past_the_watchdog_at_dose_keeps_only_the_dose_before_it(
    tmp_path: Path,
) -> None:
    """A stall of 1.5 s at dose: the plate's watchdog stops it; the record says so, and keeps
    no more than what the truth shows delivered before the plate stopped."""
    done = [False]

    def once_at_dose(p: Progress) -> float:
        if not done[0] and p.state.startswith("at dose") and p.at_dose_s >= 10.0:
            done[0] = True
            return LONG_STALL_S
        return 0.0

    run = slow_session(tmp_path, once_at_dose)
    truth = run.truth
    assert "fault:HOST_WATCHDOG" in truth.events
    rec = run.record
    assert rec.status is SessionStatus.TRIPPED
    assert "watchdog" in rec.reason
    assert rec.safety_events[0]["reason"] == "device_fault"
    assert 10.0 <= rec.minutes_at_dose * 60.0 <= delivered_s(truth)
    assert truth.zero_drive_s - truth.events["fault:HOST_WATCHDOG"] < 0.5
    assert truth.events["fault:HOST_WATCHDOG"] - truth.output_start_s >= WATCHDOG_S


@pytest.mark.slow
def test_a_stall_in_the_ramp_down_after_the_full_dose_leaves_a_completed_session(
    tmp_path: Path,
) -> None:
    """The dose is delivered and the plate is ramping down when the computer stalls past the
    watchdog: the plate finishes the stop itself. The session is complete (the truth shows the
    full dose), so it is recorded and told as completed, with the plate's stop kept as a safety
    event; not as a trip that sends the patient to check the cable and start again."""
    done = [False]

    def once_stopping(p: Progress) -> float:
        if not done[0] and p.state == "stopping" and p.at_dose_s >= 60.0:
            done[0] = True
            return LONG_STALL_S
        return 0.0

    run = slow_session(tmp_path, once_stopping)
    truth = run.truth
    assert run.stalls == 1
    assert "fault:HOST_WATCHDOG" in truth.events
    assert delivered_s(truth) >= 60.0
    rec = run.record
    assert rec.minutes_at_dose == pytest.approx(1.0)
    assert rec.status is SessionStatus.COMPLETED, rec.reason
    assert rec.reason.startswith("prescribed minutes at dose delivered")
    assert "watchdog" in rec.reason  # the ramp-down's end is told as it happened
    events = [e for e in rec.safety_events if e["reason"] == "device_fault"]
    assert len(events) == 1
    assert "watchdog" in events[0]["detail"]
    assert run.outcome.message == say("outcome.completed")


def test_ctrl_c_while_the_plate_comes_down_after_the_full_dose_leaves_a_completed_session(
    tmp_path: Path,
) -> None:
    """Ctrl-C in the last second, when the display already says the plate is stopping: the
    dose was delivered (truth), so the session is complete; the stop is in its reason."""
    pressed = [False]

    def ctrl_c_while_stopping(p: Progress) -> float:
        if not pressed[0] and p.state == "stopping" and p.at_dose_s >= 60.0:
            pressed[0] = True
            raise KeyboardInterrupt
        return 0.0

    run = slow_session(tmp_path, ctrl_c_while_stopping, speed="max")
    assert pressed[0]
    assert delivered_s(run.truth) >= 60.0
    rec = run.record
    assert rec.minutes_at_dose == pytest.approx(1.0)
    assert rec.status is SessionStatus.COMPLETED, rec.reason
    assert rec.reason.startswith("prescribed minutes at dose delivered")
    assert "Ctrl-C" in rec.reason
    assert run.outcome.message == say("outcome.completed")


def test_a_host_late_in_the_ramp_up_does_not_jolt_the_plate(tmp_path: Path) -> None:
    """A stall of 0.3 s (under the watchdog) half a second into the 2 s soft start: the ramp
    waits for the host instead of jumping to where it should have been. Judged from the
    truth's drive: no block rises by more than the ramp's own steepest step (about 3% of the
    hold drive per 20 ms block; before, about a quarter of the hold drive at once)."""
    first: list[float] = []
    stalled = [False]

    def late_in_the_ramp(p: Progress) -> float:
        first.append(p.elapsed_s)
        if p.elapsed_s - first[0] >= 6.0:
            raise StopRequest(STOP_CTRL_C)  # enough: the ramp is over
        if not stalled[0] and p.state == "ramping up" and p.elapsed_s - first[0] >= 0.5:
            stalled[0] = True
            return 0.3
        return 0.0

    run = slow_session(tmp_path, late_in_the_ramp, speed="3")  # slower: a loaded machine's
    # hiccups stay well under the watchdog on top of the stall
    assert stalled[0]
    truth = run.truth
    assert not truth.events, truth.events
    start_s = truth.output_start_s
    drive = truth.drive
    hold_drive = float(np.median(drive[(truth.t_s > start_s + 3.0) & (truth.t_s < start_s + 5.0)]))
    per_block = np.diff(drive[truth.t_s >= start_s][::32])  # one value per 20 ms block
    assert float(np.max(per_block)) <= 0.05 * hold_drive, (
        f"the drive rose {float(np.max(per_block)) / hold_drive:.0%} of its hold in one block"
    )
    # the ramp still ends and the dose is counted only once the plate is truly at it
    rec = run.record
    assert rec.minutes_at_dose * 60.0 <= delivered_s(truth)
    assert rec.minutes_at_dose * 60.0 >= 1.0
