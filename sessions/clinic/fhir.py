"""Session records as a FHIR R4 Bundle: one patient, their plates, one use statement a session.

Plain JSON (dicts), no FHIR library: the mapping is documented field by field in docs/fhir.md
and the tests validate every resource with the ``fhir.resources`` R4B models. Ids are UUIDs
derived from the record's own ids (the same records always give the same resources), so a
receiving system can recognise a session sent twice. The patient appears by the pseudonymous
id of the protocol only: no name, birth date or address exists anywhere in the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sessions.log.records import SessionSummary

STANDARD_GRAVITY_M_S2 = 9.80665
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
PSEUDONYMIZED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "PSEUDED",
    "display": "pseudonymized",
}
# Local identifier and code systems of this software (docs/fhir.md: no standard code exists for
# an LIV dose; a receiving system maps these codes to its own).
_BASE = "urn:liv-platform:fhir"
PATIENT_ID_SYSTEM = f"{_BASE}:patient-id"
DEVICE_ID_SYSTEM = f"{_BASE}:device-id"
SESSION_ID_SYSTEM = f"{_BASE}:session-id"
RECORD_HASH_SYSTEM = f"{_BASE}:record-hash"
CODE_SYSTEM = f"{_BASE}:code"
KIND_SYSTEM = f"{_BASE}:record-kind"
_NAMESPACE = uuid.UUID("5d3f3b0e-6a57-4c51-9a43-6b0d7a3b51a1")  # fixed: ids stay stable

# The session's status in the log -> DeviceUseStatement.status
USE_STATUS = {
    "completed": "completed",
    "stopped_by_patient": "stopped",
    "tripped": "stopped",
    "interrupted": "stopped",
}


@dataclass(frozen=True)
class FhirSession:
    """One finished record and its kind (therapy, simulated, engineering)."""

    record: SessionSummary
    kind: str = "therapy"


def _id(kind: str, key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{key}"))


def _ref(resource_id: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{resource_id}"}


def _time(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _code(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": CODE_SYSTEM, "code": code, "display": display}], "text": display}


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": round(value, 6), "unit": unit, "system": UCUM, "code": code}


def delivered_peak_g(record: SessionSummary) -> float | None:
    """Mean measured peak acceleration over the hold: the target corrected by the mean error."""
    if record.mean_error_pct is None:
        return None
    return record.target_g * (1.0 + record.mean_error_pct / 100.0)


def patient_bundle(
    patient_id: str, sessions: Sequence[FhirSession], generated: datetime
) -> dict[str, Any]:
    """A FHIR R4 ``collection`` Bundle of one patient's finished sessions (oldest first)."""
    mine = sorted(
        (s for s in sessions if s.record.patient_id == patient_id and s.record.finished),
        key=lambda s: (s.record.started_utc, s.record.session_id),
    )
    patient_ref = _id("patient", patient_id)
    entries: list[dict[str, Any]] = [
        _entry(
            {
                "resourceType": "Patient",
                "id": patient_ref,
                "meta": {"security": [PSEUDONYMIZED]},
                "identifier": [{"system": PATIENT_ID_SYSTEM, "value": patient_id}],
            }
        )
    ]
    firmware: dict[str, list[str]] = {}
    for s in mine:
        seen = firmware.setdefault(s.record.device_id, [])
        if s.record.firmware_version not in seen:
            seen.append(s.record.firmware_version)
    for device_id, versions in sorted(firmware.items()):
        entries.append(
            _entry(
                {
                    "resourceType": "Device",
                    "id": _id("device", device_id),
                    "identifier": [{"system": DEVICE_ID_SYSTEM, "value": device_id}],
                    "deviceName": [{"name": "LIV therapy plate", "type": "user-friendly-name"}],
                    "type": {"text": "Low-intensity vibration therapy plate"},
                    "version": [{"type": {"text": "firmware"}, "value": v} for v in versions],
                    "patient": _ref(patient_ref),
                }
            )
        )
    for s in mine:
        entries += _session_entries(s, patient_ref)
    return {
        "resourceType": "Bundle",
        "id": _id("bundle", f"{patient_id}:{_time(generated)}"),
        "type": "collection",
        "timestamp": _time(generated),
        "entry": entries,
    }


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}


def _session_entries(s: FhirSession, patient_ref: str) -> list[dict[str, Any]]:
    r = s.record
    assert r.ended_utc is not None  # finished
    device_ref = _id("device", r.device_id)
    period = {"start": _time(r.started_utc), "end": _time(r.ended_utc)}
    common = {
        "status": "final",
        "category": [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": "therapy", "display": "Therapy"}]}
        ],
        "subject": _ref(patient_ref),
        "effectivePeriod": period,
        "device": _ref(device_ref),
    }
    minutes_id = _id("minutes-at-dose", r.session_id)
    minutes = {
        "resourceType": "Observation",
        "id": minutes_id,
        **common,
        "code": _code("minutes-at-dose", "Minutes of vibration at the prescribed dose"),
        "valueQuantity": _quantity(r.minutes_at_dose, "min", "min"),
        "component": [
            {
                "code": _code("minutes-prescribed", "Minutes prescribed for the session"),
                "valueQuantity": _quantity(r.minutes_prescribed, "min", "min"),
            }
        ],
    }
    peak_id = _id("peak-acceleration", r.session_id)
    peak: dict[str, Any] = {
        "resourceType": "Observation",
        "id": peak_id,
        **common,
        "code": _code("delivered-peak-acceleration", "Delivered peak vertical acceleration"),
    }
    delivered = delivered_peak_g(r)
    components = [
        {
            "code": _code("target-peak-acceleration", "Prescribed peak vertical acceleration"),
            "valueQuantity": _quantity(r.target_g, "g", "[g]"),
        }
    ] + [
        {
            "code": _code("frequency", "Vibration frequency"),
            "valueQuantity": _quantity(f, "Hz", "Hz"),
        }
        for f in r.freqs_hz
    ]
    if delivered is None:
        peak["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": "not-performed", "display": "Not Performed"}]
        }
    else:
        peak["valueQuantity"] = _quantity(delivered * STANDARD_GRAVITY_M_S2, "m/s2", "m/s2")
        components.insert(
            0,
            {
                "code": _code("delivered-peak-acceleration-g", "Delivered peak, in g"),
                "valueQuantity": _quantity(delivered, "g", "[g]"),
            },
        )
    peak["component"] = components
    use: dict[str, Any] = {
        "resourceType": "DeviceUseStatement",
        "id": _id("use", r.session_id),
        "meta": {"tag": [{"system": KIND_SYSTEM, "code": s.kind}]},
        "identifier": [{"system": SESSION_ID_SYSTEM, "value": r.session_id}]
        + ([{"system": RECORD_HASH_SYSTEM, "value": r.record_hash}] if r.record_hash else []),
        "status": USE_STATUS.get(str(r.status), "entered-in-error"),
        "subject": _ref(patient_ref),
        "derivedFrom": [_ref(minutes_id), _ref(peak_id)],
        "timingPeriod": period,
        "recordedOn": _time(r.ended_utc),
        "device": _ref(device_ref),
    }
    notes = [f"session {str(r.status).replace('_', ' ')}" + (f": {r.reason}" if r.reason else "")]
    if r.override:
        notes.append("started by override: " + (r.override_reason or "no reason recorded"))
    if s.kind != "therapy":
        notes.append(f"{s.kind} session: not therapy, never counted in adherence")
    use["note"] = [{"text": n} for n in notes]
    return [_entry(use), _entry(minutes), _entry(peak)]
