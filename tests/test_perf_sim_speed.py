"""The simulator's speed work (issue 11): blocks simulated ahead at a constant drive.

The device computes the blocks up to its next slow-parameter update in one physics product when
the drive is constant and takes them one per block boundary; these tests check that it does so,
that the result is the block-by-block simulation up to the last bits, that every command still
takes effect at its block and that the same URL still gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import firmware_bridge.sim.device as sim_device
from controller.estimation import AmplitudeEstimator, block_phases, fit_sine
from controller.exposure import ExposureMeter
from controller.openloop import SteadyFit
from firmware_bridge.client import DeviceClient, SampleBlock
from firmware_bridge.sim.physics import PlatePhysics
from tests.simhelpers import load_truth, run_blocks


def _session(url: str) -> np.ndarray:
    """Output on, a ramp to 0.3, a hold, a step to 0.2 and a hold: the streamed counts."""
    with DeviceClient.open(url) as dev:
        dev.start_output()
        dev.set_drive(0.3, 0.2)
        blocks = run_blocks(dev, 1.5)
        dev.set_drive(0.2, 0.1)
        blocks += run_blocks(dev, 1.5)
        return np.concatenate([b.counts for b in blocks])


def test_a_constant_drive_is_simulated_many_blocks_per_physics_product(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    products = [0]
    segment = PlatePhysics._segment

    def counted(self: PlatePhysics, *args: Any) -> Any:
        products[0] += 1
        return segment(self, *args)

    monkeypatch.setattr(PlatePhysics, "_segment", counted)
    segment_start = PlatePhysics.segment_start  # a single block's product (device._BlockKernel)

    def counted_start(self: PlatePhysics, *args: Any) -> Any:
        products[0] += 1
        return segment_start(self, *args)

    monkeypatch.setattr(PlatePhysics, "segment_start", counted_start)
    run_ahead = getattr(PlatePhysics, "run_ahead", None)
    if run_ahead is not None:

        def counted_ahead(self: PlatePhysics, *args: Any) -> Any:
            products[0] += 1
            return run_ahead(self, *args)

        monkeypatch.setattr(PlatePhysics, "run_ahead", counted_ahead)
    with DeviceClient.open("sim://?speed=max&seed=3") as dev:
        dev.start_output()
        dev.set_drive(0.3, 0.2)
        run_blocks(dev, 0.5)
        products[0] = 0
        blocks = len(run_blocks(dev, 4.0))  # a hold: heartbeats only
        used = products[0]
    assert blocks >= 190
    assert used <= blocks / 5, f"{used} physics products for {blocks} blocks"


def test_blocks_simulated_ahead_are_the_block_by_block_simulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "sim://?speed=max&seed=6&mass=80&truth="
    ahead = _session(url + str(tmp_path / "ahead.npz"))
    monkeypatch.setattr(sim_device, "AHEAD_BLOCKS_MAX", 1)  # every block on its own
    single = _session(url + str(tmp_path / "single.npz"))
    first, second = load_truth(tmp_path / "ahead.npz"), load_truth(tmp_path / "single.npz")
    # Commands, ramps and the drive are exactly where they were, sample for sample ...
    np.testing.assert_array_equal(first["drive"], second["drive"])
    np.testing.assert_array_equal(first["sample_index"], second["sample_index"])
    np.testing.assert_array_equal(first["t_s"], second["t_s"])
    # ... and the plate's motion and the sensor's counts differ in the last bits at most.
    np.testing.assert_allclose(first["accel_g"], second["accel_g"], rtol=0.0, atol=1e-12)
    assert ahead.shape == single.shape
    assert np.abs(ahead.astype(np.int32) - single).max() <= 1


def test_the_same_url_gives_the_same_bytes_with_blocks_simulated_ahead(tmp_path: Path) -> None:
    url = "sim://?speed=max&seed=8&load_step_at=1.3&load_step_kg=110&truth="
    one = _session(url + str(tmp_path / "one.npz"))
    two = _session(url + str(tmp_path / "two.npz"))
    np.testing.assert_array_equal(one, two)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()


def test_a_host_changing_the_drive_often_has_few_blocks_computed_for_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    computed, taken = [0], [0]
    run_ahead, commit_ahead = PlatePhysics.run_ahead, PlatePhysics.commit_ahead

    def counted_run(self: PlatePhysics, n: int, freq: float, phases: Any, drive: float) -> Any:
        computed[0] += len(phases)
        return run_ahead(self, n, freq, phases, drive)

    def counted_commit(self: PlatePhysics, ahead: Any, block: int) -> None:
        taken[0] += 1
        commit_ahead(self, ahead, block)

    monkeypatch.setattr(PlatePhysics, "run_ahead", counted_run)
    monkeypatch.setattr(PlatePhysics, "commit_ahead", counted_commit)
    with DeviceClient.open("sim://?speed=max&seed=3") as dev:
        dev.start_output()
        dev.set_drive(0.2, 0.2)
        run_blocks(dev, 0.3)
        for k in range(60):  # a closed loop's pattern: a small correction every other block
            dev.set_drive(0.2 + 0.001 * (k % 2), 0.0, wait=False)
            run_blocks(dev, 0.04)
        wasted = computed[0] - taken[0]
    assert wasted <= 12, f"{computed[0]} blocks simulated ahead, {taken[0]} used"


def test_the_open_loop_fit_takes_its_sums_many_blocks_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    products = [0]
    terms = SteadyFit._terms

    def counted(self: SteadyFit, x: Any, phase: Any) -> Any:
        products[0] += 1
        return terms(self, x, phase)

    monkeypatch.setattr(SteadyFit, "_terms", counted)
    fs, freq, n = 1600.0, 45.0, 32
    steady = SteadyFit(freq, fs)
    for k in range(300):
        phase0 = 2.0 * np.pi * freq * k * n / fs
        accel = 1.0 + 0.3 * np.cos(block_phases(phase0, freq, n, fs) - 0.4)
        steady.push(SampleBlock(k * n, np.zeros(n, np.int16), accel, phase0, freq, 0.2, 0))
    peak = steady.result()[0]
    assert peak == pytest.approx(0.3, rel=1e-9)
    assert products[0] <= 300 / 20, f"{products[0]} sum products for 300 blocks"


def test_the_estimator_window_is_exact_after_ten_minutes_of_blocks() -> None:
    """The window's sums come from the window itself (one product), not from differences of
    totals that grow for the whole session, so the fit stays exact however long it runs."""
    fs, freq, n = 1600.0, 45.0, 32
    rng = np.random.default_rng(4)
    est = AmplitudeEstimator(fs, window_s=0.1)
    blocks = 30000  # 10 minutes
    phase0 = 2.0 * np.pi * freq * n / fs * np.arange(blocks)
    steps = block_phases(0.0, freq, n, fs)
    tail: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(blocks):
        phase = phase0[k] + steps
        accel = 1.0 + 0.3 * np.cos(phase - 0.4) + 1e-4 * rng.standard_normal(n)
        est.push(accel, float(phase0[k]), freq, 0.2)
        if k >= blocks - 6:
            tail.append((accel, phase))
    estimate = est.estimate(freq)
    assert estimate is not None
    accel = np.concatenate([a for a, _ in tail])
    phase = np.concatenate([p for _, p in tail])
    m = estimate.fit.n_samples
    fit = fit_sine(accel[-m:], phase[-m:])
    assert estimate.fit.peak_g == pytest.approx(fit.peak_g, rel=1e-12)
    assert estimate.fit.residual_rms_g == pytest.approx(fit.residual_rms_g, rel=1e-6)
    assert estimate.mean_drive == pytest.approx(0.2, rel=1e-12)


def test_the_exposure_meter_filters_many_blocks_per_product(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    products = [0]
    filter_full = ExposureMeter._filter_full

    def counted(self: ExposureMeter) -> None:
        products[0] += 1
        filter_full(self)

    monkeypatch.setattr(ExposureMeter, "_filter_full", counted)
    fs, n = 1600.0, 32
    signal = 1.0 + 0.3 * np.sin(2.0 * np.pi * 45.0 * np.arange(300 * n + 7) / fs)
    meter = ExposureMeter(fs)
    for k in range(300):
        meter.push(signal[k * n : (k + 1) * n])
    meter.push(signal[300 * n :])  # a short last push is filtered too
    figures = meter.figures()
    assert products[0] <= 300 / 6
    assert figures.duration_s == pytest.approx(signal.size / fs)
    one = ExposureMeter(fs)  # the same figures as one push of everything
    one.push(signal)
    assert figures.a_w_m_s2 == pytest.approx(one.figures().a_w_m_s2, rel=1e-12)
