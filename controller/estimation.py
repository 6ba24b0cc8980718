"""Amplitude estimation locked to the drive phase the device reports.

A least-squares fit of ``x[k] = c + a*cos(phi[k]) + b*sin(phi[k])`` over whole drive cycles:
the DC term absorbs gravity and sensor bias, the fit ignores harmonics and noise that fool peak
detection, and with known frequency it reaches the Cramer-Rao bound 2*sigma^2/N (Kay,
Fundamentals of Statistical Signal Processing I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SineFit:
    """Result of a fit: sine-equivalent peak at the drive frequency, plus what it ignored."""

    peak_g: float  # amplitude of the fundamental
    phase_rad: float  # phase of the response relative to the drive phase
    dc_g: float  # mean (gravity + bias)
    total_peak_g: float  # largest |x - dc| in the window
    residual_rms_g: float  # what the fundamental does not explain (harmonics + noise)
    n_samples: int

    @property
    def peak_sigma_g(self) -> float:
        """Standard uncertainty of ``peak_g`` from the residual: ``sqrt(2 s^2 / N)``.

        ``s^2`` is the residual variance with the fit's three parameters taken out. Harmonics
        count as noise here although the fit over whole cycles ignores them, so the figure errs
        on the side of more uncertainty, never less.
        """
        n = self.n_samples
        if n <= 3:
            return math.inf
        variance = self.residual_rms_g**2 * n / (n - 3)
        return math.sqrt(2.0 * variance / n)


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

    The fit is the same as :func:`fit_sine`. Each block's samples, the cosine and sine of
    their drive phase and the drive are written once into a buffer; a window's normal
    equations are then one (3 x n) x (n x 3) product and two sums over its columns.
    """

    # rows of the buffer: samples, cos, sin (the fit's regressors with x) and the drive
    _X, _C, _S, _D = range(4)

    def __init__(self, sample_rate_hz: float, window_s: float = 0.1) -> None:
        if window_s <= 0.0:
            raise ValueError(f"window_s {window_s!r} must be positive")
        self.sample_rate_hz = sample_rate_hz
        self.window_n = max(3, round(window_s * sample_rate_hz))
        self._keep = self.window_n + round(sample_rate_hz / 20.0) + 1  # a 20 Hz cycle of slack
        self.reset()

    def reset(self) -> None:
        # The buffer is several windows long, written in place; when it fills, the last
        # window is moved to the front (amortised: once per few windows).
        self._capacity = 4 * self._keep
        self._rows: FloatArray = np.zeros((4, self._capacity))
        self._end = 0
        self._count = 0
        self._steps: dict[tuple[float, int], FloatArray] = {}

    def push(self, accel_g: FloatArray, phase0_rad: float, freq_hz: float, drive: float) -> None:
        """Add one block: samples in g, the drive phase and amplitude at its first sample."""
        n = accel_g.size
        if self._end + n > self._capacity:
            keep = min(self._keep, self._end)
            self._rows[:, :keep] = self._rows[:, self._end - keep : self._end]
            self._end = keep
        steps = self._steps.get((freq_hz, n))
        if steps is None:
            if len(self._steps) > 64:  # a sweep: do not keep every frequency's steps
                self._steps.clear()
            steps = self._steps[(freq_hz, n)] = block_phases(0.0, freq_hz, n, self.sample_rate_hz)
        end = self._end
        rows = self._rows[:, end : end + n]
        phases = phase0_rad + steps
        np.cos(phases, out=rows[self._C])
        np.sin(phases, out=rows[self._S])
        rows[self._X] = accel_g
        rows[self._D] = drive
        self._end = end + n
        self._count += n

    @property
    def samples(self) -> int:
        return min(self._count, self._keep)

    def estimate(self, freq_hz: float) -> WindowEstimate | None:
        """Fit over the latest whole cycles; None until one full cycle has arrived."""
        available = min(self._count, self.window_n, self._end)
        n = whole_cycle_length(available, freq_hz, self.sample_rate_hz)
        if n < self.sample_rate_hz / freq_hz - 1 or n < 3:
            return None
        end = self._end
        regressors = self._rows[: self._D, end - n : end]  # x, cos, sin
        (sxx, sxc, sxs), (_, scc, scs), (_, _, sss) = (regressors @ regressors.T).tolist()
        sx, sc, ss = regressors.sum(axis=1).tolist()
        sd = float(self._rows[self._D, end - n : end].sum())
        solved = _solve3(((float(n), sc, ss), (sc, scc, scs), (ss, scs, sss)), (sx, sxc, sxs))
        if solved is None:
            return None
        dc, a, b = solved
        residual_ss = max(0.0, sxx - (dc * sx + a * sxc + b * sxs))
        window = self._rows[self._X, end - n : end]
        fit = SineFit(
            peak_g=math.hypot(a, b),
            phase_rad=math.atan2(-b, a),
            dc_g=dc,
            total_peak_g=max(float(window.max()) - dc, dc - float(window.min())),
            residual_rms_g=math.sqrt(residual_ss / n),
            n_samples=n,
        )
        return WindowEstimate(fit=fit, mean_drive=sd / n)


def _solve3(
    m: tuple[tuple[float, float, float], ...], r: tuple[float, float, float]
) -> tuple[float, float, float] | None:
    """Solve a symmetric 3x3 system by Cramer's rule (None if singular)."""
    (a, b, c), (_, e, f), (_, _, i) = m
    det = a * (e * i - f * f) - b * (b * i - f * c) + c * (b * f - e * c)
    if abs(det) < 1e-12 * max(1.0, abs(a * e * i)):
        return None
    r0, r1, r2 = r
    d0 = r0 * (e * i - f * f) - b * (r1 * i - f * r2) + c * (r1 * f - e * r2)
    d1 = a * (r1 * i - f * r2) - r0 * (b * i - f * c) + c * (b * r2 - r1 * c)
    d2 = a * (e * r2 - r1 * f) - b * (b * r2 - r1 * c) + r0 * (b * f - e * c)
    return d0 / det, d1 / det, d2 / det


@dataclass(frozen=True)
class WindowEstimate:
    """A fit plus the mean drive amplitude the device reported over the same samples."""

    fit: SineFit
    mean_drive: float


def _keep_tail(old: FloatArray, new: FloatArray, keep: int) -> FloatArray:
    """The last ``keep`` samples of ``old`` followed by ``new``."""
    room = keep - new.size
    if room <= 0:
        return new[-keep:]
    return np.concatenate((old[-room:], new))
