"""The firmware ceiling's cheap test over a run ahead (issue 11): a window it calls clear is one
the exact fit does not trip on, and the device trips where it tripped block by block."""

from __future__ import annotations

import math

import numpy as np
import pytest

from firmware_bridge.protocol import (
    FaultCode,
    Heartbeat,
    SetDrive,
    SetFrequency,
    SetOutput,
    drive_to_q16,
    encode_message,
    round_half_up,
)
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.sim.device import (
    ACCEL_WINDOW_BLOCKS,
    FitSums,
    SimulatedDevice,
    _BlockFit,
    _fitted_peak_g,
    _surely_clear,
)

FS, N, COUNTS_PER_G = 1000.0, 32, 2048.0
CEILING_MG = 600


def _blocks(peaks_g: list[float], freq_hz: float, seed: int) -> list[FitSums]:
    """The fit's sums of blocks of a sine of each peak (plus gravity and noise), in counts."""
    rng = np.random.default_rng(seed)
    fit = _BlockFit(FS, COUNTS_PER_G)
    sums = []
    turns = 0.0
    for peak in peaks_g:
        phase = 2 * math.pi * (turns + freq_hz * np.arange(N) / FS)
        g = 1.0 + peak * np.sin(phase) + rng.normal(0.0, 0.01, N)
        counts = np.clip(np.round(g * COUNTS_PER_G), -32768, 32767).astype(np.int16)
        sums.append(fit.sums(counts, turns, freq_hz))
        turns = (turns + freq_hz * N / FS) % 1.0
    return sums


def _exact_trips(sums: list[FitSums]) -> list[bool]:
    w = ACCEL_WINDOW_BLOCKS
    return [False] * w + [
        round_half_up(_fitted_peak_g(sums[e - w : e]) * 1000) > CEILING_MG
        for e in range(w, len(sums) + 1)
    ]


def test_a_window_called_clear_never_trips_the_exact_fit() -> None:
    rng = np.random.default_rng(11)
    called_clear = 0
    for seed in range(20):
        # peaks wandering across the ceiling, the margin and far below it; some zero
        peaks = rng.uniform(0.0, 1.6 * CEILING_MG / 1000, 60).tolist()
        peaks[10:14] = [0.0] * 4
        sums = _blocks(peaks, rng.uniform(30.0, 90.0), seed)
        clear = _surely_clear(sums, CEILING_MG)
        assert len(clear) == len(sums) + 1
        assert not any(clear[:ACCEL_WINDOW_BLOCKS])
        for e, (is_clear, trips) in enumerate(zip(clear, _exact_trips(sums), strict=True)):
            assert not (is_clear and trips), f"window ending at {e} called clear but trips"
        called_clear += sum(clear)
    assert called_clear > 200  # the cheap test does clear most windows well below the ceiling


def test_windows_near_the_ceiling_are_left_to_the_exact_fit() -> None:
    # just under the ceiling (no trip), but inside the margin: not called clear
    sums = _blocks([0.97 * CEILING_MG / 1000] * 10, 45.0, 3)
    assert not any(_surely_clear(sums, CEILING_MG))
    assert not any(_exact_trips(sums))
    # too short a run for a window, and a too-short window's determinant (a constant)
    assert _surely_clear(sums[:2], CEILING_MG) == [False] * 3
    flat = [(0.0, 0.0, 0.0, 0.0, 0.0)] * 5
    assert not any(_surely_clear(flat, CEILING_MG))


def _steady_device() -> SimulatedDevice:
    """A device at a constant drive, part way into blocks simulated ahead."""
    device = SimulatedDevice(parse_sim_url("sim://?speed=max&seed=4&mass=70"))
    seq = 0
    for block in range(200):
        message = {30: SetFrequency(45_000), 31: SetOutput(1), 32: SetDrive(drive_to_q16(0.1), 0)}
        if block in message or block % 5 == 0:
            device.receive(encode_message(message.get(block, Heartbeat()), seq))
            seq += 1
        device.step()
    while True:
        device.step()
        ahead = device._ahead
        if ahead is not None and 3 <= ahead.next <= ahead.blocks - 8 and not device._inbox:
            device.take_output()
            return device


@pytest.mark.parametrize("host_bytes_due", [False, True])
def test_a_window_that_is_not_the_run_aheads_own_is_fitted_exactly(host_bytes_due: bool) -> None:
    # The blocks in the device's fit window are not those its run ahead holds (a test or a
    # fault poked them): the cheap test must not answer for them; the ceiling trips at once,
    # as it does block by block.
    hot = _blocks([1.5 * CEILING_MG / 1000] * 3, 45.0, 1)
    stepped, batched = _steady_device(), _steady_device()
    for device in (stepped, batched):
        device.ceiling_mg = CEILING_MG
        device._fit_window.clear()
        device._fit_window.extend(hot)
        if host_bytes_due:  # the boundary's checks are made before the host's bytes
            device.receive(encode_message(Heartbeat(), 0xFFFF))
    for _ in range(6):
        stepped.step()
    assert batched.step_many(6) == 6
    assert stepped._fault_code == batched._fault_code == int(FaultCode.OVER_ACCELERATION)
    assert stepped.take_output() == batched.take_output()


def test_a_ceiling_lowered_after_the_run_ahead_is_fitted_exactly() -> None:
    # The run ahead's "surely clear" flags were judged against the ceiling of their day; a
    # ceiling lowered since (a setting, a fault injection) must be checked block by block
    # again: stepped and batched trip alike, at the same block.
    stepped, batched = _steady_device(), _steady_device()
    peak_mg = round_half_up(_fitted_peak_g(list(stepped._fit_window)) * 1000)
    for device in (stepped, batched):
        device.ceiling_mg = max(1, peak_mg // 2)
    for _ in range(6):
        stepped.step()
    assert batched.step_many(6) == 6
    assert stepped._fault_code == batched._fault_code == int(FaultCode.OVER_ACCELERATION)
    assert stepped.take_output() == batched.take_output()
