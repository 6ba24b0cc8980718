"""Which latched plate faults the host may clear before a session, and which need a person.

The firmware latches every fault (docs/protocol.md): the output stays off and refuses to start
until CLEAR_FAULT. A fault that only says "the host went quiet" would otherwise lock the patient
out until the plate is power-cycled, so the host may clear it, but only after STATUS shows the
plate at rest (drive and target drive zero, output off). Faults that point at the hardware are
never cleared by software: the patient is told, in one sentence, what to do. docs/safety.md
("Clearing latched faults") is this table in prose.

Errors::

    LivError                    (firmware_bridge.errors)
    └── PlateFaultLatchedError  a latched fault the host may not clear now; carries ``code``,
                                ``name`` and ``needs_person``; the message is the patient's
                                one sentence
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import CommandRefusedError, DeviceFaultError, LivError
from firmware_bridge.protocol import (
    DeviceState,
    FaultCode,
    NakReason,
    Status,
    fault_text,
    q16_to_drive,
)

# A coil over temperature is cleared by the host only once STATUS reads it at or below this
# (the simulated firmware trips at 120 C): cool enough that the next session cannot trip again
# within its first minutes. A coil whose temperature the plate cannot report is not cleared.
COIL_CLEAR_MAX_C = 90.0
AT_REST_WAIT_S = 2.0  # how long to wait for a plate still ramping down after its fault
AT_REST_POLL_S = 0.05

WAIT_TO_COOL = (
    "The plate stopped because its motor got too hot; leave it switched on and off the plate "
    "for 30 minutes to cool, then start again."
)
CALL_SERVICE = (
    "The plate has reported a fault that needs a person ({text}); do not use it, switch it off "
    "and contact your clinic or service."
)
NOT_AT_REST = (
    "The plate is still moving after a fault; step off, switch it off and on again, then start "
    "again."
)


@dataclass(frozen=True)
class FaultRule:
    """What the host may do about one latched fault code."""

    code: int
    host_may_clear: bool
    patient_sentence: str  # what the patient reads when the host may not clear it
    coil_max_c: float | None = None  # clear only at or below this coil temperature


FAULT_RULES: dict[int, FaultRule] = {
    FaultCode.HOST_WATCHDOG: FaultRule(FaultCode.HOST_WATCHDOG, True, ""),
    FaultCode.COIL_OVERTEMP: FaultRule(
        FaultCode.COIL_OVERTEMP, True, WAIT_TO_COOL, coil_max_c=COIL_CLEAR_MAX_C
    ),
    FaultCode.AMPLIFIER: FaultRule(FaultCode.AMPLIFIER, False, CALL_SERVICE),
    FaultCode.SENSOR: FaultRule(FaultCode.SENSOR, False, CALL_SERVICE),
    FaultCode.INTERNAL: FaultRule(FaultCode.INTERNAL, False, CALL_SERVICE),
}


def rule_for(code: int) -> FaultRule:
    """The rule for a fault code; a code this host does not know needs a person."""
    return FAULT_RULES.get(code, FaultRule(code, False, CALL_SERVICE))


def fault_name(code: int) -> str:
    try:
        return FaultCode(code).name
    except ValueError:
        return f"FAULT_{code}"


class PlateFaultLatchedError(LivError):
    """A latched fault the host may not clear now; the message is the patient's sentence."""

    def __init__(self, code: int, sentence: str, *, needs_person: bool) -> None:
        super().__init__(sentence.format(text=fault_text(code)))
        self.code = code
        self.name = fault_name(code)
        self.needs_person = needs_person


@dataclass(frozen=True)
class ClearedFault:
    """A latched fault the host cleared, with the STATUS that showed the plate at rest."""

    code: int
    drive: float
    target_drive: float
    output_on: bool
    coil_temperature_c: float | None
    sample_index: int
    fault_index: int = 0  # STATUS fault_index: the sample at which the fault latched
    fault_detail: int = 0  # STATUS fault_detail: the code's figure (docs/protocol.md 8.2)

    @property
    def name(self) -> str:
        return fault_name(self.code)

    def to_event(self) -> dict[str, Any]:
        """The record's safety event (docs/log-format.md, ``fault_cleared``)."""
        values: dict[str, Any] = {
            "fault_code": self.code,
            "drive": self.drive,
            "target_drive": self.target_drive,
            "output_on": self.output_on,
            "sample_index": self.sample_index,
            "fault_index": self.fault_index,
            "fault_detail": self.fault_detail,
        }
        if self.coil_temperature_c is not None:
            values["coil_temp_c"] = self.coil_temperature_c
        return {
            "reason": "fault_cleared",
            "t_s": 0.0,
            "fault": self.name,
            "text": fault_text(self.code),
            "detail": (
                f"latched {self.name} cleared by the host before the session; STATUS showed "
                "drive 0, target drive 0 and output off"
            ),
            "values": values,
        }


def _at_rest(status: Status) -> bool:
    return status.drive_q16 == 0 and status.target_drive_q16 == 0 and not status.output_on


def clear_latched_fault(
    device: DeviceClient,
    *,
    status: Status | None = None,
    wait_s: float = AT_REST_WAIT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ClearedFault | None:
    """Before the plate moves: clear a latched fault the host may clear, or refuse.

    Returns None when no fault is latched, the cleared fault when one was; raises
    :class:`PlateFaultLatchedError` (with the patient's sentence) when a person is needed or
    the plate is not at rest. Nothing here starts the output. ``status``: a STATUS the caller
    has just read (saves a round trip).
    """
    if status is None:
        status = device.request_status()
    if not status.fault_code:
        return None
    rule = rule_for(status.fault_code)
    if not rule.host_may_clear:
        raise PlateFaultLatchedError(status.fault_code, rule.patient_sentence, needs_person=True)
    end = clock() + wait_s
    while not _at_rest(status):  # the firmware's own ramp after the fault is still under way
        if clock() >= end:
            raise PlateFaultLatchedError(status.fault_code, NOT_AT_REST, needs_person=True)
        sleep(AT_REST_POLL_S)
        status = device.request_status()
    if rule.coil_max_c is not None:
        temp = status.coil_temperature_c
        if temp is None or temp > rule.coil_max_c:
            raise PlateFaultLatchedError(
                status.fault_code, rule.patient_sentence, needs_person=False
            )
    cleared = ClearedFault(
        status.fault_code,
        q16_to_drive(status.drive_q16),
        q16_to_drive(status.target_drive_q16),
        bool(status.output_on),
        status.coil_temperature_c,
        status.sample_index,
        status.fault_index,
        status.fault_detail,
    )
    try:
        device.clear_fault()
    except CommandRefusedError as exc:
        if exc.reason_code != NakReason.BUSY:
            raise
        raise PlateFaultLatchedError(status.fault_code, NOT_AT_REST, needs_person=True) from exc
    after = device.request_status()
    if after.fault_code:
        raise PlateFaultLatchedError(after.fault_code, CALL_SERVICE, needs_person=True)
    _drop_stale_fault_reports(device, after.sample_index)
    return cleared


# A plate found running before a session is brought down as softly as a session ends.
LEFT_RUNNING_RAMP_S = 1.0
STILL_MOVING = (
    "The plate is still moving from an earlier session; step off, switch it off and on "
    "again, then start again."
)


@dataclass(frozen=True)
class StoppedPlate:
    """A plate found running with no fault latched, and brought to rest by the host.

    An earlier host ended (killed, crashed) and this one connected before the plate's watchdog
    fired: the plate still runs the dead host's drive, and this host's frames feed the
    watchdog, so nothing else would stop it.
    """

    drive: float
    target_drive: float
    output_on: bool
    sample_index: int

    def to_event(self) -> dict[str, Any]:
        """The record's safety event (docs/log-format.md, ``plate_left_running``)."""
        return {
            "reason": "plate_left_running",
            "t_s": 0.0,
            "text": "the plate was still running from an earlier session; stopped before this one",
            "detail": (
                f"STATUS showed drive {self.drive:.4f}, target drive {self.target_drive:.4f} "
                f"and output {'on' if self.output_on else 'off'} with no fault latched; the "
                f"host ramped it to zero over {LEFT_RUNNING_RAMP_S:g} s and switched it off"
            ),
            "values": {
                "drive": self.drive,
                "target_drive": self.target_drive,
                "output_on": self.output_on,
                "sample_index": self.sample_index,
            },
        }


def stop_plate_left_running(
    device: DeviceClient,
    *,
    status: Status | None = None,
    wait_s: float = AT_REST_WAIT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StoppedPlate | None:
    """Before anything else: bring a plate left running by an earlier host softly to rest.

    Returns None when the plate is at rest or has a fault latched (its firmware ramps to zero
    by itself; :func:`clear_latched_fault` waits for that); the plate as it was found when it
    had to be stopped. Raises :class:`PlateFaultLatchedError` (the patient's sentence) if it is
    not at rest ``LEFT_RUNNING_RAMP_S + wait_s`` later. ``status``: a STATUS the caller has
    just read (saves a round trip).
    """
    if status is None:
        status = device.request_status()
    if status.fault_code or _at_rest(status):
        return None
    end = clock() + LEFT_RUNNING_RAMP_S + wait_s
    if status.state == DeviceState.STOPPING:
        # the previous session's own stop, still ramping down (a start right after the last
        # one ended): nothing was left running, only wait for it
        status = _wait_at_rest_or_fault(device, status, end, clock, sleep)
        if _at_rest(status):
            _drop_blocks_before(device, status.sample_index)
        return None
    found = StoppedPlate(
        q16_to_drive(status.drive_q16),
        q16_to_drive(status.target_drive_q16),
        bool(status.output_on),
        status.sample_index,
    )
    # refused: already stopping (SET_OUTPUT off was the dead host's last word): wait for it
    with contextlib.suppress(CommandRefusedError):
        device.set_drive(0.0, LEFT_RUNNING_RAMP_S)
    while status.drive_q16 or status.target_drive_q16:
        if status.fault_code or clock() >= end:
            break
        sleep(AT_REST_POLL_S)
        status = device.request_status()
    device.stop_output()
    status = _wait_at_rest_or_fault(device, status, end, clock, sleep)
    if _at_rest(status):  # else it faulted meanwhile: the latched-fault rules apply
        _drop_blocks_before(device, status.sample_index)  # the moving plate's, already sent
    return found


def _wait_at_rest_or_fault(
    device: DeviceClient,
    status: Status,
    end: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Status:
    """Poll STATUS until the plate is at rest or a fault is latched; the last STATUS read.

    Raises :class:`PlateFaultLatchedError` (:data:`STILL_MOVING`) if neither by ``end``.
    """
    while not _at_rest(status) and not status.fault_code:
        if clock() >= end:
            raise PlateFaultLatchedError(0, STILL_MOVING, needs_person=True)
        sleep(AT_REST_POLL_S)
        status = device.request_status()
    return status


def bring_plate_to_rest(
    device: DeviceClient,
) -> tuple[StoppedPlate | None, ClearedFault | None]:
    """Before a session or a run: a plate left running by an earlier host is ramped softly to
    rest (:func:`stop_plate_left_running`), then a latched fault is cleared if the host may
    (:func:`clear_latched_fault`). One STATUS is read for both; it still holds for the second
    unless the plate was moving (stopped here, or finishing its own stop ramp)."""
    status = device.request_status()
    left_running = stop_plate_left_running(device, status=status)
    settled = left_running is None and status.state != DeviceState.STOPPING
    cleared = clear_latched_fault(device, status=status if settled else None)
    return left_running, cleared


def _drop_blocks_before(device: DeviceClient, index: int) -> None:
    """Read and forget the sample blocks the plate sent before ``index``."""
    device.discard_backlog()
    for _ in range(64):
        block = device.read_block(timeout_s=0.5)
        if block is None or block.first_index + block.counts.size >= index:
            return


def _drop_stale_fault_reports(device: DeviceClient, cleared_at: int) -> None:
    """Forget FAULT reports sent before the clear (a previous host left them unread)."""
    for _ in range(16):
        try:
            device.read_block(timeout_s=0.2)
        except DeviceFaultError as exc:
            if exc.sample_index > cleared_at:
                raise
            continue
        return
