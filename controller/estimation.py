"""Amplitude estimation locked to the drive phase the device reports.

A least-squares fit of ``x[k] = c + a*cos(phi[k]) + b*sin(phi[k])`` over whole drive cycles:
the DC term absorbs gravity and sensor bias, the fit ignores harmonics and noise that fool peak
detection, and with known frequency it reaches the Cramer-Rao bound 2*sigma^2/N (Kay,
Fundamentals of Statistical Signal Processing I).
"""

from __future__ import annotations

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
    design = np.column_stack([np.ones(n), np.cos(phase_rad), np.sin(phase_rad)])
    coef, *_ = np.linalg.lstsq(design, accel_g, rcond=None)
    dc, a, b = (float(c) for c in coef)
    residual = accel_g - design @ coef
    return SineFit(
        peak_g=float(np.hypot(a, b)),
        phase_rad=float(np.arctan2(-b, a)),
        dc_g=dc,
        total_peak_g=float(np.max(np.abs(accel_g - dc))),
        residual_rms_g=float(np.sqrt(np.mean(residual**2))),
        n_samples=n,
    )


def block_phases(phase0_rad: float, freq_hz: float, n: int, sample_rate_hz: float) -> FloatArray:
    """Drive phase of each sample in a block whose first sample has phase ``phase0_rad``."""
    step = 2.0 * np.pi * freq_hz / sample_rate_hz
    return phase0_rad + step * np.arange(n, dtype=np.float64)
