"""Session log: one SQLite file that records every therapy session, durable and tamper-evident.

A session row is written when the plate starts (status ``running``), checkpointed by the caller at
least every :data:`CHECKPOINT_INTERVAL_S` seconds, and closed by :meth:`SessionLog.finish_session`.
A finished record is chained: ``record_hash = sha256(prev_hash + canonical_json(record))`` in a
sequence ``chain_index`` 0, 1, 2, ... per origin log, and is never changed again. Records imported
from other devices keep their own chain. The format, the hashing rule and the durability settings
are documented for auditors in docs/log-format.md.

The package is split along its seams: ``records`` (types, codes, constants), ``canonical``
(canonical JSON and the hash), ``errors`` (sqlite3/OS errors as one sentence), ``fields`` (value
checks and row/raw/typed conversion), ``chain`` (hash-chain verification), ``locks``
(per-session liveness locks), ``storage`` (:class:`SessionStore`: open, write, recover, read,
verify) and ``exchange`` (:class:`SessionLog`: the store plus export and import).
Import every name from ``sessions.log``.

Errors::

    LivError                 (firmware_bridge.errors) root of every error raised on purpose
    └── LogError             anything about the session log; carries ``reason``
                             (:class:`LogErrorReason`), ``path`` and, for a refused import,
                             ``bad_record`` (:class:`BadRecord`)

Every message is one sentence a patient can read; no sqlite3 or OS exception escapes.
"""

from __future__ import annotations

from sessions.log.canonical import (
    canonical_json,
    number_text,
    record_hash,
)
from sessions.log.errors import (
    _explain_os as _explain_os,
)
from sessions.log.errors import (
    _explain_sqlite as _explain_sqlite,
)
from sessions.log.errors import (
    _translate as _translate,
)
from sessions.log.exchange import (
    FORMULA_TRIGGERS,
    SessionLog,
    spreadsheet_text,
)
from sessions.log.records import (
    CHECKPOINT_INTERVAL_S,
    ENV_DB,
    ENVELOPE_G_DECIMALS,
    ENVELOPE_T_DECIMALS,
    EXPORT_FIELDS,
    FINAL_STATUSES,
    GENESIS_HASH,
    HASH_EXCLUDED,
    LOG_FAILURE_REASON,
    MAX_NUMBER,
    MAX_SAFE_INTEGER,
    NUMBER_DECIMALS,
    RECOVERY_REASON,
    SCHEMA_VERSION,
    BadRecord,
    ImportResult,
    LogError,
    LogErrorReason,
    SessionRecord,
    SessionStatus,
    VerifyResult,
)
from sessions.log.storage import (
    SessionStore,
    default_db_path,
)

__all__ = [
    "CHECKPOINT_INTERVAL_S",
    "ENVELOPE_G_DECIMALS",
    "ENVELOPE_T_DECIMALS",
    "ENV_DB",
    "EXPORT_FIELDS",
    "FINAL_STATUSES",
    "FORMULA_TRIGGERS",
    "GENESIS_HASH",
    "HASH_EXCLUDED",
    "LOG_FAILURE_REASON",
    "MAX_NUMBER",
    "MAX_SAFE_INTEGER",
    "NUMBER_DECIMALS",
    "RECOVERY_REASON",
    "SCHEMA_VERSION",
    "BadRecord",
    "ImportResult",
    "LogError",
    "LogErrorReason",
    "SessionLog",
    "SessionRecord",
    "SessionStatus",
    "SessionStore",
    "VerifyResult",
    "canonical_json",
    "default_db_path",
    "number_text",
    "record_hash",
    "spreadsheet_text",
]
