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
(per-session liveness locks), ``storage`` (:class:`SessionStore`, assembled from its parts
``store_schema``, ``store_open``, ``store_read``, ``store_write`` and ``store_vouch``: open, write,
recover, read, verify) and ``exchange`` (:class:`SessionLog`: the store plus export and import).
Import every name from ``sessions.log``.

Errors::

    LivError                 (firmware_bridge.errors) root of every error raised on purpose
    └── LogError             anything about the session log; carries ``reason``
                             (:class:`LogErrorReason`), ``path`` and, for a refused import,
                             ``bad_record`` (:class:`BadRecord`)

Every message is one sentence a patient can read; no sqlite3 or OS exception escapes.
"""

from __future__ import annotations

# Every name of the former single module sessions/log.py is importable from here, the private
# helpers included (imported "as" themselves), so code written against it keeps working.
from sessions.log.canonical import _canon as _canon
from sessions.log.canonical import _float_text as _float_text
from sessions.log.canonical import (
    canonical_json,
    number_text,
    record_hash,
)
from sessions.log.chain import _bad as _bad
from sessions.log.chain import _content_bad as _content_bad
from sessions.log.chain import _content_problem as _content_problem
from sessions.log.chain import _Entry as _Entry
from sessions.log.chain import _index_key as _index_key
from sessions.log.chain import _link_bad as _link_bad
from sessions.log.chain import _verify_chains as _verify_chains
from sessions.log.errors import (
    _explain_os as _explain_os,
)
from sessions.log.errors import (
    _explain_sqlite as _explain_sqlite,
)
from sessions.log.errors import _invalid as _invalid
from sessions.log.errors import (
    _translate as _translate,
)
from sessions.log.exchange import (
    FORMULA_TRIGGERS,
    SessionLog,
    spreadsheet_text,
)
from sessions.log.exchange import _bad_file as _bad_file
from sessions.log.exchange import _csv_cell as _csv_cell
from sessions.log.fields import _columns_from_raw as _columns_from_raw
from sessions.log.fields import _free_json as _free_json
from sessions.log.fields import _iso as _iso
from sessions.log.fields import _measured_columns as _measured_columns
from sessions.log.fields import _optional_quantize as _optional_quantize
from sessions.log.fields import _parse_moment as _parse_moment
from sessions.log.fields import _quantize as _quantize
from sessions.log.fields import _raw_from_row as _raw_from_row
from sessions.log.fields import _record_from_raw as _record_from_raw
from sessions.log.fields import _summary_from_raw as _summary_from_raw
from sessions.log.fields import _text as _text
from sessions.log.fields import _utc as _utc
from sessions.log.fields import _want as _want
from sessions.log.fields import _zone as _zone
from sessions.log.locks import _SessionLocks as _SessionLocks
from sessions.log.locks import running_locks_folder
from sessions.log.records import _HEX64 as _HEX64
from sessions.log.records import _JSON_COLUMNS as _JSON_COLUMNS
from sessions.log.records import (
    CHECKPOINT_INTERVAL_S,
    DETAIL_FIELDS,
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
    OPTIONAL_FIELDS,
    RECOVERY_REASON,
    SCHEMA_VERSION,
    SUMMARY_FIELDS,
    BadRecord,
    ImportResult,
    LogError,
    LogErrorReason,
    SessionKind,
    SessionRecord,
    SessionStatus,
    SessionSummary,
    VerifyResult,
)
from sessions.log.storage import _MIGRATIONS as _MIGRATIONS
from sessions.log.storage import _SCHEMA_V1 as _SCHEMA_V1
from sessions.log.storage import (
    SessionStore,
    default_db_path,
)
from sessions.log.storage import _tighten as _tighten
from sessions.log.vouch import (
    AWAITING_REASON,
    LEGACY_TEXT,
    PINS_FILE,
    DevicePins,
    Pin,
    PlateState,
    TrustResult,
    Voucher,
)

__all__ = [
    "AWAITING_REASON",
    "CHECKPOINT_INTERVAL_S",
    "DETAIL_FIELDS",
    "ENVELOPE_G_DECIMALS",
    "ENVELOPE_T_DECIMALS",
    "ENV_DB",
    "EXPORT_FIELDS",
    "FINAL_STATUSES",
    "FORMULA_TRIGGERS",
    "GENESIS_HASH",
    "HASH_EXCLUDED",
    "LEGACY_TEXT",
    "LOG_FAILURE_REASON",
    "MAX_NUMBER",
    "MAX_SAFE_INTEGER",
    "NUMBER_DECIMALS",
    "OPTIONAL_FIELDS",
    "PINS_FILE",
    "RECOVERY_REASON",
    "SCHEMA_VERSION",
    "SUMMARY_FIELDS",
    "BadRecord",
    "DevicePins",
    "ImportResult",
    "LogError",
    "LogErrorReason",
    "Pin",
    "PlateState",
    "SessionKind",
    "SessionLog",
    "SessionRecord",
    "SessionStatus",
    "SessionStore",
    "SessionSummary",
    "TrustResult",
    "VerifyResult",
    "Voucher",
    "canonical_json",
    "default_db_path",
    "number_text",
    "record_hash",
    "running_locks_folder",
    "spreadsheet_text",
]
