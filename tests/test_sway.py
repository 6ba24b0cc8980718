"""Postural sway against sensor noise at 0.1 g: the law's bias and the bound (issue 9).

Plate motion is judged from the simulator's truth file; the bound's inputs are checked against
the simulator itself (benchmarks/sway_bound.py, docs/performance.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import sway_bound
from controller.calibration import Calibration, identify
from controller.law import AmplitudeLaw, LawSettings
from controller.loop import ExposureSettings, ExposureStatus, run_exposure
from controller.openloop import drive_open_loop
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient
from tests.simhelpers import exposure_time, load_truth, truth_envelope

RAMP_UP = 2.0


@pytest.fixture(scope="module")
def empty_cal() -> Calibration:
    with DeviceClient.open("sim://?speed=max&mass=0&seed=11") as dev:
        return identify(dev)


def test_the_default_sensor_at_0_1_g_needs_no_steady_margin() -> None:
    """Its steady uncertainty (0.9-1.2%) cannot reach the 5% overshoot limit.

    The law used to aim 1.5 x (steady sd - 0.8%) low: 0.45% at 1.1%, a bias the patient got
    all session. A noisy sensor (3000 ug/sqrt(Hz) at 0.1 g: about 3%) keeps its margin as it
    was, from 0.8% up.
    """
    settings = LawSettings()
    law = AmplitudeLaw(settings, drive_limit=0.9, correction=2.0)
    law.steady = law.variance = 0.011**2
    assert law.cautious_correction == pytest.approx(2.0, rel=1e-12)
    law.steady = law.variance = 0.031**2
    old_margin = settings.cautious_sigma * (0.031 - 0.008)
    assert law.cautious_correction == pytest.approx(2.0 * (1.0 - old_margin), rel=1e-9)


@pytest.mark.parametrize("freq", [30.0, 90.0])
def test_a_heavy_standing_patient_at_0_1_g_is_not_held_low(
    tmp_path: Path, empty_cal: Calibration, freq: float
) -> None:
    """150 kg at 0.1 g, default sensor, sway on: the true mean of 1-s windows is on target.

    The mean of these 14 windows was -0.32% (30 Hz) and -0.26% (90 Hz) with the old steady
    margin, and is +0.18% and -0.03% without it (the sway and noise of 14 windows leave about
    +/-0.15% either way).
    """
    truth_path = tmp_path / "truth.npz"
    hold = 16.0
    settings = ExposureSettings(
        target_g=0.1, hold_s=hold, schedule=FrequencySchedule.fixed(freq), ramp_up_s=RAMP_UP
    )
    with DeviceClient.open(f"sim://?speed=max&seed=5&mass=150&truth={truth_path}") as dev:
        result = run_exposure(dev, empty_cal, settings)
    assert result.status is ExposureStatus.COMPLETED, result.trip
    truth = load_truth(truth_path)
    t = exposure_time(truth, result.start_index)
    _, one_s = truth_envelope(truth, t, RAMP_UP + 2.0, RAMP_UP + hold, 1.0)
    error_pct = 100.0 * (one_s / 0.1 - 1.0)
    mean_pct = float(np.mean(error_pct))
    assert -0.15 <= mean_pct <= 0.4, (mean_pct, error_pct)
    # no better than the bound allows (about 0.85% p95), but no worse than about 1.5 x it
    assert float(np.percentile(np.abs(error_pct), 95)) <= 1.3, error_pct


def test_the_bound_uses_the_sway_the_simulator_really_has(tmp_path: Path) -> None:
    """A fixed drive, 150 kg at 30 Hz, a noiseless sensor: the truth swings as computed."""
    truth_path = tmp_path / "truth.npz"
    with DeviceClient.open(f"sim://?speed=max&seed=3&mass=150&noise=1&truth={truth_path}") as dev:
        drive_open_loop(dev, 30.0, 0.2, 11.0)
    truth = load_truth(truth_path)
    t = truth["t_s"] - truth["t_s"][0]
    # 0.24-s windows on the simulator's own update grid, over two whole sway periods
    _, env = truth_envelope(truth, t, 2.64, 12.64, 0.24)
    swing = (env.max() - env.min()) / (env.max() + env.min())
    assert swing == pytest.approx(sway_bound.sway_amplitude(30.0, 150.0), rel=0.1)


def test_a_fast_level_estimator_feeds_back_the_one_second_noise() -> None:
    """With no sway, following each block feeds back one second's noise: p95 = 1.96 sigma."""
    sigma = 430e-6 / 0.1
    blocks = round((sway_bound.BURN_IN_S + sway_bound.SCORE_S) / sway_bound.DT_S)
    still = np.zeros((sway_bound.REPEATS, blocks))
    p95 = sway_bound.p95_pct(sway_bound.level_model(10.0), still, sigma, seed=1)
    assert p95 == pytest.approx(100.0 * 1.96 * sigma, rel=0.1)


def test_the_default_sensor_cannot_hold_0_1_g_to_half_a_percent_through_sway() -> None:
    """The bound (docs/performance.md): 430 ug/sqrt(Hz) misses 0.5%, 200 ug/sqrt(Hz) makes it."""
    amplitude = sway_bound.sway_amplitude(30.0, 150.0)
    blocks = round((sway_bound.BURN_IN_S + sway_bound.SCORE_S) / sway_bound.DT_S)
    truth = sway_bound.gaussian_sway(0.2, amplitude / math.sqrt(2.0), blocks,
                                     np.random.default_rng(1))  # fmt: skip
    grid = np.geomspace(0.002, 2.0, 12)
    at_default, _ = sway_bound.best(sway_bound.level_model, grid, truth, 430e-6 / 0.1)
    quieter, _ = sway_bound.best(sway_bound.level_model, grid, truth, 200e-6 / 0.1)
    assert at_default > 0.5
    assert quieter < 0.5
