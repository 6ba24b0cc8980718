"""The client's link core: its state, the frames it writes, and the per-frame read (``_pump``).

:class:`_Link` is the base of :class:`~firmware_bridge.client.DeviceClient`: it holds every
attribute the client keeps (set in one ``__init__``), writes frames (``_send_frame``), sizes the
reads of the port (FIONREAD over ``socket://``), and reads and handles what the device sent: the
SAMPLES of every block (``_queue_block``) and ACKs without a message object, anything else
decoded and dispatched to the queues of answers, refusals and faults. It also takes the link
counters a wait compares when it gives up (``_counts``, ``_activity_since``) and defines the
:class:`_Deadline` every wait uses. Commands are in :mod:`firmware_bridge.exchange`, the sample
readers in :mod:`firmware_bridge.stream`: the constants and aliases of the per-block path are
defined here once and imported there, so each lookup stays one module global, as before.
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
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import serial
from serial.urlhandler import protocol_socket

if sys.platform != "win32":
    import fcntl
    import termios

from firmware_bridge.codec import FrameDecoder, RawFrame, encode_frame
from firmware_bridge.errors import (
    CommandRefusedError,
    DeviceFaultError,
    DeviceResetError,
    IncompatibleVersionError,
    LinkActivity,
    LinkLostError,
    ProtocolError,
)
from firmware_bridge.protocol import (
    PHASE_TURN,
    PROTOCOL_MAJOR,
    Q16,
    SAMPLE_INDEX_MAX,
    SAMPLES_HEADER,
    Ack,
    Countersignature,
    Fault,
    Hello,
    Identity,
    Message,
    Nak,
    Samples,
    Status,
    decode_message,
    nak_text,
    pack_message,
)
from firmware_bridge.values import DeviceInfo, SampleBatch, SampleBlock

log = logging.getLogger("firmware_bridge.client")  # one logger for the whole client

HEARTBEAT_S = 0.1
NOMINAL_FRAMES_PER_S = 50  # SAMPLES frames per second before the hello says otherwise
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


class _Pending(NamedTuple):
    """A command sent and not yet answered (one per command: a tuple is cheapest to make)."""

    name: str
    seq: int
    sent_at_sample: int
    output_on: bool = False  # a SET_OUTPUT on: its ACK starts the output clock


class _Link:
    """The state, reads and writes of a connected plate (see the module docstring)."""

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

    @property
    def info(self) -> DeviceInfo:
        if self._info is None:
            raise ProtocolError("no hello received yet")
        return self._info

    def _clear_queue(self) -> int:
        """Drop every queued block; return how many there were."""
        dropped = self._blocks_in - self._blocks_out
        self._blocks.clear()
        self._blocks_out = self._blocks_in
        return dropped

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

    def _counts(self) -> _Counts:
        """The counters a give-up compares with (taken when a wait starts, never per block)."""
        stats = self._decoder.stats
        return (
            stats.bytes_received, stats.frames, stats.crc_errors, stats.cobs_errors,
            stats.short_frames, stats.overruns, self.protocol_errors, self.bad_index_frames,
        )  # fmt: skip

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

    def _check_foreign_hello(self, frame_type: int, payload: bytes) -> None:
        """Every HELLO starts with the protocol version: refuse another major by it.

        A device of another major version sends a HELLO of another length, which does not
        decode; its first two bytes still name its version (docs/protocol.md 3).
        """
        if frame_type == Hello.TYPE and len(payload) >= 2 and payload[0] != PROTOCOL_MAJOR:
            raise IncompatibleVersionError(payload[0], payload[1], PROTOCOL_MAJOR)


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

    def __init__(self, client: _Link, timeout_s: float) -> None:
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
