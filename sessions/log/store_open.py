"""Opening the session log: where it lives by default, creating, refusing or migrating the
SQLite file, its durability settings (WAL, synchronous=FULL, private to the user), closing it,
and the transactions every other part of the store runs in (:meth:`_StoreBase._write`,
:meth:`_StoreBase._read`). :class:`_StoreBase` is the typed base the store's other parts
(``store_read``, ``store_write``, ``store_vouch``, ``storage``) build on; it holds the state
they share (connection, lock, liveness locks, what the opened schema has)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from firmware_bridge.userdirs import user_data_dir
from sessions.log.errors import _translate
from sessions.log.locks import _SessionLocks
from sessions.log.records import (
    ENV_DB,
    SCHEMA_VERSION,
    SUMMARY_FIELDS,
    LogError,
    LogErrorReason,
)
from sessions.log.store_schema import _MIGRATIONS, _SCHEMA_V1

# The store's one logger, named as before it was split into parts (log settings that pick
# it by name keep working).
_log = logging.getLogger("sessions.log.storage")


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


class _StoreBase:
    """The open session log (one SQLite file, WAL, synchronous=FULL, private to the user) and
    its transactions: the base of every part of :class:`~sessions.log.storage.SessionStore`."""

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

    # --- shared by the parts ---

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
