"""A plate whose SAMPLES arrive intact but with sample indices the host cannot count.

Every device message is untrusted input. A device that keeps sending well-framed SAMPLES whose
``first_index`` runs past the host's range (docs/protocol.md 9.5), goes back, or jumps far
ahead gives the host no usable sample; the stop must name that, never blame a silent link or
the host's own quiet (the plate's watchdog). Indices past the range are dropped as malformed:
the loop trips ``link_degraded`` with counts that name them (docs/safety.md 2.3.1); an index
that goes back or jumps ahead trips ``sample_index_jump`` on that block (section 2.4). A
reader that waits for the clock to reach an index (``read_for``: the sensor check before every
session; the open loop) refuses an index that goes back with ``SampleIndexError``.

The plates are those of tests/test_unreadable_link.py (its :class:`TamperedPort`, ``expose``,
``connect``), with every SAMPLES frame's index rewritten from a plant time on and every other
frame (ACK, STATUS, FAULT) passed on untouched: a plate that reports its own faults.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cobs import cobs

from controller.calibration import Calibration
from controller.openloop import drive_open_loop
from controller.safety import TripReason
from firmware_bridge.codec import encode_frame
from firmware_bridge.errors import LinkUnreadableError, ProtocolError, SampleIndexError
from firmware_bridge.protocol import Samples
from tests import test_unreadable_link as unreadable
from tests.test_unreadable_link import (
    RAMP_UP_S,
    SPOILED_AT_S,
    N,
    TamperedPort,
    assert_brought_down_softly,
    calibration,  # noqa: F401 (a fixture)
    connect,
)

# How far the "ahead" plate's index leaps each block: far beyond index_gap_s (160 samples)
LEAP = 1_000_000


class IndexPort(TamperedPort):
    """A :class:`TamperedPort` that rewrites only the ``first_index`` of SAMPLES frames.

    ``mode``: ``past`` (indices from 2**63 on, past the host's range), ``back`` (every block
    at index 1000: the clock goes back, then repeats) or ``ahead`` (each block ``LEAP``
    samples after the last). Counts, phase, drive and every other frame are the plate's own.
    """

    def __init__(self, url: str, mode: str, from_s: float = 0.0) -> None:
        super().__init__(url, mode, from_s)
        self._leaps = 0

    def _malformed(self, frame: bytes) -> bytes:
        raw = cobs.decode(frame)
        if raw[0] != Samples.TYPE:
            return frame + b"\0"
        payload = bytearray(raw[3:-2])
        if self.mode == "past":
            index = self._index  # from SAMPLE_INDEX_MAX + 1 on, N per block
            self._index += N
        elif self.mode == "back":
            index = 1000
        else:
            self._leaps += 1
            index = int.from_bytes(payload[:8], "little") + self._leaps * LEAP
        payload[:8] = index.to_bytes(8, "little")
        return encode_frame(Samples.TYPE, raw[1] | raw[2] << 8, bytes(payload))


@pytest.fixture
def index_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """``unreadable.expose`` builds an IndexPort instead of its TamperedPort."""
    monkeypatch.setattr(unreadable, "TamperedPort", IndexPort)


@pytest.mark.usefixtures("index_ports")
def test_samples_past_the_index_range_are_named_not_a_watchdog_trip(
    tmp_path: Path,
    calibration: Calibration,  # noqa: F811
) -> None:
    """Before: the host waited 0.3 s of wall clock, fed nothing to the plate meanwhile, and at
    ``speed=max`` the plate's watchdog fired first: ``device_fault`` "no valid host frame
    within the watchdog time", as if the host had gone quiet."""
    result, _, truth = unreadable.expose(tmp_path, calibration, "past")
    assert result.trip is not None
    assert result.trip.reason is TripReason.LINK_DEGRADED, result.trip.detail
    assert result.trip.t_s > RAMP_UP_S  # in the hold
    values = result.trip.values
    assert values["damaged_frames"] == 0
    assert values["bad_index_frames"] == values["malformed_frames"] >= 10
    assert result.trip.detail.startswith(
        "no usable samples for 0.3 s although the device kept sending: "
    )
    bad = int(values["bad_index_frames"])
    assert f"of which {bad:,} SAMPLES with a sample index past the host's range" in (
        result.trip.detail
    )
    assert result.stop_fault is None  # the plate's watchdog never fired
    assert_brought_down_softly(truth)


@pytest.mark.usefixtures("index_ports")
@pytest.mark.parametrize(("mode", "direction"), [("back", "back"), ("ahead", "ahead")])
def test_samples_whose_index_goes_back_or_leaps_ahead_trip_on_the_first(
    tmp_path: Path,
    calibration: Calibration,  # noqa: F811
    mode: str,
    direction: str,
) -> None:
    """Blocks the client hands out; the supervisor refuses the first that does not continue
    the clock, before its time counts."""
    result, _, truth = unreadable.expose(tmp_path, calibration, mode)
    assert result.trip is not None
    assert result.trip.reason is TripReason.SAMPLE_INDEX_JUMP, result.trip.detail
    assert result.trip.detail.startswith(f"sample index went {direction} from ")
    jump = result.trip.values["jump_samples"]
    assert jump < 0 if mode == "back" else jump > LEAP - N
    assert result.stop_fault is None
    assert RAMP_UP_S < result.trip.t_s < SPOILED_AT_S  # at the first such block
    assert_brought_down_softly(truth)


def test_read_for_names_indices_past_the_range_and_does_not_blame_the_cable() -> None:
    """``DeviceClient.read_for`` (the open loop's reader) on a plate whose SAMPLES are all past
    the range: LinkUnreadableError naming them and the firmware, not the baud rate. Before:
    "check the cable and its connectors, electrical noise near it, and the baud rate"."""
    port = IndexPort("sim://?mass=70&seed=3&speed=max", "past", from_s=0.3)
    with connect(port) as device, pytest.raises(LinkUnreadableError) as caught:
        device.read_for(2.0, timeout_s=0.3)
    exc = caught.value
    assert exc.activity.bad_index_frames == exc.activity.malformed_frames >= 10
    text = str(exc)
    assert "SAMPLES with a sample index past the host's range" in text
    assert "check the plate's firmware" in text
    assert "baud" not in text


@pytest.mark.timeout(20)
def test_read_for_refuses_a_clock_that_goes_back_instead_of_waiting_for_ever() -> None:
    """``read_for`` reads until the clock reaches its end, which a repeated index never does.
    Before: it waited for ever, sending no heartbeat and raising nothing (the sensor check
    before every session reads this way, output off: a session start hung)."""
    port = IndexPort("sim://?mass=70&seed=3&speed=max", "back", from_s=0.3)
    with connect(port) as device, pytest.raises(SampleIndexError) as caught:
        device.read_for(2.0, timeout_s=0.3)
    exc = caught.value
    assert isinstance(exc, ProtocolError)
    assert exc.first_index == 1000 < exc.expected_index
    assert str(exc) == (
        f"the device's sample index went back from {exc.expected_index} to 1000 without a "
        "restart (docs/protocol.md 9.5): its samples cannot be timed; check the plate's firmware"
    )


def test_the_open_loop_stops_on_a_clock_that_goes_back() -> None:
    """``liv device drive`` at its hold (``_read_into``). Before: it read on, its heartbeat
    timed on the index never came due, and the plate's watchdog stopped it: DeviceFaultError
    "no valid host frame within the watchdog time", blaming the host."""
    port = IndexPort("sim://?mass=70&seed=3&speed=max", "back", from_s=1.0)
    with connect(port) as device, pytest.raises(SampleIndexError):
        drive_open_loop(device, 45.0, 0.1, 2.0, ramp_up_s=0.5, ramp_down_s=0.5)


def test_the_open_loop_names_indices_past_the_range_not_the_plates_watchdog() -> None:
    """``liv device drive`` at its hold (reads wait 0.3 s, its 1 s shortened for the plate's
    0.5 s watchdog: tests/test_short_watchdog.py) on a plate whose SAMPLES all run past the
    range, its FAULT frames intact. The host heartbeats on the
    refused frames' clock while it waits (docs/protocol.md 11), so the stop is its own error
    naming them. Before: the plate's watchdog fired first, DeviceFaultError "no valid host
    frame within the watchdog time", blaming a host that was waiting."""
    port = IndexPort("sim://?mass=70&seed=3&speed=max", "past", from_s=1.0)
    with connect(port) as device, pytest.raises(LinkUnreadableError) as caught:
        drive_open_loop(device, 45.0, 0.1, 2.0, ramp_up_s=0.5, ramp_down_s=0.5)
    exc = caught.value
    assert str(exc).startswith("no usable samples from the device for 0.3 s although it kept ")
    assert "check the plate's firmware" in str(exc)
    # the whole 0.3 s of the plate's clock, one SAMPLES frame a block (1600 Hz / 32)
    assert exc.activity.bad_index_frames >= 15
