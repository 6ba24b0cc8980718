"""A plate firmware written from docs/protocol.md (version 2.1) alone, served over TCP.

Clean-room: nothing here comes from `firmware_bridge`, `controller` or `sessions`; the section
numbers in comments are those of docs/protocol.md. The plate is a second-order system (a
mass on a suspension, driven by a voice coil) read by an accelerometer with its own part errors,
which the firmware corrects with the calibration it stores, and with white noise.

    python -m hil_tests.cleanroom.device --nv DIR            # prints socket://127.0.0.1:PORT

    python -m hil_tests.cleanroom.device --nv DIR --set block_samples=100 --set simulated=1

`--set NAME=VALUE` changes any `DeviceConfig` field: what HELLO announces (every value the
document allows), and the other readings of the document a firmware team might take
(`samples_first`; and `status_index_streamed`, `number_samples_when_built`, which the document
now rules out, so that a host or suite that tolerates them shows up), a failing memory
(`nv_fails`), a hot coil (`coil_ambient_c`), a drifted sensor (`drift_gain`), a restart
(`reset_at_index`); `--reset-on-connect` resets on every connection, like a DTR-reset board.

Pieces, bottom up: framing (`crc16_xmodem`, `cobs_encode`, `cobs_decode`, `FrameReceiver`), the
plate and its sensor (`Plate`, `Sensor`), non-volatile memory (`NvStore`), the firmware itself
(`Firmware`, driven one block boundary at a time with `Firmware.boundary`) and the TCP server that
paces it on the wall clock (`DeviceServer`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# ---- protocol constants (sections 2, 3, 5, 8) -------------------------------------------------

PROTOCOL_MAJOR = 2
PROTOCOL_MINOR = 1
MAX_RAW_LEN = 250
MAX_ENCODED_LEN = 251
MAX_BLOCK_SAMPLES = 113

HELLO_REQUEST = 0x01
SET_FREQUENCY = 0x02
SET_DRIVE = 0x03
SET_OUTPUT = 0x04
HEARTBEAT = 0x05
STATUS_REQUEST = 0x06
CLEAR_FAULT = 0x07
IDENTITY_REQUEST = 0x08
COUNTERSIGN = 0x09
HELLO = 0x81
ACK = 0x82
NAK = 0x83
SAMPLES = 0x84
STATUS = 0x85
FAULT = 0x86
IDENTITY = 0x87
COUNTERSIGNATURE = 0x88

# payload length of every host-to-device type (section 6)
HOST_PAYLOAD_LEN = {
    HELLO_REQUEST: 2,
    SET_FREQUENCY: 4,
    SET_DRIVE: 4,
    SET_OUTPUT: 1,
    HEARTBEAT: 0,
    STATUS_REQUEST: 0,
    CLEAR_FAULT: 0,
    IDENTITY_REQUEST: 0,
    COUNTERSIGN: 36,
}

NAK_BAD_LENGTH = 1
NAK_UNKNOWN_TYPE = 2
NAK_OUT_OF_RANGE = 3
NAK_OUTPUT_OFF = 4
NAK_FAULT_LATCHED = 5
NAK_BUSY = 6
NAK_COUNTER_MISMATCH = 7
NAK_STORAGE = 8

FAULT_HOST_WATCHDOG = 1
FAULT_COIL_OVERTEMP = 2
FAULT_OVER_ACCELERATION = 6
FAULT_SENSOR_REST = 7

STATE_IDLE = 0
STATE_RUNNING = 1
STATE_STOPPING = 2
STATE_FAULT = 3

CAP_COIL_TEMPERATURE = 1
CAP_SIMULATED = 4
CAP_COUNTERSIGN = 16

TEMP_UNKNOWN = 0x7FFF
OVERTEMP_CENTI_C = 12000
ACCEL_WINDOW_BLOCKS = 3
REST_BLOCKS = 4
REST_TOLERANCE_MG = 30  # 1 g +/- 3 %

HEAD_PREFIX = b"LIV-HEAD-v1\x00"
SIGN_PREFIX = b"LIV-COUNTERSIGN-v1\x00"

HELLO_FMT = struct.Struct("<BBBBB16sHBHHIIHHHHHIB")
STATUS_FMT = struct.Struct("<BBIHHBQHHhQi")
FAULT_FMT = struct.Struct("<BQi")
SAMPLES_HEAD_FMT = struct.Struct("<QIIHB")
COUNTERSIGNATURE_FMT = struct.Struct("<I32s32s32s64s")


# ---- framing (section 2) ----------------------------------------------------------------------


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM, bitwise as in section 2.2."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def cobs_encode(raw: bytes) -> bytes:
    """Plain COBS (section 2.3), without the delimiter."""
    out = bytearray()
    group = bytearray()
    for byte in raw:
        if byte == 0:
            out.append(len(group) + 1)
            out += group
            group.clear()
        else:
            group.append(byte)
            if len(group) == 254:
                out.append(255)
                out += group
                group.clear()
    out.append(len(group) + 1)
    out += group
    return bytes(out)


def cobs_decode(chunk: bytes) -> bytes | None:
    """The raw bytes of one delimiter-free chunk, or None if a code byte points past its end."""
    out = bytearray()
    i = 0
    while i < len(chunk):
        code = chunk[i]
        end = i + code
        if code == 0 or end > len(chunk):
            return None
        out += chunk[i + 1 : end]
        i = end
        if code < 255 and i < len(chunk):
            out.append(0)
    return bytes(out)


def encode_frame(msg_type: int, seq: int, payload: bytes) -> bytes:
    """Wire bytes of one frame: COBS of type, seq, payload and CRC, then 0x00."""
    raw = struct.pack("<BH", msg_type, seq) + payload
    if len(raw) + 2 > MAX_RAW_LEN:
        raise ValueError(f"frame of {len(raw) + 2} raw bytes is above {MAX_RAW_LEN}")
    raw += struct.pack("<H", crc16_xmodem(raw))
    return cobs_encode(raw) + b"\x00"


@dataclass(frozen=True)
class RawFrame:
    """A frame that passed the framing checks of section 2.4."""

    msg_type: int
    seq: int
    payload: bytes


@dataclass
class FrameReceiver:
    """Section 2.4: collects bytes up to each 0x00, judges the chunk, counts the damage."""

    crc_errors: int = 0
    cobs_errors: int = 0
    short_frames: int = 0
    overruns: int = 0
    _chunk: bytearray = field(default_factory=bytearray)
    _overrun: bool = False

    def feed(self, data: bytes) -> list[RawFrame]:
        frames: list[RawFrame] = []
        for byte in data:
            if byte != 0:
                if self._overrun:
                    continue
                if len(self._chunk) >= MAX_ENCODED_LEN:
                    self._overrun = True
                    self._chunk.clear()
                    continue
                self._chunk.append(byte)
                continue
            if self._overrun:
                self._overrun = False
                self.overruns += 1
                continue
            if not self._chunk:
                continue
            chunk = bytes(self._chunk)
            self._chunk.clear()
            raw = cobs_decode(chunk)
            if raw is None:
                self.cobs_errors += 1
            elif len(raw) < 5:
                self.short_frames += 1
            elif crc16_xmodem(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
                self.crc_errors += 1
            else:
                frames.append(RawFrame(raw[0], int.from_bytes(raw[1:3], "little"), raw[3:-2]))
        return frames

    def reset(self) -> None:
        self._chunk.clear()
        self._overrun = False
        self.crc_errors = self.cobs_errors = self.short_frames = self.overruns = 0


# ---- integer conversions (sections 4 and 9.4) -------------------------------------------------


def ramp_samples(delta_q16: int, ramp_ms: int, sample_rate_hz: int, slew_ms: int) -> int:
    """Ramp length N of section 9.4, in exact integer arithmetic."""
    n_time = (ramp_ms * sample_rate_hz + 500) // 1000
    n_slew = (abs(delta_q16) * slew_ms * sample_rate_hz + 65534999) // 65535000
    return max(1, n_time, n_slew)


def half_up(value: float) -> int:
    return math.floor(value + 0.5)


# ---- the plate and its sensor -----------------------------------------------------------------


@dataclass(frozen=True)
class DeviceConfig:
    """What this firmware announces in HELLO, and the physics behind it.

    The announced values deliberately differ from the reference device's (2 kHz, 40-sample
    blocks, 1024 counts per g, 400 ms watchdog...), so that a host relying on the reference's
    numbers rather than on HELLO shows up.
    """

    device_id: str = "CLN-0001"
    fw_version: tuple[int, int, int] = (0, 1, 0)
    sample_rate_hz: int = 2000
    block_samples: int = 40
    counts_per_g: int = 1024
    max_drive_q16: int = 58982
    min_freq_mhz: int = 20000
    max_freq_mhz: int = 150000
    watchdog_ms: int = 400
    watchdog_ramp_ms: int = 150
    stop_ramp_ms: int = 250
    slew_full_scale_ms: int = 120
    ceiling_mg: int = 650
    simulated: bool = False  # announce capability SIMULATED
    countersign: bool = True  # announce COUNTERSIGN and answer 0x08/0x09
    nv_fails: bool = False  # the non-volatile memory refuses every write (NAK STORAGE)
    reset_at_index: int = 0  # reset once (a brown-out) when the first boot's sample index gets here
    boot_ms: int = 100
    default_freq_mhz: int = 30000
    samples_first: bool = False  # send a finished block's SAMPLES before the boundary's replies
    # give a block's SAMPLES its sequence number when the block starts, not when it is sent (so
    # that the boundary's replies, sent first, carry higher numbers: a reordering on the wire).
    # A reading docs/protocol.md 2.5 now rules out: a frame is numbered when it leaves.
    number_samples_when_built: bool = False
    # STATUS `sample_index` as "the number of samples streamed since boot" (the 0x85 table's old
    # wording): with the replies sent before the finished block's SAMPLES that is one block less
    # than the boundary. docs/protocol.md now gives the boundary only (9.2, 0x85).
    status_index_streamed: bool = False
    # plate: acceleration per unit drive above resonance, suspension resonance and damping
    plate_gain_g: float = 3.2
    plate_mass_kg: float = 20.0
    load_kg: float = 0.0
    plate_f0_hz: float = 14.0
    plate_zeta: float = 0.25
    # sensor: the part's own errors (corrected by the stored calibration) and its noise
    part_sensitivity: float = 1.037
    part_offset_g: float = -0.018
    drift_gain: float = 1.0  # sensitivity change since the calibration was stored
    noise_g: float = 0.002
    seed: int = 1
    # coil: ambient temperature and heating at full drive
    coil_ambient_c: float = 30.0
    coil_heat_c_per_s: float = 1.5
    coil_tau_s: float = 300.0

    def capabilities(self) -> int:
        bits = CAP_COIL_TEMPERATURE
        if self.simulated:
            bits |= CAP_SIMULATED
        if self.countersign:
            bits |= CAP_COUNTERSIGN
        return bits

    def check(self) -> None:
        """Refuse to announce a HELLO outside section 7's ranges."""
        ident = self.device_id.encode("ascii")
        problems = []
        if not 1 <= len(ident) <= 16 or not all(0x20 <= b <= 0x7E for b in ident):
            problems.append("device_id")
        ranges = {
            "sample_rate_hz": (400, 20000),
            "block_samples": (1, MAX_BLOCK_SAMPLES),
            "counts_per_g": (32, 16383),
            "max_drive_q16": (1, 65535),
            "min_freq_mhz": (1000, 1000000),
            "max_freq_mhz": (1000, 1000000),
            "watchdog_ms": (200, 2000),
            "watchdog_ramp_ms": (10, 1000),
            "stop_ramp_ms": (10, 1000),
            "slew_full_scale_ms": (1, 1000),
            "ceiling_mg": (500, 1000),
        }
        for name, (low, high) in ranges.items():
            if not low <= getattr(self, name) <= high:
                problems.append(name)
        if self.min_freq_mhz > self.max_freq_mhz:
            problems.append("min_freq_mhz > max_freq_mhz")
        if 2 * self.max_freq_mhz >= 1000 * self.sample_rate_hz:
            problems.append("max_freq_mhz above Nyquist")
        if self.block_samples * 1000 > 50 * self.sample_rate_hz:
            problems.append("block longer than 50 ms")
        if self.max_drive_q16 * self.slew_full_scale_ms > 65535 * min(
            self.stop_ramp_ms, self.watchdog_ramp_ms
        ):
            problems.append("slew limit lengthens the stop or fault ramp")
        if not self.min_freq_mhz <= self.default_freq_mhz <= self.max_freq_mhz:
            problems.append("default_freq_mhz")
        if problems:
            raise ValueError(f"this HELLO would break section 7: {', '.join(problems)}")


class Plate:
    """Plate acceleration (g) for a drive u (fraction of full scale), one sample at a time.

    A mass on a suspension driven by a force proportional to u: acceleration / u is
    ``G s^2 / (s^2 + 2 zeta w0 s + w0^2)``, discretised by the bilinear transform. A load on the
    plate lowers G by the mass ratio.
    """

    def __init__(self, config: DeviceConfig) -> None:
        fs = float(config.sample_rate_hz)
        w0 = 2 * math.pi * config.plate_f0_hz
        k = 2 * fs
        gain = config.plate_gain_g * config.plate_mass_kg / (config.plate_mass_kg + config.load_kg)
        a0 = k * k + 2 * config.plate_zeta * w0 * k + w0 * w0
        self._b = (gain * k * k / a0, -2 * gain * k * k / a0, gain * k * k / a0)
        self._a = (
            (2 * w0 * w0 - 2 * k * k) / a0,
            (k * k - 2 * config.plate_zeta * w0 * k + w0 * w0) / a0,
        )
        self._x1 = self._x2 = self._y1 = self._y2 = 0.0

    def step(self, drive: float) -> float:
        y = (
            self._b[0] * drive
            + self._b[1] * self._x1
            + self._b[2] * self._x2
            - self._a[0] * self._y1
            - self._a[1] * self._y2
        )
        self._x2, self._x1 = self._x1, drive
        self._y2, self._y1 = self._y1, y
        return y


class Sensor:
    """The accelerometer part (with its errors) and the firmware's stored correction of it."""

    RAW_LSB_G = 1.0 / 4096  # the part's own resolution

    def __init__(self, config: DeviceConfig) -> None:
        self._rng = random.Random(config.seed)
        self._noise_g = config.noise_g
        self._sensitivity = config.part_sensitivity * config.drift_gain
        self._offset_g = config.part_offset_g
        # the calibration stored in the device when it was built
        self._cal_sensitivity = config.part_sensitivity
        self._cal_offset_g = config.part_offset_g

    def read_g(self, true_accel_g: float) -> float:
        """Corrected reading in g (gravity included), before scaling to counts."""
        raw = (1.0 + true_accel_g) * self._sensitivity + self._offset_g
        raw += self._rng.gauss(0.0, self._noise_g)
        raw = round(raw / self.RAW_LSB_G) * self.RAW_LSB_G
        return (raw - self._cal_offset_g) / self._cal_sensitivity


# ---- non-volatile memory (section 9.8) --------------------------------------------------------


@dataclass
class NvState:
    counter: int = 0
    head: bytes = bytes(32)
    last_digest: bytes = b""
    last_prev_head: bytes = b""
    last_signature: bytes = b""


class NvStore:
    """Key, counter, head and last countersignature in a directory, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fail_writes = False  # a failing memory: NAK STORAGE
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / "device-key.bin"
        if not key_path.exists():
            seed = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            self._write_atomically(key_path, seed)
        self.key = Ed25519PrivateKey.from_private_bytes(key_path.read_bytes())
        self.public_key = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.state = self._load()

    def _load(self) -> NvState:
        path = self.directory / "counter.json"
        if not path.exists():
            return NvState()
        data = json.loads(path.read_text("ascii"))
        return NvState(
            counter=int(data["counter"]),
            head=bytes.fromhex(data["head"]),
            last_digest=bytes.fromhex(data["last_digest"]),
            last_prev_head=bytes.fromhex(data["last_prev_head"]),
            last_signature=bytes.fromhex(data["last_signature"]),
        )

    def store(self, state: NvState) -> bool:
        """Write all of `state` or nothing; False if the memory failed."""
        if self.fail_writes:
            return False
        data = {
            "counter": state.counter,
            "head": state.head.hex(),
            "last_digest": state.last_digest.hex(),
            "last_prev_head": state.last_prev_head.hex(),
            "last_signature": state.last_signature.hex(),
        }
        try:
            self._write_atomically(
                self.directory / "counter.json", json.dumps(data).encode("ascii")
            )
        except OSError:
            return False
        self.state = state
        return True

    @staticmethod
    def _write_atomically(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def next_head(prev_head: bytes, counter: int, digest: bytes) -> bytes:
    return hashlib.sha256(HEAD_PREFIX + prev_head + struct.pack("<I", counter) + digest).digest()


# ---- the firmware -----------------------------------------------------------------------------


@dataclass
class _Ramp:
    """A linear amplitude ramp in Q16 units: sample k has start + (target - start) k / n."""

    start: float = 0.0
    target: int = 0
    n: int = 1
    done: int = 1  # samples of the ramp already generated

    def present(self) -> float:
        if self.done >= self.n:
            return float(self.target)
        return self.start + (self.target - self.start) * self.done / self.n

    def remaining(self) -> int:
        return max(0, self.n - self.done)


class Firmware:
    """The device of docs/protocol.md, advanced one block boundary at a time.

    `receive` takes bytes from the link; `boundary` runs section 9.2's steps for the boundary at
    the present sample index and returns the wire bytes to send. Nothing here knows the wall
    clock: the sample index is the only time.
    """

    def __init__(self, config: DeviceConfig, nv: NvStore | None) -> None:
        config.check()
        if config.countersign and nv is None:
            raise ValueError("a device with COUNTERSIGN needs its non-volatile store")
        self.config = config
        self.nv = nv
        if nv is not None and config.nv_fails:
            nv.fail_writes = True
        self.coil_temp_c = config.coil_ambient_c
        self.rx = FrameReceiver()
        self.host_version: tuple[int, int] | None = None  # from the last HELLO_REQUEST
        self.boots = 0
        self._boot()

    # -- boot (9.1) --

    def _boot(self) -> None:
        cfg = self.config
        self.output_on = False
        self.stopping = False
        self.ramp = _Ramp()
        self.fault_code = 0
        self.fault_index = 0
        self.fault_detail = 0
        self.sample_index = 0
        self.tx_seq = 0
        self.rx.reset()
        self.rx_expected: int | None = None
        self.rx_lost = 0
        self.freq_mhz = cfg.default_freq_mhz
        self.phase_acc = 0  # phase in 1 / (1000 fs) turns
        self.last_host_index: int | None = None
        self.rest_means_g: deque[float] = deque(maxlen=REST_BLOCKS)
        self.window: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=ACCEL_WINDOW_BLOCKS)
        self.pending_samples: bytes | None = None
        self.pending_frames: list[RawFrame] = []
        self.plate = Plate(cfg)
        self.sensor = Sensor(dataclasses.replace(cfg, seed=cfg.seed + self.boots))
        self.boot_blocks_left = max(
            0, -(-cfg.boot_ms * cfg.sample_rate_hz // (1000 * cfg.block_samples))
        )
        self.booted = False
        self.boots += 1

    def reset(self) -> None:
        """A reset (power cycle, DTR): drive off at once, then boot again."""
        self._boot()

    # -- link --

    def receive(self, data: bytes) -> None:
        self.pending_frames.extend(self.rx.feed(data))

    def _frame(self, msg_type: int, payload: bytes) -> bytes:
        wire = encode_frame(msg_type, self.tx_seq, payload)
        self.tx_seq = (self.tx_seq + 1) & 0xFFFF
        return wire

    # -- derived state --

    @property
    def state(self) -> int:
        if self.fault_code:
            return STATE_FAULT
        if self.stopping:
            return STATE_STOPPING
        return STATE_RUNNING if self.output_on else STATE_IDLE

    def _ramping_down(self) -> bool:
        return self.output_on and (self.stopping or self.fault_code != 0)

    def _drive_q16(self) -> int:
        return half_up(self.ramp.present()) if self.output_on else 0

    # -- one block boundary (9.2) --

    def boundary(self) -> list[bytes]:
        """Run the boundary at `sample_index`; return the wire frames it sends, in order."""
        cfg = self.config
        out: list[bytes] = []
        if cfg.reset_at_index and self.boots == 1 and self.sample_index >= cfg.reset_at_index:
            self.reset()
        if not self.booted:
            if self.boot_blocks_left > 0:
                self.boot_blocks_left -= 1
                return out  # nothing before the boot HELLO; host bytes are kept
            self.booted = True
            out.append(self._frame(HELLO, self._hello_payload(boot=1)))
        if cfg.samples_first and self.pending_samples is not None:
            out.append(self._samples_wire(self.pending_samples))
            self.pending_samples = None
        if self.output_on and not self.fault_code:
            self._check_ceiling(out)
        frames, self.pending_frames = self.pending_frames, []
        for frame in frames:
            self._handle(frame, out)
        if self.output_on and not self.fault_code and self.last_host_index is not None:
            silence_ms = half_up(
                (self.sample_index - self.last_host_index) * 1000 / cfg.sample_rate_hz
            )
            if silence_ms > cfg.watchdog_ms:
                self._trip(FAULT_HOST_WATCHDOG, silence_ms, out)
        coil_centi = half_up(self.coil_temp_c * 100)
        if self.output_on and not self.fault_code and coil_centi > OVERTEMP_CENTI_C:
            self._trip(FAULT_COIL_OVERTEMP, coil_centi, out)
        if self.pending_samples is not None:
            out.append(self._samples_wire(self.pending_samples))
        self.pending_samples = self._generate_block()
        return out

    def _samples_wire(self, built: bytes) -> bytes:
        """A finished block's frame: numbered when it leaves, unless it was numbered when built."""
        if self.config.number_samples_when_built:
            return built
        return self._frame(SAMPLES, built)

    def _trip(self, code: int, detail: int, out: list[bytes]) -> None:
        """Latch a fault, start the fault ramp (or keep a shorter stop ramp), send FAULT."""
        cfg = self.config
        self.fault_code = code
        self.fault_index = self.sample_index
        self.fault_detail = detail
        if self.output_on:
            present = self.ramp.present()
            if present == 0:
                self.output_on = False  # at zero amplitude nothing to ramp down (section 10)
            else:
                d0 = math.ceil(present)
                n_fault = ramp_samples(
                    d0, cfg.watchdog_ramp_ms, cfg.sample_rate_hz, cfg.slew_full_scale_ms
                )
                if not (
                    self.stopping and self.ramp.target == 0 and self.ramp.remaining() <= n_fault
                ):
                    self.ramp = _Ramp(start=present, target=0, n=n_fault, done=0)
        self.stopping = False
        out.append(self._frame(FAULT, FAULT_FMT.pack(code, self.fault_index, detail)))

    def _check_ceiling(self, out: list[bytes]) -> None:
        """Section 10: sine fit with one constant per block over the last blocks."""
        if len(self.window) < ACCEL_WINDOW_BLOCKS:
            return
        phases = np.concatenate([p for p, _ in self.window])
        values = np.concatenate([v for _, v in self.window])
        n = self.config.block_samples
        columns = [np.cos(2 * np.pi * phases), np.sin(2 * np.pi * phases)]
        for j in range(ACCEL_WINDOW_BLOCKS):
            step = np.zeros(len(values))
            step[j * n : (j + 1) * n] = 1.0
            columns.append(step)
        coef, *_ = np.linalg.lstsq(np.column_stack(columns), values, rcond=None)
        peak_mg = half_up(math.hypot(float(coef[0]), float(coef[1])) * 1000)
        if peak_mg > self.config.ceiling_mg:
            self._trip(FAULT_OVER_ACCELERATION, peak_mg, out)

    def _generate_block(self) -> bytes:
        """Drive and sample one block; return its SAMPLES frame (sent when the block is done)."""
        cfg = self.config
        fs = cfg.sample_rate_hz
        modulus = 1000 * fs
        first_index = self.sample_index
        phase_q32 = ((self.phase_acc << 32) + modulus // 2) // modulus & 0xFFFFFFFF
        output_was_on = self.output_on
        drive_q16 = self._drive_q16()
        phases = np.empty(cfg.block_samples)
        readings = np.empty(cfg.block_samples)
        heat = 0.0
        for k in range(cfg.block_samples):
            phase = self.phase_acc / modulus
            amplitude = self.ramp.present() / 65535 if self.output_on else 0.0
            accel = self.plate.step(amplitude * math.sin(2 * math.pi * phase))
            phases[k] = phase
            readings[k] = self.sensor.read_g(accel)
            heat += amplitude * amplitude
            self.phase_acc = (self.phase_acc + self.freq_mhz) % modulus
            if self.output_on and self.ramp.done < self.ramp.n:
                self.ramp.done += 1
        self.sample_index += cfg.block_samples
        dt = cfg.block_samples / fs
        self.coil_temp_c += (
            cfg.coil_heat_c_per_s * heat / cfg.block_samples
            - (self.coil_temp_c - cfg.coil_ambient_c) / cfg.coil_tau_s
        ) * dt
        if self._ramping_down() and self.ramp.remaining() == 0 and self.ramp.target == 0:
            self.output_on = False  # the ramp to zero has ended: switch off
            self.stopping = False
        self.window.append((phases, readings))
        if not output_was_on:
            self.rest_means_g.append(float(readings.mean()))
        counts = [max(-32768, min(32767, half_up(g * cfg.counts_per_g))) for g in readings]
        payload = SAMPLES_HEAD_FMT.pack(
            first_index, phase_q32, self.freq_mhz, drive_q16, len(counts)
        ) + struct.pack(f"<{len(counts)}h", *counts)
        if self.config.number_samples_when_built:
            return self._frame(SAMPLES, payload)
        return payload

    # -- commands (9.6) --

    def _count_seq(self, frame: RawFrame) -> None:
        if frame.seq == 0 and frame.msg_type in (HELLO_REQUEST, HELLO):
            self.rx_expected = 1
            return
        if self.rx_expected is not None:
            gap = (frame.seq - self.rx_expected) % 65536
            if gap >= 32768:
                return
            self.rx_lost += gap
        self.rx_expected = (frame.seq + 1) % 65536

    def _handle(self, frame: RawFrame, out: list[bytes]) -> None:
        cfg = self.config
        self._count_seq(frame)
        self.last_host_index = self.sample_index  # any valid frame feeds the watchdog
        t, p = frame.msg_type, frame.payload

        def ack() -> None:
            out.append(self._frame(ACK, struct.pack("<HB", frame.seq, t)))

        def nak(reason: int) -> None:
            out.append(self._frame(NAK, struct.pack("<HBB", frame.seq, t, reason)))

        known = set(HOST_PAYLOAD_LEN)
        if not cfg.countersign:
            known -= {IDENTITY_REQUEST, COUNTERSIGN}
        if t not in known:
            nak(NAK_UNKNOWN_TYPE)
            return
        if len(p) != HOST_PAYLOAD_LEN[t]:
            nak(NAK_BAD_LENGTH)
            return
        if t == HELLO_REQUEST:
            self.host_version = (p[0], p[1])
            out.append(self._frame(HELLO, self._hello_payload(boot=0)))
        elif t == STATUS_REQUEST:
            out.append(self._frame(STATUS, self._status_payload()))
        elif t == HEARTBEAT:
            ack()
        elif t == SET_FREQUENCY:
            (freq,) = struct.unpack("<I", p)
            if not cfg.min_freq_mhz <= freq <= cfg.max_freq_mhz:
                nak(NAK_OUT_OF_RANGE)
                return
            self.freq_mhz = freq
            ack()
        elif t == SET_DRIVE:
            target, ramp_ms = struct.unpack("<HH", p)
            if self.fault_code:
                nak(NAK_FAULT_LATCHED)
            elif self._ramping_down():
                nak(NAK_BUSY)
            elif not self.output_on:
                nak(NAK_OUTPUT_OFF)
            elif target > cfg.max_drive_q16:
                nak(NAK_OUT_OF_RANGE)
            else:
                self._start_ramp(target, ramp_ms)
                ack()
        elif t == SET_OUTPUT:
            self._set_output(p[0], ack, nak, out)
        elif t == CLEAR_FAULT:
            if self._ramping_down():
                nak(NAK_BUSY)
            else:
                self.fault_code = self.fault_index = self.fault_detail = 0
                ack()
        elif t == IDENTITY_REQUEST:
            assert self.nv is not None
            s = self.nv.state
            out.append(
                self._frame(IDENTITY, self.nv.public_key + struct.pack("<I", s.counter) + s.head)
            )
        elif t == COUNTERSIGN:
            self._countersign(p[:32], int.from_bytes(p[32:], "little"), nak, out)

    def _start_ramp(self, target: int, ramp_ms: int) -> None:
        cfg = self.config
        present = self.ramp.present()
        d0 = math.floor(present) if target > present else math.ceil(present)
        n = ramp_samples(target - d0, ramp_ms, cfg.sample_rate_hz, cfg.slew_full_scale_ms)
        self.ramp = _Ramp(start=present, target=target, n=n, done=0)

    def _set_output(
        self, enable: int, ack: Callable[[], None], nak: Callable[[int], None], out: list[bytes]
    ) -> None:
        cfg = self.config
        if enable not in (0, 1):
            nak(NAK_OUT_OF_RANGE)
            return
        if enable == 0:
            if self.output_on and not self.fault_code and not self.stopping:
                if self.ramp.present() == 0 and self.ramp.target == 0:
                    self.output_on = False
                else:
                    present = self.ramp.present()
                    n = ramp_samples(
                        math.ceil(present),
                        cfg.stop_ramp_ms,
                        cfg.sample_rate_hz,
                        cfg.slew_full_scale_ms,
                    )
                    self.ramp = _Ramp(start=present, target=0, n=n, done=0)
                    self.stopping = True
            ack()
            return
        if self.fault_code:
            nak(NAK_FAULT_LATCHED)
        elif self.stopping:
            nak(NAK_BUSY)
        elif self.output_on:
            ack()
        else:
            reading_mg = (
                half_up(sum(self.rest_means_g) / len(self.rest_means_g) * 1000)
                if self.rest_means_g
                else 0
            )
            if not self.rest_means_g or abs(reading_mg - 1000) > REST_TOLERANCE_MG:
                self._trip(FAULT_SENSOR_REST, reading_mg, out)
                nak(NAK_FAULT_LATCHED)
                return
            self.output_on = True
            self.ramp = _Ramp()
            ack()

    def _countersign(
        self, digest: bytes, expected: int, nak: Callable[[int], None], out: list[bytes]
    ) -> None:
        assert self.nv is not None
        s = self.nv.state
        if s.counter and expected == s.counter and digest == s.last_digest:
            out.append(
                self._frame(
                    COUNTERSIGNATURE,
                    COUNTERSIGNATURE_FMT.pack(
                        s.counter, digest, s.last_prev_head, s.head, s.last_signature
                    ),
                )
            )
            return
        if s.counter == 0xFFFFFFFF or expected != s.counter + 1:
            nak(NAK_COUNTER_MISMATCH)
            return
        new_head = next_head(s.head, expected, digest)
        device_id = self.config.device_id.encode("ascii").ljust(16, b"\x00")
        message = SIGN_PREFIX + device_id + struct.pack("<I", expected) + digest + s.head + new_head
        signature = self.nv.key.sign(message)
        new_state = NvState(expected, new_head, digest, s.head, signature)
        if not self.nv.store(new_state):
            nak(NAK_STORAGE)
            return
        out.append(
            self._frame(
                COUNTERSIGNATURE,
                COUNTERSIGNATURE_FMT.pack(expected, digest, s.head, new_head, signature),
            )
        )

    # -- payloads --

    def _hello_payload(self, boot: int) -> bytes:
        cfg = self.config
        return HELLO_FMT.pack(
            PROTOCOL_MAJOR,
            PROTOCOL_MINOR,
            *cfg.fw_version,
            cfg.device_id.encode("ascii").ljust(16, b"\x00"),
            cfg.sample_rate_hz,
            cfg.block_samples,
            cfg.counts_per_g,
            cfg.max_drive_q16,
            cfg.min_freq_mhz,
            cfg.max_freq_mhz,
            cfg.watchdog_ms,
            cfg.watchdog_ramp_ms,
            cfg.stop_ramp_ms,
            cfg.slew_full_scale_ms,
            cfg.ceiling_mg,
            cfg.capabilities(),
            boot,
        )

    def _status_payload(self) -> bytes:
        index = self.sample_index
        if self.config.status_index_streamed and self.pending_samples is not None:
            index -= self.config.block_samples  # the finished block has not been sent yet
        return STATUS_FMT.pack(
            self.state,
            1 if self.output_on else 0,
            self.freq_mhz,
            self._drive_q16(),
            self.ramp.target if self.output_on else 0,
            self.fault_code,
            index,
            min(65535, self.rx.crc_errors + self.rx.cobs_errors),
            min(65535, self.rx_lost),
            half_up(self.coil_temp_c * 100),
            self.fault_index if self.fault_code else 0,
            self.fault_detail if self.fault_code else 0,
        )


# ---- the TCP server ---------------------------------------------------------------------------

MAX_BACKLOG_BYTES = 1 << 16  # unread output kept for a slow host; whole frames beyond are dropped


class DeviceServer:
    """Serves one `Firmware` on a TCP port, one block boundary per block of wall time.

    The device runs from the moment the server starts, whether or not a host is connected (its
    output is then discarded). A new connection replaces the previous one. With
    `reset_on_connect` each connection resets the device, like a DTR reset on a UART board.
    """

    def __init__(
        self,
        firmware: Firmware,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        reset_on_connect: bool = False,
    ) -> None:
        self.firmware = firmware
        self.speed = speed
        self.reset_on_connect = reset_on_connect
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self._client: socket.socket | None = None
        self._outbuf = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cleanroom-device", daemon=True)
        self.lock = threading.Lock()  # held while a boundary runs (tests may poke the firmware)

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"socket://{host}:{port}"

    def start(self) -> DeviceServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._drop_client()
        self._listener.close()

    def __enter__(self) -> DeviceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._outbuf.clear()

    def _run(self) -> None:
        cfg = self.firmware.config
        block_s = cfg.block_samples / cfg.sample_rate_hz / self.speed
        start = time.monotonic()
        boundaries = 0
        while not self._stop.is_set():
            wait = start + boundaries * block_s - time.monotonic()
            if wait > 0:
                self._stop.wait(min(wait, block_s))
                continue
            self._accept()
            self._read()
            with self.lock:
                frames = self.firmware.boundary()
            self._write(frames)
            boundaries += 1

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        self._drop_client()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        if self.reset_on_connect:
            with self.lock:
                self.firmware.reset()

    def _read(self) -> None:
        while self._client is not None:
            try:
                data = self._client.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                self._drop_client()
                return
            if not data:
                self._drop_client()
                return
            with self.lock:
                self.firmware.receive(data)

    def _write(self, frames: Sequence[bytes]) -> None:
        if self._client is None:
            return
        for frame in frames:
            if len(self._outbuf) + len(frame) <= MAX_BACKLOG_BYTES:
                self._outbuf += frame
        while self._outbuf:
            try:
                _, writable, _ = select.select([], [self._client], [], 0)
                if not writable:
                    return
                sent = self._client.send(self._outbuf)
            except BlockingIOError:
                return
            except OSError:
                self._drop_client()
                return
            del self._outbuf[:sent]


@contextmanager
def serve(
    nv_dir: Path, config: DeviceConfig | None = None, **server_options: object
) -> Iterator[DeviceServer]:
    """A running device on 127.0.0.1 (a free port) for the length of a `with` block."""
    cfg = config or DeviceConfig()
    firmware = Firmware(cfg, NvStore(nv_dir) if cfg.countersign else None)
    server = DeviceServer(firmware, **server_options)  # type: ignore[arg-type]
    with server:
        yield server


def _parse_setting(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    fields_by_name = {f.name: f for f in dataclasses.fields(DeviceConfig)}
    if name not in fields_by_name:
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a setting; known: {', '.join(sorted(fields_by_name))}"
        )
    default = getattr(DeviceConfig(), name)
    if isinstance(default, bool):
        return name, value.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return name, int(value)
    if isinstance(default, float):
        return name, float(value)
    if isinstance(default, tuple):
        return name, tuple(int(v) for v in value.split("."))
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nv", type=Path, required=True, help="directory of the device's key")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--reset-on-connect", action="store_true")
    parser.add_argument("--set", type=_parse_setting, action="append", default=[], metavar="K=V")
    args = parser.parse_args(argv)
    config = dataclasses.replace(DeviceConfig(), **dict(args.set))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with serve(
        args.nv,
        config,
        host=args.host,
        port=args.port,
        speed=args.speed,
        reset_on_connect=args.reset_on_connect,
    ) as server:
        print(server.url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
