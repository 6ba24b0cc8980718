"""Writing sessions to the log: the ``running`` row of a session that starts, its checkpoints
(measured figures replaced, envelope points appended as one ``envelope_chunks`` row), its end
(finished, hashed into this log's chain, read back and re-hashed before commit), the note left
for recovery when the end cannot be written, and the recovery of sessions whose process died
(``interrupted``). :class:`_Writing` is a part of :class:`~sessions.log.storage.SessionStore`."""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from sessions.log.canonical import canonical_json, record_hash
from sessions.log.chain import (
    _content_problem,
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
    _text,
    _utc,
    _zone,
)
from sessions.log.records import (
    _HEX64,
    FINAL_STATUSES,
    GENESIS_HASH,
    LOG_FAILURE_REASON,
    RECOVERY_REASON,
    LogError,
    LogErrorReason,
    SessionKind,
    SessionRecord,
    SessionStatus,
)
from sessions.log.store_read import _Reading
from sessions.log.vouch import (
    AWAITING_REASON,
)

# The store's one logger, named as before it was split into parts (log settings that pick
# it by name keep working).
_log = logging.getLogger("sessions.log.storage")

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


class _Writing(_Reading):
    """The store's writes: start, checkpoint, finish and chain, recover interrupted sessions."""

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
