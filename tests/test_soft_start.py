"""The plate always starts softly: exposure time zero is the device's present when the output
came on, whatever its uptime or backlog; a jump in its sample clock is a trip, never dose.

Everything is judged from the simulator's truth file (true plate acceleration and commanded
drive), never from the controller's own estimate.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.calibration import Calibration, identify
from controller.law import ramp_profile
from controller.loop import ExposureResult, ExposureSettings, ExposureStatus, run_exposure
from controller.safety import SafetyLimits, SafetySupervisor, TripReason
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient, SampleBlock
from firmware_bridge.codec import FrameDecoder
from firmware_bridge.errors import UnknownUrlError
from firmware_bridge.protocol import Hello, Samples, decode_message
from firmware_bridge.sim.config import SimConfig, parse_sim_url
from firmware_bridge.sim.device import SimulatedDevice
from sessions.cli import main
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from tests.simhelpers import enrol_home, load_truth, sim_served, truth_envelope, write_signed

TARGET = 0.3
RAMP_UP_S = 2.0  # liv run and liv start
RAMP_DOWN_S = 1.0
UPTIME_S = 300.0  # the plate has been up for five minutes when the host connects
FS = 1600.0


@pytest.fixture(scope="module")
def empty_cal() -> Calibration:
    with DeviceClient.open("sim://?mass=0&seed=11") as dev:
        return identify(dev)


@dataclass(frozen=True)
class TrueRun:
    """What the plate really did, from the truth file: drive onset and the true envelope."""

    onset_s: float  # plant time of the first sample with a commanded drive
    onset_index: int  # that sample's index on the device's sample clock
    drive_on_s: float  # how long the commanded drive stayed above zero
    t_s: np.ndarray  # window centres, seconds after the onset
    env_g: np.ndarray  # true peak acceleration per 0.1 s window


def true_run(truth: dict[str, Any]) -> TrueRun:
    on = np.flatnonzero(truth["drive"] > 0.0)
    assert on.size, "the plate was never driven"
    t = truth["t_s"]
    onset = float(t[on[0]])
    since = t - onset
    centres, env = truth_envelope(truth, since, 0.0, float(since[-1]) - 0.1, 0.1)
    return TrueRun(onset, int(truth["sample_index"][on[0]]), float(t[on[-1]] - onset), centres, env)


def assert_soft_start_and_full_hold(truth: dict[str, Any], hold_s: float) -> TrueRun:
    """The true amplitude rises over the whole 2 s ramp and holds the target for ``hold_s``."""
    run = true_run(truth)
    env, t = run.env_g, run.t_s
    # soft: nowhere near the target in the first 0.3 s (the issue saw 0.28 g within 0.18 s)
    assert np.all(env[t < 0.3] < 0.1 * TARGET), env[t < 0.3]
    # rises over ~2 s, close to the raised-cosine ramp the host asks for (measured within 3% of
    # the target, 5% with 100 ms latency; 10% leaves room for a host stalled on a busy machine,
    # while a ramp compressed by a clock 0.5 s stale is off by 35%)
    expected = np.array([TARGET * ramp_profile(x, RAMP_UP_S, hold_s, RAMP_DOWN_S) for x in t])
    ramp = t < RAMP_UP_S
    assert np.all(np.abs(env[ramp] - expected[ramp]) < 0.1 * TARGET), env[ramp] - expected[ramp]
    first_90 = float(t[np.argmax(env >= 0.9 * TARGET)])
    assert 1.4 < first_90 < 2.3, first_90
    # the full hold: at the target (+/-5%) from 0.3 s after the ramp until the hold ends
    hold = (t > RAMP_UP_S + 0.3) & (t < RAMP_UP_S + hold_s - 0.05)
    assert np.all(np.abs(env[hold] / TARGET - 1.0) < 0.05), env[hold] / TARGET
    # and the drive was on for ramp + hold + ramp down, not less
    total = RAMP_UP_S + hold_s + RAMP_DOWN_S
    assert total - 0.1 < run.drive_on_s < total + 0.3, run.drive_on_s
    return run


def exposure(url: str, cal: Calibration, hold_s: float) -> ExposureResult:
    settings = ExposureSettings(
        target_g=TARGET, hold_s=hold_s, schedule=FrequencySchedule.fixed(45.0),
        ramp_up_s=RAMP_UP_S, ramp_down_s=RAMP_DOWN_S,
    )  # fmt: skip
    with DeviceClient.open(url) as dev:
        return run_exposure(dev, cal, settings)


# ---- the simulator: a device that has been up for a while -------------------------------------


def test_uptime_state_is_what_running_that_long_gives() -> None:
    """``uptime_s`` sets the state directly; it matches a device stepped through that time."""
    ran = SimulatedDevice(SimConfig(seed=3, coil_temp_c=60.0))
    while ran.time_s < 3.0 - 1e-9:
        ran.step()
    _drain(ran)
    jumped = SimulatedDevice(SimConfig(seed=3, coil_temp_c=60.0, uptime_s=3.0))
    assert jumped.time_s == pytest.approx(ran.time_s)
    assert jumped._sample_index == ran._sample_index == round((3.0 - 0.1) * FS)
    assert jumped._tx_seq == ran._tx_seq
    assert _turns_apart(jumped._phase_turns, ran._phase_turns) < 1e-9
    assert jumped.physics.coil_temperature_c == pytest.approx(
        ran.physics.coil_temperature_c, abs=0.05
    )
    assert jumped.physics.coil_temperature_c < 60.0  # it has cooled while idle
    # and the next block it streams continues that clock and phase
    jumped.step()
    ran.step()
    (mine,) = _messages(_drain(jumped))
    (theirs,) = _messages(_drain(ran))
    assert isinstance(mine, Samples)
    assert isinstance(theirs, Samples)
    assert mine.first_index == theirs.first_index
    assert _turns_apart(mine.phase_turns_q32 / 2**32, theirs.phase_turns_q32 / 2**32) < 1e-6


def test_an_uptime_device_answers_mid_stream_and_is_deterministic() -> None:
    def stream() -> bytes:
        device = SimulatedDevice(parse_sim_url(f"sim://?seed=4&uptime_s={UPTIME_S:g}"))
        device.receive(b"\x00")
        out = b""
        for _ in range(10):
            device.step()
            out += _drain(device)
        return out

    first = stream()
    assert first == stream()  # same seed, same bytes
    messages = _messages(first)
    samples = [m for m in messages if isinstance(m, Samples)]
    assert samples[0].first_index == round((UPTIME_S - 0.1) * FS)
    assert not any(isinstance(m, Hello) for m in messages)  # no boot: it is long up


def test_uptime_and_index_jump_keys_are_checked() -> None:
    assert parse_sim_url("sim://?uptime_s=60&index_jump_at=70").uptime_s == 60.0
    assert parse_sim_url("sim://?index_jump_samples=-320").index_jump_samples == -320
    for url, words in [
        ("sim://?uptime_s=-1", "uptime_s"),
        ("sim://?uptime_s=1e9", "uptime_s"),
        ("sim://?uptime_s=60&reset_at=10", "before uptime_s"),
        ("sim://?index_jump_samples=0", "index_jump_samples"),
        ("sim://?index_jump_samples=1.5", "whole number"),
    ]:
        with pytest.raises(UnknownUrlError, match=words):
            parse_sim_url(url)


# ---- time zero and the soft ramp, judged from truth ------------------------------------------


def test_soft_start_in_process_on_a_plate_up_for_minutes(
    tmp_path: Path, empty_cal: Calibration
) -> None:
    truth_path = tmp_path / "truth.npz"
    hold = 3.0
    result = exposure(
        f"sim://?speed=max&seed=5&uptime_s={UPTIME_S:g}&truth={truth_path}", empty_cal, hold
    )
    assert result.status is ExposureStatus.COMPLETED, result.trip
    truth = load_truth(truth_path)
    run = assert_soft_start_and_full_hold(truth, hold)
    assert run.onset_s > UPTIME_S
    # time zero is the device's present when the output came on: the drive starts within a
    # couple of blocks of it, not minutes later or earlier
    assert 0 <= run.onset_index - result.start_index <= 3 * 32, (
        run.onset_index, result.start_index,
    )  # fmt: skip
    assert result.held_s == pytest.approx(hold, abs=0.03)


def test_time_zero_ignores_a_stale_index_and_a_backlog(
    tmp_path: Path, empty_cal: Calibration
) -> None:
    """Indexes seen before the output came on (a slow link's round trips, a backlog) are past.

    With 100 ms each way, the commands before SET_OUTPUT on take most of a second to be
    answered: an index taken before them would skip much of the ramp.
    """
    truth_path = tmp_path / "truth.npz"
    settings = ExposureSettings(target_g=TARGET, hold_s=1.0, schedule=FrequencySchedule.fixed(45))
    url = f"sim://?speed=max&seed=6&uptime_s=60&latency_ms=100&truth={truth_path}"
    with DeviceClient.open(url) as dev:
        dev.read_for(0.5)
        stale = dev.sample_index
        for _ in range(40):  # 0.8 s of blocks wait, unread, before the exposure starts
            dev._pump()
        result = run_exposure(dev, empty_cal, settings)
    assert result.status is ExposureStatus.COMPLETED, result.trip
    assert result.start_index >= stale + round(0.8 * FS)
    run = assert_soft_start_and_full_hold(load_truth(truth_path), 1.0)
    # the drive starts a round trip after time zero (the host answers the first block)
    assert 0 < run.onset_index - result.start_index <= round(0.3 * FS)


@contextlib.contextmanager
def served(where: list[str], truth_path: Path, linger_s: float) -> Iterator[str]:
    """``liv sim serve`` in its own process, up for minutes and left alone for ``linger_s``."""
    url = f"sim://?seed=8&uptime_s={UPTIME_S:g}&truth={truth_path}"
    with sim_served(where, url) as address:
        assert address, "the server printed no address"
        time.sleep(linger_s)  # nobody connected: a pty fills with old samples meanwhile
        yield address


@pytest.mark.parametrize("where", [["--pty"], ["--tcp", "127.0.0.1:0"]], ids=["pty", "tcp"])
def test_soft_start_over_a_served_plate_up_for_minutes(
    tmp_path: Path, empty_cal: Calibration, where: list[str]
) -> None:
    truth_path = tmp_path / "truth.npz"
    hold = 1.5
    with served(where, truth_path, linger_s=1.5) as address:
        result = exposure(address, empty_cal, hold)
    assert result.status is ExposureStatus.COMPLETED, result.trip
    run = assert_soft_start_and_full_hold(load_truth(truth_path), hold)
    assert run.onset_s > UPTIME_S + 1.5
    assert 0 <= run.onset_index - result.start_index <= round(0.3 * FS)
    assert result.held_s == pytest.approx(hold, abs=0.05)


# ---- a sample index that jumps -----------------------------------------------------------------


def _block(first_index: int, n: int = 32) -> SampleBlock:
    counts = np.full(n, 256, dtype=np.int16)
    return SampleBlock(first_index, counts, counts / 256.0, 0.0, 30.0, 0.0, 0)


def test_small_gaps_pass_and_jumps_or_steps_back_trip() -> None:
    sup = SafetySupervisor(SafetyLimits(), FS, 32)
    assert sup.check_index(0.0, _block(0)) is None
    assert sup.check_index(0.02, _block(32)) is None
    assert sup.check_index(0.04, _block(96)) is None  # one frame lost on a noisy link
    assert sup.check_index(0.06, _block(128 + 160)) is None  # a burst of five: 0.1 s
    trip = sup.check_index(0.08, _block(320 + 192))  # six blocks missing
    assert trip is not None
    assert trip.reason is TripReason.SAMPLE_INDEX_JUMP
    assert trip.values["jump_samples"] == 192
    back = SafetySupervisor(SafetyLimits(), FS, 32)
    back.check_index(0.0, _block(6400))
    trip = back.check_index(0.02, _block(6400))  # the same block again: the clock went back
    assert trip is not None
    assert trip.reason is TripReason.SAMPLE_INDEX_JUMP
    assert "back" in trip.detail
    assert trip.text


@pytest.mark.parametrize("jump", [16000, -3200])
def test_an_index_jump_trips_and_is_not_held_time(
    tmp_path: Path, empty_cal: Calibration, jump: int
) -> None:
    truth_path = tmp_path / "truth.npz"
    settings = ExposureSettings(target_g=TARGET, hold_s=6.0, schedule=FrequencySchedule.fixed(45))
    url = f"sim://?speed=max&seed=5&index_jump_at=4&index_jump_samples={jump}&truth={truth_path}"
    with DeviceClient.open(url) as dev:
        result = run_exposure(dev, empty_cal, settings)
    assert result.status is ExposureStatus.TRIPPED
    assert result.trip is not None
    assert result.trip.reason is TripReason.SAMPLE_INDEX_JUMP
    truth = load_truth(truth_path)
    run = true_run(truth)
    jump_s = 4.0 - run.onset_s  # plant time of the jump, from the drive's onset
    # held only up to the jump (the hold began 2 s into the exposure)
    assert result.held_s == pytest.approx(jump_s - RAMP_UP_S, abs=0.1)
    assert result.trip.t_s < 4.0
    # the plate really stopped right after it: no drive 0.5 s after the jump
    assert run.drive_on_s < jump_s + 0.5


def test_an_index_jump_in_the_ramp_is_not_ramp_progress(
    tmp_path: Path, empty_cal: Calibration
) -> None:
    truth_path = tmp_path / "truth.npz"
    settings = ExposureSettings(target_g=TARGET, hold_s=2.0, schedule=FrequencySchedule.fixed(45))
    url = f"sim://?speed=max&seed=5&index_jump_at=1.1&index_jump_samples=1600&truth={truth_path}"
    with DeviceClient.open(url) as dev:
        result = run_exposure(dev, empty_cal, settings)
    assert result.trip is not None
    assert result.trip.reason is TripReason.SAMPLE_INDEX_JUMP
    run = true_run(load_truth(truth_path))
    # about halfway up the ramp when the clock jumped; the plate never got beyond that
    assert run.env_g.max() < 0.6 * TARGET, run.env_g.max()


def test_a_session_with_an_index_jump_logs_only_true_minutes_at_dose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``liv start``: a jump of two minutes is never credited; the record says why it stopped."""
    home = LivHome(tmp_path / "home")
    home.ensure()
    today = datetime.now(UTC).date()
    write_signed(
        tmp_path / "p.yaml",
        "patient_id: P-0001\ntarget_g: 0.3\nfrequency_hz: 45\nminutes_per_session: 1\n"
        "sessions_per_day: 2\nmin_gap_hours: 3\n"
        f"study_start: {(today - timedelta(days=3)).isoformat()}\n"
        f"study_end: {(today + timedelta(days=30)).isoformat()}\ntimezone: UTC\n",
    )
    enrol_home(home).install_protocol(tmp_path / "p.yaml")
    with DeviceClient.open("sim://?mass=0&seed=1") as dev:
        home.calibrations().save(identify(dev))
    truth_path = tmp_path / "truth.npz"
    url = f"sim://?mass=70&seed=4&index_jump_at=20&index_jump_samples=192000&truth={truth_path}"
    assert main(["start", "--device", url, "--home", str(home.root)]) == 1
    assert "stopped itself for safety" in capsys.readouterr().out
    with SessionLog(home.db_path()) as log:
        (rec,) = log.sessions()
    assert rec.status is SessionStatus.TRIPPED
    assert rec.safety_events[0]["reason"] == "sample_index_jump"
    assert "sample clock jumped" in rec.reason
    # minutes at dose: no more than the plate truly held the dose before the jump
    truth = load_truth(truth_path)
    run = true_run(truth)
    at_dose_s = 0.1 * np.count_nonzero(np.abs(run.env_g / TARGET - 1.0) <= 0.05)
    assert 0.0 < rec.minutes_at_dose * 60.0 <= at_dose_s + 0.5, (rec.minutes_at_dose, at_dose_s)
    assert rec.minutes_at_dose < 0.5


def _turns_apart(a: float, b: float) -> float:
    return abs((a - b + 0.5) % 1.0 - 0.5)


def _drain(device: SimulatedDevice) -> bytes:
    """Everything the device has queued, whether or not it has reached the host yet."""
    out = b"".join(chunk for _, chunk in device._outbox)
    device._outbox.clear()
    return out


def _messages(data: bytes) -> list[Any]:
    return [decode_message(frame) for frame in FrameDecoder().feed(data)]
