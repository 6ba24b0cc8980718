"""The simulated device's cost per block in a closed loop (issue 11, session 5).

In a closed loop the host changes the drive on most blocks, so the device simulates most blocks
one at a time; these tests check that such a block computes only what the device uses, with the
same samples as before.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import firmware_bridge.sim.device as sim_device
import firmware_bridge.sim.physics as sim_physics
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import LinkLostError
from firmware_bridge.sim.device import SimulatedDevice
from firmware_bridge.sim.physics import PlatePhysics, _Tables
from firmware_bridge.sim.profile import load_profile
from firmware_bridge.sim.sensor import Accelerometer
from tests.simhelpers import load_truth


def test_a_closed_loop_block_computes_only_accel_and_coil_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The device needs a block's acceleration (and the current, for the coil's heating): the
    volts, hip and patient-force rows of the tables are never filled for it."""
    filled = [0]
    all_outputs = _Tables.all_outputs

    def counted(self: _Tables) -> Any:
        filled[0] += 1
        return all_outputs(self)

    monkeypatch.setattr(_Tables, "all_outputs", counted)
    with DeviceClient.open("sim://?speed=max&seed=3&mass=70") as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        for k in range(60):  # a closed loop's pattern: a small correction on most blocks
            dev.read_block(timeout_s=1.0)
            if k % 5 != 4:
                dev.set_drive(0.1 + 0.001 * (k % 3), 0.02, wait=False)
    assert filled[0] == 0


def test_run_accel_is_runs_acceleration() -> None:
    profile = load_profile("default")
    full = PlatePhysics(profile, 70.0, 1600.0, np.random.default_rng(1))
    lean = PlatePhysics(profile, 70.0, 1600.0, np.random.default_rng(1))
    w_turns = 45.0 / 1600.0
    for k, (n, drive, rate) in enumerate([(32, 0.0, 2.0), (7, 0.04, 1.0), (25, 0.05, 0.0)] * 30):
        phase = 2.0 * math.pi * w_turns * 32 * k
        expected = full.run(n, 45.0, phase, drive, rate).accel_g
        np.testing.assert_array_equal(lean.run_accel(n, 45.0, phase, drive, rate), expected)
    assert lean.coil_temperature_c == full.coil_temperature_c
    with pytest.raises(ValueError, match="drive"):
        lean.run_accel(32, 45.0, 0.0, 1.5, 0.0)


def test_a_read_without_a_scheduled_cable_pull_does_not_ask_for_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The link checks the simulated cable on every call only if the URL pulls it."""
    asked = [0]
    disconnected = SimulatedDevice.disconnected

    def counted(self: SimulatedDevice) -> bool:
        asked[0] += 1
        return bool(disconnected.fget(self))  # type: ignore[attr-defined]

    monkeypatch.setattr(SimulatedDevice, "disconnected", property(counted))
    with DeviceClient.open("sim://?speed=max&seed=3") as dev:
        asked[0] = 0
        for _ in range(50):
            dev.read_block(timeout_s=1.0)
        assert asked[0] == 0
    with (
        DeviceClient.open("sim://?speed=max&seed=3&disconnect_at=1.0") as dev,
        pytest.raises(LinkLostError),
    ):
        _read_blocks(dev, 100)


def _read_blocks(dev: DeviceClient, blocks: int) -> None:
    for _ in range(blocks):
        dev.read_block(timeout_s=1.0)


def _heating_plant(resistance_update_every: int | None) -> PlatePhysics:
    profile = load_profile("default")
    if resistance_update_every is not None:
        profile = profile.with_overrides(
            numerics={"resistance_update_every": resistance_update_every}
        )
    return PlatePhysics(profile, 70.0, 1600.0, np.random.default_rng(2))


def test_table_rebuilds_come_in_batches_of_four_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sway and stepping are known in advance and the coil resistance is held for four
    updates, so the tables of four updates are built together: one matrix exponential call
    (of a stack) per four updates instead of one per update."""
    calls = [0]
    expm = sim_physics.expm

    def counted(a: Any) -> Any:
        calls[0] += 1
        return expm(a)

    monkeypatch.setattr(sim_physics, "expm", counted)
    plant = _heating_plant(None)  # the default profile
    updates = 100  # 24 s of plant time at 0.24 s per update, swaying
    for k in range(updates * 12):
        plant.run(32, 45.0, 2.0 * math.pi * 45.0 * 32 * k / 1600.0, 0.5, 0.0)
    assert calls[0] <= updates / 4 + 1


def test_tables_built_together_are_those_built_one_at_a_time() -> None:
    plant = _heating_plant(4)
    w = 2.0 * math.pi * 45.0
    params = [plant._params_at(0.24 * k) for k in range(4)]
    params[2] = dataclasses.replace(params[2], resistance_ohm=4.7)
    params[3] = dataclasses.replace(params[3], open_circuit=True)
    together = plant._build_tables(params, w)
    for p, table in zip(params, together, strict=True):
        alone = plant._build_tables([p], w)[0]
        np.testing.assert_array_equal(table.state, alone.state)
        np.testing.assert_array_equal(table.all_outputs(), alone.all_outputs())
        assert table.response_g_per_drive == alone.response_g_per_drive


def test_holding_the_coil_resistance_for_four_updates_moves_the_plate_by_under_1e3() -> None:
    """A fast-heating coil (drive 0.5 at 45 Hz on 70 kg: 20 -> 30 C in a minute, faster than
    any dose needs): with the resistance refreshed every 0.96 s instead of every 0.24 s the
    plate's acceleration stays within 1e-3 of its peak of the exact resistance's (5e-4 seen)
    and the coil within 0.01 K (4e-3 K seen)."""
    held, exact = _heating_plant(4), _heating_plant(1)
    worst = peak = 0.0
    for k in range(60 * 50):
        phase = 2.0 * math.pi * 45.0 * 32 * k / 1600.0
        a = held.run_accel(32, 45.0, phase, 0.5, 0.0)
        b = exact.run_accel(32, 45.0, phase, 0.5, 0.0)
        worst = max(worst, float(np.abs(a - b).max()))
        peak = max(peak, float(np.abs(b).max()))
    assert held.coil_temperature_c > 29.0
    assert held.coil_temperature_c == pytest.approx(exact.coil_temperature_c, abs=0.01)
    assert 0.0 < worst < 1e-3 * peak


def _closed_loop_counts(url: str) -> np.ndarray:
    """Output on, a ramp up, then a small correction on 4 blocks of 5: the streamed counts."""
    with DeviceClient.open(url) as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(0.2, 0.2)
        counts = []
        for k in range(400):
            counts.append(dev.read_block(timeout_s=1.0).counts)
            if k % 5 != 4:
                dev.set_drive(0.2 + 0.001 * (k % 3), 0.02, wait=False)
        return np.concatenate(counts)


def test_a_closed_loop_block_is_one_product_for_plate_and_sensor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A block at one drive segment (a one-block ramp, or a constant drive) is simulated by
    one product for the plate and the sensor; the sensor is never run on its own."""
    measured = [0]
    measure = Accelerometer.measure

    def counted(self: Accelerometer, accel: Any) -> Any:
        measured[0] += 1
        return measure(self, accel)

    monkeypatch.setattr(Accelerometer, "measure", counted)
    _closed_loop_counts("sim://?speed=max&seed=4&mass=70")
    assert measured[0] < 20  # the blocks whose ramp ends inside them


def test_one_product_per_block_is_the_plate_then_the_sensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "sim://?speed=max&seed=5&mass=90&truth="
    fused = _closed_loop_counts(url + str(tmp_path / "fused.npz"))
    monkeypatch.setattr(sim_device._BlockKernel, "run", lambda *args: None)
    apart = _closed_loop_counts(url + str(tmp_path / "apart.npz"))
    first, second = load_truth(tmp_path / "fused.npz"), load_truth(tmp_path / "apart.npz")
    np.testing.assert_array_equal(first["drive"], second["drive"])
    np.testing.assert_array_equal(first["t_s"], second["t_s"])
    np.testing.assert_allclose(first["accel_g"], second["accel_g"], rtol=0.0, atol=1e-12)
    assert fused.shape == apart.shape
    assert np.abs(fused.astype(np.int32) - apart).max() <= 1
    assert np.mean(fused != apart) < 1e-3


def test_a_few_steady_blocks_are_simulated_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of blocks simulated ahead costs about five single blocks before its first block,
    so a host that changes the drive every few blocks (``liv run`` holds a drive for 2-7
    blocks) has its blocks simulated one at a time, not in batches of two or three."""
    batches: list[int] = []
    run_ahead = PlatePhysics.run_ahead

    def counted(self: PlatePhysics, n: int, freq: float, phases: Any, drive: float) -> Any:
        batches.append(len(phases))
        return run_ahead(self, n, freq, phases, drive)

    monkeypatch.setattr(PlatePhysics, "run_ahead", counted)
    with DeviceClient.open("sim://?speed=max&seed=3&mass=70") as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        for k in range(300):
            dev.read_block(timeout_s=1.0)
            if k % 6 == 0:  # a correction every sixth block: steady runs of five
                dev.set_drive(0.1 + 0.001 * (k % 4), 0.02, wait=False)
            if k == 6:
                batches.clear()  # the output idle before the first corrections: a long run
        assert batches == []  # (closing lets the plate run on alone: long runs again)
