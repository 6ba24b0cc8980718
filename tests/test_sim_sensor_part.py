"""Each simulated plate's accelerometer part has realistic factory errors, corrected by the
firmware's factory calibration up to a residual that only the truth file shows (issue 9).

Plate motion and the sensor's true errors are judged from the simulator's truth file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import truth_score
from controller.calibration import identify
from controller.loop import ExposureSettings, ExposureStatus, run_exposure
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import DeviceFaultError, UnknownUrlError
from firmware_bridge.protocol import FaultCode
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.sim.device import SimulatedDevice
from firmware_bridge.sim.profile import load_profile
from firmware_bridge.sim.sensor import IDEAL_PART, draw_part
from tests.simhelpers import load_truth, run_blocks

DEFAULT = load_profile("default").accelerometer
# Two plates whose parts are far apart: at rest SIM-0001 (the default id) reads 6.4% low raw
# and 1.0012 g corrected (its calibration's residual); SIM-0002 3.9% high raw, 0.9990 g corrected.
PLATE_A, PLATE_B = "SIM-0001", "SIM-0002"


def part_of(device_id: str, query: str = "") -> SimulatedDevice:
    return SimulatedDevice(parse_sim_url(f"sim://?device_id={device_id}{query}"))


def resting(device_id: str, truth_path: Path, query: str = "") -> float:
    """The mean reading of 1 s at rest, as the host reads it (counts / counts_per_g)."""
    url = f"sim://?speed=max&device_id={device_id}&truth={truth_path}{query}"
    with DeviceClient.open(url) as dev:
        return float(np.concatenate([b.accel_g for b in run_blocks(dev, 1.0)]).mean())


def test_each_device_has_a_part_of_its_own_and_the_same_id_always_the_same_part() -> None:
    a, b = draw_part(DEFAULT, PLATE_A), draw_part(DEFAULT, PLATE_B)
    assert a != b
    assert draw_part(DEFAULT, PLATE_A) == a  # the same device, the same part
    # a device's part does not depend on the simulation's seed, only on its id
    assert part_of(PLATE_A, "&seed=3").sensor_part == part_of(PLATE_A, "&seed=8").sensor_part
    assert part_of(PLATE_A).sensor_part == a
    assert part_of(PLATE_B).sensor_part == b
    # the errors are there: raw, the part is several per cent and tens of mg off
    assert abs(a.sensitivity - 1.0) > 0.03
    assert abs(a.offset_g) > 0.005
    assert a.residual_gain != 1.0
    assert a.residual_offset_g != 0.0


def test_parts_spread_over_the_datasheet_span_and_calibration_leaves_a_small_residual() -> None:
    parts = [draw_part(DEFAULT, f"SIM-{k:04d}") for k in range(400)]
    sensitivity = np.array([p.sensitivity for p in parts])
    offset = np.array([p.offset_g for p in parts])
    gain = np.array([p.residual_gain for p in parts])
    residual_offset = np.array([p.residual_offset_g for p in parts])
    span = DEFAULT.part_sensitivity_span_fraction
    assert span == 0.08  # the ADXL357's min/max part to part
    assert np.all(np.abs(sensitivity - 1.0) <= span)
    assert np.abs(sensitivity - 1.0).max() > 0.9 * span  # uniform: parts near both ends
    assert (sensitivity < 1.0).sum() > 150
    assert (sensitivity > 1.0).sum() > 150
    assert np.all(np.abs(offset) <= DEFAULT.part_offset_span_g)
    assert np.abs(offset).max() > 0.9 * DEFAULT.part_offset_span_g
    # the residual: the calibration misses the sensitivity by up to 0.1%, the offset by 1 mg
    assert np.all(np.abs(gain - 1.0) <= DEFAULT.calibration_sensitivity_residual_fraction + 1e-12)
    assert np.abs(gain - 1.0).max() > 0.9e-3
    assert np.all(np.abs(residual_offset) <= DEFAULT.calibration_offset_residual_g * 1.1)
    assert np.abs(residual_offset).max() > 0.9e-3
    # another production lot, other parts
    other_lot = load_profile("default").with_overrides(accelerometer={"part_lot": 1})
    assert draw_part(other_lot.accelerometer, PLATE_A) != draw_part(DEFAULT, PLATE_A)


def test_a_level_plate_at_rest_reads_1_g_within_the_calibration_residual(tmp_path: Path) -> None:
    """The part reads several per cent off raw; the firmware's calibration corrects each
    sample, so the host reads 1 g within the residual, and the truth file holds the residual."""
    readings = {}
    for device_id in (PLATE_A, PLATE_B):
        truth_path = tmp_path / f"{device_id}.npz"
        reading = resting(device_id, truth_path)
        truth = load_truth(truth_path)
        part = draw_part(DEFAULT, device_id)
        raw_g = part.sensitivity + part.offset_g  # what the part itself reads at rest
        assert abs(raw_g - 1.0) > 0.03  # uncorrected it would fail the 3% resting check
        true_g = float(truth["sensor_reading_gain"] + truth["sensor_reading_offset_g"])
        assert truth["sensor_reading_gain"] == pytest.approx(part.residual_gain, abs=1e-12)
        assert truth["sensor_part_sensitivity"] == pytest.approx(part.sensitivity, abs=1e-12)
        assert reading == pytest.approx(true_g, abs=1e-4)  # the residual, not the raw error
        assert reading == pytest.approx(1.0, abs=0.001 + 0.001 + 1e-4)  # 0.1% and 1 mg
        readings[device_id] = reading
    assert abs(readings[PLATE_A] - readings[PLATE_B]) > 1e-3  # two parts, two residuals


def test_an_ideal_sensor_key_gives_an_exact_part(tmp_path: Path) -> None:
    assert part_of(PLATE_A, "&ideal_sensor=1").sensor_part == IDEAL_PART
    truth_path = tmp_path / "ideal.npz"
    reading = resting(PLATE_A, truth_path, "&ideal_sensor=1&sensor_offset_g=0.004")
    truth = load_truth(truth_path)
    assert float(truth["sensor_reading_gain"]) == 1.0
    assert float(truth["sensor_reading_offset_g"]) == 0.004  # only the drift the URL asked for
    assert reading == pytest.approx(1.004, abs=1e-4)
    with pytest.raises(UnknownUrlError, match="ideal_sensor"):
        parse_sim_url("sim://?ideal_sensor=yes")


def test_the_firmware_measures_with_its_own_calibration_not_the_parts_raw_scale(
    tmp_path: Path,
) -> None:
    """Its resting check passes a part that reads 6.4% low raw, and its acceleration ceiling
    (FAULT detail, mg) is the corrected reading: the true amplitude times the residual gain,
    not the raw part's 5% less."""
    truth_path = tmp_path / "truth.npz"
    ceiling_g = 0.6
    url = f"sim://?speed=max&mass=0&device_id={PLATE_A}&truth={truth_path}"
    with DeviceClient.open(url) as device:
        device.read_for(0.2)
        device.set_frequency(30.0)
        device.start_output()  # the resting check passed
        device.set_drive(0.9, 2.0)
        with pytest.raises(DeviceFaultError) as fault:
            device.read_for(3.0)
    assert fault.value.code == FaultCode.OVER_ACCELERATION
    assert fault.value.detail is not None
    assert fault.value.sample_index is not None
    truth = load_truth(truth_path)
    index = truth["sample_index"]
    window = (index >= fault.value.sample_index - 3 * 32) & (index < fault.value.sample_index)
    phase = 2 * np.pi * np.cumsum(truth["freq_hz"] / truth["sample_rate_hz"])
    design = np.stack([np.cos(phase[window]), np.sin(phase[window]), np.ones(window.sum())], 1)
    coef = np.linalg.lstsq(design, truth["accel_g"][window], rcond=None)[0]
    true_peak_g = math.hypot(coef[0], coef[1])
    reported_g = fault.value.detail / 1000
    gain = float(truth["sensor_reading_gain"])
    assert reported_g == pytest.approx(gain * true_peak_g, rel=0.01)
    raw = draw_part(DEFAULT, PLATE_A).sensitivity
    assert abs(reported_g - raw * true_peak_g) > 0.03 * true_peak_g  # not the raw scale
    assert ceiling_g < reported_g < ceiling_g * 1.1


def test_a_session_on_a_default_plate_is_judged_from_truth_within_tolerance(
    tmp_path: Path,
) -> None:
    """A hold on a plate with the default part: the truth scorer sees the residual, the dose is
    within tolerance, and the residual shows in it. The same hold on an exact part (same
    seeds) is the reference: the host holds its reading at the target, so the default part's
    plate delivers the exact part's amplitude over the sensor's true gain."""
    target_g, hold_s = 0.3, 12.0
    settings = ExposureSettings(
        target_g=target_g, hold_s=hold_s, schedule=FrequencySchedule.fixed(45.0)
    )
    scores = {}
    for sensor in ("", "&ideal_sensor=1"):
        plate = f"sim://?speed=max&seed=2&device_id={PLATE_B}{sensor}"
        with DeviceClient.open(f"{plate}&mass=0") as dev:
            cal = identify(dev)
        truth_path = tmp_path / f"truth{len(scores)}.npz"
        with DeviceClient.open(f"{plate}&mass=80&sway=0&truth={truth_path}") as dev:
            result = run_exposure(dev, cal, settings)
        assert result.status is ExposureStatus.COMPLETED
        scores[sensor] = truth_score.score(truth_score.load_truth(truth_path), target_g, 0.1)
    default, exact = scores[""], scores["&ideal_sensor=1"]
    gain = default.sensor_reading_gain
    assert gain == pytest.approx(draw_part(DEFAULT, PLATE_B).residual_gain, abs=1e-12)
    assert abs(gain - 1.0) > 5e-4  # the residual is there
    assert exact.sensor_reading_gain == 1.0
    assert default.seconds_at_dose >= hold_s - 1.0
    assert default.hold_p95_error_fraction <= 0.1
    # the residual shows in the dose the truth scorer judges
    ratio = default.hold_mean_peak_g / exact.hold_mean_peak_g
    assert ratio == pytest.approx(1.0 / gain, abs=1e-4)


def test_the_truth_scorer_reports_the_sensors_gain_only_when_the_truth_file_has_it(
    tmp_path: Path,
) -> None:
    truth_path = tmp_path / "truth.npz"
    resting(PLATE_A, truth_path)
    truth = truth_score.load_truth(truth_path)
    gain = truth_score.score(truth, 0.3, 0.1).sensor_reading_gain
    assert gain == pytest.approx(draw_part(DEFAULT, PLATE_A).residual_gain, abs=1e-12)
    older = {k: v for k, v in truth.items() if not k.startswith("sensor_")}  # an older file
    assert math.isnan(truth_score.score(older, 0.3, 0.1).sensor_reading_gain)
