"""The JSON every ``liv ... --json`` prints: one shape per kind of object, each versioned.

Every object carries ``"schema": "liv.<kind>/<version>"``; a program reads the kind and the
version before anything else, and a new field or meaning gives a new version. Statuses use one
vocabulary (:data:`STATUS_WORDS`): stored logs keep the words they were written with (their
bytes are hashed), and are read through :func:`status_word`. Numbers are rounded to what they
mean: minutes to 0.1, g to 0.01 (envelope points to 0.001 g), percentages to 0.1, seconds to
0.1. ``docs/json.md`` documents every shape; ``SHAPES`` holds the same fields for
:func:`validate`, and tests/test_cli_json.py checks the two against each other and against what
each command prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sessions.adherence import AdherenceReport, DayAdherence, Flag, ProtocolPeriod
    from sessions.clinic.problems import Problem
    from sessions.log import SessionSummary, TrustResult, VerifyResult
    from sessions.protocol import PatientProtocol

__all__ = [
    "SHAPES",
    "STATUS_WORDS",
    "ShapeError",
    "clinic_problem_shape",
    "day_shape",
    "protocol_shape",
    "report_shape",
    "session_shape",
    "status_word",
    "validate",
    "verification_shape",
]

# A stored word and the word every output uses for it. Session logs written so far say
# "stopped_by_patient" (also for nobody on the plate or the time running out); `liv run` says
# "stopped_by_user". Outputs say "stopped_by_user" for both; the stored bytes never change.
STATUS_WORDS: dict[str, str] = {"stopped_by_patient": "stopped_by_user"}
SESSION_STATUSES = ("running", "completed", "stopped_by_user", "tripped", "interrupted")


def status_word(stored: str) -> str:
    """The one word outputs use for a stored status (or flag kind)."""
    return STATUS_WORDS.get(stored, stored)


def minutes(value: float | None) -> float | None:
    return None if value is None else round(value, 1) + 0.0


def g(value: float | None) -> float | None:
    return None if value is None else round(value, 2) + 0.0


def pct(value: float | None) -> float | None:
    """A percentage (already in percent) to 0.1."""
    return None if value is None else round(value, 1) + 0.0


def ratio_pct(value: float | None) -> float | None:
    """A ratio 0..1 as a percentage to 0.1."""
    return None if value is None else round(100.0 * value, 1) + 0.0


def seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1) + 0.0


def _day(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


# ---- shapes --------------------------------------------------------------------------------
#
# Field types: "str", "int", "float", "bool", "list", "dict"; a trailing "?" allows null;
# "[kind]" is a list of objects of that kind; "kind" alone (with a "/") is one nested object.

SHAPES: dict[str, dict[str, str]] = {
    "liv.session/1": {
        "schema": "str",
        "session_id": "str",
        "kind": "str",
        "counts_as_therapy": "bool",
        "label": "str?",
        "patient_id": "str",
        "device_id": "str",
        "local_date": "str",
        "slot": "int",
        "status": "str",
        "reason": "str",
        "started_local": "str",
        "ended_local": "str?",
        "start_time": "str",
        "minutes_prescribed": "float",
        "minutes_at_dose": "float",
        "target_g": "float",
        "mean_error_pct": "float?",
        "p95_abs_error_pct": "float?",
        "error_uncertainty_pct": "float?",
        "safety_events": "list",
        "override_reason": "str?",
        "resumed_from": "str?",
        "protocol_sha256": "str",
    },
    "liv.session_detail/1": {
        "schema": "str",
        "session": "liv.session/1",
        "exposure": "dict?",
        "envelope": "list",
    },
    "liv.day/1": {
        "schema": "str",
        "date": "str",
        "status": "str",
        "counted": "bool",
        "slots_prescribed": "int",
        "slots_completed": "int",
        "minutes_prescribed": "float",
        "minutes_at_dose": "float",
        "minutes_logged": "float",
        "sessions_logged": "int",
        "session_adherence_pct": "float?",
        "dose_adherence_pct": "float?",
        "protocol_sha256": "str?",
    },
    "liv.week/1": {
        "schema": "str",
        "week": "str",
        "first_day": "str",
        "last_day": "str",
        "days_counted": "int",
        "slots_prescribed": "int",
        "slots_completed": "int",
        "minutes_prescribed": "float",
        "minutes_at_dose": "float",
        "session_adherence_pct": "float?",
        "dose_adherence_pct": "float?",
        "meets_target": "bool?",
    },
    "liv.protocol/1": {
        "schema": "str",
        "patient_id": "str",
        "target_g": "float",
        "dose_tolerance_pct": "float",
        "frequency": "str",
        "minutes_per_session": "float",
        "sessions_per_day": "int",
        "min_gap_hours": "float",
        "daily_windows": "list",
        "study_start": "str",
        "study_end": "str",
        "timezone": "str",
        "sha256": "str",
    },
    "liv.protocol_period/1": {
        "schema": "str",
        "sha256": "str",
        "in_force_from": "str?",
        "in_force_until": "str?",
        "current": "bool",
        "sessions": "int",
        "prescription": "str",
        "changes": "list",
    },
    "liv.protocol_check/1": {
        "schema": "str",
        "file": "str",
        "valid": "bool",
        "protocol": "liv.protocol/1",
        "warning": "str?",
        "signature": "str",
        "signer": "str?",
        "signature_text": "str",
    },
    "liv.verification/1": {
        "schema": "str",
        "status": "str",
        "ok": "bool",
        "records_checked": "int",
        "vouched": "int?",
        "before_signatures": "int?",
        "unvouched": "int?",
        "device_problems": "list",
        "plate_checked": "bool",
        "first_bad": "dict?",
        "clock_set_back_sessions": "list?",
    },
    "liv.flag/1": {
        "schema": "str",
        "session_id": "str",
        "local_date": "str",
        "slot": "int",
        "start_time": "str",
        "device_id": "str",
        "status": "str",
        "kind": "str",
        "reason": "str",
    },
    "liv.report/1": {
        "schema": "str",
        "patient_id": "str",
        "timezone": "str",
        "today": "str",
        "period_start": "str",
        "period_end": "str",
        "integrity": "liv.verification/1?",
        "last_session_date": "str?",
        "days_since_last_session": "int?",
        "adherence_target_pct": "float",
        "overall": "dict",
        "missed_days": "list",
        "weeks": "[liv.week/1]",
        "days": "[liv.day/1]",
        "flagged": "[liv.flag/1]",
        "devices": "list",
        "protocols": "[liv.protocol_period/1]",
        "set_apart": "list",
        "label": "str?",
        "demo": "bool",
    },
    "liv.status/1": {
        "schema": "str",
        "today": "str",
        "timezone": "str",
        "in_study": "bool",
        "slots": "list",
        "next_allowed": "bool",
        "next_message": "str",
        "next_allowed_local": "str?",
        "streak_days": "int",
        "demo": "bool",
        "clock_set_back_sessions": "list",
    },
    "liv.device/1": {
        "schema": "str",
        "url": "str",
        "device_id": "str",
        "firmware_version": "str",
        "protocol_version": "str",
        "sample_rate_hz": "int",
        "block_samples": "int",
        "counts_per_g": "int",
        "max_drive": "float",
        "min_freq_hz": "float",
        "max_freq_hz": "float",
        "watchdog_s": "float",
        "watchdog_ramp_s": "float",
        "stop_ramp_s": "float",
        "full_scale_slew_s": "float",
        "ceiling_g": "float",
        "capabilities": "list",
    },
    "liv.port/1": {
        "schema": "str",
        "device": "str",
        "description": "str?",
        "vid_pid": "str?",
        "serial_number": "str?",
        "manufacturer": "str?",
        "url": "str",
    },
    "liv.export_header/1": {
        "schema": "str",
        "integrity": "liv.verification/1",
    },
    "liv.export/1": {
        "schema": "str",
        "format": "str",
        "records": "int",
        "out": "str?",
        "integrity": "liv.verification/1",
    },
    "liv.clinic_problem/1": {
        "schema": "str",
        "problem_id": "str",
        "short_id": "str",
        "kind": "str",
        "patient_id": "str?",
        "log_id": "str?",
        "chain_index": "int?",
        "detail": "str",
        "found_utc": "str",
        "file_name": "str",
        "open": "bool",
        "acknowledged_utc": "str?",
        "acknowledged_by": "str?",
        "note": "str?",
        "acknowledged_as": "str?",
    },
}


class ShapeError(ValueError):
    """An object that does not have the documented shape; the message says where."""


def validate(obj: Any, kind: str | None = None, where: str = "$") -> None:
    """Check ``obj`` against its documented shape (``obj["schema"]``, or ``kind``)."""
    if not isinstance(obj, dict):
        raise ShapeError(f"{where} is not an object")
    schema = obj.get("schema")
    if kind is not None and schema != kind:
        raise ShapeError(f"{where}.schema is {schema!r}, not {kind!r}")
    fields = SHAPES.get(str(schema))
    if fields is None:
        raise ShapeError(f"{where}.schema {schema!r} is not a documented shape")
    if set(obj) != set(fields):
        missing, extra = sorted(set(fields) - set(obj)), sorted(set(obj) - set(fields))
        raise ShapeError(f"{where} ({schema}): missing {missing}, unknown {extra}")
    for name, spec in fields.items():
        _check(obj[name], spec, f"{where}.{name}")


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def _check(value: Any, spec: str, where: str) -> None:
    nullable = spec.endswith("?")
    spec = spec.rstrip("?")
    if value is None:
        if not nullable:
            raise ShapeError(f"{where} is null")
        return
    if spec.startswith("["):
        if not isinstance(value, list):
            raise ShapeError(f"{where} is not a list")
        for k, item in enumerate(value):
            validate(item, spec[1:-1], f"{where}[{k}]")
        return
    if "/" in spec:
        validate(value, spec, where)
        return
    kinds = _TYPES[spec]
    if isinstance(value, bool) and bool not in kinds:
        raise ShapeError(f"{where} is a boolean, not {spec}")
    if not isinstance(value, kinds):
        raise ShapeError(f"{where} is {type(value).__name__}, not {spec}")


# ---- builders ------------------------------------------------------------------------------


class _Started(Protocol):
    @property
    def started_local(self) -> Any: ...


def start_time(session: _Started) -> str:
    """HH:MM of a session's start in its protocol's zone (the log stores the local time)."""
    text = session.started_local
    text = text if isinstance(text, str) else text.isoformat()
    return text[11:16]


def session_shape(
    r: SessionSummary, *, counts: bool | None = None, label: str | None = None
) -> dict[str, Any]:
    """``counts``: whether it counts as therapy (default: it is therapy); ``label``: the demo's."""
    return {
        "schema": "liv.session/1",
        "session_id": r.session_id,
        "kind": r.kind.value,
        "counts_as_therapy": r.kind.value == "therapy" if counts is None else counts,
        "label": label,
        "patient_id": r.patient_id,
        "device_id": r.device_id,
        "local_date": r.local_date.isoformat(),
        "slot": r.slot,
        "status": status_word(r.status.value),
        "reason": r.reason,
        "started_local": r.started_local.isoformat(),
        "ended_local": r.ended_local.isoformat() if r.ended_local else None,
        "start_time": start_time(r),
        "minutes_prescribed": minutes(r.minutes_prescribed),
        "minutes_at_dose": minutes(r.minutes_at_dose),
        "target_g": g(r.target_g),
        "mean_error_pct": pct(r.mean_error_pct),
        "p95_abs_error_pct": pct(r.p95_abs_error_pct),
        "error_uncertainty_pct": pct(getattr(r, "error_uncertainty_pct", None)),
        "safety_events": [dict(e) for e in r.safety_events],
        "override_reason": r.override_reason,
        "resumed_from": r.resumed_from,
        "protocol_sha256": r.protocol_sha256,
    }


def session_detail_shape(
    r: SessionSummary,
    envelope: Sequence[tuple[float, float]],
    exposure: Mapping[str, float] | None,
) -> dict[str, Any]:
    return {
        "schema": "liv.session_detail/1",
        "session": session_shape(r),
        "exposure": None if exposure is None else {k: round(v, 3) for k, v in exposure.items()},
        "envelope": [[seconds(t), round(a, 3) + 0.0] for t, a in envelope],
    }


def day_shape(d: DayAdherence) -> dict[str, Any]:
    return {
        "schema": "liv.day/1",
        "date": d.day.isoformat(),
        "status": d.status,
        "counted": d.counted,
        "slots_prescribed": d.slots_prescribed,
        "slots_completed": d.slots_completed,
        "minutes_prescribed": minutes(d.minutes_prescribed),
        "minutes_at_dose": minutes(d.minutes_at_dose),
        "minutes_logged": minutes(d.minutes_logged),
        "sessions_logged": d.sessions_logged,
        "session_adherence_pct": ratio_pct(d.session_adherence),
        "dose_adherence_pct": ratio_pct(d.dose_adherence),
        "protocol_sha256": d.protocol_sha256,
    }


def protocol_shape(p: PatientProtocol) -> dict[str, Any]:
    return {
        "schema": "liv.protocol/1",
        "patient_id": p.patient_id,
        "target_g": g(p.target_g),
        "dose_tolerance_pct": ratio_pct(p.dose_tolerance),
        "frequency": p.schedule.describe(),
        "minutes_per_session": minutes(p.minutes_per_session),
        "sessions_per_day": p.sessions_per_day,
        "min_gap_hours": round(p.min_gap_hours, 2) + 0.0,
        "daily_windows": [
            {"start": f"{w.start:%H:%M}", "end": f"{w.end:%H:%M}"} for w in p.daily_windows
        ],
        "study_start": p.study_start.isoformat(),
        "study_end": p.study_end.isoformat(),
        "timezone": p.timezone,
        "sha256": p.sha256,
    }


def protocol_check_shape(file: str, p: PatientProtocol, warning: str | None) -> dict[str, Any]:
    return {
        "schema": "liv.protocol_check/1",
        "file": file,
        "valid": True,
        "protocol": protocol_shape(p),
        "warning": warning,
    }


def verification_shape(
    result: VerifyResult,
    trust: TrustResult | None = None,
    plate_checked: bool = False,
    set_back: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The hash chains' check, and with ``trust`` what the plate vouches for (liv verify);
    ``set_back``: the session ids recorded with the clock set back (liv verify only)."""
    bad = result.first_bad
    vouched_ok = trust is None or trust.ok
    status = "failed" if not result.ok else "not_vouched" if not vouched_ok else "verified"
    return {
        "schema": "liv.verification/1",
        "status": status,
        "ok": result.ok and vouched_ok,
        "records_checked": result.records_checked,
        "vouched": None if trust is None else trust.vouched,
        "before_signatures": None if trust is None else trust.legacy,
        "unvouched": None if trust is None else trust.unvouched,
        "device_problems": [] if trust is None else list(trust.problems),
        "plate_checked": plate_checked,
        "first_bad": None
        if bad is None
        else {
            "chain": bad.chain,
            "chain_index": bad.chain_index,
            "session_id": bad.session_id,
            "what": bad.what,
        },
        "clock_set_back_sessions": None if set_back is None else list(set_back),
    }


def _flag_shape(f: Flag) -> dict[str, Any]:
    return {
        "schema": "liv.flag/1",
        "session_id": f.session_id,
        "local_date": f.local_date.isoformat(),
        "slot": f.slot,
        "start_time": f.started_local[11:16],
        "device_id": f.device_id,
        "status": status_word(f.status),
        "kind": status_word(f.kind),
        "reason": f.reason,
    }


def _period_shape(p: ProtocolPeriod) -> dict[str, Any]:
    return {
        "schema": "liv.protocol_period/1",
        "sha256": p.sha256,
        "in_force_from": _day(p.in_force_from),
        "in_force_until": _day(p.in_force_until),
        "current": p.current,
        "sessions": p.sessions,
        "prescription": p.describe(),
        "changes": list(p.changes),
    }


def report_shape(
    report: AdherenceReport,
    integrity: VerifyResult | None,
    last_session: date | None,
    target: float,
    trust: TrustResult | None = None,
) -> dict[str, Any]:
    """The adherence report; ``target`` is the weekly adherence target as a ratio."""
    weeks = []
    for w in report.weeks:
        weeks.append(
            {
                "schema": "liv.week/1",
                "week": w.label,
                "first_day": w.first_day.isoformat(),
                "last_day": w.last_day.isoformat(),
                "days_counted": w.days_counted,
                "slots_prescribed": w.slots_prescribed,
                "slots_completed": w.slots_completed,
                "minutes_prescribed": minutes(w.minutes_prescribed),
                "minutes_at_dose": minutes(w.minutes_at_dose),
                "session_adherence_pct": ratio_pct(w.session_adherence),
                "dose_adherence_pct": ratio_pct(w.dose_adherence),
                "meets_target": None
                if w.session_adherence is None
                else w.session_adherence >= target - 1e-9,
            }
        )
    return {
        "schema": "liv.report/1",
        "patient_id": report.patient_id,
        "timezone": report.timezone,
        "today": report.today.isoformat(),
        "period_start": report.period_start.isoformat(),
        "period_end": report.period_end.isoformat(),
        "integrity": None if integrity is None else verification_shape(integrity, trust),
        "last_session_date": _day(last_session),
        "days_since_last_session": None
        if last_session is None
        else (report.today - last_session).days,
        "adherence_target_pct": ratio_pct(target),
        "overall": {
            "days_counted": report.days_counted,
            "full_days": report.full_days,
            "partial_days": report.partial_days,
            "missed_days": len(report.missed_days),
            "slots_prescribed": report.slots_prescribed,
            "slots_completed": report.slots_completed,
            "minutes_prescribed": minutes(report.minutes_prescribed),
            "minutes_at_dose": minutes(report.minutes_at_dose),
            "session_adherence_pct": ratio_pct(report.session_adherence),
            "dose_adherence_pct": ratio_pct(report.dose_adherence),
        },
        "missed_days": [d.isoformat() for d in report.missed_days],
        "weeks": weeks,
        "days": [day_shape(d) for d in report.days],
        "flagged": [_flag_shape(f) for f in report.flagged],
        "devices": [
            {
                "device_id": u.device_id,
                "firmware_versions": list(u.firmware_versions),
                "sessions": u.sessions,
                "first_day": u.first_day.isoformat(),
                "last_day": u.last_day.isoformat(),
                "minutes_at_dose": minutes(u.minutes_at_dose),
            }
            for u in report.devices
        ],
        "protocols": [_period_shape(p) for p in report.protocols],
        "set_apart": [s.to_dict() for s in report.set_apart],
        "label": report.label,
        "demo": report.label is not None,
    }


def port_shape(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"schema": "liv.port/1", **row}


def device_shape(url: str, info: Mapping[str, Any]) -> dict[str, Any]:
    """A plate's handshake as announced (device figures, not measurements: not rounded)."""
    return {"schema": "liv.device/1", "url": url, **info}


def export_shape(
    fmt: str,
    records: int,
    out: str | None,
    integrity: VerifyResult,
    trust: TrustResult | None = None,
) -> dict[str, Any]:
    return {
        "schema": "liv.export/1",
        "format": fmt,
        "records": records,
        "out": out,
        "integrity": verification_shape(integrity, trust),
    }


def clinic_problem_shape(p: Problem, short_id: str) -> dict[str, Any]:
    """A problem an import recorded in the clinic database, and its acknowledgement if any."""
    note = p.note
    return {
        "schema": "liv.clinic_problem/1",
        "problem_id": p.problem_id,
        "short_id": short_id,
        "kind": p.kind,
        "patient_id": p.patient_id,
        "log_id": p.log_id,
        "chain_index": p.chain_index,
        "detail": p.detail,
        "found_utc": p.found_utc,
        "file_name": p.file_name,
        "open": note is None,
        "acknowledged_utc": None if note is None else note.acknowledged_utc,
        "acknowledged_by": None if note is None else note.acknowledged_by,
        "note": None if note is None else note.note,
        "acknowledged_as": None if note is None else note.problem_id,
    }


def documented_kinds(text: str) -> dict[str, list[str]]:
    """The shapes docs/json.md documents: each ``### liv.kind/N`` heading and its field rows."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("### `liv."):
            current = found.setdefault(line[4:].strip().strip("`"), [])
        elif line.startswith("#"):
            current = None
        elif current is not None and line.startswith("| `"):
            current.append(line.split("`")[1])
    return found
