"""ISO 2631-1 exposure: the Wk weighting and the a_w, A(8), VDV arithmetic."""

from __future__ import annotations

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
