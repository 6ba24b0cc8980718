"""What the second clean-room firmware found, fixed (see docs/protocol.md 3, 9.7, 11).

A fake port stands in for a plate whose output was buffered before this host came: it delivers
a backlog of stale SAMPLES and answers the hello only after it; the clean-room2 plate runs in
its own process behind a pty for the same situation with real bytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from controller.calibration import (
    DEFAULT_FREQS_HZ,
    CalibrationRangeError,
    calibration_freqs,
    identify,
)
from controller.faults import clear_latched_fault
from firmware_bridge.client import STOP_WAIT_MARGIN_S, DeviceClient, DeviceInfo, SampleBlock
from firmware_bridge.codec import FrameDecoder, encode_frame
from firmware_bridge.errors import HandshakeBacklogError, HandshakeTimeoutError
from firmware_bridge.protocol import (
    DEVICE_ID_LEN,
    DeviceState,
    Hello,
    HelloRequest,
    Samples,
    pack_message,
)
from hil_tests.conftest import _known_state
from hil_tests.plate import (
    GUARD_G,
    PlateGuardError,
    block_amplitudes,
    fit_block,
    read_guarded,
)
from sessions.log import SessionKind, SessionLog
from sessions.wording import say
from tests.simhelpers import install_signed
from tests.test_cleanroom2_device import _serve

ROOT = Path(__file__).resolve().parents[1]

HELLO_ANSWER = Hello(
    2,
    1,
    0,
    3,
    1,
    b"FAKE-BACKLOG".ljust(DEVICE_ID_LEN, b"\x00"),
    2000,
    40,
    4096,
    52_428,
    30_000,
    90_000,
    300,
    150,
    250,
    50,
    700,
    0,
    0,
)


def _samples_frame(index: int, block: int = 40) -> bytes:
    counts = np.full(block, 4096, dtype=np.int16)
    message = Samples(index, 0, 41_000, 0, counts)
    return encode_frame(Samples.TYPE, index // block, pack_message(message))


class BackloggedPort:
    """A port with ``backlog_blocks`` stale SAMPLES waiting; the HELLO that answers the first
    HELLO_REQUEST comes after them (``answer=False``: never, and the backlog never ends)."""

    def __init__(self, backlog_blocks: int, answer: bool = True) -> None:
        self.is_open = True
        self.timeout: float | None = 0.05
        self._answer = answer
        self._index = 0
        self._buffer = bytearray()
        self._decoder = FrameDecoder()
        self.requests = 0
        self.read_bytes = 0
        self._fill(backlog_blocks)

    def _fill(self, blocks: int) -> None:
        for _ in range(blocks):
            self._buffer += _samples_frame(self._index)
            self._index += 40

    @property
    def in_waiting(self) -> int:
        if not self._answer and len(self._buffer) < 8192:
            self._fill(200)
        return len(self._buffer)

    def read(self, size: int = 1) -> bytes:
        if not self._buffer:
            time.sleep(0.001)
            self._fill(1)  # the live stream goes on (20 ms of it)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.read_bytes += len(data)
        return data

    def write(self, data: bytes) -> int:
        for frame in self._decoder.feed(data):
            if frame.frame_type == HelloRequest.TYPE:
                self.requests += 1
                if self._answer and self.requests == 1:
                    # the answer queues behind everything the device already buffered
                    self._buffer += encode_frame(Hello.TYPE, 7, pack_message(HELLO_ANSWER))
        return len(data)

    def close(self) -> None:
        self.is_open = False


def test_a_backlog_longer_than_the_hello_limit_is_drained_on_the_first_try() -> None:
    # 40 s of stale blocks at the 50 frames/s a host assumes before the hello: 2000 frames.
    port = BackloggedPort(2000)
    client = DeviceClient(port, "fake://backlog")  # type: ignore[arg-type]
    info = client.handshake(timeout_s=5.0)
    assert info.device_id == "FAKE-BACKLOG"
    assert port.read_bytes > 2000 * 100
    assert port.requests == 1  # no request repeated while the stale output was read


def test_a_boot_hello_at_the_head_of_a_backlog_is_stale_too() -> None:
    # The device booted while nobody read: its boot HELLO, then 40 s of blocks, are buffered.
    port = BackloggedPort(0)
    boot = replace(HELLO_ANSWER, boot=1)
    port._buffer += encode_frame(Hello.TYPE, 0, pack_message(boot))
    port._fill(2000)
    client = DeviceClient(port, "fake://booted")  # type: ignore[arg-type]
    client.handshake(timeout_s=5.0)
    assert client.sample_frames_seen >= 2000  # read up to the answer, not to the boot HELLO
    assert port.in_waiting < 1024


def test_the_drain_is_bounded_in_bytes_with_an_honest_message() -> None:
    port = BackloggedPort(0, answer=False)
    client = DeviceClient(port, "fake://endless")  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(HandshakeBacklogError, match="bytes of old output") as caught:
        client.handshake(timeout_s=5.0, drain_max_bytes=200_000, drain_max_s=60.0)
    assert time.monotonic() - started < 5.0
    assert 200_000 < caught.value.drained_bytes <= 200_000 + 4096
    assert isinstance(caught.value, HandshakeTimeoutError)  # callers that catch it still do


def test_the_drain_is_bounded_in_wall_clock_time() -> None:
    port = BackloggedPort(0, answer=False)
    client = DeviceClient(port, "fake://endless")  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(HandshakeBacklogError, match=r"in 0\.[0-9] s"):
        client.handshake(timeout_s=5.0, drain_max_bytes=10**12, drain_max_s=0.3)
    assert time.monotonic() - started < 2.0


class LiveOnlyPort(BackloggedPort):
    """A device that streams live, one block every 20 ms, and never answers the hello."""

    def __init__(self) -> None:
        super().__init__(0, answer=False)

    @property
    def in_waiting(self) -> int:
        return len(self._buffer)

    def read(self, size: int = 1) -> bytes:
        time.sleep(0.02)
        self._fill(1)
        return super().read(size)


def test_a_device_that_never_answers_still_times_out_after_the_hello_limit() -> None:
    client = DeviceClient(LiveOnlyPort(), "fake://mute")  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(HandshakeTimeoutError, match="no hello") as caught:
        client.handshake(timeout_s=0.5)
    assert not isinstance(caught.value, HandshakeBacklogError)
    assert time.monotonic() - started < 2.0


# ---- the clean-room2 plate behind a pty -------------------------------------------------------


def _stop(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def fast_plate(tmp_path: Path) -> Iterator[str]:
    proc, path = _serve(tmp_path / "nv", "preset=fast")
    try:
        yield path
    finally:
        _stop(proc)


def test_the_clean_room2_plate_behind_its_full_backlog_is_reached_first_time(
    fast_plate: str,
) -> None:
    # 44 kB/s of stream fills the 64 kB backlog and the pty in about 2 s: wait for it.
    time.sleep(3.0)
    with DeviceClient.open(fast_plate) as client:
        assert client.info.sample_rate_hz == 20000
        assert client.sample_frames_seen > 250  # more than 5 s at 50 frames/s were stale


# ---- 2. the calibration grid inside the device's HELLO range ---------------------------------


def _info(min_hz: float, max_hz: float) -> DeviceInfo:
    return replace(SIM_INFO, min_freq_hz=min_hz, max_freq_hz=max_hz)


SIM_INFO = DeviceInfo(
    "CR2-PLATE-0042", "0.3.1", "2.1", 1250, 25, 4096, 0.8, 25.0, 120.0, 0.3, 0.15, 0.25, 0.05,
    0.7, [],
)  # fmt: skip


def test_the_calibration_grid_is_clipped_to_the_devices_range() -> None:
    assert calibration_freqs(_info(20.0, 150.0)) == DEFAULT_FREQS_HZ  # 25..100: the whole band
    assert calibration_freqs(_info(30.0, 90.0)) == tuple(30.0 + 5 * k for k in range(13))
    assert calibration_freqs(_info(27.0, 88.0)) == (27.0, *range(30, 90, 5), 88.0)
    with pytest.raises(CalibrationRangeError, match="cannot be calibrated"):
        calibration_freqs(_info(98.0, 150.0))


def test_identify_refuses_a_grid_outside_the_device_before_the_plate_moves() -> None:
    with DeviceClient.open("sim://?speed=max") as device:
        low = device.info.min_freq_hz
        with pytest.raises(CalibrationRangeError, match="outside the plate"):
            identify(device, (low - 5.0, low + 10.0))
        assert device.request_status().state == 0  # IDLE: the output never came on


def _liv(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LIV_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "sessions.cli", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.timeout(110)
def test_a_40_to_90_hz_plate_is_calibrated_and_a_30_hz_prescription_refused(
    tmp_path: Path,
) -> None:
    proc, plate = _serve(tmp_path / "nv", "min_freq_mhz=40000", "max_freq_mhz=90000")
    try:
        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        cal = _liv("calibrate", "--engineer", "--device", plate, "--home", str(home), home=home)
        assert cal.returncode == 0, cal.stderr
        record = json.loads((home / "calibration" / "CR2-PLATE-0042.json").read_text())
        assert record["freqs_hz"][0] == 40.0
        assert record["freqs_hz"][-1] == 90.0
        assert any("calibrated 40-90 Hz only" in note for note in record["notes"])
        install_signed(home, frequency_hz=30)
        start = _liv("-v", "start", "--device", plate, "--home", str(home), home=home)
        assert start.returncode != 0
        assert "Traceback" not in start.stderr
        # the plate itself cannot drive 30 Hz: no calibration would help, so the patient hears
        # that the prescription asks for what this plate does not allow
        assert "drives 40-90 Hz; the prescription asks for 30-30 Hz" in start.stderr
        assert f"liv: {say('refused.prescription')}" in start.stderr.splitlines()
        with SessionLog(home / "liv.db", read_only=True) as log:
            (record_row,) = log.sessions()  # the calibration's engineering record, no session
        assert record_row.kind is SessionKind.ENGINEERING
        assert record_row.reason.startswith("calibrated 40-90 Hz")
        assert record_row.freqs_hz[0] == 40.0
    finally:
        _stop(proc)


# ---- 3. the suite's open-loop guard on short blocks ------------------------------------------


class ShortBlockPlate:
    """Blocks of 7 samples at 2000 Hz (3.5 ms, allowed by docs/protocol.md 7) of a plate moving
    ``peak_g`` at 90 Hz, with 0.012 g of sensor noise, as :func:`read_guarded` reads them."""

    def __init__(self, peak_g: float, seed: int = 5) -> None:
        self.info = replace(
            SIM_INFO, sample_rate_hz=2000, block_samples=7, counts_per_g=4096, ceiling_g=0.7
        )
        self.peak_g = peak_g
        self.sample_index = 0
        self._rng = np.random.default_rng(seed)

    def read_block(self, timeout_s: float = 1.0) -> SampleBlock:
        n, fs, freq = 7, 2000.0, 90.0
        first = self.sample_index
        phase = 2 * np.pi * freq * np.arange(first, first + n) / fs
        accel = 1.0 + self.peak_g * np.cos(phase) + 0.012 * self._rng.standard_normal(n)
        counts = np.round(accel * 4096).astype(np.int16)
        self.sample_index += n
        return SampleBlock(
            first, counts, counts / 4096.0, float(phase[0] % (2 * np.pi)), freq, 0.3, 0
        )


def test_the_guard_does_not_stop_a_true_043_g_on_35_ms_blocks() -> None:
    plate = ShortBlockPlate(0.43)
    blocks = read_guarded(plate, 2.0)  # type: ignore[arg-type]
    assert len(blocks) >= 570
    # what one block alone reads: the single-block guard this replaces stopped here
    singles = [fit_block(b, 2000.0, 4096).peak_g for b in blocks]
    assert max(singles) > GUARD_G


def test_the_guard_still_stops_a_plate_above_05_g_on_35_ms_blocks() -> None:
    plate = ShortBlockPlate(0.53)
    with pytest.raises(PlateGuardError, match="over the last drive cycle"):
        read_guarded(plate, 2.0)  # type: ignore[arg-type]
    assert plate.sample_index <= 5 * 7  # within the first whole cycle (23 samples) and a block


# ---- 4. the suite's latency limit on short blocks ----------------------------------------------


def test_the_latency_limit_has_a_floor_for_the_link_in_milliseconds() -> None:
    from hil_tests.test_latency import device_max_s

    assert device_max_s(0.020) == pytest.approx(0.080)  # the reference plate: 4 blocks, as before
    assert device_max_s(0.050) == pytest.approx(0.200)  # long blocks: 4 blocks
    assert device_max_s(7 / 2000) == pytest.approx(3 * 0.0035 + 0.020)  # not 14 ms


# ---- 5. a new connection during the previous host's stop ramp -----------------------------------


@pytest.fixture
def slow_stop_plate(tmp_path: Path) -> Iterator[str]:
    proc, path = _serve(tmp_path / "nv", "stop_ramp_ms=1000")  # the longest ramp HELLO allows
    try:
        yield path
    finally:
        _stop(proc)


def _leave_it_stopping(path: str) -> None:
    """A previous host: drive on, then SET_OUTPUT off and gone, the plate ramping down."""
    with DeviceClient.open(path) as first:
        first.set_frequency(45.0)
        first.start_output()
        first.set_drive(0.1, 0.05)
        first.read_for(0.2)
        first.stop_output()


def test_start_output_waits_for_a_previous_hosts_stop_ramp(slow_stop_plate: str) -> None:
    _leave_it_stopping(slow_stop_plate)
    with DeviceClient.open(slow_stop_plate) as client:
        assert client.request_status().state == DeviceState.STOPPING  # the situation reported
        started = time.monotonic()
        client.start_output()  # refused BUSY before the fix
        waited_s = time.monotonic() - started
        assert client.request_status().state == DeviceState.RUNNING
        assert waited_s <= client.info.stop_ramp_s + STOP_WAIT_MARGIN_S + 0.5
        client.stop_output()


def test_the_suites_known_state_waits_for_idle(slow_stop_plate: str) -> None:
    _leave_it_stopping(slow_stop_plate)
    with DeviceClient.open(slow_stop_plate) as client:
        _known_state(client)  # returned with the plate STOPPING before the fix
        assert client.request_status().state == DeviceState.IDLE


# ---- 6. a latched fault found at connect keeps STATUS fault_index and fault_detail ------------


def test_a_fault_cleared_at_connect_records_fault_index_and_detail(tmp_path: Path) -> None:
    proc, path = _serve(tmp_path / "nv", "prev_host=1", "uptime_s=2")
    try:
        with DeviceClient.open(path) as client:
            latched = client.request_status()
            assert latched.fault_code == 1  # HOST_WATCHDOG, left by the previous host
            assert latched.fault_index > 0
            cleared = clear_latched_fault(client)
        assert cleared is not None
        values = cleared.to_event()["values"]
        assert values["fault_index"] == latched.fault_index
        assert values["fault_detail"] == latched.fault_detail
    finally:
        _stop(proc)


def test_block_amplitudes_fit_short_blocks_over_half_a_cycle() -> None:
    plate = ShortBlockPlate(0.0)  # at rest: sensor noise only
    blocks = [plate.read_block() for _ in range(300)]
    singles = np.array([fit_block(b, 2000.0, 4096).peak_g for b in blocks])
    amps = block_amplitudes(blocks, 2000.0, 4096)
    assert amps.shape == (300,)
    assert float(amps[5:].max()) < 0.4 * float(singles.max())  # noise no longer amplified


def test_block_amplitudes_of_20_ms_blocks_are_single_block_fits() -> None:
    rng = np.random.default_rng(3)
    blocks = []
    for k in range(20):  # 20 ms blocks at 45 Hz: 0.9 cycles each, fitted alone as before
        phase = 2 * np.pi * 45.0 * np.arange(32 * k, 32 * k + 32) / 1600
        counts = np.round((1 + 0.3 * np.cos(phase) + 0.01 * rng.standard_normal(32)) * 4096)
        blocks.append(
            SampleBlock(
                32 * k, counts.astype(np.int16), counts / 4096, float(phase[0]), 45.0, 0.1, 0
            )
        )
    singles = [fit_block(b, 1600.0, 4096).peak_g for b in blocks]
    assert block_amplitudes(blocks, 1600.0, 4096).tolist() == singles
