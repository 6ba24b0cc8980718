"""Messages of the LIV plate wire protocol (docs/protocol.md is the normative description).

Each message is a small frozen dataclass with a fixed frame type and a ``struct`` layout;
``encode_message`` and ``decode_message`` convert between messages and wire bytes. Multi-byte
fields are little-endian. Drive amplitudes travel as Q16 fractions of full scale (0..65535),
frequencies in millihertz, phases in 2**-32 turns.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from firmware_bridge.codec import MAX_RAW_LEN, RawFrame, encode_frame
from firmware_bridge.countersign import (
    DIGEST_LEN,
    GENESIS_HEAD,
    KEY_LEN,
    SIGNATURE_LEN,
    signature_problem,
    valid_public_key,
)
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.errors import InvalidDeviceInfoError, ProtocolError

PROTOCOL_MAJOR = 2
PROTOCOL_MINOR = 1  # 2.1: device identity and countersignatures (docs/protocol.md 14)

Q16 = 65535
PHASE_TURN = 2**32
DEVICE_ID_LEN = 16
HELLO_ANSWER = 0  # HELLO ``boot``: an answer to HELLO_REQUEST
HELLO_BOOT = 1  # HELLO ``boot``: sent unasked after a boot


def round_half_up(value: float) -> int:
    """``floor(value + 0.5)``: the one rounding rule of the protocol (section 4).

    Python's ``round`` rounds halves to even (``round(4.5) == 4``); firmware written in C
    usually adds one half and truncates. The document fixes the latter, and host and
    simulator both use this function.
    """
    return math.floor(value + 0.5)


def drive_to_q16(fraction: float) -> int:
    """Drive fraction 0..1 to its wire value ``floor(fraction * 65535 + 0.5)``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"drive fraction {fraction!r} is outside 0..1")
    return math.floor(fraction * Q16 + 0.5)  # round_half_up, inlined (called every block)


def q16_to_drive(value: int) -> float:
    return value / Q16


def hz_to_mhz(freq_hz: float) -> int:
    """Frequency in Hz to its wire value ``floor(freq_hz * 1000 + 0.5)`` millihertz."""
    if not 0.0 <= freq_hz < 4_000_000.0:
        raise ValueError(f"frequency {freq_hz!r} Hz is outside 0..4e6")
    return math.floor(freq_hz * 1000.0 + 0.5)  # round_half_up, inlined (called every block)


def phase_to_q32(phase_turns: float) -> int:
    """Phase in turns to its wire value ``floor(phase * 2**32 + 0.5) mod 2**32``."""
    return math.floor(phase_turns * PHASE_TURN + 0.5) % PHASE_TURN  # round_half_up, inlined


def ramp_time_samples(ramp_ms: int, sample_rate_hz: int) -> int:
    """Samples a ramp of ``ramp_ms`` lasts before the slew limit: ``floor((ms*fs + 500)/1000)``."""
    return (ramp_ms * sample_rate_hz + 500) // 1000


def slew_samples(delta_q16: int, slew_full_scale_ms: int, sample_rate_hz: int) -> int:
    """Fewest samples in which the slew limit lets the drive move ``delta_q16`` Q16 units.

    ``ceil(|delta_q16| * slew_full_scale_ms * sample_rate_hz / (65535 * 1000))``, in integers,
    so that an exact quotient (full scale in exactly the slew time) is not rounded up.
    """
    scale = Q16 * 1000
    return (abs(delta_q16) * slew_full_scale_ms * sample_rate_hz + scale - 1) // scale


def ramp_samples(delta_q16: int, ramp_ms: int, sample_rate_hz: int, slew_full_scale_ms: int) -> int:
    """Length N of a drive ramp in samples (docs/protocol.md 9.4).

    ``N = max(1, floor((ramp_ms * fs + 500) / 1000), ceil(|delta_q16| * slew_ms * fs /
    65535000))``: the requested time rounded half up, lengthened where the slew limit needs it.
    """
    return max(
        1,
        ramp_time_samples(ramp_ms, sample_rate_hz),
        slew_samples(delta_q16, slew_full_scale_ms, sample_rate_hz),
    )


class NakReason(enum.IntEnum):
    """Why the device refused a command (NAK reason byte)."""

    BAD_LENGTH = 1
    UNKNOWN_TYPE = 2
    OUT_OF_RANGE = 3
    OUTPUT_OFF = 4
    FAULT_LATCHED = 5
    BUSY = 6
    COUNTER_MISMATCH = 7
    STORAGE = 8


NAK_TEXT: dict[int, str] = {
    NakReason.BAD_LENGTH: "payload length is wrong for this command",
    NakReason.UNKNOWN_TYPE: "unknown command type",
    NakReason.OUT_OF_RANGE: "value outside the device's limits",
    NakReason.OUTPUT_OFF: "output is off (send OUTPUT on first)",
    NakReason.FAULT_LATCHED: "a fault is latched (send CLEAR_FAULT first)",
    NakReason.BUSY: "device busy (ramping down after stop or fault)",
    NakReason.COUNTER_MISMATCH: (
        "expected counter is not the device's next one (ask IDENTITY for its counter)"
    ),
    NakReason.STORAGE: "non-volatile memory could not be written; nothing was signed",
}


class FaultCode(enum.IntEnum):
    """Faults the device reports; each one stops the output and latches until CLEAR_FAULT."""

    HOST_WATCHDOG = 1
    COIL_OVERTEMP = 2
    AMPLIFIER = 3
    SENSOR = 4
    INTERNAL = 5
    OVER_ACCELERATION = 6
    SENSOR_REST = 7


FAULT_TEXT: dict[int, str] = {
    FaultCode.HOST_WATCHDOG: "no valid host frame within the watchdog time; drive ramped to zero",
    FaultCode.COIL_OVERTEMP: "actuator coil over temperature; drive ramped to zero",
    FaultCode.AMPLIFIER: "amplifier or actuator fault (open or short circuit)",
    FaultCode.SENSOR: "accelerometer not responding",
    FaultCode.INTERNAL: "internal firmware error",
    FaultCode.OVER_ACCELERATION: (
        "plate acceleration above the device's ceiling (detail: measured peak in mg); "
        "drive ramped to zero"
    ),
    FaultCode.SENSOR_REST: (
        "accelerometer does not read 1 g at rest (detail: reading in mg); output not switched on"
    ),
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
    COUNTERSIGN = 16


_FIELD_GETTERS: dict[type, Callable[[object], tuple[object, ...]]] = {}


def _field_getter(cls: type) -> Callable[[object], tuple[object, ...]]:
    """A function giving a message's field values in payload order (made once per class)."""
    getter = _FIELD_GETTERS.get(cls)
    if getter is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        if len(names) > 1:
            getter = operator.attrgetter(*names)
        elif names:
            one = operator.attrgetter(names[0])
            getter = lambda message: (one(message),)  # noqa: E731
        else:
            getter = lambda message: ()  # noqa: E731
        _FIELD_GETTERS[cls] = getter
    return getter


class Message:
    """Base of all messages: a frame type and a fixed struct layout."""

    TYPE: ClassVar[int]
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<")

    def pack(self) -> bytes:
        return self.LAYOUT.pack(*_field_getter(type(self))(self))

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


@dataclass(frozen=True, slots=True)
class IdentityRequest(Message):
    TYPE: ClassVar[int] = 0x08


@dataclass(frozen=True, slots=True)
class Countersign(Message):
    """Ask the device to vouch for a record digest as its counter ``expected_counter``."""

    TYPE: ClassVar[int] = 0x09
    LAYOUT: ClassVar[struct.Struct] = struct.Struct(f"<{DIGEST_LEN}sI")
    digest: bytes
    expected_counter: int


# ---- device -> host -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE: ClassVar[int] = 0x81
    LAYOUT: ClassVar[struct.Struct] = struct.Struct(f"<BBBBB{DEVICE_ID_LEN}sHBHHIIHHHHHIB")
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
    stop_ramp_ms: int
    slew_full_scale_ms: int
    ceiling_mg: int
    capabilities: int
    boot: int

    @property
    def is_boot(self) -> bool:
        """True for the HELLO a device sends unasked after booting (not an answer)."""
        return self.boot == HELLO_BOOT

    @property
    def device_id(self) -> str:
        return self.device_id_raw.rstrip(b"\x00").decode("ascii", errors="replace")

    @property
    def firmware_version(self) -> str:
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"

    @property
    def max_drive(self) -> float:
        return q16_to_drive(self.max_drive_q16)

    @property
    def ceiling_g(self) -> float:
        """The peak acceleration above which the device stops the drive by itself, g."""
        return self.ceiling_mg / 1000.0


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
# The largest sample index a host accepts (docs/protocol.md 9.5). The wire's u64 is decoded
# whole here; the host (DeviceClient) keeps indices as signed 64-bit integers and refuses a
# SAMPLES block whose ``first_index + n`` is past this as malformed, never wrapping it.
SAMPLE_INDEX_MAX = 2**63 - 1


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
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BBIHHBQHHhQi")
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
    fault_index: int = 0  # FAULT ``sample_index`` of the latched fault (0 if none)
    fault_detail: int = 0  # FAULT ``detail`` of the latched fault (0 if none)

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


@dataclass(frozen=True, slots=True)
class Identity(Message):
    """The device's public key, its non-volatile counter and the head of its chain."""

    TYPE: ClassVar[int] = 0x87
    LAYOUT: ClassVar[struct.Struct] = struct.Struct(f"<{KEY_LEN}sI32s")
    public_key: bytes
    counter: int
    head: bytes


@dataclass(frozen=True, slots=True)
class Countersignature(Message):
    """The device vouched for ``digest`` as number ``counter``; its head moved on."""

    TYPE: ClassVar[int] = 0x88
    LAYOUT: ClassVar[struct.Struct] = struct.Struct(f"<I{DIGEST_LEN}s32s32s{SIGNATURE_LEN}s")
    counter: int
    digest: bytes
    prev_head: bytes
    new_head: bytes
    signature: bytes


# What a host may send (a device answers any other type with NAK UNKNOWN_TYPE).
HOST_MESSAGE_TYPES: tuple[type[Message], ...] = (
    HelloRequest,
    SetFrequency,
    SetDrive,
    SetOutput,
    Heartbeat,
    StatusRequest,
    ClearFault,
    IdentityRequest,
    Countersign,
)

# What a device sends.
DEVICE_MESSAGE_TYPES: tuple[type[Message], ...] = (
    Hello,
    Ack,
    Nak,
    Samples,
    Status,
    Fault,
    Identity,
    Countersignature,
)

MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls for cls in HOST_MESSAGE_TYPES + DEVICE_MESSAGE_TYPES
}


def pack_message(message: Message) -> bytes:
    """The payload of ``message``; ValueError if a field does not fit its wire type."""
    try:
        return message.pack()
    except struct.error as exc:
        raise ValueError(f"cannot encode {type(message).__name__}: {exc}") from None


def encode_message(message: Message, seq: int) -> bytes:
    """Wire bytes for ``message`` with sequence number ``seq``.

    Raises ValueError if a field does not fit its wire type.
    """
    return encode_frame(message.TYPE, seq, pack_message(message))


MAX_BLOCK_SAMPLES = (MAX_RAW_LEN - 5 - SAMPLES_HEADER.size) // 2

# Allowed range of every numeric HELLO field (docs/protocol.md 7, HELLO): (lowest, highest, unit).
# Fields not listed (protocol_minor, firmware version, capabilities) may take any value of their
# type; protocol_major is checked separately (IncompatibleVersionError); device_id_raw must be
# 1..16 printable ASCII characters padded with 0x00.
HELLO_RANGES: dict[str, tuple[int, int, str]] = {
    "sample_rate_hz": (400, 20_000, "Hz"),
    "block_samples": (1, MAX_BLOCK_SAMPLES, "samples"),
    "counts_per_g": (32, 16_383, "counts"),
    "max_drive_q16": (1, Q16, "Q16"),
    "min_freq_mhz": (1_000, 1_000_000, "mHz"),
    "max_freq_mhz": (1_000, 1_000_000, "mHz"),
    "watchdog_ms": (200, 2_000, "ms"),
    "watchdog_ramp_ms": (10, 1_000, "ms"),
    "stop_ramp_ms": (10, 1_000, "ms"),
    "slew_full_scale_ms": (1, 1_000, "ms"),
    # The device's own ceiling: never below the host supervisor's (the host trips first), never
    # above the hard ceiling of the dose limits (firmware_bridge/dose_limits.py).
    "ceiling_mg": (
        round(DOSE_LIMITS.over_acceleration_ceiling_g * 1000),
        round(DOSE_LIMITS.hard_ceiling_g * 1000),
        "mg",
    ),
    "boot": (HELLO_ANSWER, HELLO_BOOT, "flag"),
}
MAX_BLOCK_MS = 50  # a block lasts at most this long (block_samples / sample_rate_hz)


def check_hello(hello: Hello) -> None:
    """Refuse a HELLO whose fields are outside the ranges of docs/protocol.md (section 7).

    Raises InvalidDeviceInfoError naming the first field found wrong, its value and what is
    allowed. The protocol major version is the caller's check.
    """
    raw = hello.device_id_raw
    text = raw.rstrip(b"\x00")
    if not text or not all(0x20 <= b <= 0x7E for b in text):
        raise InvalidDeviceInfoError(
            "device_id_raw", raw.hex(), "1..16 printable ASCII characters padded with 0x00"
        )
    for name, (lo, hi, unit) in HELLO_RANGES.items():
        value = getattr(hello, name)
        if not lo <= value <= hi:
            raise InvalidDeviceInfoError(name, value, f"{lo}..{hi} {unit}")
    if hello.min_freq_mhz > hello.max_freq_mhz:
        raise InvalidDeviceInfoError(
            "min_freq_mhz", hello.min_freq_mhz, f"at most max_freq_mhz ({hello.max_freq_mhz})"
        )
    if 2 * hello.max_freq_mhz >= 1000 * hello.sample_rate_hz:
        raise InvalidDeviceInfoError(
            "max_freq_mhz",
            hello.max_freq_mhz,
            f"below half the sample rate ({500 * hello.sample_rate_hz} mHz)",
        )
    if hello.block_samples * 1000 > MAX_BLOCK_MS * hello.sample_rate_hz:
        raise InvalidDeviceInfoError(
            "block_samples",
            hello.block_samples,
            f"at most {MAX_BLOCK_MS} ms of samples "
            f"({MAX_BLOCK_MS * hello.sample_rate_hz // 1000} at {hello.sample_rate_hz} Hz)",
        )
    shortest_ramp_ms = min(hello.stop_ramp_ms, hello.watchdog_ramp_ms)
    if hello.max_drive_q16 * hello.slew_full_scale_ms > Q16 * shortest_ramp_ms:
        raise InvalidDeviceInfoError(
            "slew_full_scale_ms",
            hello.slew_full_scale_ms,
            f"at most {Q16 * shortest_ramp_ms // hello.max_drive_q16} ms, so that the drive can "
            f"fall from max_drive_q16 to zero within the {shortest_ramp_ms} ms stop and fault "
            "ramps",
        )


def check_identity(identity: Identity) -> None:
    """Refuse an IDENTITY that cannot be true (docs/protocol.md 7, IDENTITY).

    The key must be a valid Ed25519 public key; a device that has countersigned nothing
    (counter 0) has the all-zero genesis head, and one that has countersigned something has
    another head. Raises InvalidDeviceInfoError naming the field.
    """
    if not valid_public_key(identity.public_key):
        raise InvalidDeviceInfoError(
            "public_key", identity.public_key.hex(), "a valid Ed25519 public key (32 bytes)"
        )
    if (identity.counter == 0) != (identity.head == GENESIS_HEAD):
        raise InvalidDeviceInfoError(
            "head", identity.head.hex(), "all zero exactly when the counter is 0"
        )


def check_countersignature(
    answer: Countersignature,
    *,
    public_key: bytes,
    device_id_raw: bytes,
    digest: bytes,
    expected_counter: int,
) -> None:
    """Refuse a COUNTERSIGNATURE that does not answer this request or does not verify.

    Raises InvalidDeviceInfoError naming the first field found wrong.
    """
    if answer.counter != expected_counter:
        raise InvalidDeviceInfoError("counter", answer.counter, f"{expected_counter} (asked for)")
    if answer.digest != digest:
        raise InvalidDeviceInfoError("digest", answer.digest.hex(), f"{digest.hex()} (asked for)")
    problem = signature_problem(
        public_key,
        device_id_raw,
        answer.counter,
        answer.digest,
        answer.prev_head,
        answer.new_head,
        answer.signature,
    )
    if problem is not None:
        raise InvalidDeviceInfoError("signature", answer.signature.hex(), f"valid ({problem})")


def decode_message(frame: RawFrame) -> Message:
    """The message carried by a checked frame; ProtocolError if the type or payload is wrong."""
    cls = MESSAGE_TYPES.get(frame.frame_type)
    if cls is None:
        raise ProtocolError(f"unknown frame type 0x{frame.frame_type:02x}")
    return cls.unpack(frame.payload)
