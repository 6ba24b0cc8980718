"""Honest dose: does the log say what the plate delivered? Patient sessions scored by truth.

    python benchmarks/dose_truth.py [--quick] [--only NAME[,NAME...]] [--jobs N]
                                    [--json PATH] [--workdir DIR] [--list]

Each case of the matrix (``CASES``) is one patient session run through the real patient path,
the ``liv`` command (``sessions.cli.main``, exactly as the ``liv`` script calls it), in a new
home of its own; the commands of a case run one after the other in one child process:

1. ``liv clinic init``, ``liv protocol sign`` and ``liv enroll`` (the harness plays the clinic),
   then ``liv protocol install`` of the signed protocol written for the case (a study from
   yesterday to tomorrow, UTC, one session a day; target, frequency or schedule, minutes and
   tolerance from the case);
2. ``liv calibrate`` of the simulated plate **empty** and with a correct sensor
   (``sim://?mass=0&device_id=SIM-DOSE-SEED...``): the calibration the plate was set up with;
   every case has a plate of its own (``Case.device_id``), so each has its own accelerometer
   part and factory calibration residual (docs/simulator.md);
3. ``liv start --device sim://?...&truth=PATH&speed=max`` with the case's plate, patient and
   faults (a sensor error is one the sensor acquired after that calibration);
4. ``liv export --format jsonl``: the record the log kept, if any. A start that leaves no
   record was refused; its one sentence on stderr is then the recorded reason.

The truth file the simulator wrote is scored by ``benchmarks/truth_score.py`` with the
protocol's target and ``dose_tolerance``: true seconds at dose are envelope windows within the
tolerance of the target while somebody (>= 10 kg) stands on the plate. The harness process
and the scorer import nothing from ``controller``, ``sessions`` or ``firmware_bridge``; only
the child process that runs the ``liv`` commands imports ``sessions.cli``.

Per case, three verdicts (the targets of the issue "Honest dose"):

- **minutes**: ``|logged - true| <= max(1% of the prescription, 3 s)``;
- **honest**: logged ``completed`` only if the truth says the full prescription was delivered
  (true seconds at dose at least the prescription less that same allowance);
- **reason**: a session not logged ``completed`` (stopped, tripped, interrupted, or refused
  with no record) has a recorded reason whose class is one the case allows as the true reason
  (``Case.reasons``; empty: the plate can deliver this dose and nothing should stop it). The
  record's status, reason text and trip codes are mapped to a class by ``reason_class``;
  a host that gives no distinct reason (e.g. "ran out of time") fails the case. That is
  information about the host, not a harness failure.

The table also shows the true situation (``full``, ``short``, ``none``) next to what the matrix
expected (``Case.truth``); a difference is flagged, never scored: it says the plate model
behaves differently from what the case assumed.

Reason classes: ``completed``, ``nobody on the plate``, ``plate cannot deliver``, ``sensor``
(a sensor check refused, or a sensor trip), ``ran out of time``, ``patient stop``, ``other
trip``, ``refused, other``, ``interrupted``, ``host crash``, ``other``.

``--workdir DIR`` keeps every case's home, protocol, truth file and the commands' output
(``liv-results.json``); without it they go to a temporary directory that is removed. The full
matrix takes about 7 minutes with ``--jobs 2`` on the shared 2-core machine.

The benchmark reports; it does not gate. The exit status is 0 whatever the verdicts, 1 if the
harness itself broke (a setup step failed, a step timed out, the log could not be read, a truth
file could not be scored), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

try:
    from benchmarks import truth_score
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    import truth_score  # type: ignore[no-redef, import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parents[1]
DEVICE_ID = "SIM-DOSE"
STEP_TIMEOUT_S = 900.0  # one liv command; a 10-minute session runs in well under a minute
ENV_DROP = ("LIV_HOME", "LIV_DB", "LIV_CALIBRATION_DIR")

# ---- reason classes --------------------------------------------------------------------------

COMPLETED = "completed"
NOBODY = "nobody on the plate"
CANNOT_DELIVER = "plate cannot deliver"
SENSOR = "sensor"
RAN_OUT = "ran out of time"
PATIENT_STOP = "patient stop"
OTHER_TRIP = "other trip"
REFUSED_OTHER = "refused, other"
INTERRUPTED = "interrupted"
HOST_CRASH = "host crash"
OTHER = "other"

_NOBODY_WORDS = (
    "nobody", "no one", "not on the plate", "left the plate", "stepped off", "step on",
    "stand on", "standing on", "presence",
)  # fmt: skip
_CANNOT_WORDS = (
    "cannot reach", "can not reach", "cannot deliver", "could not reach", "cannot hold",
    "drive at its limit", "does not respond", "not reach the dose", "unreachable",
    "below dose", "below the dose",
)  # fmt: skip
_CANNOT_CODES = ("drive_saturated", "no_response")
_SENSOR_WORDS = ("sensor", "accelerometer", "gravity")
_PATIENT_STOP_WORDS = ("ctrl-c", "sigterm", "sighup", "stop signal", "terminal was closed", "pipe")


def _has(text: str, words: Iterable[str]) -> bool:
    return any(word in text for word in words)


def reason_class(status: str, reason: str, trip_codes: Sequence[str] = ()) -> str:
    """Map what the log recorded (or a refusal's sentence) to one class of true reason.

    ``status`` is the record's status, or ``"refused"`` when ``liv start`` left no record
    (``reason`` is then its sentence on stderr); ``trip_codes`` are the ``reason`` codes of
    the record's safety events. Keywords, not exact texts: the host's wording may change.
    """
    text = reason.lower()
    codes = [code.lower() for code in trip_codes]
    if status == "completed":
        return COMPLETED
    if status == "refused":
        if "traceback" in text:
            return HOST_CRASH
        if _has(text, _SENSOR_WORDS):
            return SENSOR
        if _has(text, _NOBODY_WORDS):
            return NOBODY
        if _has(text, _CANNOT_WORDS):
            return CANNOT_DELIVER
        return REFUSED_OTHER
    if status == "interrupted":
        return INTERRUPTED
    if status == "tripped":
        # The trip's code is exact; its text may name several causes ("actuator or sensor").
        if any(code in _CANNOT_CODES or "reach" in code or "deliver" in code for code in codes):
            return CANNOT_DELIVER
        if any(code.startswith("sensor") for code in codes) or _has(text, _SENSOR_WORDS):
            return SENSOR
        if _has(text, _CANNOT_WORDS):
            return CANNOT_DELIVER
        if _has(text, _NOBODY_WORDS):
            return NOBODY
        return OTHER_TRIP
    if status == "stopped_by_patient":
        if _has(text, _NOBODY_WORDS):
            return NOBODY
        if "ran out of time" in text:
            return RAN_OUT
        if _has(text, _CANNOT_WORDS) or any(code in _CANNOT_CODES for code in codes):
            return CANNOT_DELIVER
        if _has(text, _SENSOR_WORDS):
            return SENSOR
        if _has(text, _PATIENT_STOP_WORDS):
            return PATIENT_STOP
        return OTHER
    return OTHER


# ---- the matrix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One patient session: the plate and patient, the prescription, what is true.

    ``sim``: sim:// keys for ``liv start`` (``device_id``, ``seed``, ``speed`` and ``truth``
    are added). ``frequency``: Hz, or ``steps:HZ@S,...`` / ``sweep:LOW-HIGH/S`` written into
    the protocol as a ``frequency_schedule``. ``truth``: the true situation the case is built
    for (``full`` dose, ``short``, ``none``). ``reasons``: the classes that are the true
    reason if the session falls short (empty: nothing should stop it).
    """

    name: str
    description: str
    sim: Mapping[str, str]
    frequency: float | str
    truth: str
    reasons: tuple[str, ...] = ()
    target_g: float = 0.3
    minutes: float = 2.0
    dose_tolerance: float = 0.1
    quick: bool = False
    seed: int = 0

    @property
    def device_id(self) -> str:
        """The plate of this case: its own id, so each case has a part of its own (the
        simulator draws a device's accelerometer part and its calibration from its id)."""
        return f"{DEVICE_ID}-{self.seed}"

    @property
    def prescribed_s(self) -> float:
        return self.minutes * 60.0

    @property
    def allowance_s(self) -> float:
        """How far logged and true time at dose may differ: 1% of the prescription, >= 3 s."""
        return max(0.01 * self.prescribed_s, 3.0)


def _case(
    name: str,
    description: str,
    sim: str,
    frequency: float | str,
    truth: str,
    reasons: tuple[str, ...] = (),
    **protocol: Any,
) -> Case:
    keys = dict(item.split("=", 1) for item in sim.split("&") if item)
    return Case(name, description, keys, frequency, truth, reasons, **protocol)


def build_cases() -> list[Case]:
    """The matrix; seeds follow the order here, so ``--only`` runs a case exactly as a full run."""
    full, short, none = "full", "short", "none"
    # fmt: off
    cases = [
        # patients across the band, fixed frequency
        _case("m40_30hz", "40 kg, 30 Hz", "mass=40", 30, full, quick=True),
        _case("m70_45hz", "70 kg, 45 Hz, 1 min", "mass=70", 45, full, minutes=1.0, quick=True),
        _case("m90_60hz", "90 kg, 60 Hz", "mass=90", 60, full),
        _case("m150_90hz", "150 kg, 90 Hz", "mass=150", 90, full),
        _case("m150_30hz", "150 kg, 30 Hz", "mass=150", 30, full),
        _case("m120_45hz_04g", "120 kg, 45 Hz, 0.4 g", "mass=120", 45, full, target_g=0.4),
        _case("m55_90hz_02g", "55 kg, 90 Hz, 0.2 g", "mass=55", 90, full, target_g=0.2),
        _case("m100_30hz_tol5", "100 kg, 30 Hz, +/-5% counts", "mass=100", 30, full,
              dose_tolerance=0.05),
        # schedules
        _case("steps_30_45_60", "80 kg, steps 30/45/60 Hz", "mass=80",
              "steps:30@0,45@40,60@80", full, quick=True),
        _case("sweep_30_90", "100 kg, sweep 30-90 Hz, 30 s each way", "mass=100",
              "sweep:30-90/30", full),
        _case("sweep_45_60_m140", "140 kg, sweep 45-60 Hz", "mass=140", "sweep:45-60/20", full),
        # the coil from cold to hot (10-minute sessions)
        _case("coil_cold_hot_150kg_30hz", "150 kg, 30 Hz, 0.4 g, coil 20 C to hot, 10 min",
              "mass=150&coil_temp_c=20", 30, full, target_g=0.4, minutes=10.0),
        _case("coil_warm_start_90kg_10min", "90 kg, 30 Hz, coil starts at 70 C, 10 min",
              "mass=90&coil_temp_c=70", 30, full, minutes=10.0),
        # stepping on and off
        _case("step_on_late", "70 kg steps on 20 s after power-up", "mass=70&step_on_at=20",
              45, full, (NOBODY,), quick=True),
        _case("step_off_late_10min", "75 kg steps off for good at 9 min of 10",
              "mass=75&step_off_at=540", 30, short, (NOBODY,), minutes=10.0),
        _case("step_off_near_end_10min", "85 kg steps off 15 s before the end of 10 min",
              "mass=85&step_off_at=585", 45, short, (NOBODY,), minutes=10.0),
        _case("step_off_early", "65 kg steps off for good at 50 s of 2 min",
              "mass=65&step_off_at=50", 30, short, (NOBODY,)),
        _case("off_and_back_on", "70 kg off at 50 s, back on at 80 s", "mass=70&presence=0-50,80-",
              30, full, quick=True),
        _case("off_and_on_twice", "95 kg off and back on twice", "mass=95&presence=0-40,60-90,110-",
              60, full),
        _case("off_too_long", "70 kg off at 30 s, back only after 150 s",
              "mass=70&presence=0-30,180-", 45, short, (NOBODY,)),
        _case("never_on", "nobody ever steps on the plate", "mass=0", 30, none, (NOBODY,),
              quick=True),
        _case("never_on_standing", "nobody ever steps on (standing model)",
              "mass=0&posture=standing", 60, none, (NOBODY,)),
        # load steps
        _case("load_step_up", "70 kg, 100 kg from 50 s", "mass=70&load_step_at=50&load_step_kg=100",
              30, full, quick=True),
        _case("load_step_down", "120 kg, 60 kg from 60 s",
              "mass=120&load_step_at=60&load_step_kg=60", 45, full),
        _case("load_step_lean", "100 kg, 55 kg from 40 s (leaning on a rail)",
              "mass=100&load_step_at=40&load_step_kg=55", 90, full),
        # sensor sensitivity and offset errors the sensor acquired after calibration
        _case("sensor_gain_plus12", "sensor reads 12% high: plate gives 10.7% less",
              "mass=70&sensor_gain_error=0.12", 45, none, (SENSOR,), minutes=1.0,
              quick=True),
        _case("sensor_gain_minus12", "sensor reads 12% low: plate gives 13.6% more",
              "mass=80&sensor_gain_error=-0.12", 30, none, (SENSOR,)),
        _case("sensor_gain_plus8", "sensor reads 8% high: plate gives 7.4% less (in band)",
              "mass=60&sensor_gain_error=0.08", 60, full, (SENSOR,)),
        _case("sensor_gain_minus5", "sensor reads 5% low: plate gives 5.3% more (in band)",
              "mass=110&sensor_gain_error=-0.05", 45, full, (SENSOR,)),
        _case("sensor_gain_plus12_tol15", "sensor 12% high, +/-15% counts: in band",
              "mass=70&sensor_gain_error=0.12", 30, full, (SENSOR,),
              dose_tolerance=0.15),
        _case("sensor_gain_plus10_tol5", "sensor 10% high, +/-5% counts: out of band",
              "mass=90&sensor_gain_error=0.10", 60, none, (SENSOR,),
              dose_tolerance=0.05),
        _case("sensor_offset_005g", "sensor offset +0.05 g (amplitude unaffected)",
              "mass=70&sensor_offset_g=0.05", 30, full, (SENSOR,)),
        # amplifier gain loss
        _case("gain_loss_03_at_60", "amplifier down to 30% at 60 s, 90 kg, 30 Hz",
              "mass=90&gain_loss_at=60&gain_factor=0.3", 30, short, (CANNOT_DELIVER,),
              quick=True),
        _case("gain_loss_05_150kg", "amplifier down to 50% at 40 s, 150 kg, 30 Hz",
              "mass=150&gain_loss_at=40&gain_factor=0.5", 30, short, (CANNOT_DELIVER,)),
        _case("gain_loss_025_at_start", "amplifier at 25% from power-up, 70 kg, 45 Hz",
              "mass=70&gain_loss_at=0&gain_factor=0.25", 45, none, (CANNOT_DELIVER,)),
        _case("gain_loss_07_compensable", "amplifier down to 70% at 40 s, 70 kg, 45 Hz",
              "mass=70&gain_loss_at=40&gain_factor=0.7", 45, full),
        # noisy sensors
        _case("noise_high_90kg", "ADXL345-class noise, 90 kg, 30 Hz", "mass=90&noise=high", 30,
              full, quick=True),
        _case("noise_3000ug_60hz", "very noisy sensor (3000 ug/sqrt(Hz)), 70 kg, 60 Hz",
              "mass=70&noise=3000", 60, full),
        # standing patients (explicit posture)
        _case("standing_60kg_45hz", "standing 60 kg, knees 160 deg, 45 Hz",
              "mass=60&posture=standing&knee_deg=160", 45, full),
        _case("standing_150kg_30hz", "standing 150 kg, straight knees, 30 Hz (today's actuator "
              "cannot)", "mass=150&posture=standing", 30, none, (CANNOT_DELIVER,)),
        # several things at once
        _case("combined_sweep_step_noise", "sweep, 60->110 kg at 45 s, noise high, off 70-95 s",
              "mass=60&load_step_at=45&load_step_kg=110&noise=high&presence=0-70,95-",
              "sweep:30-60/20", full),
    ]
    # fmt: on
    return [replace(case, seed=101 + k) for k, case in enumerate(cases)]


CASES = build_cases()


# ---- one case through the patient path --------------------------------------------------------


class HarnessError(Exception):
    """The harness itself could not run a step (not a verdict about the host)."""


@dataclass
class Row:
    """One case's result: the table row and everything behind it."""

    name: str
    description: str
    sim_url: str
    frequency: str
    target_g: float
    dose_tolerance: float
    prescribed_min: float
    allowance_s: float
    expected_truth: str
    expected_reasons: list[str]
    true_min: float = math.nan
    logged_min: float = math.nan
    error_s: float = math.nan
    status: str = ""
    reason: str = ""
    reason_class: str = ""
    trip_codes: list[str] = field(default_factory=list)
    truth_situation: str = ""
    truth_as_expected: bool = False
    minutes_ok: bool = False
    honest_ok: bool = False
    reason_ok: bool = False
    verdict: bool = False
    start_exit: int | None = None
    message: str = ""
    truth_score: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    harness_error: str | None = None

    def failed_checks(self) -> list[str]:
        return [
            name
            for name, ok in (
                ("minutes", self.minutes_ok), ("honest", self.honest_ok),
                ("reason", self.reason_ok),
            )
            if not ok
        ]  # fmt: skip


def sim_url(case: Case, truth_path: Path | None = None) -> str:
    """The ``liv start`` device URL of a case (its truth file, when given, last)."""
    keys = {"device_id": case.device_id, "seed": str(case.seed), "speed": "max", **case.sim}
    if truth_path is not None:
        keys["truth"] = str(truth_path)
    return "sim://?" + "&".join(f"{k}={v}" for k, v in keys.items())


def calibration_url(case: Case) -> str:
    """The empty plate with a correct sensor: what the plate was calibrated as."""
    profile = f"&profile={case.sim['profile']}" if "profile" in case.sim else ""
    return f"sim://?mass=0&seed={case.seed}&speed=max&device_id={case.device_id}{profile}"


def _frequency_yaml(frequency: float | str) -> str:
    if not isinstance(frequency, str):
        return f"frequency_hz: {frequency:g}\n"
    kind, _, spec = frequency.partition(":")
    if kind == "steps":
        lines = ["frequency_schedule:", "  steps:"]
        for step in spec.split(","):
            hz, at_s = step.split("@")
            lines.append(f"    - {{at_s: {at_s}, hz: {hz}}}")
        return "\n".join(lines) + "\n"
    if kind == "sweep":
        band, seconds = spec.split("/")
        low, high = band.split("-")
        return (
            "frequency_schedule:\n"
            f"  sweep: {{low_hz: {low}, high_hz: {high}, seconds_each_way: {seconds}}}\n"
        )
    raise ValueError(f"frequency {frequency!r}: use Hz, steps:HZ@S,... or sweep:LOW-HIGH/S")


def protocol_yaml(case: Case, patient_id: str, today: date) -> str:
    """The prescription of a case: one session a day, a study from yesterday to tomorrow."""
    return (
        f"patient_id: {patient_id}\n"
        f"target_g: {case.target_g:g}\n"
        + _frequency_yaml(case.frequency)
        + f"minutes_per_session: {case.minutes:g}\n"
        "sessions_per_day: 1\n"
        f"dose_tolerance: {case.dose_tolerance:g}\n"
        f"study_start: {(today - timedelta(days=1)).isoformat()}\n"
        f"study_end: {(today + timedelta(days=1)).isoformat()}\n"
        "timezone: UTC\n"
    )


@dataclass(frozen=True)
class StepResult:
    """One ``liv`` command as a person would have seen it."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_liv_steps(steps: Sequence[tuple[Sequence[str], bool]], workdir: Path) -> list[StepResult]:
    """Run ``liv`` commands in order, all in one process of their own (``--liv-steps``).

    Each step is ``(argv, must_succeed)``; the run stops after a failed ``must_succeed`` step.
    One process per case rather than per command: importing the project costs about a second
    of CPU per process, most of a short case's time on a busy 2-core machine.
    """
    spec = workdir / "liv-steps.json"
    results = workdir / "liv-results.json"
    spec.write_text(json.dumps({
        "steps": [{"argv": list(argv), "must": must} for argv, must in steps],
        "results": str(results),
    }), encoding="utf-8")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--liv-steps", str(spec)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise HarnessError(f"the liv commands took longer than {STEP_TIMEOUT_S:g} s") from None
    if proc.returncode != 0 or not results.exists():
        tail = " / ".join(proc.stderr.strip().splitlines()[-3:])
        raise HarnessError(f"the process running the liv commands failed: {tail}")
    return [StepResult(**r) for r in json.loads(results.read_text(encoding="utf-8"))]


def _liv_steps_child(spec_path: Path) -> int:
    """The child side of :func:`run_liv_steps`: ``sessions.cli.main`` per step, output kept."""
    # The runner side only, and only in this child process: neither the harness process nor
    # the scorer imports the project.
    from sessions.cli import main as liv  # noqa: PLC0415

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    results: list[dict[str, Any]] = []
    for step in spec["steps"]:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = liv(step["argv"])
        except SystemExit as exc:  # argparse: a usage error
            code = exc.code if isinstance(exc.code, int) else 2
        except Exception:  # the host crashed: a patient would have seen this traceback
            err.write(traceback.format_exc())
            code = 1
        results.append(
            {"argv": step["argv"], "returncode": code, "stdout": out.getvalue(),
             "stderr": err.getvalue()}
        )  # fmt: skip
        if step["must"] and code != 0:
            break
    Path(spec["results"]).write_text(json.dumps(results), encoding="utf-8")
    return 0


def _must(step: StepResult) -> None:
    if step.returncode != 0:
        tail = " / ".join((step.stderr or step.stdout).strip().splitlines()[-3:])
        raise HarnessError(f"liv {' '.join(step.argv[:2])} exited {step.returncode}: {tail}")


def _last_sentence(step: StepResult) -> str:
    for stream in (step.stderr, step.stdout):
        lines = [line.strip() for line in stream.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return ""


def truth_situation(true_s: float, case: Case) -> str:
    if true_s >= case.prescribed_s - case.allowance_s:
        return "full"
    return "none" if true_s < case.allowance_s else "short"


def judge(row: Row, case: Case, true_s: float, logged_s: float) -> None:
    """Fill the verdicts of a row from the true and the logged seconds at dose."""
    row.true_min = true_s / 60.0
    row.logged_min = logged_s / 60.0
    row.error_s = logged_s - true_s
    row.truth_situation = truth_situation(true_s, case)
    row.truth_as_expected = row.truth_situation == case.truth
    row.minutes_ok = abs(row.error_s) <= case.allowance_s
    row.honest_ok = row.status != COMPLETED or row.truth_situation == "full"
    row.reason_ok = row.reason_class == COMPLETED or row.reason_class in case.reasons
    row.verdict = row.minutes_ok and row.honest_ok and row.reason_ok


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_case(case: Case, workdir: Path) -> Row:
    """Run one case through ``liv`` in ``workdir`` (created) and score it; never raises."""
    row = Row(
        name=case.name, description=case.description, sim_url=sim_url(case),
        frequency=str(case.frequency), target_g=case.target_g,
        dose_tolerance=case.dose_tolerance, prescribed_min=case.minutes,
        allowance_s=case.allowance_s, expected_truth=case.truth,
        expected_reasons=list(case.reasons),
    )  # fmt: skip
    started = time.monotonic()
    try:
        _run_case(case, workdir, row)
    except (HarnessError, OSError, ValueError, KeyError) as exc:
        row.harness_error = f"{type(exc).__name__}: {exc}"
    row.wall_s = time.monotonic() - started
    return row


def _run_case(case: Case, workdir: Path, row: Row) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    home = str(workdir / "home")
    truth_path = workdir / "truth.npz"
    protocol = workdir / "protocol.yaml"
    patient_id = "DOSE-" + case.name.replace("_", "-")[:50]
    protocol.write_text(protocol_yaml(case, patient_id, datetime.now(UTC).date()))
    # the harness plays the clinic: its own key signs the case's protocol (docs/trust.md)
    clinic, signed = workdir / "clinic", workdir / "protocol.signed.yaml"
    setup = [
        ["clinic", "init", "--dir", str(clinic)],
        ["protocol", "sign", str(protocol), "--clinic-dir", str(clinic), "--out", str(signed)],
        ["enroll", str(clinic / "clinic-public.pem"), "--home", home],
        ["protocol", "install", str(signed), "--home", home],
        ["calibrate", "--engineer", "--device", calibration_url(case), "--home", home],
    ]
    steps = run_liv_steps(
        [
            *[(argv, True) for argv in setup],
            (["start", "--device", sim_url(case, truth_path), "--home", home], False),
            (["export", "--format", "jsonl", "--home", home], False),
        ],
        workdir,
    )
    for step in steps[: len(setup)]:
        _must(step)
    if len(steps) != len(setup) + 2:
        raise HarnessError(f"{len(steps)} of the {len(setup) + 2} liv commands ran")
    start, export = steps[-2], steps[-1]
    row.start_exit = start.returncode
    row.message = _last_sentence(start)
    crashed = "Traceback (most recent call last)" in start.stderr
    if (start.returncode == 2 and not crashed) or "cannot open 'sim://" in row.message:
        # a usage error, or a sim:// URL the simulator refuses: the matrix is wrong, not the host
        raise HarnessError(f"liv start refused the case's arguments: {row.message}")
    if export.returncode != 0 and (workdir / "home" / "liv.db").exists():
        _must(export)
    lines = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
    records = [r for r in lines if "schema" not in r]  # the export's header is not a record
    # the calibration is logged too, as an engineering run: the session is the other record
    records = [r for r in records if r.get("kind") != "engineering"]
    if len(records) > 1:
        raise HarnessError(f"expected at most one record in a fresh home, found {len(records)}")
    if records:
        record = records[0]
        row.status = str(record["status"])
        row.reason = str(record["reason"])
        row.trip_codes = [
            str(event["reason"]) for event in record.get("safety_events") or []
            if isinstance(event, dict) and "reason" in event
        ]  # fmt: skip
        logged_s = float(record["minutes_at_dose"]) * 60.0
    else:  # refused (or crashed) before the row was written
        row.status = "refused"
        row.reason = start.stderr.strip() if crashed else row.message
        logged_s = 0.0
    row.reason_class = reason_class(row.status, row.reason, row.trip_codes)
    true_s = 0.0
    if truth_path.exists():
        score = truth_score.score(
            truth_score.load_truth(truth_path), case.target_g, case.dose_tolerance
        )
        row.truth_score = {k: _json_safe(v) for k, v in asdict(score).items()}
        true_s = score.seconds_at_dose
    elif records:
        raise HarnessError("a session was recorded but the simulator wrote no truth file")
    judge(row, case, true_s, logged_s)


def run_cases(
    cases: Sequence[Case],
    workdir: Path,
    jobs: int = 1,
    on_done: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Run cases, ``jobs`` at a time (each case's steps are processes of their own)."""
    lock = threading.Lock()

    def one(case: Case) -> Row:
        row = run_case(case, workdir / case.name)
        if on_done is not None:
            with lock:
                on_done(row)
        return row

    if jobs <= 1:
        return [one(case) for case in cases]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, cases))


# ---- output ----------------------------------------------------------------------------------


def _cell(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def table(rows: Sequence[Row]) -> str:
    """One row per case: name, true min, logged min, error s, status, reason, verdict."""
    header = ("case", "true min", "logged min", "error s", "status", "reason", "truth", "verdict")
    body = []
    for r in rows:
        if r.harness_error:
            body.append((r.name, "-", "-", "-", "HARNESS ERROR", r.harness_error[:60], "-", "-"))
            continue
        truth = r.truth_situation + ("" if r.truth_as_expected else f" (!{r.expected_truth})")
        verdict = "ok" if r.verdict else "FAIL " + ",".join(r.failed_checks())
        body.append((
            r.name, _cell(r.true_min, ".2f"), _cell(r.logged_min, ".2f"),
            _cell(r.error_s, "+.1f"), r.status, r.reason_class, truth, verdict,
        ))  # fmt: skip
    widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]
    right = {1, 2, 3}

    def fmt(line: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if k in right else cell.ljust(w)
            for k, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def summary(rows: Sequence[Row]) -> dict[str, Any]:
    """The issue's three targets over the rows that ran."""
    ran = [r for r in rows if r.harness_error is None]
    errors = [abs(r.error_s) for r in ran if math.isfinite(r.error_s)]
    return {
        "cases": len(rows),
        "harness_errors": len(rows) - len(ran),
        "passed": sum(r.verdict for r in ran),
        "minutes_within_allowance": sum(r.minutes_ok for r in ran),
        "completed_but_under_dose": sum(not r.honest_ok for r in ran),
        "shortfalls": sum(r.status != COMPLETED for r in ran),
        "shortfalls_with_true_reason": sum(r.status != COMPLETED and r.reason_ok for r in ran),
        "max_abs_error_s": max(errors) if errors else None,
        "truth_differs_from_matrix": [r.name for r in ran if not r.truth_as_expected],
        "failed": [r.name for r in ran if not r.verdict],
    }


def summary_text(s: Mapping[str, Any]) -> str:
    worst = s["max_abs_error_s"]
    lines = [
        f"cases {s['cases']}, passed {s['passed']}, harness errors {s['harness_errors']}",
        f"logged minutes within max(1%, 3 s) of truth: {s['minutes_within_allowance']} "
        f"(worst |error| {'-' if worst is None else f'{worst:.1f} s'})",
        f"logged completed but truly under dose: {s['completed_but_under_dose']} (target 0)",
        f"shortfalls recorded with their true reason: {s['shortfalls_with_true_reason']} of "
        f"{s['shortfalls']}",
    ]
    if s["truth_differs_from_matrix"]:
        lines.append("true situation differs from the matrix (!): "
                     + ", ".join(s["truth_differs_from_matrix"]))  # fmt: skip
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def select(cases: Sequence[Case], only: Sequence[str] | None, quick: bool) -> list[Case]:
    """The cases to run; raises ValueError naming an unknown case and the known ones."""
    chosen = [case for case in cases if case.quick] if quick else list(cases)
    if only:
        names = {case.name: case for case in cases}
        wanted = [name.strip() for item in only for name in item.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in names]
        if unknown:
            raise ValueError(f"unknown case {', '.join(unknown)}: the cases are {', '.join(names)}")
        chosen = [case for case in chosen if case.name in wanted]
    return chosen


def main(argv: Sequence[str] | None = None, cases: Sequence[Case] = CASES) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Exit 0 whatever the verdicts; 1 if the harness itself broke.",
    )
    parser.add_argument("--quick", action="store_true", help="only the quick subset")
    parser.add_argument("--only", action="append", metavar="NAME[,NAME]",
                        help="only these cases (repeatable)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="cases run at once (default 1; the machine has 2 cores)")  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="write rows and summary as JSON")
    parser.add_argument("--workdir", metavar="DIR", type=Path,
                        help="keep each case's home, protocol and truth file here "
                        "(default: a temporary directory, removed)")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--liv-steps", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.liv_steps is not None:
        return _liv_steps_child(args.liv_steps)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs} is not allowed: use 1 or more")
    try:
        chosen = select(cases, args.only, args.quick)
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        for case in chosen:
            print(f"{case.name:<28} {'quick ' if case.quick else '      '}{case.description}")
        return 0
    if not chosen:
        parser.error("no case selected (--only and --quick together select nothing)")

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dose_truth.")) if temporary else args.workdir
    used = [case.name for case in chosen if (workdir / case.name).exists()]
    if used:
        # a home that already holds a session would be refused "done for today" and its old
        # record and truth file read as this run's
        parser.error(f"--workdir {workdir} already holds case(s) {', '.join(used)}: "
                     "use a new or empty directory")  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/dose_truth.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    began = time.monotonic()
    done = 0

    def progress(row: Row) -> None:
        nonlocal done
        done += 1
        state = "harness error" if row.harness_error else ("ok" if row.verdict else "fail")
        print(f"[{done}/{len(chosen)}] {row.name}: {state} ({row.wall_s:.1f} s)",
              file=sys.stderr, flush=True)  # fmt: skip

    try:
        rows = run_cases(chosen, workdir, args.jobs, progress)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    result = summary(rows)
    print(table(rows))
    print()
    print(summary_text(result))
    wall = time.monotonic() - began
    print(f"\n{len(rows)} cases in {wall:.0f} s wall ({args.jobs} job(s))")
    if args.json:
        data = {
            "command": command,
            "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": _git_commit(),
            "python": platform.python_version(),
            "wall_s": wall,
            "summary": result,
            "rows": [{k: _json_safe(v) for k, v in asdict(r).items()} for r in rows],
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 1 if result["harness_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
