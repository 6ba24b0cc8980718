"""The host's cost per block on the link (issue 11): codec, client, commands.

Every closed-loop block costs the host a SAMPLES frame and an ACK decoded and a SET_DRIVE
encoded and written; the simulated device encodes a frame for everything it sends. The work is
counted as function calls (Python and C, from ``sys.setprofile``), so the count is the same on
a busy machine as on a quiet one. The client is fed bytes recorded from the simulated plate, so
the count is the host's alone; what it makes of them is checked against the message layer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import numpy as np
import pytest

from firmware_bridge.client import DeviceClient, SampleBlock
from firmware_bridge.codec import FrameDecoder, encode_frame
from firmware_bridge.protocol import (
    SAMPLES_HEADER,
    Ack,
    Samples,
    SetDrive,
    decode_message,
    encode_message,
)
from firmware_bridge.urlhandler import protocol_sim

PLATE = "sim://?speed=max&mass=70&seed=2"
BLOCKS = 400
FIRST = 100  # blocks counted from here on (the drive is up and steady)


def calls_of(action: Callable[[], object]) -> int:
    """Function calls (Python and C) made while ``action`` runs (after a first run that fills
    any cache)."""
    action()
    counted = [0]

    def count(frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counted[0] += 1

    sys.setprofile(count)
    try:
        action()
    finally:
        sys.setprofile(None)
    return counted[0] - 1  # the call that switched counting off


def closed_loop(
    dev: DeviceClient, blocks: int, on_block: Callable[[int], None]
) -> list[SampleBlock]:
    """What the closed loop asks of the client: a block, then a drive on 4 blocks of 5."""
    dev.set_frequency(45.0)
    dev.start_output()
    read: list[SampleBlock] = []
    for i in range(blocks):
        on_block(i)
        block = dev.read_block(timeout_s=1.0)
        assert block is not None
        read.append(block)
        if i % 5 != 4:
            dev.set_drive(0.1 + 0.0002 * ((i % 7) - 3), 0.02, wait=False)
    return read


class Recording:
    """The bytes each read of the simulated port returned (read_buffered too), and what the
    host wrote."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[bytes] = []
        self.writes: list[bytes] = []
        read, write = protocol_sim.Serial.read, protocol_sim.Serial.write
        read_buffered = protocol_sim.Serial.read_buffered

        def recorded_read(port: protocol_sim.Serial, size: int = 1) -> bytes:
            data = read(port, size)
            self.reads.append(data)
            return data

        def recorded_read_buffered(port: protocol_sim.Serial) -> bytes:
            data = read_buffered(port)
            self.reads.append(data)
            return data

        def recorded_write(port: protocol_sim.Serial, data: bytes) -> int:
            self.writes.append(bytes(data))
            return write(port, data)

        monkeypatch.setattr(protocol_sim.Serial, "read", recorded_read)
        monkeypatch.setattr(protocol_sim.Serial, "read_buffered", recorded_read_buffered)
        monkeypatch.setattr(protocol_sim.Serial, "write", recorded_write)


class ReplayPort:
    """A port that answers each read with the next recorded one (the host's side alone)."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads
        self._next = 0
        self.is_open = True
        self.timeout = 0.05
        self.writes: list[bytes] = []

    @property
    def in_waiting(self) -> int:
        return len(self._reads[self._next]) if self._next < len(self._reads) else 0

    def read(self, size: int = 1) -> bytes:
        data = self._reads[self._next]
        assert len(data) <= size, "the host asked for less than it did when recorded"
        self._next += 1
        return data

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def close(self) -> None:
        self.is_open = False


class PacedReplayPort(ReplayPort):
    """A ReplayPort paced by the reads, as ``sim://?speed=max`` is (read_blocks asks it for
    several frames' bytes and then for what the last read left)."""

    paced_by_reads = True

    def read_buffered(self) -> bytes:
        return self.read(1 << 30)


def open_loop(dev: DeviceClient, blocks: int, on_batch: Callable[[int], None]) -> int:
    """What the open loop asks of the client: batches of up to 5 blocks (a heartbeat is due
    every 5); returns the blocks read."""
    dev.set_frequency(45.0)
    dev.start_output()
    dev.set_drive(0.1, 0.5)
    got = 0
    while got < blocks:
        on_batch(got)
        batch = dev.read_blocks(5, timeout_s=1.0)
        assert batch is not None
        got += len(batch)
    return got


@pytest.fixture(scope="module")
def recording() -> Recording:
    with pytest.MonkeyPatch.context() as monkeypatch:
        rec = Recording(monkeypatch)
        with DeviceClient.open(PLATE) as dev:
            closed_loop(dev, BLOCKS, lambda i: None)
    return rec


def test_a_closed_loop_block_costs_the_host_few_calls(recording: Recording) -> None:
    """Reading a block (a SAMPLES and an ACK decoded) and sending a SET_DRIVE on 4 of 5.
    Before this work a block made 97 calls, 64 before session 8's
    (this test's own bookkeeping included)."""
    port = ReplayPort(recording.reads)
    dev = DeviceClient(port, "replay")  # type: ignore[arg-type]
    dev.handshake()
    counted = [0]

    def count(frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counted[0] += 1

    def on_block(i: int) -> None:
        if i == FIRST:
            sys.setprofile(count)

    try:
        closed_loop(dev, BLOCKS, on_block)
    finally:
        sys.setprofile(None)
    dev.close()
    # The replay is faithful: the host wrote what it wrote against the simulated plate.
    assert port.writes == recording.writes
    calls = counted[0] / (BLOCKS - FIRST)
    assert calls <= 56, f"{calls:.1f} calls per block"


def test_the_client_makes_the_blocks_the_message_layer_describes(recording: Recording) -> None:
    """Blocks made straight from the SAMPLES payloads hold what ``Samples.unpack`` reads from
    the same frames (with a sensor correction applied), bit for bit."""
    port = ReplayPort(recording.reads)
    dev = DeviceClient(port, "replay")  # type: ignore[arg-type]
    dev.handshake()
    dev.set_sensor_correction(1.03, 0.011)
    blocks = closed_loop(dev, BLOCKS, lambda i: None)
    dev.close()
    decoder = FrameDecoder()
    frames = [f for data in recording.reads for f in decoder.feed(data)]
    sent = [decode_message(f) for f in frames if f.frame_type == Samples.TYPE]
    want = [m for m in sent if isinstance(m, Samples)][-len(blocks) :]
    for block, samples in zip(blocks, want, strict=True):
        assert block.first_index == samples.first_index
        assert block.phase_rad == samples.phase_rad
        assert block.freq_hz == samples.freq_hz
        assert block.drive == samples.drive
        assert block.counts.dtype == np.int16
        assert np.array_equal(block.counts, samples.counts)
        assert np.array_equal(block.accel_g, (samples.counts / 8192.0 - 0.011) / 1.03)


def test_accel_g_is_the_corrected_count_for_every_count() -> None:
    """All 65536 counts, before and after a sensor correction is set (the conversion must
    follow the correction)."""
    counts = np.arange(-32768, 32768).astype(np.int16)
    with DeviceClient.open("sim://?speed=max&seed=1") as dev:
        cpg = float(dev.info.counts_per_g)
        for sensitivity, offset_g in [(1.0, 0.0), (0.97, -0.02), (1.12, 0.05)]:
            dev.set_sensor_correction(sensitivity, offset_g)
            i = dev.sample_index
            dev._on_samples(Samples(i, 0, 45000, 0, counts))
            block = dev.take_queued()[-1]
            assert block.accel_g.dtype == np.float64
            assert np.array_equal(block.accel_g, (counts / cpg - offset_g) / sensitivity)


def test_a_samples_frame_whose_count_disagrees_with_its_length_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The block length and the count byte are both checked on the fast path: a SAMPLES of
    the hello's length whose count says otherwise is a protocol error, never a block."""
    with DeviceClient.open("sim://?speed=max&seed=1") as dev:
        n = dev.info.block_samples
        payload = bytearray(Samples(0, 0, 45000, 0, np.full(n, 8192, np.int16)).pack())
        payload[SAMPLES_HEADER.size - 1] = n - 1
        assert len(payload) == SAMPLES_HEADER.size + 2 * n
        monkeypatch.setattr(dev.port, "read", lambda size=1: encode_frame(0x84, 9, payload))
        errors, queued = dev.protocol_errors, dev._blocks_in
        dev._pump()
        assert dev.protocol_errors == errors + 1
        assert dev._blocks_in == queued


def test_decoding_a_frame_makes_few_calls() -> None:
    """A SAMPLES frame and an ACK in one read, as a closed-loop block brings them. Before this
    work they made 31 calls, 23 before session 8's."""
    samples = Samples(1000, 7, 45000, 6553, np.arange(32, dtype=np.int16))
    wire = encode_message(samples, 5) + encode_message(Ack(11, SetDrive.TYPE), 6)
    decoder = FrameDecoder()
    frames: list[Any] = []
    calls = calls_of(lambda: frames.extend(decoder.feed(wire)))
    assert [(f.frame_type, f.seq) for f in frames] == [(Samples.TYPE, 5), (Ack.TYPE, 6)] * 2
    assert decoder.stats.frames == 4
    assert calls <= 20, f"{calls} calls"


def test_encoding_a_message_makes_few_calls() -> None:
    """SET_DRIVE and ACK, the commonest frames each way. Before this work each made 19."""
    for message in (SetDrive(6553, 20), Ack(11, SetDrive.TYPE)):
        calls = calls_of(lambda message=message: encode_message(message, 7))  # type: ignore[misc]
        assert calls <= 13, f"{type(message).__name__}: {calls} calls"
        assert decode_message(FrameDecoder().feed(encode_message(message, 7))[0]) == message


def test_sending_a_drive_makes_few_calls() -> None:
    """The closed loop's SET_DRIVE without waiting, from the drive to the bytes written.
    Before this work it made 35 calls, 23 before session 8's."""
    port = ReplayPort([])
    dev = DeviceClient(port, "replay")  # type: ignore[arg-type]
    calls = calls_of(lambda: dev.set_drive(0.25, 0.02, wait=False))
    dev.close()
    assert calls <= 19, f"{calls} calls"
    assert port.writes[:2] == [encode_message(SetDrive(16384, 20), seq) for seq in (0, 1)]
    assert dev._pending[1].name == "SetDrive"


def test_an_open_loop_block_costs_the_host_few_calls() -> None:
    """Blocks read in batches (read_blocks, 5 at a time between heartbeats), the client fed
    the bytes recorded from the simulated plate. Before session 8 a block made 32 calls (the
    count byte checked over the run with numpy, np.diff for gaps, every ACK decoded as a
    message)."""
    blocks, first = 1000, 200
    with pytest.MonkeyPatch.context() as monkeypatch:
        rec = Recording(monkeypatch)
        with DeviceClient.open(PLATE) as dev:
            open_loop(dev, blocks, lambda got: None)
    port = PacedReplayPort(rec.reads)
    dev = DeviceClient(port, "replay")  # type: ignore[arg-type]
    dev.handshake()
    counted = [0]
    started: list[int] = []

    def count(frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counted[0] += 1

    def on_batch(got: int) -> None:
        if got >= first and not started:
            started.append(got)
            sys.setprofile(count)

    try:
        read = open_loop(dev, blocks, on_batch)
    finally:
        sys.setprofile(None)
    dev.close()
    assert port.writes == rec.writes  # the replay is faithful
    calls = counted[0] / (read - started[0])
    assert calls <= 24, f"{calls:.1f} calls per block"
