"""The simulated plate keeps every promise of docs/protocol.md, judged from its truth file."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.client import DeviceClient
from firmware_bridge.codec import FrameDecoder
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.errors import (
    CommandRefusedError,
    DeviceFaultError,
    DeviceResetError,
    LinkLostError,
    UnknownUrlError,
)
from firmware_bridge.protocol import (
    FAULT_TEXT,
    HELLO_ANSWER,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Fault,
    FaultCode,
    Hello,
    HelloRequest,
    NakReason,
    decode_message,
)
from firmware_bridge.sim.device import (
    FULL_SCALE_SLEW_S,
    MAX_DRIVE,
    SAFE_RAMP_S,
    WATCHDOG_S,
    SimulatedDevice,
)
from hil_tests.plate import go_silent
from tests.simhelpers import listen_silently, load_truth, measured_g_per_drive, run_blocks

FS = 1600.0


def sim(tmp_path: Path, **params: object) -> tuple[str, Path]:
    truth = tmp_path / "truth.npz"
    query = "&".join(f"{k}={v}" for k, v in {"speed": "max", **params}.items())
    return f"sim://?{query}&truth={truth}", truth


def drive_within_dose(tmp_path: Path, freq_hz: float, wanted: float) -> float:
    """``wanted``, lowered so the default simulated plate stays within the dose limits.

    The drive a timing test uses is chosen from the plate's measured response, so the firmware's
    acceleration ceiling never trips on a plate stronger than the one the test was written for.
    """
    g_per_drive = measured_g_per_drive("speed=max", freq_hz, tmp_path / "probe.npz")
    allowed_g = DOSE_LIMITS.highest_target_g(DOSE_LIMITS.over_acceleration_ceiling_g)
    return min(wanted, allowed_g / g_per_drive)


def test_handshake_reports_the_device() -> None:
    with DeviceClient.open("sim://?speed=max&device_id=PLATE-7") as dev:
        info = dev.info
    assert info.device_id == "PLATE-7"
    assert info.protocol_version == f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
    assert info.sample_rate_hz == 1600
    assert info.block_samples == 32
    assert info.max_drive == pytest.approx(MAX_DRIVE, abs=1e-4)
    assert info.watchdog_s == WATCHDOG_S
    # Every limit the host relies on is announced, once: slew, stop ramp, fault ramp.
    assert info.full_scale_slew_s == FULL_SCALE_SLEW_S
    assert info.stop_ramp_s == SAFE_RAMP_S
    assert info.watchdog_ramp_s == SAFE_RAMP_S
    assert "SIMULATED" in info.capabilities


def sim_device(dev: DeviceClient) -> SimulatedDevice:
    device: SimulatedDevice = dev.port.device  # type: ignore[attr-defined]
    return device


def test_hello_after_the_sequence_number_wraps_is_not_a_reset() -> None:
    """A HELLO answering a request carries seq 0 when the count has just wrapped; only a boot
    HELLO means the device restarted."""

    def wrap_into_a_hello(dev: DeviceClient) -> None:
        device = sim_device(dev)
        device.step()  # handles whatever the host had sent: the inbox is empty now
        device._tx_seq = 0xFFFF
        dev.heartbeat()  # its ACK takes seq 65535 ...
        dev._send(HelloRequest())  # ... and the HELLO answering this one seq 0

    with DeviceClient.open("sim://?speed=max") as dev:
        dev.read_for(0.1)
        wrap_into_a_hello(dev)
        dev.read_for(0.2)  # no DeviceResetError: the HELLO is an answer
        wrap_into_a_hello(dev)
        decoder, frames = FrameDecoder(), []
        while not any(f.frame_type == Hello.TYPE for f in frames):
            frames += decoder.feed(dev.port.read(4096))
    hello_frame = next(f for f in frames if f.frame_type == Hello.TYPE)
    hello = decode_message(hello_frame)
    assert isinstance(hello, Hello)
    assert (hello_frame.seq, hello.boot) == (0, HELLO_ANSWER)


def test_stop_ramp_lasts_the_announced_time(tmp_path: Path) -> None:
    url, truth_path = sim(tmp_path)
    drive_0 = drive_within_dose(tmp_path, 30.0, 0.5)  # the default frequency
    with DeviceClient.open(url) as dev:
        sim_device(dev).stop_ramp_ms = 600
        dev.start_output()
        dev.set_drive(drive_0, 0.0)
        dev.read_for(0.3)
        dev.stop_output()
        stop_at = dev.sample_index
        dev.read_for(1.0)
    truth = load_truth(truth_path)
    index, drive = truth["sample_index"], truth["drive"]
    # The stop took effect within a block of the ACK; 0.6 s later (+2 blocks) it is at zero.
    # 0.5 s into a 0.6 s ramp a sixth of the drive is left: half of that is a safe floor.
    left = drive[(index > stop_at + 0.45 * FS) & (index < stop_at + 0.5 * FS)]
    assert left.min() > drive_0 / 12
    assert np.all(drive[index > stop_at + (0.6 + 0.04) * FS] == 0.0)


@pytest.mark.parametrize(
    ("stop_ramp_ms", "fault_ramp_ms", "zero_after_trip_s"),
    [
        (1000, 200, 0.2),  # the fault ramp from the amplitude reached ends first: it wins
        (1000, 1000, None),  # the stop ramp ends first: it is kept (never lengthened)
    ],
)
def test_fault_during_a_stop_ramp_never_lengthens_the_time_to_zero(
    tmp_path: Path, stop_ramp_ms: int, fault_ramp_ms: int, zero_after_trip_s: float | None
) -> None:
    url, truth_path = sim(tmp_path)
    drive_0 = drive_within_dose(tmp_path, 45.0, 0.5)
    with DeviceClient.open(url) as dev:
        device = sim_device(dev)
        device.stop_ramp_ms, device.fault_ramp_ms = stop_ramp_ms, fault_ramp_ms
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(drive_0, 0.0)
        dev.read_for(0.3)
        dev.stop_output()
        stop_index = dev.sample_index
        dev.read_for(0.3)
        device.physics.set_coil_temperature_c(130.0)  # over-temperature in mid-stop
        with pytest.raises(DeviceFaultError) as fault:
            dev.read_for(0.5)
        assert fault.value.code == FaultCode.COIL_OVERTEMP
        trip_index = fault.value.sample_index
        for _ in range(80):  # the fault is latched: the stream goes on
            dev.read_block()
    truth = load_truth(truth_path)
    index, drive = truth["sample_index"], truth["drive"]
    at_trip = float(drive[index == trip_index][0])
    assert at_trip > 0.4 * drive_0, (
        "the fault must trip while the stop ramp is still well above zero"
    )
    zero_index = int(index[(drive == 0.0) & (index > trip_index)][0])
    stop_end = stop_index + stop_ramp_ms / 1000 * FS
    # Zero at the earlier of the stop ramp's end and a fault ramp from the trip (+2 blocks:
    # the host saw the ACK up to a block after the device applied the stop).
    fault_end = trip_index + fault_ramp_ms / 1000 * FS
    assert zero_index <= min(stop_end, fault_end) + 64
    if zero_after_trip_s is not None:
        assert zero_index - trip_index == pytest.approx(zero_after_trip_s * FS, abs=1)
    steps = np.abs(np.diff(drive))
    assert steps.max() <= 1.0 / (FULL_SCALE_SLEW_S * FS) + 1e-9


def test_overtemperature_reaches_the_host_as_the_fault_not_a_refusal() -> None:
    with DeviceClient.open("sim://?speed=max&coil_temp_c=130") as dev:
        dev.start_output()  # the coil is too hot: the device trips at this boundary
        with pytest.raises(DeviceFaultError) as fault:
            dev.set_drive(0.3, 0.2)  # NAK FAULT_LATCHED: the host reports the fault itself
    err = fault.value
    assert err.code == FaultCode.COIL_OVERTEMP
    assert err.text == FAULT_TEXT[FaultCode.COIL_OVERTEMP]
    assert err.detail is not None
    assert 12_000 < err.detail <= 13_000
    assert err.sample_index > 0
    assert err.refused_command == "SetDrive"
    assert FAULT_TEXT[FaultCode.COIL_OVERTEMP] in str(err)


def test_a_fault_latched_before_the_host_connected_is_reported_from_status() -> None:
    with DeviceClient.open("sim://?speed=max&coil_temp_c=130") as first:
        first.start_output()
        with pytest.raises(DeviceFaultError) as seen:
            first.read_for(0.2)
        # A second host on the same link never saw the FAULT frame.
        later = DeviceClient(first.port, first.url)
        later.handshake()
        with pytest.raises(DeviceFaultError) as fault:
            later.start_output()
    err = fault.value
    assert (err.code, err.sample_index, err.detail) == (
        seen.value.code,
        seen.value.sample_index,
        seen.value.detail,
    )
    assert err.refused_command == "SetOutput"


def test_drive_is_off_at_boot_and_gravity_reads_one_g(tmp_path: Path) -> None:
    url, truth_path = sim(tmp_path)
    with DeviceClient.open(url) as dev:
        blocks = run_blocks(dev, 1.0)
    accel = np.concatenate([b.accel_g for b in blocks])
    assert abs(accel.mean() - 1.0) < 0.05
    truth = load_truth(truth_path)
    assert np.all(truth["drive"] == 0.0)
    assert np.max(np.abs(truth["accel_g"])) < 0.01


def test_device_refuses_drive_above_its_limit_and_when_output_is_off() -> None:
    with DeviceClient.open("sim://?speed=max") as dev:
        with pytest.raises(CommandRefusedError) as off:
            dev.set_drive(0.2, 0.5)
        assert off.value.reason_code == NakReason.OUTPUT_OFF
        dev.start_output()
        with pytest.raises(CommandRefusedError) as over:
            dev.set_drive(min(1.0, MAX_DRIVE + 0.05), 0.5)
        assert over.value.reason_code == NakReason.OUT_OF_RANGE
        with pytest.raises(CommandRefusedError) as freq:
            dev.set_frequency(500.0)
        assert freq.value.reason_code == NakReason.OUT_OF_RANGE


def test_watchdog_ramps_drive_to_zero_when_the_host_goes_silent(tmp_path: Path) -> None:
    url, truth_path = sim(tmp_path)
    drive_0 = drive_within_dose(tmp_path, 45.0, 0.4)
    with DeviceClient.open(url) as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(drive_0, 0.3)
        run_blocks(dev, 1.0)
        silent_from = dev.sample_index / FS
        messages = listen_silently(dev, 1.5)
    faults = [m for m in messages if isinstance(m, Fault)]
    assert [f.code for f in faults] == [FaultCode.HOST_WATCHDOG]
    truth = load_truth(truth_path)
    t, drive = truth["t_s"], truth["drive"]
    boot_s = 0.1  # default boot delay: sample index 0 is at t = boot time
    silent_t = silent_from + boot_s
    # Still driving right before the watchdog time, zero within watchdog + ramp (+1 block).
    assert drive[(t > silent_t + 0.1) & (t < silent_t + WATCHDOG_S - 0.05)].min() > 0.75 * drive_0
    after = t > silent_t + WATCHDOG_S + SAFE_RAMP_S + 0.04
    assert np.all(drive[after] == 0.0)
    assert np.max(np.abs(truth["accel_g"][after & (t > t[after][0] + 0.3)])) < 0.02


def test_ramps_are_soft_and_phase_continuous(tmp_path: Path) -> None:
    url, truth_path = sim(tmp_path)
    drive_0 = min(drive_within_dose(tmp_path, f, 0.5) for f in (30.0, 60.0))
    with DeviceClient.open(url) as dev:
        dev.set_frequency(30.0)
        dev.start_output()
        dev.set_drive(drive_0, 0.0)  # asks for a step: the firmware slew limit softens it
        blocks = run_blocks(dev, 0.5)
        dev.set_frequency(60.0)
        blocks += run_blocks(dev, 0.5)
    truth = load_truth(truth_path)
    steps = np.abs(np.diff(truth["drive"]))
    assert steps.max() <= 1.0 / (FULL_SCALE_SLEW_S * FS) + 1e-9
    # Reported phase advances exactly by each block's frequency: no phase jump at the change.
    for prev, cur in itertools.pairwise(blocks):
        expected = prev.phase_rad + 2 * np.pi * prev.freq_hz * prev.counts.size / FS
        wrapped = (cur.phase_rad - expected + np.pi) % (2 * np.pi) - np.pi
        assert abs(wrapped) < 1e-6
    assert {b.freq_hz for b in blocks} == {30.0, 60.0}


def test_same_seed_same_stream_and_other_seed_differs() -> None:
    def stream(seed: int) -> np.ndarray:
        with DeviceClient.open(f"sim://?speed=max&seed={seed}") as dev:
            dev.start_output()
            dev.set_drive(0.3, 0.2)
            return np.concatenate([b.counts for b in run_blocks(dev, 0.6)])

    first, again, other = stream(4), stream(4), stream(5)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_reset_mid_run_cuts_drive_and_is_reported(tmp_path: Path) -> None:
    url, truth_path = sim(tmp_path, reset_at=1.0)
    with DeviceClient.open(url) as dev:
        dev.start_output()
        dev.set_drive(0.3, 0.2)
        with pytest.raises(DeviceResetError):
            run_blocks(dev, 2.0)
    truth = load_truth(truth_path)
    assert np.all(truth["drive"][truth["t_s"] >= 1.0] == 0.0)
    assert any("reset" in e for e in truth["events"])


def test_cable_pull_raises_link_lost_and_the_plate_stops_by_itself(tmp_path: Path) -> None:
    url, truth_path = sim(tmp_path, disconnect_at=1.0)
    with DeviceClient.open(url) as dev:
        dev.start_output()
        dev.set_drive(0.3, 0.2)
        with pytest.raises(LinkLostError):
            run_blocks(dev, 2.0)
    truth = load_truth(truth_path)
    t, drive = truth["t_s"], truth["drive"]
    assert drive[(t > 0.9) & (t < 1.0)].min() > 0.25
    assert np.all(drive[t > 1.0 + WATCHDOG_S + SAFE_RAMP_S + 0.04] == 0.0)


def test_link_damage_is_counted_and_survived() -> None:
    with DeviceClient.open("sim://?speed=max&corrupt_rate=0.001&drop_rate=0.02&seed=3") as dev:
        blocks = run_blocks(dev, 5.0)
        stats = dev.link_stats
    assert stats.damaged_frames > 0
    assert stats.lost_frames > 0
    assert dev.samples_missing > 0
    assert sum(b.missing_before for b in blocks) == dev.samples_missing


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ("sensor_stuck_at", lambda c: np.ptp(c) == 0),
        ("sensor_saturated_at", lambda c: np.all(c == c.max()) and c.max() > 256),
        ("sensor_disconnected_at", lambda c: np.all(c == 0)),
    ],
)
def test_sensor_faults_show_in_the_stream(fault: str, check: object) -> None:
    with DeviceClient.open(f"sim://?speed=max&{fault}=0.5") as dev:
        dev.start_output()
        dev.set_drive(0.3, 0.1)
        blocks = run_blocks(dev, 1.0)
    late = np.concatenate([b.counts for b in blocks[-10:]])
    assert callable(check)
    assert check(late)


def test_actuator_faults_change_the_true_response(tmp_path: Path) -> None:
    def peak(**faults: object) -> float:
        url, truth_path = sim(tmp_path, **faults)
        with DeviceClient.open(url) as dev:
            dev.set_frequency(45.0)
            dev.start_output()
            dev.set_drive(0.3, 0.1)
            run_blocks(dev, 2.0)
        truth = load_truth(truth_path)
        window = (truth["t_s"] > 1.5) & (truth["t_s"] < 2.0)
        return float(np.max(np.abs(truth["accel_g"][window])))

    normal = peak()
    assert peak(open_circuit_at=1.0) < 0.01 * normal
    assert peak(gain_loss_at=1.0, gain_factor=0.5) == pytest.approx(0.5 * normal, rel=0.05)


@pytest.mark.parametrize(
    "url",
    ["sim://?bogus=1", "sim://?mass=abc", "sim://?mass=900", "sim://?seed=1&seed=2", "sim://x"],
)
def test_bad_sim_urls_name_the_problem(url: str) -> None:
    with pytest.raises(UnknownUrlError) as err:
        DeviceClient.open(url)
    assert url in str(err.value)


@pytest.mark.parametrize(
    "samples_after_replies", [False, True], ids=["samples-first", "replies-first"]
)
def test_the_hil_watchdog_timing_holds_in_either_boundary_order(
    samples_after_replies: bool,
) -> None:
    """docs/protocol.md 9.2 leaves the order of a finished block's SAMPLES and a boundary's
    replies open: the suite's "last host frame" must not depend on it."""
    with DeviceClient.open("sim://?speed=max") as dev:
        sim_device(dev).samples_after_replies = samples_after_replies
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(0.2, 0.1)
        dev.read_for(0.3)
        silence = go_silent(dev, 1.0)
    (fault,) = silence.faults
    assert fault.code == FaultCode.HOST_WATCHDOG
    # The reference device trips at the first boundary more than 500 ms (800 samples) after
    # the one where it handled the last frame: 26 blocks of 32 samples later.
    assert fault.sample_index - silence.silent_from == 832
    assert silence.samples[0].first_index >= silence.silent_from - 32
