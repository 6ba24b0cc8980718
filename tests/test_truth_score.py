"""The truth scorer: known answers on synthetic truth files, one real run, and independence."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks import truth_score
from firmware_bridge.client import DeviceClient
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.sim.profile import PlateProfile
from tests.simhelpers import load_truth, measured_g_per_drive, run_blocks, truth_amplitude

SCORER = Path(truth_score.__file__)
FS = 1600.0
BLOCK = 32


def write_truth(
    path: Path,
    envelope_g: npt.NDArray[np.float64],
    mass_kg: npt.NDArray[np.float64],
    freq_hz: float = 30.0,
    noise_g: float = 0.001,
) -> Path:
    """A truth file in the simulator's format: a sine with the given envelope, plus a 2% 2nd
    harmonic and noise, with the per-block mass taken from the per-sample ``mass_kg``."""
    n = envelope_g.size
    t = np.arange(n) / FS
    theta = 2 * np.pi * freq_hz * t + 0.7
    rng = np.random.default_rng(1)
    accel = envelope_g * (np.sin(theta) + 0.02 * np.sin(2 * theta + 0.3))
    accel += noise_g * rng.standard_normal(n)
    blocks = np.arange(0, n, BLOCK)
    np.savez(
        path,
        t_s=t,
        accel_g=accel,
        drive=envelope_g,  # not used by the scorer
        freq_hz=np.full(n, freq_hz, dtype=np.float32),
        sample_index=np.arange(n, dtype=np.int64),
        block_t_s=t[blocks],
        coil_temp_c=np.full(blocks.size, 20.0),
        patient_mass_kg=mass_kg[blocks],
        events=np.array([], dtype=str),
        sample_rate_hz=np.array(FS),
    )
    return path


def piecewise(knots: list[tuple[float, float]], seconds: float) -> npt.NDArray[np.float64]:
    """Linear interpolation through (time, value) knots, sampled at FS."""
    t = np.arange(round(seconds * FS)) / FS
    times, values = zip(*knots, strict=True)
    return np.interp(t, times, values)


@pytest.fixture
def session(tmp_path: Path) -> Path:
    """20 s: ramp 1-3 s to 0.3 g, 0.36 g at 8-9 s, nobody on at 14-16 s, 0.315 g at 16-18 s,
    ramp down 18-19 s."""
    env = piecewise(
        [(0, 0), (1, 0), (3, 0.3), (8, 0.3), (8, 0.36), (9, 0.36), (9, 0.3), (16, 0.3),
         (16, 0.315), (18, 0.315), (19, 0.0), (20, 0.0)],
        20.0,
    )  # fmt: skip
    t = np.arange(env.size) / FS
    mass = np.where((t >= 14.0) & (t < 16.0), 0.0, 70.0)
    return write_truth(tmp_path / "truth.npz", env, mass)


def test_known_answers(session: Path) -> None:
    result = truth_score.score(truth_score.load_truth(session), 0.3, 0.1)
    assert result.duration_s == pytest.approx(20.0)
    assert result.drive_freq_hz == pytest.approx(30.0)
    # 10% of 0.3 g at 1.2 s, 90% at 2.8 s on the 1-3 s linear ramp
    assert result.ramp_t10_s == pytest.approx(1.2, abs=0.03)
    assert result.ramp_t90_s == pytest.approx(2.8, abs=0.03)
    assert result.ramp_10_90_s == pytest.approx(1.6, abs=0.05)
    assert result.overshoot_fraction == pytest.approx(0.2, abs=0.01)
    assert result.seconds_on_plate == pytest.approx(18.0, abs=0.15)
    assert result.seconds_vibrating_unoccupied == pytest.approx(2.0, abs=0.15)
    # within 0.27..0.33 g with somebody on: 2.8-3 s, 3-8 s, 9-14 s, 16-18 s, and 18-18.14 s
    assert result.seconds_at_dose == pytest.approx(0.2 + 5 + 5 + 2 + 0.045 / 0.315, abs=0.3)
    # 1-s windows 3..18 s with somebody on: ten exact, 16-18 s 5% high, 8-9 s 20% high
    assert result.hold_windows == 13
    expected = np.percentile([0.0] * 10 + [0.05, 0.05, 0.2], 95)
    assert result.hold_p95_error_fraction == pytest.approx(expected, abs=0.005)
    assert result.hold_max_error_fraction == pytest.approx(0.2, abs=0.005)


def test_a_plate_that_never_reaches_the_target_scores_no_dose(tmp_path: Path) -> None:
    env = piecewise([(0, 0), (1, 0.25), (10, 0.25)], 10.0)
    path = write_truth(tmp_path / "low.npz", env, np.full(env.size, 80.0), freq_hz=45.0)
    result = truth_score.score(truth_score.load_truth(path), 0.3, 0.1)
    assert result.seconds_at_dose == 0.0
    assert np.isnan(result.ramp_t90_s)
    assert result.hold_windows == 0
    assert result.overshoot_fraction == 0.0
    assert result.drive_freq_hz == pytest.approx(45.0)
    # a looser tolerance takes it: 0.25 g is 16.7% low
    loose = truth_score.score(truth_score.load_truth(path), 0.3, 0.2)
    assert loose.seconds_at_dose == pytest.approx(9.0, abs=0.15)


def test_harmonics_and_noise_do_not_bias_the_envelope(tmp_path: Path) -> None:
    env = np.full(round(3 * FS), 0.3)
    path = write_truth(tmp_path / "flat.npz", env, np.full(env.size, 60.0), noise_g=0.01)
    peaks = truth_score.envelope(truth_score.load_truth(path)).peak_g
    assert np.median(peaks) == pytest.approx(0.3, rel=0.002)
    assert np.max(np.abs(peaks - 0.3)) < 0.01


def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, t_s=np.zeros(3))
    with pytest.raises(ValueError, match="missing accel_g"):
        truth_score.load_truth(path)
    env = np.full(round(2 * FS), 0.3)
    good = truth_score.load_truth(write_truth(tmp_path / "t.npz", env, np.full(env.size, 60.0)))
    with pytest.raises(ValueError, match="target_g"):
        truth_score.score(good, -0.3, 0.1)
    with pytest.raises(ValueError, match="tolerance"):
        truth_score.score(good, 0.3, 10.0)


# ---- a real simulator run --------------------------------------------------------------------


def test_real_run_agrees_with_an_independent_sine_fit(tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.npz"
    url = f"sim://?speed=max&mass=70&sway=0&presence=0-5,7-&truth={truth_path}"
    # One drive throughout, from the empty plate's measured response (its largest) within the
    # dose limits: a fixed 0.3 drove the empty standing-plant plate past the 0.6 g ceiling.
    empty_g_per_drive = measured_g_per_drive("speed=max&mass=0", 30.0, tmp_path / "probe.npz")
    drive = (
        DOSE_LIMITS.highest_target_g(DOSE_LIMITS.over_acceleration_ceiling_g) / empty_g_per_drive
    )
    with DeviceClient.open(url) as dev:
        dev.set_frequency(30.0)
        dev.start_output()
        dev.set_drive(drive, 1.0)  # a linear drive ramp over 1 s, then hold
        run_blocks(dev, 10.0)
    truth = load_truth(truth_path)
    t = truth["t_s"]
    held = truth_amplitude(truth, (t > 3.0) & (t < 4.5))  # controller's fit, loaded plate
    result = truth_score.score(truth_score.load_truth(truth_path), held, 0.05)
    assert result.drive_freq_hz == pytest.approx(30.0)
    assert 0.6 < result.ramp_10_90_s < 1.0  # 80% of a 1-s drive ramp, plus the plant's lag
    # off at 5 s, back on at 7 s (1.5-s ramps): on the plate (>= 10 kg) per the block record
    on_blocks = np.count_nonzero(truth["patient_mass_kg"] >= 10.0) * BLOCK / FS
    assert result.seconds_on_plate == pytest.approx(on_blocks, abs=0.15)
    assert result.duration_s - 2.0 < result.seconds_on_plate < result.duration_s - 0.8
    env = truth_score.envelope(truth_score.load_truth(truth_path))
    steady = (env.t_s > 3.1) & (env.t_s < 4.4)
    assert np.mean(env.peak_g[steady]) == pytest.approx(held, rel=0.002)
    # the empty plate moves more for the same drive: not at dose while nobody is on
    assert result.seconds_vibrating_unoccupied == pytest.approx(
        result.duration_s - result.seconds_on_plate, abs=0.25
    )
    assert result.seconds_at_dose < result.seconds_on_plate
    # At dose whenever on the plate except the 1-s drive ramp and the two 1.5-s stepping ramps
    # (during which the load, and so the amplitude, changes), less 0.25 s of the plant's lag:
    # the standing patient's larger share of the load makes the stepping ramps count in full.
    stepping_s = PlateProfile().stepping.duration_s
    assert result.seconds_at_dose > result.seconds_on_plate - 1.0 - 2 * stepping_s - 0.25


# ---- independence from the code it judges ---------------------------------------------------


def test_scorer_imports_nothing_from_the_project() -> None:
    tree = ast.parse(SCORER.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "argparse", "json", "math", "sys", "dataclasses",
                        "pathlib", "typing", "numpy"}, imported  # fmt: skip


def test_cli_runs_with_the_project_packages_unimportable(session: Path) -> None:
    blocker = (
        "import runpy, sys\n"
        "for name in ('controller', 'sessions', 'firmware_bridge'):\n"
        "    sys.modules[name] = None\n"
        f"sys.argv = ['truth_score', {str(session)!r}, '--target-g', '0.3', '--json']\n"
        f"runpy.run_path({str(SCORER)!r}, run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["overshoot_fraction"] == pytest.approx(0.2, abs=0.01)
    assert report["hold_windows"] == 13
    table = subprocess.run(
        [sys.executable, str(SCORER), str(session), "--target-g", "0.3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert "true seconds at dose" in table.stdout
    missing = subprocess.run(
        [sys.executable, str(SCORER), str(session.with_name("nope.npz")), "--target-g", "0.3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode != 0
    assert "nope.npz" in missing.stderr
    assert "Traceback" not in missing.stderr
