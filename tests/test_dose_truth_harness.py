"""The honest-dose harness (benchmarks/dose_truth.py) works end to end.

These tests check the harness: that it runs patient sessions through ``liv``, reads back what
the log kept, scores the simulator's truth, and that its numbers and verdicts are consistent
with the log and the truth file. They do NOT check that the host meets the dose targets: that
is what the benchmark itself reports.
"""

from __future__ import annotations

import ast
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from benchmarks import dose_truth, truth_score
from benchmarks.dose_truth import (
    CANNOT_DELIVER,
    CASES,
    COMPLETED,
    NOBODY,
    OTHER_TRIP,
    PATIENT_STOP,
    RAN_OUT,
    REFUSED_OTHER,
    SENSOR,
    Case,
    Row,
    judge,
    reason_class,
)
from firmware_bridge.sim.config import parse_sim_url
from sessions.log import SessionKind, SessionLog
from sessions.protocol import parse_protocol

QUICK_TWO = ("m70_45hz", "sensor_gain_plus12")
PROJECT = ("controller", "sessions", "firmware_bridge")


def test_two_quick_cases_run_end_to_end_with_consistent_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "dose.json"
    workdir = tmp_path / "work"
    argv = ["--only", ",".join(QUICK_TWO), "--jobs", "2", "--json", str(out_json)]
    assert dose_truth.main([*argv, "--workdir", str(workdir)]) == 0

    printed = capsys.readouterr().out
    data = json.loads(out_json.read_text())
    rows: list[dict[str, Any]] = data["rows"]
    assert [r["name"] for r in rows] == list(QUICK_TWO)
    assert data["summary"]["cases"] == 2
    assert data["summary"]["harness_errors"] == 0
    for row in rows:
        case = next(c for c in CASES if c.name == row["name"])
        assert row["harness_error"] is None
        assert row["name"] in printed

        # the logged minutes are the log's own record, read back through the project's API
        with SessionLog(workdir / case.name / "home" / "liv.db", read_only=True) as log:
            # the calibration is logged as an engineering run; the session is the other record
            records = [r for r in log.sessions() if r.kind is not SessionKind.ENGINEERING]
        if row["status"] == "refused":  # e.g. the sensor check: refused before any row
            assert records == []
            assert row["logged_min"] == 0.0
        else:
            (record,) = records
            assert row["status"] == record.status.value
            assert row["reason"] == record.reason
            assert row["logged_min"] == pytest.approx(record.minutes_at_dose, abs=1e-9)

        # the true minutes are the truth file's, scored again here with the case's band
        truth = truth_score.load_truth(workdir / case.name / "truth.npz")
        score = truth_score.score(truth, case.target_g, case.dose_tolerance)
        assert row["true_min"] == pytest.approx(score.seconds_at_dose / 60.0, abs=1e-9)
        assert row["truth_score"]["seconds_on_plate"] == pytest.approx(score.seconds_on_plate)
        assert score.duration_s >= 60.0 * row["logged_min"]  # the truth covers the session

        # the verdicts follow from those numbers
        error_s = 60.0 * (row["logged_min"] - row["true_min"])
        assert row["error_s"] == pytest.approx(error_s, abs=1e-6)
        assert row["minutes_ok"] == (abs(error_s) <= max(0.6 * case.minutes, 3.0))
        full = 60.0 * row["true_min"] >= 60.0 * case.minutes - case.allowance_s
        assert row["honest_ok"] == (row["status"] != "completed" or full)
        assert row["verdict"] == (row["minutes_ok"] and row["honest_ok"] and row["reason_ok"])
    assert "logged completed but truly under dose" in printed


def _row(case: Case, status: str, reason_cls: str) -> Row:
    row = Row(
        name=case.name, description="", sim_url="", frequency="30", target_g=case.target_g,
        dose_tolerance=case.dose_tolerance, prescribed_min=case.minutes,
        allowance_s=case.allowance_s, expected_truth=case.truth,
        expected_reasons=list(case.reasons),
    )  # fmt: skip
    row.status, row.reason_class = status, reason_cls
    return row


def test_the_verdicts_are_the_issue_targets() -> None:
    two_min = Case("c", "", {}, 30, "full")
    # 3 s allowance for a 2-minute session, 1% (6 s) for a 10-minute one
    assert two_min.allowance_s == 3.0
    assert Case("c", "", {}, 30, "full", minutes=10.0).allowance_s == pytest.approx(6.0)

    ok = _row(two_min, "completed", COMPLETED)
    judge(ok, two_min, true_s=118.0, logged_s=120.0)
    assert ok.minutes_ok
    assert ok.honest_ok
    assert ok.reason_ok
    assert ok.verdict
    assert ok.truth_situation == "full"

    late = _row(two_min, "completed", COMPLETED)
    judge(late, two_min, true_s=116.9, logged_s=120.0)  # 3.1 s apart: truth says short
    assert not late.minutes_ok
    assert not late.honest_ok
    assert not late.verdict
    assert late.failed_checks() == ["minutes", "honest"]

    # a shortfall is judged by its reason: this case says nothing should stop it
    ran_out = _row(two_min, "stopped_by_patient", RAN_OUT)
    judge(ran_out, two_min, true_s=30.0, logged_s=30.0)
    assert ran_out.minutes_ok
    assert ran_out.honest_ok
    assert not ran_out.reason_ok
    assert ran_out.truth_situation == "short"

    amp = Case("amp", "", {}, 30, "short", (CANNOT_DELIVER,))
    tripped = _row(amp, "tripped", CANNOT_DELIVER)
    judge(tripped, amp, true_s=0.0, logged_s=1.0)
    assert tripped.verdict
    assert tripped.truth_situation == "none"
    assert not tripped.truth_as_expected  # the matrix said "short": flagged, not scored


@pytest.mark.parametrize(
    ("status", "reason", "codes", "expected"),
    [
        ("completed", "prescribed minutes at dose delivered", [], COMPLETED),
        ("stopped_by_patient", "nobody on the plate for 2 minutes", [], NOBODY),
        ("stopped_by_patient", "the session ran out of time before the dose was delivered", [],
         RAN_OUT),
        ("stopped_by_patient", "stopped by the patient (Ctrl-C)", [], PATIENT_STOP),
        ("tripped", "drive at its limit without reaching the target: drive 0.90",
         ["drive_saturated"], CANNOT_DELIVER),
        ("tripped", "the plate cannot reach the dose: 0.21 g of 0.30 g", ["dose_unreachable"],
         CANNOT_DELIVER),
        ("tripped", "accelerometer does not read about +1 g of gravity: 1.12 g",
         ["sensor_gravity"], SENSOR),
        # the trip's code decides when its text names several causes
        ("tripped", "drive applied but the plate does not respond (actuator or sensor): 9.4%",
         ["no_response"], CANNOT_DELIVER),
        ("tripped", "link to the plate lost: no frame for 0.5 s", ["link_lost"], OTHER_TRIP),
        ("refused", "liv: the accelerometer reads 1.12 g at rest, not 1.00 g: call your clinic",
         [], SENSOR),
        ("refused", "liv: nobody is standing on the plate: step on and start again", [], NOBODY),
        ("refused", "liv: the plate SIM-DOSE has not been calibrated", [], REFUSED_OTHER),
    ],
)  # fmt: skip
def test_recorded_reasons_map_to_classes(
    status: str, reason: str, codes: list[str], expected: str
) -> None:
    assert reason_class(status, reason, codes) == expected


def test_the_matrix_covers_the_issue_and_every_case_is_valid_input() -> None:
    names = [case.name for case in CASES]
    assert len(CASES) >= 30
    assert len(set(names)) == len(names)
    assert len({case.seed for case in CASES}) == len(CASES)
    masses = {float(case.sim["mass"]) for case in CASES if float(case.sim["mass"]) > 0}
    assert min(masses) == 40.0
    assert max(masses) == 150.0
    fixed = {case.frequency for case in CASES if not isinstance(case.frequency, str)}
    assert {30, 45, 60, 90} <= fixed
    schedules = [c.frequency for c in CASES if isinstance(c.frequency, str)]
    assert any(s.startswith("steps:") for s in schedules)
    assert any(s.startswith("sweep:") for s in schedules)
    keys = {key for case in CASES for key in case.sim}
    for needed in ("coil_temp_c", "step_off_at", "step_on_at", "presence", "load_step_at",
                   "sensor_gain_error", "gain_loss_at", "noise"):  # fmt: skip
        assert needed in keys, needed
    assert any(case.minutes == 10.0 for case in CASES)
    assert sum(case.quick for case in CASES) >= 2
    assert len({case.device_id for case in CASES}) == len(CASES)
    for case in CASES:
        # the protocol the harness installs parses, and the URL it starts with is a valid plate
        protocol = parse_protocol(dose_truth.protocol_yaml(case, "DOSE-T", date(2026, 6, 1)))
        assert protocol.target_g == case.target_g
        assert protocol.minutes_per_session == case.minutes
        assert protocol.dose_tolerance == case.dose_tolerance
        config = parse_sim_url(dose_truth.sim_url(case, Path("/tmp/t.npz")))
        assert config.truth == "/tmp/t.npz"
        assert config.speed is None
        # each case is a plate of its own (its own sensor part), calibrated as itself
        assert config.device_id == case.device_id
        calibration = parse_sim_url(dose_truth.calibration_url(case))
        assert calibration.mass_kg == 0.0
        assert calibration.device_id == case.device_id
        assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in case.name)


def test_the_harness_imports_nothing_from_the_project_except_the_cli_in_its_child() -> None:
    tree = ast.parse(Path(dose_truth.__file__).read_text())
    allowed = {"sessions.cli"}
    child = next(
        n for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef) and n.name == "_liv_steps_child"
    )  # fmt: skip
    child_nodes = set(map(id, ast.walk(child)))
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        for module in modules:
            if module.split(".")[0] in PROJECT:
                assert module in allowed, module
                assert id(node) in child_nodes, module


def test_unknown_case_and_bad_jobs_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        dose_truth.main(["--only", "m70_45hz,no_such_case"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown case no_such_case" in err
    assert "m70_45hz" in err
    with pytest.raises(SystemExit) as exit_info:
        dose_truth.main(["--jobs", "0"])
    assert exit_info.value.code == 2
    assert "--jobs 0 is not allowed" in capsys.readouterr().err


def test_a_step_the_harness_cannot_run_is_a_harness_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = Case("broken", "a sim key the plate refuses", {"mass": "999"}, 30, "full")
    assert dose_truth.main(["--workdir", str(tmp_path)], cases=[broken]) == 1
    out = capsys.readouterr().out
    assert "HARNESS ERROR" in out
    assert "harness errors 1" in out


def test_a_workdir_holding_an_earlier_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m70_45hz" / "home").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        dose_truth.main(["--only", "m70_45hz", "--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "already holds case(s) m70_45hz" in capsys.readouterr().err
