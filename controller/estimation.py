"""Amplitude estimation locked to the drive phase the device reports.

A least-squares fit of ``x[k] = c + a*cos(phi[k]) + b*sin(phi[k])`` over whole drive cycles:
the DC term absorbs gravity and sensor bias, the fit ignores harmonics and noise that fool peak
detection, and with known frequency it reaches the Cramer-Rao bound 2*sigma^2/N (Kay,
Fundamentals of Statistical Signal Processing I).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_MAXIMUM_REDUCEAT = np.maximum.reduceat  # looked up once: the estimator's per-block reduction


class SineFit(NamedTuple):
    """Result of a fit: sine-equivalent peak at the drive frequency, plus what it ignored.

    A named tuple (immutable; the loop makes one per block): a frozen dataclass's ``__init__``
    sets each field through ``object.__setattr__``, about three times the cost.
    """

    peak_g: float  # amplitude of the fundamental
    phase_rad: float  # phase of the response relative to the drive phase
    dc_g: float  # mean (gravity + bias)
    total_peak_g: float  # largest |x - dc| in the window
    residual_rms_g: float  # what the fundamental does not explain (harmonics + noise)
    n_samples: int
    # how many of the samples have different drive phases (0: all of them, or not known)
    distinct_phases: int = 0
    resolution_g: float = 0.0  # one count of the sensor (0: not known)
    # correlation of the rounding errors at a repeated phase (negative: from this residual)
    rounding_rho: float = -1.0

    @property
    def peak_sigma_g(self) -> float:
        """Standard uncertainty of ``peak_g``: ``sqrt(2 s^2 / N)`` when every error is its own.

        ``s^2`` is the residual variance with the fit's three parameters taken out, at least
        the rounding's ``q^2 / 12`` for a sensor of one count ``q``. Harmonics count as noise
        here although the fit over whole cycles ignores them, so the figure errs on the side of
        more uncertainty, never less.

        Rounding errors are not all independent: when the drive frequency divides the sample
        rate into a short period (60 Hz at 400 Hz repeats every 20 samples), the window sees
        each drive phase ``m = N / D`` times, and a sensor whose noise is small against one
        count rounds each repeat the same way. Within each group of repeats the rounding errors
        then correlate by ``rho`` (:func:`rounding_correlation`), which adds
        ``(m - 1) rho q^2 / 12`` to ``s^2``: a noiseless coarse sensor has about ``D``
        independent errors, not ``N``. A noisy or fine sensor (noise of a count or more) has
        ``rho = 0`` and the figure is the plain one.
        """
        n = self.n_samples
        if n <= 3:
            return math.inf
        variance = self.residual_rms_g**2 * n / (n - 3)
        q = self.resolution_g
        if q > 0.0:
            rounding = q * q / 12.0
            if variance < rounding:  # noqa: PLR1730 (not max(): no call in the loop's budget)
                variance = rounding
            distinct = self.distinct_phases
            if 0 < distinct < n:
                rho = self.rounding_rho
                if rho < 0.0:
                    rho = rounding_correlation(variance - rounding, q)
                if rho > 0.0:
                    variance += (n / distinct - 1.0) * rho * rounding
        return math.sqrt(2.0 * variance / n)


def rounding_correlation(noise_variance: float, resolution: float) -> float:
    """Correlation of the rounding errors of two readings of one value, each with its own noise.

    For a value spread evenly over a count ``q`` and Gaussian noise of variance ``s^2``, the
    rounding error's Fourier series gives
    ``rho = (6 / pi^2) sum_k exp(-a k^2) / k^2`` with ``a = 4 pi^2 s^2 / q^2``: 1 without noise,
    0.62 at a noise of 0.064 count, below 1e-17 from one count on (returned as 0). For small
    ``a`` the series is summed in closed form (Poisson summation):
    ``1 - (6 / pi^2) (sqrt(pi a) - a / 2)``, exact but for terms below ``exp(-pi^2 / a)``.
    """
    if resolution <= 0.0 or noise_variance >= resolution * resolution:
        return 0.0
    a = 4.0 * math.pi**2 * max(noise_variance, 0.0) / (resolution * resolution)
    if a < 1.0:
        return max(0.0, 1.0 - 6.0 / math.pi**2 * (math.sqrt(math.pi * a) - 0.5 * a))
    return 6.0 / math.pi**2 * sum(math.exp(-a * k * k) / (k * k) for k in range(1, 7))


# each window moves the averaged noise variance this share of the way to its own
NOISE_AVERAGING = 0.05
# the drive phase counts as repeating when its slip over the span stays below this (cycles)
PHASE_REPEAT_SLIP_CYCLES = 0.01


def phase_period(span: int, freq_hz: float, sample_rate_hz: float) -> int:
    """After how many samples the drive phase repeats, within ``span`` samples (0: it does not).

    The phase advances ``f / fs`` cycles a sample; when that is a fraction ``p / r`` it repeats
    every ``r`` samples (60/400 = 3/20: every 20). A ratio that slips less than
    :data:`PHASE_REPEAT_SLIP_CYCLES` over the span from such a fraction counts as it.
    """
    if span < 2 or freq_hz <= 0.0 or sample_rate_hz <= 0.0:
        return 0
    ratio = freq_hz / sample_rate_hz
    nearest = Fraction(ratio).limit_denominator(span)
    if abs(ratio - float(nearest)) * span > PHASE_REPEAT_SLIP_CYCLES:
        return 0
    return nearest.denominator


def distinct_phase_count(n: int, freq_hz: float, sample_rate_hz: float) -> int:
    """How many of ``n`` consecutive samples have different drive phases (at most the period)."""
    period = phase_period(n, freq_hz, sample_rate_hz)
    return period if 0 < period < n else n


def repeating_peak_sigma_g(fit: SineFit, period: int) -> float:
    """The part of ``fit.peak_sigma_g`` that every window over the same drive phases repeats.

    A steady plate read by a sensor whose noise is small against one count rounds the sample at
    each drive phase the same way every time that phase comes round, so that part of the error
    does not average out over successive windows: with a phase period of ``r`` samples it is
    ``sqrt(2 rho (q^2 / 12) / r)`` (:func:`rounding_correlation` for ``rho``). 0 without a
    known resolution, a period or a correlation (the fit's ``rounding_rho``).
    """
    q = fit.resolution_g
    n = fit.n_samples
    if q <= 0.0 or period <= 0 or n <= 3 or fit.rounding_rho <= 0.0:
        return 0.0
    rounding = q * q / 12.0
    return math.sqrt(2.0 * fit.rounding_rho * rounding / max(period, fit.distinct_phases or n))


def whole_cycle_length(n_available: int, freq_hz: float, sample_rate_hz: float) -> int:
    """Largest sample count <= n_available that spans a whole number of drive cycles (>= 1)."""
    samples_per_cycle = sample_rate_hz / freq_hz
    cycles = int(n_available / samples_per_cycle)
    if cycles < 1:
        return n_available
    return max(1, round(cycles * samples_per_cycle))


def fit_sine(accel_g: FloatArray, phase_rad: FloatArray) -> SineFit:
    """Fit the fundamental at the given drive phases.

    Parameters
    ----------
    accel_g : (n,) samples in g (gravity included or not).
    phase_rad : (n,) drive phase at each sample.
    """
    if accel_g.shape != phase_rad.shape or accel_g.ndim != 1:
        raise ValueError("accel_g and phase_rad must be 1-D arrays of the same length")
    n = accel_g.size
    if n < 3:
        raise ValueError(f"a sine fit needs at least 3 samples, got {n}")
    c = np.cos(phase_rad)
    s = np.sin(phase_rad)
    design = np.stack((np.ones(n), c, s))
    normal = design @ design.T
    rhs = design @ accel_g
    try:
        coef = np.linalg.solve(normal, rhs)
    except np.linalg.LinAlgError:
        raise ValueError("samples do not span enough of a drive cycle to fit a sine") from None
    dc, a, b = (float(v) for v in coef)
    # residual sum of squares from the normal equations: |x|^2 - coef . rhs
    residual_ss = max(0.0, float(accel_g @ accel_g) - float(coef @ rhs))
    return SineFit(
        peak_g=float(np.hypot(a, b)),
        phase_rad=float(np.arctan2(-b, a)),
        dc_g=dc,
        total_peak_g=float(np.max(np.abs(accel_g - dc))),
        residual_rms_g=float(np.sqrt(residual_ss / n)),
        n_samples=n,
    )


def block_phases(phase0_rad: float, freq_hz: float, n: int, sample_rate_hz: float) -> FloatArray:
    """Drive phase of each sample in a block whose first sample has phase ``phase0_rad``."""
    step = 2.0 * np.pi * freq_hz / sample_rate_hz
    return phase0_rad + step * np.arange(n, dtype=np.float64)


class AmplitudeEstimator:
    """Sliding least-squares fit of the response at the drive phase, over whole cycles.

    Blocks are pushed as they arrive; :meth:`estimate` fits the most recent whole number of
    drive cycles that fits in ``window_s`` (at least one cycle). The drive phase of every sample
    comes from the device, so a frequency change inside the window is handled exactly.

    The drive amplitude of every sample is reconstructed from the one the device reports for
    each block's first sample: the device ramps it linearly, starting at block boundaries
    (docs/protocol.md 9.4), so a block's drive is the straight line from its first-sample value
    to the next block's. The newest block's end is not known yet: its line continues the
    previous block's slope, and is redrawn when the next block arrives. (Taking each block's
    first-sample value for all of it biased the mean drive by half a block of drive change:
    with 50 ms blocks the empty plate read 0.8 of itself at the end of a ramp-down.)

    The fit is the same as :func:`fit_sine`. Each block's samples, the cosine and sine of their
    drive phase (the block's first phase turned by a cached table of per-sample steps: one 2 x 2
    by 2 x n product), the drive and the negated samples are written once into a buffer; a
    window's normal equations, its sample count and its drive sum are then one product of the
    window's rows (drive, 1, cos, sin, samples) with (1, cos, sin, samples), and its extremes
    one reduction of the last two.
    :meth:`fit_span` fits any stretch of samples still held (the loop's independent 1-s
    accuracy windows), so those need no work of their own per block.
    """

    # rows of the buffer: drive, ones, cos, sin, samples (the product of these five with the
    # last four holds every sum the fit needs) and the negated samples (a window's extremes
    # from the last two rows)
    _D, _ONE, _C, _S, _X, _NEG = range(6)

    def __init__(
        self, sample_rate_hz: float, window_s: float = 0.1, resolution_g: float = 0.0
    ) -> None:
        """``resolution_g``: one count of the sensor (``1 / counts_per_g``; 0 if not known),
        which :attr:`SineFit.peak_sigma_g` needs to count rounding errors honestly."""
        if window_s <= 0.0:
            raise ValueError(f"window_s {window_s!r} must be positive")
        if not resolution_g >= 0.0:
            raise ValueError(f"resolution_g {resolution_g!r} must be 0 or more")
        self.sample_rate_hz = sample_rate_hz
        self.resolution_g = resolution_g
        self.window_n = max(3, round(window_s * sample_rate_hz))
        self._keep = self.window_n + round(sample_rate_hz / 20.0) + 1  # a 20 Hz cycle of slack
        self._rotation: FloatArray = np.empty((2, 2))
        self.reset()

    def reset(self) -> None:
        # The buffer is several windows long, written in place; when it fills, what is still
        # needed (the last window, or everything since :meth:`hold_from`) is moved to the
        # front (amortised: once per few windows).
        self._capacity = 4 * self._keep
        self._rows: FloatArray = np.zeros((6, self._capacity))
        self._rows[self._ONE] = 1.0
        self._end = 0
        self._count = 0
        self._last_n = 0
        self._held_from: int | None = None
        self._steps: dict[tuple[float, int], FloatArray] = {}
        self._cuts: dict[int, npt.NDArray[np.intp]] = {}  # reduction cuts per window head
        self._extremes = (0.0, 0.0)  # the last block's extremes, noted when ...
        self._extremes_at = -1  # ... this many samples had been pushed
        # the window length and its distinct drive phases for the last (samples available,
        # frequency) asked (length 0: no fit)
        self._last_length: tuple[tuple[int, float], int, int, int] = ((-1, 0.0), 0, 0, 0)
        self._line: FloatArray = np.empty(0)  # k / n for k = 0 .. 2n-1, n the block length
        self._noise_variance = -1.0  # the sensor's noise (g^2), averaged over windows ...
        self._rho = -1.0  # ... and the rounding correlation it gives (negative: not yet known)
        self._last_drive: float | None = None  # the newest block's first-sample drive ...
        self._last_sloped = False  # ... and whether its drive was drawn as a sloping line

    @property
    def pushed(self) -> int:
        """Samples pushed since the start (or the last :meth:`reset`)."""
        return self._count

    def hold_from(self, sample: int | None) -> None:
        """Keep every sample from the ``sample``-th pushed on (None: only the last window)."""
        self._held_from = sample

    def push(
        self,
        accel_g: FloatArray,
        phase0_rad: float,
        freq_hz: float,
        drive: float,
        after_gap: bool = False,
    ) -> None:
        """Add one block: samples in g, the drive phase and amplitude at its first sample.

        ``after_gap``: blocks were lost before this one (``SampleBlock.missing_before``). The
        block before the gap then keeps the line it was drawn with (its own slope continued),
        since this block's drive is not where that block ended; this block starts a new line.
        """
        if after_gap:
            self._last_drive = None
        n = accel_g.size
        if self._end + n > self._capacity:
            self._make_room(n)
        steps = self._steps.get((freq_hz, n))
        if steps is None:
            if len(self._steps) > 64:  # a sweep: do not keep every frequency's steps
                self._steps.clear()
            phases = block_phases(0.0, freq_hz, n, self.sample_rate_hz)
            steps = self._steps[(freq_hz, n)] = np.stack((np.cos(phases), np.sin(phases)))
        end = self._end
        stop = end + n
        rows = self._rows
        # cos and sin of phase0 + step: the rotation of (cos step, sin step) by phase0
        cos0, sin0 = math.cos(phase0_rad), math.sin(phase0_rad)
        rotation = self._rotation
        rotation[0, 0] = cos0
        rotation[0, 1] = -sin0
        rotation[1, 0] = sin0
        rotation[1, 1] = cos0
        np.matmul(rotation, steps, out=rows[self._C : self._S + 1, end:stop])
        rows[self._X, end:stop] = accel_g
        np.negative(accel_g, out=rows[self._NEG, end:stop])
        previous = self._last_drive
        if drive == previous and not self._last_sloped:
            rows[self._D, end:stop] = drive  # a held drive (most blocks of a hold)
        elif previous is not None and self._line.size == 2 * n == 2 * self._last_n and end >= n:
            # one line through the previous block (it ended at ``drive``) and this one
            change = drive - previous
            rows[self._D, end - n : stop] = previous + change * self._line
            self._last_sloped = change != 0.0
            if not 0.0 <= drive + change * (n - 1) / n <= 1.0:  # a fraction of full scale
                np.clip(rows[self._D, end:stop], 0.0, 1.0, out=rows[self._D, end:stop])
        else:
            self._write_drive(end, n, drive)
        self._last_drive = drive
        self._end = stop
        self._count += n
        self._last_n = n

    def _write_drive(self, end: int, n: int, drive: float) -> None:
        """:meth:`push`'s drive line in general (the first block, a block of another length
        than the one before, the previous block moved out of the buffer; the usual case is
        written in place there, without a call: the loop's per-update budget)."""
        row = self._rows[self._D]
        previous, last_n = self._last_drive, self._last_n
        if 2 * n != self._line.size:
            self._line = np.arange(2 * n, dtype=np.float64) / n  # k / n, k = 0 .. 2n-1
        if previous is None or last_n == 0:
            row[end : end + n] = drive
            self._last_sloped = False
            return
        change = drive - previous
        first = max(end - last_n, 0)
        k = np.arange(first - end, n, dtype=np.float64)  # from the new block's first sample
        row[first : end + n] = previous + change * (k + last_n) / last_n
        self._last_sloped = change != 0.0
        if not 0.0 <= drive + change * (n - 1) / last_n <= 1.0:  # a fraction of full scale
            np.clip(row[end : end + n], 0.0, 1.0, out=row[end : end + n])

    def _make_room(self, n: int) -> None:
        keep = min(self._keep, self._end)
        if self._held_from is not None:
            first = self._held_from - (self._count - self._end)  # its place in the buffer
            keep = max(keep, self._end - max(first, 0))
        if keep + n > self._capacity:  # a long held span: grow
            self._capacity = 2 * (keep + n)
            grown = np.zeros((6, self._capacity))
            grown[self._ONE] = 1.0
            grown[:, :keep] = self._rows[:, self._end - keep : self._end]
            self._rows = grown
        else:
            self._rows[:, :keep] = self._rows[:, self._end - keep : self._end]
        self._end = keep

    @property
    def samples(self) -> int:
        return min(self._count, self._keep)

    def block_extremes(self) -> tuple[float, float]:
        """Largest and smallest sample of the last block pushed.

        :meth:`estimate` finds them with the window's own extremes (one reduction of the window
        cut before the last block); otherwise they are found here.
        """
        if self._extremes_at == self._count:
            return self._extremes
        end = self._end
        high, neg_low = self._rows[self._X :, end - self._last_n : end].max(axis=1).tolist()
        return high, -neg_low

    def estimate(self, freq_hz: float) -> WindowEstimate | None:
        """Fit over the latest whole cycles; None until one full cycle has arrived."""
        end = self._end
        available = self.window_n  # min(count, window_n, end), without the call
        if self._count < available:  # noqa: PLR1730
            available = self._count
        if end < available:  # noqa: PLR1730
            available = end
        key = (available, freq_hz)
        last_key, n, distinct, period = self._last_length
        if key != last_key:
            n = whole_cycle_length(available, freq_hz, self.sample_rate_hz)
            if n < self.sample_rate_hz / freq_hz - 1:
                n = 0  # less than a cycle
            distinct = distinct_phase_count(n, freq_hz, self.sample_rate_hz)
            # phases that come round again within a second: successive windows repeat them
            period = phase_period(round(self.sample_rate_hz), freq_hz, self.sample_rate_hz)
            self._last_length = (key, n, distinct, period)
        if n < 3:
            return None
        head = n - self._last_n  # the window's samples before the last block
        rho = self._rho
        found = self._fit(end - n, end, head if head > 0 else 0, distinct, rho)
        if found is None:
            return None
        fit, drive_sum = found
        q = self.resolution_g
        if q <= 0.0:
            return WindowEstimate(fit, drive_sum / n)
        # How alike the roundings at a repeated phase are depends on the noise against one
        # count. One window's residual measures the noise too roughly for that (a 40-sample
        # residual varies by a quarter), so it is averaged over the windows, and the next
        # window's fit uses the average. A noisy or fine sensor (a count or more) costs no call.
        noise = fit.residual_rms_g**2 * n / (n - 3) - q * q / 12.0
        if noise < 0.0:  # noqa: PLR1730 (not max(): no call in the loop's budget)
            noise = 0.0
        average = self._noise_variance
        average = noise if average < 0.0 else average + NOISE_AVERAGING * (noise - average)
        self._noise_variance = average
        self._rho = rounding_correlation(average, q) if average < q * q else 0.0
        if rho > 0.0 and period > 0:
            repeating = repeating_peak_sigma_g(fit, period)
            return WindowEstimate(fit, drive_sum / n, repeating)
        return WindowEstimate(fit, drive_sum / n)

    def fit_span(self, first: int, end: int) -> SineFit | None:
        """Fit of the ``first``-th to the ``end - 1``-th sample pushed (:attr:`pushed` counts).

        None if they are not all held any more (see :meth:`hold_from`) or do not span enough of
        a cycle to fit.
        """
        base = self._count - self._end  # the count of the buffer's first sample
        if first < base or end > self._count or end - first < 3:
            return None
        found = self._fit(first - base, end - base)
        return None if found is None else found[0]

    def _fit(
        self, start: int, stop: int, head: int = 0, distinct: int = 0, rho: float = -1.0
    ) -> tuple[SineFit, float] | None:
        """The fit over buffer columns ``start:stop`` and the sum of the drive there.

        ``head`` > 0: the last ``stop - start - head`` columns are the last block pushed, whose
        extremes are noted for :meth:`block_extremes` from the same reduction. ``distinct``:
        how many of the samples have different drive phases (0: all, or not known); ``rho``:
        the rounding correlation at a repeated phase (negative: from the fit's own residual).

        The normal equations are solved by Cramer's rule written out here (a solver's call,
        its tuples and the fit's keyword arguments were a fifth of the fit's time); each 2 x 2
        minor is made once, by the very operations of the textbook expansion along the first
        row, so the bits are those of that formula.
        """
        window = self._rows[:, start:stop]
        sums = (window[: self._NEG] @ window[self._ONE : self._NEG].T).ravel().tolist()
        sd, _, _, _, n, sc, ss, sx, _, scc, scs, sxc, _, _, sss, sxs, _, _, _, sxx = sums
        # Cramer's rule on ((n, sc, ss), (sc, scc, scs), (ss, scs, sss)) . (dc, a, b) =
        # (sx, sxc, sxs). minor_<row><column>: the matrix's 2 x 2 minor without that row and
        # column; minor_x1, minor_x2: minor_01 and minor_02 with (sxc, sxs) in place of their
        # column 0 and column 1.
        minor_00 = scc * sss - scs * scs
        minor_01 = sc * sss - scs * ss
        minor_02 = sc * scs - scc * ss
        det = n * minor_00 - sc * minor_01 + ss * minor_02
        if abs(det) < 1e-12 * max(1.0, abs(n * scc * sss)):
            return None
        minor_x1 = sxc * sss - scs * sxs
        minor_x2 = sc * sxs - sxc * ss
        dc = (sx * minor_00 - sc * minor_x1 + ss * (sxc * scs - scc * sxs)) / det
        a = (n * minor_x1 - sx * minor_01 + ss * minor_x2) / det
        b = (n * (scc * sxs - sxc * scs) - sc * minor_x2 + sx * minor_02) / det
        residual_ss = sxx - (dc * sx + a * sxc + b * sxs)
        if not residual_ss > 0.0:  # max(0.0, x), without the call (and as it treats -0.0, nan)
            residual_ss = 0.0
        if head:
            cuts = self._cuts.get(head)
            if cuts is None:
                cuts = self._cuts[head] = np.array((0, head))
            (head_high, block_high), (head_neg_low, block_neg_low) = _MAXIMUM_REDUCEAT(
                window[self._X :], cuts, 1
            ).tolist()
            # max(x, y) as max() picks (x unless y is larger), without the calls
            high = block_high if block_high > head_high else head_high
            neg_low = block_neg_low if block_neg_low > head_neg_low else head_neg_low
            self._extremes = (block_high, -block_neg_low)
            self._extremes_at = self._count
        else:
            high, neg_low = window[self._X :].max(axis=1).tolist()
        count = stop - start
        above, below = high - dc, dc + neg_low
        fit = SineFit(
            math.hypot(a, b),
            math.atan2(-b, a),
            dc,
            below if below > above else above,  # max(above, below)
            math.sqrt(residual_ss / count),
            count,
            distinct,
            self.resolution_g,
            rho,
        )
        return fit, sd


class WindowEstimate(NamedTuple):
    """A fit plus the mean drive amplitude the device reported over the same samples."""

    fit: SineFit
    mean_drive: float
    # the part of ``fit.peak_sigma_g`` that successive windows repeat (rounding at drive
    # phases that come round again; :func:`repeating_peak_sigma_g`), 0 if none
    repeat_sigma_g: float = 0.0
