"""SessionLog storage: opening, schema, transactions, writing, recovery, reading, verify."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from firmware_bridge.userdirs import user_data_dir
from sessions.log.canonical import canonical_json, record_hash
from sessions.log.chain import (
    _content_bad,
    _content_problem,
    _Entry,
    _fast_content_ok,
    _index_key,
    _link_bad,
)
from sessions.log.clockorder import (
    SET_BACK_SLACK,
    SetBack,
    TimedRecord,
    dated_ahead,
    set_back_records,
)
from sessions.log.errors import _invalid, _translate
from sessions.log.fields import (
    _columns,
    _columns_from_raw,
    _envelope_points,
    _iso,
    _measured_columns,
    _measured_figures,
    _quantize,
    _raw_from_row,
    _record_from_raw,
    _summary_from_raw,
    _text,
    _utc,
    _zone,
)
from sessions.log.locks import _SessionLocks
from sessions.log.records import (
    _HEX64,
    ENV_DB,
    EXPORT_FIELDS,
    FINAL_STATUSES,
    GENESIS_HASH,
    LOG_FAILURE_REASON,
    RECOVERY_REASON,
    SCHEMA_VERSION,
    SUMMARY_FIELDS,
    BadRecord,
    LogError,
    LogErrorReason,
    SessionKind,
    SessionRecord,
    SessionStatus,
    SessionSummary,
    VerifyResult,
)
from sessions.log.vouch import (
    AWAITING_REASON,
    LEGACY_TEXT,
    Pin,
    PlateState,
    TrustResult,
    Voucher,
    check_plate,
    check_vouchers,
)

_log = logging.getLogger(__name__)

# A final write that failed for one of these leaves a note for recovery (docs/log-format.md).
_STORAGE_FAILURES = frozenset(
    {
        LogErrorReason.LOCKED,
        LogErrorReason.DISK_FULL,
        LogErrorReason.IO,
        LogErrorReason.READ_ONLY,
        LogErrorReason.PERMISSION,
        LogErrorReason.CANNOT_OPEN,
        LogErrorReason.OTHER,
    }
)
_NOTE_TEXT = 600  # characters kept of each text in a note

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

_ALL_BUT_ENVELOPE = tuple(f for f in EXPORT_FIELDS if f != "envelope")

# Migrations: _MIGRATIONS[v] brings a database from schema v to v + 1 inside one transaction.
# A new log is created at schema 1 and brought up by the same steps, so both paths agree.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: the minutes at dose per day and slot (status's streak, adherence) read from one
    # covering index, never from the rows that hold the envelopes.
    1: (
        "CREATE INDEX IF NOT EXISTS sessions_day_minutes ON sessions "
        "(patient_id, local_date, slot, started_utc, session_id, minutes_at_dose)",
    ),
    # 2 -> 3: the accuracy's standard uncertainty next to the accuracy figures (null in older
    # records, which therefore hash and verify as before: records.OPTIONAL_FIELDS)
    2: ("ALTER TABLE sessions ADD COLUMN error_uncertainty_pct REAL",),
    # 3 -> 4: what each record is (therapy, simulated, engineering; NULL: a record from before,
    # therapy). The summary index gains it, so status still counts therapy from the index alone.
    3: (
        "ALTER TABLE sessions ADD COLUMN kind TEXT "
        "CHECK (kind IN ('therapy', 'simulated', 'engineering'))",
        "DROP INDEX IF EXISTS sessions_day_minutes",
        "CREATE INDEX sessions_day_minutes ON sessions "
        "(patient_id, local_date, slot, started_utc, session_id, minutes_at_dose, kind)",
    ),
    # 4 -> 5: a running session's envelope grows by appended chunks, one per checkpoint, so a
    # checkpoint writes only the points that are new; the finished record holds the whole
    # envelope in sessions.envelope as before, and its chunks are deleted when it is chained.
    4: (
        """CREATE TABLE IF NOT EXISTS envelope_chunks (
            session_id TEXT NOT NULL REFERENCES sessions (session_id),
            seq INTEGER NOT NULL CHECK (seq >= 0),
            points_before INTEGER NOT NULL CHECK (points_before >= 0),
            points INTEGER NOT NULL CHECK (points >= 1),
            body TEXT NOT NULL,
            UNIQUE (session_id, seq)
        )""",
    ),
    # 5 -> 6: the plate's countersignature of each finished record (protocol 2.1), kept beside
    # the record and never part of its hash; records finished before stay readable and are
    # shown as not vouched for (recorded before device signatures).
    5: (
        """CREATE TABLE vouchers (
            session_id TEXT PRIMARY KEY NOT NULL REFERENCES sessions (session_id),
            device_key TEXT NOT NULL,
            counter INTEGER NOT NULL CHECK (counter >= 1),
            prev_head TEXT NOT NULL,
            head TEXT NOT NULL,
            signature TEXT NOT NULL
        )""",
        "CREATE UNIQUE INDEX vouchers_key_counter ON vouchers (device_key, counter)",
        """CREATE TABLE unvouched (
            session_id TEXT PRIMARY KEY NOT NULL REFERENCES sessions (session_id),
            reason TEXT NOT NULL
        )""",
        """CREATE TRIGGER vouchers_never_change BEFORE UPDATE ON vouchers
            BEGIN SELECT RAISE(ABORT, 'a countersignature is never changed'); END""",
        """CREATE TRIGGER vouchers_never_deleted BEFORE DELETE ON vouchers
            BEGIN SELECT RAISE(ABORT, 'countersignatures are never deleted'); END""",
        """CREATE TRIGGER unvouched_never_deleted BEFORE DELETE ON unvouched
            BEGIN SELECT RAISE(ABORT, 'notes on unvouched records are never deleted'); END""",
        # own records from this chain index on are countersigned (0 for a new log)
        """INSERT INTO meta (key, value) SELECT 'vouched_from_index',
            CAST(COALESCE(MAX(chain_index) + 1, 0) AS TEXT) FROM sessions
            WHERE record_hash IS NOT NULL
            AND log_id = (SELECT value FROM meta WHERE key = 'log_id')""",
    ),
    # 6 -> 7: each record's times in chain order, read from one covering index, so the check
    # for a clock set back between sessions (status, every time) never reads the rows
    6: (
        "CREATE INDEX IF NOT EXISTS sessions_clock_order ON sessions "
        "(patient_id, log_id, chain_index, started_utc, ended_utc)",
    ),
}
# A record counts as therapy when its kind is therapy or absent (written before kinds existed).
_KIND_SQL = "COALESCE(kind, 'therapy')"


# --- paths ---------------------------------------------------------------------------------------


def default_db_path() -> Path:
    """``$LIV_DB``, else ``$XDG_DATA_HOME/liv/liv.db``, else ``~/.local/share/liv/liv.db``."""
    explicit = os.environ.get(ENV_DB, "")
    if explicit:
        return Path(explicit).expanduser()
    return user_data_dir("liv", "liv.db")


# --- the log -------------------------------------------------------------------------------------


def _tighten(path: Path) -> None:
    """Make a file we own private to the user (0600)."""
    with contextlib.suppress(FileNotFoundError):
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.chmod(path, 0o600)


# A time as ``_iso`` writes it in UTC: text in this one form compares as the time does.
_ISO_UTC_GLOB = (
    "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]"
    ".[0-9][0-9][0-9]+00:00"
)


def _text_goes_back(rows: Sequence[Sequence[Any]]) -> bool:
    """Whether, in ``rows`` ((group, started, ended) in order, the times in
    ``_ISO_UTC_GLOB``'s form), a record ends before it starts or starts more than
    :data:`SET_BACK_SLACK` before the latest end of the records before it in its group (an
    NTP step back within the slack passes)."""
    group: Any = None
    latest = ""
    for key, started, ended in rows:
        if key != group:
            group, latest = key, ""
        if ended < started:
            return True
        if started < latest:
            back = datetime.fromisoformat(latest) - datetime.fromisoformat(started)
            if back > SET_BACK_SLACK:
                return True
        latest = max(latest, ended)
    return False


class SessionStore:
    """The device's session log: one SQLite file, WAL, synchronous=FULL, private to the user."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0, read_only: bool = False) -> None:
        """Open (and, unless ``read_only``, create) the log at ``path``.

        ``read_only`` is for audits (verify, report, sessions, export): the file must exist and
        is never created, migrated or written; a read-only copy (read-only files or folder)
        opens too.
        """
        self._busy_timeout_s = busy_timeout_s
        self.path = Path(path)
        self.read_only = read_only
        self._summary_columns = ", ".join(SUMMARY_FIELDS)
        self.log_id = ""
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._locks = _SessionLocks(self.path)
        self._running: set[str] = set()
        self._has_kind = False  # a log of schema 2 or older, opened read-only, has no kind column
        self._chunked = True  # False: a read-only log from before envelope_chunks (schema 5)
        try:
            with _translate("open the session log", self.path):
                if read_only:
                    self._conn = self._connect_read_only()
                else:
                    self._prepare_file()
                    self._refuse_foreign()
                    self._conn = sqlite3.connect(
                        self.path,
                        timeout=busy_timeout_s,
                        isolation_level=None,  # transactions are explicit: BEGIN ... `with conn:`
                        check_same_thread=False,  # guarded by self._lock instead
                    )
                    self._conn.row_factory = sqlite3.Row
                    self._configure(self._conn)
                self.log_id = self._open_schema()
                self._has_kind = self._has_column("kind")
                if not read_only:
                    for suffix in ("", "-wal", "-shm"):
                        _tighten(self.path.with_name(self.path.name + suffix))
        except BaseException:
            self.close()
            raise

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that can only read; refuses a missing file instead of creating it."""
        if not self.path.exists():
            raise LogError(
                f"There is no session log at {self.path}; check the path (nothing was created).",
                reason=LogErrorReason.CANNOT_OPEN,
                path=self.path,
            )
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(self.path))
        uri = self.path.resolve().as_uri()
        try:
            conn = self._try_connect(f"{uri}?mode=ro")
        except sqlite3.Error as exc:
            # A read-only folder or -shm file (a copied home, a write-protected card): SQLite
            # cannot set up its shared-memory index. Without a write-ahead log holding
            # committed pages, the main file alone is the whole log and can be read immutably.
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise
            _log.info("session log %s opened immutably (%s)", self.path, exc)
            conn = self._try_connect(f"{uri}?immutable=1")
        return conn

    def _try_connect(self, uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA query_only = ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _prepare_file(self) -> None:
        if self.path.is_symlink():
            # a write would go wherever the link points (a planted link can make the log
            # rewrite any file of the user's); reading through one (verify, export) is harmless
            target = os.path.realpath(self.path)
            raise LogError(
                f"The session log {self.path} is a link to another file, so nothing was written "
                f"to it; if you moved the log there yourself, give its real path instead: --db "
                f"{target} (or set LIV_DB to it), else keep it and contact service.",
                reason=LogErrorReason.CANNOT_OPEN,
                path=self.path,
            )
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True)
            os.chmod(folder, 0o700)
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        elif self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(self.path))

    def _refuse_foreign(self) -> None:
        """Refuse, before anything is written (write-ahead mode, permissions), another program's
        SQLite database: one that is not empty and lacks a session log's tables (meta, chains,
        sessions) or meta's ``schema_version`` (digits) and ``log_id`` rows (a Chromium History
        file has a ``meta`` table too). Read without writing or creating a file: with
        ``mode=ro`` (locks honoured) while a write-ahead log beside it shows a writer may be at
        work, else with ``immutable=1`` (``mode=ro`` would create -wal and -shm files beside a
        WAL database)."""
        with open(self.path, "rb") as stream:
            header = stream.read(16)
        if header != b"SQLite format 3\x00":
            return  # a new log (empty), or not SQLite: SQLite refuses it, unchanged
        beside = [self.path.with_name(self.path.name + x) for x in ("-wal", "-shm")]
        flag = "mode=ro" if any(p.exists() for p in beside) else "immutable=1"
        probe = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?{flag}", uri=True, timeout=self._busy_timeout_s
        )
        try:
            names = {
                str(name)
                for (name,) in probe.execute(
                    "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                )
            }
            if not names:
                return  # an empty database: a new log is created in it
            ours = {"meta", "chains", "sessions"} <= names
            if ours:
                try:  # a meta table of another program has other columns or other keys
                    meta = dict(
                        probe.execute(
                            "SELECT key, value FROM meta WHERE key IN ('schema_version', 'log_id')"
                        ).fetchall()
                    )
                except sqlite3.Error:
                    meta = {}
                ours = str(meta.get("schema_version", "")).isdigit() and bool(meta.get("log_id"))
        finally:
            probe.close()
        if not ours:
            raise self._corrupt("it holds another kind of database")

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
        if self._schema_version(conn) is None and self.read_only:
            raise self._corrupt("it is empty or not a session log")
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
                    for step in range(1, SCHEMA_VERSION):
                        for statement in _MIGRATIONS[step]:
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
        if version < SCHEMA_VERSION and not self.read_only:
            self._migrate(version)
        else:
            if version < 3:
                # read-only, so not migrated: a log from before schema 3 has no
                # error_uncertainty_pct column; its records hold none (null), and the summary
                # query says so
                self._summary_columns = self._summary_columns.replace(
                    "error_uncertainty_pct", "NULL AS error_uncertainty_pct"
                )
            # read-only from before schema 5: running envelopes are in sessions.envelope alone
            self._chunked = version >= 5
        row = conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
        if row is None or not isinstance(row[0], str) or not row[0]:
            raise self._corrupt("its log_id is missing")
        return str(row[0])

    def _has_column(self, name: str) -> bool:
        rows = self._connection().execute("PRAGMA table_info(sessions)").fetchall()
        return any(row[1] == name for row in rows)

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
        kind: SessionKind = SessionKind.THERAPY,
    ) -> str:
        """Write a ``running`` row for a session that starts now; returns its session_id.

        ``kind`` says what it is: a therapy session, one on a simulator, or an engineering run.
        """
        try:
            kind = SessionKind(kind)
        except ValueError:
            raise _invalid(
                f"kind must be one of {', '.join(k.value for k in SessionKind)}, not {kind!r}"
            ) from None
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
            "kind": kind.value,
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
            "error_uncertainty_pct": None,
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
        error_uncertainty_pct: float | None = None,
    ) -> None:
        """Save what a running session has delivered so far, in one transaction.

        ``envelope`` is the whole envelope so far; it only ever grows. The log appends the
        points added since the last checkpoint (one ``envelope_chunks`` row) and replaces the
        other measured fields, so a checkpoint's work does not grow with the session. An
        envelope that does not extend the stored one (shorter, or its last stored point
        changed) replaces it. ``wait_s`` bounds how long a locked database may hold this up (a
        caller inside a control loop passes a fraction of the plate's watchdog time).
        """
        figures = _measured_figures(
            minutes_at_dose=minutes_at_dose,
            freqs_hz=freqs_hz,
            safety_events=safety_events,
            mean_error_pct=mean_error_pct,
            p95_abs_error_pct=p95_abs_error_pct,
            exposure=exposure,
            error_uncertainty_pct=error_uncertainty_pct,
        )
        figures["last_checkpoint_utc"] = _iso(_utc(now_utc, "now_utc"))
        columns = _columns(figures)
        if not isinstance(envelope, Sequence) or isinstance(envelope, str):
            raise _invalid("envelope must be a list of (t_s, amplitude_g) pairs")
        with (
            _translate("save the session checkpoint", self.path),
            self._write(wait_s) as tx,
        ):
            self._update_running(tx, session_id, columns)
            self._append_envelope(tx, session_id, envelope)

    def _append_envelope(
        self, tx: sqlite3.Connection, session_id: str, envelope: Sequence[Any]
    ) -> None:
        """Store the points of ``envelope`` beyond those already stored, as one new chunk.

        Reads one chunk row and the new points (plus the last stored one, to check that the
        envelope extends what is stored): the work does not depend on the envelope's length.
        """
        last = tx.execute(
            "SELECT seq, points_before + points, body FROM envelope_chunks "
            "WHERE session_id = ? ORDER BY seq DESC LIMIT 1",
            (session_id,),
        ).fetchone()
        seq, stored = (0, 0) if last is None else (int(last[0]) + 1, int(last[1]))
        points: list[list[float]] = []
        if stored and len(envelope) >= stored:
            points = _envelope_points(envelope, stored - 1)
            # "[" opens every point and nothing else, so this matches one whole point
            if str(last[2]).endswith(canonical_json(points[0])):
                points = points[1:]
            else:
                stored = 0
        elif stored:
            stored = 0
        if not stored:
            if last is not None:
                _log.info("session %s: checkpoint envelope replaces the stored one", session_id)
                tx.execute("DELETE FROM envelope_chunks WHERE session_id = ?", (session_id,))
            seq, points = 0, _envelope_points(envelope)
        if points:
            tx.execute(
                "INSERT INTO envelope_chunks (session_id, seq, points_before, points, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (session_id, seq, stored, len(points), canonical_json(points)[1:-1]),
            )

    def _envelope_text(self, conn: sqlite3.Connection, session_id: str, stored: Any) -> Any:
        """A running session's envelope (JSON text): its column, then its chunks in order.

        The column is ``[]`` for sessions started since schema 5; a session checkpointed by
        older software holds its envelope there.
        """
        if not self._chunked or not isinstance(stored, str):
            return stored
        bodies = [
            str(body)
            for (body,) in conn.execute(
                "SELECT body FROM envelope_chunks WHERE session_id = ? ORDER BY seq",
                (session_id,),
            )
        ]
        if not bodies:
            return stored
        head = stored.strip()
        if head != "[]" and head.startswith("[") and head.endswith("]"):
            bodies.insert(0, head[1:-1])
        return "[" + ",".join(bodies) + "]"

    def _assembled(
        self, conn: sqlite3.Connection, row: sqlite3.Row
    ) -> sqlite3.Row | dict[str, Any]:
        """A running row with its in-progress envelope assembled; any other row as it is."""
        if row["status"] != SessionStatus.RUNNING or not self._chunked:
            return row
        values = {key: row[key] for key in row.keys()}  # noqa: SIM118 (sqlite3.Row)
        values["envelope"] = self._envelope_text(conn, row["session_id"], row["envelope"])
        return values

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
        error_uncertainty_pct: float | None = None,
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
            error_uncertainty_pct=error_uncertainty_pct,
        )
        changes.update(
            status=final.value,
            reason=reason_text,
            ended_utc=_iso(ended),
            last_checkpoint_utc=_iso(ended),
        )
        try:
            with _translate("save the end of the session", self.path), self._lock:
                with self._write() as tx:
                    raw = self._chain(tx, session_id, changes)
                self._running.discard(session_id)
                self._locks.release(session_id)
        except LogError as exc:
            if exc.reason in _STORAGE_FAILURES:
                self._note_failure(session_id, exc, changes)
            raise
        return self._typed(raw)

    def _note_failure(self, session_id: str, exc: LogError, changes: Mapping[str, Any]) -> None:
        """Leave why the end could not be written where the next recovery finds it."""
        note = {
            "log_error": exc.reason.value,
            "log_error_text": str(exc)[:_NOTE_TEXT],
            "status": changes["status"],
            "reason": str(changes["reason"])[:_NOTE_TEXT],
            "minutes_at_dose": changes["minutes_at_dose"],
            "ended_utc": changes["ended_utc"],
        }
        if self._locks.write_note(session_id, note):
            _log.warning("session %s: the log could not be written; noted why", session_id)

    def live_sessions(self) -> list[str]:
        """The running sessions a living process (this one included) still holds, oldest first.

        Only looks (a crashed session's row and lock file are left for recover_interrupted):
        ``liv status`` says a session is running, and ``liv start`` refuses a second one.
        """
        with _translate("read the session log", self.path), self._lock:
            sql = "SELECT session_id FROM sessions WHERE status = 'running' ORDER BY started_utc"
            rows = self._connection().execute(sql).fetchall()
        ids = [str(row["session_id"]) for row in rows]
        return [i for i in ids if i in self._running or self._locks.is_held(i)]

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
                noted = self._locks.read_note(session_id)  # before is_live removes a stale file
                if session_id in self._running or self._locks.is_live(session_id):
                    _log.info("session %s is still running in another process", session_id)
                    continue
                ended = row["last_checkpoint_utc"] or row["started_utc"]
                changes: dict[str, Any] = {
                    "status": SessionStatus.INTERRUPTED.value,
                    "reason": RECOVERY_REASON.format(stamp=stamp),
                    "ended_utc": ended,
                }
                changes.update(self._noted_failure(tx, session_id, noted, stamp))
                recovered.append(self._chain(tx, session_id, changes))
                _log.warning("recovered interrupted session %s", session_id)
        return [self._typed(raw) for raw in recovered]

    def _noted_failure(
        self, tx: sqlite3.Connection, session_id: str, note: dict[str, Any] | None, stamp: str
    ) -> dict[str, Any]:
        """What a note left by a failed final write changes in the recovered record.

        The reason names the log failure (never the crash default) and the dose the session
        had delivered when it ended is kept. A note that does not make sense is ignored.
        """
        if note is None:
            return {}
        row = tx.execute(
            "SELECT started_utc, minutes_at_dose, minutes_prescribed FROM sessions "
            "WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        try:
            error = LogErrorReason(note["log_error"])
            status = SessionStatus(note["status"])
            minutes = _quantize(note["minutes_at_dose"], "minutes_at_dose")
            ended = _utc(datetime.fromisoformat(note["ended_utc"]), "ended_utc")
            started = datetime.fromisoformat(row["started_utc"])
            texts = [_text(note[k], k, allow_empty=True) for k in ("log_error_text", "reason")]
        except (KeyError, TypeError, ValueError, LogError) as exc:
            _log.warning("session %s: ignoring an unreadable failure note (%r)", session_id, exc)
            return {}
        if not 0.0 <= minutes <= float(row["minutes_prescribed"]) + 1e-6 or ended < started:
            _log.warning("session %s: ignoring a failure note out of range", session_id)
            return {}
        sentence, outcome = texts
        return {
            "reason": LOG_FAILURE_REASON.format(
                error=error.value,
                sentence=sentence.rstrip("."),
                status=status.value,
                outcome=outcome or "no reason given",
                stamp=stamp,
            ),
            "ended_utc": _iso(ended),
            "minutes_at_dose": max(minutes, float(row["minutes_at_dose"])),
        }

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
            # recovery keeps the checkpointed envelope: assembled here, once
            raw = _raw_from_row(row if "envelope" in changes else self._assembled(tx, row))
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
        self._update_running(tx, session_id, _columns_from_raw(raw))
        tx.execute("DELETE FROM envelope_chunks WHERE session_id = ?", (session_id,))
        self._check_stored(tx, session_id)
        # until the plate countersigns it (the runner asks right after, or at the next connection)
        tx.execute(
            "INSERT INTO unvouched (session_id, reason) VALUES (?, ?)",
            (session_id, AWAITING_REASON),
        )
        return raw

    def _update_running(
        self, tx: sqlite3.Connection, session_id: str, columns: Mapping[str, Any]
    ) -> None:
        """Write ``columns`` into a session still running and unchained, else LogError."""
        cursor = tx.execute(
            f"UPDATE sessions SET {', '.join(f'{k} = ?' for k in columns)} "
            "WHERE session_id = ? AND status = 'running' AND record_hash IS NULL",
            [*columns.values(), session_id],
        )
        if cursor.rowcount != 1:
            raise self._not_running(tx, session_id)

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

    def _full_rows(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row | dict[str, Any]]:
        """Whole rows, a running session's envelope assembled from its chunks (one snapshot)."""
        with _translate("read the session log", self.path), self._read() as conn:
            return [self._assembled(conn, row) for row in conn.execute(sql, params).fetchall()]

    def _typed_row(self, row: sqlite3.Row | Mapping[str, Any]) -> SessionRecord:
        try:
            raw = _raw_from_row(row)
        except ValueError as exc:
            raise self._corrupt(
                f"session {row['session_id']} cannot be read ({exc}); run verify"
            ) from exc
        return self._typed(raw)

    def _summary_row(self, row: sqlite3.Row) -> SessionSummary:
        try:
            return _summary_from_raw(_raw_from_row(row, SUMMARY_FIELDS))
        except ValueError as exc:
            raise self._corrupt(
                f"session {row['session_id']} cannot be read ({exc}); run verify"
            ) from exc

    def get(self, session_id: str) -> SessionRecord:
        """The record of one session (running or finished)."""
        rows = self._full_rows("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        if not rows:
            raise LogError(
                f"There is no session {session_id} in this log.",
                reason=LogErrorReason.UNKNOWN_SESSION,
                path=self.path,
            )
        return self._typed_row(rows[0])

    def sessions(
        self,
        patient_id: str | None = None,
        since: date | None = None,
        until: date | None = None,
    ) -> list[SessionRecord]:
        """Sessions (all chains, running included) by local date and slot; bounds inclusive.

        Full records, envelopes included: for lists and schedules use :meth:`summaries`.
        """
        sql, params = self._select("*", patient_id, since, until)
        return [self._typed_row(row) for row in self._full_rows(sql, params)]

    def summaries(
        self,
        patient_id: str | None = None,
        since: date | None = None,
        until: date | None = None,
    ) -> list[SessionSummary]:
        """As :meth:`sessions`, without envelopes: one indexed query over the summary columns.

        The envelope (and the column stored after it) is never read, so a year of sessions
        lists in milliseconds whatever their envelopes hold.
        """
        columns = ", ".join(
            name if name != "kind" or self._has_kind else "NULL AS kind"
            for name in self._summary_columns.split(", ")
        )
        sql, params = self._select(columns, patient_id, since, until)
        with _translate("read the session log", self.path), self._lock:
            rows = self._connection().execute(sql, params).fetchall()
        return [self._summary_row(row) for row in rows]

    def slot_minutes(
        self,
        patient_id: str,
        since: date | None = None,
        until: date | None = None,
        kinds: Collection[SessionKind] = (SessionKind.THERAPY,),
    ) -> dict[tuple[date, int], float]:
        """Minutes at dose per (local date, slot) of one patient, summed in listing order.

        Only records of ``kinds`` are summed (default: therapy, which a record from before
        kinds existed is).
        """
        counted = sorted(SessionKind(k).value for k in kinds)
        sql, params = self._select(
            "local_date, slot, minutes_at_dose", patient_id, since, until,
            counted if self._has_kind else None,
        )  # fmt: skip
        if not self._has_kind and SessionKind.THERAPY not in counted:
            return {}  # every record of a log from before kinds is therapy
        totals: dict[tuple[date, int], float] = {}
        with _translate("read the session log", self.path), self._lock:
            rows = self._connection().execute(sql, params).fetchall()
        for day_text, slot, minutes in rows:
            try:
                key = (date.fromisoformat(day_text), int(slot))
                totals[key] = totals.get(key, 0.0) + float(minutes)
            except (TypeError, ValueError) as exc:
                raise self._corrupt(f"a session cannot be read ({exc}); run verify") from exc
        return totals

    def _select(
        self,
        columns: str,
        patient_id: str | None,
        since: date | None,
        until: date | None,
        kinds: Sequence[str] | None = None,
    ) -> tuple[str, list[str]]:
        """The listing query (by local date and slot; bounds inclusive) and its parameters."""
        where: list[str] = []
        params: list[str] = []
        if kinds is not None:
            where.append(f"{_KIND_SQL} IN ({', '.join('?' * len(kinds))})")
            params.extend(kinds)
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
        sql = f"SELECT {columns} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY local_date, slot, started_utc, session_id"
        return sql, params

    def latest_for_slot(self, patient_id: str, local_date: date, slot: int) -> SessionRecord | None:
        """The most recently started session of one patient's slot on one local date, if any."""
        if not isinstance(local_date, date) or isinstance(local_date, datetime):
            raise _invalid(f"local_date must be a date, not {local_date!r}")
        rows = self._full_rows(
            "SELECT * FROM sessions WHERE patient_id = ? AND local_date = ? AND slot = ?",
            (patient_id, local_date.isoformat(), slot),
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
        Streams: one record is held at a time (memory does not grow with the log) and each is
        read once (time grows linearly). The outcome is the one :func:`_verify_chains` gives
        over the whole log: content is judged in every chain before any link.
        """
        chains: dict[str, list[tuple[tuple[int, int, str], int, str, Any]]] = {}
        unchained_bad: BadRecord | None = None
        with _translate("verify the session log", self.path), self._read() as conn:
            keys = conn.execute(
                "SELECT rowid, log_id, chain_index, session_id, status, "
                "record_hash IS NOT NULL FROM sessions ORDER BY log_id, chain_index, rowid"
            ).fetchall()
            for rowid, log_id, index, session_id, status, hashed in keys:
                if not (hashed or index is not None):
                    if unchained_bad is None and status != SessionStatus.RUNNING:
                        unchained_bad = BadRecord(
                            str(log_id),
                            None,
                            str(session_id),
                            f"finished record (status {status}) is not chained",
                        )
                    continue
                entry = _Entry(str(session_id), index, None)
                chains.setdefault(str(log_id), []).append(
                    (_index_key(entry), rowid, str(session_id), index)
                )
            order = self._chain_order(conn)
            results = [
                (log_id, self._verify_chain(conn, log_id, chains.get(log_id, [])))
                for log_id in order
            ]
        checked = sum(len(entries) for entries in chains.values())
        contents = [content for _, (content, _, _) in results]
        links = [link for _, (_, link, _) in results]
        heads = {log_id: head for log_id, (_, _, head) in results if head is not None}
        first_bad = next((b for b in contents if b is not None), None)
        first_bad = first_bad or next((b for b in links if b is not None), None)
        return VerifyResult((first_bad or unchained_bad) is None, checked, first_bad or
                            unchained_bad, heads)  # fmt: skip

    def _verify_chain(
        self,
        conn: sqlite3.Connection,
        log_id: str,
        keys: list[tuple[tuple[int, int, str], int, str, Any]],
    ) -> tuple[BadRecord | None, BadRecord | None, str | None]:
        """One chain, one record at a time: (first content fault, first link fault, head)."""
        content_bad: BadRecord | None = None
        link_bad: BadRecord | None = None
        expected = 0
        prev_hash = GENESIS_HASH
        for _, rowid, session_id, index in sorted(keys, key=lambda k: k[0]):
            row = conn.execute("SELECT * FROM sessions WHERE rowid = ?", (rowid,)).fetchone()
            entry = self._stored_entry(row, session_id, index)
            if content_bad is None:
                content_bad = _content_bad(log_id, [entry])
            if content_bad is not None or link_bad is not None:
                continue
            assert entry.raw is not None
            link_bad = _link_bad(log_id, [entry], expected, prev_hash)
            expected, prev_hash = (index + 1 if type(index) is int else 0), entry.raw["record_hash"]
        if content_bad is not None:
            return content_bad, None, None
        if link_bad is not None or not keys:
            return None, link_bad, None
        return None, None, prev_hash

    @staticmethod
    def _stored_entry(row: sqlite3.Row, session_id: str, index: Any) -> _Entry:
        """A chained row as a verification entry; a canonical envelope is hashed as stored."""
        try:
            raw = _raw_from_row(row, _ALL_BUT_ENVELOPE)
        except ValueError:
            raw = None
        if raw is not None and _fast_content_ok(raw, row["envelope"]):
            # Sound: the checks below only read the hashes and the index, so the envelope is
            # not parsed.
            return _Entry(session_id, index, {**raw, "envelope": None}, sound=True)
        try:
            return _Entry(session_id, index, _raw_from_row(row))
        except ValueError as exc:
            return _Entry(session_id, index, None, str(exc))

    def set_back(
        self, patient_id: str | None = None, now: datetime | None = None, *, quick: bool = False
    ) -> dict[str, SetBack]:
        """The records (of ``patient_id``, or all) dated before a record recorded before them
        ended: the home computer's clock was set back (sessions/log/clockorder.py), in each
        log's chain order and each plate's countersignature order. Records dated more than a
        day after ``now`` (default: this computer's clock) are left out, unless this log's own
        chain ends after ``now`` (:meth:`clock_behind`): then the reader's clock is behind, maybe
        still set back, and leaving them out would hide the record it backdated. No envelope is
        read.

        ``quick`` (status, every time): first one pass over each log's times in chain order
        from a covering index (``sessions_clock_order``), comparing the times as text; a log
        whose times never go back, in one chain, is answered from that pass alone, and only a
        log where they may (or in several chains) is read and checked in both orders.
        """
        moment = datetime.now(UTC) if now is None else now
        if quick and not self._may_be_set_back(patient_id):
            return {}
        with _translate("read the session log", self.path), self._lock:
            conn = self._connection()
            plate = (
                "v.device_key, v.counter FROM sessions s LEFT JOIN vouchers v USING (session_id)"
                if self._has_vouchers(conn)
                else "NULL, NULL FROM sessions s"
            )
            where = "" if patient_id is None else " WHERE s.patient_id = ?"
            rows = conn.execute(
                "SELECT s.session_id, s.log_id, s.chain_index, s.started_utc, s.ended_utc, "
                + plate
                + where,
                () if patient_id is None else (patient_id,),
            ).fetchall()
        behind = self.clock_behind(moment, patient_id) is not None
        try:
            timed = []
            for session_id, log_id, index, started, ended, key, counter in rows:
                start = datetime.fromisoformat(started)
                end = None if ended is None else datetime.fromisoformat(ended)
                timed.append(
                    TimedRecord(
                        str(session_id),
                        str(log_id),
                        None if index is None else int(index),
                        start,
                        end,
                        None if key is None else str(key),
                        None if counter is None else int(counter),
                        not behind and dated_ahead(start, end, moment),
                    )
                )
        except (TypeError, ValueError) as exc:
            raise self._corrupt(f"a session's times cannot be read ({exc}); run verify") from exc
        return set_back_records(timed)

    def _may_be_set_back(self, patient_id: str | None) -> bool:
        """Whether the full check can find anything: a record that, in its log's chain order or
        (with more than one chain, as after ``liv import``) its plate's countersignature order,
        starts more than the slack before the records before it ended, or ends before it
        starts, or a time not in the one form ``_iso`` writes (UTC, milliseconds). In that form
        comparing the times as text compares the times, so this is one pass over the covering
        index (and the vouchers, with several chains), one comparison or two per record; the
        two times are parsed only where the text goes back. It never misses what the full check
        finds: it reads every record the full check reads, and more (a record dated ahead).
        The own chain's times are all written by ``_iso``; those of another log (imported)
        are first checked to be in that form."""
        where = "s.chain_index IS NOT NULL" + (
            "" if patient_id is None else " AND s.patient_id = ?"
        )
        params: tuple[str, ...] = () if patient_id is None else (patient_id,)
        with _translate("read the session log", self.path), self._lock:
            conn = self._connection()
            chains = conn.execute(
                f"SELECT s.log_id, s.started_utc, s.ended_utc FROM sessions s WHERE {where} "
                "ORDER BY s.log_id, s.chain_index",
                params,
            ).fetchall()
            several = len({row[0] for row in chains}) > 1
            plates: list[Any] = []
            if several or (chains and chains[0][0] != self.log_id):
                # another log's times were written elsewhere: in the one form, or the full check
                odd = conn.execute(
                    f"SELECT 1 FROM sessions s WHERE {where} AND NOT (COALESCE(s.started_utc "
                    "GLOB ?, 0) AND COALESCE(s.ended_utc GLOB ?, 0)) LIMIT 1",
                    (*params, _ISO_UTC_GLOB, _ISO_UTC_GLOB),
                ).fetchone()
                if odd is not None:
                    return True
            if several and self._has_vouchers(conn):
                plates = conn.execute(
                    "SELECT v.device_key, s.started_utc, s.ended_utc FROM sessions s "
                    f"JOIN vouchers v USING (session_id) WHERE {where} "
                    "ORDER BY v.device_key, v.counter",
                    params,
                ).fetchall()
        # one chain: the plate countersigns it in chain order, so each plate's order is a part
        # of the chain's and cannot go back where the chain's does not
        try:
            return _text_goes_back(chains) or _text_goes_back(plates)
        except (TypeError, ValueError):  # a time that is not text: the full check says what
            return True

    def clock_behind(
        self, now: datetime | None = None, patient_id: str | None = None
    ) -> datetime | None:
        """The end of this log's newest chained record (of ``patient_id``, or any) when it is
        more than :data:`SET_BACK_SLACK` after ``now`` (default: this computer's clock), else
        None.

        This log's records were written by this computer's clock: one ending after that clock's
        now says the clock is behind now (still set back), or that it ran fast earlier and was
        put right. The times are compared as text in the one form ``_iso`` writes; with
        ``patient_id`` (status, every time) from the covering index ``sessions_clock_order``
        (under a millisecond on five years; without, the rows are read: some milliseconds)."""
        moment = datetime.now(UTC) if now is None else now
        where = "log_id = ? AND chain_index IS NOT NULL"
        params: tuple[str, ...] = (self.log_id,)
        if patient_id is not None:
            where, params = "patient_id = ? AND " + where, (patient_id, self.log_id)
        with _translate("read the session log", self.path), self._lock:
            row = (
                self._connection()
                .execute(f"SELECT MAX(ended_utc) FROM sessions WHERE {where}", params)
                .fetchone()
            )
        if row is None or not isinstance(row[0], str):
            return None
        try:
            newest = datetime.fromisoformat(row[0])
            return newest if newest - moment.astimezone(UTC) > SET_BACK_SLACK else None
        except (TypeError, ValueError):  # not a time: verify says what it is
            return None

    # --- what the plate vouches for (protocol 2.1; sessions/log/vouch.py) ---

    def _has_vouchers(self, conn: sqlite3.Connection) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'vouchers'"
        ).fetchone()
        return row is not None

    def awaiting_vouchers(self, device_id: str) -> list[tuple[str, str]]:
        """(session_id, record_hash) of this log's own records from ``device_id`` that the plate
        has not countersigned yet, in chain order."""
        with _translate("read the session log", self.path), self._read() as conn:
            if not self._has_vouchers(conn):
                return []
            rows = conn.execute(
                "SELECT s.session_id, s.record_hash FROM sessions s JOIN unvouched u "
                "USING (session_id) WHERE s.log_id = ? AND s.device_id = ? "
                "AND s.record_hash IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM vouchers v WHERE v.session_id = s.session_id) "
                "ORDER BY s.chain_index",
                (self.log_id, device_id),
            ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def last_voucher(self, device_key: bytes) -> tuple[int, str] | None:
        """(counter, head) of the highest countersignature by this plate key held, if any."""
        with _translate("read the session log", self.path), self._read() as conn:
            if not self._has_vouchers(conn):
                return None
            row = conn.execute(
                "SELECT counter, head FROM vouchers WHERE device_key = ? "
                "ORDER BY counter DESC LIMIT 1",
                (device_key.hex(),),
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def first_voucher_counter(self, device_key: bytes) -> int | None:
        """The lowest counter this plate key has vouched with in this log, if any."""
        with _translate("read the session log", self.path), self._read() as conn:
            if not self._has_vouchers(conn):
                return None
            row = conn.execute(
                "SELECT min(counter) FROM vouchers WHERE device_key = ?", (device_key.hex(),)
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def add_voucher(self, session_id: str, voucher: Voucher) -> None:
        """Store the plate's countersignature of a finished record (checked first)."""
        with _translate("store the plate's countersignature", self.path), self._write() as tx:
            row = tx.execute(
                "SELECT record_hash, device_id FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None or row["record_hash"] is None:
                raise self._not_running(tx, session_id)
            problem = voucher.problem(row["record_hash"], row["device_id"])
            if problem is not None:
                raise _invalid(f"the countersignature of session {session_id} is wrong: {problem}")
            tx.execute(
                "INSERT INTO vouchers (session_id, device_key, counter, prev_head, head, "
                "signature) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    voucher.device_key,
                    voucher.counter,
                    voucher.prev_head,
                    voucher.head,
                    voucher.signature,
                ),
            )

    def note_unvouched(self, session_id: str, reason: str) -> None:
        """Say why a finished record is not vouched for by the plate (yet)."""
        text = _text(reason, "reason")
        with _translate("save why a record is not vouched for", self.path), self._write() as tx:
            tx.execute(
                "INSERT INTO unvouched (session_id, reason) VALUES (?, ?) "
                "ON CONFLICT (session_id) DO UPDATE SET reason = excluded.reason",
                (session_id, text),
            )

    def vouch_text(self, session_id: str) -> str:
        """One phrase saying whether, and by which plate counter, a record is vouched for."""
        with _translate("read the session log", self.path), self._read() as conn:
            if not self._has_vouchers(conn):
                return LEGACY_TEXT
            voucher = conn.execute(
                "SELECT device_key, counter FROM vouchers WHERE session_id = ?", (session_id,)
            ).fetchone()
            if voucher is not None:
                key = Pin("", str(voucher[0]), 1).key_id
                return f"vouched for by the plate (key {key}, counter {voucher[1]})"
            note = conn.execute(
                "SELECT reason FROM unvouched WHERE session_id = ?", (session_id,)
            ).fetchone()
        return LEGACY_TEXT if note is None else f"not vouched for: {note[0]}"

    def verify_vouchers(
        self, pins: dict[str, Pin] | None = None, plate: PlateState | None = None
    ) -> TrustResult:
        """Check every countersignature, the counters' continuity and, with ``plate``, the
        log's last counter and head against the plate's. Streams one row at a time."""
        pins = pins or {}
        result = TrustResult()
        with _translate("verify the session log", self.path), self._read() as conn:
            if self._has_vouchers(conn):
                rows = conn.execute(
                    "SELECT v.device_key, v.counter, v.prev_head, v.head, v.signature, "
                    "s.record_hash, s.device_id, s.session_id, s.chain_index "
                    "FROM vouchers v JOIN sessions s USING (session_id) "
                    "ORDER BY v.device_key, v.counter"
                )
                check_vouchers(
                    (
                        (Voucher(r[0], int(r[1]), r[2], r[3], r[4]), str(r[5]), r[6], r[7], r[8])
                        for r in rows
                    ),
                    pins,
                    result,
                )
                self._check_unvouched(conn, result)
            else:
                result.legacy = conn.execute(
                    "SELECT count(*) FROM sessions WHERE record_hash IS NOT NULL"
                ).fetchone()[0]
        if plate is not None:
            check_plate(plate, pins, result)
        return result

    def _check_unvouched(self, conn: sqlite3.Connection, result: TrustResult) -> None:
        """Own records from ``vouched_from_index`` on must be vouched for; older are legacy."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'vouched_from_index'").fetchone()
        start = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
        rows = conn.execute(
            "SELECT s.session_id, s.chain_index, s.log_id, u.reason FROM sessions s "
            "LEFT JOIN unvouched u USING (session_id) WHERE s.record_hash IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM vouchers v WHERE v.session_id = s.session_id) "
            "ORDER BY s.log_id, s.chain_index"
        )
        for session_id, index, log_id, reason in rows:
            own = log_id == self.log_id
            if own and isinstance(index, int) and index < start:
                result.legacy += 1
                continue
            if not own and reason is None:
                result.legacy += 1  # imported before device signatures
                continue
            result.unvouched += 1
            why = reason or "no countersignature and no note (added outside this software)"
            result.add(
                f"record {index} (session {session_id}) is not vouched for by the plate: {why}"
            )
