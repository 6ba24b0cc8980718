"""A plate that has been running for a long time before the host connects.

``liv sim serve --tcp`` in its own process, its plate up for a week when it starts serving
(``uptime_s``: its sample index near 10^9, its sequence numbers wrapped many times, its coil
cooled to ambient) and left alone a moment before ``liv start`` connects, as a plate on a
serial server is. The session runs through the public command line in a subprocess and is
judged from the simulator's truth file: a soft start from rest (never a step), the whole dose,
no fault, and a record that claims no more than the plate delivered.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from controller.calibration import CalibrationStore, identify
from firmware_bridge.client import DeviceClient
from tests.simhelpers import sim_served
from tests.test_fault_matrix import REPO, Truth, make_home, records

SPEED = 5.0
WEEK_S = 7 * 24 * 3600.0
DEVICE_ID = "SIM-UP"
TARGET_G = 0.3


@contextlib.contextmanager
def served_tcp(truth_path: Path, uptime_s: float) -> Iterator[str]:
    url = (
        f"sim://?mass=70&seed=6&device_id={DEVICE_ID}&uptime_s={uptime_s:g}"
        f"&speed={SPEED:g}&truth={truth_path}"
    )
    with sim_served(["--tcp", "127.0.0.1:0"], url) as address:
        assert address.startswith("socket://"), address
        yield address


@pytest.mark.slow
def test_a_session_on_a_plate_up_for_a_week_starts_softly_and_delivers_its_dose(
    tmp_path: Path,
) -> None:
    home = make_home(tmp_path)
    calibration = tmp_path / "calibration"
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
        CalibrationStore(calibration).save(identify(device))
    truth_path = tmp_path / "truth.npz"
    with served_tcp(truth_path, WEEK_S) as address:
        time.sleep(1.0)  # 5 s of plate time with nobody connected
        done = subprocess.run(
            [sys.executable, "-m", "sessions.cli", "start", "--device", address,
             "--home", str(home.root), "--calibration-dir", str(calibration)],
            capture_output=True, text=True, cwd=REPO, timeout=110, check=False,
        )  # fmt: skip
        time.sleep(0.2)
    assert "Traceback" not in done.stdout + done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    truth = Truth.load(truth_path)
    assert not truth.events, truth.events
    assert int(truth.raw["sample_index"][-1]) > WEEK_S * 1600
    (record,) = records(home)
    assert record.minutes_at_dose == pytest.approx(1.0)

    # a soft start: the drive rises over the ramp from zero, never in a step
    start_s = truth.output_start_s
    assert start_s > WEEK_S + 5.0
    drive = np.abs(truth.drive)
    on = truth.t_s >= start_s
    first = np.flatnonzero(on)[0]
    assert drive[first - 1] == 0.0
    steady = float(np.median(drive[(truth.t_s > start_s + 5.0) & (truth.t_s < start_s + 50.0)]))
    reached = truth.t_s[np.flatnonzero(on & (drive >= 0.95 * steady))[0]] - start_s
    assert 1.5 <= reached <= 2.6, f"the drive reached 95% of its hold {reached:.2f} s after onset"
    # the whole dose, and the record claims no more than the truth shows
    delivered = truth.at_dose_s(TARGET_G, start_s, truth.zero_drive_s)
    assert delivered >= record.minutes_at_dose * 60.0
