"""The at-rest checks before a session (controller/faults.py) on a link the host cannot read.

``bring_plate_to_rest``, ``clear_latched_fault``, ``stop_plate_left_running`` and
``_wait_at_rest_or_fault`` ask STATUS (and command the plate) in loops. When the plate keeps
sending but every frame is damaged (a wrong baud rate, a noisy line), the timeout must say
the link is unreadable, with what arrived (``CommandUnreadableError``, a
``CommandTimeoutError``), as the handshake and the sample reads do (docs/safety.md 2.3.1);
a silent plate keeps the plain "did not answer" message.

The plates are tests/test_unreadable_link.py's :class:`TamperedPort`: the handshake and one
STATUS go through clean, then what the plate sends turns to noise (or silence).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest

from controller.calibration import Calibration
from controller.faults import (
    bring_plate_to_rest,
    clear_latched_fault,
    stop_plate_left_running,
)
from controller.loop import ExposureSettings, run_exposure
from controller.safety import TripReason
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import CommandTimeoutError, CommandUnreadableError
from firmware_bridge.protocol import DeviceState, FaultCode, Status
from firmware_bridge.transport import BAUD_RATE
from tests.test_unreadable_link import (
    TamperedPort,
    calibration,  # noqa: F401 (a fixture)
    connect,
)

MOVING_Q16 = 0x2000  # a drive of 1/8 of full scale


class Spoiled:
    """A connected plate, its STATUS read while the link was clean, and its port."""

    def __init__(self, mode: str) -> None:
        self.port = TamperedPort("sim://?mass=70&seed=4&speed=max", mode, from_s=math.inf)
        self.device: DeviceClient = connect(self.port)
        self.status: Status = self.device.request_status()
        self.port.from_s = 0.0  # from here on, what the plate sends is spoiled

    def found(self, **fields: int) -> Status:
        """The clean STATUS with ``fields`` changed: the plate as the caller found it."""
        return dataclasses.replace(self.status, **fields)


@pytest.fixture
def garbage() -> Iterator[Spoiled]:
    plate = Spoiled("garbage")
    with plate.device:
        yield plate


def assert_unreadable(exc: CommandTimeoutError, command: str) -> None:
    assert isinstance(exc, CommandUnreadableError)
    assert exc.command == command
    assert exc.activity.damaged_frames > 10
    assert exc.activity.usable_frames == 0
    assert exc.activity.bytes_received > 1000
    text = str(exc)
    assert text.startswith(f"device did not answer {command} within 1 s; the link is unreadable: ")
    assert f"but no usable frame ({exc.activity.damaged_frames:,} damaged" in text
    assert f"the baud rate ({BAUD_RATE:,} baud" in text


def test_request_status_on_damaged_frames_says_unreadable(garbage: Spoiled) -> None:
    with pytest.raises(CommandTimeoutError) as caught:
        garbage.device.request_status()
    assert_unreadable(caught.value, "STATUS_REQUEST")


def test_request_status_on_silence_keeps_the_plain_timeout() -> None:
    plate = Spoiled("silent")
    with plate.device, pytest.raises(CommandTimeoutError) as caught:
        plate.device.request_status()
    assert type(caught.value) is CommandTimeoutError
    assert str(caught.value) == "device did not answer STATUS_REQUEST within 1 s"


def test_bring_plate_to_rest_says_unreadable(garbage: Spoiled) -> None:
    with pytest.raises(CommandTimeoutError) as caught:
        bring_plate_to_rest(garbage.device)
    assert_unreadable(caught.value, "STATUS_REQUEST")


def test_clear_latched_fault_polling_for_rest_says_unreadable(garbage: Spoiled) -> None:
    """A watchdog fault latched, the plate still ramping down: the poll for rest."""
    found = garbage.found(fault_code=FaultCode.HOST_WATCHDOG, drive_q16=MOVING_Q16)
    with pytest.raises(CommandTimeoutError) as caught:
        clear_latched_fault(garbage.device, status=found, sleep=lambda _: None)
    assert_unreadable(caught.value, "STATUS_REQUEST")


def test_waiting_for_a_stop_ramp_says_unreadable(garbage: Spoiled) -> None:
    """A plate finishing an earlier host's stop (_wait_at_rest_or_fault's poll)."""
    found = garbage.found(state=DeviceState.STOPPING, output_on=1, drive_q16=MOVING_Q16)
    with pytest.raises(CommandTimeoutError) as caught:
        stop_plate_left_running(garbage.device, status=found, sleep=lambda _: None)
    assert_unreadable(caught.value, "STATUS_REQUEST")


def test_stopping_a_plate_left_running_says_unreadable(garbage: Spoiled) -> None:
    """A plate left running: the host's SET_DRIVE to zero gets no ACK."""
    found = garbage.found(
        state=DeviceState.RUNNING, output_on=1, drive_q16=MOVING_Q16, target_drive_q16=MOVING_Q16
    )
    with pytest.raises(CommandTimeoutError) as caught:
        stop_plate_left_running(garbage.device, status=found, sleep=lambda _: None)
    assert_unreadable(caught.value, "SetDrive")


def test_identity_on_damaged_frames_says_unreadable(garbage: Spoiled) -> None:
    """The requests that are asked again (IDENTITY, COUNTERSIGN: ``DeviceClient._request``)."""
    with pytest.raises(CommandTimeoutError) as caught:
        garbage.device.identity(attempts=1)
    assert_unreadable(caught.value, "IdentityRequest")


def test_the_loop_records_an_unanswered_command_on_an_unreadable_link_as_degraded(
    garbage: Spoiled,
    calibration: Calibration,  # noqa: F811
) -> None:
    """The link turns to noise before the exposure's first command: SET_FREQUENCY gets no
    ACK that can be read. The trip is ``link_degraded`` naming the link, not the ``link_lost``
    of a reason the loop does not know (controller/loop.py looks the error's type up)."""
    settings = ExposureSettings(
        target_g=0.3, hold_s=1.0, schedule=FrequencySchedule.fixed(45.0), ramp_up_s=0.5
    )
    result = run_exposure(garbage.device, calibration, settings)
    assert result.trip is not None
    assert result.trip.reason is TripReason.LINK_DEGRADED
    assert result.trip.detail.startswith(
        "device did not answer SetFrequency within 1 s; the link is unreadable: "
    )
