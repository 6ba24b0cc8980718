"""The simulated firmware's short paths for a HEARTBEAT and a SET_DRIVE, and its ACK packed
without the message (issue 11): the bytes of the general command path, and malformed or refused
frames still refused as the general path refuses them."""

from __future__ import annotations

import pytest

from firmware_bridge.codec import FrameDecoder, encode_frame
from firmware_bridge.protocol import (
    Ack,
    Heartbeat,
    Message,
    Nak,
    NakReason,
    SetDrive,
    SetFrequency,
    SetOutput,
    StatusRequest,
    decode_message,
    drive_to_q16,
    encode_message,
)
from firmware_bridge.sim import device as device_module
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.sim.device import SimulatedDevice

HEARTBEAT = Heartbeat()
# block: the raw frames the host sends before that block (a heartbeat with a stray payload
# byte included), seq numbers counted by the sender
_HOST: list[tuple[int, Message | bytes]] = [
    (30, SetFrequency(45_000)),
    (31, SetOutput(1)),
    (32, SetDrive(drive_to_q16(0.1), 400)),
    (35, HEARTBEAT),
    (40, HEARTBEAT),
    (41, b"\x00"),  # a HEARTBEAT with a payload byte
    (45, HEARTBEAT),
    (46, StatusRequest()),
    (50, HEARTBEAT),
]


# SET_DRIVE refused while the output is off, accepted, out of range, malformed, while the
# output ramps down (busy), after the output is on again, with a fault latched
_DRIVES: list[tuple[int, Message | bytes]] = [
    (30, SetFrequency(45_000)),
    (31, SetDrive(drive_to_q16(0.1), 0)),
    (32, SetOutput(1)),
    (33, SetDrive(drive_to_q16(0.1), 100)),
    (36, SetDrive(drive_to_q16(0.12), 0)),
    (37, SetDrive(0xFFFF, 0)),
    (38, SetDrive(drive_to_q16(0.11), 40)),
    (39, SetOutput(0)),
    (40, SetDrive(drive_to_q16(0.1), 0)),
    (75, SetOutput(1)),
    (76, SetDrive(drive_to_q16(0.1), 0)),
    (77, SetFrequency(10)),  # refused: out of range, no fault
    (78, SetDrive(drive_to_q16(0.1), 20)),
    (110, SetDrive(drive_to_q16(0.1), 0)),  # the host was silent: the watchdog tripped
]


def _run(
    blocks: int = 60, host: list[tuple[int, Message | bytes]] = _HOST, frame_type: int = 0x05
) -> bytes:
    device = SimulatedDevice(parse_sim_url("sim://?speed=max&seed=4&mass=70"))
    writes = dict(host)
    out = bytearray()
    for seq, block in enumerate(range(blocks)):
        sent = writes.get(block)
        if isinstance(sent, bytes):
            device.receive(encode_frame(frame_type, seq, sent))
        elif sent is not None:
            device.receive(encode_message(sent, seq))
        device.step()
        out += device.take_output()
    device.close()
    return bytes(out)


def test_the_heartbeat_path_sends_the_bytes_of_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    short = _run()
    monkeypatch.setattr(device_module, "_HEARTBEAT_TYPE", -1)  # no frame takes the short path
    assert _run() == short


def test_a_heartbeat_is_acked_and_one_with_a_payload_is_refused() -> None:
    frames = FrameDecoder().feed(_run())
    messages = [decode_message(frame) for frame in frames]
    acks = [m for m in messages if isinstance(m, Ack) and m.acked_type == Heartbeat.TYPE]
    naks = [m for m in messages if isinstance(m, Nak)]
    assert len(acks) == 4  # the four well-formed ones
    assert [(n.refused_type, n.reason) for n in naks] == [
        (Heartbeat.TYPE, int(NakReason.BAD_LENGTH))
    ]


@pytest.mark.parametrize("seq", [0, 1, 0x7FFF, 0xFFFF])
@pytest.mark.parametrize("frame_type", [Heartbeat.TYPE, SetDrive.TYPE, 0x00, 0xFF])
def test_an_ack_packed_directly_is_the_ack_messages_frame(seq: int, frame_type: int) -> None:
    direct, general = (SimulatedDevice(parse_sim_url("sim://?seed=4")) for _ in range(2))
    for device in (direct, general):
        device._tx_seq = 0xFFFF  # the device's own sequence number wraps after this frame
    for _ in range(2):
        direct._ack(seq, frame_type)
        general._send(Ack(seq, frame_type))
    assert direct._outbox == general._outbox
    assert direct._tx_seq == general._tx_seq == 1


def test_the_set_drive_path_sends_the_bytes_of_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = [*_DRIVES, (41, b"\x00\x10\x00")]  # a SET_DRIVE a byte short
    short = _run(115, host, SetDrive.TYPE)
    monkeypatch.setattr(device_module, "_SET_DRIVE_TYPE", -1)  # no frame takes the short path
    assert _run(115, host, SetDrive.TYPE) == short
    naks = [m for m in map(decode_message, FrameDecoder().feed(short)) if isinstance(m, Nak)]
    assert [(n.refused_type, NakReason(n.reason)) for n in naks] == [
        (SetDrive.TYPE, NakReason.OUTPUT_OFF),
        (SetDrive.TYPE, NakReason.OUT_OF_RANGE),
        (SetDrive.TYPE, NakReason.BUSY),
        (SetDrive.TYPE, NakReason.BAD_LENGTH),
        (SetFrequency.TYPE, NakReason.OUT_OF_RANGE),
        (SetDrive.TYPE, NakReason.FAULT_LATCHED),
    ]
