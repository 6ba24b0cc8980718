"""The simulated device's cost per block in a closed loop (issue 11, session 5).

In a closed loop the host changes the drive on most blocks, so the device simulates most blocks
one at a time; these tests check that such a block computes only what the device uses, with the
same samples as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import LinkLostError
from firmware_bridge.sim.device import SimulatedDevice
from firmware_bridge.sim.physics import PlatePhysics, _Tables
from firmware_bridge.sim.profile import load_profile


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
