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

Numpy only (no scipy on the path that starts a session, issue 11): each of the four analog
sections is made digital on its own (one biquad each, the same filter as the product), and the
meter runs the cascade on 256 samples (eight blocks) at a time as one matrix product
``[y; z'] = M @ [x; z]`` (``M`` built once by running the biquads' recursion on unit inputs),
written straight into an array of weighted samples whose squares are summed every 2048: a
block costs one copy into a buffer, about 1.5 us, where a filter call per block cost about 30.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

G_M_S2 = 9.80665
EIGHT_HOURS_S = 8 * 3600.0
PREWARP_HZ = 50.0
_BLOCK_MAX = 256  # samples filtered in one product (eight 32-sample blocks)
_WEIGHTED_MAX = 2048  # weighted samples summed at once


def _wk_parts() -> list[tuple[list[float], list[float]]]:
    """The analog Wk as four sections (numerator, denominator; powers of s, highest first)."""
    w1, w2 = 2 * math.pi * 0.4, 2 * math.pi * 100.0
    w3, w4, q4 = 2 * math.pi * 12.5, 2 * math.pi * 12.5, 0.63
    w5, q5, w6, q6 = 2 * math.pi * 2.37, 0.91, 2 * math.pi * 3.35, 0.91
    sqrt2 = math.sqrt(2.0)
    return [
        ([1.0, 0.0, 0.0], [1.0, sqrt2 * w1, w1 * w1]),  # high-pass band limit
        ([w2 * w2], [1.0, sqrt2 * w2, w2 * w2]),  # low-pass band limit
        ([w4 * w4 / w3, w4 * w4], [1.0, w4 / q4, w4 * w4]),  # a-v transition
        ([1.0, w5 / q5, w5 * w5], [1.0, w6 / q6, w6 * w6]),  # upward step
    ]


def wk_analog() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Numerator and denominator (powers of s, highest first) of the analog Wk weighting."""
    parts = _wk_parts()
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
    """Second-order sections ``[b0, b1, b2, 1, a1, a2]`` of the digital Wk at ``sample_rate_hz``.

    Each analog section through the bilinear transform pre-warped to be exact at PREWARP_HZ,
    ``s = c (z - 1) / (z + 1)``: the cascade is the transform of the whole Wk.
    """
    c = 2.0 * math.pi * PREWARP_HZ / math.tan(math.pi * PREWARP_HZ / sample_rate_hz)
    # (z-1)^2, (z-1)(z+1), (z+1)^2 in powers of z^-1 after dividing by z^2
    basis = np.array([[1.0, -2.0, 1.0], [1.0, 0.0, -1.0], [1.0, 2.0, 1.0]])
    rows = []
    for b, a in _wk_parts():
        b2, b1, b0 = [0.0] * (3 - len(b)) + b
        a2, a1, a0 = a
        num = (b2 * c * c) * basis[0] + (b1 * c) * basis[1] + b0 * basis[2]
        den = (a2 * c * c) * basis[0] + (a1 * c) * basis[1] + a0 * basis[2]
        rows.append(np.concatenate((num / den[0], den / den[0])))
    return np.array(rows)


def sos_steady_state(sos: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """State of the cascade (transposed direct form, (sections, 2)) after a unit input for ever.

    What ``scipy.signal.sosfilt_zi`` returns: each section's steady state for its input, which
    is the DC gain of the sections before it.
    """
    states = np.zeros((sos.shape[0], 2))
    scale = 1.0
    for k, (b0, b1, b2, _, a1, a2) in enumerate(sos):
        # z1 = b2 - a2 y and z0 = b1 - a1 y + z1 with y = (b0 + b1 + b2) / (1 + a1 + a2)
        y = (b0 + b1 + b2) / (1.0 + a1 + a2)
        z1 = b2 - a2 * y
        states[k] = scale * np.array([b1 - a1 * y + z1, z1])
        scale *= y
    return states


def sos_block_form(sos: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """The cascade over ``n`` samples as one matrix: ``[y; z'] = M @ [x; z]``.

    ``z`` is the sections' states flattened ((sections * 2,), as :func:`sos_steady_state`);
    the columns are the responses to each unit input sample and each unit initial state.
    """
    width = n + 2 * sos.shape[0]
    state = np.zeros((sos.shape[0], 2, width))
    state.reshape(-1, width)[:, n:] = np.eye(2 * sos.shape[0])
    out = np.empty((n, width))
    unit = np.eye(n, width)
    for k in range(n):
        x = unit[k]
        for j, (b0, b1, b2, _, a1, a2) in enumerate(sos):
            z = state[j]
            y = b0 * x + z[0]
            z[0] = b1 * x + z[1] - a1 * y
            z[1] = b2 * x - a2 * y
            x = y
        out[k] = x
    return np.vstack((out, state.reshape(-1, width)))


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
    """Feeds accelerometer samples (g, gravity included) through Wk and accumulates.

    Samples are copied into a buffer that holds ``_BLOCK_MAX`` of them followed by the filter's
    state; a full buffer is filtered by one product whose output (the weighted samples, then
    the state after them) is written straight into an array of weighted samples, and the state
    is copied back behind the buffer. The sums of w^2 and w^4 are taken over that array when
    it fills (every ``_WEIGHTED_MAX`` samples) and at :meth:`figures`. A block costs one copy;
    every ``_BLOCK_MAX`` samples, two more operations.
    """

    def __init__(self, sample_rate_hz: float) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._sos = wk_sos(sample_rate_hz)
        states = 2 * self._sos.shape[0]
        self._form = sos_block_form(self._sos, _BLOCK_MAX)
        self._form[:_BLOCK_MAX] *= G_M_S2  # weighted samples in m/s^2
        self._started = False
        self._sum2 = 0.0
        self._sum4 = 0.0
        self._n = 0
        # [samples pushed, not yet filtered (the first _filled); the filter's state]
        self._buffer = np.zeros(_BLOCK_MAX + states)
        self._filled = 0
        # weighted samples not yet summed (the first _weighted), then room for one output
        self._out = np.empty(_WEIGHTED_MAX + _BLOCK_MAX + states)
        self._weighted = 0

    def push(self, accel_g: npt.NDArray[np.float64]) -> None:
        """Add samples; they are filtered _BLOCK_MAX at a time (pending ones at :meth:`figures`)."""
        n = accel_g.size
        filled = self._filled
        if filled + n < _BLOCK_MAX:
            self._buffer[filled : filled + n] = accel_g
            self._filled = filled + n
            return
        taken = 0
        while taken < n:  # fill the buffer, filter it when full
            part = min(n - taken, _BLOCK_MAX - self._filled)
            self._buffer[self._filled : self._filled + part] = accel_g[taken : taken + part]
            self._filled += part
            taken += part
            if self._filled == _BLOCK_MAX:
                self._filter_full()

    def _start(self) -> None:
        # start the filter as if the sensor had been reading its first value for ever (no
        # transient from the step onto gravity)
        self._started = True
        self._buffer[_BLOCK_MAX:] = sos_steady_state(self._sos).reshape(-1) * self._buffer[0]

    def _filter_full(self) -> None:
        """Filter the full buffer; its weighted samples join those not yet summed."""
        if not self._started:
            self._start()
        first = self._weighted
        stop = first + _BLOCK_MAX
        np.matmul(
            self._form, self._buffer, out=self._out[first : stop + self._buffer.size - _BLOCK_MAX]
        )
        self._buffer[_BLOCK_MAX:] = self._out[stop : stop + self._buffer.size - _BLOCK_MAX]
        self._filled = 0
        self._weighted = stop
        if stop >= _WEIGHTED_MAX:
            self._sum_weighted()

    def _sum_weighted(self) -> None:
        self._add(self._out[: self._weighted])
        self._weighted = 0

    def _add(self, w: npt.NDArray[np.float64]) -> None:
        w2 = w * w
        self._sum2 += float(w2.sum())
        self._sum4 += float((w2 * w2).sum())
        self._n += w.size

    def figures(self) -> ExposureFigures:
        """The figures over every sample pushed so far (a partial buffer is filtered too)."""
        self._sum_weighted()
        n = self._filled
        if n:
            if not self._started:
                self._start()
            form = sos_block_form(self._sos, n)
            form[:n] *= G_M_S2
            out = form @ np.concatenate((self._buffer[:n], self._buffer[_BLOCK_MAX:]))
            self._buffer[_BLOCK_MAX:] = out[n:]
            self._filled = 0
            self._add(out[:n])
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
