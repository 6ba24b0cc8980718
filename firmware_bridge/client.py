"""The host side of the link: open a plate by URL, handshake, command it, stream its samples.

One thread does everything: reading frames, queueing sample blocks, matching ACK/NAK to the
commands that caused them, and sending a heartbeat whenever the host has been quiet for
``HEARTBEAT_S`` of the device's sample clock. Nothing here sleeps on the wall clock except the
port's read timeout, so the same client runs a real plate and ``sim://?speed=max`` unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import serial

from firmware_bridge.codec import FrameDecoder, LinkStats
from firmware_bridge.errors import (
    BridgeError,
    CommandRefusedError,
    CommandTimeoutError,
    DeviceFaultError,
    DeviceResetError,
    HandshakeTimeoutError,
    IncompatibleVersionError,
    InvalidDeviceInfoError,
    LinkLostError,
    ProtocolError,
)
from firmware_bridge.protocol import (
    PROTOCOL_MAJOR,
    Ack,
    Capability,
    ClearFault,
    Countersign,
    Countersignature,
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
    encode_message,
    fault_text,
    hz_to_mhz,
    nak_text,
    round_half_up,
)
from firmware_bridge.transport import close_port, open_port

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.1
HELLO_TIMEOUT_S = 5.0
HELLO_REPEAT_S = 0.5
NOMINAL_FRAMES_PER_S = 50  # SAMPLES frames per second before the hello says otherwise
COMMAND_TIMEOUT_S = 1.0
COUNTERSIGN_ATTEMPTS = 3  # a lost answer is asked for again (the device answers a repeat alike)
READ_CHUNK = 4096


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


@dataclass(frozen=True)
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


@dataclass
class _Pending:
    name: str
    seq: int
    sent_at_sample: int
    output_on: bool = False  # a SET_OUTPUT on: its ACK starts the output clock


class DeviceClient:
    """A connected plate. Use :meth:`open` (a context manager that always closes the port)."""

    def __init__(self, port: serial.Serial, url: str) -> None:
        self.url = url
        self._port = port
        self._decoder = FrameDecoder()
        self._seq = 0
        self._blocks: deque[SampleBlock] = deque()
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
        self._expected_index: int | None = None
        self._last_tx_index = 0
        self._device_index = 0
        self._output_acked = False
        self._output_start_index: int | None = None
        self._sensitivity = 1.0
        self._offset_g = 0.0
        self.samples_missing = 0
        self.sample_frames_seen = 0  # SAMPLES frames, counted from the very first byte
        self.frames_sent = 0
        self.protocol_errors = 0

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, hello_timeout_s: float = HELLO_TIMEOUT_S) -> DeviceClient:
        """Open ``url``, wait for the device's hello and check its protocol version."""
        port = open_port(url)
        client = cls(port, url)
        try:
            client.handshake(hello_timeout_s)
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
    def output_start_index(self) -> int | None:
        """First sample of the first block the device produced after it accepted SET_OUTPUT on.

        The device ACKs a command before the first SAMPLES block that reflects it
        (docs/protocol.md 9.2), so this is the device's present when the output came on,
        whatever its uptime or the backlog read before. None until that block has arrived.
        """
        return self._output_start_index

    def handshake(self, timeout_s: float = HELLO_TIMEOUT_S) -> DeviceInfo:
        """Wait for the device's hello (asking for it twice a second) and check it.

        Raises IncompatibleVersionError for another protocol major version and
        InvalidDeviceInfoError for a field outside its allowed range (docs/protocol.md 7).
        """
        clock = _Deadline(self, timeout_s)
        answers = self._answers[Hello]
        asked = None
        while not answers:
            if clock.expired():
                raise HandshakeTimeoutError(self.url, timeout_s)
            if asked is None or asked.expired():
                self._send(HelloRequest())
                asked = _Deadline(self, HELLO_REPEAT_S)
            self._pump(expect_hello=True)
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
        # Opening a port mid-stream yields a partial first frame: count damage from here on.
        self._decoder.stats = LinkStats()
        self._blocks.clear()
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
        ramp_ms = max(0, min(0xFFFF, round_half_up(ramp_s * 1000.0)))
        self.command(SetDrive(drive_to_q16(drive), ramp_ms), wait)

    def start_output(self) -> None:
        """Enable the output at zero amplitude; ramp it up with :meth:`set_drive`.

        Re-arms :attr:`output_start_index`, which the first block after the ACK then sets.
        """
        self._output_acked = False
        self._output_start_index = None
        self.command(SetOutput(1), wait=True)

    def stop_output(self, wait: bool = True) -> None:
        """Stop: the device ramps any remaining drive to zero, then switches off."""
        self.command(SetOutput(0), wait)

    def clear_fault(self) -> None:
        self.command(ClearFault(), wait=True)

    def heartbeat(self) -> None:
        self.command(Heartbeat(), wait=False)

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
        raise CommandTimeoutError(name, timeout_s)

    def command(self, message: Message, wait: bool = True) -> None:
        """Send a command; with ``wait`` block until its ACK (or raise on NAK or timeout).

        Without ``wait`` a later NAK is raised from :meth:`read_block`.
        """
        seq = self._send(message)
        name = type(message).__name__
        output_on = isinstance(message, SetOutput) and message.enable == 1
        self._pending[seq] = _Pending(name, seq, self._device_index, output_on)
        if not wait:
            return
        clock = _Deadline(self, COMMAND_TIMEOUT_S)
        while seq in self._pending:
            self._raise_refusal()
            if clock.expired():
                self._pending.pop(seq, None)
                raise CommandTimeoutError(name, COMMAND_TIMEOUT_S)
            self._pump()
        self._raise_refusal()

    # ---- stream ----------------------------------------------------------------------

    def read_block(self, timeout_s: float = 1.0) -> SampleBlock | None:
        """Next sample block, or None if none arrived within ``timeout_s``.

        Raises DeviceFaultError, CommandRefusedError or DeviceResetError when the device
        reports one; sends a heartbeat whenever the host has been quiet for HEARTBEAT_S.
        """
        deadline = time.monotonic() + timeout_s
        while not self._blocks:
            self._raise_events()
            expired = time.monotonic() > deadline
            # Read before giving up: data that arrived while this process was not running
            # (stopped, swapped out) still counts, and may hold the device's own fault report.
            self._pump()
            if expired and not self._blocks:
                self._raise_events()
                return None
        self._raise_events()
        block = self._blocks.popleft()
        if self._info is not None:
            quiet = (self._device_index - self._last_tx_index) / self._info.sample_rate_hz
            if quiet >= HEARTBEAT_S:
                self.heartbeat()
        return block

    def take_queued(self) -> list[SampleBlock]:
        """The blocks already decoded and not yet read, without reading the port."""
        blocks = list(self._blocks)
        self._blocks.clear()
        return blocks

    def discard_backlog(self, max_blocks: int = 500) -> int:
        """Drop sample blocks already waiting (queued here or in the OS buffer); return how many.

        Saves reading the past block by block before an exposure. It does not make the index
        seen so far the device's present (commands still take round trips): a clock that must
        start now starts at :attr:`output_start_index`. A transport paced by the reads
        themselves (``sim://?speed=max``) never has a backlog.
        """
        dropped = len(self._blocks)
        self._blocks.clear()
        if getattr(self._port, "paced_by_reads", False):
            return dropped
        for _ in range(max_blocks):
            try:
                waiting = self._port.in_waiting
            except (serial.SerialException, OSError) as exc:
                raise LinkLostError(str(exc)) from None
            if not waiting:
                break
            self._pump()
            dropped += len(self._blocks)
            self._blocks.clear()
        return dropped

    def read_for(self, seconds: float, timeout_s: float = 1.0) -> list[SampleBlock]:
        """The blocks covering the next ``seconds`` of the device's sample clock.

        Raises LinkLostError if the device goes silent for ``timeout_s``.
        """
        end = self.sample_index + round(seconds * self.info.sample_rate_hz)
        blocks = []
        while self.sample_index < end:
            block = self.read_block(timeout_s)
            if block is None:
                raise LinkLostError(f"no samples from the device for {timeout_s:g} s")
            blocks.append(block)
        return blocks

    # ---- internals -------------------------------------------------------------------

    def _send(self, message: Message) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        try:
            self._port.write(encode_message(message, seq))
        except (serial.SerialException, OSError) as exc:
            raise LinkLostError(str(exc)) from None
        self._last_tx_index = self._device_index
        self.frames_sent += 1
        return seq

    def _pump(self, expect_hello: bool = False) -> None:
        try:
            data = self._port.read(max(1, min(READ_CHUNK, self._port.in_waiting)))
        except (serial.SerialException, OSError) as exc:
            raise LinkLostError(str(exc)) from None
        if not data:
            return
        for frame in self._decoder.feed(data):
            try:
                message = decode_message(frame)
            except ProtocolError as exc:
                if expect_hello:
                    self._check_foreign_hello(frame.frame_type, frame.payload)
                self.protocol_errors += 1
                log.warning("dropped a malformed frame: %s", exc)
                continue
            self._dispatch(message, expect_hello)

    def _dispatch(self, message: Message, expect_hello: bool) -> None:
        match message:
            case Samples():
                self._on_samples(message)
            case Ack(acked_seq=acked):
                pending = self._pending.pop(acked, None)
                if pending is not None and pending.output_on:
                    self._output_acked = True
            case Nak(refused_seq=refused, reason=reason):
                pending = self._pending.pop(refused, None)
                name = pending.name if pending else f"frame type 0x{message.refused_type:02x}"
                self._refusals.append(CommandRefusedError(name, reason, nak_text(reason)))
            case Fault(code=code, sample_index=index, detail=detail):
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

    def _on_samples(self, samples: Samples) -> None:
        self.sample_frames_seen += 1
        info = self._info
        if info is None:
            return
        n = samples.counts.size
        missing = 0
        if self._expected_index is not None and samples.first_index > self._expected_index:
            missing = samples.first_index - self._expected_index
            self.samples_missing += missing
        self._expected_index = samples.first_index + n
        self._device_index = samples.first_index + n
        if self._output_acked and self._output_start_index is None:
            self._output_start_index = samples.first_index
        self._blocks.append(
            SampleBlock(
                first_index=samples.first_index,
                counts=samples.counts,
                accel_g=(samples.counts / float(info.counts_per_g) - self._offset_g)
                / self._sensitivity,
                phase_rad=samples.phase_rad,
                freq_hz=samples.freq_hz,
                drive=samples.drive,
                missing_before=missing,
            )
        )

    def _await_answer(self, kind: type[Message], name: str, timeout_s: float) -> Message:
        clock = _Deadline(self, timeout_s)
        answers = self._answers[kind]
        while not answers:
            if clock.expired():
                raise CommandTimeoutError(name, timeout_s)
            self._pump()
        return answers.popleft()

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


class _Deadline:
    """A timeout that ends by the wall clock or by the device's own clock, whichever is first.

    The device clock (SAMPLES frames received) keeps ``sim://?speed=max`` runs deterministic:
    there a wall-clock second is hundreds of simulated seconds.
    """

    def __init__(self, client: DeviceClient, timeout_s: float) -> None:
        self._client = client
        self._wall_end = time.monotonic() + timeout_s
        self._frames_end = client.sample_frames_seen + max(1, round(timeout_s * self._rate()))

    def _rate(self) -> float:
        info = self._client._info
        if info is None:
            return NOMINAL_FRAMES_PER_S
        return info.sample_rate_hz / info.block_samples

    def expired(self) -> bool:
        return (
            time.monotonic() >= self._wall_end
            or self._client.sample_frames_seen >= self._frames_end
        )
