"""The client's commands and the answers they wait for.

:class:`_Exchange` adds to :class:`~firmware_bridge.link._Link` what a host asks of the plate:
SET_FREQUENCY, SET_DRIVE (packed directly: the closed loop sends one on most blocks),
SET_OUTPUT (with the wait for a previous host's stop ramp), CLEAR_FAULT, HEARTBEAT, STATUS,
IDENTITY and COUNTERSIGN. A command stays a pending entry until its ACK or NAK; a wait ends by
the wall clock or the device's clock (``_Deadline``) and tells an unreadable link from a silent
one. The NAKs and FAULTs the read queued are raised from here (``_raise_refusal``,
``_raise_events``), a NAK FAULT_LATCHED as the fault behind it.
"""

from __future__ import annotations

import logging
import time

from firmware_bridge.errors import (
    BridgeError,
    CommandRefusedError,
    CommandTimeoutError,
    CommandUnreadableError,
    DeviceFaultError,
)
from firmware_bridge.link import _Counts, _Deadline, _Link, _Pending
from firmware_bridge.protocol import (
    ClearFault,
    Countersign,
    Countersignature,
    DeviceState,
    Heartbeat,
    Identity,
    IdentityRequest,
    Message,
    NakReason,
    SetDrive,
    SetFrequency,
    SetOutput,
    Status,
    StatusRequest,
    check_countersignature,
    check_identity,
    drive_to_q16,
    fault_text,
    hz_to_mhz,
    pack_message,
    round_half_up,
)
from firmware_bridge.transport import BAUD_RATE
from firmware_bridge.values import DeviceIdentity, Voucher

log = logging.getLogger("firmware_bridge.client")

COMMAND_TIMEOUT_S = 1.0
# How much longer than the stop ramp of its HELLO a host waits for a STOPPING device to reach
# IDLE (a previous host's stop, docs/protocol.md 9.7): the ramp ends at a block boundary and
# the STATUS that shows it comes a block or two later.
STOP_WAIT_MARGIN_S = 0.25
COUNTERSIGN_ATTEMPTS = 3  # a lost answer is asked for again (the device answers a repeat alike)
_tuple_new = tuple.__new__
_pack_set_drive = SetDrive.LAYOUT.pack
_SET_DRIVE_TYPE = SetDrive.TYPE


class _Exchange(_Link):
    """Commands and their answers (see the module docstring)."""

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

    def _raise_events(self) -> None:
        if self._faults:
            raise self._faults.popleft()
        self._raise_refusal()
