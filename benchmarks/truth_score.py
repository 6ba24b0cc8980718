"""Score a session from the simulator's truth file alone: what the plate really delivered.

    python benchmarks/truth_score.py TRUTH.npz --target-g 0.3 --tolerance 0.1 [--json]

An independent judge of the host: it imports nothing from ``controller``, ``sessions`` or
``firmware_bridge`` (numpy only) and reads the truth ``.npz`` by the field names documented
in docs/simulator.md ("The truth file"): ``t_s``, ``accel_g`` (true plate acceleration, g,
gravity removed), ``freq_hz`` (drive frequency per sample), ``sample_rate_hz``, and the
per-block ``block_t_s`` and ``patient_mass_kg``.

What it reports, all from the true plate motion:

- the true peak acceleration at the drive frequency over time: a least-squares fit of a
  constant, the fundamental and its 2nd and 3rd harmonics at the recorded drive phase, in
  windows of ``envelope_window_s`` (0.1 s) every ``envelope_hop_s`` (0.05 s);
- seconds on the plate: samples whose block carries at least ``min_mass_kg``;
- seconds at dose: time (one hop per window) in envelope windows whose peak is within
  ``tolerance`` (a fraction of the target) of the target while somebody is on the plate
  (every block in the window carries at least ``min_mass_kg``);
- the start ramp: times at which the envelope first reaches 10% and 90% of the target, and
  their difference;
- overshoot: the largest envelope peak above the target, as a fraction of the target;
- the error of 1-s windows in the hold (from first reaching 90% of the target to the last
  time at 90% or more, with somebody on the plate): p95 and max of |peak - target| / target;
- seconds vibrating (above 10% of the target) with nobody on the plate;
- the plate sensor's true gain (``sensor_reading_gain``: what the samples the plate sent read
  per true g, its factory calibration's residual and any drift included), when the truth file
  records it: the host servoes to its sensor, so a hold's true peak is about the target over
  this gain. NaN for a truth file without it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["REQUIRED_FIELDS", "Envelope", "TruthScore", "envelope", "load_truth", "score"]

FloatArray = npt.NDArray[np.float64]
REQUIRED_FIELDS = ("t_s", "accel_g", "freq_hz", "sample_rate_hz", "block_t_s", "patient_mass_kg")
_HARMONICS = (1, 2, 3)
_CHUNK = 512  # windows solved at once


@dataclass(frozen=True)
class Envelope:
    """True peak acceleration at the drive frequency, window by window.

    Attributes
    ----------
    t_s : (w,) window centres, s (the truth file's clock).
    peak_g : (w,) fitted fundamental peak, g.
    occupied : (w,) True where every block in the window carries at least ``min_mass_kg``.
    freq_hz : (w,) mean drive frequency in the window.
    """

    t_s: FloatArray
    peak_g: FloatArray
    occupied: npt.NDArray[np.bool_]
    freq_hz: FloatArray


@dataclass(frozen=True)
class TruthScore:
    """One session's dose as the plate really delivered it (NaN where not defined)."""

    target_g: float
    tolerance: float
    duration_s: float
    seconds_on_plate: float
    seconds_at_dose: float
    seconds_vibrating_unoccupied: float
    ramp_t10_s: float
    ramp_t90_s: float
    ramp_10_90_s: float
    overshoot_fraction: float
    hold_mean_peak_g: float
    hold_p95_error_fraction: float
    hold_max_error_fraction: float
    hold_windows: int
    drive_freq_hz: float
    sensor_reading_gain: float = math.nan


def load_truth(path: str | Path) -> dict[str, Any]:
    """Read a truth .npz; raises ValueError naming any missing field."""
    with np.load(path) as data:
        truth = {name: data[name] for name in data.files}
    missing = [name for name in REQUIRED_FIELDS if name not in truth]
    if missing:
        raise ValueError(
            f"{path} is not a simulator truth file: missing {', '.join(missing)} "
            f"(needed: {', '.join(REQUIRED_FIELDS)})"
        )
    return truth


def _drive_phase(freq_hz: FloatArray, sample_rate_hz: float) -> FloatArray:
    """Drive phase of each sample (up to a constant), from the recorded frequency."""
    turns = np.concatenate(([0.0], np.cumsum(freq_hz[:-1] / sample_rate_hz)))
    return np.asarray(2.0 * math.pi * np.mod(turns, 1.0), dtype=np.float64)


def _fit_peaks(
    accel: FloatArray, phase: FloatArray, starts: npt.NDArray[np.int64], n: int
) -> FloatArray:
    """Fundamental peak of each window ``[start, start + n)`` by linear least squares."""
    peaks = np.empty(starts.size)
    offsets = np.arange(n)
    for lo in range(0, starts.size, _CHUNK):
        idx = starts[lo : lo + _CHUNK, None] + offsets  # (w, n)
        theta = phase[idx]
        columns = [np.ones_like(theta)]
        for h in _HARMONICS:
            columns += [np.sin(h * theta), np.cos(h * theta)]
        design = np.stack(columns, axis=2)  # (w, n, 7)
        normal = np.einsum("wni,wnj->wij", design, design)
        rhs = np.einsum("wni,wn->wi", design, accel[idx])
        coef = np.linalg.solve(normal, rhs[..., None])[..., 0]
        peaks[lo : lo + _CHUNK] = np.hypot(coef[:, 1], coef[:, 2])
    return peaks


def envelope(
    truth: dict[str, Any],
    window_s: float = 0.1,
    hop_s: float = 0.05,
    min_mass_kg: float = 10.0,
) -> Envelope:
    """The true fundamental peak in windows of ``window_s`` every ``hop_s``."""
    fs = float(truth["sample_rate_hz"])
    t = np.asarray(truth["t_s"], dtype=np.float64)
    accel = np.asarray(truth["accel_g"], dtype=np.float64)
    freq = np.asarray(truth["freq_hz"], dtype=np.float64)
    n = max(8, round(window_s * fs))
    hop = max(1, round(hop_s * fs))
    if t.size < n:
        empty = np.empty(0)
        return Envelope(empty, empty, np.empty(0, dtype=bool), empty)
    starts = np.arange(0, t.size - n + 1, hop, dtype=np.int64)
    peaks = _fit_peaks(accel, _drive_phase(freq, fs), starts, n)
    # per-sample presence from the per-block mass, then "every sample of the window"
    absent = np.concatenate(([0], np.cumsum(_sample_mass(truth) < min_mass_kg)))
    occupied = (absent[starts + n] - absent[starts]) == 0
    freq_sum = np.concatenate(([0.0], np.cumsum(freq)))
    mean_freq = (freq_sum[starts + n] - freq_sum[starts]) / n
    return Envelope(t[starts + n // 2], peaks, occupied, mean_freq)


def _sample_mass(truth: dict[str, Any]) -> FloatArray:
    """The per-block mass on the plate, held over each block's samples, kg."""
    t = np.asarray(truth["t_s"], dtype=np.float64)
    block_t = np.asarray(truth["block_t_s"], dtype=np.float64)
    mass = np.asarray(truth["patient_mass_kg"], dtype=np.float64)
    block_of_sample = np.clip(np.searchsorted(block_t, t, side="right") - 1, 0, mass.size - 1)
    return np.asarray(mass[block_of_sample], dtype=np.float64)


def _first_crossing(times: FloatArray, values: FloatArray, level: float) -> float:
    """Time the series first reaches ``level`` (linear between samples), NaN if never."""
    above = np.flatnonzero(values >= level)
    if above.size == 0:
        return math.nan
    k = int(above[0])
    if k == 0:
        return float(times[0])
    v0, v1 = values[k - 1], values[k]
    return float(times[k - 1] + (level - v0) / (v1 - v0) * (times[k] - times[k - 1]))


def score(
    truth: dict[str, Any],
    target_g: float,
    tolerance: float,
    *,
    min_mass_kg: float = 10.0,
    envelope_window_s: float = 0.1,
    envelope_hop_s: float = 0.05,
) -> TruthScore:
    """Score one truth file against a target peak acceleration (see the module docstring)."""
    if not (math.isfinite(target_g) and target_g > 0.0):
        raise ValueError(f"target_g = {target_g!r} must be a positive number of g")
    if not (math.isfinite(tolerance) and 0.0 < tolerance < 1.0):
        raise ValueError(f"tolerance = {tolerance!r} must be a fraction between 0 and 1")
    fs = float(truth["sample_rate_hz"])
    t = np.asarray(truth["t_s"], dtype=np.float64)
    duration_s = t.size / fs
    env = envelope(truth, envelope_window_s, envelope_hop_s, min_mass_kg)
    hop_s = max(1, round(envelope_hop_s * fs)) / fs
    error = np.abs(env.peak_g - target_g) / target_g
    at_dose = (error <= tolerance) & env.occupied
    vibrating = env.peak_g >= 0.1 * target_g

    t10 = _first_crossing(env.t_s, env.peak_g, 0.1 * target_g)
    t90 = _first_crossing(env.t_s, env.peak_g, 0.9 * target_g)
    overshoot = float(max(0.0, env.peak_g.max() / target_g - 1.0)) if env.peak_g.size else math.nan

    # the hold: 1-s windows from first reaching 90% to the last time at 90% or more
    hold_errors = np.empty(0)
    hold_peaks = np.empty(0)
    if not math.isnan(t90):
        last90 = float(env.t_s[np.flatnonzero(env.peak_g >= 0.9 * target_g)[-1]])
        one_s = envelope(truth, 1.0, 1.0, min_mass_kg)
        in_hold = (
            (one_s.t_s - 0.5 >= t90 - envelope_window_s / 2)
            & (one_s.t_s + 0.5 <= last90 + envelope_window_s / 2)
            & one_s.occupied
        )
        hold_peaks = one_s.peak_g[in_hold]
        hold_errors = np.abs(hold_peaks - target_g) / target_g
    freq = np.asarray(truth["freq_hz"], dtype=np.float64)
    driven = freq[freq > 0.0]
    return TruthScore(
        target_g=target_g,
        tolerance=tolerance,
        duration_s=duration_s,
        seconds_on_plate=float(np.count_nonzero(_sample_mass(truth) >= min_mass_kg) / fs),
        seconds_at_dose=float(np.count_nonzero(at_dose) * hop_s),
        seconds_vibrating_unoccupied=float(np.count_nonzero(vibrating & ~env.occupied) * hop_s),
        ramp_t10_s=t10,
        ramp_t90_s=t90,
        ramp_10_90_s=t90 - t10,
        overshoot_fraction=overshoot,
        hold_mean_peak_g=float(hold_peaks.mean()) if hold_peaks.size else math.nan,
        hold_p95_error_fraction=float(np.percentile(hold_errors, 95))
        if hold_errors.size
        else math.nan,
        hold_max_error_fraction=float(hold_errors.max()) if hold_errors.size else math.nan,
        hold_windows=int(hold_errors.size),
        drive_freq_hz=float(np.median(driven)) if driven.size else math.nan,
        sensor_reading_gain=float(truth.get("sensor_reading_gain", math.nan)),
    )


def _table(result: TruthScore) -> str:
    rows = [
        ("target", f"{result.target_g:.3f} g +/- {100 * result.tolerance:.0f}%"),
        ("drive frequency", f"{result.drive_freq_hz:.2f} Hz"),
        ("duration", f"{result.duration_s:.1f} s"),
        ("somebody on the plate", f"{result.seconds_on_plate:.1f} s"),
        ("true seconds at dose", f"{result.seconds_at_dose:.1f} s"),
        ("vibrating, nobody on", f"{result.seconds_vibrating_unoccupied:.1f} s"),
        ("ramp 10% -> 90%", f"{result.ramp_10_90_s:.2f} s (from {result.ramp_t10_s:.2f} s)"),
        ("overshoot", f"{100 * result.overshoot_fraction:.1f}%"),
        ("hold mean peak", f"{result.hold_mean_peak_g:.4f} g"),
        ("hold error p95 (1-s)", f"{100 * result.hold_p95_error_fraction:.2f}%"),
        ("hold error max (1-s)", f"{100 * result.hold_max_error_fraction:.2f}%"),
        ("sensor's true gain", f"{result.sensor_reading_gain:.5f} (reading per true g)"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("truth", help="truth .npz written by sim://?truth=PATH")
    parser.add_argument("--target-g", type=float, required=True, help="prescribed peak, g")
    parser.add_argument(
        "--tolerance", type=float, default=0.1, help="allowed error, fraction of the target"
    )
    parser.add_argument(
        "--min-mass-kg", type=float, default=10.0, help="mass that counts as somebody on"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        result = score(
            load_truth(args.truth), args.target_g, args.tolerance, min_mass_kg=args.min_mass_kg
        )
    except (OSError, ValueError) as exc:
        print(f"truth_score: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                          for k, v in asdict(result).items()}, indent=2))  # fmt: skip
    else:
        print(_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
