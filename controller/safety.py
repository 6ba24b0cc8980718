"""Safety supervisor: watches every block, independently of the control law, and trips.

It never computes a drive; it only decides that the exposure must stop, and why. Limits and
reason codes are documented in docs/safety.md. On a trip the loop ramps the drive down at once
(``TRIP_RAMP_S``), stops the output and reports the :class:`SafetyTrip`.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.estimation import SineFit, WindowEstimate
from firmware_bridge.client import HEARTBEAT_S, SampleBlock
from firmware_bridge.codec import LinkStats
from firmware_bridge.dose_limits import DOSE_LIMITS, DoseLimitError

log = logging.getLogger(__name__)

HARD_CEILING_G = DOSE_LIMITS.hard_ceiling_g  # no protocol or setting raises the ceiling above it
SATURATION_G = 2.0  # a plate at <= 1 g peak plus gravity never reads beyond this
TRIP_RAMP_S = 0.25  # host ramp to zero after a trip
# host_too_slow's backlog limit + hold stay within this share of the plate's watchdog
# (0.45 s of a 0.5 s watchdog)
BACKLOG_WATCHDOG_SHARE = 0.9
# The client's port read waits up to this for bytes (firmware_bridge.transport.open_port's read
# timeout); a wait for samples reads once more past its deadline before it gives up, so it
# ends up to two reads late (firmware_bridge/stream.py, read_block)
PORT_READ_S = 0.05
# A wait for samples with the output on ends at least this long inside the plate's watchdog:
# the host may have been quiet for up to a heartbeat interval when the wait begins (its
# heartbeat is timed on the blocks it reads, docs/protocol.md 11), and the wait ends up to two
# port reads after its deadline. 0.5 - 0.2 = 0.3 s: the reference plate keeps link_timeout_s.
WATCHDOG_WAIT_MARGIN_S = HEARTBEAT_S + 2 * PORT_READ_S
# ... and never shorter than this many of the plate's blocks: the next block is due one block
# after a wait begins, and its bytes may still be on their way; a shorter wait would give up on
# a plate that is sending (0.04 s on the reference plate)
MIN_WAIT_BLOCKS = 2
# A read for samples with the output on outside the control loop (the open loop, calibration)
# gives up after this, before samples_wait_s shortens it (0.3 s on the reference 0.5 s plate):
# then LinkLostError, and the caller stops the output before the plate's watchdog can fire
READ_WAIT_S = 1.0
_NO_COUNTS: npt.NDArray[np.int16] = np.empty(0, dtype=np.int16)


class TripReason(enum.StrEnum):
    """Why an exposure was stopped by the supervisor (stable codes for logs)."""

    OVER_ACCELERATION = "over_acceleration"
    EXCESS_HARMONICS = "excess_harmonics"
    DRIVE_SATURATED = "drive_saturated"
    NO_RESPONSE = "no_response"
    RUNAWAY = "runaway"
    SENSOR_STUCK = "sensor_stuck"
    SENSOR_SATURATED = "sensor_saturated"
    SENSOR_GRAVITY = "sensor_gravity"
    LINK_LOST = "link_lost"
    LINK_DEGRADED = "link_degraded"
    DEVICE_FAULT = "device_fault"
    DEVICE_RESET = "device_reset"
    DEVICE_REFUSED = "device_refused"
    SAMPLE_INDEX_JUMP = "sample_index_jump"
    CANNOT_REACH_DOSE = "cannot_reach_dose"
    HOST_TOO_SLOW = "host_too_slow"


TRIP_TEXT: dict[TripReason, str] = {
    TripReason.OVER_ACCELERATION: "measured peak acceleration above the ceiling",
    TripReason.EXCESS_HARMONICS: "too much acceleration away from the drive frequency",
    TripReason.DRIVE_SATURATED: "drive at its limit without reaching the target",
    TripReason.NO_RESPONSE: "drive applied but the plate does not respond (actuator or sensor)",
    TripReason.RUNAWAY: "response far above the calibrated empty plate",
    TripReason.SENSOR_STUCK: "accelerometer output is stuck",
    TripReason.SENSOR_SATURATED: "accelerometer output is pinned at its range",
    TripReason.SENSOR_GRAVITY: "accelerometer does not read about +1 g of gravity",
    TripReason.LINK_LOST: "link to the plate lost",
    # damaged (CRC, COBS) or lost frames over the rate limit, or a wait for samples that gave
    # up while the device kept sending frames that were damaged or well framed but malformed
    TripReason.LINK_DEGRADED: "too many damaged, malformed or lost frames on the link",
    TripReason.DEVICE_FAULT: "the plate reported a fault",
    TripReason.DEVICE_RESET: "the plate restarted",
    TripReason.DEVICE_REFUSED: "the plate refused a command",
    TripReason.SAMPLE_INDEX_JUMP: "the plate's sample clock jumped, so its time cannot be counted",
    TripReason.CANNOT_REACH_DOSE: "the plate cannot reach the prescribed dose",
    TripReason.HOST_TOO_SLOW: "this computer fell behind the plate's samples and stayed behind",
}


@dataclass(frozen=True)
class SafetyLimits:
    """Limits the supervisor enforces (defaults documented in docs/safety.md)."""

    ceiling_g: float = DOSE_LIMITS.over_acceleration_ceiling_g
    total_peak_factor: float = 1.5  # total peak (harmonics, noise) may reach ceiling x this
    harmonic_rms_g: float = 0.1
    harmonic_hold_s: float = 0.25  # longer than the fit window: a step in amplitude is not this
    saturation_shortfall: float = 0.9  # below 90% of the setpoint ...
    saturation_hold_s: float = 1.0  # ... for this long at the drive limit
    dose_shortfall_fraction: float = 0.1  # 1-s mean amplitude below 90% of the setpoint ...
    dose_shortfall_hold_s: float = 5.0  # ... for this long, whatever the drive: cannot deliver
    dose_average_s: float = 1.0  # the amplitude is averaged over this long for that check
    no_response_fraction: float = 0.1  # below 10% of the empty-plate response ...
    no_response_hold_s: float = 0.3  # ... for this long with drive applied
    min_check_drive: float = 0.03  # response checks need at least this much drive
    runaway_ratio: float = 1.5  # response / calibrated empty-plate response
    runaway_hold_s: float = 0.1
    stuck_window_s: float = 0.02  # one block: driven, a live sensor moves ~9 LSB per sample
    saturated_run: int = 8  # samples of one block pinned at the same value beyond +/- 2 g
    # In session, with the stored sensor correction applied: wider than the pre-session check
    # (at most 3%, controller/sensor.py) so noise on a part that passed cannot trip, and half
    # the usual +/-10% dose tolerance, so a sensor that drifts mid-session stops the plate
    # before the log could claim a dose it did not deliver (docs/sensor.md).
    gravity_tolerance_g: float = 0.05
    link_timeout_s: float = 0.3
    link_error_rate: float = 0.05  # damaged + lost frames per expected frame over 1 s
    index_gap_s: float = 0.1  # samples a block may skip (lost frames); beyond, or back: trip
    # A host steadily slower than the plate: blocks received but not yet read, in plate time,
    # above this ... (a host behind by B acts on feedback B old and its heartbeat, timed on
    # the blocks it has read, goes quiet for up to B / its pace: docs/safety.md, section 2.7)
    host_backlog_s: float = 0.15
    # ... for this long of plate time: one stall shorter than limit + hold (0.45 s, under the
    # plate's 0.5 s watchdog) drains before it trips; a host at 0.75x is stopped about 0.4 s
    # behind (the backlog grows while the hold runs; measured 0.38-0.44 s, docs/safety.md 2.7).
    # A plate with a shorter watchdog gets a shorter hold (SafetySupervisor.backlog_hold_s).
    host_backlog_hold_s: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 < self.dose_shortfall_fraction < 1.0:
            raise ValueError(
                f"dose shortfall {self.dose_shortfall_fraction:g} is not allowed: use a "
                "fraction between 0 and 1"
            )
        if not 0.0 < self.dose_average_s <= self.dose_shortfall_hold_s <= 60.0:
            raise ValueError(
                f"dose averaging {self.dose_average_s:g} s and hold "
                f"{self.dose_shortfall_hold_s:g} s are not allowed: use 0 < average <= hold "
                "<= 60 s"
            )
        if not (0.0 < self.host_backlog_s <= 1.0 and 0.0 <= self.host_backlog_hold_s <= 10.0):
            raise ValueError(
                f"host backlog {self.host_backlog_s:g} s held {self.host_backlog_hold_s:g} s is "
                "not allowed: use a backlog above 0 and at most 1 s, held 0-10 s"
            )
        if not 0.0 <= self.index_gap_s <= 1.0:
            raise ValueError(f"index gap {self.index_gap_s:g} s is not allowed: use 0-1 s")
        if not 0.0 < self.ceiling_g <= HARD_CEILING_G:
            raise DoseLimitError(
                f"ceiling {self.ceiling_g:g} g is not allowed: it must be above 0 and at most "
                f"{HARD_CEILING_G:g} g (the hard ceiling of the dose limits)"
            )


@dataclass(frozen=True)
class SafetyTrip:
    """What tripped, when (device sample clock), with the values that decided it."""

    reason: TripReason
    t_s: float
    sample_index: int
    detail: str
    values: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return TRIP_TEXT[self.reason]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "text": self.text,
            "t_s": self.t_s,
            "sample_index": self.sample_index,
            "detail": self.detail,
            "values": dict(self.values),
        }


class SafetySupervisor:
    """Checks each block; returns a SafetyTrip the first time a limit is broken."""

    def __init__(
        self,
        limits: SafetyLimits,
        sample_rate_hz: float,
        block_samples: int,
        watchdog_s: float | None = None,
    ) -> None:
        self.limits = limits
        self.fs = sample_rate_hz
        self.block_s = block_samples / sample_rate_hz
        # host_too_slow's hold, shortened for a plate whose watchdog (DeviceInfo.watchdog_s,
        # 0.2-2 s by the protocol) is short: backlog limit + hold stays within
        # BACKLOG_WATCHDOG_SHARE of it, so a host that stays behind is stopped by the host (a
        # soft stop) before the watchdog could be (a fault). Never longer than the limits say.
        self.backlog_hold_s = limits.host_backlog_hold_s
        if watchdog_s is not None:
            room = BACKLOG_WATCHDOG_SHARE * watchdog_s - limits.host_backlog_s
            self.backlog_hold_s = min(self.backlog_hold_s, max(0.0, room))
        self._stuck_n = max(2, round(limits.stuck_window_s * sample_rate_hz))
        self._recent: npt.NDArray[np.int16] = _NO_COUNTS
        self._held: dict[TripReason, float] = {}
        window = max(2, round(1.0 / self.block_s))
        self._link_history: deque[tuple[int, int, int]] = deque(maxlen=window)
        self._link_window = window
        self._max_gap = round(limits.index_gap_s * sample_rate_hz)
        self._next_index: int | None = None
        dose_n = max(1, round(limits.dose_average_s / self.block_s))
        self._dose: deque[tuple[float, float]] = deque(maxlen=dose_n)
        self._dose_n = dose_n
        self._dose_full = False  # _dose holds dose_n blocks (from then on, always)
        self._dose_peak_sum = 0.0  # measured peak over the blocks in _dose ...
        self._dose_setpoint_sum = 0.0  # ... and setpoint
        # the limits' products the checks compare with (the same products, made once)
        self._total_peak_ceiling_g = limits.ceiling_g * limits.total_peak_factor
        self._dose_delivered_floor = 1.0 - limits.dose_shortfall_fraction
        self._behind_peak_s = 0.0  # the largest backlog of the episode behind, if one is held
        # an episode behind is being timed: check_backlog must see the next block too, even
        # one that finds nothing waiting (a caller may skip blocks with nothing waiting)
        self.behind_held = False

    def check_index(self, t_s: float, block: SampleBlock) -> SafetyTrip | None:
        """Trip if ``block`` does not continue the sample clock of the blocks seen before.

        A block may start up to ``index_gap_s`` of samples after the previous one ended (a
        frame or a short burst lost on a noisy link); a larger jump ahead, or any index going
        back, trips SAMPLE_INDEX_JUMP. Call it for every block, before the block's time is
        used: ``t_s`` is the exposure time reached before it. A device reset never gets here
        (its HELLO raises first).
        """
        expected = self._next_index
        self._next_index = block.first_index + block.counts.size
        if expected is None:
            return None
        jump = block.first_index - expected
        if 0 <= jump <= self._max_gap:
            return None
        direction = "back" if jump < 0 else "ahead"
        return SafetyTrip(
            TripReason.SAMPLE_INDEX_JUMP, t_s, block.first_index,
            f"sample index went {direction} from {expected} to {block.first_index} "
            f"({jump:+d} samples; up to {self._max_gap} ahead allowed)",
            {"expected_index": float(expected), "jump_samples": float(jump)},
        )  # fmt: skip

    def check_backlog(
        self, t_s: float, block: SampleBlock, blocks_behind: int
    ) -> SafetyTrip | None:
        """Trip HOST_TOO_SLOW if the host has stayed behind the plate's stream.

        ``blocks_behind`` is what the device has sent and the host has not read yet, after
        ``block`` was read (:attr:`DeviceClient.blocks_behind`). Above ``host_backlog_s`` of
        plate time in consecutive blocks for ``host_backlog_hold_s`` (timed on the blocks'
        own clock, as every hold here) the host is too slow for this plate.
        """
        lim = self.limits
        behind_s = blocks_behind * self.block_s
        if behind_s <= lim.host_backlog_s:
            if self._held:
                since = self._held.pop(TripReason.HOST_TOO_SLOW, None)
                if since is not None:  # an episode behind that ended before the hold: a note
                    log.info(
                        "the host fell %.2f s behind the plate (limit %g s) for %.2f s of "
                        "plate time, then caught up",
                        self._behind_peak_s, lim.host_backlog_s, t_s - since,
                    )  # fmt: skip
                    self._behind_peak_s = 0.0
                    self.behind_held = False
            return None
        self._behind_peak_s = max(self._behind_peak_s, behind_s)
        self.behind_held = True
        held = self._held_for(TripReason.HOST_TOO_SLOW, t_s)
        if held < self.backlog_hold_s:
            return None
        return SafetyTrip(
            TripReason.HOST_TOO_SLOW, t_s, block.first_index,
            f"{behind_s:.2f} s of samples waiting unread, above {lim.host_backlog_s:g} s for "
            f"{held:.2f} s of plate time: the computer is slower than the plate",
            {"behind_s": behind_s, "blocks_behind": float(blocks_behind), "held_s": held,
             "limit_s": lim.host_backlog_s},
        )  # fmt: skip

    def check(
        self,
        t_s: float,
        block: SampleBlock,
        estimate: WindowEstimate | None,
        drive: float,
        drive_limit: float,
        setpoint_g: float,
        empty_gain: float,
        link: LinkStats,
        samples_missing: int,
        extremes: tuple[float, float] | None = None,
    ) -> SafetyTrip | None:
        """One block's verdict. ``empty_gain`` is the calibration's g per drive here.

        ``extremes`` are the block's largest and smallest sample in g if already known (the
        estimator has them); otherwise they are found here.
        """
        lim = self.limits
        index = block.first_index
        trip = self._sensor(t_s, index, block, extremes)
        if trip is None:
            trip = self._link(t_s, index, link, samples_missing)
        if trip is None and estimate is not None:
            trip = self._response(
                t_s, index, estimate, drive, drive_limit, setpoint_g, empty_gain, lim
            )
        return trip

    # ---- individual checks -------------------------------------------------------------

    def _sensor(
        self,
        t_s: float,
        index: int,
        block: SampleBlock,
        extremes: tuple[float, float] | None = None,
    ) -> SafetyTrip | None:
        counts = block.counts
        accel = block.accel_g
        # The samples in g are a function of the counts: a block whose samples all lie within
        # +/- SATURATION_G has no sample beyond it, and one whose samples differ has no two
        # equal counts all through. Those two cheap facts settle the common block.
        high, low = extremes if extremes is not None else (float(accel.max()), float(accel.min()))
        if high > SATURATION_G or low < -SATURATION_G:
            peak = int(np.argmax(np.abs(accel)))
            pinned = int(np.count_nonzero(counts == counts[peak]))
            if abs(accel[peak]) > SATURATION_G and pinned >= self.limits.saturated_run:
                value_g = float(accel[peak])
                return SafetyTrip(
                    TripReason.SENSOR_SATURATED, t_s, index,
                    f"{pinned} samples pinned at {value_g:.2f} g in one block",
                    {"value_g": value_g},
                )  # fmt: skip
        if block.drive < self.limits.min_check_drive:
            # At rest a quiet sensor with coarse counts legitimately repeats itself; a stuck
            # sensor can only be told apart while the plate is being driven.
            self._recent = _NO_COUNTS
            return None
        size = counts.size
        if size == self._stuck_n:  # the block is the stuck window (all of it: no slice)
            self._recent = counts
            if high != low:
                return None  # ... and its samples differ
        elif size > self._stuck_n:
            self._recent = counts[-self._stuck_n :]
        else:
            keep = self._stuck_n - counts.size
            self._recent = np.concatenate((self._recent[-keep:], counts))
        if self._recent.size == self._stuck_n and self._recent.min() == self._recent.max():
            value_g = float(block.accel_g[-1])
            if abs(value_g - 1.0) > 0.5:  # nowhere near gravity: no sensor is being read
                return SafetyTrip(
                    TripReason.SENSOR_GRAVITY, t_s, index,
                    f"reads a constant {value_g:.3f} g (disconnected?)",
                    {"value_g": value_g, "dc_g": value_g},
                )  # fmt: skip
            return SafetyTrip(
                TripReason.SENSOR_STUCK, t_s, index,
                f"{self._stuck_n} identical samples ({value_g:.3f} g)", {"value_g": value_g},
            )  # fmt: skip
        return None

    def _link(
        self, t_s: float, index: int, link: LinkStats, samples_missing: int
    ) -> SafetyTrip | None:
        history = self._link_history
        damaged_now, lost_now, frames_now = link.damaged_frames, link.lost_frames, link.frames
        history.append((damaged_now, lost_now, frames_now))
        if len(history) < self._link_window:
            return None
        damaged0, lost0, frames0 = history[0]
        damaged = damaged_now - damaged0
        lost = lost_now - lost0
        sent = frames_now - frames0 + lost  # what the device sent in about 1 s ...
        if sent < 1:  # noqa: PLR1730 (... at least 1: max(1, sent), counts give the same value)
            sent = 1
        rate = (damaged if damaged >= lost else lost) / sent  # max(damaged, lost)
        if rate > self.limits.link_error_rate:
            return SafetyTrip(
                TripReason.LINK_DEGRADED, t_s, index,
                f"{damaged} damaged and {lost} lost of {sent} frames in the last second",
                {"error_rate": rate, "samples_missing": float(samples_missing)},
            )  # fmt: skip
        return None

    def _response(
        self,
        t_s: float,
        index: int,
        est: WindowEstimate,
        drive: float,
        drive_limit: float,
        setpoint_g: float,
        empty_gain: float,
        lim: SafetyLimits,
    ) -> SafetyTrip | None:
        # Each held condition is timed by _held_for only while it holds; a block that breaks
        # none (nearly every block) only clears what was held, if anything was.
        fit = est.fit
        peak = fit.peak_g
        held = self._held
        if abs(fit.dc_g - 1.0) > lim.gravity_tolerance_g:
            return SafetyTrip(
                TripReason.SENSOR_GRAVITY, t_s, index, f"reads {fit.dc_g:.3f} g at rest level",
                _values(fit, drive, setpoint_g, None),
            )  # fmt: skip
        if peak > lim.ceiling_g or fit.total_peak_g > self._total_peak_ceiling_g:
            return SafetyTrip(
                TripReason.OVER_ACCELERATION, t_s, index,
                f"peak {peak:.3f} g (total {fit.total_peak_g:.3f} g), ceiling "
                f"{lim.ceiling_g:g} g", _values(fit, drive, setpoint_g, None),
            )  # fmt: skip
        if est.mean_drive >= lim.min_check_drive:
            ratio = peak / (empty_gain * est.mean_drive)
            if ratio < lim.no_response_fraction:
                if self._held_for(TripReason.NO_RESPONSE, t_s) >= lim.no_response_hold_s:
                    return SafetyTrip(
                        TripReason.NO_RESPONSE, t_s, index,
                        f"response is {100 * ratio:.1f}% of the calibrated plate's",
                        _values(fit, drive, setpoint_g, ratio),
                    )  # fmt: skip
            elif held:
                held.pop(TripReason.NO_RESPONSE, None)
            if ratio > lim.runaway_ratio:
                if self._held_for(TripReason.RUNAWAY, t_s) >= lim.runaway_hold_s:
                    return SafetyTrip(
                        TripReason.RUNAWAY, t_s, index,
                        f"response is {ratio:.2f}x the calibrated empty plate's",
                        _values(fit, drive, setpoint_g, ratio),
                    )  # fmt: skip
            elif held:
                held.pop(TripReason.RUNAWAY, None)
        else:
            ratio = None
            if held:
                held.pop(TripReason.NO_RESPONSE, None)
                held.pop(TripReason.RUNAWAY, None)
        if drive >= drive_limit - 1e-3 and peak < lim.saturation_shortfall * setpoint_g:
            if self._held_for(TripReason.DRIVE_SATURATED, t_s) >= lim.saturation_hold_s:
                return SafetyTrip(
                    TripReason.DRIVE_SATURATED, t_s, index,
                    f"drive {drive:.3f} at its limit {drive_limit:.3f}, peak {peak:.3f} g of "
                    f"{setpoint_g:.3f} g", _values(fit, drive, setpoint_g, ratio),
                )  # fmt: skip
        elif held:
            held.pop(TripReason.DRIVE_SATURATED, None)
        trip = self._dose_shortfall(t_s, index, peak, drive, drive_limit, setpoint_g)
        if trip is not None:
            return trip
        if fit.residual_rms_g > lim.harmonic_rms_g:
            if self._held_for(TripReason.EXCESS_HARMONICS, t_s) >= lim.harmonic_hold_s:
                return SafetyTrip(
                    TripReason.EXCESS_HARMONICS, t_s, index,
                    f"{fit.residual_rms_g:.3f} g rms away from the drive frequency",
                    _values(fit, drive, setpoint_g, ratio),
                )  # fmt: skip
        elif held:
            held.pop(TripReason.EXCESS_HARMONICS, None)
        return None

    def _dose_shortfall(
        self,
        t_s: float,
        index: int,
        peak_g: float,
        drive: float,
        drive_limit: float,
        setpoint_g: float,
    ) -> SafetyTrip | None:
        """CANNOT_REACH_DOSE: the 1-s mean amplitude stays below the band around the setpoint.

        A working loop brings the plate back within a second of any load change, so a
        shortfall that lasts ``dose_shortfall_hold_s`` means the plate cannot deliver, whether
        the drive sits at its limit, just under it, or the law has stopped following a response
        no patient causes. Averaging over ``dose_average_s`` keeps sensor noise from deciding.
        """
        lim = self.limits
        dose = self._dose
        peak_sum, setpoint_sum = self._dose_peak_sum, self._dose_setpoint_sum
        full = self._dose_full
        if full:
            old_peak, old_setpoint = dose[0]
            peak_sum -= old_peak
            setpoint_sum -= old_setpoint
        dose.append((peak_g, setpoint_g))
        peak_sum += peak_g
        setpoint_sum += setpoint_g
        self._dose_peak_sum, self._dose_setpoint_sum = peak_sum, setpoint_sum
        if not full:
            full = self._dose_full = len(dose) == self._dose_n
        if not (full and peak_sum < self._dose_delivered_floor * setpoint_sum):
            if self._held:
                self._held.pop(TripReason.CANNOT_REACH_DOSE, None)
            return None
        held = self._held_for(TripReason.CANNOT_REACH_DOSE, t_s)
        if held < lim.dose_shortfall_hold_s:
            return None
        delivered = peak_sum / setpoint_sum
        n = len(dose)
        return SafetyTrip(
            TripReason.CANNOT_REACH_DOSE, t_s, index,
            f"for {held:.1f} s the plate gave {100 * delivered:.0f}% of the "
            f"{setpoint_sum / n:.3f} g asked (drive {drive:.3f}, limit {drive_limit:.3f})",
            {"delivered_fraction": delivered, "measured_g": peak_sum / n,
             "setpoint_g": setpoint_sum / n, "drive": drive, "drive_limit": drive_limit,
             "held_s": held},
        )  # fmt: skip

    def _held_for(self, reason: TripReason, t_s: float) -> float:
        """How long the condition of ``reason``, which holds in this block, has held without a
        break (a block that breaks it removes ``reason`` from ``_held``)."""
        since = self._held.setdefault(reason, t_s)
        return t_s - since + self.block_s


def _values(fit: SineFit, drive: float, setpoint_g: float, ratio: float | None) -> dict[str, float]:
    """The values a response trip records (made only for a trip: a block that passes needs
    none)."""
    found = {
        "peak_g": fit.peak_g,
        "total_peak_g": fit.total_peak_g,
        "dc_g": fit.dc_g,
        "drive": drive,
        "setpoint_g": setpoint_g,
    }
    if ratio is not None:
        found["response_ratio"] = ratio
    return found


def samples_wait_s(limit_s: float, watchdog_s: float, block_s: float) -> float:
    """How long a wait for samples with the output on may last before the host gives up.

    ``limit_s`` (``SafetyLimits.link_timeout_s`` in the loop), shortened for a plate whose
    watchdog (``DeviceInfo.watchdog_s``, 0.2-2 s by the protocol) is short, so that when the
    samples stop while the plate still hears the host, the host's own stop, with the true
    reason (``link_lost``), reaches the plate before its watchdog can fire and blame the host
    (docs/safety.md 2.3.1): at most ``watchdog_s - WATCHDOG_WAIT_MARGIN_S``, and at least
    ``MIN_WAIT_BLOCKS`` blocks of ``block_s``. The reference 0.5 s plate keeps 0.3 s; 0.2 s
    for a 0.4 s watchdog, 0.1 s for 0.3 s; two blocks (0.04 s) under 0.24 s, where the margin
    is not whole (docs/safety.md 2.3.1 gives what was measured there).
    """
    room = round(watchdog_s - WATCHDOG_WAIT_MARGIN_S, 3)  # whole ms, as the plate's watchdog
    return min(limit_s, max(MIN_WAIT_BLOCKS * block_s, room))


def trip_from_exception(
    reason: TripReason, t_s: float, index: int, exc: BaseException
) -> SafetyTrip:
    """A trip for something the link or device raised (fault, reset, loss, refusal)."""
    return SafetyTrip(reason, t_s, index, str(exc), {})


__all__ = [
    "BACKLOG_WATCHDOG_SHARE",
    "HARD_CEILING_G",
    "MIN_WAIT_BLOCKS",
    "PORT_READ_S",
    "READ_WAIT_S",
    "TRIP_RAMP_S",
    "WATCHDOG_WAIT_MARGIN_S",
    "SafetyLimits",
    "SafetySupervisor",
    "SafetyTrip",
    "TripReason",
    "samples_wait_s",
    "trip_from_exception",
]
