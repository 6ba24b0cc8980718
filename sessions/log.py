"""Session log: one SQLite file that records every therapy session, durable and tamper-evident.

A session row is written when the plate starts (status ``running``), checkpointed by the caller at
least every :data:`CHECKPOINT_INTERVAL_S` seconds, and closed by :meth:`SessionLog.finish_session`.
A finished record is chained: ``record_hash = sha256(prev_hash + canonical_json(record))`` in a
sequence ``chain_index`` 0, 1, 2, ... per origin log, and is never changed again. Records imported
from other devices keep their own chain. The format, the hashing rule and the durability settings
are documented for auditors in docs/log-format.md.

Errors::

    LivError                 (firmware_bridge.errors) root of every error raised on purpose
    └── LogError             anything about the session log; carries ``reason``
                             (:class:`LogErrorReason`), ``path`` and, for a refused import,
                             ``bad_record`` (:class:`BadRecord`)

Every message is one sentence a patient can read; no sqlite3 or OS exception escapes.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import errno
import hashlib
import json
import logging
import math
import numbers
import os
import re
import sqlite3
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from firmware_bridge.errors import LivError

if sys.platform != "win32":
    import fcntl

_log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64  # prev_hash of chain_index 0
CHECKPOINT_INTERVAL_S = 5.0  # the caller checkpoints a running session at least this often
NUMBER_DECIMALS = 6  # every number is stored and hashed rounded to 6 decimal places
ENVELOPE_T_DECIMALS = 3  # envelope times to 1 ms
ENVELOPE_G_DECIMALS = 5  # envelope amplitudes to 10 micro-g
MAX_SAFE_INTEGER = 2**53  # integers beyond this do not survive a JSON reader in every language
MAX_NUMBER = 1e9  # floats are refused beyond this magnitude (six decimals stay exact below it)
RECOVERY_REASON = (
    "process ended without closing the session (crash, kill or power loss); recovered {stamp}"
)
ENV_DB = "LIV_DB"

_HEX64 = re.compile(r"[0-9a-f]{64}")


class SessionStatus(enum.StrEnum):
    """Where a session stands; every status but ``running`` is final and chained."""

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED_BY_PATIENT = "stopped_by_patient"
    TRIPPED = "tripped"
    INTERRUPTED = "interrupted"


FINAL_STATUSES = frozenset(s for s in SessionStatus if s is not SessionStatus.RUNNING)


class LogErrorReason(enum.StrEnum):
    """Stable codes for :class:`LogError`, so a program can react without parsing the text."""

    LOCKED = "locked"  # another process holds the database
    CORRUPT = "corrupt"  # unreadable, damaged, or not a session log
    PERMISSION = "permission"  # the OS refused access
    READ_ONLY = "read_only"  # file, folder or medium cannot be written
    DISK_FULL = "disk_full"
    IO = "io"  # the disk reported an error
    CANNOT_OPEN = "cannot_open"  # missing folder, a folder where the file should be, ...
    NEWER_SCHEMA = "newer_schema"  # written by a newer version of this software
    INVALID = "invalid"  # a value given to the log is not acceptable
    UNKNOWN_SESSION = "unknown_session"
    FINISHED = "finished"  # the session is already finished: its record never changes
    BAD_FILE = "bad_file"  # an import file that is not a session log export
    TAMPERED = "tampered"  # an import file whose hash chain does not verify
    CONFLICT = "conflict"  # an import that contradicts records already held
    INTEGRITY = "integrity"  # the database refused a change (append-only triggers, constraints)
    CLOSED = "closed"
    OTHER = "other"


class BadRecord(NamedTuple):
    """The first record that failed verification, and what is wrong with it."""

    chain: str  # log_id of the chain
    chain_index: int | None
    session_id: str
    what: str


class LogError(LivError):
    """The session log could not do what was asked; the message says why in one sentence."""

    def __init__(
        self,
        message: str,
        *,
        reason: LogErrorReason,
        path: Path | None = None,
        bad_record: BadRecord | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path
        self.bad_record = bad_record


@dataclass(frozen=True)
class SessionRecord:
    """One therapy session as logged; ``chain_index``/``record_hash`` are None while running."""

    session_id: str
    log_id: str
    chain_index: int | None
    prev_hash: str | None
    record_hash: str | None
    patient_id: str
    device_id: str
    firmware_version: str
    protocol_sha256: str
    protocol_json: str
    started_utc: datetime
    started_local: datetime
    ended_utc: datetime | None
    ended_local: datetime | None
    timezone: str
    local_date: date
    slot: int
    status: SessionStatus
    reason: str
    override: bool
    override_reason: str | None
    resumed_from: str | None
    minutes_prescribed: float
    minutes_at_dose: float
    target_g: float
    freqs_hz: tuple[float, ...]
    mean_error_pct: float | None
    p95_abs_error_pct: float | None
    safety_events: tuple[dict[str, Any], ...]
    exposure: dict[str, float] | None
    envelope: tuple[tuple[float, float], ...]  # (t_s, amplitude_g), about 10 points per second
    last_checkpoint_utc: datetime | None

    @property
    def finished(self) -> bool:
        return self.status is not SessionStatus.RUNNING


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`SessionLog.verify`; ``heads`` maps each sound chain to its last hash."""

    ok: bool
    records_checked: int
    first_bad: BadRecord | None
    heads: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportResult:
    added: int
    skipped_duplicates: int


# --- fields --------------------------------------------------------------------------------------

# Every field of a record, in export order. The hash covers all of them except the two hashes.
EXPORT_FIELDS: tuple[str, ...] = (
    "log_id",
    "chain_index",
    "prev_hash",
    "record_hash",
    "session_id",
    "patient_id",
    "device_id",
    "firmware_version",
    "protocol_sha256",
    "protocol_json",
    "started_utc",
    "started_local",
    "ended_utc",
    "ended_local",
    "timezone",
    "local_date",
    "slot",
    "status",
    "reason",
    "override",
    "override_reason",
    "resumed_from",
    "minutes_prescribed",
    "minutes_at_dose",
    "target_g",
    "freqs_hz",
    "mean_error_pct",
    "p95_abs_error_pct",
    "safety_events",
    "exposure",
    "envelope",
    "last_checkpoint_utc",
)
HASH_EXCLUDED = frozenset({"prev_hash", "record_hash"})
_JSON_COLUMNS = frozenset({"freqs_hz", "safety_events", "exposure", "envelope"})

_SCHEMA_V1: tuple[str, ...] = (
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE chains (
        log_id TEXT PRIMARY KEY NOT NULL,
        own INTEGER NOT NULL CHECK (own IN (0, 1))
    )""",
    """CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY NOT NULL,
        log_id TEXT NOT NULL REFERENCES chains (log_id),
        chain_index INTEGER,
        prev_hash TEXT,
        record_hash TEXT,
        patient_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        firmware_version TEXT NOT NULL,
        protocol_sha256 TEXT NOT NULL,
        protocol_json TEXT NOT NULL,
        started_utc TEXT NOT NULL,
        started_local TEXT NOT NULL,
        ended_utc TEXT,
        ended_local TEXT,
        timezone TEXT NOT NULL,
        local_date TEXT NOT NULL,
        slot INTEGER NOT NULL CHECK (slot >= 1),
        status TEXT NOT NULL CHECK (status IN
            ('running', 'completed', 'stopped_by_patient', 'tripped', 'interrupted')),
        reason TEXT NOT NULL,
        override INTEGER NOT NULL CHECK (override IN (0, 1)),
        override_reason TEXT,
        resumed_from TEXT,
        minutes_prescribed REAL NOT NULL,
        minutes_at_dose REAL NOT NULL,
        target_g REAL NOT NULL,
        freqs_hz TEXT NOT NULL,
        mean_error_pct REAL,
        p95_abs_error_pct REAL,
        safety_events TEXT NOT NULL,
        exposure TEXT,
        envelope TEXT NOT NULL,
        last_checkpoint_utc TEXT,
        CHECK ((status = 'running') = (record_hash IS NULL)),
        CHECK ((record_hash IS NULL) = (chain_index IS NULL)),
        CHECK ((record_hash IS NULL) = (prev_hash IS NULL))
    )""",
    "CREATE UNIQUE INDEX sessions_chain_position ON sessions (log_id, chain_index)",
    "CREATE INDEX sessions_patient_day ON sessions (patient_id, local_date, slot)",
    "CREATE INDEX sessions_running ON sessions (status) WHERE status = 'running'",
    """CREATE TRIGGER sessions_finished_never_change BEFORE UPDATE ON sessions
        WHEN OLD.record_hash IS NOT NULL
        BEGIN SELECT RAISE(ABORT, 'a finished session record is never changed'); END""",
    """CREATE TRIGGER sessions_never_deleted BEFORE DELETE ON sessions
        BEGIN SELECT RAISE(ABORT, 'session records are never deleted'); END""",
    """CREATE TRIGGER meta_log_id_fixed BEFORE UPDATE ON meta WHEN OLD.key = 'log_id'
        BEGIN SELECT RAISE(ABORT, 'the log_id of a session log is never changed'); END""",
    """CREATE TRIGGER meta_never_deleted BEFORE DELETE ON meta
        BEGIN SELECT RAISE(ABORT, 'meta entries are never deleted'); END""",
)

# Migrations: _MIGRATIONS[v] brings a database from schema v to v + 1 inside one transaction.
_MIGRATIONS: dict[int, tuple[str, ...]] = {}


# --- canonical JSON and the hash -----------------------------------------------------------------


def number_text(value: float) -> str:
    """A number as the hash sees it: six decimals, trailing zeros and point removed, no -0."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} is too large to be logged (limit 2**53)")
        return str(value)
    return _float_text(value)


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, numbers by :func:`number_text`, UTF-8 text."""
    parts: list[str] = []
    _canon(value, parts)
    return "".join(parts)


def _canon(value: Any, parts: list[str]) -> None:
    kind = type(value)
    if kind is float:
        parts.append(_float_text(value))
    elif (kind is list or kind is tuple) and all(type(item) is float for item in value):
        parts.append("[" + ",".join(map(_float_text, value)) + "]")  # fast path: envelopes
    elif kind is list or kind is tuple:
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _canon(item, parts)
        parts.append("]")
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int | float):
        parts.append(number_text(value))
    elif isinstance(value, str):
        parts.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, list | tuple):
        _canon(list(value), parts)
    elif isinstance(value, dict):
        parts.append("{")
        for i, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise TypeError(f"object key {key!r} is not text")
            if i:
                parts.append(",")
            parts.append(json.dumps(key, ensure_ascii=False))
            parts.append(":")
            _canon(value[key], parts)
        parts.append("}")
    else:
        raise TypeError(f"{type(value).__name__} cannot be written to the log")


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """sha256 (lowercase hex) of UTF-8 ``prev_hash + canonical_json(record minus both hashes)``."""
    body = {k: v for k, v in record.items() if k not in HASH_EXCLUDED}
    return hashlib.sha256((prev_hash + canonical_json(body)).encode("utf-8")).hexdigest()


# --- paths ---------------------------------------------------------------------------------------


def default_db_path() -> Path:
    """``$LIV_DB``, else ``$XDG_DATA_HOME/liv/liv.db``, else ``~/.local/share/liv/liv.db``."""
    explicit = os.environ.get(ENV_DB, "")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return base / "liv" / "liv.db"


# --- errors --------------------------------------------------------------------------------------


def _explain_sqlite(exc: sqlite3.Error, path: Path) -> tuple[LogErrorReason, str]:
    """Map a sqlite3 error to a reason code and a sentence a patient can read."""
    name = str(getattr(exc, "sqlite_errorname", None) or "").upper()
    text = str(exc).lower()
    if isinstance(exc, sqlite3.IntegrityError) or name.startswith("SQLITE_CONSTRAINT"):
        return (
            LogErrorReason.INTEGRITY,
            f"the session log {path} refused a change that would alter its records ({exc})",
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
        return (
            LogErrorReason.LOCKED,
            f"the session log {path} is in use by another program (another liv window or "
            "process?); close it and try again",
        )
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return (
            LogErrorReason.DISK_FULL,
            f"the disk holding the session log {path} is full; free some space and try again "
            "(records already saved are kept)",
        )
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or (
        "not a database" in text or "malformed" in text
    ):
        return (
            LogErrorReason.CORRUPT,
            f"the file {path} is damaged or is not a liv session log; it was left unchanged, "
            "keep it and contact service",
        )
    if name.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
        return (
            LogErrorReason.READ_ONLY,
            f"the session log {path} can be read but not written (read-only file, folder or disk)",
        )
    if name.startswith(("SQLITE_PERM", "SQLITE_AUTH")) or "permission" in text:
        return (
            LogErrorReason.PERMISSION,
            f"permission denied for the session log {path}; it belongs to another user or is "
            "protected",
        )
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return (
            LogErrorReason.CANNOT_OPEN,
            f"the session log {path} cannot be opened; check that its folder exists and that "
            "you may write there",
        )
    if name.startswith("SQLITE_IOERR") or "i/o error" in text:
        return (
            LogErrorReason.IO,
            f"the disk holding the session log {path} reported a read or write error; check "
            "the disk or storage card",
        )
    return LogErrorReason.OTHER, f"the session log {path} could not be used ({exc})"


def _explain_os(exc: OSError, path: Path) -> tuple[LogErrorReason, str]:
    where = exc.filename or path
    if isinstance(exc, PermissionError):
        return (
            LogErrorReason.PERMISSION,
            f"permission denied for {where}; it belongs to another user or is protected",
        )
    if isinstance(exc, IsADirectoryError):
        return LogErrorReason.CANNOT_OPEN, f"{where} is a folder, not a session log file"
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return LogErrorReason.CANNOT_OPEN, f"{where} does not exist or its folder is missing"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            LogErrorReason.DISK_FULL,
            f"the disk holding {where} is full; free some space and try again",
        )
    if exc.errno == errno.EROFS:
        return LogErrorReason.READ_ONLY, f"{where} is on a read-only disk"
    return (
        LogErrorReason.IO,
        f"the disk holding {where} reported an error ({exc.strerror or exc})",
    )


@contextlib.contextmanager
def _translate(action: str, path: Path) -> Iterator[None]:
    """Turn sqlite3 and OS errors into one :class:`LogError` sentence: 'Could not <action>: ...'."""
    try:
        yield
    except sqlite3.Error as exc:
        reason, sentence = _explain_sqlite(exc, path)
        _log.warning("session log: could not %s: %r", action, exc)
        raise LogError(f"Could not {action}: {sentence}.", reason=reason, path=path) from exc
    except OSError as exc:
        reason, sentence = _explain_os(exc, path)
        _log.warning("session log: could not %s: %r", action, exc)
        raise LogError(f"Could not {action}: {sentence}.", reason=reason, path=path) from exc


def _invalid(message: str) -> LogError:
    return LogError(message, reason=LogErrorReason.INVALID)


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


def _measured_columns(
    *,
    minutes_at_dose: Any,
    envelope: Any,
    freqs_hz: Any,
    safety_events: Any,
    mean_error_pct: Any,
    p95_abs_error_pct: Any,
    exposure: Any,
) -> dict[str, Any]:
    """Check and quantize the measured fields shared by checkpoint and finish (raw form)."""
    minutes = _quantize(minutes_at_dose, "minutes_at_dose")
    if minutes < 0:
        raise _invalid(f"minutes_at_dose must not be negative, not {minutes:g}")
    if not isinstance(envelope, Sequence):
        raise _invalid("envelope must be a list of (t_s, amplitude_g) pairs")
    points: list[list[float]] = []
    for i, point in enumerate(envelope):
        if not isinstance(point, Sequence) or isinstance(point, str) or len(point) != 2:
            raise _invalid(f"envelope[{i}] must be a (t_s, amplitude_g) pair, not {point!r}")
        points.append(
            [
                _quantize(point[0], f"envelope[{i}] t_s", ENVELOPE_T_DECIMALS),
                _quantize(point[1], f"envelope[{i}] amplitude_g", ENVELOPE_G_DECIMALS),
            ]
        )
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
        "envelope": points,
        "freqs_hz": freqs,
        "safety_events": events,
        "mean_error_pct": _optional_quantize(mean_error_pct, "mean_error_pct"),
        "p95_abs_error_pct": _optional_quantize(p95_abs_error_pct, "p95_abs_error_pct"),
        "exposure": figures,
    }


# --- raw records: the exported JSON object, as stored --------------------------------------------


def _raw_from_row(row: sqlite3.Row) -> dict[str, Any]:
    """The record as its export object (JSON columns parsed); raises ValueError on bad JSON."""
    raw: dict[str, Any] = {}
    for name in EXPORT_FIELDS:
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


def _columns_from_raw(raw: Mapping[str, Any]) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for name in EXPORT_FIELDS:
        value = raw[name]
        if name in _JSON_COLUMNS and value is not None:
            value = canonical_json(value)
        elif name == "override":
            value = int(bool(value))
        columns[name] = value
    return columns


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
    started_utc = _parse_moment(raw, "started_utc", False)
    started_local = _parse_moment(raw, "started_local", False)
    assert started_utc is not None  # not nullable
    assert started_local is not None
    mean_error = _want(raw, "mean_error_pct", nums, True)
    p95_error = _want(raw, "p95_abs_error_pct", nums, True)
    return SessionRecord(
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
        safety_events=tuple(events),
        exposure=None if exposure is None else {k: float(v) for k, v in exposure.items()},
        envelope=tuple(points),
        last_checkpoint_utc=_parse_moment(raw, "last_checkpoint_utc", True),
    )


# --- chain verification (shared by verify and import) --------------------------------------------


@dataclass
class _Entry:
    """One chained record as found (in the database or an import file)."""

    session_id: str
    chain_index: Any
    raw: dict[str, Any] | None
    problem: str | None = None  # why raw could not be built
    where: str = ""  # ' (line N)' for import files


def _content_problem(raw: Mapping[str, Any]) -> str | None:
    """Why this record does not hash to its own record_hash, or None if it does."""
    body = {k: v for k, v in raw.items() if k not in HASH_EXCLUDED}
    prev_hash = raw.get("prev_hash")
    stated = raw.get("record_hash")
    if not isinstance(prev_hash, str) or not isinstance(stated, str):
        return "prev_hash or record_hash is missing"
    try:
        text = canonical_json(body)
        digest = hashlib.sha256((prev_hash + text).encode("utf-8")).hexdigest()
    except (TypeError, ValueError) as exc:
        return f"a field holds a value that cannot be hashed ({exc})"
    if json.loads(text) != body:
        return "a number is not in canonical form (six decimals): the field was edited"
    if digest != stated:
        return "the content does not match its record_hash: a field was edited"
    return None


def _index_key(entry: _Entry) -> tuple[int, int, str]:
    index = entry.chain_index
    if type(index) is int:
        return (0, index, entry.session_id)
    return (1, 0, f"{index!r}")


def _bad(chain: str, entry: _Entry, what: str) -> BadRecord:
    index = entry.chain_index if type(entry.chain_index) is int else None
    return BadRecord(chain, index, entry.session_id, what + entry.where)


def _content_bad(chain: str, ordered: list[_Entry]) -> BadRecord | None:
    """First record of a chain that does not hash to its own record_hash."""
    for entry in ordered:
        if entry.raw is None:
            return _bad(chain, entry, entry.problem or "the record cannot be read")
        problem = _content_problem(entry.raw)
        if problem is not None:
            return _bad(chain, entry, problem)
    return None


def _link_bad(chain: str, ordered: list[_Entry]) -> BadRecord | None:
    """First record of a chain out of sequence: a gap, a duplicate, or a broken prev link."""
    expected = 0
    prev_hash = GENESIS_HASH
    for entry in ordered:
        assert entry.raw is not None  # content checked first
        index = entry.chain_index
        if type(index) is not int:
            return _bad(chain, entry, f"chain_index {index!r} is not an integer")
        if index < expected:
            return _bad(chain, entry, f"chain_index {index} appears twice (inserted record)")
        if index > expected:
            missing = f"{expected}" if index == expected + 1 else f"{expected}-{index - 1}"
            return _bad(chain, entry, f"record {missing} before it is missing (deleted)")
        if entry.raw["prev_hash"] != prev_hash:
            return _bad(
                chain,
                entry,
                "prev_hash does not match the record before it (record inserted, replaced or "
                "reordered)",
            )
        prev_hash = entry.raw["record_hash"]
        expected = index + 1
    return None


def _verify_chains(
    chains: Sequence[tuple[str, Iterable[_Entry]]],
) -> tuple[BadRecord | None, dict[str, str]]:
    """Check every chain from its genesis: (first bad record, head hash of each sound chain).

    Content is checked in every chain before any link, so an edited record is named itself
    rather than the gap its edit leaves (an edited chain_index or log_id leaves one).
    """
    ordered = [(chain, sorted(entries, key=_index_key)) for chain, entries in chains]
    content = [_content_bad(chain, entries) for chain, entries in ordered]
    links = [
        _link_bad(chain, entries) if bad is None else None
        for (chain, entries), bad in zip(ordered, content, strict=True)
    ]
    heads: dict[str, str] = {}
    for (chain, entries), bad_content, bad_link in zip(ordered, content, links, strict=True):
        if bad_content is None and bad_link is None and entries:
            assert entries[-1].raw is not None
            heads[chain] = str(entries[-1].raw["record_hash"])
    first = next((b for b in content if b is not None), None)
    return first or next((b for b in links if b is not None), None), heads


# --- per-session liveness locks ------------------------------------------------------------------


class _SessionLocks:
    """One flock'd file per running session: held while its process lives, freed by the kernel.

    recover_interrupted only recovers a running row whose lock nobody holds, so a second liv
    process (a report, an import) never interrupts a session that is still running.
    """

    def __init__(self, db_path: Path) -> None:
        self.folder = db_path.with_name(db_path.name + ".running")
        self._held: dict[str, int] = {}

    def _file(self, session_id: str) -> Path:
        return self.folder / f"{session_id}.lock"

    def acquire(self, session_id: str) -> None:
        if sys.platform == "win32":  # no flock: recovery treats every running row as stale
            return
        if not self.folder.is_dir():
            with contextlib.suppress(FileExistsError):
                self.folder.mkdir(mode=0o700)
                os.chmod(self.folder, 0o700)
        fd = os.open(self._file(session_id), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._held[session_id] = fd

    def release(self, session_id: str) -> None:
        fd = self._held.pop(session_id, None)
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._file(session_id))
        os.close(fd)

    def is_live(self, session_id: str) -> bool:
        """True when a living process (this one included) holds the session's lock."""
        if session_id in self._held:
            return True
        if sys.platform == "win32":
            return False
        try:
            fd = os.open(self._file(session_id), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(OSError):
                os.unlink(self._file(session_id))
            return False
        finally:
            os.close(fd)

    def close(self) -> None:
        for session_id in list(self._held):
            self.release(session_id)


# --- the log -------------------------------------------------------------------------------------


def _tighten(path: Path) -> None:
    """Make a file we own private to the user (0600)."""
    with contextlib.suppress(FileNotFoundError):
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.chmod(path, 0o600)


class SessionLog:
    """The device's session log: one SQLite file, WAL, synchronous=FULL, private to the user."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        self._busy_timeout_s = busy_timeout_s
        self.path = Path(path)
        self.log_id = ""
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._locks = _SessionLocks(self.path)
        self._running: set[str] = set()
        try:
            with _translate("open the session log", self.path):
                self._prepare_file()
                self._conn = sqlite3.connect(
                    self.path,
                    timeout=busy_timeout_s,
                    isolation_level=None,  # transactions are explicit: BEGIN ... `with conn:`
                    check_same_thread=False,  # guarded by self._lock instead
                )
                self._conn.row_factory = sqlite3.Row
                self._configure(self._conn)
                self.log_id = self._open_schema()
                for suffix in ("-wal", "-shm"):
                    _tighten(self.path.with_name(self.path.name + suffix))
        except BaseException:
            self.close()
            raise

    # --- lifecycle ---

    def close(self) -> None:
        """Close the database; a session left running is recovered at the next start."""
        with self._lock:
            self._locks.close()
            self._running.clear()
            if self._conn is not None:
                conn, self._conn = self._conn, None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def __enter__(self) -> SessionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _prepare_file(self) -> None:
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True)
            os.chmod(folder, 0o700)
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        elif self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(self.path))
        _tighten(self.path)

    def _configure(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LogError(
                f"Could not open the session log: {self.path} cannot use write-ahead logging "
                "(is it on a network drive?); keep the log on a local disk.",
                reason=LogErrorReason.IO,
                path=self.path,
            )
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")

    def _schema_version(self, conn: sqlite3.Connection) -> int | None:
        table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if table is None:
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not str(row[0]).isdigit():
            raise self._corrupt("its schema version is missing")
        return int(row[0])

    def _corrupt(self, detail: str) -> LogError:
        return LogError(
            f"The session log {self.path} cannot be used: {detail}; it was left unchanged, keep "
            "it and contact service.",
            reason=LogErrorReason.CORRUPT,
            path=self.path,
        )

    def _open_schema(self) -> str:
        conn = self._connection()
        if self._schema_version(conn) is None:
            with self._write() as tx:
                if self._schema_version(tx) is None:  # nobody created it meanwhile
                    others = tx.execute(
                        "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                    ).fetchall()
                    if others:
                        raise self._corrupt("it holds another kind of database")
                    for statement in _SCHEMA_V1:
                        tx.execute(statement)
                    new_id = str(uuid.uuid4())
                    tx.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [("schema_version", str(SCHEMA_VERSION)), ("log_id", new_id)],
                    )
                    tx.execute("INSERT INTO chains (log_id, own) VALUES (?, 1)", (new_id,))
                    _log.info("created session log %s (log_id %s)", self.path, new_id)
        version = self._schema_version(conn)
        assert version is not None
        if version > SCHEMA_VERSION:
            raise LogError(
                f"The session log {self.path} was written by a newer version of this software "
                f"(schema {version}, this version reads up to {SCHEMA_VERSION}); update the "
                "software, the log was left unchanged.",
                reason=LogErrorReason.NEWER_SCHEMA,
                path=self.path,
            )
        if version < SCHEMA_VERSION:
            self._migrate(version)
        row = conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
        if row is None or not isinstance(row[0], str) or not row[0]:
            raise self._corrupt("its log_id is missing")
        return str(row[0])

    def _migrate(self, version: int) -> None:
        with self._write() as tx:
            current = self._schema_version(tx)
            assert current is not None
            while current < SCHEMA_VERSION:
                steps = _MIGRATIONS.get(current)
                if steps is None:
                    raise self._corrupt(f"no migration from schema {current}")
                for statement in steps:
                    tx.execute(statement)
                current += 1
                tx.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(current),)
                )
        _log.info("migrated session log %s from schema %d to %d", self.path, version, current)

    # --- transactions ---

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LogError(
                "The session log is closed.", reason=LogErrorReason.CLOSED, path=self.path
            )
        return self._conn

    @contextlib.contextmanager
    def _write(self, wait_s: float | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE, commit on success, roll back on any error.

        ``wait_s`` replaces the connection's busy timeout for this transaction only.
        """
        with self._lock:
            conn = self._connection()
            if wait_s is not None:
                conn.execute(f"PRAGMA busy_timeout = {max(0, round(wait_s * 1000))}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    with conn:
                        yield conn
                finally:
                    if conn.in_transaction:  # a failed COMMIT leaves it open
                        conn.rollback()
            finally:
                if wait_s is not None:
                    conn.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout_s * 1000)}")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for reads spanning several statements."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.rollback()

    # --- writing sessions ---

    def start_session(
        self,
        *,
        patient_id: str,
        device_id: str,
        firmware_version: str,
        protocol_sha256: str,
        protocol_json: str,
        started_utc: datetime,
        timezone: str,
        local_date: date,
        slot: int,
        minutes_prescribed: float,
        target_g: float,
        override_reason: str | None = None,
        resumed_from: str | None = None,
    ) -> str:
        """Write a ``running`` row for a session that starts now; returns its session_id."""
        started = _utc(started_utc, "started_utc")
        zone_name = _text(timezone, "timezone")
        zone = _zone(zone_name)
        digest = _text(protocol_sha256, "protocol_sha256").lower()
        if not _HEX64.fullmatch(digest):
            raise _invalid("protocol_sha256 must be 64 hexadecimal digits")
        snapshot = _text(protocol_json, "protocol_json")
        try:
            json.loads(snapshot)
        except ValueError as exc:
            raise _invalid("protocol_json must be the protocol's JSON text") from exc
        if not isinstance(local_date, date) or isinstance(local_date, datetime):
            raise _invalid(f"local_date must be a date, not {local_date!r}")
        if isinstance(slot, bool) or not isinstance(slot, int) or slot < 1:
            raise _invalid(f"slot must be a whole number from 1, not {slot!r}")
        prescribed = _quantize(minutes_prescribed, "minutes_prescribed")
        target = _quantize(target_g, "target_g")
        if prescribed <= 0 or target <= 0:
            raise _invalid("minutes_prescribed and target_g must be above zero")
        if override_reason is not None:
            override_reason = _text(override_reason, "override_reason")
        if resumed_from is not None:
            resumed_from = _text(resumed_from, "resumed_from")
        raw: dict[str, Any] = {
            "log_id": self.log_id,
            "chain_index": None,
            "prev_hash": None,
            "record_hash": None,
            "session_id": str(uuid.uuid4()),
            "patient_id": _text(patient_id, "patient_id"),
            "device_id": _text(device_id, "device_id"),
            "firmware_version": _text(firmware_version, "firmware_version"),
            "protocol_sha256": digest,
            "protocol_json": snapshot,
            "started_utc": _iso(started),
            "started_local": _iso(started.astimezone(zone)),
            "ended_utc": None,
            "ended_local": None,
            "timezone": zone_name,
            "local_date": local_date.isoformat(),
            "slot": slot,
            "status": SessionStatus.RUNNING.value,
            "reason": "",
            "override": override_reason is not None,
            "override_reason": override_reason,
            "resumed_from": resumed_from,
            "minutes_prescribed": prescribed,
            "minutes_at_dose": 0.0,
            "target_g": target,
            "freqs_hz": [],
            "mean_error_pct": None,
            "p95_abs_error_pct": None,
            "safety_events": [],
            "exposure": None,
            "envelope": [],
            "last_checkpoint_utc": None,
        }
        session_id: str = raw["session_id"]
        columns = _columns_from_raw(raw)
        with _translate("record the start of the session", self.path), self._lock:
            self._locks.acquire(session_id)
            try:
                with self._write() as tx:
                    if resumed_from is not None and not self._exists(tx, resumed_from):
                        raise LogError(
                            f"Cannot resume from session {resumed_from}: this log has no such "
                            "session.",
                            reason=LogErrorReason.UNKNOWN_SESSION,
                            path=self.path,
                        )
                    tx.execute(
                        f"INSERT INTO sessions ({', '.join(columns)}) "
                        f"VALUES ({', '.join('?' * len(columns))})",
                        list(columns.values()),
                    )
            except BaseException:
                self._locks.release(session_id)
                raise
            self._running.add(session_id)
        return session_id

    def checkpoint(
        self,
        session_id: str,
        *,
        minutes_at_dose: float,
        envelope: list[tuple[float, float]],
        freqs_hz: list[float],
        safety_events: list[dict[str, Any]],
        mean_error_pct: float | None,
        p95_abs_error_pct: float | None,
        exposure: dict[str, float] | None,
        now_utc: datetime,
        wait_s: float | None = None,
    ) -> None:
        """Save what a running session has delivered so far, in one transaction.

        ``wait_s`` bounds how long a locked database may hold this up (a caller inside a
        control loop passes a fraction of the plate's watchdog time).
        """
        measured = _measured_columns(
            minutes_at_dose=minutes_at_dose,
            envelope=envelope,
            freqs_hz=freqs_hz,
            safety_events=safety_events,
            mean_error_pct=mean_error_pct,
            p95_abs_error_pct=p95_abs_error_pct,
            exposure=exposure,
        )
        measured["last_checkpoint_utc"] = _iso(_utc(now_utc, "now_utc"))
        values = {
            k: canonical_json(v) if k in _JSON_COLUMNS and v is not None else v
            for k, v in measured.items()
        }
        with (
            _translate("save the session checkpoint", self.path),
            self._write(wait_s) as tx,
        ):
            cursor = tx.execute(
                f"UPDATE sessions SET {', '.join(f'{k} = ?' for k in values)} "
                "WHERE session_id = ? AND status = 'running' AND record_hash IS NULL",
                [*values.values(), session_id],
            )
            if cursor.rowcount != 1:
                raise self._not_running(tx, session_id)

    def finish_session(
        self,
        session_id: str,
        *,
        status: str,
        reason: str,
        ended_utc: datetime,
        minutes_at_dose: float,
        envelope: list[tuple[float, float]],
        freqs_hz: list[float],
        safety_events: list[dict[str, Any]],
        mean_error_pct: float | None,
        p95_abs_error_pct: float | None,
        exposure: dict[str, float] | None,
    ) -> SessionRecord:
        """Close a running session with its final figures and chain it; it never changes again."""
        try:
            final = SessionStatus(status)
        except ValueError:
            final = SessionStatus.RUNNING
        if final not in FINAL_STATUSES:
            raise _invalid(
                f"status must be one of {', '.join(sorted(FINAL_STATUSES))}, not {status!r}"
            )
        reason_text = _text(reason, "reason", allow_empty=final is SessionStatus.COMPLETED)
        ended = _utc(ended_utc, "ended_utc")
        changes = _measured_columns(
            minutes_at_dose=minutes_at_dose,
            envelope=envelope,
            freqs_hz=freqs_hz,
            safety_events=safety_events,
            mean_error_pct=mean_error_pct,
            p95_abs_error_pct=p95_abs_error_pct,
            exposure=exposure,
        )
        changes.update(
            status=final.value,
            reason=reason_text,
            ended_utc=_iso(ended),
            last_checkpoint_utc=_iso(ended),
        )
        with _translate("save the end of the session", self.path), self._lock:
            with self._write() as tx:
                raw = self._chain(tx, session_id, changes)
            self._running.discard(session_id)
            self._locks.release(session_id)
        return self._typed(raw)

    def recover_interrupted(self, now_utc: datetime) -> list[SessionRecord]:
        """Close every running session whose process has ended as ``interrupted`` and chain it.

        Keeps the minutes at dose of its last checkpoint; ``ended_utc`` is that checkpoint (or
        the start if none), the last moment the session is known to have been running. Sessions
        still held by a living process (see :class:`_SessionLocks`) are left alone.
        """
        stamp = _iso(_utc(now_utc, "now_utc"))
        recovered: list[dict[str, Any]] = []
        with _translate("recover interrupted sessions", self.path), self._write() as tx:
            rows = tx.execute(
                "SELECT session_id, started_utc, last_checkpoint_utc FROM sessions "
                "WHERE status = 'running' ORDER BY started_utc, session_id"
            ).fetchall()
            for row in rows:
                session_id = row["session_id"]
                if session_id in self._running or self._locks.is_live(session_id):
                    _log.info("session %s is still running in another process", session_id)
                    continue
                ended = row["last_checkpoint_utc"] or row["started_utc"]
                changes = {
                    "status": SessionStatus.INTERRUPTED.value,
                    "reason": RECOVERY_REASON.format(stamp=stamp),
                    "ended_utc": ended,
                }
                recovered.append(self._chain(tx, session_id, changes))
                _log.warning("recovered interrupted session %s", session_id)
        return [self._typed(raw) for raw in recovered]

    def _exists(self, conn: sqlite3.Connection, session_id: str) -> bool:
        row = conn.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,))
        return row.fetchone() is not None

    def _not_running(self, conn: sqlite3.Connection, session_id: str) -> LogError:
        row = conn.execute(
            "SELECT status FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
        if row is None:
            return LogError(
                f"There is no session {session_id} in this log.",
                reason=LogErrorReason.UNKNOWN_SESSION,
                path=self.path,
            )
        return LogError(
            f"Session {session_id} is already finished ({row['status']}); a finished record "
            "is never changed.",
            reason=LogErrorReason.FINISHED,
            path=self.path,
        )

    def _chain(
        self, tx: sqlite3.Connection, session_id: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Finish a running row with ``changes`` and append it to this log's chain."""
        row = tx.execute("SELECT * FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        if row is None or row["status"] != SessionStatus.RUNNING or row["record_hash"]:
            raise self._not_running(tx, session_id)
        try:
            raw = _raw_from_row(row)
        except ValueError as exc:
            raise self._corrupt(f"session {session_id} cannot be read ({exc})") from exc
        raw.update(changes)
        if raw["ended_utc"] is not None:
            ended = datetime.fromisoformat(raw["ended_utc"])
            raw["ended_local"] = _iso(ended.astimezone(_zone(raw["timezone"])))
        head = tx.execute(
            "SELECT chain_index, record_hash FROM sessions WHERE log_id = ? "
            "AND record_hash IS NOT NULL ORDER BY chain_index DESC LIMIT 1",
            (self.log_id,),
        ).fetchone()
        raw["chain_index"] = 0 if head is None else int(head["chain_index"]) + 1
        raw["prev_hash"] = GENESIS_HASH if head is None else head["record_hash"]
        raw["record_hash"] = record_hash(raw["prev_hash"], raw)
        columns = _columns_from_raw(raw)
        cursor = tx.execute(
            f"UPDATE sessions SET {', '.join(f'{k} = ?' for k in columns)} "
            "WHERE session_id = ? AND status = 'running' AND record_hash IS NULL",
            [*columns.values(), session_id],
        )
        if cursor.rowcount != 1:
            raise self._not_running(tx, session_id)
        self._check_stored(tx, session_id)
        return raw

    def _check_stored(self, tx: sqlite3.Connection, session_id: str) -> None:
        """Read the row back and re-hash it: what is stored must verify (else roll back)."""
        row = tx.execute("SELECT * FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        problem = _content_problem(_raw_from_row(row))
        if problem is not None:
            raise LogError(
                f"The session log {self.path} did not store session {session_id} faithfully "
                f"({problem}); nothing was written.",
                reason=LogErrorReason.INTEGRITY,
                path=self.path,
            )

    # --- reading ---

    def _typed(self, raw: Mapping[str, Any]) -> SessionRecord:
        try:
            return _record_from_raw(raw)
        except ValueError as exc:
            raise self._corrupt(
                f"session {raw.get('session_id')} cannot be read ({exc}); run verify"
            ) from exc

    def _typed_row(self, row: sqlite3.Row) -> SessionRecord:
        try:
            raw = _raw_from_row(row)
        except ValueError as exc:
            raise self._corrupt(
                f"session {row['session_id']} cannot be read ({exc}); run verify"
            ) from exc
        return self._typed(raw)

    def get(self, session_id: str) -> SessionRecord:
        """The record of one session (running or finished)."""
        with _translate("read the session log", self.path), self._lock:
            row = (
                self._connection()
                .execute("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
                .fetchone()
            )
        if row is None:
            raise LogError(
                f"There is no session {session_id} in this log.",
                reason=LogErrorReason.UNKNOWN_SESSION,
                path=self.path,
            )
        return self._typed_row(row)

    def sessions(
        self,
        patient_id: str | None = None,
        since: date | None = None,
        until: date | None = None,
    ) -> list[SessionRecord]:
        """Sessions (all chains, running included) by local date and slot; bounds inclusive."""
        where: list[str] = []
        params: list[str] = []
        if patient_id is not None:
            where.append("patient_id = ?")
            params.append(patient_id)
        for bound, op, name in ((since, ">=", "since"), (until, "<=", "until")):
            if bound is None:
                continue
            if not isinstance(bound, date) or isinstance(bound, datetime):
                raise _invalid(f"{name} must be a date, not {bound!r}")
            where.append(f"local_date {op} ?")
            params.append(bound.isoformat())
        sql = "SELECT * FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY local_date, slot, started_utc, session_id"
        with _translate("read the session log", self.path), self._lock:
            rows = self._connection().execute(sql, params).fetchall()
        return [self._typed_row(row) for row in rows]

    def latest_for_slot(self, patient_id: str, local_date: date, slot: int) -> SessionRecord | None:
        """The most recently started session of one patient's slot on one local date, if any."""
        if not isinstance(local_date, date) or isinstance(local_date, datetime):
            raise _invalid(f"local_date must be a date, not {local_date!r}")
        with _translate("read the session log", self.path), self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT * FROM sessions WHERE patient_id = ? AND local_date = ? AND slot = ?",
                    (patient_id, local_date.isoformat(), slot),
                )
                .fetchall()
            )
        records = [self._typed_row(row) for row in rows]
        if not records:
            return None
        return max(records, key=lambda r: (r.started_utc, r.session_id))

    # --- verification ---

    def _chain_order(self, conn: sqlite3.Connection) -> list[str]:
        logs = [
            str(r[0])
            for r in conn.execute(
                "SELECT DISTINCT log_id FROM sessions WHERE record_hash IS NOT NULL "
                "OR chain_index IS NOT NULL"
            )
        ]
        return sorted(logs, key=lambda log_id: (log_id != self.log_id, log_id))

    def verify(self) -> VerifyResult:
        """Recompute every chain (own and imported), each from its genesis; name the first bad.

        Does not rely on the append-only triggers: whoever holds the file can drop them.
        """
        chains: dict[str, list[_Entry]] = {}
        unchained_bad: BadRecord | None = None
        with _translate("verify the session log", self.path), self._read() as conn:
            for row in conn.execute("SELECT * FROM sessions ORDER BY log_id, chain_index"):
                session_id = str(row["session_id"])
                chained = row["record_hash"] is not None or row["chain_index"] is not None
                if not chained:
                    if unchained_bad is None and row["status"] != SessionStatus.RUNNING:
                        unchained_bad = BadRecord(
                            str(row["log_id"]),
                            None,
                            session_id,
                            f"finished record (status {row['status']}) is not chained",
                        )
                    continue
                try:
                    entry = _Entry(session_id, row["chain_index"], _raw_from_row(row))
                except ValueError as exc:
                    entry = _Entry(session_id, row["chain_index"], None, str(exc))
                chains.setdefault(str(row["log_id"]), []).append(entry)
            order = self._chain_order(conn)
        checked = sum(len(entries) for entries in chains.values())
        first_bad, heads = _verify_chains([(log_id, chains[log_id]) for log_id in order])
        first_bad = first_bad or unchained_bad
        return VerifyResult(first_bad is None, checked, first_bad, heads)

    # --- export ---

    def _export_rows(self, conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
        for log_id in self._chain_order(conn):
            rows = conn.execute(
                "SELECT * FROM sessions WHERE log_id = ? AND record_hash IS NOT NULL "
                "ORDER BY chain_index",
                (log_id,),
            )
            for row in rows:
                try:
                    yield _raw_from_row(row)
                except ValueError as exc:
                    raise self._corrupt(
                        f"session {row['session_id']} cannot be read ({exc}); run verify"
                    ) from exc

    @contextlib.contextmanager
    def _output(self, out: TextIO | Path, newline: str) -> Iterator[TextIO]:
        """A stream as given, or a private file written whole or not at all."""
        if not isinstance(out, Path):
            yield out
            return
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, "w", encoding="utf-8", newline=newline) as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def export_jsonl(self, out: TextIO | Path) -> int:
        """Every finished record, one canonical JSON object per line; returns the count."""
        count = 0
        with (
            _translate("export the session log", self.path),
            self._read() as conn,
            self._output(out, "\n") as stream,
        ):
            for raw in self._export_rows(conn):
                stream.write(canonical_json(raw) + "\n")
                count += 1
        return count

    def export_csv(self, out: TextIO | Path) -> int:
        """Every finished record as a flat CSV row (lists/dicts as JSON text); returns the count."""
        count = 0
        with (
            _translate("export the session log", self.path),
            self._read() as conn,
            self._output(out, "") as stream,
        ):
            writer = csv.writer(stream)
            writer.writerow(EXPORT_FIELDS)
            for raw in self._export_rows(conn):
                writer.writerow([_csv_cell(raw[name]) for name in EXPORT_FIELDS])
                count += 1
        return count

    # --- import ---

    def import_jsonl(self, source: TextIO | Path) -> ImportResult:
        """Merge an export (any devices, any patients): all of it, or nothing.

        Every incoming chain is verified completely before anything is written; records
        already held (same log_id, chain_index and record_hash) are skipped; a record that
        contradicts one already held is refused with the whole file.
        """
        with _translate("read the import file", self.path):
            if isinstance(source, Path):
                with open(source, encoding="utf-8-sig") as stream:
                    chains, in_file_duplicates = _read_import(stream)
            else:
                chains, in_file_duplicates = _read_import(source)
        bad, _ = _verify_chains([(log_id, chains[log_id].values()) for log_id in sorted(chains)])
        if bad is not None:
            raise LogError(
                f"Refused the whole import file: record {bad.chain_index} of log {bad.chain} "
                f"(session {bad.session_id}) does not verify: {bad.what}; nothing was imported.",
                reason=LogErrorReason.TAMPERED,
                path=self.path,
                bad_record=bad,
            )
        added = 0
        skipped = in_file_duplicates
        with _translate("import into the session log", self.path), self._write() as tx:
            for log_id in sorted(chains):
                entries = sorted(chains[log_id].values(), key=_index_key)
                for entry in entries:
                    assert entry.raw is not None  # verified above
                    if self._merge(tx, entry):
                        added += 1
                    else:
                        skipped += 1
        _log.info("imported %d records, %d already present", added, skipped)
        return ImportResult(added, skipped)

    def _merge(self, tx: sqlite3.Connection, entry: _Entry) -> bool:
        """Insert one verified record; False if already held; LogError on a conflict."""
        raw = entry.raw
        assert raw is not None
        log_id = raw["log_id"]
        held = tx.execute(
            "SELECT session_id, record_hash FROM sessions WHERE log_id = ? AND chain_index = ?",
            (log_id, raw["chain_index"]),
        ).fetchone()
        if held is not None:
            if held["record_hash"] == raw["record_hash"]:
                return False
            raise self._conflict(
                entry,
                f"this log already holds a different record {raw['chain_index']} of log "
                f"{log_id} (session {held['session_id']})",
            )
        other = tx.execute(
            "SELECT log_id, chain_index, status FROM sessions WHERE session_id = ?",
            (raw["session_id"],),
        ).fetchone()
        if other is not None:
            raise self._conflict(
                entry,
                f"this log already holds session {raw['session_id']} as a different record "
                f"(log {other['log_id']}, record {other['chain_index']}, {other['status']})",
            )
        tx.execute("INSERT OR IGNORE INTO chains (log_id, own) VALUES (?, 0)", (log_id,))
        columns = _columns_from_raw(raw)
        tx.execute(
            f"INSERT INTO sessions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            list(columns.values()),
        )
        self._check_stored(tx, raw["session_id"])
        return True

    def _conflict(self, entry: _Entry, detail: str) -> LogError:
        raw = entry.raw or {}
        bad = BadRecord(
            str(raw.get("log_id")), raw.get("chain_index"), entry.session_id, detail + entry.where
        )
        return LogError(
            f"Refused the whole import file: record {bad.chain_index} of log {bad.chain} "
            f"(session {bad.session_id}) conflicts: {bad.what}; nothing was imported.",
            reason=LogErrorReason.CONFLICT,
            path=self.path,
            bad_record=bad,
        )


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number_text(value)
    if isinstance(value, str):
        return value
    return canonical_json(value)


def _bad_file(line_no: int, detail: str) -> LogError:
    return LogError(
        f"Refused the whole import file: line {line_no} {detail}; nothing was imported.",
        reason=LogErrorReason.BAD_FILE,
    )


def _read_import(lines: Iterable[str]) -> tuple[dict[str, dict[int, _Entry]], int]:
    """Parse and check the shape of every line; group by chain. Returns (chains, duplicates)."""
    chains: dict[str, dict[int, _Entry]] = {}
    owners: dict[str, tuple[str, int]] = {}
    duplicates = 0
    expected = set(EXPORT_FIELDS)
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise _bad_file(line_no, "is not valid JSON") from None
        if not isinstance(obj, dict):
            raise _bad_file(line_no, "is not a JSON object")
        missing = expected - set(obj)
        extra = set(obj) - expected
        if missing:
            raise _bad_file(line_no, f"lacks the field(s) {', '.join(sorted(missing))}")
        if extra:
            raise _bad_file(line_no, f"has unknown field(s) {', '.join(sorted(extra))}")
        try:
            record = _record_from_raw(obj)
        except ValueError as exc:
            raise _bad_file(line_no, f"is not a session record: {exc}") from None
        if not record.finished or record.chain_index is None:
            raise _bad_file(line_no, "is a running session (only finished records are imported)")
        entry = _Entry(record.session_id, record.chain_index, obj, where=f" (line {line_no})")
        chain = chains.setdefault(record.log_id, {})
        same = chain.get(record.chain_index)
        if same is not None:
            assert same.raw is not None
            if same.raw["record_hash"] == obj["record_hash"]:
                duplicates += 1
                continue
            bad = BadRecord(
                record.log_id,
                record.chain_index,
                record.session_id,
                f"two different records claim this place (line {line_no})",
            )
            raise LogError(
                f"Refused the whole import file: record {record.chain_index} of log "
                f"{record.log_id} appears twice with different content (line {line_no}); "
                "nothing was imported.",
                reason=LogErrorReason.TAMPERED,
                bad_record=bad,
            )
        place = (record.log_id, record.chain_index)
        if owners.setdefault(record.session_id, place) != place:
            raise _bad_file(line_no, f"repeats session {record.session_id} in another record")
        chain[record.chain_index] = entry
    return chains, duplicates
