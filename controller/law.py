"""Control law: hold the prescribed peak acceleration by adjusting the drive.

``drive = c(f) * setpoint_g / G(f)`` where ``G(f)`` is the calibrated empty plate's response
(g per unit drive, the gain schedule) and ``c(f)`` is the correction the loop learns. Each
update measures the plate's actual gain over the estimator window,
``rho = peak_g / (G * mean_drive)``, using the drive the device ran for those very samples
(reconstructed by the estimator from the amplitude it reports at each block's first sample),
and moves ``c`` towards ``1 / rho``. In steady state ``rho * c = 1``, so the amplitude
equals the setpoint whatever the load, coil temperature or frequency (integral action on the
plate's gain). Because ``c`` estimates a gain instead of accumulating an amplitude error:

- a setpoint ramp does not bias it (no lag error to integrate), so ramps end without overshoot;
- it cannot wind up at the drive limit (anti-windup by construction); the drive is clamped to
  the limit and slew-limited;
- a response no patient can cause (far below or above the empty plate's) is not learned: the
  drive holds while the safety supervisor confirms the fault, instead of chasing it.

How fast ``c`` learns follows from how well it is measured (a scalar Kalman filter): the
window's own residual gives the uncertainty of each measurement (counted ``window / dt`` times,
since windows overlap), ``c`` may wander by ``drift_per_sqrt_s`` plus ``load_drift_per_sqrt_s``
times the patient's share ``(c - 1) / c`` (postural sway moves the body's part, not the
plate's), and the gain is ``P / (P + R)``, never faster than ``time_constant_s``. A quiet sensor
at 0.4 g learns in tens of ms; a noisy one at 0.1 g averages over seconds instead of feeding
its noise into the drive. A change far beyond the noise (a patient stepping on or off; at 4
sigma held for longer than a window, at 8 sigma at once) raises the uncertainty so the law
relearns at once. The drive aims below the estimate by ``cautious_sigma`` times the
uncertainty in excess of its steady value, plus, for a noisy sensor (steady uncertainty above
``cautious_free_sd``), the steady uncertainty beyond ``cautious_base_sd`` (at most
``cautious_max`` in all): doubt shows as a brief shortfall, never as overshoot.

The correction depends on frequency (a body isolates more of its mass at higher frequencies),
so ``c`` is remembered per calibration frequency. A step to another frequency starts from the
best prior the memory gives (:meth:`AmplitudeLaw.prior`), never from the old frequency's
correction; a sweep carries ``c`` along the same shape and learns faster while it moves.

All functions are pure over explicit state, so tests and benchmarks drive them directly.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from controller.estimation import WindowEstimate


@dataclass(frozen=True)
class LawSettings:
    time_constant_s: float = 0.05  # the fastest the correction learns (a quiet sensor)
    drift_per_sqrt_s: float = 0.002  # the plate's own gain wanders this much, relative, per sqrt(s)
    # more, in proportion to the patient's share (c - 1) / c: a standing patient's sway moves a
    # larger share than the seated fit's did (0.03 left 0.52% p95 at 0.3 g, 30 Hz, 90 kg)
    load_drift_per_sqrt_s: float = 0.045
    # ... counted as at least this share: a plate calibrated with somebody on it (c near 1)
    # still carries their sway (the hil suite's default plate: 1.3% p95 at 0.3 g untracked)
    min_load_share: float = 0.3
    initial_uncertainty: float = 0.3  # relative standard uncertainty of c before any learning
    change_gate_sigma: float = 4.0  # an innovation this many sigma away is a change ...
    change_confirm_s: float = 0.12  # ... once it holds, with one sign, for longer than a window
    # (at twice the gate at once: no noise reaches that far)
    cautious_sigma: float = 1.5  # drive this many excess sigma below the estimate ...
    cautious_max: float = 0.05  # ... but never more than this fraction below it
    # A steady uncertainty (the noise learning settles to) up to ``cautious_free_sd`` needs no
    # margin: noise that small cannot carry the plate to the 5% overshoot limit, and a margin
    # there is a bias the patient gets all session (0.5-0.7% low at 0.1 g with the default
    # sensor, whose steady uncertainty is 0.9-1.2%). From ``cautious_full_sd`` up (a noisy
    # sensor) the margin counts the uncertainty beyond ``cautious_base_sd``; in between it
    # grows smoothly from nothing to that.
    cautious_free_sd: float = 0.012
    cautious_full_sd: float = 0.02
    cautious_base_sd: float = 0.008
    memory_max_sd: float = 0.01  # remembered only once learned this well (not mid-way)
    extrapolation_exponent: float = 2.0  # load share of c above a learned frequency: (f0/f)^p
    slew_per_s: float = 2.0  # the drive moves at most this much (fraction) per second
    # learn once the expected response is this large: early in the ramp, so a standing adult
    # (0.2-0.6 of the empty plate) is learned before the ramp falls behind; the Kalman gain
    # already weighs the small signal's noise (0.2 held learning back to 0.6 s of a 2 s ramp,
    # 16% of the target behind at 0.85 s with 70 kg)
    min_expected_fraction: float = 0.05
    correction_bounds: tuple[float, float] = (0.5, 8.0)
    # Responses (relative to the calibrated empty plate) that a patient can cause; outside
    # them the law stops learning. The lowest a patient causes is 0.15 (150 kg standing with
    # straight knees at 30 Hz, coil at 120 C; docs/simulator.md): 0.12 leaves 20% for sway,
    # sensor tolerance and a plate weaker than the model, and stays above the supervisor's
    # no-response fraction (0.1), so a response the law refuses is one the supervisor trips
    # on or, between the two, one that cannot reach the dose (cannot_reach_dose). The upper
    # bound is the runaway ratio: no load makes a plate respond more than it does empty.
    credible_ratio: tuple[float, float] = (0.12, 1.5)

    def __post_init__(self) -> None:
        if self.time_constant_s <= 0.0 or self.slew_per_s <= 0.0:
            raise ValueError("time constant and slew limit must be positive")
        if self.drift_per_sqrt_s <= 0.0 or self.initial_uncertainty <= 0.0:
            raise ValueError("drift and initial uncertainty must be positive")
        if not self.cautious_free_sd < self.cautious_full_sd:
            raise ValueError("the margin must start below the uncertainty where it is full")


def ramp_profile(t_s: float, ramp_up_s: float, hold_s: float, ramp_down_s: float) -> float:
    """Fraction of the target at exposure time ``t_s``: raised-cosine up, hold, raised-cosine down.

    The raised cosine starts and ends with zero slope, so the drive never steps.
    """
    if t_s <= 0.0:
        return 0.0
    if t_s < ramp_up_s:
        return 0.5 - 0.5 * math.cos(math.pi * t_s / ramp_up_s)
    t_down = t_s - ramp_up_s - hold_s
    if t_down <= 0.0:
        return 1.0
    if t_down >= ramp_down_s:
        return 0.0
    return 0.5 + 0.5 * math.cos(math.pi * t_down / ramp_down_s)


@dataclass(frozen=True)
class Learned:
    """What the law knew at one calibration frequency: where, the correction, its variance."""

    freq_hz: float
    correction: float
    variance: float  # relative: (standard uncertainty / correction)^2


def steady_variance(process: float, measurement: float, max_gain: float) -> float:
    """Relative variance of ``c`` once learning has settled (scalar Kalman, gain capped)."""
    if measurement <= 0.0:
        return 0.0
    prior = 0.5 * (process + math.sqrt(process * process + 4.0 * process * measurement))
    gain = prior / (prior + measurement)
    if gain <= max_gain:
        return prior * measurement / (prior + measurement)
    # a capped gain: P = (1-K)^2 (P + Q) + K^2 R at its fixed point
    keep = (1.0 - max_gain) ** 2
    return (keep * process + max_gain**2 * measurement) / (1.0 - keep)


class AmplitudeLaw:
    """State of the law: the learned correction, its uncertainty and the last drive."""

    def __init__(
        self,
        settings: LawSettings,
        drive_limit: float,
        correction: float = 1.0,
        nodes_hz: tuple[float, ...] = (),
    ) -> None:
        self.settings = settings
        self.drive_limit = drive_limit
        self.correction = correction
        self.variance = settings.initial_uncertainty**2
        self.steady = 0.0  # the variance learning settles to at the present noise
        self.drive = 0.0
        self.nodes_hz = tuple(sorted(nodes_hz))
        self._memory: dict[int, Learned] = {}
        # the last learned state, entered in the memory when the memory is next read (each
        # update learns; the memory is read only at a frequency change)
        self._unsaved: tuple[float, float, float] | None = None
        self.freq_hz: float | None = None  # where the live correction was last learned
        self._change_s = 0.0
        self._change_sign = 0
        self._sweep_process = 0.0  # variance a sweep added since the last update

    # ---- frequency memory ----------------------------------------------------------------

    @property
    def memory(self) -> dict[int, Learned]:
        """What was learned, per calibration frequency (index into ``nodes_hz``)."""
        unsaved = self._unsaved
        if unsaved is not None:
            self._unsaved = None
            if self.nodes_hz:
                freq_hz, correction, variance = unsaved
                self._memory[self._node(freq_hz)] = Learned(freq_hz, correction, variance)
        return self._memory

    def prior(self, freq_hz: float) -> Learned:
        """The best starting correction at ``freq_hz`` from what was learned elsewhere.

        A patient's share of the correction, ``c - 1``, shrinks as frequency rises (more of the
        body is isolated), by no more than ``(f0 / f) ** extrapolation_exponent``; it never
        grows with frequency. So below a learned frequency its value is a safe start, above it
        the shrunk value; between two learned frequencies the straight line. Each is a lower
        bound on the correction needed: a step starts low and learns up, never overshoots.
        """
        # what was learned well (not mid-way through learning), and the live state, which
        # replaces whatever its own calibration frequency remembered
        good = {
            node: entry
            for node, entry in self.memory.items()
            if entry.variance <= self.settings.memory_max_sd**2
        }
        if self.freq_hz is not None:
            good[self._node(self.freq_hz)] = Learned(self.freq_hz, self.correction, self.variance)
        entries = sorted(good.values(), key=lambda e: e.freq_hz)
        if not entries:
            return Learned(freq_hz, self.correction, self.variance)
        freqs = [e.freq_hz for e in entries]
        i = bisect.bisect_left(freqs, freq_hz)
        above = entries[i] if i < len(entries) else None
        below = entries[i - 1] if i > 0 else None
        if above is not None and abs(above.freq_hz - freq_hz) < 1e-9:
            return Learned(freq_hz, above.correction, above.variance)
        if above is not None and below is None:
            # the share may grow going down by as much as it may shrink going up: that much
            # is unknown, so the law learns fast from this start
            share = max(0.0, above.correction - 1.0)
            grow = (above.freq_hz / freq_hz) ** self.settings.extrapolation_exponent - 1.0
            gap = share * grow / above.correction
            return Learned(freq_hz, above.correction, above.variance + gap * gap)
        assert below is not None
        shrink = (below.freq_hz / freq_hz) ** self.settings.extrapolation_exponent
        low = below.correction
        if low > 1.0:
            low = 1.0 + (low - 1.0) * shrink
        if above is None:
            gap = (below.correction - low) / low
            return Learned(freq_hz, low, below.variance + gap * gap)
        w = (freq_hz - below.freq_hz) / (above.freq_hz - below.freq_hz)
        value = below.correction + w * (above.correction - below.correction)
        value = max(min(value, below.correction), min(low, above.correction))
        gap = min(abs(below.correction - value), abs(above.correction - value)) / value
        return Learned(freq_hz, value, max(below.variance, above.variance) + gap * gap)

    def retune(self, freq_hz: float, from_hz: float, step: bool) -> None:
        """The frequency moves from ``from_hz`` to ``freq_hz``.

        A step starts from the prior there (with the prior's uncertainty), not from the old
        correction. A small move of a sweep carries the present correction along the shape the
        memory gives (``prior(to) / prior(from)``) and keeps its uncertainty.
        """
        start = self.prior(freq_hz)
        if step:
            self.correction = start.correction
            self.variance = max(start.variance, self.steady)
            self._change_s = 0.0
            self._change_sign = 0
        else:
            here = self.prior(from_hz).correction
            self.correction *= start.correction / here
            # the shape is only a bound: how far the correction may move over this step is
            # uncertain by up to the model's slope, so learn faster while the sweep moves
            share = max(0.0, 1.0 - 1.0 / self.correction)
            slope = self.settings.extrapolation_exponent * share * abs(freq_hz - from_hz)
            self._sweep_process += (slope / min(freq_hz, from_hz)) ** 2
        if self.freq_hz is not None:
            self.freq_hz = freq_hz  # the live correction now stands for the new frequency

    def _node(self, freq_hz: float) -> int:
        """Index of the calibration frequency nearest ``freq_hz`` (0 without a grid)."""
        i = bisect.bisect_left(self.nodes_hz, freq_hz)
        if i == len(self.nodes_hz) or (
            i > 0 and freq_hz - self.nodes_hz[i - 1] < self.nodes_hz[i] - freq_hz
        ):
            i -= 1
        return max(i, 0)

    def _remember(self, freq_hz: float) -> None:
        self.freq_hz = freq_hz
        self._unsaved = (freq_hz, self.correction, self.variance)

    # ---- learning and command ------------------------------------------------------------

    def learn(
        self,
        estimate: WindowEstimate | None,
        gain: float,
        target_g: float,
        dt: float,
        freq_hz: float | None = None,
        window_s: float | None = None,
    ) -> bool:
        """Update the correction from one window; True if it learned.

        ``window_s`` is the window's length: windows overlap, so each update brings only
        ``dt`` of new samples and its noise counts ``window_s / dt`` times.
        """
        # Every max(x, y) and min(x, y) of the rule is written as the comparison the builtin
        # makes (x unless y is larger, or smaller), without the call: the law runs every block.
        s = self.settings
        correction = self.correction
        share = 1.0 - 1.0 / correction
        floor = s.min_load_share
        if not share > floor:  # patient share, floored: max(floor, share)
            share = floor
        drift = s.drift_per_sqrt_s + s.load_drift_per_sqrt_s * share
        process = drift * drift * dt + self._sweep_process
        self._sweep_process = 0.0
        if estimate is None:
            self.variance += process
            return False
        fit, mean_drive, _ = estimate
        if mean_drive * gain < s.min_expected_fraction * target_g:
            self.variance += process
            return False
        peak_g = fit.peak_g
        if peak_g <= 0.0:
            return False
        rho = peak_g / (gain * mean_drive)
        low, high = s.credible_ratio
        if not low <= rho <= high:
            # No load makes a plate respond like this: a fault the supervisor is confirming.
            # Hold the drive where it is rather than chase it.
            return False
        # relative variance of one window's rho (and so of 1 / rho), debiased peak
        sigma = fit.peak_sigma_g
        peak_sq = peak_g**2 - sigma * sigma
        quarter = 0.25 * peak_g**2
        if quarter > peak_sq:  # noqa: PLR1730 (max(peak_sq, quarter))
            peak_sq = quarter
        rho *= math.sqrt(peak_sq) / peak_g
        single = sigma * sigma / peak_sq
        overlap = (window_s if window_s is not None else dt) / dt
        if not overlap > 1.0:  # max(1.0, overlap)
            overlap = 1.0
        measurement = single * overlap
        lowest, highest = s.correction_bounds
        wanted = 1.0 / rho
        if lowest > wanted:  # noqa: PLR1730 (min(max(wanted, lowest), highest))
            wanted = lowest
        if highest < wanted:  # noqa: PLR1730
            wanted = highest
        max_gain = dt / s.time_constant_s
        if not max_gain < 1.0:  # min(1.0, max_gain)
            max_gain = 1.0
        self.steady = steady_variance(process, measurement, max_gain)
        self.variance += process
        innovation = wanted / correction - 1.0
        if innovation * innovation > s.change_gate_sigma**2 * (single + self.variance):
            sign = 1 if innovation > 0 else -1
            self._change_s = self._change_s + dt if sign == self._change_sign else dt
            self._change_sign = sign
            # twice the gate is beyond any noise: no need to wait for a second window
            spread = single + self.variance
            gross = innovation * innovation > 4.0 * s.change_gate_sigma**2 * spread
            if gross or self._change_s > s.change_confirm_s:
                self.variance = max(self.variance, innovation * innovation)
                # what was learned at other frequencies belongs to the load before the change
                # (somebody stepped on or off): as a prior it would pull a sweep or a step back
                # to the old load's correction, so it is forgotten and relearned as it is visited
                self._memory.clear()
                self._unsaved = None
        else:
            self._change_s = 0.0
            self._change_sign = 0
        variance = self.variance
        k = variance / (variance + measurement)
        if not k < max_gain:  # min(max_gain, k)
            k = max_gain
        correction += k * (wanted - correction)
        self.correction = correction
        variance = (1.0 - k) ** 2 * variance + k * k * measurement
        self.variance = variance
        if freq_hz is not None:
            self.freq_hz = freq_hz  # _remember, without the call
            self._unsaved = (freq_hz, correction, variance)
        return True

    @property
    def cautious_correction(self) -> float:
        """The correction the drive uses: lowered by the uncertainty beyond the steady one."""
        # max() and min() written as the comparisons the builtins make (see learn)
        s = self.settings
        steady_sd = math.sqrt(self.steady)
        excess = math.sqrt(self.variance) - steady_sd
        if not excess > 0.0:  # max(0.0, excess)
            excess = 0.0
        free_sd = s.cautious_free_sd
        span = s.cautious_full_sd - free_sd
        weight = (steady_sd - free_sd) / span
        if weight < 0.0:  # noqa: PLR1730 (min(max(weight, 0.0), 1.0))
            weight = 0.0
        if weight > 1.0:  # noqa: PLR1730
            weight = 1.0
        beyond = steady_sd - s.cautious_base_sd
        if not beyond > 0.0:  # max(0.0, beyond)
            beyond = 0.0
        excess += weight * beyond
        margin = s.cautious_sigma * excess
        most = s.cautious_max
        if not margin < most:  # min(most, margin)
            margin = most
        return self.correction * (1.0 - margin)

    def command(self, setpoint_g: float, gain: float, dt: float) -> float:
        """The drive for this update: scheduled feedforward times correction, limited."""
        desired = self.cautious_correction * setpoint_g / gain
        # min(max(desired, 0.0), limit), then min(max(desired, low), high), without the calls
        if desired < 0.0:  # noqa: PLR1730
            desired = 0.0
        limit = self.drive_limit
        if limit < desired:  # noqa: PLR1730
            desired = limit
        step = self.settings.slew_per_s * dt
        drive = self.drive
        low = drive - step
        if low > desired:  # noqa: PLR1730
            desired = low
        high = drive + step
        if high < desired:  # noqa: PLR1730
            desired = high
        self.drive = desired
        return desired

    def landing_drive(self, freq_hz: float, setpoint_g: float, gain: float) -> float:
        """The drive a step to ``freq_hz`` would start from (its prior; before any caution).

        The prior is a lower bound on the correction needed there, so a drive at or below this
        cannot overshoot once the frequency has changed.
        """
        desired = self.prior(freq_hz).correction * setpoint_g / gain
        return min(max(desired, 0.0), self.drive_limit)

    def descend(self, floor: float, dt: float) -> float:
        """Bring the drive down towards ``floor`` at the slew limit (never up); the new drive.

        Before a step to a frequency where the plate responds more per unit drive, the drive
        comes down at the old frequency first: the plate shows a brief shortfall, never the
        overshoot of a high drive slewing down at the new frequency.
        """
        self.drive = max(floor, self.drive - self.settings.slew_per_s * dt, 0.0)
        return self.drive

    @property
    def response_ratio(self) -> float:
        """The plate's gain relative to the calibrated empty plate, as learned (1 / c)."""
        return 1.0 / self.correction
