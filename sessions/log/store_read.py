"""Reading the session log: one record (:meth:`get`), listings by local date and slot (full
records with :meth:`sessions`, envelope-free :meth:`summaries`), the minutes at dose per slot
(:meth:`slot_minutes`) and the latest session of a slot, plus assembling a running session's
envelope from its checkpoint chunks and turning rows into typed records. :class:`_Reading` is a
part of :class:`~sessions.log.storage.SessionStore`; writing builds on it."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from sessions.log.errors import _invalid, _translate
from sessions.log.fields import (
    _raw_from_row,
    _record_from_raw,
    _summary_from_raw,
)
from sessions.log.records import (
    SUMMARY_FIELDS,
    LogError,
    LogErrorReason,
    SessionKind,
    SessionRecord,
    SessionStatus,
    SessionSummary,
)
from sessions.log.store_open import _StoreBase
from sessions.log.store_schema import _KIND_SQL


class _Reading(_StoreBase):
    """The store's reads: rows to typed records, listings, running envelopes assembled."""

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
