"""The device's own limits: commands it must refuse, whatever the host asks (docs/protocol.md 9.6).

Each refused command must come back as NAK with the documented reason and have no effect,
which STATUS and the stream confirm. Values just past a limit are sent as raw protocol
messages, so the host library's own range checks do not stop them first. A command that a
faulty firmware might wrongly accept asks for a tiny drive over the longest ramp the protocol
allows (65.535 s), so even then the plate barely moves before the test stops it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

import pytest

from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import CommandRefusedError
from firmware_bridge.protocol import (
    Message,
    NakReason,
    SetDrive,
    SetFrequency,
    SetOutput,
    Status,
    drive_to_q16,
)
from hil_tests.plate import nak_name, not_applicable, output_on, stop_safely
from hil_tests.report import QualificationReport

LONGEST_RAMP_MS = 0xFFFF
TINY_DRIVE_Q16 = drive_to_q16(0.01)
UNASSIGNED_TYPE = 0x0A  # no message of protocol 2.1 has this type (0x08, 0x09: identity)


@dataclass(frozen=True, slots=True)
class _UnknownCommand(Message):
    TYPE: ClassVar[int] = UNASSIGNED_TYPE


@dataclass(frozen=True, slots=True)
class _ShortSetDrive(Message):
    """SET_DRIVE with a 2-byte payload instead of 4."""

    TYPE: ClassVar[int] = SetDrive.TYPE
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<H")
    drive_q16: int


def _answer(device: DeviceClient, message: Message) -> str:
    """The device's answer to ``message``: "accepted" or the NAK reason's name."""
    try:
        device.command(message, wait=True)
    except CommandRefusedError as exc:
        return nak_name(exc.reason_code)
    return "accepted"


def _unchanged(before: Status, after: Status) -> str:
    """What changed between two STATUS snapshots that a refused command must not change."""
    fields = ("state", "output_on", "freq_mhz", "drive_q16", "target_drive_q16", "fault_code")
    changed = [
        f"{f} {getattr(before, f)} -> {getattr(after, f)}"
        for f in fields
        if getattr(before, f) != getattr(after, f)
    ]
    return "; ".join(changed) or "nothing"


@pytest.mark.moves_plate
@pytest.mark.timeout(30)
def test_drive_above_max_drive_is_refused(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    max_q16 = drive_to_q16(device.info.max_drive)
    if max_q16 >= 0xFFFF:
        not_applicable("the device accepts full scale: no drive above its max_drive exists")
    with output_on(device, 45.0):
        before = device.request_status()
        answer = _answer(device, SetDrive(max_q16 + 1, LONGEST_RAMP_MS))
        blocks = device.read_for(0.1)
        after = device.request_status()
    refused = qualification.expect(
        "limits.max_drive",
        f"SET_DRIVE one step above max_drive ({device.info.max_drive:.4f}), output on",
        answer,
        NakReason.OUT_OF_RANGE.name,
    )
    no_effect = qualification.expect(
        "limits.max_drive_no_effect",
        "STATUS changes after the refused SET_DRIVE",
        _unchanged(before, after),
        "nothing",
    )
    reported = max(b.drive for b in blocks)
    still = qualification.check(
        "limits.max_drive_stream",
        "reported drive after the refused SET_DRIVE",
        reported,
        0.0,
        "==",
    )
    failed = [c.describe() for c in (refused, no_effect, still) if not c.passed]
    assert not failed, "; ".join(failed)


@pytest.mark.timeout(30)
def test_frequency_outside_the_device_range_is_refused(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    info = device.info
    low_mhz = round(info.min_freq_hz * 1000)
    high_mhz = round(info.max_freq_hz * 1000)
    checks = []
    try:
        before = device.request_status()
        if low_mhz > 0:
            checks.append(
                qualification.expect(
                    "limits.freq_below",
                    f"SET_FREQUENCY {low_mhz - 1} mHz, just below the device's range",
                    _answer(device, SetFrequency(low_mhz - 1)),
                    NakReason.OUT_OF_RANGE.name,
                )
            )
        checks.append(
            qualification.expect(
                "limits.freq_above",
                f"SET_FREQUENCY {high_mhz + 1} mHz, just above the device's range",
                _answer(device, SetFrequency(high_mhz + 1)),
                NakReason.OUT_OF_RANGE.name,
            )
        )
        after = device.request_status()
    finally:
        stop_safely(device)
    checks.append(
        qualification.expect(
            "limits.freq_no_effect",
            "STATUS changes after the refused frequencies",
            _unchanged(before, after),
            "nothing",
        )
    )
    failed = [c.describe() for c in checks if not c.passed]
    assert not failed, "; ".join(failed)


@pytest.mark.timeout(30)
def test_drive_with_the_output_off_is_refused(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    try:
        before = device.request_status()
        assert not before.output_on, "the output is on at the start of the test"
        answer = _answer(device, SetDrive(TINY_DRIVE_Q16, LONGEST_RAMP_MS))
        blocks = device.read_for(0.1)
        after = device.request_status()
    finally:
        stop_safely(device)
    checks = [
        qualification.expect(
            "limits.output_off",
            "SET_DRIVE 0.01 with the output off",
            answer,
            NakReason.OUTPUT_OFF.name,
        ),
        qualification.expect(
            "limits.output_off_no_effect",
            "STATUS changes after the refused SET_DRIVE",
            _unchanged(before, after),
            "nothing",
        ),
        qualification.check(
            "limits.output_off_stream",
            "reported drive after the refused SET_DRIVE",
            max(b.drive for b in blocks),
            0.0,
            "==",
        ),
    ]
    failed = [c.describe() for c in checks if not c.passed]
    assert not failed, "; ".join(failed)


@pytest.mark.timeout(30)
def test_malformed_commands_are_refused(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    try:
        before = device.request_status()
        checks = [
            qualification.expect(
                "limits.unknown_type",
                f"a command of unassigned type 0x{UNASSIGNED_TYPE:02x}",
                _answer(device, _UnknownCommand()),
                NakReason.UNKNOWN_TYPE.name,
            ),
            qualification.expect(
                "limits.bad_length",
                "SET_DRIVE with a 2-byte payload (4 expected)",
                _answer(device, _ShortSetDrive(TINY_DRIVE_Q16)),
                NakReason.BAD_LENGTH.name,
            ),
            qualification.expect(
                "limits.output_enable_2",
                "SET_OUTPUT with enable = 2 (only 0 and 1 exist)",
                _answer(device, SetOutput(2)),
                NakReason.OUT_OF_RANGE.name,
            ),
        ]
        after = device.request_status()
    finally:
        stop_safely(device)
    checks.append(
        qualification.expect(
            "limits.malformed_no_effect",
            "STATUS changes after the malformed commands",
            _unchanged(before, after),
            "nothing",
        )
    )
    failed = [c.describe() for c in checks if not c.passed]
    assert not failed, "; ".join(failed)
