"""The simulated plate's cost per block (issue 11, session 8): cheaper paths, the same bytes.

Each faster path is checked against the one it replaces: a SAMPLES frame packed in one call
against ``encode_frame`` of ``Samples.pack()``, the closed loop's per-block input vector,
written into one reused buffer, against a buffer spoilt before every block, and runs ahead
through several slow-parameter windows against runs ahead that end at the next update.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import firmware_bridge.sim.device as sim_device
from benchmarks.sim_bytes import Case, cases, run_case
from firmware_bridge.codec import encode_frame, encode_samples_frame
from firmware_bridge.protocol import (
    MAX_BLOCK_SAMPLES,
    Samples,
    SetDrive,
    SetFrequency,
    SetOutput,
    StatusRequest,
    drive_to_q16,
    encode_message,
)
from firmware_bridge.sim.physics import PlatePhysics
from firmware_bridge.transport import open_port


@pytest.mark.parametrize("n", [1, 7, 32, MAX_BLOCK_SAMPLES])
@pytest.mark.parametrize("seq", [0, 1, 0xFFFF, 0x10000 + 5])
def test_a_samples_frame_packed_in_one_call_is_the_messages_frame(n: int, seq: int) -> None:
    rng = np.random.default_rng(n + seq)
    counts = rng.integers(-32768, 32768, size=n).astype(np.int16)
    counts[0] = 0  # a zero byte inside: COBS has something to do
    fields = (2**64 - 1 - n, 2**32 - 1, 45_000, drive_to_q16(0.5))
    want = encode_frame(Samples.TYPE, seq, Samples(*fields, counts).pack())
    assert encode_samples_frame(seq, *fields, counts) == want
    # a row of a 2-D array (what the device sends) packs the same
    rows = np.stack([counts, counts])
    assert encode_samples_frame(seq, *fields, rows[1]) == want


def test_a_samples_field_out_of_range_is_refused_as_samples_pack_refuses_it() -> None:
    counts = np.zeros(4, dtype=np.int16)
    with pytest.raises(struct.error):
        Samples(-1, 0, 45_000, 0, counts).pack()
    with pytest.raises(struct.error):
        encode_samples_frame(0, -1, 0, 45_000, 0, counts)


def _wire(monkeypatch: pytest.MonkeyPatch, poisoned_vector_each_block: bool) -> bytes:
    """A closed loop's bytes: the drive stepped up, down to zero (no drive weights) and up
    again, every block on its own (the kernel's buffer sees driven and undriven blocks).

    Poisoned: before each block the kernel's buffer is all NaN but its constant 1, so an entry
    the block does not write itself spoils the block's counts."""
    if poisoned_vector_each_block:
        run = sim_device._BlockKernel.run

        def fresh(self: sim_device._BlockKernel, *args: float) -> object:
            if self._u.size:
                self._u[:-1] = np.nan
            return run(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(sim_device._BlockKernel, "run", fresh)
    port = open_port("sim://?speed=max&seed=21&mass=65")
    try:
        port.timeout = None  # a read waits (in simulated time) for all it asks
        device = port.device  # type: ignore[attr-defined]
        frame = device.samples_frame_bytes
        out = bytearray(port.read(25 * frame))  # booted, and resting blocks for SET_OUTPUT
        # (command, frames read after it): each drive held a few blocks after its ramp, so
        # driven blocks of one segment (the kernel's) come before and after undriven ones
        plan = [(SetFrequency(40_000), 1), (SetOutput(1), 1)]
        for k in range(6):
            plan += [(SetDrive(drive_to_q16(0.1 + 0.02 * (k % 3)), 20), 4), (SetDrive(0, 0), 4)]
        for seq, (message, frames) in enumerate(plan):
            port.write(encode_message(message, seq))
            out += port.read(frames * frame)
        out += port.read(40 * frame)
        return bytes(out)
    finally:
        port.close()


def test_the_closed_loops_reused_input_vector_is_written_whole_every_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reused = _wire(monkeypatch, poisoned_vector_each_block=False)
    poisoned = _wire(monkeypatch, poisoned_vector_each_block=True)
    assert len(reused) > 40 * 80
    assert reused == poisoned


def _digests(case: Case, tmp_path: Path, one_window: bool) -> dict[str, object]:
    with pytest.MonkeyPatch.context() as patch:
        if one_window:  # every run ahead ends at the next slow-parameter update, as before
            patch.setattr(sim_device.SimulatedDevice, "_windows_after", lambda *_: [])
        return run_case(case, tmp_path / ("one" if one_window else "many"))


# A steady open loop, then a drive step, a status request and a frequency change landing inside
# runs ahead that span several windows (the blocks not yet taken are dropped there).
_INTERRUPTED = Case(
    "a steady drive interrupted inside long runs ahead",
    "seed=31&mass=75",
    9.0,
    (
        (0.3, SetFrequency(45_000)),
        (0.32, SetOutput(1)),
        (0.34, SetDrive(drive_to_q16(0.12), 400)),
        (3.13, SetDrive(drive_to_q16(0.14), 0)),
        (5.57, StatusRequest()),
        (6.71, SetFrequency(50_000)),
    ),
)


@pytest.mark.parametrize(
    "case",
    [_INTERRUPTED, *(c for c in cases() if c.name in ("open loop", "closed loop"))],
    ids=lambda c: c.name,
)
def test_runs_ahead_through_several_windows_are_the_one_window_runs(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    longest = [0]
    run_ahead = PlatePhysics.run_ahead

    def counted(self: PlatePhysics, n: int, freq: float, phases: Any, drive: float) -> Any:
        longest[0] = max(longest[0], len(phases))
        return run_ahead(self, n, freq, phases, drive)

    monkeypatch.setattr(PlatePhysics, "run_ahead", counted)
    many = _digests(case, tmp_path, one_window=False)
    if case.name != "closed loop":  # a closed loop never holds a drive that long
        assert longest[0] > sim_device.AHEAD_BLOCKS_MAX  # more than one window at once
    one = _digests(case, tmp_path, one_window=True)
    # wire bytes, truth file, and the plate's, filter's and noise buffer's state at the end
    assert many == one


def test_a_run_ahead_past_an_update_whose_tables_are_not_built_is_refused() -> None:
    port = open_port("sim://?speed=max&seed=2&mass=70")
    try:
        physics = port.device.physics  # type: ignore[attr-defined]
        n = 32
        windows = physics.windows_ahead(n, 45.0)
        blocks = physics.samples_to_update // n + (windows + 1) * physics.samples_per_update // n
        with pytest.raises(ValueError, match="do not end by the next parameter update"):
            physics.run_ahead(n, 45.0, [0.0] * blocks, 0.1)
        with pytest.raises(ValueError, match="do not end by the next parameter update"):
            physics.run_ahead(n, 45.0, [0.0] * (physics.samples_to_update // n + 1), 0.1)
    finally:
        port.close()
