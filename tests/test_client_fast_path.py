"""The client's per-block shortcuts give exactly what the plain expressions give (issue 11).

Each shortcut on the path of every block (the phase in radians by one multiplication, a
SampleBlock made from one dict, a SET_DRIVE's ramp remembered) is compared here with the
expression or constructor it replaced, over the boundary values of its wire field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from firmware_bridge.client import PHASE_TURN, RAD_PER_PHASE_UNIT, DeviceClient, SampleBlock
from firmware_bridge.codec import encode_frame
from firmware_bridge.protocol import (
    SAMPLES_HEADER,
    Ack,
    Samples,
    SetDrive,
    SetOutput,
    encode_message,
)
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


# ---- the batch path's checks against the block-by-block path ---------------------------------

N = 32  # the simulated plate's block length


class BytesPort:
    """A port that holds a fixed stream; each read takes what is asked for from its front."""

    def __init__(self, data: bytes) -> None:
        self._data = bytearray(data)
        self.is_open = True
        self.timeout = 0.05
        self.writes: list[bytes] = []

    @property
    def in_waiting(self) -> int:
        return len(self._data)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self._data[:size])
        del self._data[:size]
        return out

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def close(self) -> None:
        self.is_open = False


def _samples(first: int, count: int = N, phase: int = 0, freq: int = 45_000) -> bytes:
    counts = ((np.arange(count) * 977 + first % 65536) % 65536 - 32768).astype(np.int16)
    return Samples(first, phase, freq, (first * 7) % 65536, counts).pack()


def _bad_count(payload: bytes, count: int) -> bytes:
    damaged = bytearray(payload)
    damaged[SAMPLES_HEADER.size - 1] = count
    return bytes(damaged)


def _client_on(stream: Callable[[int], bytes]) -> tuple[DeviceClient, BytesPort]:
    """A client past its handshake (with a simulated plate) that then reads ``stream(seq)``,
    ``seq`` the sequence number its SET_OUTPUT on (sent without waiting) went out with."""
    dev = DeviceClient.open("sim://?speed=max&seed=1")
    dev.port.close()
    port = BytesPort(b"")
    dev._port = port  # type: ignore[assignment]
    dev._paced_by_reads = False
    dev._read_buffered = None
    dev.set_sensor_correction(1.02, -0.01)
    seq = dev._seq
    dev.command(SetOutput(1), wait=False)
    port._data += stream(seq)
    return dev, port


def _frames(payloads: list[tuple[int, bytes]], start_seq: int = 100) -> bytes:
    return b"".join(
        encode_frame(kind, (start_seq + i) & 0xFFFF, payload)
        for i, (kind, payload) in enumerate(payloads)
    )


SAMPLES = Samples.TYPE


def _run(firsts: list[int], damaged: dict[int, int] | None = None) -> bytes:
    """SAMPLES frames starting at ``firsts``; ``damaged`` gives wrong count bytes by position."""
    damaged = damaged or {}
    payloads = [
        _bad_count(_samples(first), damaged[k]) if k in damaged else _samples(first)
        for k, first in enumerate(firsts)
    ]
    return _frames([(SAMPLES, payload) for payload in payloads])


CASES: dict[str, Callable[[int], bytes]] = {
    "contiguous": lambda _: _run([32 * k for k in range(20)]),
    "gap": lambda _: _run([32 * k + (96 if k > 6 else 0) for k in range(20)]),
    "gap of one sample": lambda _: _run([32 * k + (k > 3) for k in range(9)]),
    "repeated and backwards": lambda _: _run([0, 32, 32, 64, 0, 96, 128, 127, 160]),
    "bad count byte": lambda _: _run([32 * k for k in range(12)], {3: 31, 4: 31, 9: 33}),
    "count byte 255 and 0": lambda _: _run([32 * k for k in range(9)], {1: 255, 4: 0, 7: 255}),
    "another block length": lambda _: _frames(
        [(SAMPLES, _samples(32 * k, N if k != 5 else 16)) for k in range(10)]
    ),
    "ack of output on mid-run": lambda seq: _frames(
        [(SAMPLES, _samples(32 * k)) for k in range(5)]
        + [(Ack.TYPE, Ack(seq, SetOutput.TYPE).pack())]
        + [(SAMPLES, _samples(32 * k)) for k in range(5, 10)]
    ),
    "other acks and a damaged one mid-run": lambda seq: _frames(
        [(SAMPLES, _samples(32 * k)) for k in range(4)]
        + [(Ack.TYPE, Ack(seq + 9, SetDrive.TYPE).pack()), (Ack.TYPE, b"\x01\x02")]
        + [(SAMPLES, _samples(32 * k)) for k in range(4, 8)]
    ),
    "crc damage mid-run": lambda _: (
        _frames([(SAMPLES, _samples(32 * k)) for k in range(4)])[:-5]
        + b"\x01\x00"
        + _frames([(SAMPLES, _samples(32 * k)) for k in range(5, 9)], start_seq=105)
    ),
    "indices at the top of the range": lambda _: _run([2**62 + 32 * k for k in range(6)]),
    # A block reaching past 2**63 - 1 (docs/protocol.md 9.5) is refused, at its place.
    "indices at the int64 boundary": lambda _: _run(
        [2**63 - 1 - 32 * k for k in (4, 3, 2, 1)] + [2**63 - 32, 2**63 - 1, 2**63, 2**64 - 32]
    ),
    "an index past 2**63 mid-run": lambda _: _run(
        [0, 32, 64, 2**63, 96, 2**64 - 1, 2**63 + 128, 160, 192]
    ),
    "jumps to the top and back, summing past int64": lambda _: _run(
        [0, 2**63 - 33, 0, 2**63 - 33, 0, 2**63 - 33, 32]
    ),
    "phase, frequency and drive edges": lambda _: _frames(
        [
            (SAMPLES, _samples(32 * k, phase=(0, 1, 2**31, 2**32 - 1)[k % 4], freq=k * 997))
            for k in range(8)
        ]
    ),
}


def _read(dev: DeviceClient, batched: bool) -> list[SampleBlock]:
    blocks: list[SampleBlock] = []
    while True:
        if batched:
            batch = dev.read_blocks(64, timeout_s=0.0)
            if batch is None:
                return blocks
            blocks += batch.blocks()
        else:
            block = dev.read_block(timeout_s=0.0)
            if block is None:
                return blocks
            blocks.append(block)


@pytest.mark.parametrize("case", CASES)
def test_a_batch_read_checks_what_block_by_block_reads_check(case: str) -> None:
    """The same bytes, good and bad, through read_block and read_blocks: the same blocks, bit
    for bit, and the same counts of missing samples, malformed frames and blocks seen."""
    got = {}
    for batched in (False, True):
        dev, _ = _client_on(CASES[case])
        blocks = _read(dev, batched)
        counters = (
            dev.samples_missing,
            dev.protocol_errors,
            dev.sample_frames_seen,
            dev.output_start_index,
            dict(vars(dev.link_stats)),
            dev.sample_index,
        )
        got[batched] = blocks, counters
        dev.close()
    (single, single_counters), (many, many_counters) = got[False], got[True]
    assert single_counters == many_counters
    assert len(single) == len(many) > 0
    for a, b in zip(single, many, strict=True):
        assert (a.first_index, a.phase_rad, a.freq_hz, a.drive, a.missing_before) == (
            b.first_index,
            b.phase_rad,
            b.freq_hz,
            b.drive,
            b.missing_before,
        )
        assert a.counts.dtype == b.counts.dtype == np.int16
        assert np.array_equal(a.counts, b.counts)
        assert np.array_equal(a.accel_g.view(np.uint64), b.accel_g.view(np.uint64))
