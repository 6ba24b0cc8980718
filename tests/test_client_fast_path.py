"""The client's per-block shortcuts give exactly what the plain expressions give (issue 11).

Each shortcut on the path of every block (the phase in radians by one multiplication, a
SampleBlock made from one dict, a SET_DRIVE's ramp remembered) is compared here with the
expression or constructor it replaced, over the boundary values of its wire field.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from firmware_bridge.client import PHASE_TURN, RAD_PER_PHASE_UNIT, DeviceClient, SampleBlock
from firmware_bridge.protocol import Samples, SetDrive, encode_message
from tests.test_link_cost import ReplayPort


def test_phase_by_one_multiplication_is_the_division_bit_for_bit() -> None:
    """Every phase a wire can carry at its edges and 200 000 random ones, as Python floats
    and as numpy arrays (the batch path)."""
    rng = np.random.default_rng(11)
    edges = [0, 1, 2, 3, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 2, 2**32 - 1]
    phases = np.concatenate(
        [np.array(edges, dtype=np.uint32), rng.integers(0, 2**32, 200_000, dtype=np.uint32)]
    )
    want = 2.0 * np.pi * phases / PHASE_TURN
    assert np.array_equal((phases * RAD_PER_PHASE_UNIT).view(np.uint64), want.view(np.uint64))
    for phase in [*edges, *phases[:2000].tolist()]:
        assert phase * RAD_PER_PHASE_UNIT == 2.0 * np.pi * phase / PHASE_TURN
        message = Samples(0, phase, 0, 0, np.zeros(1, np.int16))
        assert phase * RAD_PER_PHASE_UNIT == message.phase_rad


def test_a_sample_block_is_still_a_frozen_dataclass() -> None:
    counts = np.arange(4, dtype=np.int16)
    accel = counts / 8192.0
    block = SampleBlock(7, counts, accel, 0.5, 45.0, 0.25, 3)
    by_keyword = SampleBlock(
        first_index=7,
        counts=counts,
        accel_g=accel,
        phase_rad=0.5,
        freq_hz=45.0,
        drive=0.25,
        missing_before=3,
    )
    assert [f.name for f in dataclasses.fields(SampleBlock)] == list(vars(block))
    assert dataclasses.astuple(block)[0] == 7
    assert (block.first_index, block.phase_rad, block.freq_hz, block.drive) == (7, 0.5, 45.0, 0.25)
    assert block.missing_before == by_keyword.missing_before == 3
    assert block.counts is counts
    assert block.accel_g is accel
    with pytest.raises(dataclasses.FrozenInstanceError):
        block.drive = 0.5  # type: ignore[misc]
    moved = dataclasses.replace(block, drive=0.5)
    assert moved.drive == 0.5
    assert moved.first_index == 7
    assert "SampleBlock(first_index=7," in repr(block)
    match block:
        case SampleBlock(first, _, _, phase):
            assert (first, phase) == (7, 0.5)
        case _:
            pytest.fail("positional match")


@pytest.mark.parametrize("ramps", [[0.02, 0.02, 0.5, 0.02], [0.0, -0.0, 0.0004999, 0.0005, 70.0]])
def test_set_drive_sends_what_the_message_encodes_whatever_ramps_came_before(
    ramps: list[float],
) -> None:
    """The ramp of the last SET_DRIVE is remembered: a new one is still converted, clamped to
    0..65535 ms and rounded half up, and a bad one still refused."""
    port = ReplayPort([])
    dev = DeviceClient(port, "replay")  # type: ignore[arg-type]
    want = []
    for seq, ramp_s in enumerate(ramps):
        dev.set_drive(0.1, ramp_s, wait=False)
        ramp_ms = max(0, min(0xFFFF, int(np.floor(ramp_s * 1000.0 + 0.5))))
        want.append(encode_message(SetDrive(6554, ramp_ms), seq))
    assert port.writes == want
    for bad in (float("nan"), float("inf")):
        with pytest.raises((ValueError, OverflowError)):
            dev.set_drive(0.1, bad, wait=False)
    assert len(port.writes) == len(ramps)
    dev.close()
