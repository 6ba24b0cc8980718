"""SessionLog storage: :class:`SessionStore`, the device's session log, assembled from its parts.

Each part is a module of its own: ``store_schema`` (the SQL schema and its migrations),
``store_open`` (opening, durability settings, transactions: the typed base :class:`_StoreBase`),
``store_read`` (records, listings, summaries, minutes per slot), ``store_write`` (start,
checkpoint, finish and chain, recovery of interrupted sessions) and ``store_vouch`` (the plate's
countersignatures). This module holds what audits the whole log: :meth:`SessionStore.verify`
(every hash chain) and the check for a clock set back between sessions
(:meth:`SessionStore.set_back`, :meth:`SessionStore.clock_behind`). Import from
``sessions.log``; the names other modules import from here (``__all__``) stay importable
from here, and ``set_back_records`` is looked up here (tests patch it); the private helpers
that moved (``_KIND_SQL``, ``_NOTE_TEXT``, ``_STORAGE_FAILURES``, the logger) are in the parts."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sessions.log.chain import (
    _content_bad,
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
from sessions.log.errors import _translate
from sessions.log.fields import (
    _raw_from_row,
)
from sessions.log.records import (
    EXPORT_FIELDS,
    GENESIS_HASH,
    BadRecord,
    SessionStatus,
    VerifyResult,
)
from sessions.log.store_open import _tighten, default_db_path
from sessions.log.store_schema import _MIGRATIONS, _SCHEMA_V1
from sessions.log.store_vouch import _Vouchers
from sessions.log.store_write import _Writing

# What this module held before the split, importable from here as before (sessions.log, exchange
# and tests import them).
__all__ = [
    "_ALL_BUT_ENVELOPE",
    "_MIGRATIONS",
    "_SCHEMA_V1",
    "SessionStore",
    "_tighten",
    "default_db_path",
]

_ALL_BUT_ENVELOPE = tuple(f for f in EXPORT_FIELDS if f != "envelope")

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


class SessionStore(_Writing, _Vouchers):
    """The device's session log: one SQLite file, WAL, synchronous=FULL, private to the user."""

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
