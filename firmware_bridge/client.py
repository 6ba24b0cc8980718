"""The host side of the link: open a plate by URL, handshake, command it, stream its samples.

One thread does everything: reading frames, queueing sample blocks, matching ACK/NAK to the
commands that caused them, and sending a heartbeat whenever the host has been quiet for
``HEARTBEAT_S`` of the device's sample clock. Nothing here sleeps on the wall clock except the
port's read timeout, so the same client runs a real plate and ``sim://?speed=max`` unchanged.

The client is one class built in layers, each a module one person can hold:
:mod:`firmware_bridge.values` (the values it hands out), :mod:`firmware_bridge.link` (its state,
the frames it writes and the per-frame read), :mod:`firmware_bridge.exchange` (commands and
their answers), :mod:`firmware_bridge.stream` (the sample readers and the diagnostics of a wait
that gave up) and this module (opening, the handshake, closing). Every public name of the client
is importable from here, as before.
"""

from __future__ import annotations

import logging
import math
import time
from types import TracebackType

import serial

from firmware_bridge.codec import LinkStats
from firmware_bridge.errors import (
    HandshakeBacklogError,
    HandshakeTimeoutError,
    HandshakeUnreadableError,
    IncompatibleVersionError,
    InvalidDeviceInfoError,
    LinkActivity,
    LinkLostError,
)
from firmware_bridge.exchange import COMMAND_TIMEOUT_S, COUNTERSIGN_ATTEMPTS, STOP_WAIT_MARGIN_S
from firmware_bridge.link import (
    ACK_LEN,
    HEARTBEAT_S,
    NOMINAL_FRAMES_PER_S,
    RAD_PER_PHASE_UNIT,
    READ_CHUNK,
    _Deadline,
)
from firmware_bridge.protocol import (
    PHASE_TURN,
    PROTOCOL_MAJOR,
    SAMPLE_INDEX_MAX,
    SAMPLES_HEADER,
    Hello,
    HelloRequest,
    SetOutput,
    check_hello,
)
from firmware_bridge.stream import _Stream
from firmware_bridge.transport import BAUD_RATE, close_port, open_port
from firmware_bridge.values import DeviceIdentity, DeviceInfo, SampleBatch, SampleBlock, Voucher

__all__ = [
    "ACK_LEN",
    "COMMAND_TIMEOUT_S",
    "COUNTERSIGN_ATTEMPTS",
    "HEARTBEAT_S",
    "HELLO_BACKLOG_BYTES",
    "HELLO_BOOT_WAIT_S",
    "HELLO_DRAIN_MAX_BYTES",
    "HELLO_DRAIN_MAX_S",
    "HELLO_REPEAT_S",
    "HELLO_TIMEOUT_S",
    "NOMINAL_FRAMES_PER_S",
    "PHASE_TURN",
    "RAD_PER_PHASE_UNIT",
    "READ_CHUNK",
    "STOP_WAIT_MARGIN_S",
    "DeviceClient",
    "DeviceIdentity",
    "DeviceInfo",
    "SampleBatch",
    "SampleBlock",
    "Voucher",
]

log = logging.getLogger("firmware_bridge.client")


HELLO_TIMEOUT_S = 5.0
HELLO_REPEAT_S = 0.5
# Before the hello, a read that finds this many bytes already waiting is reading a backlog:
# output the device made before this host asked (docs/protocol.md 3, 9.7). The device's stream
# fills this in no less than ~20 ms at the fastest HELLO the document allows.
HELLO_BACKLOG_BYTES = 1024
HELLO_DRAIN_MAX_BYTES = 8 * 1024 * 1024  # the most backlog the handshake reads before giving up
HELLO_DRAIN_MAX_S = 30.0  # ... and the most wall-clock time it spends on the handshake for it
HELLO_BOOT_WAIT_S = 1.0  # after a boot HELLO, how long an answer (boot = 0) may still replace it


class DeviceClient(_Stream):
    """A connected plate. Use :meth:`open` (a context manager that always closes the port)."""

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
    def port(self) -> serial.Serial:
        return self._port

    @property
    def link_stats(self) -> LinkStats:
        """Counters for frames received from the device since the handshake."""
        return self._decoder.stats

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

    def _hello_timeout(self, timeout_s: float, activity: LinkActivity) -> HandshakeTimeoutError:
        """The error for a handshake that saw no hello: the device silent, talking but
        unreadable, or talking but not answering."""
        log.error("no hello from %s within %g s: %s", self.url, timeout_s, activity.describe())
        if activity.unreadable:
            return HandshakeUnreadableError(self.url, timeout_s, activity, BAUD_RATE)
        return HandshakeTimeoutError(self.url, timeout_s, activity)

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
