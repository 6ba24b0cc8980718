"""The plate's accelerometer, vertical axis: what the firmware reads, in output counts.

Signal chain per sample (defaults model an ADXL345 at +/-4 g, full resolution)::

    true accel + 1 g gravity  ->  x (1 + sensitivity error) + bias  ->  + white noise
    ->  2nd-order Butterworth anti-alias low-pass  ->  round to counts  ->  clip to the range

The noise is white with standard deviation ``noise_density * sqrt(fs / 2)``. The filter's
state is carried from call to call, so measuring block by block gives the same counts as
measuring everything at once. Faults are flags: ``disconnected`` reads 0 counts,
``saturated`` reads positive full scale, ``stuck`` repeats the last value output before it
stuck (checked in that order). The filter and the noise keep running under a fault, so
clearing it resumes the live reading.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.signal

from firmware_bridge.sim.profile import AccelerometerProfile

__all__ = ["Accelerometer"]


class Accelerometer:
    """One accelerometer axis, deterministic given its ``rng``.

    Parameters
    ----------
    profile
        Sensitivity, bias, noise, range, resolution and anti-alias cutoff.
    sample_rate_hz
        Output data rate; the filter cutoff must lie below half of it.
    rng
        Source of the noise.

    Attributes
    ----------
    noise_density_ug : float
        Noise density in ug/sqrt(Hz); may be changed between calls.
    stuck, saturated, disconnected : bool
        Fault flags (see the module docstring).
    """

    def __init__(
        self, profile: AccelerometerProfile, sample_rate_hz: float, rng: np.random.Generator
    ) -> None:
        if not (math.isfinite(sample_rate_hz) and sample_rate_hz > 0.0):
            raise ValueError(f"sample_rate_hz = {sample_rate_hz!r} must be a positive number")
        if profile.anti_alias_cutoff_hz >= sample_rate_hz / 2.0:
            raise ValueError(
                f"anti_alias_cutoff_hz = {profile.anti_alias_cutoff_hz!r} is out of range; "
                f"allowed: below half the sample rate ({sample_rate_hz / 2.0} Hz)"
            )
        self.profile = profile
        self.sample_rate_hz = float(sample_rate_hz)
        self.noise_density_ug = profile.noise_density_ug
        self.stuck = False
        self.saturated = False
        self.disconnected = False
        self._rng = rng
        self._gain = 1.0 + profile.sensitivity_error_fraction
        b, a = scipy.signal.butter(2, profile.anti_alias_cutoff_hz, fs=self.sample_rate_hz)
        self._b: npt.NDArray[np.float64] = np.asarray(b, dtype=np.float64)
        self._a: npt.NDArray[np.float64] = np.asarray(a, dtype=np.float64)
        resting_g = self._gain + profile.bias_g  # level plate at rest: gravity only
        self._zi: npt.NDArray[np.float64] = (
            np.asarray(scipy.signal.lfilter_zi(self._b, self._a), dtype=np.float64) * resting_g
        )
        full_scale = round(profile.range_g * profile.counts_per_g)
        word = 2 ** (profile.bit_depth - 1)
        self.max_count = min(full_scale - 1, word - 1)
        self.min_count = max(-full_scale, -word)
        self._last = int(
            np.clip(round(resting_g * profile.counts_per_g), self.min_count, self.max_count)
        )

    def measure(self, accel_g: npt.ArrayLike) -> npt.NDArray[np.int16]:
        """Counts for true vertical plate accelerations (g, gravity removed), shape (n,)."""
        true_g = np.asarray(accel_g, dtype=np.float64)
        if true_g.ndim != 1:
            raise ValueError(f"accel_g must be one-dimensional, got shape {true_g.shape}")
        sensed = (true_g + 1.0) * self._gain + self.profile.bias_g
        noise_std_g = self.noise_density_ug * 1e-6 * math.sqrt(self.sample_rate_hz / 2.0)
        sensed += noise_std_g * self._rng.standard_normal(true_g.size)
        filtered, self._zi = scipy.signal.lfilter(self._b, self._a, sensed, zi=self._zi)
        counts = np.clip(
            np.rint(np.asarray(filtered) * self.profile.counts_per_g),
            self.min_count,
            self.max_count,
        ).astype(np.int16)
        if self.disconnected:
            counts[:] = 0
        elif self.saturated:
            counts[:] = self.max_count
        elif self.stuck:
            counts[:] = self._last
        if counts.size:
            self._last = int(counts[-1])
        return counts
