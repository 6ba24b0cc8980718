"""How far behind the plate the host is, asked of every transport without ever failing.

``DeviceClient.blocks_behind`` is asked on every block (the ``host_too_slow`` stop). A port
that fails there (a cable pulled) must not end the session with an exception and a record left
``running``; over TCP (``socket://``, ser2net) pyserial says at most 1 byte waits, so the count
has to come from the socket itself or a slow host is never stopped.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest
import serial

from controller.loop import STOP_MARGIN_S, _soft_stop
from controller.safety import TripReason
from firmware_bridge.client import DeviceClient, SampleBlock
from firmware_bridge.codec import encode_frame
from firmware_bridge.errors import DeviceFaultError
from firmware_bridge.protocol import Samples
from firmware_bridge.urlhandler import protocol_sim
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from tests.test_soft_start import served
from tests.test_states_slow_host import slow_session

PULLED_AT_PLATE_S = 15.0


def test_a_cable_pulled_between_two_reads_is_recorded_as_a_lost_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From plate time 15 s every port call fails as pyserial's do on Linux once the USB cable
    is out (in_waiting: OSError EIO; read and write: SerialException), the pull landing while
    the host computes an update: the session is recorded ``tripped`` ``link_lost``, never left
    ``running`` by an exception out of the session."""
    pulled = [False]
    sim = protocol_sim.Serial
    read, write, in_waiting = sim.read, sim.write, sim.in_waiting

    def pulled_read(self: protocol_sim.Serial, size: int = 1) -> bytes:
        if pulled[0]:
            raise serial.SerialException("device reports readiness to read but returned no data")
        return read(self, size)

    def pulled_write(self: protocol_sim.Serial, data: bytes) -> int:
        if pulled[0]:
            raise serial.SerialException("write failed: [Errno 5] Input/output error")
        return write(self, data)

    def pulled_in_waiting(self: protocol_sim.Serial) -> int:
        if pulled[0]:
            raise OSError(errno.EIO, "Input/output error")
        return int(in_waiting.fget(self))  # type: ignore[attr-defined]

    monkeypatch.setattr(sim, "read", pulled_read)
    monkeypatch.setattr(sim, "write", pulled_write)
    monkeypatch.setattr(sim, "in_waiting", property(pulled_in_waiting))
    read_block = DeviceClient.read_block

    def read_then_pull(self: DeviceClient, timeout_s: float = 1.0) -> SampleBlock | None:
        block = read_block(self, timeout_s)
        port = self.port
        if isinstance(port, protocol_sim.Serial) and "truth=" in str(port.portstr):
            pulled[0] = pulled[0] or port.device.time_s > PULLED_AT_PLATE_S
        return block

    monkeypatch.setattr(DeviceClient, "read_block", read_then_pull)
    run = slow_session(tmp_path, lambda _p: 0.0)
    assert pulled[0], "the cable was never pulled"
    rec = run.record
    assert rec.status is SessionStatus.TRIPPED, rec.reason
    assert rec.safety_events[0]["reason"] == "link_lost", rec.safety_events
    with SessionLog(LivHome(tmp_path / "home").db_path()) as log:
        stored = log.get(rec.session_id)
    assert stored.status is SessionStatus.TRIPPED


def test_a_host_behind_a_tcp_plate_counts_the_blocks_waiting_in_the_socket(
    tmp_path: Path,
) -> None:
    """A served plate over TCP (``liv sim serve --tcp``, as ser2net) streams in real time
    with the output off; a host that reads nothing for 0.6 s is about 30 blocks (20 ms each)
    behind, and blocks_behind says so (pyserial's in_waiting alone said 0)."""
    with (
        served(["--tcp", "127.0.0.1:0"], tmp_path / "truth.npz", linger_s=0.0) as address,
        DeviceClient.open(address) as dev,
    ):
        assert address.startswith("socket://")
        for _ in range(20):
            assert dev.read_block(1.0) is not None
        caught_up = dev.blocks_behind
        time.sleep(0.6)  # the host is busy
        assert dev.read_block(1.0) is not None
        behind = dev.blocks_behind
    assert caught_up <= 2
    assert 20 <= behind <= 75  # about 30; more if the sleep overran on a loaded machine


def test_a_fault_the_plate_reports_during_the_soft_stop_is_returned_for_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The soft stop reads the plate down; a fault it meets there (the watchdog FAULT a host
    behind the stream had not read yet) is a trip for the record, not a log line alone."""
    with DeviceClient.open("sim://?speed=max&mass=70&seed=3") as dev:
        dev.set_frequency(40.0)
        dev.start_output()
        dev.set_drive(0.1, 0.2)
        dev.read_for(0.5)
        read_block = dev.read_block
        reads = [0]

        def fault_on_the_third(timeout_s: float = 1.0) -> SampleBlock | None:
            reads[0] += 1
            if reads[0] == 3:
                raise DeviceFaultError(1, "no valid host frame within the watchdog time", 0)
            return read_block(timeout_s)

        monkeypatch.setattr(dev, "read_block", fault_on_the_third)
        trip = _soft_stop(dev, 1.0, 12.5)
    assert reads[0] == 3
    assert trip is not None
    assert trip.reason is TripReason.DEVICE_FAULT
    assert trip.t_s == 12.5
    assert "watchdog" in trip.detail


def test_the_soft_stop_ends_when_a_block_reports_the_drive_at_zero() -> None:
    """At speed=max nothing is behind: the output goes off once the plate reports drive 0,
    about ramp_s after SET_DRIVE(0), not STOP_MARGIN_S later."""
    with DeviceClient.open("sim://?speed=max&mass=70&seed=3") as dev:
        dev.set_frequency(40.0)
        dev.start_output()
        dev.set_drive(0.1, 0.2)
        dev.read_for(0.5)
        began = dev.sample_index
        assert _soft_stop(dev, 1.0) is None
        took_s = (dev.sample_index - began) / dev.info.sample_rate_hz
    assert 1.0 <= took_s < 1.0 + STOP_MARGIN_S


class _PortHolding:
    """A port that says ``waiting`` bytes are waiting (and nothing else)."""

    def __init__(self, waiting: int) -> None:
        self.in_waiting = waiting


def test_blocks_behind_counts_whole_samples_frames_of_their_longest_encoding() -> None:
    """Bytes waiting count as SAMPLES frames of their longest encoding (COBS overhead, a
    delimiter): never more blocks than whole frames wait, and a SAMPLES frame's worth is a
    block. 83 payload bytes (32 samples) make 88 raw bytes, at most 90 on the wire."""
    with DeviceClient.open("sim://?speed=max&seed=3") as dev:
        assert dev.read_block(1.0) is not None
        payload = dev._samples_payload_len
        frame = encode_frame(Samples.TYPE, 0xFFFF, bytes(range(1, payload + 1)))  # no zeros
    assert payload == 83
    assert len(frame) == 90
    for waiting, blocks in [(0, 0), (89, 0), (90, 1), (179, 1), (900, 10), (901, 10)]:
        client = DeviceClient(_PortHolding(waiting), "test://")  # type: ignore[arg-type]
        client._samples_payload_len = payload
        assert client.blocks_behind == blocks, waiting


def test_a_tcp_plate_is_read_a_burst_per_call_not_a_byte_per_call(tmp_path: Path) -> None:
    """Over ``socket://`` pyserial's in_waiting says at most 1, so the client read a TCP plate
    (ser2net) one byte per call: about 90 calls for each 20-ms block, a cost a slow home
    computer pays 50 times a second. It now asks the socket how much has arrived."""
    with (
        served(["--tcp", "127.0.0.1:0"], tmp_path / "truth.npz", linger_s=0.0) as address,
        DeviceClient.open(address) as dev,
    ):
        assert dev.read_block(1.0) is not None
        port = dev._port
        calls = 0
        read = port.read

        def counted(size: int = 1) -> bytes:
            nonlocal calls
            calls += 1
            return read(size)

        time.sleep(0.3)  # about 15 blocks arrive meanwhile
        port.read = counted  # type: ignore[method-assign]
        blocks = [dev.read_block(1.0) for _ in range(15)]
    assert all(b is not None for b in blocks)
    firsts = [b.first_index for b in blocks if b is not None]
    assert firsts == sorted(firsts)
    assert len(set(firsts)) == 15
    assert calls <= 3 * 15, f"{calls} reads for 15 blocks"
