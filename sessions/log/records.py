"""Record types, status and error codes, constants and the field list of a session record."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, NamedTuple

from firmware_bridge.errors import LivError

# 2: index sessions_day_minutes; 3: error_uncertainty_pct; 4: column kind; 5: envelope_chunks;
# 6: device countersignatures (docs/log-format.md)
SCHEMA_VERSION = 7
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
LOG_FAILURE_REASON = (
    "the session log could not be written when the session ended ({error}: {sentence}); the "
    "session itself ended {status} ({outcome}); recovered {stamp}"
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


class SessionKind(enum.StrEnum):
    """What a record is; only therapy counts as therapy (docs/adherence.md).

    A record without the field (written before kinds existed) is therapy.
    """

    THERAPY = "therapy"  # a session on a plate that does not announce itself as simulated
    SIMULATED = "simulated"  # a session on the simulator (HELLO bit SIMULATED, sim:// URL)
    ENGINEERING = "engineering"  # liv run, liv device drive, liv calibrate (--engineer)


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
class SessionSummary:
    """One session (therapy, simulated or engineering) as logged, without its envelope.

    Read from the summary columns (:meth:`SessionStore.summaries`), never from the bulky
    envelope, so listing years of sessions stays fast and small. ``chain_index`` and
    ``record_hash`` are None while running.
    """

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
    error_uncertainty_pct: float | None  # standard uncertainty of one 1-s accuracy window
    safety_events: tuple[dict[str, Any], ...]
    exposure: dict[str, float] | None
    kind: SessionKind = field(default=SessionKind.THERAPY, kw_only=True)

    @property
    def finished(self) -> bool:
        return self.status is not SessionStatus.RUNNING


@dataclass(frozen=True)
class SessionRecord(SessionSummary):
    """One session as logged, with its envelope: for charts, ``liv show`` and export."""

    envelope: tuple[tuple[float, float], ...]  # (t_s, amplitude_g), about 10 points per second
    last_checkpoint_utc: datetime | None


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
    vouched: int = 0  # records whose plate countersignature was checked
    clock: int = 0  # added records whose times show the home computer's clock was wrong


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
    "kind",
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
    "error_uncertainty_pct",
    "safety_events",
    "exposure",
    "envelope",
    "last_checkpoint_utc",
)
# The hashes themselves, and the plate's countersignature of record_hash (kept beside the record)
HASH_EXCLUDED = frozenset({"prev_hash", "record_hash", "device_voucher"})
# Fields added after records were first written: absent from the raw form of a record written
# before they existed (NULL in its row), so its hash is the one it was written with, and they may
# be absent from an import. ``kind`` absent means therapy.
OPTIONAL_FIELDS = frozenset({"error_uncertainty_pct", "kind"})
# Read only where drawn or exported: the envelope, and the column stored after it (reaching it
# walks the envelope's overflow pages). A summary holds every other field.
DETAIL_FIELDS = frozenset({"envelope", "last_checkpoint_utc"})
SUMMARY_FIELDS: tuple[str, ...] = tuple(f for f in EXPORT_FIELDS if f not in DETAIL_FIELDS)
_JSON_COLUMNS = frozenset({"freqs_hz", "safety_events", "exposure", "envelope"})
