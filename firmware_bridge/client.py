"""The host side of the link: open a plate by URL, handshake, command it, stream its samples.

One thread does everything: reading frames, queueing sample blocks, matching ACK/NAK to the
commands that caused them, and sending a heartbeat whenever the host has been quiet for
``HEARTBEAT_S`` of the device's sample clock. Nothing here sleeps on the wall clock except the
port's read timeout, so the same client runs a real plate and ``sim://?speed=max`` unchanged.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import serial
from serial.urlhandler import protocol_socket

if sys.platform != "win32":
    import fcntl
    import termios

from firmware_bridge.codec import (
    FrameDecoder,
    LinkStats,
    RawFrame,
    encode_frame,
    samples_payload_dtype,
)
from firmware_bridge.errors import (
    BridgeError,
    CommandRefusedError,
    CommandTimeoutError,
    CommandUnreadableError,
    DeviceFaultError,
    DeviceResetError,
    HandshakeBacklogError,
    HandshakeTimeoutError,
    HandshakeUnreadableError,
    IncompatibleVersionError,
    InvalidDeviceInfoError,
    LinkActivity,
    LinkLostError,
    LinkUnreadableError,
    ProtocolError,
    SampleIndexError,
)
from firmware_bridge.protocol import (
    PHASE_TURN,
    PROTOCOL_MAJOR,
    Q16,
    SAMPLE_INDEX_MAX,
    SAMPLES_HEADER,
    Ack,
    Capability,
    ClearFault,
    Countersign,
    Countersignature,
    DeviceState,
    Fault,
    Heartbeat,
    Hello,
    HelloRequest,
    Identity,
    IdentityRequest,
    Message,
    Nak,
    NakReason,
    Samples,
    SetDrive,
    SetFrequency,
    SetOutput,
    Status,
    StatusRequest,
    check_countersignature,
    check_hello,
    check_identity,
    decode_message,
    drive_to_q16,
    fault_text,
    hz_to_mhz,
    nak_text,
    pack_message,
    round_half_up,
)
from firmware_bridge.transport import BAUD_RATE, close_port, open_port

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.1
HELLO_TIMEOUT_S = 5.0
HELLO_REPEAT_S = 0.5
# Before the hello, a read that finds this many bytes already waiting is reading a backlog:
# output the device made before this host asked (docs/protocol.md 3, 9.7). The device's stream
# fills this in no less than ~20 ms at the fastest HELLO the document allows.
HELLO_BACKLOG_BYTES = 1024
HELLO_DRAIN_MAX_BYTES = 8 * 1024 * 1024  # the most backlog the handshake reads before giving up
HELLO_DRAIN_MAX_S = 30.0  # ... and the most wall-clock time it spends on the handshake for it
HELLO_BOOT_WAIT_S = 1.0  # after a boot HELLO, how long an answer (boot = 0) may still replace it
NOMINAL_FRAMES_PER_S = 50  # SAMPLES frames per second before the hello says otherwise
COMMAND_TIMEOUT_S = 1.0
# How much longer than the stop ramp of its HELLO a host waits for a STOPPING device to reach
# IDLE (a previous host's stop, docs/protocol.md 9.7): the ramp ends at a block boundary and
# the STATUS that shows it comes a block or two later.
STOP_WAIT_MARGIN_S = 0.25
COUNTERSIGN_ATTEMPTS = 3  # a lost answer is asked for again (the device answers a repeat alike)
READ_CHUNK = 4096
ACK_LEN = Ack.LAYOUT.size
# What every SAMPLES frame read is decoded with, looked up once.
_SAMPLES_TYPE = Samples.TYPE
_ACK_TYPE = Ack.TYPE
_SAMPLES_AT = SAMPLES_HEADER.size  # offset of the counts in a SAMPLES payload
_COUNT_AT = SAMPLES_HEADER.size - 1  # offset of the count byte
_unpack_samples_header = SAMPLES_HEADER.unpack_from
_frombuffer = np.frombuffer
_WIRE_I2 = np.dtype("<i2")
_INT16 = np.dtype(np.int16)
_INT64 = np.dtype(np.int64)
_set_attribute = object.__setattr__
_tuple_new = tuple.__new__
_pack_set_drive = SetDrive.LAYOUT.pack
_SET_DRIVE_TYPE = SetDrive.TYPE
# Radians per unit of a wire phase (2**-32 turn). ``phase * RAD_PER_PHASE_UNIT`` is bit for
# bit ``2.0 * np.pi * phase / PHASE_TURN``: PHASE_TURN is a power of two, so dividing by it and
# multiplying by its reciprocal both only change the exponent (exactly), before or after the
# one rounding of ``2.0 * np.pi * phase``.
RAD_PER_PHASE_UNIT = 2.0 * np.pi / PHASE_TURN
# The counters a wait that gives up compares with their values when it began (LinkActivity):
# bytes received, frames, CRC, COBS, short and overrun frames, protocol errors, SAMPLES refused
# for their index. A plain tuple, made without a call: a read_block that waits takes one.
_Counts = tuple[int, int, int, int, int, int, int, int]
_BAD_INDEX_AT = 7  # the refused SAMPLES' place in it


def _first_index_error(first_index: int, n: int) -> ProtocolError:
    """The refusal of a SAMPLES block of ``n`` samples whose indices run past what the host
    keeps (SAMPLE_INDEX_MAX, docs/protocol.md 9.5)."""
    return ProtocolError(
        f"Samples first_index {first_index} with {n} samples runs past sample index "
        "2**63 - 1, the largest a host accepts (docs/protocol.md 9.5)"
    )


@dataclass(frozen=True)
class DeviceInfo:
    """What the device announced in its hello."""

    device_id: str
    firmware_version: str
    protocol_version: str
    sample_rate_hz: int
    block_samples: int
    counts_per_g: int
    max_drive: float
    min_freq_hz: float
    max_freq_hz: float
    watchdog_s: float
    watchdog_ramp_s: float  # ramp to zero after a fault (watchdog or other)
    stop_ramp_s: float  # ramp to zero after SET_OUTPUT off
    full_scale_slew_s: float  # the drive never moves faster than full scale in this time
    ceiling_g: float  # the device ramps to zero above this peak acceleration, measured by itself
    capabilities: list[str]

    @classmethod
    def from_hello(cls, hello: Hello) -> DeviceInfo:
        return cls(
            device_id=hello.device_id,
            firmware_version=hello.firmware_version,
            protocol_version=f"{hello.protocol_major}.{hello.protocol_minor}",
            sample_rate_hz=hello.sample_rate_hz,
            block_samples=hello.block_samples,
            counts_per_g=hello.counts_per_g,
            max_drive=hello.max_drive,
            min_freq_hz=hello.min_freq_mhz / 1000.0,
            max_freq_hz=hello.max_freq_mhz / 1000.0,
            watchdog_s=hello.watchdog_ms / 1000.0,
            watchdog_ramp_s=hello.watchdog_ramp_ms / 1000.0,
            stop_ramp_s=hello.stop_ramp_ms / 1000.0,
            full_scale_slew_s=hello.slew_full_scale_ms / 1000.0,
            ceiling_g=hello.ceiling_g,
            capabilities=[c.name or "" for c in Capability if hello.capabilities & c],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeviceIdentity:
    """What the device's IDENTITY said: its key, and its counter and head at that moment."""

    device_id: str
    public_key: bytes
    counter: int
    head: bytes


@dataclass(frozen=True)
class Voucher:
    """A checked COUNTERSIGNATURE: the device vouched for ``digest`` as number ``counter``."""

    public_key: bytes
    counter: int
    digest: bytes
    prev_head: bytes
    new_head: bytes
    signature: bytes


@dataclass(frozen=True, init=False)
class SampleBlock:
    """One block of accelerometer samples on the device's sample clock.

    ``accel_g`` has shape (n,) and includes gravity (about +1 g when level). The drive phase
    of sample k is ``phase_rad + 2*pi*freq_hz*k/sample_rate_hz``.
    """

    first_index: int
    counts: npt.NDArray[np.int16]
    accel_g: npt.NDArray[np.float64]
    phase_rad: float
    freq_hz: float
    drive: float
    missing_before: int  # samples lost between the previous block and this one

    def __init__(
        self,
        first_index: int,
        counts: npt.NDArray[np.int16],
        accel_g: npt.NDArray[np.float64],
        phase_rad: float,
        freq_hz: float,
        drive: float,
        missing_before: int,
    ) -> None:
        # One block is made for every block read: the fields set as one dict, half the cost
        # of the frozen dataclass's own __init__ (a guarded setattr per field).
        _set_attribute(
            self,
            "__dict__",
            {
                "first_index": first_index,
                "counts": counts,
                "accel_g": accel_g,
                "phase_rad": phase_rad,
                "freq_hz": freq_hz,
                "drive": drive,
                "missing_before": missing_before,
            },
        )


@dataclass(frozen=True, eq=False, init=False)
class SampleBatch:
    """Consecutive sample blocks of one length, as arrays (what :meth:`DeviceClient.read_blocks`
    returns). Row j is the block :meth:`DeviceClient.read_block` would have returned j-th.

    Attributes
    ----------
    first_index, missing_before : (blocks,) int64
    counts : (blocks, n) int16
    accel_g : (blocks, n) float64
        Includes gravity, as :attr:`SampleBlock.accel_g`.
    phase_rad, freq_hz, drive : (blocks,) float64
        The drive's phase at each block's first sample, its frequency and amplitude.
    """

    first_index: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int16]
    accel_g: npt.NDArray[np.float64]
    phase_rad: npt.NDArray[np.float64]
    freq_hz: npt.NDArray[np.float64]
    drive: npt.NDArray[np.float64]
    missing_before: npt.NDArray[np.int64]

    def __init__(
        self,
        first_index: npt.NDArray[np.int64],
        counts: npt.NDArray[np.int16],
        accel_g: npt.NDArray[np.float64],
        phase_rad: npt.NDArray[np.float64],
        freq_hz: npt.NDArray[np.float64],
        drive: npt.NDArray[np.float64],
        missing_before: npt.NDArray[np.int64],
    ) -> None:
        # The fields set as one dict, as SampleBlock's (one batch is made for every read).
        _set_attribute(
            self,
            "__dict__",
            {
                "first_index": first_index,
                "counts": counts,
                "accel_g": accel_g,
                "phase_rad": phase_rad,
                "freq_hz": freq_hz,
                "drive": drive,
                "missing_before": missing_before,
            },
        )

    def __len__(self) -> int:
        return int(self.first_index.size)

    @property
    def samples(self) -> int:
        """Samples in all blocks."""
        return int(self.counts.size)

    @property
    def end_index(self) -> int:
        """The sample index after the last block."""
        return int(self.first_index[-1]) + int(self.counts.shape[1])

    def block(self, j: int) -> SampleBlock:
        """Row ``j`` as a :class:`SampleBlock`."""
        return SampleBlock(
            first_index=int(self.first_index[j]),
            counts=self.counts[j],
            accel_g=self.accel_g[j],
            phase_rad=float(self.phase_rad[j]),
            freq_hz=float(self.freq_hz[j]),
            drive=float(self.drive[j]),
            missing_before=int(self.missing_before[j]),
        )

    def blocks(self) -> list[SampleBlock]:
        return [self.block(j) for j in range(len(self))]

    def split(self, count: int) -> tuple[SampleBatch, SampleBatch]:
        """The first ``count`` blocks and the rest."""
        head = SampleBatch(
            self.first_index[:count],
            self.counts[:count],
            self.accel_g[:count],
            self.phase_rad[:count],
            self.freq_hz[:count],
            self.drive[:count],
            self.missing_before[:count],
        )
        tail = SampleBatch(
            self.first_index[count:],
            self.counts[count:],
            self.accel_g[count:],
            self.phase_rad[count:],
            self.freq_hz[count:],
            self.drive[count:],
            self.missing_before[count:],
        )
        return head, tail

    @classmethod
    def join(cls, parts: list[SampleBatch]) -> SampleBatch:
        """The blocks of ``parts`` in order (blocks of one length)."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.first_index for p in parts]),
            np.concatenate([p.counts for p in parts]),
            np.concatenate([p.accel_g for p in parts]),
            np.concatenate([p.phase_rad for p in parts]),
            np.concatenate([p.freq_hz for p in parts]),
            np.concatenate([p.drive for p in parts]),
            np.concatenate([p.missing_before for p in parts]),
        )

    @classmethod
    def of_block(cls, block: SampleBlock) -> SampleBatch:
        return cls(
            np.array([block.first_index], dtype=np.int64),
            block.counts[None, :],
            block.accel_g[None, :],
            np.array([block.phase_rad]),
            np.array([block.freq_hz]),
            np.array([block.drive]),
            np.array([block.missing_before], dtype=np.int64),
        )


class _Pending(NamedTuple):
    """A command sent and not yet answered (one per command: a tuple is cheapest to make)."""

    name: str
    seq: int
    sent_at_sample: int
    output_on: bool = False  # a SET_OUTPUT on: its ACK starts the output clock


class DeviceClient:
    """A connected plate. Use :meth:`open` (a context manager that always closes the port)."""

    def __init__(self, port: serial.Serial, url: str) -> None:
        self.url = url
        self._port = port
        self._tcp = isinstance(port, protocol_socket.Serial)  # socket://: reads sized by FIONREAD
        self._decoder = FrameDecoder()
        self._seq = 0
        self._last_ramp = (math.nan, 0)  # set_drive's last (ramp_s, ramp_ms)
        self._blocks: deque[SampleBlock | SampleBatch] = deque()
        self._blocks_in = 0  # blocks queued since opening
        self._blocks_out = 0  # blocks handed out since opening
        self._event_barrier: int | None = None  # _blocks_in when a fault or NAK was queued
        # sim://?speed=max: the device moves on only as far as the host reads
        self._read_buffered: Callable[[], bytes] | None = getattr(port, "read_buffered", None)
        self._paced_by_reads = bool(getattr(port, "paced_by_reads", False)) and (
            self._read_buffered is not None
        )
        self._pending: dict[int, _Pending] = {}
        self._answers: dict[type[Message], deque[Message]] = {
            Hello: deque(),
            Status: deque(),
            Identity: deque(),
            Countersignature: deque(),
        }
        self._refusals: deque[CommandRefusedError] = deque()
        self._faults: deque[DeviceFaultError] = deque()
        self._info: DeviceInfo | None = None
        # Payload length of a SAMPLES frame of the hello's block length (None before it)
        self._samples_payload_len: int | None = None
        self._block_samples = -1  # the hello's block length (no count byte is -1)
        # The largest first_index of a block of that length (docs/protocol.md 9.5).
        self._first_index_max = SAMPLE_INDEX_MAX
        self._expected_index: int | None = None
        self._last_tx_index = 0
        self._device_index = 0
        self._output_acked = False
        self._output_start_index: int | None = None
        self._sensitivity = 1.0
        self._offset_g = 0.0
        self._accel_table: npt.NDArray[np.float64] | None = None  # see _accel_g_table
        self.samples_missing = 0
        self.sample_frames_seen = 0  # SAMPLES frames, counted from the very first byte
        self.frames_sent = 0
        self.protocol_errors = 0
        # Of those, SAMPLES refused for their sample index alone (past the host's range)
        self.bad_index_frames = 0
        self._refused_at_tx = 0  # bad_index_frames at the last heartbeat sent on their clock
        # Blocks queued that start before the previous one ended (the clock went back or
        # repeated without a reset), and the last such (expected index, first_index)
        self.index_setbacks = 0
        self._last_setback = (0, 0)
        # What arrived during the last wait for samples that gave up (see no_samples_error)
        self._last_give_up: LinkActivity | None = None

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, hello_timeout_s: float | None = None) -> DeviceClient:
        """Open ``url``, wait for the device's hello (HELLO_TIMEOUT_S unless given) and check
        its protocol version."""
        port = open_port(url)
        client = cls(port, url)
        try:
            client.handshake(HELLO_TIMEOUT_S if hello_timeout_s is None else hello_timeout_s)
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Ask for the output to stop (best effort) and close the port."""
        if not self._port.is_open:
            return
        try:
            if self._info is not None:
                self._send(SetOutput(0))
        except (serial.SerialException, OSError, LinkLostError):
            pass
        finally:
            close_port(self._port)

    @property
    def info(self) -> DeviceInfo:
        if self._info is None:
            raise ProtocolError("no hello received yet")
        return self._info

    @property
    def port(self) -> serial.Serial:
        return self._port

    @property
    def link_stats(self) -> LinkStats:
        """Counters for frames received from the device since the handshake."""
        return self._decoder.stats

    @property
    def sample_index(self) -> int:
        """The device's sample clock as last seen (index after the newest block)."""
        return self._device_index

    @property
    def blocks_waiting(self) -> int:
        """Sample blocks already received and decoded but not yet read: more than zero after
        a read means the host is behind the plate's stream (it was late)."""
        return self._blocks_in - self._blocks_out

    @property
    def blocks_behind(self) -> int:
        """Sample blocks the device has sent that the host has not read yet: those decoded
        (:attr:`blocks_waiting`) and the whole SAMPLES frames whose bytes still wait in the
        port. How far the host is behind the plate's clock, in blocks; a host that reads in
        time sees 0 or 1. A transport paced by the reads (``sim://?speed=max``) is never
        behind: its port is not asked (asking would move the device on)."""
        waiting = self._blocks_in - self._blocks_out  # blocks_waiting (asked every block)
        payload = self._samples_payload_len
        if self._paced_by_reads or payload is None:
            return waiting
        raw = 3 + payload + 2  # a SAMPLES frame's bytes, COBS overhead and delimiter added
        return waiting + self._backlog_bytes() // (raw + raw // 254 + 2)

    def _backlog_bytes(self) -> int:
        """Bytes waiting in the port, for :attr:`blocks_behind`; never raises.

        A port that fails here (a cable pulled: ``in_waiting`` raises EIO) counts 0: the next
        read meets the same failure and reports it as a lost link, inside the loop's handling.
        Over ``socket://`` pyserial's ``in_waiting`` is at most 1 (it only asks ``select``), so
        the bytes the kernel holds for the socket are asked for directly (FIONREAD).
        """
        held = self._socket_held()
        if held is not None:
            return held
        try:
            return max(0, int(self._port.in_waiting))
        except (serial.SerialException, OSError, ValueError, TypeError):
            return 0  # the next read meets it and reports it

    @property
    def output_start_index(self) -> int | None:
        """First sample of the first block the device produced after it accepted SET_OUTPUT on.

        The device ACKs a command before the first SAMPLES block that reflects it
        (docs/protocol.md 9.2), so this is the device's present when the output came on,
        whatever its uptime or the backlog read before. None until that block has arrived.
        """
        return self._output_start_index

    def handshake(
        self,
        timeout_s: float = HELLO_TIMEOUT_S,
        drain_max_bytes: int = HELLO_DRAIN_MAX_BYTES,
        drain_max_s: float = HELLO_DRAIN_MAX_S,
    ) -> DeviceInfo:
        """Wait for the device's hello (asking for it twice a second) and check it.

        The device answers within ``timeout_s`` of its own clock after the request reaches it,
        but its answer queues behind any output it buffered before this host came
        (docs/protocol.md 3, 9.7). A read that finds a backlog waiting re-arms the wait (the
        frames it holds are stale, whatever their count), up to ``drain_max_bytes`` of backlog
        and ``drain_max_s`` of wall clock in all: HandshakeBacklogError past either. A boot
        HELLO may be stale too (buffered when the device booted): except at ``speed=max`` an
        answer to a request (``boot`` = 0) replaces it if it comes within HELLO_BOOT_WAIT_S
        after the boot HELLO or the last backlog read.

        Raises HandshakeTimeoutError when no hello came, IncompatibleVersionError for another
        protocol major version and InvalidDeviceInfoError for a field outside its allowed range
        (docs/protocol.md 7).
        """
        clock = _Deadline(self, timeout_s)
        answers = self._answers[Hello]
        asked = None
        started = time.monotonic()
        mark = self._counts()
        drained = 0
        # A boot HELLO may have been buffered when the device booted, before this host asked:
        # it is kept, and taken only if no answer to a request follows within
        # HELLO_BOOT_WAIT_S of wall clock after the last backlog read.
        boot_hello: Hello | None = None
        boot_wait_end = math.inf
        while True:
            if answers:
                newest = answers[-1]
                assert isinstance(newest, Hello)
                if not newest.is_boot or self._paced_by_reads:
                    break
                boot_hello = newest
                answers.clear()
                boot_wait_end = time.monotonic() + HELLO_BOOT_WAIT_S
                asked = None  # a device that just booted may have lost the request: ask again
            if boot_hello is not None and time.monotonic() >= boot_wait_end:
                answers.append(boot_hello)
                break
            if clock.expired():
                if boot_hello is not None:
                    answers.append(boot_hello)
                    break
                raise self._hello_timeout(timeout_s, self._activity_since(mark, started))
            if asked is None or asked.expired():
                self._send(HelloRequest())
                asked = _Deadline(self, HELLO_REPEAT_S)
            waiting = 0 if self._paced_by_reads else self._waiting()
            got = self._pump(expect_hello=True)
            if waiting >= HELLO_BACKLOG_BYTES and not answers:
                drained += got
                elapsed = time.monotonic() - started
                if drained > drain_max_bytes or elapsed > drain_max_s:
                    log.error(
                        "giving up on the hello at %s: %d bytes of backlog in %.2f s",
                        self.url,
                        drained,
                        elapsed,
                    )
                    raise HandshakeBacklogError(
                        self.url, drained, elapsed, drain_max_bytes, drain_max_s
                    )
                # Stale output: the device has not yet caught up with the request.
                clock = _Deadline(self, timeout_s)
                asked = _Deadline(self, HELLO_REPEAT_S)
                if boot_hello is not None:
                    boot_wait_end = time.monotonic() + HELLO_BOOT_WAIT_S
        if drained:
            log.info(
                "read %d bytes of backlog before the hello from %s in %.2f s",
                drained,
                self.url,
                time.monotonic() - started,
            )
        hello = answers.popleft()
        assert isinstance(hello, Hello)
        answers.clear()
        if hello.protocol_major != PROTOCOL_MAJOR:
            raise IncompatibleVersionError(
                hello.protocol_major, hello.protocol_minor, PROTOCOL_MAJOR
            )
        try:
            check_hello(hello)
        except InvalidDeviceInfoError as exc:
            log.error("refusing the device at %s: %s (hello %r)", self.url, exc, hello)
            raise
        self._info = DeviceInfo.from_hello(hello)
        self._samples_payload_len = SAMPLES_HEADER.size + 2 * hello.block_samples
        self._block_samples = hello.block_samples
        self._first_index_max = SAMPLE_INDEX_MAX - hello.block_samples
        self._accel_table = None
        # Opening a port mid-stream yields a partial first frame: count damage from here on.
        self._decoder.stats = LinkStats()
        self._clear_queue()
        self._expected_index = None
        return self._info

    def set_sensor_correction(self, sensitivity: float, offset_g: float) -> None:
        """Correct every later block's ``accel_g`` as ``(counts / counts_per_g - offset_g) /
        sensitivity`` (the device's stored sensor calibration; ``counts`` stay raw)."""
        if not (math.isfinite(sensitivity) and sensitivity > 0.0 and math.isfinite(offset_g)):
            raise ValueError(
                f"sensor correction {sensitivity!r}, {offset_g!r} g is not allowed: use a "
                "positive sensitivity and a finite offset"
            )
        self._sensitivity = float(sensitivity)
        self._offset_g = float(offset_g)
        self._accel_table = None

    @property
    def sensor_correction(self) -> tuple[float, float]:
        """(sensitivity, offset_g) applied to ``accel_g``; (1.0, 0.0) unless set."""
        return self._sensitivity, self._offset_g

    # ---- commands --------------------------------------------------------------------

    def set_frequency(self, freq_hz: float, wait: bool = True) -> None:
        """Change the drive frequency; the device keeps the phase continuous."""
        self.command(SetFrequency(hz_to_mhz(freq_hz)), wait)

    def set_drive(self, drive: float, ramp_s: float, wait: bool = True) -> None:
        """Ramp the drive amplitude (fraction of full scale) linearly over ``ramp_s``."""
        ramp = self._last_ramp  # the closed loop ramps every command over one block
        if ramp_s != ramp[0]:
            ramp = self._last_ramp = (ramp_s, max(0, min(0xFFFF, round_half_up(ramp_s * 1000.0))))
        # The closed loop's command, sent on most blocks: packed as SetDrive packs, without
        # making the message (both fields are in range: drive_to_q16 checks, ramp_ms is clamped).
        payload = _pack_set_drive(drive_to_q16(drive), ramp[1])
        self._command("SetDrive", _SET_DRIVE_TYPE, payload, wait)

    def start_output(self) -> None:
        """Enable the output at zero amplitude; ramp it up with :meth:`set_drive`.

        Re-arms :attr:`output_start_index`, which the first block after the ACK then sets.
        A device still ramping down a stop (a previous host's SET_OUTPUT off moments ago,
        docs/protocol.md 9.7) refuses BUSY: then it waits for IDLE, at most the HELLO's stop
        ramp plus STOP_WAIT_MARGIN_S (:meth:`wait_while_stopping`), and asks once more; the
        refusal stands if the device is not IDLE by then.
        """
        self._output_acked = False
        self._output_start_index = None
        try:
            self.command(SetOutput(1), wait=True)
        except CommandRefusedError as exc:
            if exc.reason_code != NakReason.BUSY:
                raise
            status = self.wait_while_stopping()
            if status.state != DeviceState.IDLE:
                raise
            log.info("the device was finishing a stop ramp; output on once it was IDLE")
            self._clear_queue()  # blocks of the stop ramp: the past
            self._output_acked = False
            self._output_start_index = None
            self.command(SetOutput(1), wait=True)

    def wait_while_stopping(self, margin_s: float = STOP_WAIT_MARGIN_S) -> Status:
        """Ask STATUS until the device is no longer STOPPING, for at most the HELLO's stop ramp
        plus ``margin_s`` (device clock, or wall clock if that ends first); return the last
        STATUS, which still says STOPPING if the bound was reached."""
        clock = _Deadline(self, self.info.stop_ramp_s + margin_s)
        status = self.request_status()
        while status.state == DeviceState.STOPPING and not clock.expired():
            status = self.request_status()
        return status

    def stop_output(self, wait: bool = True) -> None:
        """Stop: the device ramps any remaining drive to zero, then switches off."""
        self.command(SetOutput(0), wait)

    def clear_fault(self) -> None:
        self.command(ClearFault(), wait=True)

    def heartbeat(self) -> None:
        self._command("Heartbeat", Heartbeat.TYPE, b"", wait=False)  # command(Heartbeat())

    def request_status(self, timeout_s: float = COMMAND_TIMEOUT_S) -> Status:
        self._answers[Status].clear()
        self._send(StatusRequest())
        status = self._await_answer(Status, "STATUS_REQUEST", timeout_s)
        assert isinstance(status, Status)
        return status

    def send_status_request(self) -> None:
        """Ask for STATUS without waiting; the answer is picked up by :meth:`take_status`."""
        self._send(StatusRequest())

    def take_status(self) -> Status | None:
        """The newest STATUS that arrived (older ones are dropped), or None if none did."""
        answers = self._answers[Status]
        if not answers:
            return None
        status = answers[-1]
        answers.clear()
        assert isinstance(status, Status)
        return status

    @property
    def can_countersign(self) -> bool:
        """True when the device announced capability COUNTERSIGN (protocol 2.1)."""
        return "COUNTERSIGN" in self.info.capabilities

    def identity(
        self, timeout_s: float = COMMAND_TIMEOUT_S, attempts: int = COUNTERSIGN_ATTEMPTS
    ) -> DeviceIdentity:
        """The device's public key, NV counter and chain head (IDENTITY_REQUEST).

        Raises InvalidDeviceInfoError for an IDENTITY that cannot be true, CommandTimeoutError
        when no answer came after ``attempts`` requests.
        """
        answer = self._request(IdentityRequest(), Identity, timeout_s, attempts)
        assert isinstance(answer, Identity)
        check_identity(answer)
        return DeviceIdentity(self.info.device_id, answer.public_key, answer.counter, answer.head)

    def countersign(
        self,
        digest: bytes,
        expected_counter: int,
        public_key: bytes,
        timeout_s: float = COMMAND_TIMEOUT_S,
        attempts: int = COUNTERSIGN_ATTEMPTS,
    ) -> Voucher:
        """Have the device vouch for ``digest`` as its counter ``expected_counter``.

        A lost answer is asked for again with the same digest and counter, which the device
        answers alike (docs/protocol.md 9.8). The answer is checked against ``public_key`` (the
        key of the device's IDENTITY): InvalidDeviceInfoError if it does not verify;
        CommandRefusedError (COUNTER_MISMATCH) if the device's counter is elsewhere.
        """
        request = Countersign(digest, expected_counter)
        answer = self._request(request, Countersignature, timeout_s, attempts)
        assert isinstance(answer, Countersignature)
        device_id_raw = self.info.device_id.encode("ascii").ljust(16, b"\x00")
        check_countersignature(
            answer,
            public_key=public_key,
            device_id_raw=device_id_raw,
            digest=digest,
            expected_counter=expected_counter,
        )
        return Voucher(
            public_key,
            answer.counter,
            answer.digest,
            answer.prev_head,
            answer.new_head,
            answer.signature,
        )

    def _request(
        self, message: Message, kind: type[Message], timeout_s: float, attempts: int
    ) -> Message:
        """Send ``message`` until a ``kind`` answer comes (at most ``attempts`` times)."""
        name = type(message).__name__
        answers = self._answers[kind]
        mark, started = self._counts(), time.monotonic()
        for attempt in range(max(1, attempts)):
            answers.clear()
            seq = self._send(message)
            self._pending[seq] = _Pending(name, seq, self._device_index)
            clock = _Deadline(self, timeout_s)
            while not answers:
                if seq not in self._pending and self._refusals:
                    self._raise_refusal()
                if clock.expired():
                    break
                self._pump()
            self._pending.pop(seq, None)
            if answers:
                return answers.popleft()
            log.warning("no answer to %s (attempt %d of %d)", name, attempt + 1, attempts)
        raise self._answer_timeout(name, timeout_s, mark, started)

    def command(self, message: Message, wait: bool = True) -> None:
        """Send a command; with ``wait`` block until its ACK (or raise on NAK or timeout).

        Without ``wait`` a later NAK is raised from :meth:`read_block`.
        """
        output_on = isinstance(message, SetOutput) and message.enable == 1
        self._command(type(message).__name__, message.TYPE, pack_message(message), wait, output_on)

    def _command(
        self, name: str, frame_type: int, payload: bytes, wait: bool, output_on: bool = False
    ) -> None:
        """:meth:`command` for a packed message ``name`` of ``frame_type``."""
        seq = self._send_frame(frame_type, payload)
        # _Pending(name, seq, ...) without the Python-level __new__ of a named tuple
        self._pending[seq] = _tuple_new(_Pending, (name, seq, self._device_index, output_on))
        if not wait:
            return
        clock = _Deadline(self, COMMAND_TIMEOUT_S)
        mark, started = self._counts(), time.monotonic()
        while seq in self._pending:
            self._raise_refusal()
            if clock.expired():
                self._pending.pop(seq, None)
                raise self._answer_timeout(name, COMMAND_TIMEOUT_S, mark, started)
            self._pump()
        self._raise_refusal()

    # ---- stream ----------------------------------------------------------------------

    def read_block(self, timeout_s: float = 1.0) -> SampleBlock | None:
        """Next sample block, or None if none arrived within ``timeout_s`` (of the wall clock,
        or of the device's clock as counted by the SAMPLES refused for their index, whichever
        ends first: :meth:`_on_refused_wait`).

        Raises DeviceFaultError, CommandRefusedError or DeviceResetError when the device
        reports one; sends a heartbeat whenever the host has been quiet for HEARTBEAT_S.
        """
        if not self._blocks:
            deadline = time.monotonic() + timeout_s
            mark: _Counts | None = None
            while not self._blocks:
                if self._faults or self._refusals:
                    self._raise_events()
                expired = time.monotonic() > deadline
                # Read before giving up: data that arrived while this process was not running
                # (stopped, swapped out) still counts, and may hold the device's own fault
                # report.
                self._pump()
                if mark is not None and self.bad_index_frames != mark[_BAD_INDEX_AT]:
                    expired = expired or self._on_refused_wait(mark, timeout_s)
                if expired and not self._blocks:
                    self._raise_events()
                    self._give_up(mark, deadline - timeout_s)
                    return None
                if mark is None:
                    # A read that brought no block: a wait, not the next block's read. What
                    # arrives from here on tells silence from noise if the wait gives up.
                    stats = self._decoder.stats
                    mark = (
                        stats.bytes_received, stats.frames, stats.crc_errors, stats.cobs_errors,
                        stats.short_frames, stats.overruns, self.protocol_errors,
                        self.bad_index_frames,
                    )  # fmt: skip
        if self._faults or self._refusals:
            self._raise_events()
        item = self._blocks.popleft()  # the next block, and a heartbeat if quiet, inlined
        self._blocks_out += 1
        if not isinstance(item, SampleBlock):
            if len(item) > 1:
                self._blocks.appendleft(item.split(1)[1])
            item = item.block(0)
        info = self._info
        if info is not None:
            quiet = (self._device_index - self._last_tx_index) / info.sample_rate_hz
            if quiet >= HEARTBEAT_S:
                self.heartbeat()
        return item

    def read_blocks(self, max_blocks: int, timeout_s: float = 1.0) -> SampleBatch | None:
        """The next 1..``max_blocks`` sample blocks as one :class:`SampleBatch`, or None if none
        arrived within ``timeout_s`` (as :meth:`read_block` counts it).

        For a host that sends nothing while it streams but heartbeats: many blocks per call,
        decoded from one buffer in bulk (``sim://?speed=max`` simulates them in one go). A batch
        never reaches past a device event: the blocks the device sent before a FAULT or NAK are
        returned first and the next call raises it (DeviceFaultError, CommandRefusedError,
        DeviceResetError), so an event is delivered at its sample. A heartbeat goes out whenever
        the host has been quiet for HEARTBEAT_S of the device's clock; at ``speed=max`` a call
        reads no further than the next heartbeat is due, so the device hears the host exactly
        as often as with :meth:`read_block`.
        """
        if max_blocks < 1:
            raise ValueError(f"max_blocks = {max_blocks!r}; allowed: at least 1")
        deadline = time.monotonic() + timeout_s
        mark: _Counts | None = None
        while not self._available():
            self._raise_events()
            expired = time.monotonic() > deadline
            self._pump_batch(max_blocks)
            if mark is not None and self.bad_index_frames != mark[_BAD_INDEX_AT]:
                expired = expired or self._on_refused_wait(mark, timeout_s)
            if expired and not self._available():
                self._raise_events()
                self._give_up(mark, deadline - timeout_s)
                return None
            if mark is None:  # a wait: see read_block
                mark = self._counts()
        take = min(max_blocks, self._available())
        parts: list[SampleBatch] = []
        while take:
            item = self._blocks.popleft()
            batch = SampleBatch.of_block(item) if isinstance(item, SampleBlock) else item
            if parts and batch.counts.shape[1] != parts[0].counts.shape[1]:
                self._blocks.appendleft(item)  # a block of another length starts the next batch
                break
            size = len(batch)
            if size > take:
                batch, rest = batch.split(take)
                self._blocks.appendleft(rest)
                size = take
            parts.append(batch)
            take -= size
            self._blocks_out += size
        self._heartbeat_if_quiet()
        return SampleBatch.join(parts)

    def _heartbeat_if_quiet(self) -> None:
        """A heartbeat if the host has sent nothing for HEARTBEAT_S of the device's clock."""
        info = self._info
        if info is not None:
            quiet = (self._device_index - self._last_tx_index) / info.sample_rate_hz
            if quiet >= HEARTBEAT_S:
                self.heartbeat()

    def _available(self) -> int:
        """Blocks queued that may be handed out before the oldest pending device event."""
        if self._event_barrier is not None and not (self._faults or self._refusals):
            self._event_barrier = None
        limit = self._blocks_in if self._event_barrier is None else self._event_barrier
        return max(0, limit - self._blocks_out)

    def take_queued(self) -> list[SampleBlock]:
        """The blocks already decoded and not yet read, without reading the port."""
        blocks: list[SampleBlock] = []
        for item in self._blocks:
            blocks.extend([item] if isinstance(item, SampleBlock) else item.blocks())
        self._clear_queue()
        return blocks

    def _clear_queue(self) -> int:
        """Drop every queued block; return how many there were."""
        dropped = self._blocks_in - self._blocks_out
        self._blocks.clear()
        self._blocks_out = self._blocks_in
        return dropped

    def discard_backlog(self, max_blocks: int = 500) -> int:
        """Drop sample blocks already waiting (queued here or in the OS buffer); return how many.

        Saves reading the past block by block before an exposure. It does not make the index
        seen so far the device's present (commands still take round trips): a clock that must
        start now starts at :attr:`output_start_index`. A transport paced by the reads
        themselves (``sim://?speed=max``) never has a backlog.
        """
        dropped = self._clear_queue()
        if getattr(self._port, "paced_by_reads", False):
            return dropped
        for _ in range(max_blocks):
            if not self._waiting():
                break
            self._pump()
            dropped += self._clear_queue()
        return dropped

    def read_for(self, seconds: float, timeout_s: float = 1.0) -> list[SampleBlock]:
        """The blocks covering the next ``seconds`` of the device's sample clock.

        Raises LinkLostError if no samples come for ``timeout_s``: LinkUnreadableError when the
        device kept sending what the host could not use (:meth:`no_samples_error`);
        SampleIndexError when a block goes back or repeats on the device's clock.
        """
        end = self.sample_index + round(seconds * self.info.sample_rate_hz)
        blocks = []
        setbacks = self.index_setbacks
        while self.sample_index < end:
            block = self.read_block(timeout_s)
            if block is None:
                raise self.no_samples_error(timeout_s)
            self.check_clock(setbacks)
            blocks.append(block)
        return blocks

    @property
    def last_give_up(self) -> LinkActivity | None:
        """What arrived during the last wait for samples that gave up (:meth:`read_block` or
        :meth:`read_blocks` returned None), counted from the first read that brought no block;
        None if no wait has given up, or it gave up on its first read."""
        return self._last_give_up

    def no_samples_error(self, timeout_s: float) -> LinkLostError:
        """The error for the wait for samples that just gave up: LinkUnreadableError when the
        device kept sending but nothing of it could be used (damaged or malformed frames, or
        bytes with no frame at all), else LinkLostError (silence, or only frames of other
        kinds: the device's counts are in the message)."""
        activity = self._last_give_up
        if activity is not None and activity.unreadable:
            return LinkUnreadableError(timeout_s, activity, BAUD_RATE)
        detail = f"no samples from the device for {timeout_s:g} s"
        if activity is not None and not activity.silent:
            detail += f" ({activity.describe()})"
        return LinkLostError(detail)

    # ---- internals -------------------------------------------------------------------

    def _counts(self) -> _Counts:
        """The counters a give-up compares with (taken when a wait starts, never per block)."""
        stats = self._decoder.stats
        return (
            stats.bytes_received, stats.frames, stats.crc_errors, stats.cobs_errors,
            stats.short_frames, stats.overruns, self.protocol_errors, self.bad_index_frames,
        )  # fmt: skip

    def _on_refused_wait(self, mark: _Counts, timeout_s: float) -> bool:
        """A wait for samples whose read brought SAMPLES refused for their index: True once the
        device has sent ``timeout_s`` of its clock in them since the counters were ``mark``
        (one block a frame), and a heartbeat when due on that clock. A wait gives up on the
        device's clock as well as the wall clock (as :class:`_Deadline` does). At
        ``sim://?speed=max`` a plate runs faster than the wall clock; without this its
        watchdog fired before the host gave up.

        The heartbeat goes out whenever the host has been quiet for HEARTBEAT_S of that clock
        (docs/protocol.md 11): a wait longer than the plate's watchdog (the open loop's 1 s, a
        calibration's) ends with the host's own error, not with the plate's HOST_WATCHDOG
        fault blaming a host that was waiting."""
        refused = self.bad_index_frames - mark[_BAD_INDEX_AT]
        info = self._info
        rate = _frames_per_s(info)
        if info is not None:
            since = self.bad_index_frames - max(mark[_BAD_INDEX_AT], self._refused_at_tx)
            quiet = (self._device_index - self._last_tx_index) / info.sample_rate_hz
            if quiet + since / rate >= HEARTBEAT_S:
                self.heartbeat()
                self._refused_at_tx = self.bad_index_frames
        return refused >= max(1, round(timeout_s * rate))

    def _activity_since(self, mark: _Counts, started: float) -> LinkActivity:
        """What arrived since the counters were ``mark``, in a wait that began at ``started``
        (time.monotonic)."""
        bytes_received, frames, crc, cobs, short, overruns, errors, bad_index = (
            b - a for a, b in zip(mark, self._counts(), strict=True)
        )
        return LinkActivity(
            seconds=time.monotonic() - started,
            bytes_received=bytes_received,
            frames=frames,
            damaged_frames=crc + cobs + short + overruns,  # as LinkStats.damaged_frames
            malformed_frames=errors,
            bad_index_frames=bad_index,
        )

    def _give_up(self, mark: _Counts | None, started: float) -> None:
        """A wait for samples gave up: keep what arrived during it, and log it if not silence."""
        if mark is None:
            self._last_give_up = None
            return
        activity = self._last_give_up = self._activity_since(mark, started)
        if not activity.silent:
            log.warning(
                "no samples from %s, though the device sent: %s", self.url, activity.describe()
            )

    def _hello_timeout(self, timeout_s: float, activity: LinkActivity) -> HandshakeTimeoutError:
        """The error for a handshake that saw no hello: the device silent, talking but
        unreadable, or talking but not answering."""
        log.error("no hello from %s within %g s: %s", self.url, timeout_s, activity.describe())
        if activity.unreadable:
            return HandshakeUnreadableError(self.url, timeout_s, activity, BAUD_RATE)
        return HandshakeTimeoutError(self.url, timeout_s, activity)

    def _send(self, message: Message) -> int:
        return self._send_frame(message.TYPE, pack_message(message))

    def _send_frame(self, frame_type: int, payload: bytes) -> int:
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        try:
            self._port.write(encode_frame(frame_type, seq, payload))
        except (serial.SerialException, OSError) as exc:
            raise LinkLostError(str(exc)) from None
        self._last_tx_index = self._device_index
        self.frames_sent += 1
        return seq

    def _waiting(self) -> int:
        """Bytes the port holds already read from the device."""
        try:
            return int(self._port.in_waiting)
        except (serial.SerialException, OSError) as exc:
            raise LinkLostError(str(exc)) from None

    def _socket_read_size(self) -> int:
        """How many bytes the next read of a ``socket://`` port asks for. pyserial's
        ``in_waiting`` is at most 1 there, so every frame of a TCP plate (ser2net) was read a
        byte per call, about 90 calls a block; the socket's own count (FIONREAD) is asked
        instead, at least 1 (the read then waits for it), at most READ_CHUNK. Only there: an
        RFC 2217 port's socket also holds telnet bytes that its read never returns."""
        held = self._socket_held()
        if held:
            return min(READ_CHUNK, held)
        return max(1, min(READ_CHUNK, self._waiting()))

    def _socket_held(self) -> int | None:
        """Bytes the kernel holds for the port's socket (FIONREAD), or None for a port with
        no socket or one that cannot be asked."""
        sock = getattr(self._port, "_socket", None)
        return _socket_bytes_waiting(sock) if isinstance(sock, socket.socket) else None

    def _pump(self, expect_hello: bool = False) -> int:
        """Read what is waiting (at least one byte) and handle every frame it completes; return
        how many bytes were read.

        The frames of every block, a SAMPLES of the hello's length and an ACK, are handled
        here without a message object; anything else goes through :meth:`_dispatch_frame`.
        """
        port = self._port
        try:
            if self._tcp:
                data = port.read(self._socket_read_size())
            else:
                data = port.read(max(1, min(READ_CHUNK, port.in_waiting)))
        except (serial.SerialException, OSError) as exc:
            raise LinkLostError(str(exc)) from None
        if not data:
            return 0
        samples_len = self._samples_payload_len  # None before the hello
        n = self._block_samples
        first_max = self._first_index_max
        for frame in self._decoder.feed(data):
            frame_type, _, payload = frame
            size = len(payload)
            if frame_type == _SAMPLES_TYPE and size == samples_len:
                # The count byte must agree with the length, as Samples.unpack checks: with
                # the length that of ``n`` samples, the count must be ``n``.
                if payload[_COUNT_AT] == n:
                    first, phase, freq, drive, _ = _unpack_samples_header(payload)
                    # An index past the host's range is refused by _on_samples, below.
                    if first <= first_max:
                        # positional: numpy parses a keyword argument slower than the work
                        counts = _frombuffer(payload, _WIRE_I2, -1, _SAMPLES_AT)
                        self.sample_frames_seen += 1
                        self._queue_block(first, phase, freq, drive, counts.astype(_INT16))
                        continue
            elif frame_type == _ACK_TYPE and size == ACK_LEN:
                # _on_ack, inlined (most blocks bring one)
                pending = self._pending.pop(payload[0] | payload[1] << 8, None)
                if pending is not None and pending.output_on:
                    self._output_acked = True
                continue
            self._dispatch_frame(frame, expect_hello)
        return len(data)

    def _pump_batch(self, max_blocks: int) -> None:
        """Read and decode like :meth:`_pump`, runs of SAMPLES frames in bulk.

        At ``speed=max`` it asks the port for the bytes of up to ``max_blocks`` SAMPLES frames
        but no further than the next heartbeat is due (the device advances as far as the host
        reads); a real port gives what has arrived.
        """
        info = self._info
        if info is None:
            self._pump()
            return
        n = info.block_samples
        payload_size = self._samples_payload_len  # set with the hello
        assert payload_size is not None
        if self._paced_by_reads:
            quiet = self._device_index - self._last_tx_index
            due = math.ceil((HEARTBEAT_S * info.sample_rate_hz - quiet) / n)
            blocks = max(1, min(max_blocks, due))
            raw = 3 + payload_size + 2
            size = blocks * (raw + raw // 254 + 2)
        else:
            size = 0
        try:
            if not size:
                if self._tcp:
                    size = self._socket_read_size()
                else:
                    size = max(1, min(READ_CHUNK, self._port.in_waiting))
                data = self._port.read(size)
            else:
                # At speed=max a read's timeout is simulated time: let this one span the
                # blocks asked for and the block their last frame leaves after.
                timeout = self._port.timeout
                self._port.timeout = (blocks + 1) * n / info.sample_rate_hz
                try:
                    data = self._port.read(size)
                finally:
                    self._port.timeout = timeout
            if self._paced_by_reads and self._read_buffered is not None:
                # Each read moves the device on by at most the port's timeout (simulated
                # seconds); read on until the blocks came or a read brings nothing, then take
                # the rest of a frame the last read cut.
                while 0 < len(data) < size:
                    more = self._port.read(size - len(data))
                    if not more:
                        break
                    data += more
                data += self._read_buffered()
        except (serial.SerialException, OSError) as exc:
            raise LinkLostError(str(exc)) from None
        if not data:
            return
        run: list[bytes] = []
        for frame in self._decoder.feed(data):
            frame_type, _, payload = frame
            if frame_type == _SAMPLES_TYPE and len(payload) == payload_size:
                # The count byte must agree with the length, as Samples.unpack checks (with
                # the length that of ``n`` samples, the count must be ``n``): one that does
                # not ends the run and is refused as a malformed frame, at its place.
                if payload[_COUNT_AT] == n:
                    run.append(payload)
                    continue
            elif frame_type == _ACK_TYPE and len(payload) == ACK_LEN:
                # An ACK as _pump handles it, after the run only if it starts the output
                # clock (_leaves_run).
                acked = payload[0] | payload[1] << 8
                if run:
                    pending = self._pending.get(acked)
                    if pending is not None and pending.output_on:
                        self._on_samples_run(run, n)
                        run = []
                self._on_ack(acked)
                continue
            if run and not self._leaves_run(frame):
                self._on_samples_run(run, n)
                run = []
            self._dispatch_frame(frame, False)
        if run:
            self._on_samples_run(run, n)

    def _leaves_run(self, frame: RawFrame) -> bool:
        """True for a frame whose handling does not depend on the SAMPLES before it nor change
        those after it: an ACK of anything but SET_OUTPUT on (which starts the output clock),
        a STATUS, IDENTITY or COUNTERSIGNATURE answer. FAULT, NAK, HELLO and the rest end a
        run of SAMPLES so that they are handled at their place in the stream."""
        if frame.frame_type == Ack.TYPE:
            if len(frame.payload) < 2:
                return False
            pending = self._pending.get(frame.payload[0] | frame.payload[1] << 8)
            return pending is None or not pending.output_on
        return frame.frame_type in (Status.TYPE, Identity.TYPE, Countersignature.TYPE)

    def _on_samples_run(self, payloads: list[bytes], n: int) -> None:
        """Queue consecutive SAMPLES payloads of ``n`` samples (count byte checked) as one
        SampleBatch; a block whose indices run past the host's range is refused at its place,
        as _on_samples refuses it."""
        records = _frombuffer(b"".join(payloads), samples_payload_dtype(n))
        blocks = len(payloads)
        firsts = records["first_index"].tolist()  # the wire's u64 as Python integers: exact
        start = firsts[0]
        consecutive = firsts == list(range(start, start + blocks * n, n))
        # Consecutive, the last is the largest (the usual case, without a call).
        if (firsts[-1] if consecutive else max(firsts)) > self._first_index_max:
            self._on_samples_run_past_range(payloads, firsts, n)
            return
        self.sample_frames_seen += blocks
        # Every index and the one after each block (first + n) is at most 2**63 - 1 from here
        # on, so the int64 values and the differences of any two are exact.
        first = records["first_index"].astype(_INT64)
        end = firsts[-1] + n
        expected = start if self._expected_index is None else self._expected_index
        if consecutive and start == expected:  # no gap, the usual case
            missing = np.zeros(blocks, _INT64)
        else:
            before = np.empty_like(first)  # where each block was expected to start
            before[0] = expected
            before[1:] = first[:-1] + n
            missing = np.maximum(first - before, 0)
            # summed as Python integers: several jumps to the top may exceed int64
            self.samples_missing += sum(missing.tolist())
            back = np.flatnonzero(first < before)
            if back.size:
                self.index_setbacks += int(back.size) - 1  # _set_back counts the last
                self._set_back(int(before[back[-1]]), int(first[back[-1]]))
        self._expected_index = self._device_index = end
        if self._output_acked and self._output_start_index is None:
            self._output_start_index = start
        counts = records["counts"].astype(_INT16)
        table = self._accel_table
        if table is None:
            table = self._accel_g_table()
        self._blocks.append(
            SampleBatch(
                first,
                counts,
                table.take(counts),  # accel_g, see _accel_g_table
                records["phase"] * RAD_PER_PHASE_UNIT,  # phase_rad
                records["freq_mhz"] / 1000.0,  # freq_hz
                records["drive_q16"] / Q16,  # drive
                missing,  # missing_before
            )
        )
        self._blocks_in += blocks

    def _on_samples_run_past_range(self, payloads: list[bytes], firsts: list[int], n: int) -> None:
        """A run of SAMPLES payloads (first indices ``firsts``) of which some run past the
        host's range: the others queued in stretches, the past ones dropped as malformed
        between them, each at its place (as _on_samples drops them on the other paths)."""
        first_max = self._first_index_max
        good: list[bytes] = []
        for payload, first in zip(payloads, firsts, strict=True):
            if first <= first_max:
                good.append(payload)
                continue
            if good:
                self._on_samples_run(good, n)
                good = []
            self._refuse_index(first, n)
        if good:
            self._on_samples_run(good, n)

    def _dispatch_frame(self, frame: RawFrame, expect_hello: bool) -> None:
        try:
            message = decode_message(frame)
        except ProtocolError as exc:
            if expect_hello:
                self._check_foreign_hello(frame.frame_type, frame.payload)
            self._drop_malformed(exc)
            return
        self._dispatch(message, expect_hello)

    def _drop_malformed(self, exc: ProtocolError) -> None:
        """A well-framed message with a malformed payload: counted and logged, not raised."""
        self.protocol_errors += 1
        log.warning("dropped a malformed frame: %s", exc)

    def _set_back(self, expected: int, first_index: int) -> None:
        """A block queued at ``first_index``, before ``expected`` where the previous ended."""
        self.index_setbacks += 1
        self._last_setback = (expected, first_index)

    def check_clock(self, setbacks: int) -> None:
        """Raise SampleIndexError if a block queued since :attr:`index_setbacks` was
        ``setbacks`` went back or repeated on the device's clock: a reader that waits for the
        clock to reach an index would wait for ever (and send no heartbeat meanwhile)."""
        if self.index_setbacks != setbacks:
            raise SampleIndexError(*self._last_setback)

    def _refuse_index(self, first_index: int, n: int) -> None:
        """A SAMPLES frame of ``n`` samples whose indices run past the host's range: dropped
        as malformed, and counted as such (``bad_index_frames``) so that a wait that gives
        up can name it."""
        self.bad_index_frames += 1
        self._drop_malformed(_first_index_error(first_index, n))

    def _dispatch(self, message: Message, expect_hello: bool) -> None:
        match message:
            case Samples():
                self._on_samples(message)
            case Ack(acked_seq=acked):
                self._on_ack(acked)
            case Nak(refused_seq=refused, reason=reason):
                pending = self._pending.pop(refused, None)
                name = pending.name if pending else f"frame type 0x{message.refused_type:02x}"
                self._note_event()
                self._refusals.append(CommandRefusedError(name, reason, nak_text(reason)))
            case Fault(code=code, sample_index=index, detail=detail):
                self._note_event()
                self._faults.append(DeviceFaultError(code, message.text, index, detail))
            case Hello():
                if self._info is not None and not expect_hello:
                    # The boot flag, not the sequence number (which wraps to 0 in a long
                    # session), tells a reset from a late answer to a hello request.
                    if message.is_boot:
                        raise DeviceResetError(self._device_index)
                    return
                self._answers[Hello].append(message)
            case Status() | Identity() | Countersignature():
                self._answers[type(message)].append(message)
            case _:
                self.protocol_errors += 1

    def _note_event(self) -> None:
        """A FAULT or NAK arrived: read_blocks hands out no block queued after it before it."""
        if self._event_barrier is None or not (self._faults or self._refusals):
            self._event_barrier = self._blocks_in

    def _accel_g_table(self) -> npt.NDArray[np.float64]:
        """Make (and keep) the table ``accel_g = table.take(counts)`` of the sample readers.

        ``take`` gives ``(counts / counts_per_g - offset_g) / sensitivity``: the table holds
        that expression for all 65536 counts, computed by the same numpy operations, so a
        lookup gives every value bit for bit as the expression would, in one operation instead
        of three. It is indexed by the count's 16 bits as unsigned, so that a negative count,
        taken as a negative index, reads from the end: -1 is entry 65535.
        """
        codes = np.arange(1 << 16, dtype=np.uint16).view(np.int16)
        table = (codes / float(self.info.counts_per_g) - self._offset_g) / self._sensitivity
        self._accel_table = table
        return table

    def _on_ack(self, acked_seq: int) -> None:
        pending = self._pending.pop(acked_seq, None)
        if pending is not None and pending.output_on:
            self._output_acked = True

    def _on_samples(self, samples: Samples) -> None:
        n = samples.counts.size
        if samples.first_index > SAMPLE_INDEX_MAX - n:
            self._refuse_index(samples.first_index, n)
            return
        self.sample_frames_seen += 1
        if self._info is None:
            return
        self._queue_block(
            samples.first_index,
            samples.phase_turns_q32,
            samples.freq_mhz,
            samples.drive_q16,
            samples.counts,
        )

    def _queue_block(
        self,
        first_index: int,
        phase_q32: int,
        freq_mhz: int,
        drive_q16: int,
        counts: npt.NDArray[np.int16],
    ) -> None:
        """Queue one SAMPLES block (its wire fields; after the hello only)."""
        missing = 0
        expected = self._expected_index
        if expected is not None and first_index != expected:  # one compare in the usual case
            if first_index > expected:
                missing = first_index - expected
                self.samples_missing += missing
            else:
                self._set_back(expected, first_index)
        self._expected_index = self._device_index = first_index + counts.size
        if self._output_acked and self._output_start_index is None:
            self._output_start_index = first_index
        table = self._accel_table
        if table is None:
            table = self._accel_g_table()
        self._blocks.append(
            SampleBlock(  # by position: keywords cost more for every block
                first_index,
                counts,
                table.take(counts),  # accel_g, see _accel_g_table
                phase_q32 * RAD_PER_PHASE_UNIT,  # phase_rad
                freq_mhz / 1000.0,  # freq_hz
                drive_q16 / Q16,  # drive
                missing,  # missing_before
            )
        )
        self._blocks_in += 1

    def _await_answer(self, kind: type[Message], name: str, timeout_s: float) -> Message:
        clock = _Deadline(self, timeout_s)
        answers = self._answers[kind]
        mark, started = self._counts(), time.monotonic()
        while not answers:
            if clock.expired():
                raise self._answer_timeout(name, timeout_s, mark, started)
            self._pump()
        return answers.popleft()

    def _answer_timeout(
        self, name: str, timeout_s: float, mark: _Counts, started: float
    ) -> CommandTimeoutError:
        """The error for a command ``name`` whose answer did not come: CommandUnreadableError
        when the device kept sending what could not be used (LinkActivity.unreadable, counted
        since ``mark``), else CommandTimeoutError (silence, or a device that does not answer)."""
        activity = self._activity_since(mark, started)
        if activity.unreadable:
            log.error("no answer to %s from %s: %s", name, self.url, activity.describe())
            return CommandUnreadableError(name, timeout_s, activity, BAUD_RATE)
        return CommandTimeoutError(name, timeout_s)

    def _raise_refusal(self) -> None:
        if not self._refusals:
            return
        refusal = self._refusals.popleft()
        if refusal.reason_code == NakReason.FAULT_LATCHED:
            raise self._latched_fault(refusal) from None
        raise refusal

    def _latched_fault(self, refusal: CommandRefusedError) -> BridgeError:
        """The fault behind a NAK FAULT_LATCHED, with its code, text, detail and sample index.

        The device sends FAULT before it can refuse anything for it, so the fault is normally
        queued already; if its frame was lost or the fault was latched before this host
        connected, STATUS tells which fault is latched.
        """
        if self._faults:
            fault = self._faults.popleft()
        else:
            try:
                status = self.request_status()
            except BridgeError as exc:
                log.warning("no STATUS for a refusal with a fault latched: %s", exc)
                return refusal
            if not status.fault_code:
                return refusal
            fault = DeviceFaultError(
                status.fault_code,
                fault_text(status.fault_code),
                status.fault_index,
                status.fault_detail,
            )
        fault.refused_command = refusal.command
        log.info("device refused %s: %s", refusal.command, fault)
        return fault

    def _check_foreign_hello(self, frame_type: int, payload: bytes) -> None:
        """Every HELLO starts with the protocol version: refuse another major by it.

        A device of another major version sends a HELLO of another length, which does not
        decode; its first two bytes still name its version (docs/protocol.md 3).
        """
        if frame_type == Hello.TYPE and len(payload) >= 2 and payload[0] != PROTOCOL_MAJOR:
            raise IncompatibleVersionError(payload[0], payload[1], PROTOCOL_MAJOR)

    def _raise_events(self) -> None:
        if self._faults:
            raise self._faults.popleft()
        self._raise_refusal()


def _frames_per_s(info: DeviceInfo | None) -> float:
    """SAMPLES frames the device sends per second (NOMINAL_FRAMES_PER_S before the hello)."""
    if info is None:
        return NOMINAL_FRAMES_PER_S
    return info.sample_rate_hz / info.block_samples


class _Deadline:
    """A timeout that ends by the wall clock or by the device's own clock, whichever is first.

    The device clock (SAMPLES frames received) keeps ``sim://?speed=max`` runs deterministic:
    there a wall-clock second is hundreds of simulated seconds.
    """

    def __init__(self, client: DeviceClient, timeout_s: float) -> None:
        self._client = client
        self._wall_end = time.monotonic() + timeout_s
        rate = _frames_per_s(client._info)
        self._frames_end = client.sample_frames_seen + max(1, round(timeout_s * rate))

    def expired(self) -> bool:
        return (
            time.monotonic() >= self._wall_end
            or self._client.sample_frames_seen >= self._frames_end
        )


def _socket_bytes_waiting(sock: socket.socket) -> int | None:
    """Bytes received on ``sock`` and not yet read (FIONREAD), or None where it cannot be
    asked (not POSIX, a closed socket, any OS error)."""
    if sys.platform == "win32":
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return max(0, int(struct.unpack("i", raw)[0]))
    except (OSError, ValueError, struct.error):
        return None
