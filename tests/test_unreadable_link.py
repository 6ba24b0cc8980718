"""A device that keeps sending what the host cannot read is told apart from a silent one.

Every stop is recorded with its true reason. A wrong baud rate, a noisy line or a device that
speaks something else sends plenty of bytes, yet every frame fails its CRC or COBS check, or is
well framed with a malformed payload: the host must say so ("bytes arrived but no usable
frame ... check the baud rate") instead of "no hello, is it powered?", and the loop must trip
``link_degraded`` with the counts instead of ``link_lost`` ("no samples"). A device that truly
goes quiet keeps the old message and ``link_lost``.

The plate is the simulator, reached through its real port; :class:`TamperedPort` spoils only
what the device sends to the host, from a plant time on (the host's commands still reach the
plate, so its soft stop is judged from the truth file as for every other trip).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

import firmware_bridge.client
from controller.calibration import Calibration, identify
from controller.loop import ExposureResult, ExposureSettings, ExposureStatus, run_exposure
from controller.openloop import drive_open_loop
from controller.safety import TRIP_TEXT, TripReason
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient
from firmware_bridge.codec import encode_frame
from firmware_bridge.errors import (
    HandshakeTimeoutError,
    HandshakeUnreadableError,
    LinkLostError,
    LinkUnreadableError,
)
from firmware_bridge.protocol import SAMPLE_INDEX_MAX, Samples
from firmware_bridge.sim.device import FULL_SCALE_SLEW_S
from firmware_bridge.transport import BAUD_RATE, open_port
from sessions.cli import main
from sessions.log import SessionStatus
from sessions.wording import TRIP_WORDING, say
from tests import test_fault_matrix as matrix
from tests.simhelpers import load_truth
from tests.test_fault_matrix import calibration_dir  # noqa: F401 (a fixture)

FS = 1600.0
N = 32
RAMP_UP_S = 0.5
HOLD_S = 3.0
# Plant time: boot (0.1 s) + handshake + the 0.5 s ramp + about 0.5 s of hold
SPOILED_AT_S = 1.2
# A real port's read waits up to its timeout for bytes; a spoiled stream is read about this
# often (so that 0.3 s of wall clock is some 60 blocks of plant time at speed=max, not 15 000)
SPOILED_READ_S = 0.005
MAX_SLEW_PER_SAMPLE = 1.0 / (FULL_SCALE_SLEW_S * FS)
STILL_G = 0.01


class TamperedPort:
    """A ``sim://`` plate's port whose device-to-host bytes turn bad at plant time ``from_s``.

    ``mode``: ``garbage`` (every byte but the delimiters changed: every frame fails COBS or
    CRC, as at a wrong baud rate), ``malformed`` (every frame replaced by a well-framed SAMPLES
    whose ``first_index`` runs past 2**63 - 1, which the host drops as malformed) or ``silent``
    (nothing arrives). Host-to-device bytes are untouched.
    """

    def __init__(self, url: str, mode: str, from_s: float = 0.0) -> None:
        self.inner = open_port(url)
        self.mode = mode
        self.from_s = from_s
        self._tail = bytearray()  # malformed: the start of a frame the next read finishes
        self._index = SAMPLE_INDEX_MAX + 1
        self.spoiled_bytes = 0

    # what DeviceClient and close_port use of a pyserial port
    @property
    def is_open(self) -> bool:
        return bool(self.inner.is_open)

    @property
    def timeout(self) -> float | None:
        return self.inner.timeout  # type: ignore[no-any-return]

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.inner.timeout = value

    @property
    def paced_by_reads(self) -> bool:
        return bool(self.inner.paced_by_reads)

    @property
    def in_waiting(self) -> int:
        return int(self.inner.in_waiting)

    def read(self, size: int = 1) -> bytes:
        return self._spoil(self.inner.read(size))

    def read_buffered(self) -> bytes:
        return self._spoil(self.inner.read_buffered())

    def write(self, data: bytes) -> int:
        return int(self.inner.write(data))

    def close(self) -> None:
        self.inner.close()

    def _spoil(self, data: bytes) -> bytes:
        if self.inner.device.time_s < self.from_s:
            return data
        time.sleep(SPOILED_READ_S)
        if self.mode == "silent":
            return b""
        if self.mode == "garbage":
            out = bytes(b if b in (0, 0x5A) else b ^ 0x5A for b in data)
        else:
            self._tail += data
            *frames, rest = bytes(self._tail).split(b"\0")
            self._tail[:] = rest
            out = b"".join(self._malformed(frame) for frame in frames if frame)
        self.spoiled_bytes += len(out)
        return out

    def _malformed(self, frame: bytes) -> bytes:
        """A well-framed SAMPLES frame of the plate's block length, past the host's range, in
        place of the device's ``frame`` (with its sequence number: no frame looks lost)."""
        raw = cobs.decode(frame)
        counts = np.zeros(N, dtype=np.int16)
        payload = Samples(self._index, 0, 45_000, 0, counts).pack()
        self._index += N
        return encode_frame(Samples.TYPE, raw[1] | raw[2] << 8, payload)


@pytest.fixture(scope="module")
def calibration() -> Iterator[Calibration]:
    """The empty plate at two frequencies around the exposure's 45 Hz."""
    with DeviceClient.open("sim://?mass=0&seed=1&speed=max") as device:
        yield identify(device, freqs_hz=(40.0, 50.0))


def connect(
    port: TamperedPort, hello_timeout_s: float = 5.0, url: str = "sim-tampered"
) -> DeviceClient:
    client = DeviceClient(port, url)  # type: ignore[arg-type]
    try:
        client.handshake(hello_timeout_s)
    except BaseException:
        client.close()
        raise
    return client


def expose(
    tmp_path: Path, calibration: Calibration, mode: str
) -> tuple[ExposureResult, TamperedPort, dict[str, np.ndarray]]:
    truth_path = tmp_path / "truth.npz"
    port = TamperedPort(f"sim://?mass=70&seed=2&speed=max&truth={truth_path}", mode, SPOILED_AT_S)
    settings = ExposureSettings(
        target_g=0.3,
        hold_s=HOLD_S,
        schedule=FrequencySchedule.fixed(45.0),
        ramp_up_s=RAMP_UP_S,
    )
    with connect(port) as device:
        result = run_exposure(device, calibration, settings)
    return result, port, load_truth(truth_path)


def assert_brought_down_softly(truth: dict[str, np.ndarray]) -> None:
    """Judged from truth: the drive was on when the link went bad, ended at zero by a ramp
    (never a cut), and the plate is still at the end of the record."""
    t, drive, accel = truth["t_s"], np.abs(truth["drive"]), truth["accel_g"]
    assert drive[t < SPOILED_AT_S][-1] > 0.05, "the drive was off before the link went bad"
    on = np.flatnonzero(drive > 1e-9)
    assert on[-1] + 1 < drive.size, "the drive was still on when the record ended"
    assert np.max(-np.diff(truth["drive"][t >= SPOILED_AT_S - 0.1])) <= MAX_SLEW_PER_SAMPLE + 1e-9
    zero_s = float(t[on[-1] + 1])
    assert np.max(np.abs(accel[t >= zero_s + 0.05])) < STILL_G


# ---- the handshake ----------------------------------------------------------------------------


def test_a_handshake_against_noise_names_the_bytes_and_the_damage() -> None:
    port = TamperedPort("sim://?speed=max", "garbage")
    with pytest.raises(HandshakeUnreadableError) as caught:
        connect(port, hello_timeout_s=0.5)
    exc = caught.value
    assert isinstance(exc, HandshakeTimeoutError)  # callers that catch the old one still do
    assert exc.activity is not None
    assert exc.activity.bytes_received == port.spoiled_bytes > 1000
    assert exc.activity.damaged_frames > 10
    assert exc.activity.usable_frames == 0
    text = str(exc)
    assert f"{exc.activity.bytes_received:,} bytes arrived" in text
    assert f"no usable frame ({exc.activity.damaged_frames:,} damaged" in text
    assert f"check the baud rate (the protocol's is {BAUD_RATE:,} baud" in text
    assert "is it powered" not in text
    assert not port.is_open


def test_a_handshake_against_malformed_frames_names_them() -> None:
    port = TamperedPort("sim://?speed=max", "malformed")
    with pytest.raises(HandshakeUnreadableError) as caught:
        connect(port, hello_timeout_s=0.5)
    activity = caught.value.activity
    assert activity is not None
    assert activity.damaged_frames == 0
    assert activity.malformed_frames == activity.frames > 10
    assert f"0 damaged, {activity.malformed_frames:,} well framed but malformed" in str(
        caught.value
    )


def test_a_handshake_against_silence_keeps_the_old_message() -> None:
    port = TamperedPort("sim://?speed=max", "silent")
    with pytest.raises(HandshakeTimeoutError) as caught:
        connect(port, hello_timeout_s=0.3)
    exc = caught.value
    assert type(exc) is HandshakeTimeoutError
    assert exc.activity is not None
    assert exc.activity.silent
    assert str(exc) == (
        "no hello from the device at 'sim-tampered' within 0.3 s "
        "(is it powered, is this the right port, is the firmware running?)"
    )


def test_the_cli_names_a_noisy_line_without_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``liv device drive`` on a plate whose every byte may be hit (the simulator's own
    ``corrupt_rate``, at its largest): one sentence naming what arrived, exit 1."""
    monkeypatch.setattr(firmware_bridge.client, "HELLO_TIMEOUT_S", 1.0)  # 5 s on a real port
    argv = ["device", "drive", "--engineer", "--device", "sim://?speed=max&corrupt_rate=0.5",
            "--freq", "45", "--drive", "0.1", "--seconds", "1"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(
        "liv: no hello from the device at 'sim://?speed=max&corrupt_rate=0.5' within 1 s: "
    )
    assert "bytes arrived in" in err
    assert "but no usable frame (" in err
    assert f"check the baud rate (the protocol's is {BAUD_RATE:,} baud" in err


# ---- the closed loop --------------------------------------------------------------------------


def test_a_device_that_turns_to_garbage_mid_hold_is_a_degraded_link(
    tmp_path: Path, calibration: Calibration
) -> None:
    result, _, truth = expose(tmp_path, calibration, "garbage")
    assert result.status is ExposureStatus.TRIPPED
    assert result.trip is not None
    assert result.trip.reason is TripReason.LINK_DEGRADED, result.trip.detail
    assert result.trip.t_s > RAMP_UP_S  # in the hold
    values = result.trip.values
    assert values["damaged_frames"] > 0
    assert values["bytes_received"] > 1000
    assert values["malformed_frames"] == 0
    assert result.trip.detail.startswith("no usable samples for 0.3 s although the device kept")
    assert f"{int(values['damaged_frames']):,} damaged" in result.trip.detail
    assert TRIP_WORDING[result.trip.reason.value] == TRIP_WORDING[TripReason.LINK_LOST.value]
    assert_brought_down_softly(truth)


def test_a_device_sending_only_malformed_samples_is_a_degraded_link(
    tmp_path: Path, calibration: Calibration
) -> None:
    result, _, truth = expose(tmp_path, calibration, "malformed")
    assert result.trip is not None
    assert result.trip.reason is TripReason.LINK_DEGRADED, result.trip.detail
    values = result.trip.values
    assert values["damaged_frames"] == 0
    assert values["malformed_frames"] > 5
    assert f"{int(values['malformed_frames']):,} well framed but malformed" in result.trip.detail
    # the stored text is true of it too: no frame was damaged nor lost, all were malformed
    assert "malformed" in result.trip.text, result.trip.text
    assert_brought_down_softly(truth)


def test_a_device_that_goes_silent_is_still_a_lost_link(
    tmp_path: Path, calibration: Calibration
) -> None:
    result, _, truth = expose(tmp_path, calibration, "silent")
    assert result.trip is not None
    assert result.trip.reason is TripReason.LINK_LOST
    assert result.trip.detail == "no samples for 0.3 s"
    assert result.trip.values == {}
    # the plate's own watchdog, or the host's ramp if it heard it, took the drive to zero
    drive = np.abs(truth["drive"])
    assert drive[truth["t_s"] < SPOILED_AT_S][-1] > 0.05
    assert drive[-1] == 0.0


# ---- the open loop (liv device drive) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "error"), [("garbage", LinkUnreadableError), ("silent", LinkLostError)]
)
def test_the_open_loop_gives_up_with_the_true_reason(mode: str, error: type[Exception]) -> None:
    port = TamperedPort("sim://?mass=70&seed=3&speed=max", mode, from_s=1.0)
    with connect(port) as device, pytest.raises(LinkLostError) as caught:
        drive_open_loop(device, 45.0, 0.1, 2.0, ramp_up_s=0.5, ramp_down_s=0.5)
    assert type(caught.value) is error
    if mode == "garbage":
        assert "although it kept sending" in str(caught.value)
        assert "damaged" in str(caught.value)
    else:
        # 0.3 s, not the open loop's 1 s: inside the plate's 0.5 s watchdog (test_short_watchdog)
        assert str(caught.value) == "link to the device lost: no samples from the device for 0.3 s"


# ---- a session (liv start) --------------------------------------------------------------------


def test_a_session_records_the_degraded_link_and_tells_the_patient_in_plain_words(
    tmp_path: Path,
    calibration_dir: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``liv start`` whose plate turns to noise at dose: recorded ``link_degraded`` with the
    counts; the patient reads the connection sentence, and no count."""

    def open_tampered(
        cls: type[DeviceClient], url: str, hello_timeout_s: float | None = None
    ) -> DeviceClient:
        return connect(TamperedPort(url, "garbage", matrix.FAULT_AT_S), url=url)

    monkeypatch.setattr(DeviceClient, "open", classmethod(open_tampered))
    home = matrix.make_home(tmp_path)
    truth_path = tmp_path / "truth.npz"
    code = matrix.liv_start(home, calibration_dir, matrix.sim_url(truth_path))
    out, err = capsys.readouterr()
    (rec,) = matrix.records(home)
    assert rec.status is SessionStatus.TRIPPED
    event = rec.safety_events[0]
    assert event["reason"] == TripReason.LINK_DEGRADED.value, event
    assert event["values"]["damaged_frames"] > 0
    assert rec.reason.startswith(f"{TRIP_TEXT[TripReason.LINK_DEGRADED]}: no usable samples")
    assert code == 1
    said = matrix.assert_one_sentence(out, err, say(TRIP_WORDING["link_degraded"]))
    assert "damaged" not in out + err
    assert "bytes" not in said
    truth = matrix.Truth.load(truth_path)
    assert truth.drive_at(matrix.FAULT_AT_S) > 0.0  # it hit a patient at dose
    matrix.assert_still_after(truth, truth.zero_drive_s)
