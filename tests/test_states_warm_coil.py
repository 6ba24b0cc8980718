"""A warm coil: the plate's coil still hot from a previous session when the next one starts.

The plate was calibrated cold (20 C); its coil is at 85 C when ``liv start`` opens it, just
under the temperature at which the host may clear an overtemperature fault (90 C,
docs/safety.md). Copper's resistance is then about 25% higher, so the same drive gives about a
fifth less acceleration, and the coil keeps heating during the session. ``liv start`` runs in
a subprocess as the patient runs it; the dose is judged from the simulator's truth file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from tests.simhelpers import (
    calibrate_empty_plate,
    enrol_home,
    load_truth,
    protocol_yaml,
    truth_amplitude,
    write_signed,
)
from tests.test_fault_matrix import DOSE_TOLERANCE, REPO, Truth

DEVICE_ID = "SIM-WARM"
WARM_C = 85.0


@pytest.fixture(scope="module")
def cold_calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return calibrate_empty_plate(tmp_path_factory.mktemp("calibration"), DEVICE_ID)


@pytest.mark.parametrize(
    ("mass_kg", "target_g", "freq_hz"),
    [(70.0, 0.3, 45.0), (150.0, 0.4, 30.0)],
    ids=["70kg-0.3g-45Hz", "150kg-0.4g-30Hz"],
)
def test_a_session_on_a_warm_coil_delivers_its_dose_by_the_truth(
    tmp_path: Path, cold_calibration: Path, mass_kg: float, target_g: float, freq_hz: float
) -> None:
    home, truth_path, done = _start_on_warm_coil(
        tmp_path,
        cold_calibration,
        protocol_yaml(target_g=target_g, frequency_hz=f"{freq_hz:g}"),
        f"mass={mass_kg:g}",
    )
    truth = Truth(load_truth(truth_path), {})
    coil = truth.raw["coil_temp_c"]
    assert coil[0] >= WARM_C - 1.0, "the coil was not warm at the start"
    assert not truth.raw["events"].size, truth.raw["events"]  # no firmware fault, no trip

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Session complete" in done.stdout
    with SessionLog(home.db_path(), read_only=True) as log:
        (record,) = log.sessions()
    assert record.status is SessionStatus.COMPLETED, record.reason
    assert record.minutes_at_dose == pytest.approx(1.0)
    # the truth: the whole minute was delivered at the target, warm coil or not
    start_s, end_s = truth.output_start_s, truth.zero_drive_s
    delivered_s = truth.at_dose_s(target_g, start_s, end_s)
    assert delivered_s >= record.minutes_at_dose * 60.0
    hold = (truth.t_s > start_s + 4.0) & (truth.t_s < end_s - 2.0)
    assert truth_amplitude(truth.raw, hold) == pytest.approx(target_g, rel=0.03)
    # in 1-s windows the truth stays in the dose band, and the record's error says so
    windows = np.arange(start_s + 4.0, end_s - 2.0, 1.0)
    worst = max(
        abs(truth_amplitude(truth.raw, (truth.t_s >= w) & (truth.t_s < w + 1.0)) / target_g - 1)
        for w in windows
    )
    assert worst < DOSE_TOLERANCE
    assert record.p95_abs_error_pct is not None
    assert record.p95_abs_error_pct >= 100 * worst - 1.0  # it does not hide the truth's error
    # the patient was seen on the plate throughout: a warm coil is not an empty plate
    (presence,) = [e for e in record.safety_events if e["reason"] == "presence"]
    assert presence["values"]["absent_s"] == 0.0


def test_a_light_patient_stepping_off_a_warm_coil_plate_is_not_credited_after_she_left(
    tmp_path: Path, cold_calibration: Path
) -> None:
    """40 kg, the hardest patient to see; she steps off for good 30 s into the session. A warm
    coil lowers the empty plate's response towards a loaded one's, so a detector that ignored
    the coil's temperature would count the empty plate as her dose."""
    home, truth_path, done = _start_on_warm_coil(
        tmp_path, cold_calibration, protocol_yaml(frequency_hz=45), "mass=40&presence=0-30"
    )
    truth = load_truth(truth_path)
    with SessionLog(home.db_path(), read_only=True) as log:
        (record,) = log.sessions()
    # she left at 30 s (plus the 1.5 s step): the plate's time at dose with her on it is the
    # most the record may hold
    block_t = truth["block_t_s"]
    on_plate_until = float(block_t[np.flatnonzero(truth["patient_mass_kg"] > 20.0)[-1]])
    assert 25.0 < on_plate_until < 35.0
    credited_s = record.minutes_at_dose * 60.0
    assert credited_s <= on_plate_until, (
        f"{credited_s:.1f} s credited, on the plate until {on_plate_until:.1f} s"
    )
    assert record.status is SessionStatus.STOPPED_BY_PATIENT, record.reason
    assert "nobody on the plate" in record.reason
    assert done.returncode == 1


def _start_on_warm_coil(
    tmp_path: Path, cold_calibration: Path, protocol_text: str, plate_settings: str
) -> tuple[LivHome, Path, subprocess.CompletedProcess[str]]:
    """`liv start` (as a patient runs it) in a new home on a plate whose coil is at WARM_C,
    with the calibration made cold; the home, the truth file's path and the finished process."""
    home = LivHome(tmp_path / "home")
    home.ensure()
    enrol_home(home).install_protocol(write_signed(tmp_path / "protocol.yaml", protocol_text))
    truth_path = tmp_path / "truth.npz"
    plate = (
        f"sim://?speed=max&{plate_settings}&seed=3&device_id={DEVICE_ID}"
        f"&coil_temp_c={WARM_C:g}&truth={truth_path}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "sessions.cli", "start", "--device", plate,
         "--home", str(home.root), "--calibration-dir", str(cold_calibration)],
        capture_output=True, text=True, cwd=REPO, timeout=110, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stdout + done.stderr
    return home, truth_path, done
