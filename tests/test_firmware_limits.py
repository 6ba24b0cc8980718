"""Limits the plate keeps itself: the firmware's own g ceiling and its resting-sensor check.

Every path that used to shake the plate past the ceiling is run here and judged from the
simulator's truth (the true plate acceleration), never from what the host or the firmware
estimated: open-loop ``liv device drive``, a plate that announces a wrong counts_per_g, a
closed loop whose host ceiling was raised, and a raw SET_DRIVE at full drive.

The bound asserted (docs/protocol.md section 10): the firmware's fit lags a rising amplitude by
about half its window and is taken once per block, so the true amplitude at the drive
frequency may pass the ceiling by the rise of the true amplitude over
``ACCEL_WINDOW_BLOCKS / 2 + 1`` blocks, and no more; then the fault ramp takes the plate to rest.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.calibration import identify
from controller.loop import ExposureSettings, ExposureStatus, run_exposure
from controller.safety import SafetyLimits, TripReason
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient
from firmware_bridge.dose_limits import DOSE_LIMITS, DoseLimitError
from firmware_bridge.errors import DeviceFaultError, UnknownUrlError
from firmware_bridge.protocol import HELLO_RANGES, FaultCode, fault_text
from firmware_bridge.sim import device as firmware
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.sim.device import ACCEL_WINDOW_BLOCKS, BLOCK_S, MAX_DRIVE, SAFE_RAMP_S
from firmware_bridge.sim.profile import load_profile
from sessions.cli import main
from tests.simhelpers import load_truth, measured_g_per_drive, truth_amplitude, truth_envelope

CEILING_G = DOSE_LIMITS.firmware_ceiling_g
LAG_S = (ACCEL_WINDOW_BLOCKS / 2 + 1) * BLOCK_S  # how late the firmware's fit can see a rise
RINGDOWN_S = 0.1  # the plate's own decay after the drive reaches zero
STILL_G = 0.01
FIT_SLACK_G = 0.005  # the per-period sine fit of truth (harmonics, the fit window's own lag)
SPREAD_30HZ = 0.015  # the firmware fit's block-to-block spread at 30 Hz (docs/safety.md 1.1)


def event_times(truth: dict[str, Any]) -> dict[str, float]:
    times: dict[str, float] = {}
    for entry in truth["events"]:
        at, name = str(entry).split(" ", 1)
        times.setdefault(name, float(at))
    return times


def true_rise_g_per_s(truth: dict[str, Any], freq_hz: float) -> float:
    """The fastest rise of the true amplitude (sine fit per drive period) before the trip."""
    trip_s = event_times(truth)["fault:OVER_ACCELERATION"]
    period_s = 1.0 / freq_hz
    mid_s, amp_g = truth_envelope(truth, truth["t_s"], 0.0, trip_s, period_s)
    rising = np.diff(amp_g[mid_s < trip_s])
    return max(0.0, float(rising.max())) / period_s if rising.size else 0.0


def true_amplitude_in_firmware_window(truth: dict[str, Any], trip_index: int) -> float:
    """The true amplitude over the blocks the firmware fitted when it tripped."""
    index = truth["sample_index"]
    window_samples = round(ACCEL_WINDOW_BLOCKS * BLOCK_S * float(truth["sample_rate_hz"]))
    window = (index >= trip_index - window_samples) & (index < trip_index)
    return truth_amplitude(truth, window)


def empty_plate_g_per_drive(tmp_path: Path, freq_hz: float) -> float:
    """The empty plate's true response, measured with a small probe drive (truth file)."""
    return measured_g_per_drive("speed=max&seed=3&mass=0", freq_hz, tmp_path / "probe.npz")


def assert_held_to_the_ceiling(truth: dict[str, Any], freq_hz: float) -> float:
    """The true plate stayed within the documented bound of the ceiling, then came to rest.

    Returns the highest true amplitude at the drive frequency (fitted per drive period).
    """
    events = event_times(truth)
    assert "fault:OVER_ACCELERATION" in events, f"the firmware never tripped: {events}"
    trip_s = events["fault:OVER_ACCELERATION"]
    period_s = 1.0 / freq_hz
    t = truth["t_s"]
    mid_s, amp_g = truth_envelope(truth, t, 0.0, trip_s + SAFE_RAMP_S, period_s)
    rise_g_per_s = true_rise_g_per_s(truth, freq_hz)
    # A window of one period reads the amplitude half a period before its end.
    bound_g = CEILING_G + rise_g_per_s * (LAG_S + period_s / 2) + FIT_SLACK_G
    peak_g = float(amp_g.max())
    assert peak_g <= bound_g, (
        f"true peak {peak_g:.3f} g above the bound {bound_g:.3f} g "
        f"(ceiling {CEILING_G} g, rise {rise_g_per_s:.2f} g/s over {LAG_S:.3f} s)"
    )
    # It was the ceiling that stopped it: below the ceiling one lag before the trip.
    before = mid_s < trip_s - LAG_S - period_s / 2
    assert amp_g[before].max() <= CEILING_G + FIT_SLACK_G
    # The fault ramp took the drive to zero, and the plate came to rest.
    assert np.all(truth["drive"][t >= trip_s + SAFE_RAMP_S + BLOCK_S] == 0.0)
    still = t >= trip_s + SAFE_RAMP_S + BLOCK_S + RINGDOWN_S
    assert still.any()
    assert np.max(np.abs(truth["accel_g"][still])) < STILL_G
    return peak_g


def sim_url(truth_path: Path, query: str) -> str:
    return f"sim://?speed=max&seed=3&truth={truth_path}&{query}"


# ---- the ceiling is announced, and agrees with the dose table --------------------------------


def test_the_announced_ceiling_is_the_dose_tables() -> None:
    with DeviceClient.open("sim://?speed=max") as device:
        info = device.info
    assert info.ceiling_g == DOSE_LIMITS.firmware_ceiling_g == 0.6
    assert info.to_dict()["ceiling_g"] == 0.6
    # the host accepts an announced ceiling only between its supervisor's and the hard ceiling
    low, high, unit = HELLO_RANGES["ceiling_mg"]
    assert (low, high, unit) == (500, 1000, "mg")
    assert low == round(DOSE_LIMITS.over_acceleration_ceiling_g * 1000)
    assert high == round(DOSE_LIMITS.hard_ceiling_g * 1000)
    assert low < info.ceiling_g * 1000 <= high


@pytest.mark.parametrize("ceiling_g", [0.5, 0.4, 1.01])
def test_the_dose_table_keeps_the_firmware_ceiling_above_the_hosts(ceiling_g: float) -> None:
    with pytest.raises(ValueError, match="firmware's ceiling"):
        dataclasses.replace(DOSE_LIMITS, firmware_ceiling_g=ceiling_g)


# ---- each path that used to pass the ceiling ---------------------------------------------------


def test_liv_device_drive_open_loop_is_stopped_by_the_plate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 20 Hz the empty plate gives 5.7 g per unit drive: 0.9 of full scale would be 5.1 g."""
    truth_path = tmp_path / "truth.npz"
    argv = ["device", "drive", "--engineer", "--device", sim_url(truth_path, "mass=0"),
            "--freq", "20", "--drive", "0.9", "--seconds", "2"]  # fmt: skip
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert fault_text(FaultCode.OVER_ACCELERATION) in err
    assert "Traceback" not in err
    truth = load_truth(truth_path)
    assert_held_to_the_ceiling(truth, 20.0)
    assert np.max(np.abs(truth["accel_g"])) < 0.7


@pytest.mark.parametrize("error", [0.15, -0.15])
def test_a_misreported_counts_per_g_does_not_move_the_ceiling(tmp_path: Path, error: float) -> None:
    """The plate announces counts_per_g 15% off its sensor; it trips at the true 0.6 g.

    (Through the host's closed loop such a plate cannot pass 0.6 g: the host's gravity check
    refuses a reading more than 0.15 g off 1 g, and within that the supervisor's 0.5 g ceiling
    stays below 0.5 x 1.15 = 0.575 g true.)
    """
    truth_path = tmp_path / "truth.npz"
    with DeviceClient.open(sim_url(truth_path, f"mass=0&counts_per_g_error={error}")) as device:
        nominal = load_profile("default").accelerometer.counts_per_g  # the part's true scale
        assert device.info.counts_per_g == int(nominal * (1 + error))
        device.set_frequency(30.0)
        device.start_output()
        device.set_drive(MAX_DRIVE, 2.0)  # the host's own soft ramp
        with pytest.raises(DeviceFaultError) as fault:
            device.read_for(3.0)
    assert fault.value.code == FaultCode.OVER_ACCELERATION
    truth = load_truth(truth_path)
    peak_g = assert_held_to_the_ceiling(truth, 30.0)
    assert peak_g >= CEILING_G - 0.02  # it went on to the true ceiling, not 15% short of it
    # The firmware's own reading (FAULT detail, mg) is the true amplitude, not the host's view
    # 15% off: it agrees with truth over the window the firmware fitted, within the fit's
    # spread and one block of the true rise (the window's own lag).
    assert fault.value.detail is not None
    assert fault.value.sample_index is not None
    reported_g = fault.value.detail / 1000
    rise_per_block_g = true_rise_g_per_s(truth, 30.0) * BLOCK_S
    in_window_g = true_amplitude_in_firmware_window(truth, fault.value.sample_index)
    assert abs(reported_g - in_window_g) <= SPREAD_30HZ * CEILING_G + rise_per_block_g
    # And just above the ceiling: the reading one block earlier was at most the ceiling, so this
    # one is above it by at most one block of the true rise plus the spread of both readings.
    assert CEILING_G < reported_g <= CEILING_G + rise_per_block_g + 2 * SPREAD_30HZ * CEILING_G


def test_a_host_whose_ceiling_was_raised_is_stopped_by_the_plate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The host refuses 0.8 g by the dose table; a host whose ceiling was raised does not."""
    refused_truth = tmp_path / "refused.npz"
    with pytest.raises(SystemExit) as usage:  # liv run refuses it before opening the plate
        main(["run", "--engineer", "--device", sim_url(refused_truth, "mass=0"), "--freq", "45",
              "--amplitude", "0.8", "--seconds", "5"])  # fmt: skip
    assert usage.value.code == 2
    assert "0.1 to 0.4" in capsys.readouterr().err
    assert not refused_truth.exists()
    schedule = FrequencySchedule.fixed(45.0)
    with pytest.raises(DoseLimitError):
        ExposureSettings(target_g=0.8, hold_s=5.0, schedule=schedule)
    bypassed = ExposureSettings(
        target_g=0.8, hold_s=5.0, schedule=schedule, ramp_up_s=1.0,
        limits=SafetyLimits(ceiling_g=DOSE_LIMITS.hard_ceiling_g),
    )  # fmt: skip
    with DeviceClient.open("sim://?speed=max&seed=1&mass=0") as device:
        calibration = identify(device)
    truth_path = tmp_path / "truth.npz"
    with DeviceClient.open(sim_url(truth_path, "mass=0")) as device:
        result = run_exposure(device, calibration, bypassed)
    assert result.status is ExposureStatus.TRIPPED
    assert result.trip is not None
    assert result.trip.reason is TripReason.DEVICE_FAULT
    assert_held_to_the_ceiling(load_truth(truth_path), 45.0)


@pytest.mark.parametrize("ramp_s", [1.0, 0.0], ids=["soft-ramp", "fastest-slew"])
def test_a_raw_set_drive_at_full_drive_is_stopped_by_the_plate(
    tmp_path: Path, ramp_s: float
) -> None:
    """No host supervisor at all: SET_DRIVE to full drive on the empty plate."""
    truth_path = tmp_path / "truth.npz"
    with DeviceClient.open(sim_url(truth_path, "mass=0")) as device:
        device.set_frequency(30.0)
        device.start_output()
        device.set_drive(MAX_DRIVE, ramp_s)
        with pytest.raises(DeviceFaultError) as fault:
            device.read_for(2.0)
    assert fault.value.code == FaultCode.OVER_ACCELERATION
    truth = load_truth(truth_path)
    peak_g = assert_held_to_the_ceiling(truth, 30.0)
    full_g = MAX_DRIVE * empty_plate_g_per_drive(tmp_path, 30.0)  # 4.05 g: 0.9 x 4.50 g/unit
    if ramp_s:
        # The ramp's own rise (4.05 g/s) over the firmware's detection lag, no more.
        assert peak_g < CEILING_G + full_g / ramp_s * LAG_S + FIT_SLACK_G
    else:
        assert peak_g < full_g  # stopped well before full drive's amplitude


# ---- the resting check -------------------------------------------------------------------------


@pytest.mark.parametrize("gain_error", [0.12, -0.12, 0.031, -0.031])
def test_a_sensor_that_misreads_gravity_keeps_the_output_off(
    tmp_path: Path, gain_error: float
) -> None:
    truth_path = tmp_path / "truth.npz"
    # an exact part (no factory residual): the threshold is pinned to the tenth of a percent
    query = f"sensor_gain_error={gain_error}&ideal_sensor=1"
    with DeviceClient.open(sim_url(truth_path, query)) as device:
        device.read_for(0.2)
        with pytest.raises(DeviceFaultError) as fault:
            device.start_output()
        assert fault.value.refused_command is not None
        # clearing the fault does not clear the sensor: it is checked again
        device.clear_fault()
        with pytest.raises(DeviceFaultError):
            device.start_output()
    assert fault.value.code == FaultCode.SENSOR_REST
    assert fault.value.detail == pytest.approx(1000 * (1 + gain_error), abs=5)
    assert fault_text(FaultCode.SENSOR_REST) in str(fault.value)
    truth = load_truth(truth_path)
    assert np.all(truth["drive"] == 0.0)


@pytest.mark.parametrize("gain_error", [0.0, 0.01, -0.01, 0.025, -0.025])
def test_a_sensor_within_tolerance_switches_the_output_on(gain_error: float) -> None:
    query = f"sensor_gain_error={gain_error}&ideal_sensor=1"  # exact part, as above
    with DeviceClient.open(f"sim://?speed=max&{query}") as device:
        device.read_for(0.2)
        device.start_output()
        device.set_drive(0.1, 0.1)
        device.read_for(0.3)
        assert device.request_status().output_on == 1


@pytest.mark.parametrize(
    "query", ["sensor_gain_error=0.6", "sensor_gain_error=x", "counts_per_g_error=-0.51"]
)
def test_the_new_sim_keys_refuse_bad_values(query: str) -> None:
    with pytest.raises(UnknownUrlError):
        parse_sim_url(f"sim://?{query}")


def test_safety_md_states_the_firmware_backstop_as_the_device_holds_it() -> None:
    text = (Path(__file__).parents[1] / "docs" / "safety.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([0-9.]+) \|", text, re.MULTILINE))
    for name in ("ACCEL_WINDOW_BLOCKS", "REST_TOLERANCE", "REST_BLOCKS"):
        assert float(rows[name]) == float(getattr(firmware, name)), name
    ceiling = re.search(r"^\| HELLO `ceiling_mg` \| (\d+) \| mg \|", text, re.MULTILINE)
    assert ceiling
    assert int(ceiling.group(1)) == round(DOSE_LIMITS.firmware_ceiling_g * 1000)


@pytest.mark.parametrize("freq_hz", [20.0, 45.0, 150.0])
def test_the_firmwares_fit_is_the_least_squares_fit_with_a_constant_per_block(
    freq_hz: float,
) -> None:
    """The rotated, cached sums give what a direct least-squares solve gives."""
    rng = np.random.default_rng(7)
    fs, n, blocks, counts_per_g = 1600.0, 32, ACCEL_WINDOW_BLOCKS, 256.0
    fit = firmware._BlockFit(fs, counts_per_g)
    phase0 = 0.3
    k = np.arange(n * blocks)
    phi = 2.0 * np.pi * (phase0 + freq_hz * k / fs)
    offsets = np.repeat(rng.uniform(-3.0, 3.0, blocks), n)  # a constant per block
    accel_g = 0.42 * np.cos(phi - 0.7) + offsets + rng.normal(0.0, 0.01, k.size)
    counts = np.round(accel_g * counts_per_g).astype(np.int16)
    window = [
        fit.sums(counts[j * n : (j + 1) * n], (phase0 + freq_hz * j * n / fs) % 1.0, freq_hz)
        for j in range(blocks)
    ]
    design = np.column_stack(
        [np.cos(phi), np.sin(phi), *[(k // n == j).astype(float) for j in range(blocks)]]
    )
    (a, b, *_), *_ = np.linalg.lstsq(design, counts / counts_per_g, rcond=None)
    assert firmware._fitted_peak_g(window) == pytest.approx(np.hypot(a, b), rel=1e-9)
    assert firmware._fitted_peak_g(window) == pytest.approx(0.42, abs=0.01)
