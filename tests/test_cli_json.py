"""`--json` on every command that reports something: each output has its documented shape.

docs/json.md is the contract; sessions/jsonshapes.py SHAPES holds the same fields. The tests
check the two against each other, then every command's output against SHAPES, field by field.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture

from sessions.jsonshapes import SESSION_STATUSES, SHAPES, ShapeError, documented_kinds, validate
from tests.test_cli_shape import PORTS
from tests.test_report_cli import ClinicHome, make_clinic_home, run, tamper

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clinic_template(tmp_path_factory: pytest.TempPathFactory) -> ClinicHome:
    return make_clinic_home(tmp_path_factory.mktemp("json") / "home")


@pytest.fixture
def clinic(clinic_template: ClinicHome, tmp_path: Path) -> ClinicHome:
    root = tmp_path / "home"
    shutil.copytree(clinic_template.root, root)
    return ClinicHome(root, clinic_template.today, clinic_template.protocol_text)


def test_docs_document_exactly_the_shapes_printed() -> None:
    documented = documented_kinds((REPO / "docs" / "json.md").read_text(encoding="utf-8"))
    assert set(documented) == set(SHAPES)
    for kind, fields in SHAPES.items():
        assert documented[kind] == list(fields), kind


def test_the_validator_refuses_a_wrong_shape() -> None:
    good = {"schema": "liv.export_header/1", "integrity": {
        "schema": "liv.verification/1", "status": "verified", "ok": True,
        "records_checked": 3, "vouched": None, "before_signatures": None, "unvouched": None,
        "device_problems": [], "plate_checked": False, "first_bad": None,
        "clock_set_back_sessions": None}}  # fmt: skip
    validate(good)
    for bad in (
        {**good, "extra": 1},
        {"schema": "liv.export_header/1"},
        {**good, "integrity": {**good["integrity"], "ok": "yes"}},
        {**good, "schema": "liv.nothing/1"},
        {**good, "integrity": None},
    ):
        with pytest.raises(ShapeError):
            validate(bad)


def walk(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside ``value``."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def printed(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> Any:
    got, out, err = run(capsys, argv)
    assert got == code, err
    return json.loads(out)


def one_session(capsys: pytest.CaptureFixture[str], home: ClinicHome) -> str:
    sessions = printed(capsys, home.argv("sessions", "--json"))
    return str(sessions[0]["session_id"])


def test_every_reporting_command_prints_its_documented_shape(
    clinic_template: ClinicHome,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mocker: MockerFixture,
) -> None:
    home = clinic_template
    protocol_file = home.root.parent / f"{home.root.name}-protocol.yaml"
    outputs: dict[str, tuple[Any, str]] = {
        "status": (printed(capsys, home.argv("status", "--json")), "liv.status/1"),
        "sessions": (printed(capsys, home.argv("sessions", "--json")), "[liv.session/1]"),
        "show": (
            printed(capsys, home.argv("show", one_session(capsys, home)[:8], "--json")),
            "liv.session_detail/1",
        ),
        "report": (printed(capsys, home.argv("report", "--json")), "liv.report/1"),
        "report --format json": (
            printed(capsys, home.argv("report", "--format", "json")),
            "liv.report/1",
        ),
        "verify": (
            printed(capsys, home.argv("verify", "--json", "--no-device")),
            "liv.verification/1",
        ),
        "protocol check": (
            printed(capsys, ["protocol", "check", str(protocol_file), "--json"]),
            "liv.protocol_check/1",
        ),
        "device info": (
            printed(capsys, ["device", "info", "--device", "sim://?speed=max", "--json"]),
            "liv.device/1",
        ),
        "export": (
            printed(capsys, home.argv("export", "--out", str(tmp_path), "--json")),
            "liv.export/1",
        ),
    }
    mocker.patch("serial.tools.list_ports.comports", return_value=list(PORTS))
    outputs["device list"] = (printed(capsys, ["device", "list", "--json"]), "[liv.port/1]")
    for command, (data, kind) in outputs.items():
        if kind.startswith("["):
            assert isinstance(data, list)
            assert data, command
            for item in data:
                validate(item, kind[1:-1], command)
        else:
            validate(data, kind, command)
        for obj in walk(data):  # one status vocabulary everywhere
            if obj.get("schema") in ("liv.session/1", "liv.flag/1"):
                assert obj["status"] in SESSION_STATUSES, (command, obj["status"])
        assert "stopped_by_patient" not in json.dumps(data), command
    report = outputs["report"][0]
    assert report["days_since_last_session"] == 1
    assert report["adherence_target_pct"] == 80.0
    assert report["weeks"][0]["week"].count("-W") == 1
    assert outputs["status"][0]["today"] == clinic_template.today.isoformat()


def test_values_are_rounded_to_their_meaning(
    clinic_template: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    report = printed(capsys, clinic_template.argv("report", "--json"))
    for obj in walk(report):
        for name, value in obj.items():
            if isinstance(value, float) and (name.endswith(("_pct", "minutes_at_dose"))):
                assert round(value, 1) == value, (name, value)
    overall = report["overall"]
    assert overall["session_adherence_pct"] == round(100 * 65 / 80, 1)  # 81.3, not 0.8125
    detail = printed(capsys, clinic_template.argv("show", one_session(capsys, clinic_template),
                                                  "--json"))  # fmt: skip
    assert detail["session"]["target_g"] == 0.3
    assert all(round(g, 3) == g and round(t, 1) == t for t, g in detail["envelope"])


def test_verify_json_says_failed_and_exits_1(
    clinic: ClinicHome, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(clinic)
    data = printed(capsys, clinic.argv("verify", "--json"), code=1)
    validate(data, "liv.verification/1")
    assert data["status"] == "failed"
    assert data["first_bad"]["what"]
