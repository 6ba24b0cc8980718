"""What the plate vouches for (protocol 2.1; the checks are in :mod:`sessions.log.vouch`): the
records awaiting the plate's countersignature, storing a countersignature (checked first) or a
note saying why a record has none, one phrase per record for reports, and the streamed check of
every countersignature and of the counters' continuity. :class:`_Vouchers` is a part of
:class:`~sessions.log.storage.SessionStore`."""

from __future__ import annotations

import sqlite3

from sessions.log.errors import _invalid, _translate
from sessions.log.fields import (
    _text,
)
from sessions.log.store_open import _StoreBase
from sessions.log.vouch import (
    LEGACY_TEXT,
    Pin,
    PlateState,
    TrustResult,
    Voucher,
    check_plate,
    check_vouchers,
)


class _Vouchers(_StoreBase):
    """The store's countersignatures: awaiting, stored, noted as missing, verified."""

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
