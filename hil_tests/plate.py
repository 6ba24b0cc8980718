"""What the qualification tests share: driving the plate safely and reading its sensor.

Everything is judged from what any plate provides, the SAMPLES stream (accelerometer counts,
drive phase, reported drive) and the device's answers; nothing here reads a simulator's truth.
Time is the device's sample clock unless a name says ``wall``.
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import NoReturn

import numpy as np
import pytest

from controller.estimation import FloatArray, SineFit, block_phases, fit_sine, whole_cycle_length
from controller.safety import SafetyLimits
from firmware_bridge.client import DeviceClient, SampleBlock
from firmware_bridge.codec import FrameDecoder
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.errors import BridgeError, CommandRefusedError, DeviceFaultError, ProtocolError
from firmware_bridge.protocol import (
    DeviceState,
    Fault,
    Message,
    NakReason,
    Samples,
    decode_message,
    drive_to_q16,
    ramp_samples,
    round_half_up,
)
from hil_tests.report import QualificationReport

log = logging.getLogger(__name__)

Q16_LSB = 1.0 / 65535.0
# Guard while the suite drives a plate open loop: the product's own safety ceiling. A plate that
# answers a test drive with more than this is too lively for the test, and the test stops.
GUARD_G = SafetyLimits().ceiling_g


NOT_APPLICABLE = "not applicable: "


def not_applicable(reason: str) -> NoReturn:
    """Skip a check that does not apply to this plate (it does not make the run incomplete)."""
    pytest.skip(NOT_APPLICABLE + reason)


class PlateGuardError(AssertionError):
    """The plate moved more than the suite allows for an open-loop test drive."""


def is_simulator_url(url: str) -> bool:
    """True for an in-process simulated plate (``sim://``), the only URL that needs no opt-in."""
    return url.startswith("sim://")


def nak_name(code: int) -> str:
    """NAK reason code as its protocol name (or the number, for a code this protocol lacks)."""
    try:
        return NakReason(code).name
    except ValueError:
        return f"reason {code}"


def block_s(device: DeviceClient) -> float:
    return device.info.block_samples / device.info.sample_rate_hz


def slew_per_block(device: DeviceClient) -> float:
    """Largest change of the reported drive between consecutive blocks the slew limit allows.

    The slew limit is the one the device announces in HELLO (``slew_full_scale_ms``).
    """
    return block_s(device) / device.info.full_scale_slew_s


def slew_note(device: DeviceClient) -> str:
    return f"slew limit announced in HELLO: full scale in {device.info.full_scale_slew_s:g} s"


def refusal_name(exc: CommandRefusedError | DeviceFaultError) -> str:
    """How the device answered a refused command: its NAK reason by name.

    The client reports a NAK FAULT_LATCHED as the latched fault itself (``DeviceFaultError``
    with ``refused_command`` set), so that it reaches people with its code and text.
    """
    if isinstance(exc, DeviceFaultError):
        if exc.refused_command is None:
            return f"fault {exc.code} reported, no refusal"
        return NakReason.FAULT_LATCHED.name
    return nak_name(exc.reason_code)


# ---- fits ------------------------------------------------------------------------------------


def fit_block(block: SampleBlock | Samples, sample_rate_hz: float, counts_per_g: int) -> SineFit:
    """Sine fit of one block (20 ms on the reference plate) at the drive phase it reports."""
    accel = block.counts.astype(np.float64) / counts_per_g
    phase = block_phases(block.phase_rad, block.freq_hz, accel.size, sample_rate_hz)
    return fit_sine(accel, phase)


# A fit over less than this much of a drive cycle cannot tell the sine from the gravity offset
# fitted with it: a short block is fitted together with the contiguous blocks before it.
MIN_FIT_CYCLES = 0.5


def block_amplitudes(
    blocks: Sequence[SampleBlock | Samples], sample_rate_hz: float, counts_per_g: int
) -> FloatArray:
    """Fitted peak acceleration (g) of each block, shape (len(blocks),).

    A block that spans at least MIN_FIT_CYCLES of its drive cycle is fitted alone (every
    block of the reference plate, 20 ms, at 25 Hz and above); a shorter one (3.5 ms blocks at
    2000 Hz) together with the contiguous blocks before it in ``blocks`` until they span that
    much, so that sensor noise is not amplified into amplitude (docs/hil.md 5).
    """
    amps = np.empty(len(blocks))
    for j, block in enumerate(blocks):
        span = MIN_FIT_CYCLES * sample_rate_hz / block.freq_hz if block.freq_hz > 0 else 0.0
        first = j
        held = block.counts.size
        while held < span and first > 0:
            before, after = blocks[first - 1], blocks[first]
            if before.first_index + before.counts.size != after.first_index:
                break
            first -= 1
            held += before.counts.size
        if first == j:
            amps[j] = fit_block(block, sample_rate_hz, counts_per_g).peak_g
            continue
        part = blocks[first : j + 1]
        accel = np.concatenate([b.counts.astype(np.float64) for b in part]) / counts_per_g
        phase = np.concatenate(
            [block_phases(b.phase_rad, b.freq_hz, b.counts.size, sample_rate_hz) for b in part]
        )
        amps[j] = fit_sine(accel, phase).peak_g
    return amps


def fit_whole_cycles(blocks: Sequence[SampleBlock], sample_rate_hz: float) -> SineFit:
    """Sine fit over the last whole number of drive cycles in ``blocks`` (one frequency)."""
    accel = np.concatenate([b.accel_g for b in blocks])
    phase = np.concatenate(
        [block_phases(b.phase_rad, b.freq_hz, b.counts.size, sample_rate_hz) for b in blocks]
    )
    n = whole_cycle_length(accel.size, blocks[-1].freq_hz, sample_rate_hz)
    return fit_sine(accel[-n:], phase[-n:])


def max_drive_step(blocks: Sequence[SampleBlock | Samples]) -> float:
    """Largest change of the reported drive between consecutive contiguous blocks."""
    steps = [
        abs(b.drive - a.drive)
        for a, b in itertools.pairwise(blocks)
        if b.first_index == a.first_index + a.counts.size
    ]
    return max(steps, default=0.0)


@dataclass(frozen=True)
class NoiseFloor:
    """Per-block fitted amplitude of the plate at rest, at the frequency a test will drive."""

    max_g: float
    median_g: float
    count_g: float  # one accelerometer count

    @property
    def level_g(self) -> float:
        """The most a block may show and still count as "at noise level".

        Twice the largest amplitude seen at rest: at rest the per-block fit is
        Rayleigh-distributed, and twice the maximum of 25 blocks is about 5 of its scale
        parameters, which a quiet block exceeds with probability ~4e-6. At least two counts:
        a sensor quieter than one count reads a constant at rest, and a single count of
        flicker must not count as motion.
        """
        return max(2.0 * self.max_g, 2.0 * self.count_g)


def measure_noise_floor(device: DeviceClient, freq_hz: float, seconds: float = 0.5) -> NoiseFloor:
    """Fit the resting plate block by block at ``freq_hz`` (the output must be off)."""
    info = device.info
    device.set_frequency(freq_hz)
    device.read_for(2 * block_s(device))  # the new frequency takes effect at a block boundary
    blocks = device.read_for(seconds)
    amps = block_amplitudes(blocks, info.sample_rate_hz, info.counts_per_g)
    return NoiseFloor(
        max_g=float(amps.max()), median_g=float(np.median(amps)), count_g=1.0 / info.counts_per_g
    )


# ---- driving safely --------------------------------------------------------------------------


def stop_safely(device: DeviceClient, ramp_s: float = 0.2) -> None:
    """Ramp the drive to zero over ``ramp_s`` while feeding the link, then switch off.

    Never raises for a refusal or a fault (the drive may already be off, or a fault latched,
    which the firmware ramps down by itself); a dead link is logged and left to the firmware's
    watchdog.
    """
    try:
        device.set_drive(0.0, ramp_s, wait=False)
        end = device.sample_index + round(
            (ramp_s + 2 * block_s(device)) * device.info.sample_rate_hz
        )
        deadline = time.monotonic() + ramp_s + 5.0
        while device.sample_index < end and time.monotonic() < deadline:
            try:
                if device.read_block(timeout_s=0.5) is None:
                    break
            except (CommandRefusedError, DeviceFaultError):
                continue  # zero drive refused (output off, fault latched): it is stopping anyway
        for _ in range(3):  # a late NAK of the zero-drive request surfaces here: send again
            try:
                device.stop_output(wait=True)
                break
            except CommandRefusedError as exc:
                if exc.command == "SetOutput":
                    raise
        # SET_OUTPUT off is ACKed while the device still ramps (STOPPING, up to the HELLO's
        # stop ramp): the next test or connection must find it IDLE, not refused BUSY.
        status = device.wait_while_stopping()
        if status.state == DeviceState.STOPPING:
            log.warning(
                "the plate was still STOPPING %g s after SET_OUTPUT off", device.info.stop_ramp_s
            )
    except BridgeError as exc:
        log.warning("could not stop the plate cleanly (%s); the firmware watchdog will", exc)


@contextmanager
def output_on(device: DeviceClient, freq_hz: float) -> Iterator[None]:
    """Output on at ``freq_hz`` (zero amplitude) for the body; always ramped down and off after."""
    device.set_frequency(freq_hz)
    try:
        device.start_output()
        yield
    finally:
        stop_safely(device)


class _GuardWindow:
    """The trailing blocks of one plate's stream that the open-loop guard fits together.

    A fit of less than one drive cycle is ill-conditioned (the sine and the gravity offset it
    fits alongside look alike over a fraction of a cycle): on 3.5 ms blocks (7 samples at
    2000 Hz) a true 0.43 g reads up to 0.5 g. The guard therefore fits the contiguous blocks
    that span at least one whole cycle of the newest block's frequency (docs/hil.md). The window
    lasts across calls of :func:`read_guarded` on one client and restarts where the stream is
    not contiguous.
    """

    def __init__(self) -> None:
        self.blocks: deque[SampleBlock] = deque()

    def push(self, block: SampleBlock, sample_rate_hz: float) -> SineFit | None:
        """Add ``block``; the fit of the newest whole cycles, or None before one cycle is read."""
        blocks = self.blocks
        if blocks and (
            block.missing_before
            or block.first_index != blocks[-1].first_index + blocks[-1].counts.size
        ):
            blocks.clear()
        blocks.append(block)
        cycle = sample_rate_hz / block.freq_hz if block.freq_hz > 0 else float("inf")
        held = sum(b.counts.size for b in blocks)
        while blocks and held - blocks[0].counts.size >= cycle:
            held -= blocks.popleft().counts.size
        if held < cycle:
            return None
        return fit_whole_cycles(list(blocks), sample_rate_hz)


_guard_windows: weakref.WeakKeyDictionary[DeviceClient, _GuardWindow] = weakref.WeakKeyDictionary()


def read_guarded(
    device: DeviceClient,
    seconds: float,
    guard_g: float = GUARD_G,
    *,
    until_index: int | None = None,
) -> list[SampleBlock]:
    """``read_for`` that stops the test if the plate's fitted amplitude exceeds ``guard_g``.

    The amplitude is fitted over the newest whole drive cycle (the blocks that span it), at
    every block from the first whole cycle read on (:class:`_GuardWindow`): a block shorter than
    a cycle is never judged alone. Reads until a block it has returned ends ``seconds`` of the
    device's clock past the index decoded when called (or at ``until_index``). Progress is
    judged by the blocks read, never by ``device.sample_index``: a host that stalled decodes
    many frames at once, and the index decoded runs ahead of what has been read.
    """
    info = device.info
    blocks: list[SampleBlock] = []
    if until_index is None:
        if seconds <= 0.0:
            return blocks
        end = device.sample_index + round(seconds * info.sample_rate_hz)
    else:
        end = until_index
    window = _guard_windows.setdefault(device, _GuardWindow())
    reached = -1
    while reached < end:
        block = device.read_block(timeout_s=1.0)
        if block is None:
            raise AssertionError("the plate stopped streaming samples")
        blocks.append(block)
        reached = block.first_index + block.counts.size
        fit = window.push(block, info.sample_rate_hz)
        if fit is not None and fit.peak_g > guard_g:
            raise PlateGuardError(
                f"{fit.peak_g:.3f} g over the last drive cycle at drive {block.drive:.3f}: above "
                f"the {guard_g:g} g guard for an open-loop test drive; the test stops the plate"
            )
    return blocks


def drain(device: DeviceClient) -> list[SampleBlock]:
    """Blocks the client has already decoded but nobody has read yet."""
    return device.take_queued()


@dataclass
class SilentRecord:
    """What the device sent while the host listened without sending anything."""

    messages: list[Message] = field(default_factory=list)
    malformed: int = 0
    wall_s: float = 0.0

    @property
    def samples(self) -> list[Samples]:
        return [m for m in self.messages if isinstance(m, Samples)]


def listen_silently(
    device: DeviceClient, seconds: float, wall_limit_s: float = 10.0
) -> SilentRecord:
    """Read the raw port for ``seconds`` of device time, sending nothing at all.

    The client is bypassed (it would send heartbeats); frames are decoded with a fresh
    decoder, so a frame the client had half read is dropped. Stops after ``wall_limit_s`` of
    wall time in any case (a device that stopped streaming).
    """
    decoder = FrameDecoder()
    fs = device.info.sample_rate_hz
    record = SilentRecord()
    received = 0
    started = time.monotonic()
    while received < seconds * fs:
        if time.monotonic() - started > wall_limit_s:
            break
        for frame in decoder.feed(device.port.read(4096)):
            try:
                message = decode_message(frame)
            except ProtocolError:
                record.malformed += 1
                continue
            record.messages.append(message)
            if isinstance(message, Samples):
                received += message.counts.size
    record.wall_s = time.monotonic() - started
    return record


@dataclass
class Silence:
    """The host's last frame and what the device sent after it."""

    silent_from: int  # the boundary (sample index) at which the device handled the last frame
    samples: list[SampleBlock | Samples]  # every block after that, in order
    faults: list[Fault]
    record: SilentRecord


def go_silent(device: DeviceClient, seconds: float) -> Silence:
    """Send one last frame, a STATUS_REQUEST, then listen for ``seconds`` sending nothing.

    The STATUS answer's ``sample_index`` is the boundary at which the device handled that
    frame (docs/protocol.md 9.2). It is taken from there, not from where the answer sits in the
    stream: the order of a finished block's SAMPLES and a boundary's replies is left open.
    """
    silent_from = device.request_status().sample_index
    tail: list[SampleBlock | Samples] = list(drain(device))  # decoded while waiting for STATUS
    record = listen_silently(device, seconds)
    faults = [m for m in record.messages if isinstance(m, Fault)]
    return Silence(silent_from, [*tail, *record.samples], faults, record)


class StreamTap:
    """Records every block a caller (e.g. ``run_exposure``) reads from ``device``.

    The controller reads the stream itself and hands no blocks out; the tap wraps the client's
    ``read_block`` for the duration of a ``with`` block, so the suite can judge the same
    accelerometer samples independently.
    """

    def __init__(self, device: DeviceClient) -> None:
        self.device = device
        self.blocks: list[SampleBlock] = []
        self._read: Callable[..., SampleBlock | None] = device.read_block

    def _recording_read(self, timeout_s: float = 1.0) -> SampleBlock | None:
        block = self._read(timeout_s)
        if block is not None:
            self.blocks.append(block)
        return block

    def __enter__(self) -> StreamTap:
        self.device.read_block = self._recording_read  # type: ignore[method-assign]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        del self.device.read_block


PROBE_DRIVE = 0.02  # a small drive that measures the plate's response (0.08 g empty, 3.9 g/unit)
PROBE_RAMP_S = 0.2  # the probe's ramp up
PROBE_SETTLE_S = 0.1  # after the ramp: the plate's suspension settles before the fit starts
PROBE_FIT_S = 0.1  # samples fitted, all after the ramp and the settling


def ramp_end_index(
    device: DeviceClient, blocks: Sequence[SampleBlock], target: float, ramp_s: float
) -> int:
    """The sample index where a ramp from zero to ``target`` ended.

    Judged by sample index from what every plate reports: the block starting at the ramp's
    boundary still reports its first sample at the old amplitude, zero (docs/protocol.md 9.4),
    and the ramp lasts the ``ramp_samples`` of section 9.4 from there. Holds for any block
    length, including blocks longer than the ramp. ``blocks`` must reach past the boundary.
    """
    info = device.info
    rising = [i for i, b in enumerate(blocks) if b.drive > 0.0]
    if not rising or rising[0] == 0:
        raise AssertionError("no block at zero drive before the ramp: its start is unknown")
    start = blocks[rising[0] - 1].first_index
    n = ramp_samples(
        drive_to_q16(target),
        round_half_up(ramp_s * 1000.0),
        info.sample_rate_hz,
        round_half_up(info.full_scale_slew_s * 1000.0),
    )
    return start + n


def drive_and_settle(device: DeviceClient, target: float, ramp_s: float) -> list[SampleBlock]:
    """Ramp the drive from zero to ``target``; return the settled blocks after the ramp.

    The output must be on at zero drive. Returns only the blocks that start at least
    ``PROBE_SETTLE_S`` after the ramp ended (by sample index, ``ramp_end_index``), at least
    ``PROBE_FIT_S`` of them, so a plate whose blocks are long (50 ms) is never judged partly
    during its ramp, whatever its block length.
    """
    info = device.info
    fs = info.sample_rate_hz
    device.set_drive(target, ramp_s)
    blocks = read_guarded(device, ramp_s + 2 * block_s(device))
    ramp_end = ramp_end_index(device, blocks, target, ramp_s)
    fit_from = ramp_end + round(PROBE_SETTLE_S * fs)
    # the first block that starts at fit_from or later may start up to a block after it
    wanted = fit_from + info.block_samples + round(PROBE_FIT_S * fs)
    if blocks[-1].first_index + blocks[-1].counts.size < wanted:
        blocks += read_guarded(device, 0.0, until_index=wanted)
    settled = [b for b in blocks if b.first_index >= fit_from]
    if not settled:
        raise AssertionError(f"no block read from sample {fit_from} on, after the drive's ramp")
    return settled


def probe_response(device: DeviceClient) -> float:
    """g per unit drive at the present frequency: a small drive, fitted once settled."""
    settled = drive_and_settle(device, PROBE_DRIVE, PROBE_RAMP_S)
    return fit_whole_cycles(settled, device.info.sample_rate_hz).peak_g / PROBE_DRIVE


def drive_within_dose(
    device: DeviceClient,
    freq_hz: float,
    wanted: float,
    qualification: QualificationReport,
    tag: str,
) -> tuple[float, float]:
    """The test drive: ``wanted``, lowered so this plate stays within the dose limits.

    The suite runs against any plate, so the amplitude a drive gives is measured, not assumed:
    a small probe drive at ``freq_hz`` gives g per unit drive, and the drive may reach at most
    the dose limits' highest target under the ceiling the plate announces in HELLO (and the
    suite's open-loop guard). Returns (drive, that highest amplitude in g).
    """
    info = device.info
    allowed_g = DOSE_LIMITS.highest_target_g(min(info.ceiling_g, GUARD_G))
    with output_on(device, freq_hz):
        response_g = probe_response(device)
    drive = min(wanted, info.max_drive, allowed_g / max(response_g, 1e-6))
    qualification.info(
        f"{tag}.test_drive",
        f"test drive: {response_g:.2f} g per unit drive at {freq_hz:g} Hz, at most "
        f"{allowed_g:.3f} g",
        round(drive, 4),
    )
    return drive, allowed_g
