"""Messages of the LIV plate wire protocol (docs/protocol.md is the normative description).

Each message is a small frozen dataclass with a fixed frame type and a ``struct`` layout;
``encode_message`` and ``decode_message`` convert between messages and wire bytes. Multi-byte
fields are little-endian. Drive amplitudes travel as Q16 fractions of full scale (0..65535),
frequencies in millihertz, phases in 2**-32 turns.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from firmware_bridge.codec import MAX_RAW_LEN, RawFrame, encode_frame
from firmware_bridge.errors import ProtocolError

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

Q16 = 65535
PHASE_TURN = 2**32
DEVICE_ID_LEN = 16


def drive_to_q16(fraction: float) -> int:
    """Drive fraction 0..1 to its wire value; refuses values outside 0..1."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"drive fraction {fraction!r} is outside 0..1")
    return round(fraction * Q16)


def q16_to_drive(value: int) -> float:
    return value / Q16


def hz_to_mhz(freq_hz: float) -> int:
    if not 0.0 <= freq_hz < 4_000_000.0:
        raise ValueError(f"frequency {freq_hz!r} Hz is outside 0..4e6")
    return round(freq_hz * 1000.0)


class NakReason(enum.IntEnum):
    """Why the device refused a command (NAK reason byte)."""

    BAD_LENGTH = 1
    UNKNOWN_TYPE = 2
    OUT_OF_RANGE = 3
    OUTPUT_OFF = 4
    FAULT_LATCHED = 5
    BUSY = 6


NAK_TEXT: dict[int, str] = {
    NakReason.BAD_LENGTH: "payload length is wrong for this command",
    NakReason.UNKNOWN_TYPE: "unknown command type",
    NakReason.OUT_OF_RANGE: "value outside the device's limits",
    NakReason.OUTPUT_OFF: "output is off (send OUTPUT on first)",
    NakReason.FAULT_LATCHED: "a fault is latched (send CLEAR_FAULT first)",
    NakReason.BUSY: "device busy (ramping down after stop or fault)",
}


class FaultCode(enum.IntEnum):
    """Faults the device reports; each one stops the output and latches until CLEAR_FAULT."""

    HOST_WATCHDOG = 1
    COIL_OVERTEMP = 2
    AMPLIFIER = 3
    SENSOR = 4
    INTERNAL = 5


FAULT_TEXT: dict[int, str] = {
    FaultCode.HOST_WATCHDOG: "no valid host frame within the watchdog time; drive ramped to zero",
    FaultCode.COIL_OVERTEMP: "actuator coil over temperature; drive ramped to zero",
    FaultCode.AMPLIFIER: "amplifier or actuator fault (open or short circuit)",
    FaultCode.SENSOR: "accelerometer not responding",
    FaultCode.INTERNAL: "internal firmware error",
}


def nak_text(code: int) -> str:
    return NAK_TEXT.get(code, f"unknown reason code {code}")


def fault_text(code: int) -> str:
    return FAULT_TEXT.get(code, f"unknown fault code {code}")


class DeviceState(enum.IntEnum):
    IDLE = 0
    RUNNING = 1
    STOPPING = 2
    FAULT = 3


class Capability(enum.IntFlag):
    COIL_TEMPERATURE = 1
    CURRENT_SENSE = 2
    SIMULATED = 4
    FAULT_INJECTION = 8


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """A message class's field names in payload order (looked up once per class)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


class Message:
    """Base of all messages: a frame type and a fixed struct layout."""

    TYPE: ClassVar[int]
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<")

    def pack(self) -> bytes:
        return self.LAYOUT.pack(*self._fields())

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _field_names(type(self)))

    @classmethod
    def unpack(cls, payload: bytes) -> Message:
        if len(payload) != cls.LAYOUT.size:
            raise ProtocolError(
                f"{cls.__name__} payload is {len(payload)} bytes, expected {cls.LAYOUT.size}"
            )
        return cls(*cls.LAYOUT.unpack(payload))


# ---- host -> device -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloRequest(Message):
    TYPE: ClassVar[int] = 0x01
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BB")
    host_major: int = PROTOCOL_MAJOR
    host_minor: int = PROTOCOL_MINOR


@dataclass(frozen=True, slots=True)
class SetFrequency(Message):
    TYPE: ClassVar[int] = 0x02
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I")
    freq_mhz: int


@dataclass(frozen=True, slots=True)
class SetDrive(Message):
    TYPE: ClassVar[int] = 0x03
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<HH")
    drive_q16: int
    ramp_ms: int


@dataclass(frozen=True, slots=True)
class SetOutput(Message):
    TYPE: ClassVar[int] = 0x04
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<B")
    enable: int


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    TYPE: ClassVar[int] = 0x05


@dataclass(frozen=True, slots=True)
class StatusRequest(Message):
    TYPE: ClassVar[int] = 0x06


@dataclass(frozen=True, slots=True)
class ClearFault(Message):
    TYPE: ClassVar[int] = 0x07


# ---- device -> host -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE: ClassVar[int] = 0x81
    LAYOUT: ClassVar[struct.Struct] = struct.Struct(f"<BBBBB{DEVICE_ID_LEN}sHBHHIIHHI")
    protocol_major: int
    protocol_minor: int
    fw_major: int
    fw_minor: int
    fw_patch: int
    device_id_raw: bytes
    sample_rate_hz: int
    block_samples: int
    counts_per_g: int
    max_drive_q16: int
    min_freq_mhz: int
    max_freq_mhz: int
    watchdog_ms: int
    watchdog_ramp_ms: int
    capabilities: int

    @property
    def device_id(self) -> str:
        return self.device_id_raw.rstrip(b"\x00").decode("ascii", errors="replace")

    @property
    def firmware_version(self) -> str:
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"

    @property
    def max_drive(self) -> float:
        return q16_to_drive(self.max_drive_q16)


@dataclass(frozen=True, slots=True)
class Ack(Message):
    TYPE: ClassVar[int] = 0x82
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<HB")
    acked_seq: int
    acked_type: int


@dataclass(frozen=True, slots=True)
class Nak(Message):
    TYPE: ClassVar[int] = 0x83
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<HBB")
    refused_seq: int
    refused_type: int
    reason: int


SAMPLES_HEADER = struct.Struct("<QIIHB")


@dataclass(frozen=True, slots=True, eq=False)
class Samples(Message):
    """A block of accelerometer samples with the drive state at its first sample.

    Compared by identity (it holds an array); compare fields and ``counts`` explicitly.
    """

    TYPE: ClassVar[int] = 0x84
    LAYOUT: ClassVar[struct.Struct] = SAMPLES_HEADER  # followed by n x int16
    first_index: int
    phase_turns_q32: int
    freq_mhz: int
    drive_q16: int
    counts: npt.NDArray[np.int16]

    def pack(self) -> bytes:
        counts = np.ascontiguousarray(self.counts, dtype="<i2")
        head = SAMPLES_HEADER.pack(
            self.first_index, self.phase_turns_q32, self.freq_mhz, self.drive_q16, counts.size
        )
        return head + counts.tobytes()

    @classmethod
    def unpack(cls, payload: bytes) -> Samples:
        if len(payload) < SAMPLES_HEADER.size:
            raise ProtocolError(f"Samples payload is {len(payload)} bytes, too short")
        first, phase, freq, drive, n = SAMPLES_HEADER.unpack_from(payload)
        if len(payload) != SAMPLES_HEADER.size + 2 * n:
            raise ProtocolError(f"Samples payload is {len(payload)} bytes for {n} samples")
        counts = np.frombuffer(payload, dtype="<i2", offset=SAMPLES_HEADER.size)
        return cls(first, phase, freq, drive, counts.astype(np.int16))

    @property
    def phase_rad(self) -> float:
        return 2.0 * np.pi * self.phase_turns_q32 / PHASE_TURN

    @property
    def freq_hz(self) -> float:
        return self.freq_mhz / 1000.0

    @property
    def drive(self) -> float:
        return q16_to_drive(self.drive_q16)


COIL_TEMP_UNKNOWN = 0x7FFF


@dataclass(frozen=True, slots=True)
class Status(Message):
    TYPE: ClassVar[int] = 0x85
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BBIHHBQHHh")
    state: int
    output_on: int
    freq_mhz: int
    drive_q16: int
    target_drive_q16: int
    fault_code: int
    sample_index: int
    rx_crc_errors: int
    rx_lost_frames: int
    coil_temp_centi_c: int

    @property
    def coil_temperature_c(self) -> float | None:
        if self.coil_temp_centi_c == COIL_TEMP_UNKNOWN:
            return None
        return self.coil_temp_centi_c / 100.0


@dataclass(frozen=True, slots=True)
class Fault(Message):
    TYPE: ClassVar[int] = 0x86
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BQi")
    code: int
    sample_index: int
    detail: int

    @property
    def text(self) -> str:
        return fault_text(self.code)


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        HelloRequest,
        SetFrequency,
        SetDrive,
        SetOutput,
        Heartbeat,
        StatusRequest,
        ClearFault,
        Hello,
        Ack,
        Nak,
        Samples,
        Status,
        Fault,
    )
}


def encode_message(message: Message, seq: int) -> bytes:
    """Wire bytes for ``message`` with sequence number ``seq``.

    Raises ValueError if a field does not fit its wire type.
    """
    try:
        payload = message.pack()
    except struct.error as exc:
        raise ValueError(f"cannot encode {type(message).__name__}: {exc}") from None
    return encode_frame(message.TYPE, seq, payload)


MAX_BLOCK_SAMPLES = (MAX_RAW_LEN - 5 - SAMPLES_HEADER.size) // 2


def decode_message(frame: RawFrame) -> Message:
    """The message carried by a checked frame; ProtocolError if the type or payload is wrong."""
    cls = MESSAGE_TYPES.get(frame.frame_type)
    if cls is None:
        raise ProtocolError(f"unknown frame type 0x{frame.frame_type:02x}")
    return cls.unpack(frame.payload)
