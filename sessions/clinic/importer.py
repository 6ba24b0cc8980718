"""Patients' exports into the clinic database: verified, idempotent, safe to run concurrently.

``verify_export`` is the one seam where an export is judged before the clinic takes any of it
(today: the log's own shape checks and hash-chain verification; the device-signature checks of
issue 10 belong there too). ``import_export`` then stores each record once: the unique keys
(log_id, chain_index) and session_id make a second import of the same record a no-op, and a
record that contradicts one already held (a *conflict*) refuses the whole file. A chain that
ends before the copy the clinic holds (*rollback*) or a patient's new chain beside an old one
(*new_chain*) is imported but recorded as a problem, shown on the overview as an integrity flag.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from firmware_bridge.errors import LivError
from sessions.clinic.db import ClinicDb, ClinicDbError, now_utc
from sessions.clinic.plates import PlateRegistry, check_export_vouchers
from sessions.log.clockorder import PLATE, SetBack, TimedRecord, set_back_records, span_text
from sessions.log.exchange import ImportLine, import_records, read_lines, scan_import
from sessions.log.fields import _record_from_raw, _summary_from_raw
from sessions.log.records import LogError, SessionRecord, SessionSummary
from sessions.log.vouch import Voucher, key_name

_log = logging.getLogger(__name__)

THERAPY = "therapy"  # the record kind that counts in adherence (issue 10: simulated never does)
_DETAIL = frozenset({"envelope", "protocol_json"})  # kept only in record_json / protocols
_CHUNK = 400  # ids per IN (...) query
CLOCK_SET_BACK = "clock_set_back"  # a problem: records dated before one recorded before them


class ImportRefusedError(LivError):
    """An export the clinic did not take; ``kind`` says why (unverified, conflict)."""

    def __init__(self, message: str, kind: str, patients: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.patients = tuple(patients)  # whose records the file claimed to hold, if known


@dataclass(frozen=True)
class VerifiedExport:
    """An export file that passed verification: a small summary of every record, no record.

    The records themselves are read again from the file when they are stored (``_batches``),
    a batch at a time; a line that changed since it was verified refuses the file.
    """

    path: Path
    file_sha256: str
    records: tuple[ImportLine, ...]  # in file order (each chain in chain order)
    heads: dict[str, str]  # log_id -> record_hash of the chain's last record in the file
    duplicates_in_file: int


@dataclass
class ImportOutcome:
    """What one file's import did."""

    path: Path
    added: int = 0
    duplicates: int = 0
    patients: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)  # reported, not refused
    notes: list[str] = field(default_factory=list)  # said to the clinician, about the clinic
    refused: str | None = None  # the sentence saying why nothing was taken


def verify_export(path: Path, registry: PlateRegistry) -> VerifiedExport:
    """Check an export before the clinic takes any of it: the one seam every import goes through.

    Raises ImportRefusedError for a file that is not an export, a chain that does not verify
    from its genesis, two different records claiming one place, a chain's records out of
    order (kind ``unverified``), and for a record its plate does not vouch for: no voucher or a
    voucher that does not verify (``unvouched``), an unregistered plate (``unregistered``),
    counters that skip or repeat (``gap``) or that the clinic holds for other records
    (``conflict``). The file is read once, a line at a time (``scan_import``): memory holds a
    summary per record, never the records.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            # the clinic judges adherence against each therapy record's prescription
            scan = scan_import(read_lines(stream, digest), valid_prescriptions=True)
    except OSError as exc:
        raise ImportRefusedError(
            f"{path} cannot be read ({exc.strerror or exc}); nothing was imported from it",
            "unverified",
        ) from exc
    except UnicodeDecodeError:
        raise ImportRefusedError(
            f"{path} is not a liv export (not UTF-8 text); nothing was imported from it",
            "unverified",
        ) from None
    except LogError as exc:
        raise ImportRefusedError(f"{path}: {exc}", "unverified") from exc
    bad = scan.bad
    if bad is not None:
        raise ImportRefusedError(
            f"{path}: record {bad.chain_index} of log {bad.chain} (session {bad.session_id}) "
            f"does not verify: {bad.what}; nothing was imported from it",
            "unverified",
            sorted(scan.patients),
        )
    records = tuple(scan.records)
    refusal = check_export_vouchers(((_fields(r), r.voucher) for r in records), registry)
    if refusal is not None:
        raise ImportRefusedError(
            f"{path}: {refusal.sentence}; nothing was imported from it",
            refusal.kind,
            sorted(scan.patients),
        )
    return VerifiedExport(path, digest.hexdigest(), records, scan.heads, scan.duplicates)


def _fields(line: ImportLine) -> dict[str, Any]:
    """The record fields the plate checks name (check_export_vouchers)."""
    return {
        "device_id": line.device_id,
        "chain_index": line.chain_index,
        "log_id": line.log_id,
        "session_id": line.session_id,
        "record_hash": line.record_hash,
    }


def import_export(db: ClinicDb, path: Path) -> ImportOutcome:
    """Verify and store one export; refresh the overview rows of its patients."""
    outcome = ImportOutcome(path)
    try:
        verified = verify_export(path, PlateRegistry(db))
    except ImportRefusedError as exc:
        _refused(outcome, _record_refusal(db, path, _file_sha256(path), exc), exc)
        return outcome
    try:
        db.retrying(lambda: _store(db, verified, outcome), f"import {path}")
    except ImportRefusedError as exc:
        patients = [r.patient_id for r in verified.records]
        _refused(outcome, _record_refusal(db, path, verified.file_sha256, exc, patients), exc)
        outcome.added = 0
        return outcome
    for patient in outcome.patients:
        refresh_patient(db, patient)
    _log.info("imported %s: %d added, %d already held", path, outcome.added, outcome.duplicates)
    return outcome


def _file_sha256(path: Path) -> str:
    """A refused file's SHA-256 (empty when it cannot be read or is not a regular file, as a
    pipe): the same file refused again is the same problem, which an acknowledgement keeps
    closed (sessions/clinic/problems.py)."""
    digest = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return ""  # a pipe the check emptied, /dev/zero that never ends: its sentence tells
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def _refused(outcome: ImportOutcome, refused_before: str | None, exc: ImportRefusedError) -> None:
    outcome.refused = str(exc)
    if refused_before is not None:
        outcome.notes.append(
            f"this file was already refused for the same reason on {refused_before}; "
            "nothing new was recorded ('liv clinic problems --all' shows it)"
        )


def _record_refusal(
    db: ClinicDb,
    path: Path,
    file_sha256: str,
    exc: ImportRefusedError,
    claimed: Iterable[str] = (),
) -> str | None:
    """A refused file is remembered (imports + problems) so the overview shows it, unless the
    refusal repeats one recorded before: then nothing is written, and when it was first
    recorded is returned (a script importing the same refused file daily grows nothing)."""
    named: list[str | None] = [*sorted(set(claimed) | set(exc.patients))]
    patients = named or [None]
    import_id = str(uuid.uuid4())

    def work() -> str | None:
        with db.transaction():
            _one_check_at_a_time(db, file_sha256)
            found = [(exc.kind, patient, None, None, str(exc)) for patient in patients]
            # under another name it is news: where else the refused file was found
            before = _recorded_before(db, "refused", file_sha256, found, str(path))
            if before is not None:
                return before
            db.execute(
                "INSERT INTO imports (import_id, file_name, file_sha256, imported_utc, outcome,"
                " added, duplicates, detail) VALUES (?, ?, ?, ?, 'refused', 0, 0, ?)",
                (import_id, str(path), file_sha256, now_utc(), str(exc)),
            )
            for patient in patients:
                db.execute(
                    "INSERT INTO problems (problem_id, import_id, kind, patient_id, detail,"
                    " found_utc) VALUES (?, ?, ?, ?, ?, ?)",
                    (str(uuid.uuid4()), import_id, exc.kind, patient, str(exc), now_utc()),
                )
            return None

    before = db.retrying(work, f"record the refusal of {path}")
    if before is not None:
        _log.info("%s: refused again as before (%s); nothing recorded", path, before)
        return before
    for patient in patients:
        if patient is not None and _held(db, patient):
            refresh_patient(db, patient)
    return None


def _one_check_at_a_time(db: ClinicDb, file_sha256: str) -> None:
    """Two programs importing the same file at once record it once: on PostgreSQL the second
    waits here, until the first commits, to look for an earlier import of the file (SQLite's
    write transactions already take turns)."""
    if db.postgres:
        db.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"import {file_sha256}",)
        )


def _recorded_before(
    db: ClinicDb,
    outcome: str,
    file_sha256: str,
    problems: Sequence[tuple[str, str | None, str | None, int | None, str]],
    file_name: str | None = None,
) -> str | None:
    """When an import of this very file (SHA-256; ``file_name``: under this name too) with this
    outcome was recorded that found every one of ``problems`` (the same problem: kind, patient,
    log, record and sentence, docs/clinic.md "Found again"): the earliest such problem's time,
    or the import's when there is none; None when anything is new. A sentence that differs
    (the database held other records) is new information."""
    same_file = ["i.file_sha256 = ?", "i.outcome = ?"]
    file_params: list[Any] = [file_sha256, outcome]
    if file_name is not None:
        same_file.append("i.file_name = ?")
        file_params.append(file_name)
    held = db.query(
        f"SELECT MIN(i.imported_utc) FROM imports i WHERE {' AND '.join(same_file)}",
        file_params,
    )[0][0]
    if held is None:
        return None
    times: list[str] = []
    for kind, patient, log_id, index, detail in problems:
        where = [*same_file, "p.kind = ?", "p.detail = ?"]
        params = [*file_params, kind, detail]
        for column, value in (("patient_id", patient), ("log_id", log_id), ("chain_index", index)):
            where.append(f"p.{column} IS NULL" if value is None else f"p.{column} = ?")
            params += [] if value is None else [value]
        first = db.query(
            "SELECT MIN(p.found_utc) FROM problems p JOIN imports i ON i.import_id = p.import_id"
            f" WHERE {' AND '.join(where)}",
            params,
        )[0][0]
        if first is None:
            return None
        times.append(str(first))
    return min(times, default=str(held))


def _held(db: ClinicDb, patient_id: str) -> bool:
    return bool(db.query("SELECT 1 FROM records WHERE patient_id = ? LIMIT 1", (patient_id,)))


def _row(raw: Mapping[str, Any], import_id: str, clock_ahead: bool = False) -> tuple[Any, ...]:
    summary = {k: v for k, v in raw.items() if k not in _DETAIL}
    return (
        raw["log_id"],
        raw["chain_index"],
        raw["session_id"],
        raw["prev_hash"],
        raw["record_hash"],
        raw["patient_id"],
        raw["device_id"],
        raw["firmware_version"],
        raw["protocol_sha256"],
        raw["started_utc"],
        raw["local_date"],
        raw["slot"],
        raw["status"],
        raw["minutes_prescribed"],
        raw["minutes_at_dose"],
        raw["target_g"],
        raw["mean_error_pct"],
        _json(summary),
        _json({k: v for k, v in raw.items() if k != "envelope"}),  # envelopes: own table
        import_id,
        str(raw.get("kind") or THERAPY),
        int(clock_ahead),
    )


def _json(value: Any) -> str:
    """Stored JSON: exact (floats round-trip), compact, fast; canonical_json is for hashing."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_INSERT_RECORD = (
    "INSERT INTO records (log_id, chain_index, session_id, prev_hash, record_hash, patient_id,"
    " device_id, firmware_version, protocol_sha256, started_utc, local_date, slot, status,"
    " minutes_prescribed, minutes_at_dose, target_g, mean_error_pct, summary_json, record_json,"
    " import_id, kind, clock_ahead)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)


_BATCH = 200  # records read back from the file and written at a time ...
_BATCH_ENVELOPE_CHARS = 4_000_000  # ... or fewer, once their envelopes reach this (~40 sessions)


def _store(db: ClinicDb, verified: VerifiedExport, outcome: ImportOutcome) -> None:
    """One transaction: insert what is new, prove the rest is identical, note problems.

    The records are read again from the file and written in batches of ``_BATCH``, so memory
    holds one batch of records, whatever the file's size; a refusal anywhere rolls it all back.
    """
    import_id = str(uuid.uuid4())
    records = verified.records
    log_ids = sorted({r.log_id for r in records})
    patients = sorted({r.patient_id for r in records})
    problems: list[tuple[str, str, str, int | None, str]] = []
    with db.transaction():
        # the import's row is written once, last, with its counts (imports is append-only:
        # migration 9); its records name it before it exists, checked at the commit
        db.defer_foreign_keys()
        started = now_utc()
        held_before = _chain_lengths(db, log_ids)
        patient_logs = _logs_of(db, patients)
        added = 0
        for batch in _batches(verified, import_id):
            _store_batch(db, batch)
            added += _check_held(db, batch.lines, import_id)
        duplicates = len(records) - added + verified.duplicates_in_file
        last_of: dict[str, ImportLine] = {}
        for r in records:
            if r.log_id not in last_of or r.chain_index > last_of[r.log_id].chain_index:
                last_of[r.log_id] = r
        for log_id in log_ids:
            last = last_of[log_id].chain_index
            patient = last_of[log_id].patient_id
            before = held_before.get(log_id)
            if before is not None and before - 1 > last:
                problems.append(
                    (
                        "rollback",
                        patient,
                        log_id,
                        last,
                        f"the export ends at record {last} of log {log_id}, but the clinic "
                        f"already holds records up to {before - 1}: the patient's log lost "
                        f"{before - 1 - last} record(s) (deleted, or an older copy restored)",
                    )
                )
            others = sorted(patient_logs.get(patient, set()) - {log_id})
            if before is None and others:
                problems.append(
                    (
                        "new_chain",
                        patient,
                        log_id,
                        None,
                        f"patient {patient} has a new log {log_id} beside {', '.join(others)}: "
                        "a new plate, or a log that was emptied or replaced",
                    )
                )
        problems += _home_clocks(db, records, import_id)
        problems += _clocks_set_back(db, records, patients, import_id)
        problems += _shared_plates(db, records, import_id)
        # the unsigned-prescription check is on once the database holds a signed prescription
        # (asked once here); while it holds none, the therapy records added go unchecked
        if db.query("SELECT 1 FROM prescriptions LIMIT 1"):
            problems += _unsigned_prescriptions(db, import_id)
            unchecked = 0
        else:
            unchecked = _therapy_added(db, import_id)
        problems += _simulator_therapy(db, import_id)
        # the same file again, adding nothing and finding only what its earlier import found
        # (a daily import script): nothing to record
        seen = None
        if not added:
            _one_check_at_a_time(db, verified.file_sha256)
            seen = _recorded_before(db, "imported", verified.file_sha256, problems)
        if seen is None:
            _record_import(db, verified, import_id, started, added, duplicates, problems)
    outcome.added = added
    outcome.duplicates = duplicates
    outcome.patients = tuple(patients)
    if unchecked:
        outcome.notes.append(
            f"{unchecked} therapy record(s) arrived, but this database holds no prescription "
            "signed with 'liv protocol sign', so no record's prescription was checked: sign "
            "and import with the same database (--db, or LIV_CLINIC_DB for both)"
        )
    outcome.problems = list(dict.fromkeys(p[4] for p in problems))  # a sentence once
    if seen is not None and problems:
        outcome.notes.append(
            f"this file was imported before with the same result: the problem(s) above were "
            f"recorded on {seen}; nothing new was recorded"
        )


def _record_import(
    db: ClinicDb,
    verified: VerifiedExport,
    import_id: str,
    started: str,
    added: int,
    duplicates: int,
    problems: Sequence[tuple[str, str, str, int | None, str]],
) -> None:
    """The import's row, once, with its counts (imports is append-only), and its problems."""
    db.execute(
        "INSERT INTO imports (import_id, file_name, file_sha256, imported_utc, outcome,"
        " added, duplicates, detail) VALUES (?, ?, ?, ?, 'imported', ?, ?, ?)",
        (
            import_id,
            str(verified.path),
            verified.file_sha256,
            started,
            added,
            duplicates,
            "; ".join(dict.fromkeys(p[4] for p in problems)),
        ),
    )
    for kind, patient, log_id, index, detail in problems:
        db.execute(
            "INSERT INTO problems (problem_id, import_id, kind, patient_id, log_id,"
            " chain_index, detail, found_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (str(uuid.uuid4()), import_id, kind, patient, log_id, index, detail, now_utc()),
        )


def _home_clocks(
    db: ClinicDb, records: Sequence[ImportLine], import_id: str
) -> list[tuple[str, str, str, int | None, str]]:
    """A problem per patient for the records this import added whose times show the home
    computer's clock was wrong (``clock_problem``): stored, so the log can still be exported,
    and shown; those dated ahead are never counted in adherence."""
    wrong = {r.session_id: r for r in records if r.clock is not None}
    added: set[str] = set()
    for part in _chunks(sorted(wrong)):
        marks = ", ".join("?" * len(part))
        added.update(
            str(s)
            for (s,) in db.query(
                f"SELECT session_id FROM records WHERE import_id = ? AND session_id IN ({marks})",
                (import_id, *part),
            )
        )
    by_patient: dict[str, list[ImportLine]] = {}
    for session_id in sorted(added):
        line = wrong[session_id]
        by_patient.setdefault(line.patient_id, []).append(line)
    found: list[tuple[str, str, str, int | None, str]] = []
    for patient, lines in sorted(by_patient.items()):
        lines.sort(key=lambda r: (r.log_id, r.chain_index))
        ahead = sum(r.clock_ahead for r in lines)
        uncounted = f"; {ahead} of them, dated ahead, not counted in adherence" if ahead else ""
        found.append(
            (
                "home_clock",
                patient,
                lines[0].log_id,
                lines[0].chain_index,
                f"patient {patient}: {len(lines)} session(s) recorded while the home computer's "
                f"clock was wrong (record {lines[0].chain_index}: {lines[0].clock}){uncounted}; "
                "set the home computer's clock to the right time (automatic time)",
            )
        )
    return found


def _clocks_set_back(
    db: ClinicDb, records: Sequence[ImportLine], patients: Sequence[str], import_id: str
) -> list[tuple[str, str, str, int | None, str]]:
    """A problem per patient for the records found dated before a record recorded before them
    (the home computer's clock set back between sessions) once this import's records are held:
    judged over every record of the patient the clinic holds, in the plate's countersignature
    order and each log's chain order (sessions/log/clockorder.py), one query per patient;
    the times of the file's records come from its scan, so only a held record the file does
    not repeat (an earlier export's) is read from its stored summary.
    Such a record is stored (a session that happened) and credited to no day."""
    in_file = {r.session_id: r for r in records}
    found: list[tuple[str, str, str, int | None, str]] = []
    for patient in patients:
        timed: list[TimedRecord] = []
        theirs: set[str] = set()
        rows = db.query(
            "SELECT r.session_id, r.clock_ahead, r.import_id, v.device_key, v.counter"
            " FROM records r LEFT JOIN vouchers v ON v.session_id = r.session_id"
            " WHERE r.patient_id = ?",
            (patient,),
        )
        stored = _stored_times([str(r[0]) for r in rows if str(r[0]) not in in_file], db)
        for session_id, ahead, imp, key, counter in rows:
            line = in_file.get(str(session_id))
            if line is not None and line.started_utc is not None:
                log_id, index, started, ended = (
                    line.log_id, line.chain_index, line.started_utc, line.ended_utc
                )  # fmt: skip
            else:
                log_id, index, started, ended = stored[str(session_id)]
            key_text = None if key is None else str(key)
            at = None if counter is None else int(counter)
            timed.append(
                TimedRecord(str(session_id), log_id, index, started, ended, key_text, at,
                            bool(ahead))
            )  # fmt: skip
            if imp == import_id:
                theirs.add(str(session_id))
        if not theirs:
            continue
        after = set_back_records(timed)
        if not after:
            continue
        before = set_back_records(t for t in timed if t.session_id not in theirs)
        new = [b for k, b in after.items() if k not in before]
        if new:
            found.append(_set_back_problem(patient, new))
    return found


def _stored_times(
    session_ids: Sequence[str], db: ClinicDb
) -> dict[str, tuple[str, int, datetime, datetime | None]]:
    """Log, chain index and times of held records an import's file does not repeat, from their
    stored summaries (an earlier export's records; none when the file holds the whole log)."""
    found: dict[str, tuple[str, int, datetime, datetime | None]] = {}
    for part in _chunks(sorted(session_ids)):
        marks = ", ".join("?" * len(part))
        for session_id, summary_json in db.query(
            f"SELECT session_id, summary_json FROM records WHERE session_id IN ({marks})", part
        ):
            raw = json.loads(summary_json)
            ended = raw.get("ended_utc")
            found[str(session_id)] = (
                str(raw["log_id"]),
                int(raw["chain_index"]),
                datetime.fromisoformat(raw["started_utc"]),
                None if ended is None else datetime.fromisoformat(ended),
            )
    return found


def _set_back_problem(
    patient: str, found: Sequence[SetBack]
) -> tuple[str, str, str, int | None, str]:
    """The clinician's sentence for the records of one patient found set back by an import."""
    ordered = sorted(found, key=lambda b: (b.started_utc, b.session_id))
    first = ordered[0]
    more = f"; {len(ordered) - 1} more like it" if len(ordered) > 1 else ""
    seen = "the plate countersigned it after" if first.order == PLATE else "it was logged after"
    return (
        CLOCK_SET_BACK,
        patient,
        first.log_id,
        first.chain_index,
        f"patient {patient}: {len(ordered)} session(s) are dated earlier than a session recorded "
        f"before them, so the home computer's clock was set back when they ran (record "
        f"{first.chain_index} of log {first.log_id}, session {first.session_id}, dated "
        f"{first.started_utc.isoformat(timespec='minutes')}, {span_text(first.behind)} before "
        f"session {first.earlier_session} ended, though {seen} that session{more}): kept but "
        "credited to no day in adherence; ask the patient about the computer's clock and the "
        "day these sessions really ran (or whether a clock that ran fast was put right before "
        "them: then they are honest, docs/trust.md)",
    )


def _shared_plates(
    db: ClinicDb, records: Sequence[ImportLine], import_id: str
) -> list[tuple[str, str, str, int | None, str]]:
    """A problem for each patient of a plate whose therapy periods now overlap another's.

    A plate signs any digest its host hands it, and the hash covers ``patient_id``: a patient
    who installs another patient's signed prescription records her own sessions under the
    other's name, vouched for by her own registered plate, while the other's therapy goes on.
    A plate handed on to the next patient vouches for one patient after the other: not flagged.
    Two patients whose therapy on one plate overlaps in time (first to last session, or
    interleaved) are shown, not refused, once: when this import (``import_id``, its records
    already inserted) makes the overlap.
    """
    incoming: dict[str, str] = {}
    for r in records:
        if r.kind == THERAPY:
            incoming.setdefault(r.device_id, r.log_id)
    found: list[tuple[str, str, str, int | None, str]] = []
    for device_id, log_id in sorted(incoming.items()):
        after = _overlapping(db, device_id, None)
        if not after or after <= _overlapping(db, device_id, import_id):
            continue
        everyone = sorted({p for pair in after for p in pair})
        sentence = (
            f"plate {device_id} has vouched for the therapy sessions of {len(everyone)} patients "
            f"({', '.join(everyone)}) over the same days: sessions recorded under another "
            "patient's prescription, or a plate shared; check who uses the plate"
        )
        found += [("shared_plate", patient, log_id, None, sentence) for patient in everyone]
    return found


def _overlapping(db: ClinicDb, device_id: str, without: str | None) -> set[tuple[str, str]]:
    """The pairs of patients whose therapy on this plate overlaps in time (first to last
    session), leaving out the records of import ``without``."""
    periods = [
        (str(patient), str(first), str(last))
        for patient, first, last in db.query(
            "SELECT patient_id, MIN(started_utc), MAX(started_utc) FROM records"
            " WHERE device_id = ? AND kind = ? AND clock_ahead = 0 AND import_id <> ?"
            " GROUP BY patient_id ORDER BY patient_id",
            (device_id, THERAPY, without or ""),
        )
    ]
    return {
        (a, b)
        for k, (a, a_first, a_last) in enumerate(periods)
        for (b, b_first, b_last) in periods[k + 1 :]
        if a_first <= b_last and b_first <= a_last
    }


def _simulator_therapy(db: ClinicDb, import_id: str) -> list[tuple[str, str, str, int | None, str]]:
    """A problem per patient whose therapy a plate vouches for that also vouched for simulated
    sessions, when this import added records of that plate.

    Only a simulator announces SIMULATED, and a simulator's key is a file on the computer it
    runs on: therapy signed with it is forged with the copied key, or ran on a simulator
    changed to leave the bit out (docs/trust.md).
    """
    found: list[tuple[str, str, str, int | None, str]] = []
    for device_id, patient, log_id, sessions in db.query(
        "SELECT device_id, patient_id, MIN(log_id), COUNT(*) FROM records WHERE kind = ?"
        " AND device_id IN (SELECT device_id FROM records WHERE import_id = ?)"
        " AND device_id IN (SELECT device_id FROM records WHERE kind = 'simulated')"
        " GROUP BY device_id, patient_id ORDER BY device_id, patient_id",
        (THERAPY, import_id),
    ):
        found.append(
            (
                "simulator_therapy",
                str(patient),
                str(log_id),
                None,
                f"plate {device_id} has vouched for simulated sessions, so it is a simulator, and "
                f"for {sessions} therapy session(s) of patient {patient}: a simulator's key is a "
                "file on the computer it runs on, so these sessions may be forged",
            )
        )
    return found


def _unsigned_prescriptions(
    db: ClinicDb, import_id: str
) -> list[tuple[str, str, str, int | None, str]]:
    """A problem per patient and prescription for the therapy records this import added that ran
    under a prescription the clinic never signed (asked only while the clinic has signed one).

    The home trusts whichever clinic key it is enrolled with, and that key can be replaced on
    the patient's computer: a prescription signed there (one minute once a day, within the dose
    limits) makes every genuine, plate-vouched session of it "completed at dose".
    """
    found: list[tuple[str, str, str, int | None, str]] = []
    for patient, sha, log_id, sessions, first in db.query(
        "SELECT patient_id, protocol_sha256, MIN(log_id), COUNT(*), MIN(local_date) FROM records"
        " WHERE import_id = ? AND kind = ? AND protocol_sha256 NOT IN"
        " (SELECT sha256 FROM prescriptions) GROUP BY patient_id, protocol_sha256"
        " ORDER BY patient_id, protocol_sha256",
        (import_id, THERAPY),
    ):
        found.append(
            (
                "unsigned_prescription",
                str(patient),
                str(log_id),
                None,
                f"patient {patient}: {sessions} therapy session(s) ran under a prescription this "
                f"clinic never signed (fingerprint {str(sha)[:12]}, from {first}): its adherence "
                "is judged against that prescription; the home's clinic key may have been "
                "replaced, check the prescription installed there",
            )
        )
    return found


def _therapy_added(db: ClinicDb, import_id: str) -> int:
    """The therapy records this import added (counted as unchecked while the database holds no
    signed prescription: the unsigned-prescription check is off, signing may go elsewhere)."""
    rows = db.query(
        "SELECT COUNT(*) FROM records WHERE import_id = ? AND kind = ?", (import_id, THERAPY)
    )
    return int(rows[0][0])


@dataclass
class _Batch:
    """Records ready to insert, without their parsed form: rows, protocols and envelopes."""

    lines: list[ImportLine] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    protocols: dict[str, str] = field(default_factory=dict)
    envelopes: list[tuple[str, str]] = field(default_factory=list)
    envelope_chars: int = 0

    def add(self, line: ImportLine, raw: Mapping[str, Any], import_id: str) -> None:
        self.lines.append(line)
        self.rows.append(_row(raw, import_id, line.clock_ahead))
        self.protocols.setdefault(str(raw["protocol_sha256"]), str(raw["protocol_json"]))
        if raw.get("envelope"):
            text = _json(raw["envelope"])
            self.envelopes.append((line.session_id, text))
            self.envelope_chars += len(text)


def _store_batch(db: ClinicDb, batch: _Batch) -> None:
    """Insert one batch of records: protocols, records, envelopes (until refresh_patient keeps
    the flagged ones) and vouchers; ON CONFLICT DO NOTHING, checked by the caller."""
    db.executemany(
        "INSERT INTO protocols (sha256, protocol_json) VALUES (?, ?) ON CONFLICT DO NOTHING",
        sorted(batch.protocols.items()),
    )
    db.executemany(_INSERT_RECORD, batch.rows)
    db.executemany(
        "INSERT INTO envelopes (session_id, envelope_json) VALUES (?, ?) ON CONFLICT DO NOTHING",
        batch.envelopes,
    )
    vouchers = [(line, line.voucher) for line in batch.lines if line.voucher is not None]
    db.executemany(
        "INSERT INTO vouchers (session_id, device_key, counter, prev_head, head, signature,"
        " record_hash) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (line.session_id, v.device_key, v.counter, v.prev_head, v.head, v.signature,
             line.record_hash)
            for line, v in vouchers
        ],
    )  # fmt: skip
    _check_vouchers_held(db, vouchers)


def _check_vouchers_held(db: ClinicDb, vouchers: Sequence[tuple[ImportLine, Voucher]]) -> None:
    """Every record's voucher is now held: one skipped by the unique (plate key, counter) was
    taken by another record stored at the same time (a forked log imported concurrently)."""
    held: set[str] = set()
    for part in _chunks(sorted(line.session_id for line, _ in vouchers)):
        marks = ", ".join("?" * len(part))
        held.update(
            str(s)
            for (s,) in db.query(
                f"SELECT session_id FROM vouchers WHERE session_id IN ({marks})", part
            )
        )
    for line, voucher in vouchers:
        if line.session_id not in held:
            raise ImportRefusedError(
                f"session {line.session_id} (counter {voucher.counter} of plate key "
                f"{key_name(voucher.device_key)}) conflicts with the clinic's record of that "
                "counter; nothing was imported from this file",
                "conflict",
            )


def _batches(
    verified: VerifiedExport,
    import_id: str,
    size: int = _BATCH,
    envelope_chars: int = _BATCH_ENVELOPE_CHARS,
) -> Iterator[_Batch]:
    """The file's records, read again and made ready to insert a batch at a time (the verified
    export holds none): at most ``size`` records or ``envelope_chars`` of envelopes a batch. A
    line changed since verification refuses the file."""
    batch = _Batch()
    try:
        with open(verified.path, "rb") as stream:
            for line, raw in import_records(read_lines(stream), verified.records):
                batch.add(line, raw, import_id)
                if len(batch.lines) >= size or batch.envelope_chars >= envelope_chars:
                    yield batch
                    batch = _Batch()
    except (OSError, UnicodeDecodeError, LogError) as exc:
        raise ImportRefusedError(
            f"{verified.path} changed while it was imported; nothing was imported from it, "
            "import it again",
            "unverified",
        ) from exc
    if batch.lines:
        yield batch


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for k in range(0, len(items), _CHUNK):
        yield items[k : k + _CHUNK]


def _chain_lengths(db: ClinicDb, log_ids: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for part in _chunks(log_ids):
        marks = ", ".join("?" * len(part))
        for log_id, top in db.query(
            f"SELECT log_id, MAX(chain_index) FROM records WHERE log_id IN ({marks})"
            " GROUP BY log_id",
            part,
        ):
            found[str(log_id)] = int(top) + 1
    return found


def _logs_of(db: ClinicDb, patients: Sequence[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for part in _chunks(patients):
        marks = ", ".join("?" * len(part))
        for patient, log_id in db.query(
            f"SELECT DISTINCT patient_id, log_id FROM records WHERE patient_id IN ({marks})", part
        ):
            found.setdefault(str(patient), set()).add(str(log_id))
    return found


def _check_held(db: ClinicDb, records: Sequence[ImportLine], import_id: str) -> int:
    """Every record is now held exactly as in the file; returns how many this import added.

    A record skipped by ON CONFLICT is either the same record (a duplicate) or a conflict:
    another record in its place, or its session under another place. Conflicts refuse the file.
    """
    by_session = {r.session_id: r for r in records}
    held: dict[str, tuple[str, int, str, str]] = {}
    for part in _chunks(sorted(by_session)):
        marks = ", ".join("?" * len(part))
        for session_id, log_id, index, digest, imp in db.query(
            "SELECT session_id, log_id, chain_index, record_hash, import_id FROM records"
            f" WHERE session_id IN ({marks})",
            part,
        ):
            held[str(session_id)] = (str(log_id), int(index), str(digest), str(imp))
    added = 0
    for session_id, line in by_session.items():
        place = held.get(session_id)
        want = (line.log_id, line.chain_index, line.record_hash)
        if place is None:
            other = db.query(
                "SELECT session_id FROM records WHERE log_id = ? AND chain_index = ?", want[:2]
            )
            theirs = other[0][0] if other else "?"
            raise ImportRefusedError(
                f"record {want[1]} of log {want[0]} (session {session_id}) conflicts with the "
                f"clinic's record of session {theirs} in that place; nothing was imported from "
                "this file",
                "conflict",
            )
        if place[:3] != want:
            raise ImportRefusedError(
                f"session {session_id} (record {want[1]} of log {want[0]}) conflicts with the "
                f"clinic's copy (record {place[1]} of log {place[0]}, another content); nothing "
                "was imported from this file",
                "conflict",
            )
        added += place[3] == import_id
    return added


# --- loading back ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldSession:
    """One record as the clinic holds it: its summary and its kind."""

    summary: SessionSummary
    kind: str
    counted: bool = True  # False: dated ahead by the home computer's clock (never counted)
    # why it is dated before a record recorded before it (the home's clock set back): credited
    # to no day (sessions/log/clockorder.py); None when it is not
    set_back: str | None = None


def load_sessions(db: ClinicDb, patient_id: str) -> list[HeldSession]:
    """One patient's records (summaries, no envelope), oldest first, each with whether its
    home's clock was set back when it ran (judged over all the patient's records held, in the
    plate's countersignature order and each log's chain order: one query)."""
    protocols: dict[str, str] = {}
    loaded: list[tuple[SessionSummary, str, bool]] = []
    timed: list[TimedRecord] = []
    for summary_json, sha, protocol_json, kind, ahead, key, counter in db.query(
        "SELECT r.summary_json, r.protocol_sha256, p.protocol_json, r.kind, r.clock_ahead,"
        " v.device_key, v.counter FROM records r"
        " JOIN protocols p ON p.sha256 = r.protocol_sha256"
        " LEFT JOIN vouchers v ON v.session_id = r.session_id WHERE r.patient_id = ?"
        " ORDER BY r.started_utc, r.session_id",
        (patient_id,),
    ):
        raw = json.loads(summary_json)
        raw["protocol_json"] = protocols.setdefault(sha, protocol_json)
        summary = _summary_from_raw(raw)
        loaded.append((summary, str(kind), not ahead))
        timed.append(_timed(summary, key, counter, bool(ahead)))
    set_back = set_back_records(timed)
    return [
        HeldSession(
            summary,
            kind,
            counted,
            None if summary.session_id not in set_back else set_back[summary.session_id].detail(),
        )
        for summary, kind, counted in loaded
    ]


def _timed(
    summary: SessionSummary, key: str | None, counter: int | None, ahead: bool
) -> TimedRecord:
    """What the set-back check reads of a held record (one dated ahead of the clinic's clock is
    never counted, and left out of the check)."""
    return TimedRecord(
        summary.session_id,
        summary.log_id,
        summary.chain_index,
        summary.started_utc,
        summary.ended_utc,
        None if key is None else str(key),
        None if counter is None else int(counter),
        ahead,
    )


def load_record(db: ClinicDb, session_id: str) -> SessionRecord:
    """One full record (with its envelope), for the charts of a report."""
    rows = db.query(
        "SELECT r.record_json, e.envelope_json FROM records r"
        " LEFT JOIN envelopes e ON e.session_id = r.session_id WHERE r.session_id = ?",
        (session_id,),
    )
    if not rows:
        raise ClinicDbError(f"the clinic database holds no session {session_id}")
    raw = json.loads(rows[0][0])
    if rows[0][1] is not None:
        raw["envelope"] = json.loads(rows[0][1])
    raw.setdefault("envelope", [])  # not kept: the session is not one a report draws
    return _record_from_raw(raw)


def load_raw_records(db: ClinicDb, patient_id: str) -> list[dict[str, Any]]:
    """One patient's records as exported (FHIR export), oldest first."""
    return [
        json.loads(text)
        for (text,) in db.query(
            "SELECT record_json FROM records WHERE patient_id = ? ORDER BY started_utc, session_id",
            (patient_id,),
        )
    ]


# --- the overview's summary rows -------------------------------------------------------------


def refresh_patient(db: ClinicDb, patient_id: str) -> None:
    """Recompute one patient's overview rows from their records (after every import).

    The per-day judgement is ``compute_adherence``'s, run with "today" after every study day,
    so a day's row does not change as days pass; the overview sums the days before its own
    today. Run under a per-patient lock so concurrent importers leave the newest figures.
    """
    from sessions.clinic.overview import patient_summary  # the adherence code, loaded on use
    from sessions.report import _TRACE_KINDS as TRACE_KINDS  # the kinds a report draws

    def work() -> None:
        with db.transaction():
            if db.postgres:
                db.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (patient_id,))
            held = load_sessions(db, patient_id)
            summary = patient_summary(patient_id, held)
            db.execute("DELETE FROM patient_days WHERE patient_id = ?", (patient_id,))
            db.execute("DELETE FROM patient_flags WHERE patient_id = ?", (patient_id,))
            db.executemany(
                "INSERT INTO patient_days (patient_id, day, status, slots_prescribed,"
                " slots_completed, minutes_prescribed, minutes_at_dose)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(patient_id, *day) for day in summary.days],
            )
            db.executemany(
                "INSERT INTO patient_flags (patient_id, session_id, kind, local_date, reason)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(patient_id, *flag) for flag in summary.flags],
            )
            kinds = sorted(TRACE_KINDS)
            db.execute(  # envelopes are kept only for the sessions a report draws
                "DELETE FROM envelopes WHERE session_id IN"
                " (SELECT session_id FROM records WHERE patient_id = ?) AND session_id NOT IN"
                " (SELECT session_id FROM patient_flags WHERE patient_id = ? AND kind IN"
                f" ({', '.join('?' * len(kinds))}))",
                (patient_id, patient_id, *kinds),
            )
            db.execute(
                "INSERT INTO patients (patient_id, timezone, sessions, last_session_day,"
                " device_id, firmware_version, devices_json, refreshed_utc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (patient_id) DO UPDATE SET"
                " timezone = excluded.timezone, sessions = excluded.sessions,"
                " last_session_day = excluded.last_session_day,"
                " device_id = excluded.device_id, firmware_version = excluded.firmware_version,"
                " devices_json = excluded.devices_json, refreshed_utc = excluded.refreshed_utc",
                (
                    patient_id,
                    summary.timezone,
                    len(held),
                    _day_text(summary.last_session_day),
                    summary.device_id,
                    summary.firmware_version,
                    summary.devices_json,
                    now_utc(),
                ),
            )

    db.retrying(work, f"refresh patient {patient_id}")


def refresh_all(db: ClinicDb) -> int:
    """Every patient's overview rows (after a migration that added them)."""
    patients = [str(p) for (p,) in db.query("SELECT DISTINCT patient_id FROM records")]
    for patient in patients:
        refresh_patient(db, patient)
    return len(patients)


def _day_text(day: date | None) -> str | None:
    return None if day is None else day.isoformat()
