"""FHIR R4 export: every resource validated with fhir.resources (R4B models), mapping checked.

fhir.resources checks structure, cardinality, types and formats (ids, dateTimes, URIs) but not
the required value sets, so the statuses and UCUM codes are checked here against the FHIR R4
value sets they are bound to.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from sessions.cli import main
from sessions.clinic.fhir import (
    SESSION_ID_SYSTEM,
    STANDARD_GRAVITY_M_S2,
    FhirSession,
    patient_bundle,
)
from sessions.log import SessionLog
from sessions.log.fields import _summary_from_raw
from tests.test_clinic_db import cli_register, make_records, write_export

# FHIR R4 required bindings the models do not enforce
DEVICE_USE_STATUSES = {"active", "completed", "entered-in-error", "intended", "stopped", "on-hold"}
OBSERVATION_STATUSES = {"registered", "preliminary", "final", "amended"}
UCUM_CODES = {"min", "m/s2", "[g]", "Hz"}
GENERATED = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _records() -> list[dict[str, Any]]:
    return make_records(
        "P7",
        3,
        tweak={
            1: {"status": "tripped", "minutes_at_dose": 3.5, "reason": "overload"},
            2: {"override": True, "override_reason": "travel", "mean_error_pct": None},
            4: {"firmware_version": "1.3.0"},
        },
    )


def _bundle(kinds: dict[int, str] | None = None) -> dict[str, Any]:
    sessions = [
        FhirSession(_summary_from_raw(raw), (kinds or {}).get(k, "therapy"))
        for k, raw in enumerate(_records())
    ]
    return patient_bundle("P7", sessions, GENERATED)


def validate(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate the bundle and every resource in it on its own; returns the resources."""
    Bundle.model_validate(bundle)
    resources = [entry["resource"] for entry in bundle["entry"]]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    for resource in resources:  # every reference resolves inside the bundle
        for ref in _references(resource):
            assert ref in full_urls, ref
    return resources


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def _quantities(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        here = [node["valueQuantity"]] if "valueQuantity" in node else []
        return here + [q for v in node.values() for q in _quantities(v)]
    if isinstance(node, list):
        return [q for v in node for q in _quantities(v)]
    return []


def test_every_resource_of_the_bundle_is_valid_fhir_r4() -> None:
    resources = validate(_bundle())
    kinds = [r["resourceType"] for r in resources]
    assert kinds.count("Patient") == 1
    assert kinds.count("Device") == 1
    assert kinds.count("DeviceUseStatement") == 6
    assert kinds.count("Observation") == 12
    for r in resources:
        if r["resourceType"] == "DeviceUseStatement":
            assert r["status"] in DEVICE_USE_STATUSES
        if r["resourceType"] == "Observation":
            assert r["status"] in OBSERVATION_STATUSES
    for q in _quantities(resources):
        assert q["system"] == "http://unitsofmeasure.org"
        assert q["code"] in UCUM_CODES


def test_the_mapping_field_by_field() -> None:
    records = _records()
    resources = validate(_bundle())
    by_id = {r["id"]: r for r in resources}
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    assert set(patient) == {"resourceType", "id", "meta", "identifier"}  # a pseudonym only
    assert patient["identifier"][0]["value"] == "P7"
    device = next(r for r in resources if r["resourceType"] == "Device")
    assert device["identifier"][0]["value"] == "LIV-P7"
    assert [v["value"] for v in device["version"]] == ["1.2.0", "1.3.0"]
    uses = [r for r in resources if r["resourceType"] == "DeviceUseStatement"]
    for raw, use in zip(records, uses, strict=True):
        assert use["identifier"][0] == {"system": SESSION_ID_SYSTEM, "value": raw["session_id"]}
        assert use["identifier"][1]["value"] == raw["record_hash"]
        assert use["timingPeriod"] == {"start": raw["started_utc"], "end": raw["ended_utc"]}
        assert use["device"]["reference"] == f"urn:uuid:{device['id']}"
        minutes, peak = (by_id[ref["reference"].removeprefix("urn:uuid:")]
                         for ref in use["derivedFrom"])  # fmt: skip
        assert minutes["valueQuantity"]["value"] == raw["minutes_at_dose"]
        assert minutes["valueQuantity"]["code"] == "min"
        assert minutes["effectivePeriod"] == use["timingPeriod"]
        if raw["mean_error_pct"] is None:
            assert "valueQuantity" not in peak
            assert peak["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
        else:
            g = raw["target_g"] * (1 + raw["mean_error_pct"] / 100)
            assert peak["valueQuantity"]["value"] == pytest.approx(g * STANDARD_GRAVITY_M_S2)
            assert peak["valueQuantity"]["code"] == "m/s2"
            assert peak["component"][0]["valueQuantity"] == pytest.approx(
                {"value": g, "unit": "g", "system": "http://unitsofmeasure.org", "code": "[g]"}
            )
    assert [u["status"] for u in uses] == ["completed", "stopped", *["completed"] * 4]
    assert "overload" in uses[1]["note"][0]["text"]
    assert any("travel" in n["text"] for n in uses[2]["note"])


def test_simulated_sessions_are_tagged_as_such() -> None:
    resources = validate(_bundle({3: "simulated"}))
    uses = [r for r in resources if r["resourceType"] == "DeviceUseStatement"]
    assert [u["meta"]["tag"][0]["code"] for u in uses] == [
        "therapy", "therapy", "therapy", "simulated", "therapy", "therapy"
    ]  # fmt: skip
    assert any("never counted" in n["text"] for n in uses[3]["note"])


def test_the_same_records_give_the_same_resources() -> None:
    assert _bundle() == _bundle()


def test_liv_export_format_fhir_on_the_home_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "liv.db"
    with SessionLog(db) as log:
        log.import_jsonl(write_export(tmp_path / "e.jsonl", _records()))
        log.import_jsonl(write_export(tmp_path / "o.jsonl", make_records("OTHER", 1, seed=9)))
    home = ["--home", str(tmp_path / "home"), "--db", str(db)]
    assert main(["export", *home, "--format", "fhir"]) == 1  # two patients: say which
    assert "--patient" in capsys.readouterr().err
    out = tmp_path / "p7.fhir.json"
    code = main(["export", *home, "--format", "fhir", "--patient", "P7", "--out", str(out)])
    assert code == 0
    assert out.stat().st_mode & 0o777 == 0o600
    resources = validate(json.loads(out.read_text(encoding="utf-8")))
    assert sum(r["resourceType"] == "DeviceUseStatement" for r in resources) == 6
    assert "exported 6 sessions of P7" in capsys.readouterr().err


def test_liv_clinic_export_format_fhir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "clinic.db")
    export = write_export(tmp_path / "e.jsonl", _records())
    cli_register(db, "LIV-P7")
    assert main(["clinic", "import", "--db", db, str(export)]) == 0
    capsys.readouterr()
    assert main(["clinic", "export", "--db", db, "--format", "fhir", "P7"]) == 0
    resources = validate(json.loads(capsys.readouterr().out))
    assert sum(r["resourceType"] == "Observation" for r in resources) == 12
    assert main(["clinic", "export", "--db", db, "NOBODY"]) == 1
    assert "no sessions of patient 'NOBODY'" in capsys.readouterr().err


def test_an_export_of_no_session_is_a_patient_alone() -> None:
    bundle = patient_bundle("P0", [], GENERATED - timedelta(days=1))
    assert [r["resourceType"] for r in validate(bundle)] == ["Patient"]
