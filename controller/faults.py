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

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import CommandRefusedError, DeviceFaultError, LivError
from firmware_bridge.protocol import FaultCode, NakReason, Status, fault_text, q16_to_drive

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
    wait_s: float = AT_REST_WAIT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ClearedFault | None:
    """Before the plate moves: clear a latched fault the host may clear, or refuse.

    Returns None when no fault is latched, the cleared fault when one was; raises
    :class:`PlateFaultLatchedError` (with the patient's sentence) when a person is needed or
    the plate is not at rest. Nothing here starts the output.
    """
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
