"""The session log's SQL schema: the tables, indexes and triggers a new log is created with
(schema 1, :data:`_SCHEMA_V1`) and the migrations (:data:`_MIGRATIONS`) that bring any log, new
or old, up to :data:`~sessions.log.records.SCHEMA_VERSION` step by step, plus the SQL fragment
that counts a record from before kinds existed as therapy. Plain data, no code: the store
(:mod:`sessions.log.store_open`) runs it; docs/log-format.md describes it for auditors."""

from __future__ import annotations

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
