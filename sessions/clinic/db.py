"""The clinic database: one schema on SQLite (default) or PostgreSQL, with numbered migrations.

Which database (first match wins): ``--db URL``, ``$LIV_CLINIC_DB``, else the SQLite file
``clinic_root()/clinic.db``. A URL starting ``postgresql://`` or ``postgres://`` is opened with
psycopg 3; ``sqlite:///PATH`` or a plain path is a SQLite file.

The SQL is written once, with ``?`` placeholders, in the types both engines share (TEXT,
INTEGER, BIGINT, DOUBLE PRECISION); the PostgreSQL connection turns ``?`` into ``%s``. Schema
changes are numbered steps in ``MIGRATIONS``; ``schema_version`` holds one row per step applied.
A step that needs each engine's own SQL (triggers) is a ``PerEngine``.
Opening a database applies the missing steps in one transaction, under a lock, so two programs
opening a new database at once do not both create it (docs/clinic.md, "Migrations").
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from firmware_bridge.errors import LivError
from sessions.clinic.paths import clinic_root

ENV_CLINIC_DB = "LIV_CLINIC_DB"
DB_FILE_NAME = "clinic.db"
BUSY_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 8  # a transaction that lost a race (deadlock, lock timeout) is retried this often
_PG_SCHEMES = ("postgresql://", "postgres://")
_PG_MIGRATION_LOCK = 0x11C13  # pg_advisory_xact_lock key held while the schema is migrated

_log = logging.getLogger(__name__)
T = TypeVar("T")

# The history the clinic acts on: a row of these is written once and never changed or deleted,
# which the database itself enforces from migration 9 (docs/clinic.md, "History is never
# rewritten"). The overview's summary rows, the envelopes (pruned to the sessions a report
# draws) and schema_version are not in it.
APPEND_ONLY_TABLES: dict[str, tuple[tuple[str, ...], ...]] = {  # each with its unique keys
    "protocols": (("sha256",),),
    "imports": (("import_id",),),
    "records": (("log_id", "chain_index"), ("session_id",)),
    "vouchers": (("session_id",), ("device_key", "counter")),
    "problems": (("problem_id",),),
    "problem_notes": (("problem_id",),),
    "plates": (("device_id",),),
    "prescriptions": (("sha256",),),
}
# the tables liv inserts into with ON CONFLICT DO NOTHING (a row already held is skipped)
_SKIPS_HELD = frozenset({"protocols", "records", "vouchers", "plates", "prescriptions"})
_REFUSED = "is append-only: its rows are never changed or deleted (docs/clinic.md)"


@dataclass(frozen=True)
class PerEngine:
    """A migration step written for each engine (what the shared SQL cannot say, triggers)."""

    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


def _sqlite_append_only(table: str) -> tuple[str, ...]:
    """UPDATE and DELETE refused; and an INSERT over a row already held, which REPLACE (INSERT
    OR REPLACE, REPLACE INTO) would make a delete that fires no DELETE trigger (SQLite fires
    them only with recursive_triggers): refused, or skipped where liv's own INSERT skips a
    held row (ON CONFLICT DO NOTHING), which is what it does then anyway."""
    held = " OR ".join(  # one EXISTS a key: each looked up in its own index
        f"EXISTS (SELECT 1 FROM {table} WHERE {' AND '.join(f'{c} = NEW.{c}' for c in key)})"
        for key in APPEND_ONLY_TABLES[table]
    )
    held_row = (
        "RAISE(IGNORE)"
        if table in _SKIPS_HELD
        else f"RAISE(ABORT, '{table} {_REFUSED}: INSERT over a row it holds refused')"
    )
    # IF NOT EXISTS: a database whose schema_version was wound back keeps its triggers
    return (
        *(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{table} {_REFUSED}: {op} refused'); END"
            for op in ("UPDATE", "DELETE")
        ),
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table}"
        f" WHEN {held} BEGIN SELECT {held_row}; END",
    )


def _postgres_append_only(table: str) -> tuple[str, ...]:
    return (
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION liv_append_only()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION liv_append_only()",
    )


# PL/pgSQL without % or ? (the statement goes through the placeholder conversion)
_PG_APPEND_ONLY_FUNCTION = (
    "CREATE OR REPLACE FUNCTION liv_append_only() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN RAISE EXCEPTION USING ERRCODE = 'restrict_violation',"
    f" MESSAGE = TG_TABLE_NAME || ' {_REFUSED}: ' || TG_OP || ' refused';"
    " END $$"
)

# Numbered migration steps: MIGRATIONS[k] brings a database from version k to k + 1.
MIGRATIONS: tuple[tuple[str, ...] | PerEngine, ...] = (
    # 1: the records as exported, the protocols they ran under, every import and every problem
    (
        "CREATE TABLE protocols (sha256 TEXT PRIMARY KEY, protocol_json TEXT NOT NULL)",
        "CREATE TABLE imports ("
        " import_id TEXT PRIMARY KEY, file_name TEXT NOT NULL, file_sha256 TEXT NOT NULL,"
        " imported_utc TEXT NOT NULL, outcome TEXT NOT NULL, added INTEGER NOT NULL,"
        " duplicates INTEGER NOT NULL, detail TEXT NOT NULL)",
        "CREATE TABLE records ("
        " log_id TEXT NOT NULL, chain_index BIGINT NOT NULL,"
        " session_id TEXT NOT NULL UNIQUE, prev_hash TEXT NOT NULL, record_hash TEXT NOT NULL,"
        " patient_id TEXT NOT NULL, device_id TEXT NOT NULL, firmware_version TEXT NOT NULL,"
        " protocol_sha256 TEXT NOT NULL REFERENCES protocols (sha256),"
        " started_utc TEXT NOT NULL, local_date TEXT NOT NULL, slot INTEGER NOT NULL,"
        " status TEXT NOT NULL, minutes_prescribed DOUBLE PRECISION NOT NULL,"
        " minutes_at_dose DOUBLE PRECISION NOT NULL, target_g DOUBLE PRECISION NOT NULL,"
        " mean_error_pct DOUBLE PRECISION, summary_json TEXT NOT NULL,"
        " record_json TEXT NOT NULL, import_id TEXT NOT NULL REFERENCES imports (import_id),"
        " PRIMARY KEY (log_id, chain_index))",
        "CREATE TABLE problems ("
        " problem_id TEXT PRIMARY KEY, import_id TEXT NOT NULL REFERENCES imports (import_id),"
        " kind TEXT NOT NULL, patient_id TEXT, log_id TEXT, chain_index BIGINT,"
        " session_id TEXT, detail TEXT NOT NULL, found_utc TEXT NOT NULL)",
    ),
    # 2: the record's kind (therapy, simulated, engineering) and the overview's summary rows
    (
        "ALTER TABLE records ADD COLUMN kind TEXT NOT NULL DEFAULT 'therapy'",
        "CREATE INDEX records_patient_day ON records (patient_id, local_date)",
        "CREATE INDEX problems_patient ON problems (patient_id)",
        "CREATE TABLE patients ("
        " patient_id TEXT PRIMARY KEY, timezone TEXT NOT NULL, sessions INTEGER NOT NULL,"
        " last_session_day TEXT, device_id TEXT, firmware_version TEXT,"
        " devices_json TEXT NOT NULL, refreshed_utc TEXT NOT NULL)",
        "CREATE TABLE patient_days ("
        " patient_id TEXT NOT NULL, day TEXT NOT NULL, status TEXT NOT NULL,"
        " slots_prescribed INTEGER NOT NULL, slots_completed INTEGER NOT NULL,"
        " minutes_prescribed DOUBLE PRECISION NOT NULL,"
        " minutes_at_dose DOUBLE PRECISION NOT NULL, PRIMARY KEY (patient_id, day))",
        "CREATE TABLE patient_flags ("
        " patient_id TEXT NOT NULL, session_id TEXT NOT NULL, kind TEXT NOT NULL,"
        " local_date TEXT NOT NULL, reason TEXT NOT NULL,"
        " PRIMARY KEY (patient_id, session_id, kind))",
    ),
    # 3: the plates the clinic dispensed (their Ed25519 keys) and each record's countersignature
    (
        "CREATE TABLE plates ("
        " device_id TEXT PRIMARY KEY, device_key TEXT NOT NULL, first_counter BIGINT NOT NULL,"
        " added_utc TEXT NOT NULL)",
        "CREATE TABLE vouchers ("
        " session_id TEXT PRIMARY KEY REFERENCES records (session_id),"
        " device_key TEXT NOT NULL, counter BIGINT NOT NULL, prev_head TEXT NOT NULL,"
        " head TEXT NOT NULL, signature TEXT NOT NULL, record_hash TEXT NOT NULL,"
        " UNIQUE (device_key, counter))",
    ),
    # 4: envelopes apart from the records, kept only for the sessions a report draws
    (
        "CREATE TABLE envelopes ("
        " session_id TEXT PRIMARY KEY REFERENCES records (session_id),"
        " envelope_json TEXT NOT NULL)",
    ),
    # 5: the prescriptions this clinic signed (liv protocol sign), by their fingerprint
    (
        "CREATE TABLE prescriptions ("
        " sha256 TEXT PRIMARY KEY, patient_id TEXT NOT NULL, key_fingerprint TEXT NOT NULL,"
        " signed_utc TEXT NOT NULL)",
    ),
    # 6: the prescriptions of the therapy records the clinic accepted before it recorded what it
    # signed (before migration 5, or before its first 'liv protocol sign' since): they were
    # signed before the check existed, so sessions run under them are not flagged
    (
        "INSERT INTO prescriptions (sha256, patient_id, key_fingerprint, signed_utc)"
        " SELECT r.protocol_sha256, MIN(r.patient_id), 'accepted before the check',"
        " MIN(i.imported_utc) FROM records r JOIN imports i ON i.import_id = r.import_id"
        " WHERE r.kind = 'therapy'"
        " AND r.protocol_sha256 NOT IN (SELECT sha256 FROM prescriptions)"
        " AND (NOT EXISTS (SELECT 1 FROM prescriptions)"
        " OR i.imported_utc < (SELECT MIN(signed_utc) FROM prescriptions))"
        " GROUP BY r.protocol_sha256",
    ),
    # 7: a record dated ahead of the importer's clock (the home computer's clock was ahead) is
    # held and flagged, never counted in adherence
    ("ALTER TABLE records ADD COLUMN clock_ahead INTEGER NOT NULL DEFAULT 0",),
    # 8: a clinician's acknowledgement of a problem (liv clinic acknowledge): added beside the
    # problem, never an edit of it; a problem without a note stays open
    (
        "CREATE TABLE problem_notes ("
        " problem_id TEXT PRIMARY KEY REFERENCES problems (problem_id),"
        " acknowledged_utc TEXT NOT NULL, acknowledged_by TEXT NOT NULL, note TEXT NOT NULL)",
    ),
    # 9: the history is append-only in the database itself: UPDATE and DELETE (PostgreSQL:
    # TRUNCATE too) of APPEND_ONLY_TABLES are refused by triggers. An import writes its
    # `imports` row last, once its counts are known (before, it inserted the row first and
    # updated it), so its records' reference to it is checked at commit (deferrable on PG;
    # SQLite defers per transaction with PRAGMA defer_foreign_keys)
    PerEngine(
        sqlite=tuple(s for t in APPEND_ONLY_TABLES for s in _sqlite_append_only(t)),
        postgres=(
            "ALTER TABLE records ALTER CONSTRAINT records_import_id_fkey"
            " DEFERRABLE INITIALLY IMMEDIATE",
            _PG_APPEND_ONLY_FUNCTION,
            *(s for t in APPEND_ONLY_TABLES for s in _postgres_append_only(t)),
        ),
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class ClinicDbError(LivError):
    """The clinic database could not be opened or used; the message says why in one sentence."""

    retryable: bool = False  # the transaction lost a race with another writer: run it again


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def resolve_db_url(explicit: str | None = None, clinic_dir: str | None = None) -> str:
    """The database to use: ``explicit``, ``$LIV_CLINIC_DB``, else the clinic's SQLite file."""
    if explicit:
        return explicit
    env = os.environ.get(ENV_CLINIC_DB, "")
    if env:
        return env
    return str(clinic_root(clinic_dir) / DB_FILE_NAME)


def is_postgres(url: str) -> bool:
    return url.startswith(_PG_SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    if not is_postgres(url) or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    user, host = rest.rsplit("@", 1)
    return f"{scheme}://{user.split(':', 1)[0]}@{host}"


class ClinicDb:
    """One connection to the clinic database, migrated to ``SCHEMA_VERSION`` when opened.

    ``execute``/``query`` run in autocommit; ``transaction()`` groups writes (SQLite takes the
    write lock at its start, PostgreSQL relies on unique keys and row locks).
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.postgres = is_postgres(url)
        self.migrated_from: int | None = None
        if self.postgres:
            self._conn: Any = _connect_postgres(url)
        else:
            self._conn = _connect_sqlite(url)
        self._in_tx = False
        try:
            self.version = self._schema_version()
            if migrate and self.version < SCHEMA_VERSION:
                self._migrate()
            if self.version > SCHEMA_VERSION:
                raise ClinicDbError(
                    f"the clinic database {redacted(url)} was written by a newer version of this "
                    f"software (schema {self.version}, this one knows {SCHEMA_VERSION}); "
                    "update liv to use it"
                )
        except BaseException:
            self.close()
            raise

    # --- plumbing ---

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns the cursor (rowcount, fetch*)."""
        with self._errors():
            return self._conn.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._errors():
            if self.postgres:
                with self._conn.cursor() as cur:
                    cur.executemany(self._sql(sql), rows)
            else:
                self._conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.execute(sql, params).fetchall()
        return rows

    def stream(
        self, sql: str, params: Sequence[Any] = (), batch: int = 2000
    ) -> Iterator[tuple[Any, ...]]:
        """Rows one batch at a time: memory does not grow with the table (server-side on PG)."""
        if self.postgres:
            with (
                self._errors(),
                self._conn.transaction(),
                self._conn.cursor(name="liv_stream") as cur,
            ):
                cur.itersize = batch
                cur.execute(self._sql(sql), tuple(params))
                yield from cur
            return
        with self._errors():
            cur = self._conn.execute(sql, tuple(params))
            while True:
                rows = cur.fetchmany(batch)
                if not rows:
                    return
                yield from rows

    @contextlib.contextmanager
    def transaction(self) -> Iterator[ClinicDb]:
        """One all-or-nothing write transaction."""
        assert not self._in_tx, "transactions do not nest"
        self._in_tx = True
        try:
            with self._errors():
                if self.postgres:
                    with self._conn.transaction():
                        yield self
                else:
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield self
                        self._conn.execute("COMMIT")  # may fail: a deferred reference missing
                    except BaseException:
                        if self._conn.in_transaction:  # not when SQLite ended it (disk full)
                            self._conn.execute("ROLLBACK")
                        raise
        finally:
            self._in_tx = False

    def retrying(self, work: Callable[[], T], what: str) -> T:
        """``work()`` (one transaction), run again when it lost a race with another writer."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return work()
            except ClinicDbError as exc:
                if not exc.retryable or attempt == MAX_ATTEMPTS:
                    raise
                _log.info("%s: attempt %d lost a race (%s); retrying", what, attempt, exc)
                time.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Driver errors as one-sentence ClinicDbErrors (``retryable`` when a retry may pass)."""
        try:
            yield
        except ClinicDbError:
            raise
        except sqlite3.Error as exc:
            text = str(exc)
            err = ClinicDbError(f"the clinic database {self.url} failed: {_one_line(exc)}")
            err.retryable = "locked" in text or "busy" in text
            raise err from exc
        except Exception as exc:
            if not self.postgres or not _is_psycopg_error(exc):
                raise
            err = ClinicDbError(
                f"the clinic database {redacted(self.url)} failed: {_one_line(exc)}"
            )
            err.retryable = _pg_retryable(exc)
            raise err from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

    def __enter__(self) -> ClinicDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema ---

    def _schema_version(self) -> int:
        if self.postgres:
            found = self.query("SELECT to_regclass('schema_version') IS NOT NULL")[0][0]
        else:
            found = bool(self.query("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'"))
        if not found:
            return 0
        value = self.query("SELECT MAX(version) FROM schema_version")[0][0]
        return int(value or 0)

    def _migrate(self, target: int = SCHEMA_VERSION) -> None:
        """Apply the missing steps in one transaction (under a lock: one migrator at a time)."""
        with self.transaction():
            if self.postgres:
                self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))
            self.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, applied_utc TEXT NOT NULL)"
            )
            current = int(self.query("SELECT MAX(version) FROM schema_version")[0][0] or 0)
            for step in range(current, target):
                for statement in self._statements(MIGRATIONS[step]):
                    self.execute(statement)
                self.execute(
                    "INSERT INTO schema_version (version, applied_utc) VALUES (?, ?)",
                    (step + 1, now_utc()),
                )
                _log.info("clinic database migrated to schema %d", step + 1)
        if current < target:
            self.migrated_from = current
        self.version = max(current, target)

    def _statements(self, step: tuple[str, ...] | PerEngine) -> tuple[str, ...]:
        if isinstance(step, PerEngine):
            return step.postgres if self.postgres else step.sqlite
        return step

    def defer_foreign_keys(self) -> None:
        """Check this transaction's references at its commit, not at each statement (an
        import's records name its `imports` row, written last). PostgreSQL: the records'
        reference to imports only, deferrable from migration 9."""
        assert self._in_tx, "only inside a transaction"
        if self.postgres:
            self.execute("SET CONSTRAINTS records_import_id_fkey DEFERRED")
        else:
            self.execute("PRAGMA defer_foreign_keys = ON")


def _one_line(exc: BaseException) -> str:
    """A driver's message on one line (the CLI prints one sentence)."""
    _log.info("clinic database error", exc_info=exc)
    return " ".join(str(exc).split())


def _connect_sqlite(url: str) -> sqlite3.Connection:
    path = Path(url.removeprefix("sqlite://")).expanduser()  # sqlite:///abs/path or a path
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    fresh = not path.exists()
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        _use_wal(conn)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise ClinicDbError(
            f"the clinic database {path} cannot be opened ({_one_line(exc)})"
        ) from exc
    if fresh:
        os.chmod(path, 0o600)
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to write-ahead logging, waiting out another program doing the same.

    Changing the journal mode needs the database to itself, and SQLite answers "database is
    locked" at once (without its busy timeout) while another connection opens or creates the
    file; so the switch is retried with a random pause until BUSY_TIMEOUT_S has passed.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            busy = "locked" in text or "busy" in text
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _connect_postgres(url: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ClinicDbError(
            "PostgreSQL needs the psycopg package: pip install 'liv-platform[clinic]'"
        ) from exc
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise ClinicDbError(
            f"the clinic database {redacted(url)} cannot be reached ({_one_line(exc)}); check "
            "the URL and that the server is running"
        ) from exc


def _is_psycopg_error(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, psycopg.Error)


def _pg_retryable(exc: BaseException) -> bool:
    import psycopg.errors as pe

    return isinstance(
        exc,
        pe.SerializationFailure | pe.DeadlockDetected | pe.LockNotAvailable | pe.UniqueViolation,
    )
