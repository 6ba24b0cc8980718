"""A plate that was up for minutes before the host came, and that survived a killed host.

The plate is served by ``liv sim serve --pty`` in its own process, up for five minutes of
plate time when it starts serving (``uptime_s``) and left alone a moment before the first host
connects, so its clock, sequence numbers and backlog are far from a fresh boot's. ``liv start``
runs in a subprocess, as the patient's terminal runs it, and is killed with SIGKILL at dose; the
plate's watchdog ramps down and latches its fault. The next ``liv start`` talks to the same
running plate: it clears the latched fault, records the killed session as interrupted with no
more dose than the truth file shows delivered, has the plate countersign that interrupted
record, and resumes the slot to the full dose (truth) with a record the plate vouches for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from controller.calibration import CalibrationStore
from controller.faults import LEFT_RUNNING_RAMP_S, stop_plate_left_running
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import DeviceFaultError
from firmware_bridge.protocol import DeviceState
from sessions.log import SessionLog, SessionStatus
from sessions.runner import Progress, StopRequest, run_session
from sessions.stops import STOP_CTRL_C
from tests.simhelpers import calibrate_empty_plate
from tests.test_fault_matrix import (
    DEVICE_ID,
    REPO,
    Truth,
    finish,
    make_home,
    records,
    served_plate,
    session_process,
    wait_at_dose,
)

SPEED = 5.0  # the served plate at 5x real time
UPTIME_S = 300.0
TARGET_G = 0.3


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The empty plate calibrated once (the device id the served plates use)."""
    return calibrate_empty_plate(tmp_path_factory.mktemp("calibration"), DEVICE_ID)


def liv(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessions.cli", *argv],
        capture_output=True, text=True, cwd=REPO, timeout=110, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_a_plate_up_for_minutes_survives_a_killed_host_and_vouches_for_the_interrupted_record(
    tmp_path: Path, calibration_dir: Path
) -> None:
    home = make_home(tmp_path)
    cal = ["--home", str(home.root), "--calibration-dir", str(calibration_dir)]
    with served_plate(tmp_path, speed=SPEED, extra=f"uptime_s={UPTIME_S:g}") as plate:
        time.sleep(0.5)  # nobody connected yet: the plate runs on and its output queues
        proc = session_process(home, calibration_dir, plate.device)
        try:
            wait_at_dose(home, proc)
            time.sleep(0.6)  # about 3 s of plate time further into the hold
            kill = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            code, _, _ = finish(proc)
        assert code == -signal.SIGKILL
        time.sleep(0.5)  # 2.5 s of plate time: the watchdog has fired and latched its fault
        second = liv("start", "--device", plate.device, *cal)
        with SessionLog(home.db_path(), read_only=True) as log:  # before verify could vouch
            vouched = [log.vouch_text(s.session_id) for s in log.sessions()]
        time.sleep(0.2)
        verify = liv("verify", "--device", plate.device, "--home", str(home.root))
    truth = Truth.load(plate.truth_path)
    kill_s = plate.plant_s(kill) + UPTIME_S  # plant_s counts from when the server started

    # the plate's clock was far from zero when the host first came; the plate stopped itself
    # after the kill and drove again only for the resumed session
    assert truth.output_start_s > UPTIME_S
    watchdog_s = truth.events["fault:HOST_WATCHDOG"]
    assert watchdog_s > truth.output_start_s
    assert truth.drive_at(watchdog_s - 0.05) > 0.0
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    later = truth.t_s > watchdog_s + 1.0
    assert np.max(np.abs(truth.drive[later])) > 0.0, "the plate never ran again"

    killed, resumed = records(home)
    # the killed session: interrupted, with no more than the truth shows delivered by the time
    # the plate stopped itself (a kill loses at most a checkpoint's worth, never adds)
    assert killed.status is SessionStatus.INTERRUPTED
    delivered_before_kill_s = truth.at_dose_s(TARGET_G, truth.output_start_s, watchdog_s)
    assert 0.0 < killed.minutes_at_dose * 60.0 <= delivered_before_kill_s
    assert abs(kill_s - watchdog_s) < 1.0  # the mapping of wall to plate time holds
    # the resumed session completes the slot; together the truth shows the whole dose
    assert resumed.status is SessionStatus.COMPLETED
    assert resumed.resumed_from == killed.session_id
    assert resumed.safety_events[0]["reason"] == "fault_cleared"
    total_s = (killed.minutes_at_dose + resumed.minutes_at_dose) * 60.0
    assert total_s == pytest.approx(60.0, abs=1e-6)
    assert truth.at_dose_s(TARGET_G, truth.output_start_s, float(truth.t_s[-1])) >= total_s

    # the plate countersigned the interrupted record at the next connection, and the resumed
    # one at its end: the whole log is vouched for by the plate
    assert len(vouched) == 2
    for text in vouched:
        assert text.startswith("vouched for by the plate"), text
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "every chain intact" in verify.stdout


@pytest.mark.slow
def test_a_start_right_after_a_host_died_stops_the_running_plate_softly_first(
    tmp_path: Path, calibration_dir: Path
) -> None:
    """The host died with the plate at dose and the next start came before the plate's
    watchdog fired (a start right after a crash, or a service that restarts the program): the
    plate is still running the dead host's drive, with no fault latched. The new session must
    not take the moving plate for a broken sensor (its resting check) nor leave it running
    meanwhile: it brings the plate softly to rest, says so in the record, and runs."""
    home = make_home(tmp_path)
    with served_plate(tmp_path, speed=1.0) as plate:
        dead = DeviceClient.open(plate.device)
        dead.start_output()
        dead.set_drive(0.12, 0.5)
        dead.read_for(1.0)  # the plate at a steady drive
        dead.port.close()  # the host dies: no stop, no more heartbeats
        died = time.monotonic()
        at_dose = [0.0]

        def step_off_after_some_dose(p: Progress) -> None:
            at_dose[0] = p.at_dose_s
            if p.at_dose_s >= 2.0:
                raise StopRequest(STOP_CTRL_C)

        with SessionLog(home.db_path()) as log:
            outcome = run_session(
                protocol=home.protocol(), log=log, device_url=plate.device,
                calibrations=CalibrationStore(calibration_dir),
                on_progress=step_off_after_some_dose, demo=True,
            )  # fmt: skip
        time.sleep(0.2)
    truth = Truth.load(plate.truth_path)
    died_s = plate.plant_s(died)
    assert "fault:HOST_WATCHDOG" not in truth.events, "the start came too late for this test"
    record = outcome.record
    # the plate was found running and brought to rest before the session, softly
    first = record.safety_events[0]
    assert first["reason"] == "plate_left_running", record.safety_events
    assert first["values"]["drive"] == pytest.approx(0.12, abs=1e-3)
    assert first["values"]["output_on"] is True
    still = np.flatnonzero((truth.t_s > died_s) & (np.abs(truth.drive) == 0.0))
    rest_s = float(truth.t_s[still[0]])
    assert rest_s - died_s < 2.5  # the dead host's drive did not run on for long
    fs = float(truth.raw["sample_rate_hz"])
    assert np.max(-np.diff(truth.drive[truth.t_s < rest_s + 0.1])) <= 0.12 / (0.5 * fs)
    # then the session ran from rest: its own soft start, time at dose, the patient's stop
    again = np.flatnonzero((truth.t_s > rest_s) & (np.abs(truth.drive) > 0.0))
    session_on_s = float(truth.t_s[again[0]])
    assert session_on_s - rest_s > 0.2  # at rest for the sensor check in between
    assert at_dose[0] >= 2.0
    assert record.status is SessionStatus.STOPPED_BY_PATIENT, record.reason
    assert (
        0.0
        < record.minutes_at_dose * 60.0
        <= truth.at_dose_s(TARGET_G, session_on_s, float(truth.t_s[-1]))
    )


def plate_with_truth(tmp_path: Path) -> tuple[DeviceClient, Path]:
    truth_path = tmp_path / "truth.npz"
    device = DeviceClient.open(
        f"sim://?speed=max&mass=70&seed=3&device_id={DEVICE_ID}&truth={truth_path}"
    )
    return device, truth_path


def no_wait(_: float) -> None:
    """At speed=max the plate moves on with every STATUS asked for: no need to sleep."""


def test_a_plate_left_running_is_ramped_down_over_a_second_and_switched_off(
    tmp_path: Path,
) -> None:
    device, truth_path = plate_with_truth(tmp_path)
    with device:
        device.start_output()
        device.set_drive(0.1, 0.3)
        device.read_for(1.0)  # an earlier host's session, at a steady drive
        stopped = stop_plate_left_running(device, sleep=no_wait)
        after = device.request_status()
        tail = device.read_for(0.3)
    assert stopped is not None
    assert stopped.drive == pytest.approx(0.1, abs=1e-3)
    assert stopped.to_event()["reason"] == "plate_left_running"
    assert not after.output_on
    assert after.drive_q16 == 0
    assert all(b.drive == 0.0 for b in tail), "blocks of the moving plate were left to read"
    truth = Truth.load(truth_path)
    fs = float(truth.raw["sample_rate_hz"])
    moving = np.flatnonzero(np.abs(truth.drive) > 0.0)
    ramp = truth.drive[truth.t_s > 1.0]
    # a soft ramp down: never faster than the drive over LEFT_RUNNING_RAMP_S
    assert float(np.max(-np.diff(ramp))) <= 1.01 * 0.1 / (LEFT_RUNNING_RAMP_S * fs)
    ramp_s = float(truth.t_s[moving[-1]]) - float(
        truth.t_s[np.flatnonzero((truth.t_s > 1.0) & (truth.drive < 0.0999))[0]]
    )
    assert ramp_s == pytest.approx(LEFT_RUNNING_RAMP_S, abs=0.05)


def test_a_plate_finishing_its_own_stop_is_waited_for_not_reported(tmp_path: Path) -> None:
    device, _ = plate_with_truth(tmp_path)
    with device:
        device.start_output()
        device.set_drive(0.1, 0.3)
        device.read_for(1.0)
        device.stop_output()  # the last session's end: the plate ramps down by itself
        assert device.request_status().state == DeviceState.STOPPING
        stopped = stop_plate_left_running(device, sleep=no_wait)
        after = device.request_status()
    assert stopped is None
    assert not after.output_on
    assert after.drive_q16 == 0


def test_a_plate_at_rest_or_with_a_fault_is_left_alone() -> None:
    with DeviceClient.open(f"sim://?speed=max&device_id={DEVICE_ID}") as device:
        assert stop_plate_left_running(device, sleep=no_wait) is None
        device.read_for(0.5)  # nobody talks: the plate would latch its watchdog if it ran
    with DeviceClient.open(f"sim://?speed=max&device_id={DEVICE_ID}&coil_temp_c=130") as device:
        device.start_output()
        with pytest.raises(DeviceFaultError):
            device.read_for(1.0)
        assert stop_plate_left_running(device, sleep=no_wait) is None  # the firmware's own ramp
