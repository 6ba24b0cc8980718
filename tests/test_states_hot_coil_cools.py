"""A coil that tripped hot, then cooled: the patient is refused while it is hot, never locked out.

The plate is served by ``liv sim serve --pty`` in its own process and keeps its own clock and
coil temperature between the patient's attempts. Its coil starts at 160 C, over the 120 C
trip, so the first ``liv start`` trips COIL_OVERTEMP; the next is refused with the cool-down
sentence while the coil is above 90 C (docs/safety.md section 8); once the plate has cooled,
``liv start`` clears the latched fault and runs the session to its full dose (truth file). The
coil here sheds heat faster than the default one (a smaller thermal capacity: time constant
40 s instead of 20 minutes) so that the cooling takes seconds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from controller.calibration import CalibrationStore, identify
from controller.faults import COIL_CLEAR_MAX_C
from firmware_bridge.client import DeviceClient
from sessions.log import SessionStatus
from tests.test_fault_matrix import DEVICE_ID, REPO, Truth, make_home, records, served_plate

SPEED = 6.0
HOT_C = 160.0
COOL_AT_S = 31.0  # plate time by which the coil has cooled below 90 C (time constant 40 s)


def liv_start(home_root: Path, calibration: Path, device: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessions.cli", "start", "--device", device,
         "--home", str(home_root), "--calibration-dir", str(calibration)],
        capture_output=True, text=True, cwd=REPO, timeout=110, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_a_coil_that_tripped_hot_refuses_until_cool_then_the_session_runs(tmp_path: Path) -> None:
    calibration = tmp_path / "calibration"
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
        CalibrationStore(calibration).save(identify(device))
    fast_coil = tmp_path / "fast-coil.yaml"
    fast_coil.write_text(
        "thermal:\n  thermal_resistance_k_per_w: 4.0\n  thermal_capacity_j_per_k: 10.0\n",
        encoding="utf-8",
    )
    home = make_home(tmp_path)
    with served_plate(
        tmp_path, speed=SPEED, extra=f"coil_temp_c={HOT_C:g}&profile={fast_coil}"
    ) as plate:
        tripped = liv_start(home.root, calibration, plate.device)
        refused = liv_start(home.root, calibration, plate.device)
        refused_at = time.monotonic()
        # wait for the coil to cool below the clearing temperature
        time.sleep(max(0.0, (COOL_AT_S - plate.plant_s(time.monotonic())) / SPEED))
        cooled = liv_start(home.root, calibration, plate.device)
        time.sleep(0.2)
    truth = Truth.load(plate.truth_path)
    for done in (tripped, refused, cooled):
        assert "Traceback" not in done.stdout + done.stderr

    # 1: tripped at once, recorded with the firmware's reason
    assert tripped.returncode == 1
    first, *rest = records(home)
    assert first.status is SessionStatus.TRIPPED
    assert "COIL_OVERTEMP" in first.reason or "temperature" in first.reason, first.reason
    # 2: refused while hot, with the sentence to let it cool, and nothing recorded for it
    assert refused.returncode == 1
    assert "cool" in refused.stderr, refused.stderr
    coil = truth.raw["coil_temp_c"]
    block_t = truth.raw["block_t_s"]
    assert float(np.interp(plate.plant_s(refused_at), block_t, coil)) > COIL_CLEAR_MAX_C
    # 3: once cool, the fault is cleared and the session runs to its full dose (truth)
    assert cooled.returncode == 0, cooled.stdout + cooled.stderr
    (second,) = rest
    assert second.status is SessionStatus.COMPLETED
    assert second.safety_events[0]["reason"] == "fault_cleared"
    assert second.safety_events[0]["fault"] == "COIL_OVERTEMP"
    assert second.safety_events[0]["values"]["coil_temp_c"] <= COIL_CLEAR_MAX_C
    assert second.resumed_from == first.session_id
    driven_again = (truth.t_s > plate.plant_s(refused_at)) & (np.abs(truth.drive) > 0)
    start_s = float(truth.t_s[np.flatnonzero(driven_again)[0]])
    assert float(np.max(coil[block_t > start_s])) < 120.0  # the session did not trip it again
    assert truth.at_dose_s(0.3, start_s, truth.zero_drive_s) >= second.minutes_at_dose * 60.0
    assert second.minutes_at_dose == pytest.approx(1.0 - first.minutes_at_dose)
