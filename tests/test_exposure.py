"""ISO 2631-1 exposure: the Wk weighting and the a_w, A(8), VDV arithmetic."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import numpy as np
import pytest
import scipy.signal

from controller.exposure import ExposureMeter, wk_gain, wk_sos

# |Wk| computed from the standard's filter definition (shared/DOMAIN.md)
WK_CHECK = {30.0: 0.426, 31.5: 0.405, 40.0: 0.314, 50.0: 0.246, 63.0: 0.186, 80.0: 0.132}


@pytest.mark.parametrize(("freq", "expected"), sorted(WK_CHECK.items()))
def test_wk_matches_the_standard(freq: float, expected: float) -> None:
    assert wk_gain(freq) == pytest.approx(expected, abs=0.0006)
    _, response = scipy.signal.sosfreqz(wk_sos(1600.0), worN=[freq], fs=1600.0)
    assert abs(response[0]) == pytest.approx(expected, rel=0.013)


def test_a_sine_session_gives_the_published_figures() -> None:
    """2 x 10 min of 0.3 g at 30 Hz: a_w 0.89, A(8) 0.18, VDV 5.8 (shared/DOMAIN.md, calc)."""
    fs = 1600.0
    meter = ExposureMeter(fs)
    t = np.arange(int(1200 * fs)) / fs
    accel = 1.0 + 0.3 * np.sin(2 * np.pi * 30.0 * t)  # gravity included, as the sensor reads
    for start in range(0, t.size, 32):
        meter.push(accel[start : start + 32])
    fig = meter.figures()
    assert fig.duration_s == pytest.approx(1200.0)
    assert fig.a_w_m_s2 == pytest.approx(0.89, abs=0.01)
    assert fig.a8_m_s2 == pytest.approx(0.18, abs=0.005)
    assert fig.vdv_m_s1_75 == pytest.approx(5.8, abs=0.05)


def test_gravity_alone_is_no_exposure() -> None:
    meter = ExposureMeter(1600.0)
    meter.push(np.ones(16000))
    assert meter.figures().a_w_m_s2 < 1e-6


def test_the_meter_filters_as_scipy_does_whatever_the_block_sizes() -> None:
    """Blocks of any size (across the meter's buffer and summing boundaries, a partial buffer
    at the end) give the figures of one scipy filter run over the whole signal."""
    fs = 1600.0
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 300, 120)
    t = np.arange(int(sizes.sum())) / fs
    accel = 1.0 + 0.3 * np.sin(2 * np.pi * 45.0 * t) + 0.01 * rng.standard_normal(t.size)
    meter = ExposureMeter(fs)
    start = 0
    for size in sizes:
        meter.push(accel[start : start + size])
        start += size
    fig = meter.figures()
    sos = wk_sos(fs)
    weighted, _ = scipy.signal.sosfilt(sos, accel, zi=scipy.signal.sosfilt_zi(sos) * accel[0])
    weighted *= 9.80665
    assert fig.duration_s == pytest.approx(t.size / fs, rel=1e-12)
    assert fig.a_w_m_s2 == pytest.approx(np.sqrt(np.mean(weighted**2)), rel=1e-9)
    assert fig.vdv_m_s1_75 == pytest.approx((np.sum(weighted**4) / fs) ** 0.25, rel=1e-9)


def test_a_block_costs_the_meter_about_one_call() -> None:
    """A 32-sample block is copied into the meter's buffer; the filter's product and the sums
    come once per buffer and per summing span (the meter ran on every block of `liv start`).
    Calls (Python and C, from sys.setprofile) per block: 4.5 before this was so."""
    meter = ExposureMeter(1600.0)
    accel = 1.0 + 0.3 * np.sin(0.1 * np.arange(32 * 1000))
    blocks = [accel[i : i + 32] for i in range(0, accel.size, 32)]
    for block in blocks[:100]:
        meter.push(block)
    calls = [0]

    def count(frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            calls[0] += 1

    sys.setprofile(count)
    try:
        for block in blocks[100:900]:
            meter.push(block)
    finally:
        sys.setprofile(None)
    assert calls[0] / 800 <= 2.5
    assert meter.figures().duration_s == pytest.approx(18.0)
