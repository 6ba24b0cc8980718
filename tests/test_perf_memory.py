"""Memory that does not grow with session length: truth file, `liv device drive` (issue 11)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from controller.estimation import block_phases, fit_sine, whole_cycle_length
from controller.openloop import SteadyFit, drive_open_loop
from firmware_bridge.client import DeviceClient, SampleBlock
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.sim.device import SimulatedDevice
from firmware_bridge.sim.truth import BLOCK_FIELDS, CHUNK_SAMPLES, SAMPLE_FIELDS, TruthWriter
from tests.simhelpers import load_truth


def _fill(writer: TruthWriter, n: int, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    columns = writer.sample_columns(n)
    values = {
        "t_s": k + np.arange(n) / 1600.0,
        "accel_g": rng.standard_normal(n),
        "drive": rng.uniform(0.0, 0.9, n),
        "freq_hz": np.full(n, 30.0 + k % 7, dtype=np.float32),
        "sample_index": np.arange(n, dtype=np.int64) + 1000 * k - (5000 if k < 3 else 0),
    }
    for name, value in values.items():
        columns[name][:] = value
    writer.commit_block(n, float(k), 20.0 + k, 70.0 - k)
    return values


def test_truth_writer_round_trip_through_many_chunks(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "truth.npz"
    writer = TruthWriter(path, 1600.0, chunk_samples=64)
    rng = np.random.default_rng(1)
    written: list[dict[str, np.ndarray]] = []
    for k in range(200):  # blocks of 1-40 samples: many flushes, some mid-block boundaries
        written.append(_fill(writer, 1 + k % 40, k, rng))
        assert all(c.fill <= 64 for c in writer._samples.values())  # never more than a chunk
    writer.events.append("1.000000 load_step")
    writer.close()
    truth = load_truth(path)
    assert list(truth) == [*SAMPLE_FIELDS, *BLOCK_FIELDS, "events", "sample_rate_hz"]
    for name, dtype in SAMPLE_FIELDS.items():
        expected = np.concatenate([w[name] for w in written])
        assert truth[name].dtype == dtype
        np.testing.assert_array_equal(truth[name], expected)
    np.testing.assert_array_equal(truth["block_t_s"], np.arange(200.0))
    np.testing.assert_array_equal(truth["coil_temp_c"], 20.0 + np.arange(200.0))
    np.testing.assert_array_equal(truth["patient_mass_kg"], 70.0 - np.arange(200.0))
    assert list(truth["events"]) == ["1.000000 load_step"]
    assert float(truth["sample_rate_hz"]) == 1600.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["truth.npz"]  # scratch removed


def test_truth_writer_with_nothing_written_gives_empty_fields(tmp_path: Path) -> None:
    writer = TruthWriter(tmp_path / "t.npz", 3200.0)
    writer.close()
    truth = load_truth(tmp_path / "t.npz")
    assert truth["t_s"].shape == (0,)
    assert truth["events"].shape == (0,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]


def test_device_truth_stays_in_one_chunk_of_memory(tmp_path: Path) -> None:
    path = tmp_path / "truth.npz"
    device = SimulatedDevice(parse_sim_url(f"sim://?speed=max&seed=4&truth={path}"))
    blocks = 3 * CHUNK_SAMPLES // device.block_samples  # three chunks' worth, streamed out
    try:
        for _ in range(blocks):
            device.step()
        writer = device._truth
        assert isinstance(writer, TruthWriter)
        held = max(c.fill for c in writer._samples.values())
        on_disk = min(c.written for c in writer._samples.values())
        assert writer.samples >= blocks * device.block_samples
        # what is in memory is at most one chunk; the rest is on disk
        assert held <= CHUNK_SAMPLES
        assert on_disk >= 2 * CHUNK_SAMPLES
    finally:
        device.close()
    truth = load_truth(path)
    assert truth["t_s"].size == writer.samples  # the close adds the plate's lingering blocks
    np.testing.assert_array_equal(np.diff(truth["sample_index"][truth["sample_index"] >= 0]), 1)


def _blocks(freq_hz: float, fs: float, count: int, n: int = 32) -> list[SampleBlock]:
    rng = np.random.default_rng(7)
    out = []
    for k in range(count):
        phase0 = 2.0 * np.pi * freq_hz * k * n / fs + 0.3
        phases = block_phases(phase0, freq_hz, n, fs)
        accel = 1.0 + 0.3 * np.cos(phases - 0.4) + 0.01 * rng.standard_normal(n)
        accel += 0.02 * np.cos(2 * phases)
        out.append(SampleBlock(k * n, np.zeros(n, np.int16), accel, phase0, freq_hz, 0.2, 0))
    return out


@pytest.mark.parametrize(("freq_hz", "count"), [(45.0, 101), (31.7, 7), (90.0, 1)])
def test_steady_fit_matches_the_fit_over_every_block(freq_hz: float, count: int) -> None:
    fs = 1600.0
    blocks = _blocks(freq_hz, fs, count)
    steady = SteadyFit(freq_hz, fs)
    for block in blocks:
        steady.push(block)
    accel = np.concatenate([b.accel_g for b in blocks])
    phase = np.concatenate([block_phases(b.phase_rad, freq_hz, 32, fs) for b in blocks])
    n = whole_cycle_length(accel.size, freq_hz, fs)
    fit = fit_sine(accel[-n:], phase[-n:])
    peak, total, dc, residual = steady.result()
    assert peak == pytest.approx(fit.peak_g, rel=1e-12)
    assert total == pytest.approx(fit.total_peak_g, rel=1e-12)
    assert dc == pytest.approx(fit.dc_g, rel=1e-12)
    assert residual == pytest.approx(fit.residual_rms_g, rel=1e-6)


def test_steady_fit_of_nothing_is_nan() -> None:
    assert all(np.isnan(v) for v in SteadyFit(45.0, 1600.0).result())


def _drive_peak_bytes(seconds: float) -> int:
    with DeviceClient.open("sim://?speed=max&seed=2&sway=0") as device:
        tracemalloc.start()
        try:
            result = drive_open_loop(device, 45.0, 0.1, seconds, ramp_up_s=0.2, ramp_down_s=0.2)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.peak_g > 0.05
    return peak


def test_open_loop_drive_does_not_keep_its_blocks() -> None:
    short = _drive_peak_bytes(2.0)
    long = _drive_peak_bytes(30.0)
    # keeping every block costs about 1 kB per 20 ms block (1400 blocks more here: > 1 MB)
    assert long - short < 300_000, (short, long)
