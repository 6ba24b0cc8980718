"""A dead host must not lock the patient out: latched plate faults and who may clear them.

The plate latches its host-watchdog fault when the host is killed or frozen mid-session.
docs/safety.md ("Clearing latched faults"): the next session clears it, after STATUS shows the
drive at zero and the output off, and says so in its record; a fault that points at the
hardware is refused with one sentence and nothing is recorded as if therapy ran.
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

from controller.calibration import CalibrationStore, identify
from controller.faults import (
    CALL_SERVICE,
    COIL_CLEAR_MAX_C,
    FAULT_RULES,
    PlateFaultLatchedError,
    clear_latched_fault,
    rule_for,
)
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import DeviceFaultError
from firmware_bridge.protocol import FaultCode
from sessions.cli import main
from sessions.log import SessionStatus
from tests.simhelpers import wait_for_line
from tests.test_fault_matrix import (
    DEVICE_ID,
    REPO,
    Truth,
    assert_one_sentence,
    finish,
    liv_start,
    liv_verify,
    make_home,
    records,
    served_plate,
    session_process,
    wait_at_dose,
)

SPEED = 5.0  # the served plate at 5x real time: a 1-minute session in about 13 s


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The empty plate calibrated once (the device id the served plates use)."""
    directory = tmp_path_factory.mktemp("calibration")
    with DeviceClient.open(f"sim://?mass=0&seed=1&device_id={DEVICE_ID}") as device:
        CalibrationStore(directory).save(identify(device))
    return directory


def test_a_killed_liv_start_leaves_a_plate_the_next_start_can_use(
    tmp_path: Path,
    calibration_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = make_home(tmp_path)
    with served_plate(tmp_path, speed=SPEED) as plate:
        proc = session_process(home, calibration_dir, plate.device)
        try:
            wait_at_dose(home, proc)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            finish(proc)
        time.sleep(1.0)  # 10 s of plant time: the watchdog has long fired and latched
        capsys.readouterr()
        code = liv_start(home, calibration_dir, plate.device)  # the same plate, not a new one
        out, err = capsys.readouterr()
        time.sleep(0.2)
    truth = Truth.load(plate.truth_path)

    # the plate latched its watchdog fault once, and drove again after it was cleared
    assert "fault:HOST_WATCHDOG" in truth.events
    watchdog_s = truth.events["fault:HOST_WATCHDOG"]
    later = truth.t_s > watchdog_s + 1.0
    assert np.max(np.abs(truth.drive[later])) > 0.0, "the plate never ran again"
    assert truth.drive[-1] == 0.0

    assert code == 0, out + err
    assert_one_sentence(out, err, "Session complete, ")
    killed, resumed = records(home)
    assert killed.status is SessionStatus.INTERRUPTED
    assert resumed.status is SessionStatus.COMPLETED
    assert resumed.resumed_from == killed.session_id
    assert resumed.minutes_at_dose > 0.0
    cleared = resumed.safety_events[0]
    assert cleared["reason"] == "fault_cleared"
    assert cleared["fault"] == "HOST_WATCHDOG"
    assert cleared["values"]["drive"] == 0.0
    assert cleared["values"]["target_drive"] == 0.0
    assert cleared["values"]["output_on"] is False
    assert "drive 0" in cleared["detail"]
    liv_verify(home, capsys)


def test_liv_run_after_a_killed_liv_run_clears_the_watchdog_fault(
    tmp_path: Path, calibration_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def liv_run(device: str, seconds: float) -> list[str]:
        return ["run", "--engineer", "--device", device, "--freq", "45",
                "--seconds", f"{seconds:g}", "--calibration-dir", str(calibration_dir)]  # fmt: skip

    with served_plate(tmp_path, speed=SPEED) as plate:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessions.cli", "-v", *liv_run(plate.device, 60)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        try:
            # Wait for the exposure itself (start-up may take seconds on a loaded machine), then
            # let some 5 s of plate time run into the hold before the kill.
            assert wait_for_line(proc, "exposure started", timeout_s=60.0), proc.communicate()
            time.sleep(1.0)
            assert proc.poll() is None, proc.communicate()
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            finish(proc)
        time.sleep(0.5)
        capsys.readouterr()
        code = main(liv_run(plate.device, 2))
        out, err = capsys.readouterr()
        time.sleep(0.2)
    truth = Truth.load(plate.truth_path)
    assert "fault:HOST_WATCHDOG" in truth.events
    assert code == 0, out + err
    assert "cleared fault     HOST_WATCHDOG latched before the run (plate at rest)" in out
    assert "outcome           completed" in out
    later = truth.t_s > truth.events["fault:HOST_WATCHDOG"] + 1.0
    assert np.max(np.abs(truth.drive[later])) > 0.0, "the plate never ran again"


def test_a_hot_coil_is_not_cleared_and_the_patient_is_told_to_let_it_cool() -> None:
    with DeviceClient.open("sim://?coil_temp_c=130&speed=max&device_id=SIM-HOT") as device:
        device.start_output()
        with pytest.raises(DeviceFaultError) as tripped:
            device.read_for(1.0)
        assert tripped.value.code == FaultCode.COIL_OVERTEMP
        device.read_for(0.5)  # the firmware's own ramp to zero
        with pytest.raises(PlateFaultLatchedError) as refused:
            clear_latched_fault(device)
        status = device.request_status()
    assert status.fault_code == FaultCode.COIL_OVERTEMP, "the host cleared a hot coil"
    assert status.coil_temperature_c is not None
    assert status.coil_temperature_c > COIL_CLEAR_MAX_C
    assert refused.value.name == "COIL_OVERTEMP"
    assert not refused.value.needs_person
    sentence = str(refused.value)
    assert "too hot" in sentence
    assert sentence.endswith(".")


def test_a_fault_the_host_may_not_clear_refuses_liv_start_and_records_nothing(
    tmp_path: Path,
    calibration_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A hot coil latched by one start: the next start is refused, and not logged as therapy."""
    home = make_home(tmp_path)
    with served_plate(tmp_path, speed=SPEED, extra="coil_temp_c=130") as plate:
        assert liv_start(home, calibration_dir, plate.device) == 1  # trips at once: too hot
        (tripped,) = records(home)
        assert tripped.status is SessionStatus.TRIPPED
        capsys.readouterr()
        code = liv_start(home, calibration_dir, plate.device)
        out, err = capsys.readouterr()
    assert code == 1
    sentence = assert_one_sentence(out, err, "liv: The plate got too hot;")
    assert "cool" in sentence
    assert records(home) == [tripped], "a refused start was recorded as a session"
    liv_verify(home, capsys)


def test_the_policy_table_lets_the_host_clear_only_what_a_quiet_host_or_heat_explains() -> None:
    clearable = {FaultCode(code).name for code, rule in FAULT_RULES.items() if rule.host_may_clear}
    assert clearable == {"HOST_WATCHDOG", "COIL_OVERTEMP"}
    for code in (FaultCode.AMPLIFIER, FaultCode.SENSOR, FaultCode.INTERNAL, 99):
        rule = rule_for(code)
        assert not rule.host_may_clear
        assert rule.patient_sentence == CALL_SERVICE
