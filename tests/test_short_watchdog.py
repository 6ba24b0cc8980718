"""A plate whose samples stop is stopped by the host, with the true reason, before its watchdog.

docs/protocol.md 7 lets a plate declare its host watchdog in HELLO (200..2000 ms). The host's
heartbeat is timed on the blocks it reads, so when the samples stop the host goes quiet too.
If the samples stop while the plate still hears the host and can still send (its sampling
stalls; the device-to-host direction drops SAMPLES only), a wait for samples longer than the
plate's watchdog let the plate fire first: the session was recorded as the plate's
HOST_WATCHDOG fault, blaming the host, when the plate had stopped sending samples. The loop's
wait now gives up in time (docs/safety.md 2.3.1): ``link_lost``, and the host's own soft stop.

The plate is the simulator in real time (``speed=1``: the host's timeout is on the wall clock,
the plate's watchdog on its own), behind :class:`SamplesDroppedPort`, which drops the SAMPLES
frames the device sends from a plant time on and passes every other frame (ACK, FAULT, ...)
and every host frame.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cobs import cobs

from controller.calibration import Calibration, identify
from controller.loop import ExposureResult, ExposureSettings, ExposureStatus, run_exposure
from controller.openloop import drive_open_loop
from controller.safety import (
    MIN_WAIT_BLOCKS,
    PORT_READ_S,
    WATCHDOG_WAIT_MARGIN_S,
    SafetyLimits,
    TripReason,
    samples_wait_s,
)
from controller.schedule import FrequencySchedule
from firmware_bridge.client import HEARTBEAT_S, DeviceClient
from firmware_bridge.errors import DeviceFaultError, LinkLostError, UnknownUrlError
from firmware_bridge.protocol import Samples
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.transport import open_port
from tests import test_unreadable_link as tampered
from tests.simhelpers import load_truth
from tests.test_unreadable_link import TamperedPort

BLOCK_S = 0.02  # the simulated plate's block: 32 samples at 1600 Hz
RAMP_UP_S = 0.5
HOLD_S = 3.0
# Plant time: boot (0.1 s) + handshake + the 0.5 s ramp + about 0.5 s of hold
SAMPLES_STOP_AT_S = 1.2
OPEN_LOOP_STOP_AT_S = 0.9  # the open loop's 0.5 s ramp then about 0.2 s of its hold
HEALTHY_HOLD_S = 1.0  # a healthy plate with the shortest wait: 50 blocks of 0.04 s waits


class SamplesDroppedPort(TamperedPort):
    """A ``sim://`` plate's port that drops every SAMPLES frame the device sends from plant
    time ``from_s`` on; every other frame, both ways, passes unchanged."""

    def __init__(self, url: str, from_s: float) -> None:
        super().__init__(url, "samples dropped", from_s)
        self._out = bytearray()  # frames let through, not yet read
        self.dropped = 0

    @property
    def in_waiting(self) -> int:
        waiting = int(self.inner.in_waiting)
        if waiting:
            self._filter(self.inner.read(waiting))
        return len(self._out)

    def read(self, size: int = 1) -> bytes:
        # As a real port: wait up to the timeout for bytes that pass (a dropped frame is no
        # byte at all), then give what there is.
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not self._out:
            self._filter(self.inner.read(1))
            if deadline is not None and time.monotonic() >= deadline:
                break
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    def read_buffered(self) -> bytes:
        self._filter(self.inner.read_buffered())
        data = bytes(self._out)
        self._out.clear()
        return data

    def _filter(self, data: bytes) -> None:
        self._tail += data
        *frames, rest = bytes(self._tail).split(b"\0")
        self._tail[:] = rest
        stopped = self.inner.device.time_s >= self.from_s
        for frame in frames:
            if stopped and frame and cobs.decode(frame)[0] == Samples.TYPE:
                self.dropped += 1
                continue
            self._out += frame + b"\0"


@pytest.fixture(scope="module")
def calibration() -> Iterator[Calibration]:
    """The empty plate around the exposures' 45 Hz."""
    with DeviceClient.open("sim://?mass=0&seed=1&speed=max") as device:
        yield identify(device, freqs_hz=(40.0, 50.0))


def plate_url(truth_path: Path, watchdog_ms: int, seed: int = 2) -> str:
    return f"sim://?mass=70&seed={seed}&speed=1&watchdog_ms={watchdog_ms}&truth={truth_path}"


def connect(port: SamplesDroppedPort, watchdog_ms: int) -> DeviceClient:
    client = tampered.connect(port, url="sim-samples-dropped")
    assert client.info.watchdog_s == watchdog_ms / 1000.0
    return client


def expose(
    tmp_path: Path, calibration: Calibration, watchdog_ms: int
) -> tuple[ExposureResult, SamplesDroppedPort, dict[str, Any]]:
    truth_path = tmp_path / "truth.npz"
    port = SamplesDroppedPort(plate_url(truth_path, watchdog_ms), SAMPLES_STOP_AT_S)
    settings = ExposureSettings(
        target_g=0.3, hold_s=HOLD_S, schedule=FrequencySchedule.fixed(45.0), ramp_up_s=RAMP_UP_S
    )
    with connect(port, watchdog_ms) as device:
        result = run_exposure(device, calibration, settings)
    return result, port, load_truth(truth_path)


def plate_faults(truth: dict[str, Any]) -> list[str]:
    """The faults the plate latched, from its truth record ("1.380000 fault:HOST_WATCHDOG")."""
    return [str(event) for event in truth["events"] if "fault:" in str(event)]


def assert_stopped_by_the_host(truth: dict[str, Any], stop_at_s: float = SAMPLES_STOP_AT_S) -> None:
    """The drive was on when the samples stopped and came down to zero, and the plate never
    latched a fault: the host's own stop reached it first (no watchdog blaming the host)."""
    drive = np.abs(truth["drive"])
    assert drive[truth["t_s"] < stop_at_s][-1] > 0.05, "the drive was off already"
    assert drive[-1] == 0.0
    assert plate_faults(truth) == []


# ---- the rule -----------------------------------------------------------------------------


def test_the_reference_plate_keeps_the_limit() -> None:
    assert samples_wait_s(SafetyLimits().link_timeout_s, 0.5, BLOCK_S) == 0.3
    assert samples_wait_s(0.3, 2.0, BLOCK_S) == 0.3  # a long watchdog never lengthens it


@pytest.mark.parametrize(
    ("watchdog_ms", "wait_s"),
    [(200, 0.04), (240, 0.04), (250, 0.05), (300, 0.1), (400, 0.2), (440, 0.24), (500, 0.3)],
)
def test_a_shorter_watchdog_gets_a_shorter_wait(watchdog_ms: int, wait_s: float) -> None:
    assert samples_wait_s(0.3, watchdog_ms / 1000.0, BLOCK_S) == pytest.approx(wait_s)


@pytest.mark.parametrize("watchdog_ms", [200, 230, 240, 300, 440, 500, 1000, 2000])
@pytest.mark.parametrize("limit_s", [0.3, 0.5, 1.0])
@pytest.mark.parametrize("block_s", [BLOCK_S, 0.05])
def test_every_wait_ends_inside_the_watchdog_or_is_two_blocks(
    watchdog_ms: int, limit_s: float, block_s: float
) -> None:
    watchdog_s = watchdog_ms / 1000.0
    wait_s = samples_wait_s(limit_s, watchdog_s, block_s)
    assert MIN_WAIT_BLOCKS * block_s <= wait_s <= limit_s
    if wait_s > MIN_WAIT_BLOCKS * block_s:
        assert wait_s + WATCHDOG_WAIT_MARGIN_S <= watchdog_s + 1e-9


def test_the_margin_is_the_heartbeat_and_two_port_reads() -> None:
    """The margin counts the client's real read timeout: a port opened with a longer one
    would end each wait later than the rule allows for."""
    read_s = inspect.signature(open_port).parameters["read_timeout_s"].default
    assert read_s == PORT_READ_S
    assert pytest.approx(HEARTBEAT_S + 2 * read_s) == WATCHDOG_WAIT_MARGIN_S


@pytest.mark.parametrize("raw", ["199", "2001", "0", "-1", "0.3", "x"])
def test_the_simulators_watchdog_is_the_protocols_range(raw: str) -> None:
    with pytest.raises(UnknownUrlError, match="watchdog_ms"):
        parse_sim_url(f"sim://?watchdog_ms={raw}")
    assert parse_sim_url("sim://?watchdog_ms=200").watchdog_ms == 200
    assert parse_sim_url("sim://").watchdog_ms is None


# ---- the closed loop, in real time --------------------------------------------------------


def test_samples_that_stop_on_a_200_ms_plate_are_a_lost_link_not_its_watchdog(
    tmp_path: Path, calibration: Calibration
) -> None:
    """Before: the plate's watchdog (200 ms) fired inside the host's 0.3 s wait, and the
    session was recorded as ``device_fault`` "no valid host frame within the watchdog time"."""
    result, port, truth = expose(tmp_path, calibration, 200)
    assert port.dropped > 0
    assert result.status is ExposureStatus.TRIPPED
    assert result.trip is not None
    assert result.trip.reason is TripReason.LINK_LOST, result.trip.detail
    assert result.trip.detail == (
        "no samples for 0.04 s (shortened from 0.3 s for the plate's 0.2 s watchdog)"
    )
    assert result.trip.t_s > RAMP_UP_S  # in the hold
    assert result.stop_fault is None
    assert_stopped_by_the_host(truth)


def test_samples_that_stop_on_the_500_ms_reference_plate_are_still_a_lost_link(
    tmp_path: Path, calibration: Calibration, caplog: pytest.LogCaptureFixture
) -> None:
    """The trip was right before (0.3 s inside 0.5 s); the soft stop then waited 0.5 s for a
    block with the samples stopped, and the plate latched HOST_WATCHDOG after the host's trip.
    The soft stop's read that gives up cuts the host's ramp short: the engineer's log says so."""
    with caplog.at_level(logging.WARNING, logger="controller.loop"):
        result, _, truth = expose(tmp_path, calibration, 500)
    assert "soft stop: no samples for 0.3 s; output switched off" in caplog.text
    assert result.trip is not None
    assert result.trip.reason is TripReason.LINK_LOST
    assert result.trip.detail == "no samples for 0.3 s"
    assert result.stop_fault is None
    assert_stopped_by_the_host(truth)


def test_a_healthy_200_ms_plate_is_not_stopped_by_the_shorter_wait(
    tmp_path: Path, calibration: Calibration
) -> None:
    """The 0.04 s wait is two blocks: a plate that keeps sending is never given up on."""
    truth_path = tmp_path / "truth.npz"
    settings = ExposureSettings(
        target_g=0.3,
        hold_s=HEALTHY_HOLD_S,
        schedule=FrequencySchedule.fixed(45.0),
        ramp_up_s=RAMP_UP_S,
    )
    with DeviceClient.open(plate_url(truth_path, 200)) as device:
        assert device.info.watchdog_s == 0.2
        result = run_exposure(device, calibration, settings)
    assert result.status is ExposureStatus.COMPLETED, result.trip
    assert result.held_s >= HEALTHY_HOLD_S - 1e-9
    assert plate_faults(load_truth(truth_path)) == []


# ---- the open loop (liv device drive), in real time ---------------------------------------


@pytest.mark.parametrize("watchdog_ms", [200, 500])
def test_the_open_loop_gives_up_on_stopped_samples_before_the_watchdog(
    tmp_path: Path, watchdog_ms: int
) -> None:
    """Before: its 1 s wait outlasted every such plate's watchdog, and it raised the plate's
    HOST_WATCHDOG fault (DeviceFaultError) for samples that had stopped."""
    truth_path = tmp_path / "truth.npz"
    port = SamplesDroppedPort(plate_url(truth_path, watchdog_ms, seed=3), OPEN_LOOP_STOP_AT_S)
    wait_s = samples_wait_s(1.0, watchdog_ms / 1000.0, BLOCK_S)
    with connect(port, watchdog_ms) as device, pytest.raises(LinkLostError) as caught:
        drive_open_loop(device, 45.0, 0.1, 2.0, ramp_up_s=0.5, ramp_down_s=0.5)
    assert not isinstance(caught.value, DeviceFaultError)
    assert str(caught.value).startswith(
        f"link to the device lost: no samples from the device for {wait_s:g} s"
    )
    assert_stopped_by_the_host(load_truth(truth_path), OPEN_LOOP_STOP_AT_S)


# ---- the calibration sweep (liv calibrate), in real time -------------------------------------

CALIBRATION_STOP_AT_S = 0.7  # boot, handshake, the 0.3 s ramp, then the first point's settling


def test_a_calibration_gives_up_on_stopped_samples_before_the_watchdog(tmp_path: Path) -> None:
    """Before: its reads waited 1 s, outlasting the reference plate's 0.5 s watchdog, and the
    sweep ended with the plate's HOST_WATCHDOG fault (DeviceFaultError) for samples that had
    stopped."""
    truth_path = tmp_path / "truth.npz"
    url = f"sim://?mass=0&seed=4&speed=1&watchdog_ms=500&truth={truth_path}"
    port = SamplesDroppedPort(url, CALIBRATION_STOP_AT_S)
    with connect(port, 500) as device, pytest.raises(LinkLostError) as caught:
        identify(device, freqs_hz=(40.0,))
    assert not isinstance(caught.value, DeviceFaultError), caught.value
    assert str(caught.value).startswith(
        "link to the device lost: no samples from the device for 0.3 s"
    )
    assert_stopped_by_the_host(load_truth(truth_path), CALIBRATION_STOP_AT_S)


@pytest.mark.parametrize("watchdog_ms", [200, 500, 2000])
def test_the_simulator_obeys_its_watchdog_and_runs_on_until_it_stops_a_plate_left_on(
    tmp_path: Path, watchdog_ms: int
) -> None:
    """A host that goes without a word (the port closed, no SET_OUTPUT off) leaves the plate to
    its watchdog, which fires after the watchdog it announced in HELLO, and the record runs on
    until its ramp has brought the drive to zero. Before, the plate was simulated for the
    500 ms watchdog's time only, so a 2 s plate's record ended with the drive on and no fault,
    as if nothing would ever stop it."""
    truth_path = tmp_path / "truth.npz"
    url = f"sim://?mass=70&seed=6&speed=max&watchdog_ms={watchdog_ms}&truth={truth_path}"
    with DeviceClient.open(url) as device:
        device.set_frequency(45.0)
        device.start_output()
        device.set_drive(0.1, 0.1)
        device.read_for(0.3)
        # plant time (from power-up) of the newest block: the host fell silent at most a
        # heartbeat interval before it
        quiet_at_s = device.sample_index / device.info.sample_rate_hz
        quiet_at_s += parse_sim_url(url).boot_ms / 1000.0
        device.port.close()  # the host is gone: the client's own SET_OUTPUT off is not sent
    truth = load_truth(truth_path)
    assert np.abs(truth["drive"])[-1] == 0.0
    faults = plate_faults(truth)
    assert [fault.split()[-1] for fault in faults] == ["fault:HOST_WATCHDOG"]
    silent_s = float(faults[0].split()[0]) - quiet_at_s
    watchdog_s = watchdog_ms / 1000.0
    assert watchdog_s - HEARTBEAT_S < silent_s <= watchdog_s + MIN_WAIT_BLOCKS * BLOCK_S
