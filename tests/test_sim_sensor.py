"""The simulated accelerometer reads gravity, quantises, clips, filters and fails as documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import numpy.typing as npt
import pytest
import scipy.signal

from benchmarks import bench_control
from controller.calibration import identify
from controller.estimation import fit_sine
from firmware_bridge.client import DeviceClient
from firmware_bridge.protocol import HELLO_RANGES
from firmware_bridge.sim.profile import AccelerometerProfile, load_profile
from firmware_bridge.sim.sensor import Accelerometer
from tests.simhelpers import load_truth, run_blocks, truth_amplitude

FS = 1600.0
# The mechanics below are checked on the ADXL345 profile (256 counts/g, 1023 at +4 g): its
# counts are few enough to pin by hand. The default sensor has its own tests further down.
ADXL345 = load_profile("adxl345").accelerometer
QUIET = dataclasses.replace(ADXL345, noise_density_ug=0.0)


def sensor(profile: AccelerometerProfile = ADXL345, seed: int = 0) -> Accelerometer:
    return Accelerometer(profile, FS, np.random.default_rng(seed))


def test_level_plate_at_rest_reads_one_g() -> None:
    counts = sensor().measure(np.zeros(16000))
    assert counts.dtype == np.int16
    assert counts.shape == (16000,)
    assert counts.mean() == pytest.approx(256.0, abs=0.2)  # +1 g at 256 counts/g
    assert 1.0 < counts.std() < 6.0  # ADXL345 noise is a few LSB


def test_quiet_sensor_rounds_to_the_nearest_count() -> None:
    lsb = 1.0 / 256.0
    for offset_lsb, expected in [(0.4, 256), (0.6, 257), (-0.6, 255), (38.2, 294)]:
        counts = sensor(QUIET).measure(np.full(400, offset_lsb * lsb))
        assert np.all(counts[-100:] == expected), offset_lsb


def test_sensitivity_error_and_bias() -> None:
    profile = dataclasses.replace(QUIET, sensitivity_error_fraction=0.1, bias_g=0.05)
    counts = sensor(profile).measure(np.full(400, 0.2))
    assert np.all(counts[-100:] == round((1.2 * 1.1 + 0.05) * 256))


def test_out_of_range_clips_at_full_scale() -> None:
    reading = sensor(QUIET)
    high = reading.measure(np.full(400, 5.0))  # 6 g with gravity, range +/-4 g
    low = reading.measure(np.full(400, -7.0))
    assert high.max() == 1023 == reading.max_count
    assert low.min() == -1024 == reading.min_count
    assert np.all(high[-100:] == 1023)
    assert np.all(low[-100:] == -1024)


def test_bit_depth_limits_the_output_word() -> None:
    profile = dataclasses.replace(QUIET, bit_depth=10)  # 10-bit word inside a +/-4 g range
    counts = sensor(profile).measure(np.full(400, 2.5))
    assert counts.max() == 511


def test_block_by_block_equals_all_at_once() -> None:
    rng = np.random.default_rng(7)
    accel = 0.3 * np.sin(2 * np.pi * 45.0 * np.arange(3200) / FS) + 0.01 * rng.standard_normal(3200)
    whole = sensor(seed=5).measure(accel)
    split = sensor(seed=5)
    pieces = [split.measure(accel[i : i + 32]) for i in range(0, 3200, 32)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_same_seed_same_counts_other_seed_other_noise() -> None:
    accel = np.zeros(1600)
    np.testing.assert_array_equal(sensor(seed=1).measure(accel), sensor(seed=1).measure(accel))
    assert np.any(sensor(seed=1).measure(accel) != sensor(seed=2).measure(accel))


def test_noise_level_follows_the_noise_density() -> None:
    reading = sensor(seed=3)
    reading.noise_density_ug = 4000.0  # well above one count so quantisation hardly matters
    counts = reading.measure(np.zeros(64000)).astype(float)
    b, a = scipy.signal.butter(2, ADXL345.anti_alias_cutoff_hz, fs=FS)
    impulse = scipy.signal.lfilter(b, a, np.r_[1.0, np.zeros(4095)])
    noise_gain = float(np.sqrt(np.sum(impulse**2)))  # std through the filter per std in
    expected_counts = 4000e-6 * np.sqrt(FS / 2) * noise_gain * 256
    assert counts.std() == pytest.approx(expected_counts, rel=0.03)
    reading.noise_density_ug = 0.0
    assert np.all(reading.measure(np.zeros(200))[-100:] == 256)


def test_anti_alias_filter_passes_the_band_and_cuts_near_nyquist() -> None:
    def gain(freq_hz: float) -> float:
        t = np.arange(8000) / FS
        counts = sensor(QUIET).measure(0.5 * np.sin(2 * np.pi * freq_hz * t))[4000:]
        return float((counts.max() - counts.min()) / 2 / (0.5 * 256))

    assert gain(90.0) == pytest.approx(1.0, abs=0.01)
    assert gain(750.0) < 0.7


def stream(reading: Accelerometer, n_blocks: int) -> list[npt.NDArray[np.int16]]:
    t = np.arange(32) / FS
    return [
        reading.measure(0.3 * np.sin(2 * np.pi * 30.0 * (t + k * 32 / FS))) for k in range(n_blocks)
    ]


def test_stuck_sensor_repeats_its_last_value_until_cleared() -> None:
    reading = sensor()
    before = stream(reading, 5)[-1]
    reading.stuck = True
    for block in stream(reading, 5):
        assert np.all(block == before[-1])
    reading.stuck = False
    after = stream(reading, 5)
    assert np.ptp(np.concatenate(after)) > 100  # live 0.3 g sine again


def test_saturated_and_disconnected_sensors() -> None:
    reading = sensor()
    reading.saturated = True
    assert np.all(np.concatenate(stream(reading, 3)) == 1023)
    reading.disconnected = True  # disconnection wins over saturation
    assert np.all(np.concatenate(stream(reading, 3)) == 0)
    reading.saturated = reading.disconnected = False
    live = np.concatenate(stream(reading, 10))
    assert abs(live.mean() - 256) < 10


def test_cutoff_at_or_above_nyquist_is_refused() -> None:
    with pytest.raises(ValueError, match="anti_alias_cutoff_hz"):
        Accelerometer(ADXL345, 1000.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="anti_alias_cutoff_hz"):
        dataclasses.replace(ADXL345, anti_alias_cutoff_hz=800.0)


@pytest.mark.parametrize(
    ("query", "resting_g"),
    [
        # A sensor reading 12% high reads 1.12 g at rest, and the plate's own resting check then
        # keeps its output off (tests/test_firmware_limits.py); here the errors stay within the
        # firmware's +/-3% so that the vibration can be read too. The drift comes on top of
        # the default part's calibration residual (the truth file has it).
        ("sensor_gain_error=0.025", 1.025),
        ("sensor_offset_g=0.02", 1.02),
        ("sensor_gain_error=-0.01&sensor_offset_g=-0.015", 0.975),
        ("", 1.0),  # defaults: no drift
    ],
)
def test_sensor_errors_from_the_url_show_at_rest_and_in_the_vibration(
    tmp_path: Path, query: str, resting_g: float
) -> None:
    truth_path = tmp_path / "truth.npz"
    url = f"sim://?speed=max&noise=low&{query}&truth={truth_path}"
    with DeviceClient.open(url) as dev:
        rest = np.concatenate([b.accel_g for b in run_blocks(dev, 0.5)])
        dev.set_frequency(40.0)
        dev.start_output()
        dev.set_drive(0.2, 0.1)
        blocks = run_blocks(dev, 1.5)
    truth = load_truth(truth_path)
    true_gain = float(truth["sensor_reading_gain"])
    assert rest.mean() == pytest.approx(
        true_gain + float(truth["sensor_reading_offset_g"]), abs=2e-4
    )
    assert rest.mean() == pytest.approx(resting_g, abs=0.006)  # the drift, within the residual
    # the vibration is read with the same sensitivity error: reading / truth = 1 + gain error
    gain = 1.0 + float(dict(parse_qsl(query)).get("sensor_gain_error", 0.0))
    assert true_gain == pytest.approx(gain, rel=0.0031)
    late = blocks[-25:]
    reading = np.concatenate([b.accel_g for b in late])
    phases = np.concatenate(
        [b.phase_rad + 2 * np.pi * b.freq_hz * np.arange(b.accel_g.size) / FS for b in late]
    )
    index = truth["sample_index"]
    same_samples = (index >= late[0].first_index) & (index <= late[-1].first_index + 31)
    true_peak = truth_amplitude(truth, same_samples)
    assert fit_sine(reading, phases).peak_g == pytest.approx(true_gain * true_peak, rel=0.002)


# ---- the default sensor: a low-noise part (issue 9) -------------------------------------------

DEFAULT = load_profile("default").accelerometer


def test_the_default_sensor_is_low_noise_and_its_counts_do_not_hide_the_noise() -> None:
    """ADXL355 class: 22.5 ug/sqrt(Hz), scaled to 8192 counts/g (within HELLO's 32..16383).

    At rest its noise is a few counts, so the rounding to counts (1 count / sqrt(12)) adds
    little to it; the ADXL345's 256 counts/g would round the whole noise floor away.
    """
    low, high, _ = HELLO_RANGES["counts_per_g"]
    assert low <= DEFAULT.counts_per_g <= high
    counts = sensor(DEFAULT, seed=4).measure(np.zeros(64000)).astype(float)
    b, a = scipy.signal.butter(2, DEFAULT.anti_alias_cutoff_hz, fs=FS)
    impulse = scipy.signal.lfilter(b, a, np.r_[1.0, np.zeros(4095)])
    noise_gain = float(np.sqrt(np.sum(impulse**2)))
    expected_g = 22.5e-6 * np.sqrt(FS / 2) * noise_gain
    assert counts.std() / DEFAULT.counts_per_g == pytest.approx(expected_g, rel=0.05)
    assert counts.std() > 3.0  # counts of quantisation noise: 1 / sqrt(12) = 0.29
    assert counts.mean() / DEFAULT.counts_per_g == pytest.approx(1.0, abs=1e-4)


def test_the_default_plate_reads_a_0_1_g_vibration_to_a_tenth_of_a_percent_per_second(
    tmp_path: Path,
) -> None:
    """Each 1-s fit of the sensor's reading agrees with the truth to 0.1% at 0.1 g.

    The fit's noise is ``noise_density / sqrt(1 s)``: 0.02% of 0.1 g for the default sensor,
    0.43% for the ADXL345 (``profile=adxl345``), which would miss this in most seconds.
    """
    truth_path = tmp_path / "truth.npz"
    with DeviceClient.open(f"sim://?speed=max&seed=3&sway=0&truth={truth_path}") as dev:
        assert dev.info.counts_per_g == 8192
        dev.set_frequency(30.0)
        dev.start_output()
        dev.set_drive(0.05, 0.1)
        blocks = run_blocks(dev, 6.0)
    truth = load_truth(truth_path)
    # the part's calibration residual is a constant gain (the truth file has it): the noise is
    # what is left once it is taken out
    true_gain = float(truth["sensor_reading_gain"])
    assert 0.0 < abs(true_gain - 1.0) <= 0.001
    index = truth["sample_index"]
    errors = []
    for second in range(1, 6):  # whole seconds after the soft start
        part = blocks[second * 50 : (second + 1) * 50]
        reading = np.concatenate([b.accel_g for b in part])
        phases = np.concatenate(
            [b.phase_rad + 2 * np.pi * b.freq_hz * np.arange(b.accel_g.size) / FS for b in part]
        )
        same = (index >= part[0].first_index) & (index <= part[-1].first_index + 31)
        true_peak = truth_amplitude(truth, same)
        assert 0.05 < true_peak < 0.2
        errors.append(fit_sine(reading, phases).peak_g / (true_gain * true_peak) - 1.0)
    assert max(abs(e) for e in errors) < 0.001, errors


def test_the_adxl345_stays_available_as_a_profile() -> None:
    with DeviceClient.open("sim://?speed=max&profile=adxl345") as dev:
        assert dev.info.counts_per_g == 256
        rest = np.concatenate([b.accel_g for b in run_blocks(dev, 1.0)])
    assert rest.mean() == pytest.approx(1.0, abs=0.01)
    assert rest.std() > 2.0 / 256  # its noise: a few of its 3.9 mg counts (default: 0.6 mg)


def test_the_closed_loop_holds_0_1_g_within_half_a_percent_from_truth(tmp_path: Path) -> None:
    """Issue 9's target with the default sensor: true p95 <= 0.5% at 0.1 g.

    The hardest hold of benchmarks/bench_control.py --holds-only (150 kg at 30 Hz, the
    biggest sway), scored from truth over 1-s windows; with the ADXL345 the bound for any law
    there is 0.83-0.85% (docs/performance.md).
    """
    with DeviceClient.open("sim://?speed=max&mass=0&seed=11") as dev:
        cal = identify(dev)
    row = bench_control.edge_case(cal, "steady", "30", 150.0, 0.1, 20.0, 5003, tmp_path)
    assert row["status"] == "completed"
    assert row["true_p95_abs_error_pct"] <= 0.5, row
    assert row["overshoot_pct"] <= 5.0, row
