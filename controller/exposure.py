"""Whole-body vibration exposure per ISO 2631-1: Wk-weighted a_w, A(8) and VDV, streamed.

The vertical weighting Wk is the standard's product of a band limit (2nd-order Butterworth
high-pass at 0.4 Hz and low-pass at 100 Hz), an acceleration-velocity transition
(f3 = f4 = 12.5 Hz, Q4 = 0.63) and an upward step (f5 = 2.37 Hz, Q5 = 0.91, f6 = 3.35 Hz,
Q6 = 0.91), made digital with a bilinear transform pre-warped to be exact at 50 Hz, the middle
of the therapy band. |Wk| at 30 Hz is 0.426 and at 90 Hz 0.108 (check values in
shared/DOMAIN.md); at 1600 Hz the digital filter is within 1.3% of them over 30-90 Hz (worst at
90 Hz, where the bilinear transform compresses the response). The high-pass removes gravity,
so the meter takes the raw accelerometer samples in g.

a_w is the rms of the weighted acceleration, A(8) = a_w * sqrt(T / 8 h), and
VDV = (integral of a_w(t)^4 dt)^(1/4), all in SI units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.signal

G_M_S2 = 9.80665
EIGHT_HOURS_S = 8 * 3600.0
PREWARP_HZ = 50.0


def wk_analog() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Numerator and denominator (powers of s, highest first) of the analog Wk weighting."""
    w1, w2 = 2 * math.pi * 0.4, 2 * math.pi * 100.0
    w3, w4, q4 = 2 * math.pi * 12.5, 2 * math.pi * 12.5, 0.63
    w5, q5, w6, q6 = 2 * math.pi * 2.37, 0.91, 2 * math.pi * 3.35, 0.91
    sqrt2 = math.sqrt(2.0)
    parts = [
        ([1.0, 0.0, 0.0], [1.0, sqrt2 * w1, w1 * w1]),  # high-pass band limit
        ([w2 * w2], [1.0, sqrt2 * w2, w2 * w2]),  # low-pass band limit
        ([w4 * w4 / w3, w4 * w4], [1.0, w4 / q4, w4 * w4]),  # a-v transition
        ([1.0, w5 / q5, w5 * w5], [1.0, w6 / q6, w6 * w6]),  # upward step
    ]
    num: npt.NDArray[np.float64] = np.array([1.0])
    den: npt.NDArray[np.float64] = np.array([1.0])
    for b, a in parts:
        num = np.asarray(np.polymul(num, b), dtype=np.float64)
        den = np.asarray(np.polymul(den, a), dtype=np.float64)
    return num, den


def wk_gain(freq_hz: float) -> float:
    """|Wk| at ``freq_hz`` from the analog definition."""
    num, den = wk_analog()
    s = 2j * math.pi * freq_hz
    return float(abs(np.polyval(num, s) / np.polyval(den, s)))


def wk_sos(sample_rate_hz: float) -> npt.NDArray[np.float64]:
    """Second-order sections of the digital Wk filter at ``sample_rate_hz``."""
    num, den = wk_analog()
    # Bilinear transform pre-warped so the digital response is exact at PREWARP_HZ.
    warped_fs = math.pi * PREWARP_HZ / math.tan(math.pi * PREWARP_HZ / sample_rate_hz)
    z, p, k = scipy.signal.tf2zpk(num, den)
    zd, pd, kd = scipy.signal.bilinear_zpk(z, p, k, fs=warped_fs)
    sos: npt.NDArray[np.float64] = scipy.signal.zpk2sos(zd, pd, kd)
    return sos


@dataclass(frozen=True)
class ExposureFigures:
    a_w_m_s2: float
    a8_m_s2: float
    vdv_m_s1_75: float
    duration_s: float

    def to_dict(self) -> dict[str, float]:
        return {
            "a_w_m_s2": self.a_w_m_s2,
            "a8_m_s2": self.a8_m_s2,
            "vdv_m_s1_75": self.vdv_m_s1_75,
            "duration_s": self.duration_s,
        }


class ExposureMeter:
    """Feeds accelerometer samples (g, gravity included) through Wk and accumulates."""

    def __init__(self, sample_rate_hz: float) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._sos = wk_sos(sample_rate_hz)
        self._zi: npt.NDArray[np.float64] | None = None
        self._sum2 = 0.0
        self._sum4 = 0.0
        self._n = 0

    def push(self, accel_g: npt.NDArray[np.float64]) -> None:
        if self._zi is None:
            # start the filter as if the sensor had been reading this value for ever (no
            # transient from the step onto gravity)
            self._zi = scipy.signal.sosfilt_zi(self._sos) * float(accel_g[0])
        weighted, self._zi = scipy.signal.sosfilt(self._sos, accel_g, zi=self._zi)
        w = np.asarray(weighted) * G_M_S2
        w2 = w * w
        self._sum2 += float(w2.sum())
        self._sum4 += float((w2 * w2).sum())
        self._n += accel_g.size

    def figures(self) -> ExposureFigures:
        if self._n == 0:
            return ExposureFigures(0.0, 0.0, 0.0, 0.0)
        duration = self._n / self.sample_rate_hz
        a_w = math.sqrt(self._sum2 / self._n)
        return ExposureFigures(
            a_w_m_s2=a_w,
            a8_m_s2=a_w * math.sqrt(duration / EIGHT_HOURS_S),
            vdv_m_s1_75=(self._sum4 / self.sample_rate_hz) ** 0.25,
            duration_s=duration,
        )
