"""Closed-loop accuracy and speed, scored from the simulator's truth file.

    python benchmarks/bench_control.py [--hold 120] [--session 600] [--json out.json]
                                       [--edges-only | --holds-only]

Matrix: frequency (30, 45, 60, 90 Hz) x patient (0, 40, 90, 150 kg) x sensor noise (low:
ADXL355 class, 22.5 ug/sqrt(Hz); high: ADXL345 class, 430 ug/sqrt(Hz)), coil heating on, each
run closed-loop and, in the same run, open-loop with the drive fixed from a calibration made
with a 70 kg patient (what an uncontrolled plate delivers), at 0.1 g so that the empty plate
stays under the firmware's ceiling. Plus a 30% load step per
frequency, the estimator against the Cramer-Rao bound, host compute per control update, and a
full session through sim://?speed=max. Targets are issue 3's.

Issue 9 adds a matrix at the edges of the dose limits (targets 0.1 and 0.4 g, 40-150 kg):
frequency steps (30<->90 Hz, 45<->60 Hz), triangle sweeps 30-90 Hz, steady holds with the
default sensor, and a noisy sensor (3000 ug/sqrt(Hz)) at 0.1 g. Each row gives the true
overshoot, the largest shortfall after the ramp, the recovery after the last step, the true
p95 error of 1-s windows, and the p95 the result logged with its uncertainty (which must not
be below the truth). ``--holds-only``: steady 30-s holds at 0.1, 0.2, 0.3 and 0.4 g
(30/60/90 Hz x 40/90/150 kg, default sensor), the worst and median true p95 per target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from controller.calibration import Calibration, identify
from controller.estimation import AmplitudeEstimator, block_phases, fit_sine
from controller.loop import ExposureSettings, ExposureStatus, run_exposure
from controller.openloop import drive_open_loop
from controller.schedule import FrequencySchedule, parse_schedule
from firmware_bridge.client import DeviceClient
from firmware_bridge.realtime import single_threaded_numerics
from firmware_bridge.sim.config import NOISE_PRESETS_UG

FREQS = (30.0, 45.0, 60.0, 90.0)
MASSES = (0.0, 40.0, 90.0, 150.0)
NOISES = {"low": NOISE_PRESETS_UG["low"], "high": NOISE_PRESETS_UG["high"]}
TARGET_G = 0.3
# The open-loop baseline aims lower: a drive fixed from a 70 kg calibration gives the empty
# standing-patient plate up to 2.8x its target (30 Hz), and 0.3 g would become 0.8 g, past the
# firmware's 0.6 g ceiling (the plate trips and the case has no hold to score). At the dose
# table's lowest target the worst case stays near 0.28 g; errors are scored in % of target.
OPEN_LOOP_TARGET_G = 0.1
RAMP_UP_S, RAMP_DOWN_S = 2.0, 1.0
TARGETS = {
    "p95_abs_error_pct": 0.5,
    "overshoot_pct": 5.0,
    "settle_after_ramp_s": 1.0,
    "load_step_recovery_s": 0.5,
    "estimator_var_over_crb": 1.1,
    "compute_median_ms": 0.2,
    "session_speedup": 300.0,
}
EDGE_TARGETS = {
    "edge_overshoot_pct": 5.0,
    "edge_p95_abs_error_pct": 0.5,
    "noisy_overshoot_pct": 5.0,
}
EDGE_MASSES = (40.0, 90.0, 150.0)
EDGE_TARGETS_G = (0.1, 0.4)
STEPS = ("steps:30@0,90@6", "steps:90@0,30@6", "steps:45@0,60@6", "steps:60@0,45@6")


# ---- truth scoring ------------------------------------------------------------------------


def load_truth(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def truth_windows(
    truth: dict[str, np.ndarray], t: np.ndarray, start: float, end: float, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """True fundamental amplitude in consecutive windows (free-phase sine fit)."""
    fs = float(truth["sample_rate_hz"])
    phase = 2.0 * np.pi * np.cumsum(truth["freq_hz"].astype(np.float64)) / fs
    accel = truth["accel_g"]
    starts = np.arange(start, end - step / 2, step)
    windows = [(t >= s) & (t < s + step) for s in starts]
    amps = [fit_sine(accel[m], phase[m]).peak_g for m in windows]
    return starts + step / 2, np.array(amps)


def exposure_time(truth: dict[str, np.ndarray], start_index: int) -> np.ndarray:
    index = truth["sample_index"].astype(np.float64)
    index[truth["sample_index"] < 0] = np.nan
    return (index - start_index) / float(truth["sample_rate_hz"])


AMPLITUDE_WINDOW_S = 0.2  # "the amplitude" at an instant: a fit over 0.2 s (6 cycles at 30 Hz)


def score(truth: dict[str, np.ndarray], t: np.ndarray, hold_s: float) -> dict[str, float]:
    """Issue 3's accuracy figures for one closed-loop run, from truth."""
    ramp_end, hold_end = RAMP_UP_S, RAMP_UP_S + hold_s
    centres, env = truth_windows(truth, t, 0.0, hold_end, AMPLITUDE_WINDOW_S)
    err = env / TARGET_G - 1.0
    after = centres >= ramp_end
    outside = np.flatnonzero(after & (np.abs(err) > 0.02))
    settle = 0.0 if outside.size == 0 else max(0.0, float(centres[outside[-1]]) - ramp_end)
    row = steady_errors(truth, t, ramp_end + max(1.0, settle), hold_end)
    row.update(overshoot_pct=max(0.0, 100.0 * float(err.max())), settle_after_ramp_s=settle)
    return row


def steady_errors(
    truth: dict[str, np.ndarray], t: np.ndarray, start: float, end: float,
    target_g: float = TARGET_G,
) -> dict[str, float]:  # fmt: skip
    """Amplitude error in 1-s windows of truth between two exposure times, in % of target."""
    _, one_s = truth_windows(truth, t, start, end, 1.0)
    if one_s.size == 0:
        nan = float("nan")
        return {"p95_abs_error_pct": nan, "mean_error_pct": nan, "drift_pct": nan,
                "coil_temp_end_c": float(truth["coil_temp_c"][-1])}  # fmt: skip
    err = 100.0 * (one_s / target_g - 1.0)
    return {
        "p95_abs_error_pct": float(np.percentile(np.abs(err), 95)),
        "mean_error_pct": float(np.mean(err)),
        "drift_pct": float(100.0 * (one_s[-1] / one_s[0] - 1.0)),
        "coil_temp_end_c": float(truth["coil_temp_c"][-1]),
    }


# ---- runs ---------------------------------------------------------------------------------


def sim_url(mass: float, noise_ug: float, seed: int, truth: Path, extra: str = "") -> str:
    return f"sim://?mass={mass:g}&noise={noise_ug:g}&seed={seed}&truth={truth}{extra}"


def closed_loop_case(
    cal: Calibration, freq: float, mass: float, noise_ug: float, hold_s: float, seed: int,
    workdir: Path, extra: str = "",
) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:  # fmt: skip
    truth_path = workdir / f"cl-{freq:g}-{mass:g}-{noise_ug:g}.npz"
    settings = ExposureSettings(
        target_g=TARGET_G, hold_s=hold_s, schedule=FrequencySchedule.fixed(freq),
        ramp_up_s=RAMP_UP_S, ramp_down_s=RAMP_DOWN_S,
    )  # fmt: skip
    with DeviceClient.open(sim_url(mass, noise_ug, seed, truth_path, extra)) as dev:
        result = run_exposure(dev, cal, settings)
    truth = load_truth(truth_path)
    t = exposure_time(truth, result.start_index)
    row = score(truth, t, hold_s)
    row.update(
        status=result.status.value,
        trip=result.trip.reason.value if result.trip else None,
        compute_median_us=result.compute_median_us,
        compute_p99_us=result.compute_p99_us,
    )
    truth_path.unlink()
    return row, truth, t


def open_loop_case(
    cal70: Calibration, freq: float, mass: float, noise_ug: float, hold_s: float, seed: int,
    workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    truth_path = workdir / f"ol-{freq:g}-{mass:g}-{noise_ug:g}.npz"
    drive = OPEN_LOOP_TARGET_G / cal70.gain_at(freq)
    with DeviceClient.open(sim_url(mass, noise_ug, seed, truth_path)) as dev:
        start = dev.sample_index + 0  # index before the first command
        drive_open_loop(dev, freq, drive, hold_s, RAMP_UP_S, RAMP_DOWN_S)
    truth = load_truth(truth_path)
    # drive_open_loop starts its ramp with the SET_DRIVE right after start_output: locate the
    # ramp start in truth (first non-zero drive) as exposure time 0.
    first = int(np.flatnonzero(truth["drive"] > 0)[0])
    t = exposure_time(truth, int(truth["sample_index"][first]))
    del start
    row = steady_errors(truth, t, RAMP_UP_S + 1.0, RAMP_UP_S + hold_s, OPEN_LOOP_TARGET_G)
    truth_path.unlink()
    return row


def load_step_case(cal: Calibration, freq: float, workdir: Path, seed: int) -> dict[str, float]:
    """70 kg -> 91 kg (a 30% step) in the middle of a hold; recovery time from truth."""
    hold_s = 6.0
    _, truth, t = closed_loop_case(
        cal, freq, 70.0, NOISES["low"], hold_s, seed, workdir,
        extra="&load_step_at=5.0&load_step_kg=91&sway=0",
    )  # fmt: skip
    step_plant_s = float(next(e.split()[0] for e in truth["events"] if "load_step" in e))
    step_t = float(t[np.searchsorted(truth["t_s"], step_plant_s)])
    centres, env = truth_windows(truth, t, step_t, step_t + 2.0, 0.05)  # 2-4 cycles: fine-grained
    err = np.abs(env / TARGET_G - 1.0)
    outside = np.flatnonzero(err > 0.02)
    recovery = 0.0 if outside.size == 0 else float(centres[outside[-1]] - step_t) + 0.025
    return {"freq_hz": freq, "recovery_s": recovery, "peak_error_pct": 100 * float(err.max())}


def estimator_vs_crb(freq: float, sigma_g: float, trials: int = 4000) -> float:
    """Variance of the window estimate over the Cramer-Rao bound 2 sigma^2 / N (white noise).

    With 4000 trials the ratio itself is uncertain by about +/-2% (one standard deviation,
    sqrt(2 / trials)), small beside the 10% allowed.
    """
    fs = 1600.0
    rng = np.random.default_rng(int(freq * 10 + sigma_g * 1e4))
    values = []
    n = 0
    for _ in range(trials):
        est = AmplitudeEstimator(fs, window_s=0.1)
        phase0 = float(rng.uniform(0.0, 2.0 * np.pi))
        for _ in range(6):
            ph = block_phases(phase0, freq, 32, fs)
            x = 1.0 + TARGET_G * np.cos(ph + 0.5) + sigma_g * rng.standard_normal(32)
            est.push(x, phase0, freq, 0.4)
            phase0 = float(ph[-1] + 2.0 * np.pi * freq / fs)
        window = est.estimate(freq)
        assert window is not None
        n = window.fit.n_samples
        values.append(window.fit.peak_g)
    return float(np.var(values) / (2.0 * sigma_g**2 / n))


def session_speed(cal: Calibration, seconds: float) -> dict[str, float]:
    """A full session through sim://?speed=max, protocol bytes and all; no truth file."""
    settings = ExposureSettings(
        target_g=TARGET_G,
        hold_s=seconds,
        schedule=FrequencySchedule.fixed(45.0),
    )
    with DeviceClient.open("sim://?mass=70&seed=3") as dev:
        start = time.perf_counter()
        result = run_exposure(dev, cal, settings)
        wall = time.perf_counter() - start
    if result.status is not ExposureStatus.COMPLETED:
        raise RuntimeError(f"session did not complete: {result.trip}")
    return {"simulated_s": settings.total_s, "wall_s": wall, "speedup": settings.total_s / wall}


def edge_case(
    cal: Calibration, kind: str, schedule: str, mass: float, target_g: float, hold_s: float,
    seed: int, workdir: Path, noise: str = "",
) -> dict[str, Any]:  # fmt: skip
    """One run at the edges of the dose limits, scored from truth (issue 9)."""
    truth_path = workdir / f"edge-{seed}.npz"
    fixed = ":" not in schedule
    settings = ExposureSettings(
        target_g=target_g, hold_s=hold_s, ramp_up_s=RAMP_UP_S, ramp_down_s=RAMP_DOWN_S,
        schedule=FrequencySchedule.fixed(float(schedule)) if fixed else parse_schedule(schedule),
    )  # fmt: skip
    url = f"sim://?mass={mass:g}&seed={seed}&truth={truth_path}{noise}"
    with DeviceClient.open(url) as dev:
        result = run_exposure(dev, cal, settings)
    truth = load_truth(truth_path)
    t = exposure_time(truth, result.start_index)
    hold_end = RAMP_UP_S + hold_s
    centres, env = truth_windows(truth, t, 0.0, hold_end, AMPLITUDE_WINDOW_S)
    err = env / target_g - 1.0
    after = centres >= RAMP_UP_S + 0.5
    last_step = (
        float(schedule.rsplit(",", maxsplit=1)[-1].split("@")[1]) if "steps" in schedule else 0.0
    )
    recovery = float("nan")
    if last_step > 0.0:
        outside = np.flatnonzero((centres > last_step) & (np.abs(err) > 0.02))
        recovery = 0.0 if outside.size == 0 else float(centres[outside[-1]] - last_step)
    # steady accuracy over the same 1-s windows the result used (whole seconds of the hold from
    # the first one after settling)
    settle = result.settling_time_s
    first = RAMP_UP_S + (float(np.ceil(settle - 1e-9)) if settle is not None else 0.0)
    _, one_s = truth_windows(truth, t, first, hold_end, 1.0)
    true_p95 = float(np.percentile(np.abs(100.0 * (one_s / target_g - 1.0)), 95))
    truth_path.unlink()
    return {
        "kind": kind, "schedule": schedule, "mass_kg": mass, "target_g": target_g,
        "noise": noise.removeprefix("&noise=") or "default", "status": result.status.value,
        "trip": result.trip.reason.value if result.trip else None,
        "overshoot_pct": max(0.0, 100.0 * float(err.max())),
        "worst_shortfall_pct": -100.0 * float(err[after].min()),
        "recovery_after_step_s": recovery,
        "true_p95_abs_error_pct": true_p95,
        "logged_p95_abs_error_pct": result.error_p95_abs_pct,
        "logged_uncertainty_pct": result.error_uncertainty_pct,
    }  # fmt: skip


def edge_matrix(cal: Calibration, workdir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seed = 3000
    plan: list[tuple[str, str, float, float, float, str]] = []
    for target in EDGE_TARGETS_G:
        for mass in EDGE_MASSES:
            plan += [("step", sched, mass, target, 10.0, "") for sched in STEPS]
            plan.append(("sweep", "sweep:30-90/10", mass, target, 40.0, ""))
            plan += [("steady", f, mass, target, 30.0, "") for f in ("30", "60", "90")]
    for mass in EDGE_MASSES:
        plan += [("noisy", f, mass, 0.1, 20.0, "&noise=3000") for f in ("30", "90")]
        plan.append(("noisy", "steps:30@0,90@6,30@12", mass, 0.1, 20.0, "&noise=3000"))
    for kind, sched, mass, target, hold, noise in plan:
        seed += 1
        row = edge_case(cal, kind, sched, mass, target, hold, seed, workdir, noise)
        rows.append(row)
        logged = row["logged_p95_abs_error_pct"]
        print(
            f"{kind:>6} {sched:>22} {mass:4.0f} kg {target:.1f} g {row['noise']:>7} | "
            f"{row['status']:<9} over {row['overshoot_pct']:4.1f}% short "
            f"{row['worst_shortfall_pct']:5.1f}% rec {row['recovery_after_step_s']:4.2f}s | "
            f"p95 true {row['true_p95_abs_error_pct']:5.2f}% logged "
            f"{float('nan') if logged is None else logged:5.2f}%",
            flush=True,
        )
    return rows


# ---- report -------------------------------------------------------------------------------


HOLD_TARGETS_G = (0.1, 0.2, 0.3, 0.4)
HOLD_FREQS = ("30", "60", "90")


def hold_matrix(cal: Calibration, workdir: Path, hold_s: float = 30.0) -> dict[str, Any]:
    """Steady holds per target: 30/60/90 Hz x 40/90/150 kg, default sensor, true p95 each.

    The same seeds (5001-5009) at every target, so targets differ only in the amplitude.
    """
    out: dict[str, Any] = {}
    for target in HOLD_TARGETS_G:
        p95s = []
        seed = 5000
        for freq in HOLD_FREQS:
            for mass in EDGE_MASSES:
                seed += 1
                row = edge_case(cal, "steady", freq, mass, target, hold_s, seed, workdir)
                p95s.append(row["true_p95_abs_error_pct"])
        out[f"{target:g}"] = {
            "worst_p95_pct": max(p95s),
            "median_p95_pct": statistics.median(p95s),
            "p95_pct": p95s,
        }
        print(
            f"holds {target:.1f} g: true p95 worst {max(p95s):.2f}% median "
            f"{statistics.median(p95s):.2f}% ({len(p95s)} holds of {hold_s:g} s)",
            flush=True,
        )
    return out


def edge_report(edges: list[dict[str, Any]]) -> dict[str, float]:
    """Print the issue 9 verdicts; return the worst figures."""
    quiet = [r for r in edges if r["kind"] != "noisy"]
    steady = [r for r in edges if r["kind"] == "steady"]
    noisy = [r for r in edges if r["kind"] == "noisy"]
    honest = [
        r["logged_p95_abs_error_pct"] - r["true_p95_abs_error_pct"]
        for r in edges
        if r["logged_p95_abs_error_pct"] is not None
    ]
    summary = {
        "edge_overshoot_pct": max(r["overshoot_pct"] for r in quiet),
        "edge_p95_abs_error_pct": max(r["true_p95_abs_error_pct"] for r in steady),
        "noisy_overshoot_pct": max(r["overshoot_pct"] for r in noisy),
        "logged_minus_true_p95_min_pct": min(honest),
        "logged_minus_true_p95_max_pct": max(honest),
        "trips": float(sum(r["status"] != "completed" for r in edges)),
    }
    print()
    print(f"{'issue 9 target':<28} {'worst measured':>15} {'limit':>10}  verdict")
    for key, limit in EDGE_TARGETS.items():
        value = summary[key]
        print(f"{key:<28} {value:>15.3f} {limit:>10.3f}  {'met' if value <= limit else 'MISSED'}")
    print(
        f"logged p95 minus true p95: {summary['logged_minus_true_p95_min_pct']:+.2f} to "
        f"{summary['logged_minus_true_p95_max_pct']:+.2f} points; trips {summary['trips']:.0f}"
    )
    print()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=float, default=120.0, help="hold time per case, s")
    parser.add_argument("--session", type=float, default=600.0, help="speed-run hold time, s")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--edges-only", action="store_true", help="only the issue 9 matrix (steps, sweeps, noise)"
    )
    parser.add_argument(
        "--holds-only", action="store_true",
        help="only the steady holds at 0.1-0.4 g (9 per target, 30 s, default sensor)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="liv-bench-"))
    with DeviceClient.open("sim://?mass=0&seed=100") as dev:
        cal_empty = identify(dev)
    if args.holds_only:
        holds = hold_matrix(cal_empty, workdir)
        if args.json:
            args.json.write_text(json.dumps({"benchmark": "bench_control", "holds": holds},
                                            indent=2))  # fmt: skip
        return 0
    edges = edge_matrix(cal_empty, workdir)
    edge_summary = edge_report(edges)
    if args.edges_only:
        if args.json:
            args.json.write_text(json.dumps(
                {"benchmark": "bench_control", "edge_targets": EDGE_TARGETS,
                 "edge_summary": edge_summary, "edges": edges}, indent=2))  # fmt: skip
        return 0
    with DeviceClient.open("sim://?mass=70&seed=101") as dev:
        cal_70 = identify(dev)

    rows: list[dict[str, Any]] = []
    seed = 1000
    for noise_name, noise_ug in NOISES.items():
        for freq in FREQS:
            for mass in MASSES:
                seed += 1
                closed, _, _ = closed_loop_case(cal_empty, freq, mass, noise_ug, args.hold, seed,
                                                workdir)  # fmt: skip
                opened = open_loop_case(cal_70, freq, mass, noise_ug, args.hold, seed, workdir)
                rows.append({"noise": noise_name, "freq_hz": freq, "mass_kg": mass,
                             "closed": closed, "open": opened})  # fmt: skip
                print(
                    f"{noise_name:>4} {freq:4.0f} Hz {mass:5.0f} kg | closed p95 "
                    f"{closed['p95_abs_error_pct']:5.2f}% over {closed['overshoot_pct']:4.1f}% "
                    f"settle {closed['settle_after_ramp_s']:4.2f}s | open mean "
                    f"{opened['mean_error_pct']:+6.1f}% drift {opened['drift_pct']:+5.1f}%",
                    flush=True,
                )
    steps = [load_step_case(cal_empty, f, workdir, 2000 + i) for i, f in enumerate(FREQS)]
    crb = {
        f"{f:g}Hz-{name}": estimator_vs_crb(f, ug * 1e-6 * np.sqrt(800.0))
        for f in FREQS
        for name, ug in NOISES.items()
    }
    speed = session_speed(cal_empty, args.session)
    compute = statistics.median(r["closed"]["compute_median_us"] for r in rows) / 1000.0

    closed_rows = [r["closed"] for r in rows]
    summary = {
        "p95_abs_error_pct": max(r["p95_abs_error_pct"] for r in closed_rows),
        "overshoot_pct": max(r["overshoot_pct"] for r in closed_rows),
        "settle_after_ramp_s": max(r["settle_after_ramp_s"] for r in closed_rows),
        "load_step_recovery_s": max(s["recovery_s"] for s in steps),
        "estimator_var_over_crb": max(crb.values()),
        "compute_median_ms": compute,
        "session_speedup": speed["speedup"],
    }
    print()
    print(f"{'target':<28} {'worst measured':>15} {'limit':>10}  verdict")
    for key, limit in TARGETS.items():
        value = summary[key]
        ok = value >= limit if key == "session_speedup" else value <= limit
        print(f"{key:<28} {value:>15.3f} {limit:>10.3f}  {'met' if ok else 'MISSED'}")
    open_worst = max(abs(r["open"]["mean_error_pct"]) for r in rows)
    print(
        f"open-loop baseline (at {OPEN_LOOP_TARGET_G:g} g): worst mean amplitude error "
        f"{open_worst:.1f}% of target"
    )
    print("load steps:", ", ".join(f"{s['freq_hz']:g} Hz {s['recovery_s']:.2f}s" for s in steps))
    print("estimator var/CRB:", ", ".join(f"{k} {v:.3f}" for k, v in crb.items()))
    print(f"session: {speed['simulated_s']:.0f} s simulated in {speed['wall_s']:.1f} s wall")
    if args.json:
        args.json.write_text(json.dumps(
            {"benchmark": "bench_control", "hold_s": args.hold, "targets": TARGETS,
             "open_loop_target_g": OPEN_LOOP_TARGET_G, "summary": summary, "cases": rows,
             "load_steps": steps, "estimator_crb": crb, "session": speed,
             "edge_targets": EDGE_TARGETS, "edge_summary": edge_summary, "edges": edges},
            indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    with single_threaded_numerics():
        sys.exit(main())
