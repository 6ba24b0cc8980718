"""Presence detection that stays right: judged from the simulator's truth file.

The truth file carries the patient's true mass per block (``patient_mass_kg``); a block is
"occupied" when it carries at least 10 kg, as benchmarks/truth_score.py counts it. The
detector's states are compared with that, never with the controller's own estimate. Every
scenario names its posture (seated and standing), because the simulator's default may change.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from controller.calibration import Calibration, identify
from controller.loop import ControlUpdate, ExposureResult, ExposureSettings, Phase, run_exposure
from controller.presence import LoadState, PresenceDetector, tempco_per_k
from controller.schedule import parse_schedule
from firmware_bridge.client import DeviceClient
from sessions.adherence import compute_adherence
from sessions.cli import main
from sessions.home import LivHome
from sessions.log import SessionKind, SessionLog, SessionRecord
from tests.simhelpers import enrol_home, load_truth, protocol_yaml, write_signed
from tests.test_adherence import Book, d, make_protocol

DEVICE_ID = "SIM-PRES"
WARM_C = 55.0  # a coil 35 K above its calibration: every response about 11% lower
OCCUPIED_KG = 10.0


def _truth_score() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "truth_score.py"
    spec = importlib.util.spec_from_file_location("truth_score", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("truth_score", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cold_cal() -> Calibration:
    with DeviceClient.open("sim://?mass=0&seed=11&speed=max") as dev:
        return identify(dev)


def exposure(
    tmp_path: Path, cal: Calibration, params: str, schedule: str, hold_s: float
) -> tuple[ExposureResult, list[ControlUpdate], dict[str, Any]]:
    truth_path = tmp_path / "truth.npz"
    updates: list[ControlUpdate] = []
    url = f"sim://?seed=5&speed=max&{params}&truth={truth_path}"
    with DeviceClient.open(url) as dev:
        result = run_exposure(
            dev,
            cal,
            ExposureSettings(hold_s=hold_s, schedule=parse_schedule(schedule)),
            on_update=updates.append,
        )
    return result, updates, load_truth(truth_path)


def true_mass(truth: dict[str, Any], start_index: int, t_s: np.ndarray) -> np.ndarray:
    """The true patient mass on the plate at each exposure time ``t_s``."""
    fs = float(truth["sample_rate_hz"])
    index = truth["sample_index"].astype(np.int64)
    streaming = index >= 0
    wanted = start_index + np.round(np.asarray(t_s) * fs).astype(np.int64)
    pos = np.clip(np.searchsorted(index[streaming], wanted), 0, int(streaming.sum()) - 1)
    device_t = truth["t_s"][streaming][pos]
    block = np.clip(np.searchsorted(truth["block_t_s"], device_t, side="right") - 1, 0, None)
    return np.asarray(truth["patient_mass_kg"][block], dtype=np.float64)


def hold_states(updates: list[ControlUpdate]) -> tuple[np.ndarray, list[LoadState]]:
    hold = [u for u in updates if u.phase is Phase.HOLD]
    return np.array([u.t_s for u in hold]), [u.load for u in hold]


def decided_from(result: ExposureResult) -> float:
    """Exposure time of the detector's first decision (after the ramp and the unknown start)."""
    assert result.presence is not None
    return 2.0 + result.presence.unknown_s + 0.05


def true_absences(occupied: np.ndarray) -> int:
    return int(np.count_nonzero(occupied[:-1] & ~occupied[1:]))


# ---- a frequency step and a slow sweep: a light patient who stays is never sent away ----------


@pytest.mark.parametrize("posture", ["seated", "standing"])
def test_a_frequency_step_never_declares_a_light_patient_absent(
    tmp_path: Path, cold_cal: Calibration, posture: str
) -> None:
    result, updates, truth = exposure(
        tmp_path, cold_cal, f"mass=40&posture={posture}&coil_temp_c={WARM_C}",
        "steps:30@0,90@15,45@30,75@45", hold_s=60.0,
    )  # fmt: skip
    t, states = hold_states(updates)
    assert np.all(true_mass(truth, result.start_index, t) >= OCCUPIED_KG)
    assert LoadState.UNLOADED not in states
    assert result.presence is not None
    assert result.presence.absent_s == 0.0
    assert result.presence.absences == 0
    late = [s for ti, s in zip(t, states, strict=True) if ti > decided_from(result) + 1.0]
    assert set(late) == {LoadState.LOADED}, "a 40 kg patient is detectable at 30-90 Hz"


@pytest.mark.parametrize("posture", ["seated", "standing"])
def test_a_slow_sweep_never_declares_a_light_patient_absent(
    tmp_path: Path, cold_cal: Calibration, posture: str
) -> None:
    result, updates, truth = exposure(
        tmp_path, cold_cal, f"mass=40&posture={posture}&coil_temp_c={WARM_C}",
        "sweep:30-90/30", hold_s=60.0,
    )  # fmt: skip
    t, states = hold_states(updates)
    assert np.all(true_mass(truth, result.start_index, t) >= OCCUPIED_KG)
    assert max(u.freq_hz for u in updates) > 89.0  # the top of the sweep was reached
    assert LoadState.UNLOADED not in states
    assert result.presence is not None
    assert result.presence.absent_s == 0.0


def test_a_light_patient_leaving_a_coil_warmed_by_ten_minutes_is_seen(
    tmp_path: Path, cold_cal: Calibration
) -> None:
    """Cold start, 9.3 minutes of 0.3 g at 90 Hz warm the coil by about 15 K, then she leaves:
    uncompensated, the warm empty plate reads like the loaded one did at the start.

    The standing-patient plant's stronger actuator needs so little current for 0.3 g that the
    default coil (4 K/W, 300 J/K) warms by under 3 K in ten minutes; this plate's coil sheds its
    heat worse (15 K/W, 40 J/K: an enclosed coil), so the session warms it as the test needs.
    Its cold response, and so the cold calibration, is the default plate's.
    """
    hot_coil = tmp_path / "hot-coil.yaml"
    hot_coil.write_text(
        "thermal:\n  thermal_resistance_k_per_w: 15.0\n  thermal_capacity_j_per_k: 40.0\n",
        encoding="utf-8",
    )
    result, updates, truth = exposure(
        tmp_path, cold_cal, f"profile={hot_coil}&mass=40&posture=seated&presence=0-560", "90",
        hold_s=600.0,
    )  # fmt: skip
    t, states = hold_states(updates)
    occupied = true_mass(truth, result.start_index, t) >= OCCUPIED_KG
    assert true_absences(occupied) == 1
    assert np.max(truth["coil_temp_c"]) - np.min(truth["coil_temp_c"]) > 10.0
    left_s = float(t[np.flatnonzero(~occupied)[0]])
    seen = [ti for ti, s in zip(t, states, strict=True) if s is LoadState.UNLOADED]
    assert seen, "the step-off was never seen"
    assert left_s <= seen[0] < left_s + 3.0
    assert result.presence is not None
    assert result.presence.absences == 1
    assert result.presence.verified
    assert result.presence.coil_temp_end_c is not None
    assert result.presence.coil_temp_end_c > result.presence.calibration_temp_c + 10.0


@pytest.mark.parametrize(
    ("posture", "schedule", "coil_c"),
    [("seated", "steps:75@0,45@15", 20.0), ("seated", "steps:90@0,30@15", 35.0),
     ("standing", "steps:90@0,30@15", 35.0)],
)  # fmt: skip
def test_a_step_off_after_a_frequency_step_is_seen(
    tmp_path: Path, cold_cal: Calibration, posture: str, schedule: str, coil_c: float
) -> None:
    """The reference taken at the first frequency must not judge the second one."""
    result, updates, truth = exposure(
        tmp_path, cold_cal, f"mass=40&posture={posture}&coil_temp_c={coil_c}&presence=0-35",
        schedule, hold_s=50.0,
    )  # fmt: skip
    t, states = hold_states(updates)
    occupied = true_mass(truth, result.start_index, t) >= OCCUPIED_KG
    true_absent_s = float(np.count_nonzero(~occupied)) * (t[1] - t[0])
    assert true_absent_s > 10.0
    seen_absent_s = sum(s is LoadState.UNLOADED for s in states) * (t[1] - t[0])
    assert abs(seen_absent_s - true_absent_s) < 3.0
    assert result.unloaded_s == pytest.approx(seen_absent_s, abs=0.05)


# ---- stepping off and back on -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mass", "posture", "freq"), [(40, "seated", 60.0), (40, "standing", 90.0),
                                  (150, "standing", 60.0)],
)  # fmt: skip
def test_off_and_back_on_twice_both_absences_are_seen(
    tmp_path: Path, cold_cal: Calibration, mass: int, posture: str, freq: float
) -> None:
    result, updates, truth = exposure(
        tmp_path, cold_cal,
        f"mass={mass}&posture={posture}&coil_temp_c={WARM_C}&presence=0-15,25-40,50-",
        f"{freq:g}", hold_s=60.0,
    )  # fmt: skip
    t, states = hold_states(updates)
    occupied = true_mass(truth, result.start_index, t) >= OCCUPIED_KG
    assert true_absences(occupied) == 2
    assert result.presence is not None
    assert result.presence.absences == 2
    unloaded = np.array([s is LoadState.UNLOADED for s in states])
    # every block well inside a true absence is seen as one, and no block well inside a
    # stretch on the plate (after the first decision) is
    settled = 3.0
    for i, ti in enumerate(t):
        around = (t >= ti - settled) & (t <= ti + settled)
        if not occupied[around].any():
            assert unloaded[i], f"absent at {ti:.2f} s, not seen"
        if occupied[around].all() and ti > settled:
            assert states[i] is LoadState.LOADED, f"on the plate at {ti:.2f} s: {states[i]}"
    true_absent_s = float(np.count_nonzero(~occupied)) * (t[1] - t[0])
    assert abs(result.presence.absent_s - true_absent_s) < 3.0


@pytest.mark.parametrize("posture", ["seated", "standing"])
def test_a_heavy_patient_is_loaded_throughout(
    tmp_path: Path, cold_cal: Calibration, posture: str
) -> None:
    result, updates, truth = exposure(
        tmp_path, cold_cal, f"mass=150&posture={posture}", "steps:60@0,90@15", hold_s=30.0,
    )  # fmt: skip
    t, states = hold_states(updates)
    assert np.all(true_mass(truth, result.start_index, t) >= OCCUPIED_KG)
    assert result.presence is not None
    decided = [s for ti, s in zip(t, states, strict=True) if ti > decided_from(result)]
    assert set(decided) == {LoadState.LOADED}
    assert result.presence.verified
    assert result.presence.detectable


# ---- the whole session: logged minutes against the truth --------------------------------------


def _protocol_text(freq: float) -> str:
    return protocol_yaml(patient_id="P-0789", frequency_hz=f"{freq:g}", minutes_per_session=2)


@pytest.fixture
def cold_home(tmp_path: Path) -> tuple[LivHome, Path]:
    home = LivHome(tmp_path / "home")
    home.ensure()
    with DeviceClient.open(f"sim://?mass=0&seed=1&speed=max&device_id={DEVICE_ID}") as dev:
        home.calibrations().save(identify(dev))
    return home, tmp_path


def _session(home: LivHome, tmp_path: Path, freq: float, params: str) -> SessionRecord:
    write_signed(tmp_path / "p.yaml", _protocol_text(freq))
    enrol_home(home).install_protocol(tmp_path / "p.yaml")
    url = f"sim://?seed=4&speed=max&device_id={DEVICE_ID}&{params}"
    main(["start", "--device", url, "--home", str(home.root)])
    with SessionLog(home.db_path()) as log:
        (record,) = log.sessions()
    return record


@pytest.mark.parametrize(("posture", "freq"), [("seated", 60.0), ("seated", 90.0)])
def test_a_light_patient_stepping_off_late_in_a_warm_session_is_seen_to_leave(
    cold_home: tuple[LivHome, Path], posture: str, freq: float
) -> None:
    home, tmp_path = cold_home
    truth_path = tmp_path / "truth.npz"
    record = _session(
        home, tmp_path, freq,
        f"mass=40&posture={posture}&coil_temp_c={WARM_C}&presence=0-80&truth={truth_path}",
    )  # fmt: skip
    truth = _truth_score().score(load_truth(truth_path), 0.3, 0.10)
    assert 60.0 < truth.seconds_at_dose < 85.0  # on the plate for about 80 s of the 120 due
    assert abs(record.minutes_at_dose * 60.0 - truth.seconds_at_dose) < 3.0
    assert record.status.value == "stopped_by_patient"
    assert "nobody on the plate" in (record.reason or "")
    (presence,) = [e for e in record.safety_events if e["reason"] == "presence"]
    assert presence["values"]["absences"] == 1
    assert presence["values"]["verified"] is True
    assert presence["values"]["temperature_compensated"] is True


def _steps_protocol_text() -> str:
    today = datetime.now(UTC).date()
    return f"""\
patient_id: P-0790
target_g: 0.3
frequency_schedule:
  steps:
    - at_s: 0
      hz: 30
    - at_s: 10
      hz: 90
minutes_per_session: 1
sessions_per_day: 2
min_gap_hours: 3
study_start: {(today - timedelta(days=10)).isoformat()}
study_end: {(today + timedelta(days=100)).isoformat()}
timezone: UTC
"""


def test_a_patient_the_plate_cannot_tell_from_empty_is_credited_and_flagged(
    cold_home: tuple[LivHome, Path],
) -> None:
    """20 kg seated: clearly loaded at 30 Hz, too close to empty at 90 Hz. Not sent away, and
    the record says presence was not verified; the adherence report flags it."""
    home, tmp_path = cold_home
    write_signed(tmp_path / "p.yaml", _steps_protocol_text())
    enrol_home(home).install_protocol(tmp_path / "p.yaml")
    truth_path = tmp_path / "truth.npz"
    url = f"sim://?seed=4&speed=max&device_id={DEVICE_ID}&mass=20&posture=seated&truth={truth_path}"
    assert main(["start", "--device", url, "--home", str(home.root)]) == 0
    with SessionLog(home.db_path()) as log:
        (record,) = log.sessions()
    truth = _truth_score().score(load_truth(truth_path), 0.3, 0.10)
    assert truth.seconds_at_dose > 60.0  # she really was on the plate, at dose, for the minute
    assert record.status.value == "completed"
    assert record.minutes_at_dose == pytest.approx(1.0)
    assert "presence not verified" in (record.reason or "")
    (presence,) = [e for e in record.safety_events if e["reason"] == "presence"]
    assert presence["values"]["verified"] is False
    assert presence["values"]["detectable"] is False
    assert presence["values"]["undetectable_s"] > 40.0
    assert presence["values"]["absent_s"] == 0.0
    # The session ran on the simulator, so it is recorded as simulated and never counts; the
    # same record as therapy (what a real plate writes) is what the report must flag.
    assert record.kind is SessionKind.SIMULATED
    as_therapy = dataclasses.replace(record, kind=SessionKind.THERAPY)
    report = compute_adherence(home.protocol(), [as_therapy])
    kinds = [f.kind for f in report.flagged]
    assert "presence_not_verified" in kinds
    assert "fault" not in kinds  # the presence facts are not a safety fault


def test_a_verified_session_is_not_flagged_for_its_presence_facts() -> None:
    facts = {"reason": "presence", "t_s": 600.0, "text": "presence was judged throughout",
             "values": {"verified": True, "absent_s": 0.0}}  # fmt: skip
    unverified = {"reason": "presence", "t_s": 600.0, "text": "presence not verified: ...",
                  "values": {"verified": False, "undetectable_s": 300.0}}  # fmt: skip
    book = Book()
    book.add(d(10), 1, 8, safety_events=(facts,))
    book.add(d(10), 2, 14, safety_events=(unverified,))
    report = compute_adherence(make_protocol(), book.records, today=d(12))
    by_slot = {f.slot: f.kind for f in report.flagged}
    assert by_slot == {2: "presence_not_verified"}


def test_a_calibration_written_before_coil_temperatures_still_loads(
    cold_cal: Calibration,
) -> None:
    data = cold_cal.to_dict()
    assert data["coil_temp_c"] == pytest.approx(20.0, abs=0.5)
    del data["coil_temp_c"]
    old = Calibration.from_dict(data)
    assert old.coil_temp_c is None
    assert PresenceDetector(0.02, old.coil_temp_c).calibration_temp_c == 20.0


# ---- the detector alone, on made-up responses -------------------------------------------------


def _feed(
    detector: PresenceDetector, freq_hz: float, response: float, seconds: float
) -> list[LoadState]:
    blocks = round(seconds / detector.block_s)
    return [detector.update(freq_hz, response, in_hold=True, settled=True) for _ in range(blocks)]


def test_the_detector_compensates_the_warm_coil_and_keeps_references_per_frequency() -> None:
    detector = PresenceDetector(0.02, calibration_temp_c=20.0)
    detector.set_coil_temperature(50.0)
    cooled = 1.0 / (1.0 + tempco_per_k(30.0) * 30.0)  # 30 K warmer: resistance up, response down
    assert _feed(detector, 30.0, 0.85 * cooled, 2.0)[-1] is LoadState.LOADED
    assert detector.feature == pytest.approx(0.85, abs=0.005)
    # 90 Hz, where this patient reads 0.975 of the empty plate: loaded and empty too close
    states = _feed(detector, 90.0, 0.975 / (1.0 + tempco_per_k(90.0) * 30.0), 3.0)
    assert LoadState.UNLOADED not in states
    assert states[-1] is LoadState.CANNOT_TELL
    # back at 30 Hz the plate reads empty: the reference remembered there says she has left
    states = _feed(detector, 30.0, 1.0 * cooled, 3.0)
    assert states[-1] is LoadState.UNLOADED
    summary = detector.summary()
    assert summary.absences == 1
    assert summary.detectable is False
    assert summary.undetectable_s > 2.0
    assert summary.temperature_compensated
