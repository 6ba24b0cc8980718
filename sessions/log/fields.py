"""Checking values written to the log, and converting records between row, raw and typed form."""

from __future__ import annotations

import json
import math
import numbers
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sessions.log.canonical import canonical_json
from sessions.log.errors import _invalid
from sessions.log.records import (
    _HEX64,
    _JSON_COLUMNS,
    ENVELOPE_G_DECIMALS,
    ENVELOPE_T_DECIMALS,
    EXPORT_FIELDS,
    MAX_NUMBER,
    MAX_SAFE_INTEGER,
    NUMBER_DECIMALS,
    OPTIONAL_FIELDS,
    SessionKind,
    SessionRecord,
    SessionStatus,
    SessionSummary,
)

# --- input checks (writes) -----------------------------------------------------------------------


def _quantize(value: Any, name: str, decimals: int = NUMBER_DECIMALS) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _invalid(f"{name} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise _invalid(f"{name} must be a finite number, not {number!r}")
    if abs(number) >= MAX_NUMBER:
        raise _invalid(f"{name} {number:g} is out of range for the log (limit 1e9)")
    quantized = round(number, decimals)
    return 0.0 if quantized == 0 else quantized


def _optional_quantize(value: Any, name: str) -> float | None:
    return None if value is None else _quantize(value, name)


def _text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{name} must be text, not {value!r}")
    if not allow_empty and not value.strip():
        raise _invalid(f"{name} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _invalid(f"{name} is not valid Unicode text") from exc
    return str.__str__(value)


def _utc(value: Any, name: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise _invalid(f"{name} must be a datetime with a time zone (UTC), not {value!r}")
    return value.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise _invalid(f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)") from exc


def _free_json(value: Any, where: str) -> Any:
    """A JSON-able copy of free-form data (safety events); non-finite floats become text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _text(value, where, allow_empty=True)
    if isinstance(value, numbers.Integral):
        number = int(value)
        if abs(number) > MAX_SAFE_INTEGER:
            raise _invalid(f"{where}: integer {number} is too large for the log (limit 2**53)")
        return number
    if isinstance(value, numbers.Real):
        real = float(value)
        if math.isnan(real):
            return "NaN"
        if math.isinf(real):
            return "Infinity" if real > 0 else "-Infinity"
        return _quantize(real, where)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _invalid(f"{where}: key {key!r} is not text")
            out[_text(key, where, allow_empty=True)] = _free_json(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_free_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise _invalid(f"{where}: {type(value).__name__} cannot be written to the log")


def _envelope_points(envelope: Any, first: int = 0) -> list[list[float]]:
    """Check and quantize ``envelope[first:]`` (pairs named by their index in the envelope).

    A checkpoint passes the number of points already stored as ``first``: only the new points
    are read, so its work does not grow with the session.
    """
    if not isinstance(envelope, Sequence) or isinstance(envelope, str):
        raise _invalid("envelope must be a list of (t_s, amplitude_g) pairs")
    points: list[list[float]] = []
    for i, point in enumerate(envelope[first:], start=first):
        if not isinstance(point, Sequence) or isinstance(point, str) or len(point) != 2:
            raise _invalid(f"envelope[{i}] must be a (t_s, amplitude_g) pair, not {point!r}")
        points.append(
            [
                _quantize(point[0], f"envelope[{i}] t_s", ENVELOPE_T_DECIMALS),
                _quantize(point[1], f"envelope[{i}] amplitude_g", ENVELOPE_G_DECIMALS),
            ]
        )
    return points


def _measured_figures(
    *,
    minutes_at_dose: Any,
    freqs_hz: Any,
    safety_events: Any,
    mean_error_pct: Any,
    p95_abs_error_pct: Any,
    exposure: Any,
    error_uncertainty_pct: Any = None,
) -> dict[str, Any]:
    """Check and quantize the measured fields but the envelope (raw form): all small."""
    minutes = _quantize(minutes_at_dose, "minutes_at_dose")
    if minutes < 0:
        raise _invalid(f"minutes_at_dose must not be negative, not {minutes:g}")
    if not isinstance(freqs_hz, Sequence) or isinstance(freqs_hz, str):
        raise _invalid("freqs_hz must be a list of frequencies in Hz")
    freqs = [_quantize(f, f"freqs_hz[{i}]") for i, f in enumerate(freqs_hz)]
    if not isinstance(safety_events, Sequence) or isinstance(safety_events, str):
        raise _invalid("safety_events must be a list of dicts")
    events: list[Any] = []
    for i, event in enumerate(safety_events):
        if not isinstance(event, Mapping):
            raise _invalid(f"safety_events[{i}] must be a dict, not {event!r}")
        if not isinstance(event.get("reason"), str) or "t_s" not in event:
            raise _invalid(f"safety_events[{i}] needs at least 'reason' (text) and 't_s'")
        _quantize(event["t_s"], f"safety_events[{i}].t_s")
        events.append(_free_json(event, f"safety_events[{i}]"))
    figures: dict[str, float] | None = None
    if exposure is not None:
        if not isinstance(exposure, Mapping):
            raise _invalid("exposure must be a dict of figures or None")
        missing = {"a_w_m_s2", "a8_m_s2", "vdv_m_s1_75"} - set(exposure)
        if missing:
            raise _invalid(f"exposure lacks {', '.join(sorted(missing))}")
        figures = {
            _text(k, "exposure key"): _quantize(v, f"exposure.{k}") for k, v in exposure.items()
        }
    return {
        "minutes_at_dose": minutes,
        "freqs_hz": freqs,
        "safety_events": events,
        "mean_error_pct": _optional_quantize(mean_error_pct, "mean_error_pct"),
        "p95_abs_error_pct": _optional_quantize(p95_abs_error_pct, "p95_abs_error_pct"),
        "error_uncertainty_pct": _optional_quantize(error_uncertainty_pct, "error_uncertainty_pct"),
        "exposure": figures,
    }


def _measured_columns(*, envelope: Any, **figures: Any) -> dict[str, Any]:
    """Check and quantize every measured field of a finished record, envelope included."""
    measured = _measured_figures(**figures)
    points = _envelope_points(envelope)
    return {
        "minutes_at_dose": measured.pop("minutes_at_dose"),
        "envelope": points,
        **measured,
    }


# --- raw records: the exported JSON object, as stored --------------------------------------------


def _raw_from_row(
    row: sqlite3.Row | Mapping[str, Any], names: Sequence[str] = EXPORT_FIELDS
) -> dict[str, Any]:
    """The record as its export object (JSON columns parsed); raises ValueError on bad JSON.

    ``names`` picks the fields (default: all); a summary row is read with ``SUMMARY_FIELDS``.
    An optional field (``OPTIONAL_FIELDS``) that is null is left out, as in records written
    before it existed: the export object is exactly what the hash covers, bar the two hashes.
    """
    raw: dict[str, Any] = {}
    for name in names:
        # null, or a read-only log from before the field's column existed (sqlite3.Row's
        # "in" looks at values, hence keys())
        if name in OPTIONAL_FIELDS and (name not in row.keys() or row[name] is None):  # noqa: SIM118
            continue
        value = row[name]
        if name in _JSON_COLUMNS and value is not None:
            if not isinstance(value, str):
                raise ValueError(f"field {name} does not hold JSON text")
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"field {name} is not valid JSON") from exc
        elif name == "override" and type(value) is int and value in (0, 1):
            value = bool(value)
        raw[name] = value
    return raw


def _columns(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Raw fields as the sessions table stores them: JSON columns as canonical text."""
    columns = dict(raw)
    for name, value in raw.items():
        if name in _JSON_COLUMNS and value is not None:
            columns[name] = canonical_json(value)
        elif name == "override":
            columns[name] = int(bool(value))
    return columns


def _columns_from_raw(raw: Mapping[str, Any]) -> dict[str, Any]:
    return _columns({name: raw.get(name) for name in EXPORT_FIELDS})


def _want(raw: Mapping[str, Any], name: str, kinds: tuple[type, ...], nullable: bool) -> Any:
    value = raw[name]
    if value is None:
        if nullable:
            return None
        raise ValueError(f"field {name} is missing (null)")
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"field {name} must not be true/false")
    if not isinstance(value, kinds):
        raise ValueError(f"field {name} has the wrong type ({type(value).__name__})")
    return value


def _parse_moment(raw: Mapping[str, Any], name: str, nullable: bool) -> datetime | None:
    text = _want(raw, name, (str,), nullable)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"field {name} is not an ISO 8601 time: {text!r}") from exc
    if moment.utcoffset() is None:
        raise ValueError(f"field {name} has no UTC offset: {text!r}")
    return moment


def _record_from_raw(raw: Mapping[str, Any]) -> SessionRecord:
    """Typed record from its raw form; raises ValueError naming the first unusable field."""
    summary = _summary_fields(raw)
    envelope = _want(raw, "envelope", (list,), False)
    points: list[tuple[float, float]] = []
    for point in envelope:
        if not (
            isinstance(point, list)
            and len(point) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in point)
        ):
            raise ValueError("field envelope must be a list of [t_s, amplitude_g] pairs")
        points.append((float(point[0]), float(point[1])))
    return SessionRecord(
        **summary,
        envelope=tuple(points),
        last_checkpoint_utc=_parse_moment(raw, "last_checkpoint_utc", True),
    )


def _summary_from_raw(raw: Mapping[str, Any]) -> SessionSummary:
    """Light typed record (no envelope) from a raw form without one; ValueError as above."""
    return SessionSummary(**_summary_fields(raw))


def _summary_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Every typed field of a record but the envelope, checked as :func:`_record_from_raw`."""
    texts = (str,)
    nums = (int, float)
    status_text = _want(raw, "status", texts, False)
    try:
        status = SessionStatus(status_text)
    except ValueError as exc:
        raise ValueError(f"field status has an unknown value {status_text!r}") from exc
    running = status is SessionStatus.RUNNING
    for name in ("prev_hash", "record_hash"):
        digest = _want(raw, name, texts, running)
        if digest is not None and not _HEX64.fullmatch(digest):
            raise ValueError(f"field {name} is not 64 lowercase hex digits")
    chain_index = _want(raw, "chain_index", (int,), running)
    if chain_index is not None and chain_index < 0:
        raise ValueError("field chain_index is negative")
    slot = _want(raw, "slot", (int,), False)
    if slot < 1:
        raise ValueError("field slot is below 1")
    local_text = _want(raw, "local_date", texts, False)
    try:
        local_day = date.fromisoformat(local_text)
    except ValueError as exc:
        raise ValueError(f"field local_date is not a YYYY-MM-DD date: {local_text!r}") from exc
    freqs = _want(raw, "freqs_hz", (list,), False)
    if not all(isinstance(f, int | float) and not isinstance(f, bool) for f in freqs):
        raise ValueError("field freqs_hz must be a list of numbers")
    events = _want(raw, "safety_events", (list,), False)
    if not all(isinstance(e, dict) for e in events):
        raise ValueError("field safety_events must be a list of objects")
    exposure = _want(raw, "exposure", (dict,), True)
    if exposure is not None and not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in exposure.values()
    ):
        raise ValueError("field exposure must map names to numbers")
    started_utc = _parse_moment(raw, "started_utc", False)
    started_local = _parse_moment(raw, "started_local", False)
    assert started_utc is not None  # not nullable
    assert started_local is not None
    kind = SessionKind.THERAPY  # a record from before kinds existed
    if "kind" in raw:
        kind_text = _want(raw, "kind", texts, False)
        try:
            kind = SessionKind(kind_text)
        except ValueError as exc:
            raise ValueError(f"field kind has an unknown value {kind_text!r}") from exc
    mean_error = _want(raw, "mean_error_pct", nums, True)
    p95_error = _want(raw, "p95_abs_error_pct", nums, True)
    # optional (OPTIONAL_FIELDS): absent from records written before it existed
    uncertainty = (
        _want(raw, "error_uncertainty_pct", nums, True) if "error_uncertainty_pct" in raw else None
    )
    return dict(  # noqa: C408 (keywords, like the dataclass they fill)
        session_id=_want(raw, "session_id", texts, False),
        log_id=_want(raw, "log_id", texts, False),
        chain_index=chain_index,
        prev_hash=raw["prev_hash"],
        record_hash=raw["record_hash"],
        patient_id=_want(raw, "patient_id", texts, False),
        device_id=_want(raw, "device_id", texts, False),
        firmware_version=_want(raw, "firmware_version", texts, False),
        protocol_sha256=_want(raw, "protocol_sha256", texts, False),
        protocol_json=_want(raw, "protocol_json", texts, False),
        started_utc=started_utc,
        started_local=started_local,
        ended_utc=_parse_moment(raw, "ended_utc", running),
        ended_local=_parse_moment(raw, "ended_local", running),
        timezone=_want(raw, "timezone", texts, False),
        local_date=local_day,
        slot=slot,
        status=status,
        reason=_want(raw, "reason", texts, False),
        override=_want(raw, "override", (bool,), False),
        override_reason=_want(raw, "override_reason", texts, True),
        resumed_from=_want(raw, "resumed_from", texts, True),
        minutes_prescribed=float(_want(raw, "minutes_prescribed", nums, False)),
        minutes_at_dose=float(_want(raw, "minutes_at_dose", nums, False)),
        target_g=float(_want(raw, "target_g", nums, False)),
        freqs_hz=tuple(float(f) for f in freqs),
        mean_error_pct=None if mean_error is None else float(mean_error),
        p95_abs_error_pct=None if p95_error is None else float(p95_error),
        error_uncertainty_pct=None if uncertainty is None else float(uncertainty),
        safety_events=tuple(events),
        exposure=None if exposure is None else {k: float(v) for k, v in exposure.items()},
        kind=kind,
    )
