"""The closed loop: one control update per sample block, on the device's sample clock.

Nothing here sleeps: the loop waits only for the next block from the device, so it runs in
real time on a real plate and as fast as the simulator allows on ``sim://?speed=max``. Commands
go out without waiting for their ACK (a NAK comes back as an exception on a later read), so a
slow answer never holds up the next update or the heartbeat. Time is the device's sample index;
``timer`` (injected) only measures how long the host takes per update.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np

from controller.calibration import Calibration
from controller.estimation import AmplitudeEstimator
from controller.exposure import ExposureFigures, ExposureMeter
from controller.law import AmplitudeLaw, LawSettings, ramp_profile
from controller.presence import (
    LoadState,
    PresenceDetector,
    PresenceSummary,
    response_over_empty,
)
from controller.safety import (
    TRIP_RAMP_S,
    SafetyLimits,
    SafetySupervisor,
    SafetyTrip,
    TripReason,
    samples_wait_s,
    trip_from_exception,
)
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient, SampleBlock
from firmware_bridge.dose_limits import DOSE_LIMITS, DoseLimitError
from firmware_bridge.errors import (
    BridgeError,
    CommandRefusedError,
    CommandTimeoutError,
    CommandUnreadableError,
    DeviceFaultError,
    DeviceResetError,
    LinkLostError,
    LinkUnreadableError,
)
from firmware_bridge.realtime import single_threaded_numerics

log = logging.getLogger(__name__)

SETTLE_BAND = 0.02  # "settled" means within +/-2% of target ...
# ... widened by this many of the estimate's repeated rounding error (a coarse sensor: the
# estimate at a steady plate is off by that much, window after window; 0 for a fine sensor)
SETTLE_ROUNDING_COVERAGE = 1.0
FREQ_RESOLUTION_HZ = 0.05  # schedule changes smaller than this are not sent
FREQ_STEP_HZ = 1.0  # a change this large pauses learning for one window (sweeps move less)
DRIVE_RESOLUTION = 2e-4  # drive changes smaller than this are not sent (0.05% of 0.4)
# A soft stop waits for a block at drive 0 at most this long past the ramp (plate time): the
# command's way to the plate and a round trip of the link
STOP_MARGIN_S = 0.3
# ... reading blocks meanwhile, each waited for at most this long (shortened for a plate with a
# short watchdog, as every wait for samples with the output on: controller.safety.samples_wait_s)
STOP_READ_S = 0.5
COIL_TEMP_POLL_S = 2.0  # STATUS (coil temperature, for presence detection) this often
STALE_RATIO = 1.1  # response above the empty-plate calibration by this: calibration is stale
STALE_HOLD_S = 1.0
ACCURACY_WINDOW_S = 1.0  # the result's error figures: independent fits over 1-s windows ...
ACCURACY_COVERAGE = 2.0  # ... each counted as |error| + this many standard uncertainties
HISTORY_COLUMNS = ("t_s", "setpoint_g", "measured_g", "drive", "freq_hz", "ratio")


class ExposureStatus(enum.StrEnum):
    COMPLETED = "completed"
    TRIPPED = "tripped"
    STOPPED_BY_USER = "stopped_by_user"


class Phase(enum.StrEnum):
    RAMP_UP = "ramping up"
    HOLD = "holding"
    RAMP_DOWN = "ramping down"


@dataclass(frozen=True)
class ExposureSettings:
    """One closed-loop exposure: what to hold, for how long, how softly, within what limits."""

    target_g: float = 0.3
    hold_s: float = 60.0
    schedule: FrequencySchedule = field(default_factory=lambda: FrequencySchedule.fixed(30.0))
    ramp_up_s: float = 2.0
    ramp_down_s: float = 1.0
    window_s: float = 0.1
    law: LawSettings = field(default_factory=LawSettings)
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    measure_exposure: bool = False  # ISO 2631-1 a_w, A(8), VDV from the sensor stream

    def __post_init__(self) -> None:
        # The dose limits (firmware_bridge/dose_limits.py): the target's allowed overshoot must
        # stay below the supervisor's ceiling with the trip margin to spare, and every frequency
        # must lie in the therapy band. Every protocol the parser accepts passes both.
        ceiling_g = self.limits.ceiling_g
        highest_g = DOSE_LIMITS.highest_target_g(ceiling_g)
        if not (math.isfinite(self.target_g) and 0.0 < self.target_g <= highest_g):
            raise DoseLimitError(
                f"target {self.target_g:g} g is not allowed: it must be above 0 and at most "
                f"{highest_g:.3f} g, so that the controller's "
                f"{100 * DOSE_LIMITS.control_overshoot_fraction:g}% overshoot and a "
                f"{100 * DOSE_LIMITS.trip_margin_fraction:g}% margin stay below the safety "
                f"ceiling {ceiling_g:g} g"
            )
        band = DOSE_LIMITS.frequency_hz
        for freq_hz in self.schedule.span_hz:
            if not band.holds(freq_hz):
                raise DoseLimitError(
                    f"frequency {freq_hz:g} Hz is not allowed: it is outside the therapy's "
                    f"{band.describe()} Hz (the dose limits)"
                )
        if not (0.0 < self.hold_s <= 4 * 3600.0):
            raise ValueError(f"hold time {self.hold_s:g} s is not allowed: use 0-14400 s")
        for name in ("ramp_up_s", "ramp_down_s"):
            if not 0.1 <= getattr(self, name) <= 30.0:
                raise ValueError(f"{name} {getattr(self, name):g} s is not allowed: use 0.1-30 s")

    @property
    def total_s(self) -> float:
        return self.ramp_up_s + self.hold_s + self.ramp_down_s


class ControlUpdate(NamedTuple):
    """What the loop did for one block (for progress displays and logs).

    A named tuple (immutable, made once per block): a frozen dataclass's ``__init__`` sets each
    of its nine fields through ``object.__setattr__``, about four times the cost.
    """

    t_s: float
    phase: Phase
    freq_hz: float
    setpoint_g: float
    measured_g: float | None
    drive: float
    response_ratio: float
    load: LoadState
    compute_s: float


@dataclass
class ExposureResult:
    status: ExposureStatus
    trip: SafetyTrip | None
    device_id: str
    target_g: float
    schedule: str
    hold_s_requested: float
    start_index: int = 0  # device sample index at exposure time 0
    held_s: float = 0.0
    settling_time_s: float | None = None
    error_mean_pct: float | None = None
    error_p95_abs_pct: float | None = None
    error_uncertainty_pct: float | None = None
    unloaded_s: float = 0.0
    unload_detectable: bool | None = None
    presence: PresenceSummary | None = None  # what presence detection could and could not see
    response_ratio: float = 1.0
    calibration_stale: bool = False
    compute_median_us: float = 0.0
    compute_p99_us: float = 0.0
    exposure: ExposureFigures | None = None
    frames: int = 0
    crc_errors: int = 0
    lost_frames: int = 0
    # A fault the plate reported while the host brought it down (after the exposure ended)
    stop_fault: SafetyTrip | None = None
    history: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def to_dict(self, with_history: bool = False) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: that deep-copies the history (one float per
        # block and column: 180,000 copies for a 10-minute run) only to drop it.
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "history"}
        data["status"] = self.status.value
        data["trip"] = self.trip.to_dict() if self.trip else None
        data["stop_fault"] = self.stop_fault.to_dict() if self.stop_fault else None
        data["exposure"] = self.exposure.to_dict() if self.exposure else None
        data["presence"] = self.presence.to_dict() if self.presence else None
        if with_history:
            data["history"] = {name: list(values) for name, values in self.history.items()}
        return data


class _IndependentWindows:
    """Fits of the raw samples over consecutive, non-overlapping 1-s windows of the hold.

    The loop servoes its 0.1-s estimate to the setpoint, so that estimate agrees with the
    setpoint by construction, noise included; an error computed from it understates the truth.
    These fits use every sample once, are never fed back, and carry their own standard
    uncertainty from the residual (:attr:`SineFit.peak_sigma_g`). The samples are the
    estimator's (it holds a window's until it is fitted): nothing is copied per block.
    """

    def __init__(self, estimator: AmplitudeEstimator, start_s: float) -> None:
        self.estimator = estimator
        self.fs = estimator.sample_rate_hz
        self.start_s = start_s
        self._index = -1
        self._first = 0  # the window's first sample, counted as the estimator counts them
        self._end = 0
        self.windows: list[tuple[float, float, float]] = []  # (start s, peak g, sigma g)

    def push(self, t_end_s: float, n: int) -> None:
        """One hold block of ``n`` samples ending at exposure time ``t_end_s``, just pushed to
        the estimator."""
        first_s = t_end_s - n / self.fs
        index = math.floor((first_s - self.start_s) / ACCURACY_WINDOW_S + 1e-9)
        if index != self._index:
            self._close()
            self._index = index
            self._first = self.estimator.pushed - n
            self.estimator.hold_from(self._first)
        self._end = self.estimator.pushed

    def finish(self) -> None:
        """Fit the window in progress (kept only if it is whole)."""
        self._close()
        self._index = -1
        self.estimator.hold_from(None)

    def _close(self) -> None:
        # only whole windows (a lost frame or two may be missing)
        if self._index < 0 or self._end - self._first < 0.9 * ACCURACY_WINDOW_S * self.fs:
            return
        fit = self.estimator.fit_span(self._first, self._end)
        if fit is None:
            return
        sigma = fit.peak_sigma_g
        peak = math.sqrt(max(fit.peak_g**2 - sigma**2, 0.0))  # amplitude bias removed
        start = self.start_s + self._index * ACCURACY_WINDOW_S
        self.windows.append((start, peak, sigma))


def run_exposure(
    device: DeviceClient,
    calibration: Calibration,
    settings: ExposureSettings,
    on_update: Callable[[ControlUpdate], bool | None] | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> ExposureResult:
    """Run one closed-loop exposure and return what happened (never leaves the drive on).

    ``on_update`` sees every control update; returning True asks for the normal ending now
    (ramp down over ``ramp_down_s``, status COMPLETED), e.g. when a session has delivered its
    minutes at dose. Otherwise the hold lasts ``hold_s``.
    """
    with single_threaded_numerics():
        return _run_exposure(device, calibration, settings, on_update, timer)


def _run_exposure(
    device: DeviceClient,
    calibration: Calibration,
    settings: ExposureSettings,
    on_update: Callable[[ControlUpdate], bool | None] | None,
    timer: Callable[[], float],
) -> ExposureResult:
    info = device.info
    fs = float(info.sample_rate_hz)
    dt = info.block_samples / fs
    drive_limit = info.max_drive
    estimator = AmplitudeEstimator(fs, settings.window_s, 1.0 / info.counts_per_g)
    law = AmplitudeLaw(settings.law, drive_limit, nodes_hz=calibration.freqs_hz)
    accuracy = _IndependentWindows(estimator, settings.ramp_up_s)
    supervisor = SafetySupervisor(settings.limits, fs, info.block_samples, info.watchdog_s)
    presence = PresenceDetector(dt, calibration.coil_temp_c)
    reports_coil_temp = "COIL_TEMPERATURE" in info.capabilities
    next_status_t = 0.0
    meter = ExposureMeter(fs) if settings.measure_exposure else None
    result = ExposureResult(
        status=ExposureStatus.COMPLETED,
        trip=None,
        device_id=info.device_id,
        target_g=settings.target_g,
        schedule=settings.schedule.describe(),
        hold_s_requested=settings.hold_s,
    )
    # The history's columns, one entry per update (a tuple per update, made columns at the
    # end, was as fast and held 5 MB more for 10 minutes)
    hist: dict[str, list[float]] = {name: [] for name in HISTORY_COLUMNS}
    hist_t, hist_setpoint, hist_measured = hist["t_s"], hist["setpoint_g"], hist["measured_g"]
    rounding_g: list[float] = []  # each update's repeated rounding error (settling's band)
    hist_drive, hist_freq, hist_ratio = hist["drive"], hist["freq_hz"], hist["ratio"]
    compute: list[float] = []
    gains: dict[float, float] = {}

    def gain_at(freq_hz: float) -> float:
        """The calibration's gain at ``freq_hz`` (remembered: a fixed frequency asks each block)."""
        gain = gains.get(freq_hz)
        if gain is None:
            if len(gains) > 64:  # a sweep: do not keep every frequency's gain
                gains.clear()
            gain = gains[freq_hz] = calibration.gain_at(freq_hz)
        return gain

    # what every update reads or calls, looked up once
    target_g = settings.target_g
    window_s = settings.window_s
    clean_after_s = window_s + dt  # a window this long after a frequency step is clean
    ramp_up_s = settings.ramp_up_s
    ramp_down_s = settings.ramp_down_s
    # The wait for the next block gives up in time for the host's stop to come before the
    # plate's watchdog could fire (docs/safety.md 2.3.1); the reference plate keeps the limit
    link_timeout_s = samples_wait_s(settings.limits.link_timeout_s, info.watchdog_s, dt)
    freq_at = settings.schedule.freq_at
    constant_hz = settings.schedule.constant_hz  # None: freq_at(t) varies, so it is asked
    estimator_push = estimator.push
    estimator_estimate = estimator.estimate
    block_extremes = estimator.block_extremes
    law_learn = law.learn
    law_command = law.command
    check_index = supervisor.check_index
    check = supervisor.check
    presence_update = presence.update
    accuracy_push = accuracy.push
    # enum members as locals (an Enum class attribute is a slow look-up), and nan
    ramping_up, holding, ramping_down = Phase.RAMP_UP, Phase.HOLD, Phase.RAMP_DOWN
    unloaded, nan = LoadState.UNLOADED, np.nan
    gain_freq = math.nan  # the frequency of ``gain``, the last gain asked (nan: none yet)
    gain = 0.0
    ramp_end = ramp_up_s
    hold_end = ramp_up_s + settings.hold_s  # moved earlier when a stop is asked for
    freq = freq_at(0.0)
    # The setpoint never rises faster than the ramp-up's steepest slope, and not at all while
    # the host is behind the plate's stream (blocks already waiting): a host late in the
    # ramp-up (a busy computer) would otherwise send the ramp it missed in one burst, and the
    # plate would take it as a step. The ramp then ends later; the dose clock counts only time
    # in band.
    rise_per_block = 0.5 * math.pi * target_g * dt / ramp_up_s
    next_setpoint = 0.0
    freq_changed_at = 0.0
    stale_s = 0.0
    sent_drive = 0.0
    t = 0.0

    # Exposure time zero is the first sample the device produced after it accepted SET_OUTPUT
    # on (DeviceClient.output_start_index), never an index seen before: the index known after
    # the handshake may be 0 or stale, and a backlog is the past.
    start = result.start_index = device.sample_index
    started = False
    try:
        try:
            device.discard_backlog()  # not needed for time zero; saves decoding the past
            device.set_frequency(freq)
            device.start_output()
        except BridgeError as exc:
            result.trip = _trip_for(exc, t, device.sample_index)
        while result.trip is None:
            try:
                block = device.read_block(timeout_s=link_timeout_s)
            except BridgeError as exc:
                result.trip = _trip_for(exc, t, device.sample_index)
                break
            if block is None:
                result.trip = _no_samples_trip(device, link_timeout_s, t, settings.limits)
                break
            # A jump in the sample clock is never time at dose nor ramp progress: trip first.
            result.trip = check_index(t, block)
            if result.trip is not None:
                break
            if not started:
                zero = device.output_start_index
                if zero is None or block.first_index < zero:
                    continue  # produced before the output came on
                started = True
                start = result.start_index = zero
                log.info("exposure started: time zero at sample %d", zero)
            began = timer()
            accel = block.accel_g
            block_freq = block.freq_hz
            t = (block.first_index + block.counts.size - start) / fs
            estimator_push(
                accel, block.phase_rad, block_freq, block.drive, block.missing_before > 0
            )
            if meter is not None:
                meter.push(accel)
            estimate = estimator_estimate(block_freq)
            if block_freq != gain_freq:  # the same frequency as the last block: the same gain
                gain = gain_at(block_freq)
                gain_freq = block_freq
            window_clean = t - freq_changed_at > clean_after_s
            law_learn(estimate if window_clean else None, gain, target_g, dt, block_freq, window_s)
            hold_s = hold_end - ramp_end
            # the hold's ramp_profile (1.0: target_g * 1.0 is target_g) without the call, the
            # ramps by it; then min(profiled, next_setpoint) as the builtin picks
            if ramp_up_s <= t and t - ramp_up_s - hold_s <= 0.0:
                setpoint = target_g
            else:
                setpoint = target_g * ramp_profile(t, ramp_up_s, hold_s, ramp_down_s)
            if next_setpoint < setpoint:  # noqa: PLR1730
                setpoint = next_setpoint
            trip = check(
                t, block, estimate, law.drive, drive_limit, setpoint, gain,
                device.link_stats, device.samples_missing, block_extremes(),
            )  # fmt: skip
            if trip is None:
                # a host steadily slower than the plate acts on ever older feedback; one that
                # keeps up has nothing waiting, and nothing to check
                behind = device.blocks_behind
                if behind or supervisor.behind_held:
                    trip = supervisor.check_backlog(t, block, behind)
            if trip is not None:
                result.trip = trip
                break
            if t >= hold_end + ramp_down_s:
                break
            next_freq = constant_hz if constant_hz is not None else freq_at(t)
            t_next = t + dt
            if ramp_up_s <= t_next and t_next - ramp_up_s - hold_s <= 0.0:
                planned = target_g
            else:
                planned = target_g * ramp_profile(t_next, ramp_up_s, hold_s, ramp_down_s)
            if planned > setpoint:
                planned = min(
                    planned, setpoint + (0.0 if device.blocks_waiting else rise_per_block)
                )
            next_setpoint = planned
            landing: float | None = None  # the drive to come down to before a step
            if next_freq != freq and abs(next_freq - freq) >= FREQ_RESOLUTION_HZ:
                step = abs(next_freq - freq) >= FREQ_STEP_HZ
                if step:
                    gain_next = calibration.gain_at(next_freq)
                    first = law.landing_drive(next_freq, next_setpoint, gain_next)
                    if law.drive > first + DRIVE_RESOLUTION:
                        landing = first  # the new frequency needs less: come down first
                if landing is None:
                    device.set_frequency(next_freq, wait=False)
                    if step:
                        freq_changed_at = t
                    law.retune(next_freq, freq, step)  # start from what is known there
                    freq = next_freq
            if landing is not None:
                drive = law.descend(landing, dt)
            else:
                gain_next = gain if next_freq == block_freq else gain_at(next_freq)
                drive = law_command(next_setpoint, gain_next, dt)
            if abs(drive - sent_drive) >= DRIVE_RESOLUTION or (drive == 0.0) != (sent_drive == 0.0):
                device.set_drive(drive, dt, wait=False)
                sent_drive = drive

            phase = ramping_up if t < ramp_end else holding if t < hold_end else ramping_down
            measured = estimate.fit.peak_g if estimate is not None else None
            in_hold = phase is holding
            if reports_coil_temp:
                # Asked for without waiting, read when it has come: never holds up an update.
                status = device.take_status()
                if status is not None:
                    presence.set_coil_temperature(status.coil_temperature_c)
                if t >= next_status_t:
                    device.send_status_request()
                    next_status_t = t + COIL_TEMP_POLL_S
            load = presence_update(
                block_freq,
                response_over_empty(measured, estimate.mean_drive, gain, target_g)
                if window_clean and estimate is not None and measured is not None
                else None,
                in_hold,
                in_hold and t - ramp_end >= 0.5,
            )
            ratio = law.response_ratio
            if in_hold:
                accuracy_push(t, accel.size)
                result.held_s += dt
                if load is unloaded:
                    result.unloaded_s += dt
                stale_s = stale_s + dt if ratio > STALE_RATIO else 0.0
                result.calibration_stale |= stale_s >= STALE_HOLD_S
            hist_t.append(t)
            hist_setpoint.append(setpoint)
            hist_measured.append(nan if measured is None else measured)
            rounding_g.append(0.0 if estimate is None else estimate.repeat_sigma_g)
            hist_drive.append(drive)
            hist_freq.append(block_freq)
            hist_ratio.append(ratio)
            spent = timer() - began
            compute.append(spent)
            if on_update is not None:
                stop = on_update(
                    ControlUpdate(
                        t, phase, block_freq, setpoint, measured, drive, ratio, load, spent
                    )
                )
                if stop and t < hold_end:
                    hold_end = max(t, ramp_end)
    except KeyboardInterrupt:
        # A session (sessions/runner.py) raises its stops only between two updates (from
        # on_update); a caller that lets SIGINT raise anywhere (``liv run``) may interrupt an
        # update halfway through its history appends: only whole updates are kept.
        _keep_whole_updates(hist, rounding_g)
        result.status = ExposureStatus.STOPPED_BY_USER
        result.stop_fault = _soft_stop(device, settings.ramp_down_s, t)
    except BridgeError as exc:
        # A command sent between two reads failed (a cable pulled while the host computed the
        # update): a trip like one met on a read, never an exception out of the exposure.
        _keep_whole_updates(hist, rounding_g)
        result.trip = _trip_for(exc, t, device.sample_index)
        result.status = ExposureStatus.TRIPPED
        log.warning("safety trip: %s (%s)", result.trip.reason, result.trip.detail)
        result.stop_fault = _soft_stop(device, TRIP_RAMP_S, t)
    else:
        if result.trip is not None:
            result.status = ExposureStatus.TRIPPED
            log.warning("safety trip: %s (%s)", result.trip.reason, result.trip.detail)
            # Nothing is wrong with the plate when the computer is too slow: it comes down
            # as at a normal end, over ramp_down_s, by the firmware's own ramp (one command:
            # a ramp run by the late host would itself be late).
            slow = result.trip.reason is TripReason.HOST_TOO_SLOW
            result.stop_fault = _soft_stop(device, settings.ramp_down_s if slow else TRIP_RAMP_S, t)
        else:
            result.stop_fault = _soft_stop(device, 0.0, t)
    _summarise(result, hist, compute, settings, device, presence, hold_end, accuracy, rounding_g)
    if meter is not None:
        result.exposure = meter.figures()
    return result


_EXCEPTION_REASONS: dict[type[BridgeError], TripReason] = {
    DeviceFaultError: TripReason.DEVICE_FAULT,
    DeviceResetError: TripReason.DEVICE_RESET,
    LinkLostError: TripReason.LINK_LOST,
    LinkUnreadableError: TripReason.LINK_DEGRADED,  # no samples, but the device kept sending
    CommandRefusedError: TripReason.DEVICE_REFUSED,
    CommandTimeoutError: TripReason.LINK_DEGRADED,
    CommandUnreadableError: TripReason.LINK_DEGRADED,  # no answer, but the device kept sending
}


def _no_samples_trip(
    device: DeviceClient, timeout_s: float, t: float, limits: SafetyLimits
) -> SafetyTrip:
    """The trip for a wait for samples that gave up: ``link_degraded`` with the counts when the
    device kept sending what could not be used (damaged or malformed frames), else
    ``link_lost`` (the device silent). A wait shorter than ``link_timeout_s`` (a plate with a
    short watchdog) says so."""
    waited = f"{timeout_s:g} s"
    if timeout_s < limits.link_timeout_s:
        waited += (
            f" (shortened from {limits.link_timeout_s:g} s for the plate's "
            f"{device.info.watchdog_s:g} s watchdog)"
        )
    activity = device.last_give_up
    if activity is not None and activity.unreadable:
        return SafetyTrip(
            TripReason.LINK_DEGRADED, t, device.sample_index,
            f"no usable samples for {waited} although the device kept sending: "
            f"{activity.describe()}",
            activity.to_values(),
        )  # fmt: skip
    return SafetyTrip(TripReason.LINK_LOST, t, device.sample_index, f"no samples for {waited}")


def _keep_whole_updates(hist: dict[str, list[float]], rounding_g: list[float]) -> None:
    """Trim the history columns to the updates appended in full (an exception may have come
    halfway through one update's appends)."""
    whole = min(len(rounding_g), *(len(column) for column in hist.values()))
    for column in (*hist.values(), rounding_g):
        del column[whole:]


def _trip_for(exc: BridgeError, t: float, index: int) -> SafetyTrip:
    """The trip for something the link or device raised; unknown kinds count as link loss."""
    reason = _EXCEPTION_REASONS.get(type(exc), TripReason.LINK_LOST)
    return trip_from_exception(reason, t, index, exc)


def _soft_stop(device: DeviceClient, ramp_s: float, t: float = 0.0) -> SafetyTrip | None:
    """Ramp to zero over ``ramp_s`` while keeping the link fed, then switch the output off.

    The ramp is timed on the plate's clock, not on the newest block decoded: blocks still
    waiting (a host behind the plate's stream) were sent before SET_DRIVE reached the plate.
    The output goes off once a block reports the drive at zero, or at the latest when the
    plate's clock has passed the blocks waiting, ``ramp_s`` and :data:`STOP_MARGIN_S` (an
    output switched off early drops the rest of the ramp in the plate's short stop ramp). A
    read that brings no block within :data:`STOP_READ_S`, shortened for a plate with a short
    watchdog (:func:`controller.safety.samples_wait_s`), ends the wait at once: the output goes
    off before the plate's watchdog could fire on a host waiting for samples that stopped.

    If the link or the device has failed this does what it can: the firmware's own fault ramp
    (a latched fault) or its watchdog (a host gone quiet) takes the drive to zero. A fault the
    plate reports meanwhile (its watchdog fired while the host was behind) is returned as a
    trip for the record; other failures are logged.
    """
    try:
        if ramp_s > 0.0:
            device.set_drive(0.0, ramp_s, wait=False)
            info = device.info
            waiting = device.blocks_behind * info.block_samples
            end = device.sample_index + waiting
            end += round((ramp_s + STOP_MARGIN_S) * info.sample_rate_hz)
            read_s = samples_wait_s(
                STOP_READ_S, info.watchdog_s, info.block_samples / info.sample_rate_hz
            )
            while device.sample_index < end:
                block: SampleBlock | None = device.read_block(timeout_s=read_s)
                if block is None:
                    log.warning(
                        "soft stop: no samples for %g s; output switched off with %.2f s of the "
                        "ramp and its margin to go; the plate's stop ramp takes the drive to zero",
                        read_s, (end - device.sample_index) / info.sample_rate_hz,
                    )  # fmt: skip
                    break
                if block.drive <= 0.0:
                    break
        device.stop_output(wait=False)
    except DeviceFaultError as exc:
        log.warning("the plate reported a fault during the soft stop: %s", exc)
        return trip_from_exception(TripReason.DEVICE_FAULT, t, device.sample_index, exc)
    except BridgeError as exc:
        log.warning(
            "could not finish the soft stop (%s); the firmware's fault ramp or watchdog will", exc
        )
    return None


def _summarise(
    result: ExposureResult,
    hist: dict[str, list[float]],
    compute: list[float],
    settings: ExposureSettings,
    device: DeviceClient,
    presence: PresenceDetector,
    hold_end: float,
    accuracy: _IndependentWindows,
    rounding_g: list[float],
) -> None:
    result.history = hist
    result.response_ratio = hist["ratio"][-1] if hist["ratio"] else 1.0
    result.presence = presence.summary()
    result.unload_detectable = presence.detectable
    if compute:
        us = np.array(compute) * 1e6
        result.compute_median_us = float(np.median(us))
        result.compute_p99_us = float(np.percentile(us, 99))
    stats = device.link_stats
    result.frames = stats.frames
    result.crc_errors = stats.crc_errors + stats.cobs_errors
    result.lost_frames = stats.lost_frames
    t = np.array(hist["t_s"])
    measured = np.array(hist["measured_g"])
    hold = (t >= settings.ramp_up_s) & (t < hold_end)
    if not hold.any():
        return
    err = measured[hold] / settings.target_g - 1.0
    th = t[hold] - settings.ramp_up_s
    band = SETTLE_BAND + SETTLE_ROUNDING_COVERAGE * np.array(rounding_g)[hold] / settings.target_g
    outside = np.flatnonzero(~(np.abs(err) <= band))
    # settled from the first time after which the estimate stays in band for at least 1 s
    # (or the whole hold, if shorter); a noisy estimate may never do so: settle is then None
    settle = None
    candidates = np.concatenate(([0], outside + 1))
    for i in candidates:
        if i >= th.size:
            break
        later = outside[outside >= i]
        span_end = th[later[0]] if later.size else th[-1]
        if span_end - th[i] >= min(1.0, th[-1] - th[0]):
            settle = float(th[i])
            break
    result.settling_time_s = settle
    accuracy.finish()
    # Accuracy from the independent 1-s fits after settling (all of the hold if it never
    # settled, or settled too late for a whole window): the mean error, and the p95 of
    # |error| + k sigma, which bounds the true error of each window at about 95% coverage
    # however the loop correlated with the noise.
    begin = settings.ramp_up_s + (settle if settle is not None else 0.0)
    windows = [(peak, sigma) for start, peak, sigma in accuracy.windows if start >= begin - 1e-9]
    if not windows:  # a hold too short to have a whole window after settling: use them all
        windows = [(peak, sigma) for _, peak, sigma in accuracy.windows]
    if windows:
        peaks = np.array([w[0] for w in windows])
        sigmas = np.array([w[1] for w in windows]) / settings.target_g
        errors = peaks / settings.target_g - 1.0
        bound = np.abs(errors) + ACCURACY_COVERAGE * sigmas
        result.error_mean_pct = 100.0 * float(np.mean(errors))
        result.error_p95_abs_pct = 100.0 * float(np.percentile(bound, 95))
        result.error_uncertainty_pct = 100.0 * float(np.sqrt(np.mean(sigmas**2)))
