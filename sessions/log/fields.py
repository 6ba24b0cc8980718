"""Checking values written to the log, and converting records between row, raw and typed form."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import numbers
import re
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from firmware_bridge.errors import LivError
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
    LogError,
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
    append = points.append
    for i, point in enumerate(envelope[first:], start=first):
        kind = type(point)
        if (kind is tuple or kind is list) and len(point) == 2:
            t_s, g = point
            # The runner's points (two floats in range) take this path, which is _quantize's
            # for a float: abs(nan) and abs(inf) are not below MAX_NUMBER, and -0.0 becomes 0.0.
            if (
                type(t_s) is float
                and type(g) is float
                and abs(t_s) < MAX_NUMBER
                and abs(g) < MAX_NUMBER
            ):
                t_s = round(t_s, ENVELOPE_T_DECIMALS)
                g = round(g, ENVELOPE_G_DECIMALS)
                append([t_s if t_s != 0 else 0.0, g if g != 0 else 0.0])
                continue
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
            except RecursionError:  # thousands of [ or { written into the file
                raise ValueError(f"field {name} is nested too deeply to be read") from None
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
    append = points.append
    for point in envelope:
        if type(point) is list and len(point) == 2:  # as JSON gives it: checked without calls
            t_s, g = point
            kind_t, kind_g = type(t_s), type(g)
            if (kind_t is float or kind_t is int) and (kind_g is float or kind_g is int):
                append((float(t_s), float(g)))
                continue
        if not (
            isinstance(point, list)
            and len(point) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in point)
        ):
            raise ValueError("field envelope must be a list of [t_s, amplitude_g] pairs")
        append((float(point[0]), float(point[1])))
    return SessionRecord(
        **summary,
        envelope=tuple(points),
        last_checkpoint_utc=_parse_moment(raw, "last_checkpoint_utc", True),
    )


# An imported record's figures must be ones a session can have (docs/log-format.md section 8):
# no plate of this software ran before this day, and no session lasts longer than a day.
EARLIEST_DAY = date(2000, 1, 1)
# A date past this cannot be stored and judged (a day's arithmetic near year 9999 overflows);
# dates between the importer's tomorrow and this are a home clock's error (clock_problem).
LATEST_DAY = date(2999, 12, 31)
MAX_SESSION_MINUTES = 24 * 60.0
_CLOCK_SLACK = timedelta(days=1)  # a home's clock ahead of the importer's, and time zones


# An imported record's ids (docs/log-format.md section 8): what the import keeps per record
# until the file is stored, so their size is bounded. session_id and log_id are UUIDs when this
# software writes them, patient_id follows the protocol's rule, a device id is the 16 bytes
# the plate announces; protocol_sha256 is a SHA-256 in hex.
MAX_ID_CHARS = 64
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
_ID_RULE = f"1 to {MAX_ID_CHARS} letters, digits, '.', '_' or '-'"


def _id_problem(record: SessionSummary) -> str | None:
    """Why one of a record's ids cannot be one this software writes, or None."""
    for name in ("session_id", "log_id", "patient_id"):
        value = getattr(record, name)
        if not _ID_RE.fullmatch(value):
            return f"{name} {_shown(value)} is not an id ({_ID_RULE})"
    if not 0 < len(record.device_id) <= MAX_ID_CHARS:
        return f"device_id {_shown(record.device_id)} is not 1 to {MAX_ID_CHARS} characters"
    if not _HEX64.fullmatch(record.protocol_sha256):
        return f"protocol_sha256 {_shown(record.protocol_sha256)} is not a SHA-256 in hex"
    return None


def _shown(value: str) -> str:
    """A value for a message: at most 40 characters of it."""
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value):,} characters)"


def _implausible(record: SessionSummary, *, valid_prescription: bool = False) -> str | None:
    """Why an imported record cannot be a session that happened, or None.

    Its hash chain and its plate's signature say who wrote it, not that it makes sense: a
    plate countersigns any digest its host hands it (docs/trust.md). A record dated before
    any plate or beyond what can be stored, with negative minutes or more minutes at dose than
    prescribed, or in a time zone that does not exist, is refused with its file. A date in the
    future or an end before the start is the home clock's error, imported and flagged
    (:func:`clock_problem`). With ``valid_prescription`` (the clinic, which judges adherence
    against it) a therapy record's prescription must also be a valid protocol.
    """
    problem = _id_problem(record)
    if problem is not None:
        return problem
    for name in ("started_utc", "ended_utc", "started_local", "ended_local"):
        moment: datetime | None = getattr(record, name)
        if moment is None:
            continue
        text = _iso(moment)
        if moment.date() < EARLIEST_DAY:
            return f"{name} {text} is before {EARLIEST_DAY.isoformat()}"
        if moment.date() > LATEST_DAY:
            return f"{name} {text} is after {LATEST_DAY.isoformat()}"
        try:
            moment.astimezone(UTC)
        except OverflowError:
            return f"{name} {text} is out of range"
    if record.local_date < EARLIEST_DAY:
        return f"local_date {record.local_date.isoformat()} is before {EARLIEST_DAY.isoformat()}"
    if record.local_date > LATEST_DAY:
        return f"local_date {record.local_date.isoformat()} is after {LATEST_DAY.isoformat()}"
    if not 0.0 < record.minutes_prescribed <= MAX_SESSION_MINUTES:
        return (
            f"minutes_prescribed {record.minutes_prescribed:g} is outside 0-{MAX_SESSION_MINUTES:g}"
        )
    if record.minutes_at_dose < 0.0:
        return f"minutes_at_dose {record.minutes_at_dose:g} is negative"
    if record.minutes_at_dose > record.minutes_prescribed + 1e-6:
        return (
            f"minutes_at_dose {record.minutes_at_dose:g} is more than the "
            f"{record.minutes_prescribed:g} minutes prescribed"
        )
    try:
        _zone(record.timezone)
    except LogError:
        return f"timezone {record.timezone!r} is not a known time zone"
    therapy = record.kind is SessionKind.THERAPY
    problem = _protocol_problem(
        record.protocol_json, record.protocol_sha256, therapy and valid_prescription
    )
    if problem is not None:
        return problem
    if therapy:
        named = json.loads(record.protocol_json).get("patient_id")
        if isinstance(named, str) and named != record.patient_id:
            return (
                f"patient_id {record.patient_id!r} is not the patient its prescription names "
                f"({named!r})"
            )
    return None


def clock_problem(record: SessionSummary, now: datetime) -> tuple[str, bool] | None:
    """Why a record's times show the home computer's clock was wrong, and whether it is dated
    ahead of ``now`` (the importer's clock); None when they do not.

    A clock days ahead writes a session dated in the future (more than a day after ``now``); a
    clock stepped back during a session (NTP correcting a fast clock) writes an end before the
    start. Such a record is a session that happened: it is imported and flagged
    (docs/log-format.md section 8), never refused, else the log could never be exported again.
    A record dated ahead could credit a day that has not come, so the clinic never counts it.
    """
    latest = now.astimezone(UTC) + _CLOCK_SLACK
    ahead = "the home computer's clock was ahead when the session ran"
    for name in ("started_utc", "ended_utc"):
        moment: datetime | None = getattr(record, name)
        if moment is not None and moment > latest:
            return f"{name} {_iso(moment)} is in the future: {ahead}", True
    if record.local_date > latest.date():
        return f"local_date {record.local_date.isoformat()} is in the future: {ahead}", True
    if record.ended_utc is not None and record.ended_utc < record.started_utc:
        return (
            f"ended_utc {_iso(record.ended_utc)} is before started_utc "
            f"{_iso(record.started_utc)}: the home computer's clock was set back during the "
            "session",
            False,
        )
    return None


_PROTOCOL_CACHE_SIZE = 64  # a log's records share a few prescriptions
_protocol_cache: collections.OrderedDict[tuple[bytes, str, bool], str | None] = (
    collections.OrderedDict()
)
_protocol_cache_lock = threading.Lock()


def _protocol_problem(protocol_json: str, protocol_sha256: str, valid: bool) -> str | None:
    """``_judged_protocol``, remembered by the SHA-256 of the prescription's text: the cache
    holds digests, never the text, which a hostile file can make megabytes long (before, an
    lru_cache keyed by the text could hold 64 lines of 8 MB)."""
    digest = hashlib.sha256(protocol_json.encode("utf-8", errors="surrogatepass")).digest()
    key = (digest, protocol_sha256, valid)  # the arguments _judged_protocol's answer depends on
    with _protocol_cache_lock:
        if key in _protocol_cache:
            _protocol_cache.move_to_end(key)
            return _protocol_cache[key]
    found = _judged_protocol(protocol_json, protocol_sha256, valid)
    with _protocol_cache_lock:
        _protocol_cache[key] = found
        while len(_protocol_cache) > _PROTOCOL_CACHE_SIZE:
            _protocol_cache.popitem(last=False)
    return found


def _judged_protocol(protocol_json: str, protocol_sha256: str, valid: bool) -> str | None:
    """Why a record's prescription cannot be the one it ran under, or None.

    Every record's ``protocol_json`` is a JSON object. With ``valid`` (a therapy record at the
    clinic) it is a valid protocol whose SHA-256 is ``protocol_sha256``: the clinic judges
    adherence against the one and checks the other against the prescriptions it signed
    (docs/clinic.md).
    """
    try:
        protocol = json.loads(protocol_json)
    except ValueError:
        return "protocol_json is not JSON"
    except RecursionError:
        return "protocol_json is nested too deeply to be a prescription"
    if not isinstance(protocol, dict):
        return "protocol_json is not a JSON object"
    if not valid:
        return None
    try:
        text = protocol_json.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a \ud800 escape in the file
        return "protocol_json is not text: it holds a character UTF-8 cannot encode"
    if hashlib.sha256(text).hexdigest() != protocol_sha256:
        return "protocol_sha256 is not the SHA-256 of its protocol_json"
    # imported here: only a record's prescription being judged needs the protocol checks (and
    # their YAML reader), not every command that opens the log (an engineer's drive)
    from sessions.protocol import protocol_from_dict  # noqa: PLC0415

    try:
        protocol_from_dict(protocol)  # the prescription's own checks
    except (ValueError, TypeError, LivError) as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        return f"its prescription (protocol_json) is not a valid protocol: {first}"
    return None


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
