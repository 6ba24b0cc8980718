"""Export (JSON Lines, CSV) and all-or-nothing import of session records."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, AnyStr, BinaryIO, TextIO

from sessions.jsonshapes import STATUS_WORDS
from sessions.log.canonical import canonical_json, number_text
from sessions.log.chain import (
    StreamingChains,
    _canonical_pairs,
    _Entry,
    _spliced_json,
)
from sessions.log.errors import _translate
from sessions.log.fields import (
    _columns_from_raw,
    _implausible,
    _raw_from_row,
    _record_from_raw,
    clock_problem,
)
from sessions.log.records import (
    EXPORT_FIELDS,
    OPTIONAL_FIELDS,
    SUMMARY_FIELDS,
    BadRecord,
    ImportResult,
    LogError,
    LogErrorReason,
)
from sessions.log.storage import _ALL_BUT_ENVELOPE, SessionStore
from sessions.log.vouch import GENESIS_HEX, Pin, Voucher, key_name

VOUCHER_FIELD = "device_voucher"  # the plate's countersignature, beside the record's fields

# The longest line an import reads: a record is a few hundred kB (a 10-minute session about
# 94 kB, a 60-minute engineering run at 10 envelope points a second about 0.7 MB); a longer line
# is refused before it is read whole, so a hostile file cannot fill the importer's memory.
MAX_LINE_BYTES = 8_000_000
# The most records one import file may hold: the checks keep a small summary per record
# (ImportLine, a few hundred bytes), so a file of forged lines cannot fill memory with them.
MAX_IMPORT_RECORDS = 100_000

# Excel's limit on the characters of one cell (LibreOffice and Google Sheets hold as many).
CSV_CELL_LIMIT = 32_767

# The plain CSV: one row per session, the columns a clinician reads (docs/sessions.md).
SESSION_CSV_COLUMNS = (
    "session_id",
    "patient_id",
    "device_id",
    "local_date",
    "slot",
    "start_time",
    "end_time",
    "timezone",
    "status",
    "minutes_prescribed",
    "minutes_at_dose",
    "target_g",
    "mean_error_pct",
    "p95_abs_error_pct",
    "safety_events",
    "reason",
    "override_reason",
    "resumed_from",
)

_log = logging.getLogger(__name__)


class SessionLog(SessionStore):
    """The device's session log: storage plus export and import of finished records."""

    # --- export ---

    def _export_rows(self, conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
        for row in self._export_stored(conn):
            yield self._parsed(row)

    def _export_stored(self, conn: sqlite3.Connection, columns: str = "*") -> Iterator[sqlite3.Row]:
        """Every finished row in export order, one at a time (memory does not grow)."""
        for log_id in self._chain_order(conn):
            yield from conn.execute(
                f"SELECT {columns} FROM sessions WHERE log_id = ? AND record_hash IS NOT NULL "
                "ORDER BY chain_index",
                (log_id,),
            )

    def _parsed(self, row: sqlite3.Row, names: Sequence[str] = EXPORT_FIELDS) -> dict[str, Any]:
        try:
            return _raw_from_row(row, names)
        except ValueError as exc:
            raise self._corrupt(
                f"session {row['session_id']} cannot be read ({exc}); run verify"
            ) from exc

    def _jsonl_line(self, row: sqlite3.Row, voucher: Voucher | None) -> str:
        """The record's canonical JSON with its ``device_voucher`` (null when the plate has
        not vouched for it); a canonical stored envelope is written as stored."""
        vouched = canonical_json(None if voucher is None else voucher.to_json())
        envelope = row["envelope"]
        try:
            if isinstance(envelope, str) and _canonical_pairs(envelope):
                raw = self._parsed(row, _ALL_BUT_ENVELOPE)
                return _spliced_json(raw, {"envelope": envelope, VOUCHER_FIELD: vouched})
            return _spliced_json(self._parsed(row), {VOUCHER_FIELD: vouched})
        except (ValueError, TypeError) as exc:  # a value written into the file by hand
            raise self._corrupt(
                f"session {row['session_id']} cannot be exported ({exc}); run verify"
            ) from exc

    def _voucher(self, conn: sqlite3.Connection, session_id: str) -> Voucher | None:
        if not self._has_vouchers(conn):
            return None
        row = conn.execute(
            "SELECT device_key, counter, prev_head, head, signature FROM vouchers "
            "WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        return None if row is None else Voucher(row[0], int(row[1]), row[2], row[3], row[4])

    @contextlib.contextmanager
    def _output(self, out: TextIO | Path, newline: str) -> Iterator[TextIO]:
        """A stream as given, or a private file written whole or not at all."""
        if not isinstance(out, Path):
            yield out
            return
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, "w", encoding="utf-8", newline=newline) as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _exporting(
        self, out: TextIO | Path, newline: str
    ) -> Iterator[tuple[sqlite3.Connection, TextIO]]:
        """The log open for reading and the output stream, errors told as an export's."""
        with (
            _translate("export the session log", self.path),
            self._read() as conn,
            self._output(out, newline) as stream,
        ):
            yield conn, stream

    def export_jsonl(self, out: TextIO | Path, header: Mapping[str, Any] | None = None) -> int:
        """Every finished record, one canonical JSON object per line; returns the count.

        ``header`` (the log's verification status, docs/log-format.md) is written first as a
        line of its own; ``import_jsonl`` reads past it.
        """
        count = 0
        with self._exporting(out, "\n") as (conn, stream):
            if header is not None:
                stream.write(canonical_json(dict(header)) + "\n")
            for row in self._export_stored(conn):
                voucher = self._voucher(conn, row["session_id"])
                stream.write(self._jsonl_line(row, voucher) + "\n")
                count += 1
        return count

    def export_csv(self, out: TextIO | Path, integrity: str | None = None) -> int:
        """Every finished record as a flat CSV row (lists/dicts as JSON text); returns the count.

        No cell is longer than a spreadsheet holds (:data:`CSV_CELL_LIMIT`): a longer one (in
        practice the envelope of any full session) says where its data is instead
        (:meth:`export_envelopes_csv`, or the JSONL export). ``integrity`` adds a last column
        ``log_integrity`` holding it on every row.
        """
        count = 0
        with self._exporting(out, "") as (conn, stream):
            writer = csv.writer(stream)
            writer.writerow([*EXPORT_FIELDS, *(["log_integrity"] if integrity else [])])
            for raw in self._export_rows(conn):
                cells = [_fitted_cell(name, raw.get(name)) for name in EXPORT_FIELDS]
                writer.writerow([*cells, *([integrity] if integrity else [])])
                count += 1
        return count

    def export_sessions_csv(self, out: TextIO | Path, integrity: str | None = None) -> int:
        """One plain row per finished session (:data:`SESSION_CSV_COLUMNS`); returns the count.

        What a clinician opens in a spreadsheet: local start and end times, minutes, status in
        the outputs' vocabulary, rounded values; the envelope is never read.
        """
        count = 0
        names = ", ".join(SUMMARY_FIELDS)
        with self._exporting(out, "") as (conn, stream):
            writer = csv.writer(stream)
            writer.writerow([*SESSION_CSV_COLUMNS, *(["log_integrity"] if integrity else [])])
            for row in self._export_stored(conn, names):
                raw = self._parsed(row, SUMMARY_FIELDS)
                writer.writerow([*_session_row(raw), *([integrity] if integrity else [])])
                count += 1
        return count

    def export_envelopes_csv(self, out: TextIO | Path) -> int:
        """Every envelope point of every finished session, one row each; returns the sessions.

        Columns ``session_id, t_s, amplitude_g``: the envelopes the record CSV cannot hold.
        """
        count = 0
        with self._exporting(out, "") as (conn, stream):
            writer = csv.writer(stream)
            writer.writerow(("session_id", "t_s", "amplitude_g"))
            for row in self._export_stored(conn, "session_id, envelope"):
                raw = self._parsed(row, ("session_id", "envelope"))
                sid = spreadsheet_text(str(raw["session_id"]))
                for t_s, amplitude_g in raw["envelope"] or []:
                    writer.writerow((sid, number_text(t_s), number_text(amplitude_g)))
                count += 1
        return count

    # --- import ---

    def import_jsonl(
        self, source: TextIO | Path, *, plates: dict[str, Pin] | None = None
    ) -> ImportResult:
        """Merge an export (any devices, any patients): all of it, or nothing.

        Every incoming chain is verified completely before anything is written; records
        already held (same log_id, chain_index and record_hash) are skipped; a record that
        contradicts one already held is refused with the whole file.

        With ``plates`` (device id -> the pinned key; ``liv import`` always passes them) only
        records the plate vouches for are accepted: each carries a countersignature that
        verifies with its plate's enrolled key, and per plate the counters, with those already
        held, run on without a gap or a conflict. Without, only the hash chains are checked.

        The file is read twice and never held: the first pass checks each record as it is read
        (:func:`scan_import`), the second writes it (:func:`import_records`), so memory does not
        grow with the records' size (docs/log-format.md section 8).
        """
        with (
            utf8_import_file(),
            _translate("read the import file", self.path),
            _rereadable(source) as lines,
        ):
            scan = scan_import(lines())
            bad = scan.bad
            if bad is not None:
                raise LogError(
                    f"Refused the whole import file: record {bad.chain_index} of log "
                    f"{bad.chain} (session {bad.session_id}) does not verify: {bad.what}; "
                    "nothing was imported.",
                    reason=LogErrorReason.TAMPERED,
                    path=self.path,
                    bad_record=bad,
                )
            vouched = 0
            if plates is not None:
                vouched = self._check_import_vouchers(scan.records, plates)
            added = 0
            clock = 0
            skipped = scan.duplicates
            with _translate("import into the session log", self.path), self._write() as tx:
                for line, raw in import_records(lines(), scan.records):
                    entry = _Entry(
                        line.session_id,
                        line.chain_index,
                        raw,
                        where=f" (line {line.line_no})",
                        voucher=line.voucher,
                    )
                    if self._merge(tx, entry):
                        added += 1
                        clock += line.clock is not None
                        if line.clock is not None:
                            _log.warning("imported record %s: %s", line.session_id, line.clock)
                    else:
                        skipped += 1
        _log.info("imported %d records, %d already present", added, skipped)
        return ImportResult(added, skipped, vouched, clock)

    def _check_import_vouchers(self, records: Sequence[ImportLine], plates: dict[str, Pin]) -> int:
        """Refuse the file unless its plates vouch for every record (see import_jsonl)."""
        by_key: dict[str, dict[int, tuple[str, str, str, str]]] = {}
        count = 0
        for line in sorted(records, key=lambda r: (r.log_id, r.chain_index)):
            where = f"record {line.chain_index} of log {line.log_id} (session {line.session_id})"
            voucher = line.voucher
            if not isinstance(voucher, Voucher):
                raise self._refused(f"{where} is not vouched for by its plate")
            problem = voucher.problem(line.record_hash, line.device_id)
            if problem is not None:
                raise self._refused(f"{where}: {problem}")
            pin = plates.get(line.device_id)
            if pin is None or pin.device_key != voucher.device_key:
                raise self._refused(
                    f"{where} is vouched for by plate key {key_name(voucher.device_key)}, "
                    f"which is not enrolled here for plate {line.device_id} (enroll it "
                    "with --device-key)"
                )
            same = by_key.setdefault(voucher.device_key, {}).get(voucher.counter)
            mine = (line.record_hash, voucher.prev_head, voucher.head, where)
            if same is not None and same[0] != mine[0]:
                raise self._refused(
                    f"{where} and {same[3]} both claim the plate's counter {voucher.counter}",
                    conflict=True,
                )
            by_key[voucher.device_key][voucher.counter] = mine
            count += 1
        with _translate("read the session log", self.path), self._read() as conn:
            for device_key, incoming in by_key.items():
                first = min(
                    (p.first_counter for p in plates.values() if p.device_key == device_key),
                    default=1,
                )
                held: dict[int, tuple[str, str, str, str]] = {}
                if self._has_vouchers(conn):
                    for counter, prev, head, digest, session_id in conn.execute(
                        "SELECT v.counter, v.prev_head, v.head, s.record_hash, s.session_id "
                        "FROM vouchers v JOIN sessions s USING (session_id) "
                        "WHERE v.device_key = ?",
                        (device_key,),
                    ):
                        held[int(counter)] = (digest, prev, head, f"held session {session_id}")
                for counter, mine in incoming.items():
                    have = held.get(counter)
                    if have is not None and have[0] != mine[0]:
                        raise self._refused(
                            f"{mine[3]} claims the plate's counter {counter}, which this log "
                            f"holds for another record ({have[3]})",
                            conflict=True,
                        )
                merged = {**held, **incoming}
                expected, head = first, GENESIS_HEX
                for counter in sorted(merged):
                    digest, prev, new_head, where = merged[counter]
                    if counter > expected:
                        missing = (
                            f"{expected}"
                            if counter == expected + 1
                            else f"{expected}-{counter - 1}"
                        )
                        raise self._refused(
                            f"the plate's record(s) {missing} before {where} are neither in this "
                            "log nor in the file (a gap)"
                        )
                    if counter < expected:
                        continue  # before the plate was enrolled here
                    if (counter > first or first == 1) and prev != head:
                        raise self._refused(f"{where} does not follow the plate's previous head")
                    expected, head = counter + 1, new_head
        return count

    def _refused(self, detail: str, *, conflict: bool = False) -> LogError:
        return LogError(
            f"Refused the whole import file: {detail}; nothing was imported.",
            reason=LogErrorReason.CONFLICT if conflict else LogErrorReason.TAMPERED,
            path=self.path,
        )

    def _merge(self, tx: sqlite3.Connection, entry: _Entry) -> bool:
        """Insert one verified record; False if already held; LogError on a conflict."""
        raw = entry.raw
        assert raw is not None
        log_id = raw["log_id"]
        held = tx.execute(
            "SELECT session_id, record_hash FROM sessions WHERE log_id = ? AND chain_index = ?",
            (log_id, raw["chain_index"]),
        ).fetchone()
        if held is not None:
            if held["record_hash"] == raw["record_hash"]:
                return False
            raise self._conflict(
                entry,
                f"this log already holds a different record {raw['chain_index']} of log "
                f"{log_id} (session {held['session_id']})",
            )
        other = tx.execute(
            "SELECT log_id, chain_index, status FROM sessions WHERE session_id = ?",
            (raw["session_id"],),
        ).fetchone()
        if other is not None:
            raise self._conflict(
                entry,
                f"this log already holds session {raw['session_id']} as a different record "
                f"(log {other['log_id']}, record {other['chain_index']}, {other['status']})",
            )
        tx.execute("INSERT OR IGNORE INTO chains (log_id, own) VALUES (?, 0)", (log_id,))
        columns = _columns_from_raw(raw)
        tx.execute(
            f"INSERT INTO sessions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            list(columns.values()),
        )
        self._check_stored(tx, raw["session_id"])
        voucher = entry.voucher
        if isinstance(voucher, Voucher):
            tx.execute(
                "INSERT INTO vouchers (session_id, device_key, counter, prev_head, head, "
                "signature) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    raw["session_id"],
                    voucher.device_key,
                    voucher.counter,
                    voucher.prev_head,
                    voucher.head,
                    voucher.signature,
                ),
            )
        return True

    def _conflict(self, entry: _Entry, detail: str) -> LogError:
        raw = entry.raw or {}
        bad = BadRecord(
            str(raw.get("log_id")), raw.get("chain_index"), entry.session_id, detail + entry.where
        )
        return LogError(
            f"Refused the whole import file: record {bad.chain_index} of log {bad.chain} "
            f"(session {bad.session_id}) conflicts: {bad.what}; nothing was imported.",
            reason=LogErrorReason.CONFLICT,
            path=self.path,
            bad_record=bad,
        )


def _fitted_cell(name: str, value: Any) -> str:
    """A record CSV cell, or a note saying where its data is when it is over the cell limit."""
    text = _csv_cell(value)
    if len(text) <= CSV_CELL_LIMIT:
        return text
    where = (
        f"{len(value)} points: see the envelope CSV (--format csv-envelopes) or the JSONL export"
        if name == "envelope" and isinstance(value, list)
        else "see the JSONL export"
    )
    return f"(over {CSV_CELL_LIMIT:,} characters, more than a spreadsheet cell holds; {where})"


def _round_text(value: Any, decimals: int) -> str:
    return "" if value is None else f"{round(float(value), decimals) + 0.0:.{decimals}f}"


def _session_row(raw: dict[str, Any]) -> list[str]:
    """One row of :data:`SESSION_CSV_COLUMNS` from a record's summary fields."""
    ended = raw["ended_local"]
    events = raw["safety_events"] or []
    return [
        spreadsheet_text(str(raw["session_id"])),
        spreadsheet_text(str(raw["patient_id"])),
        spreadsheet_text(str(raw["device_id"])),
        str(raw["local_date"]),
        str(raw["slot"]),
        str(raw["started_local"])[11:16],
        "" if not ended else str(ended)[11:16],
        spreadsheet_text(str(raw["timezone"])),
        STATUS_WORDS.get(str(raw["status"]), str(raw["status"])),
        _round_text(raw["minutes_prescribed"], 1),
        _round_text(raw["minutes_at_dose"], 1),
        _round_text(raw["target_g"], 2),
        _round_text(raw["mean_error_pct"], 1),
        _round_text(raw["p95_abs_error_pct"], 1),
        spreadsheet_text(
            "; ".join(str(e.get("reason", "event")) for e in events if isinstance(e, dict))
        ),
        spreadsheet_text(str(raw["reason"] or "")),
        spreadsheet_text(str(raw["override_reason"] or "")),
        spreadsheet_text(str(raw["resumed_from"] or "")),
    ]


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number_text(value)
    if isinstance(value, str):
        return spreadsheet_text(value)
    return canonical_json(value)


EXPORT_HEADER_SCHEMA = "liv.export_header/1"
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: one leading ``'`` before a formula trigger.

    A cell starting with = + - @ tab or CR is run as a formula by Excel, LibreOffice and
    Google Sheets (CSV injection); the quote makes it plain text and is what a reader strips.
    """
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


@contextlib.contextmanager
def utf8_import_file() -> Iterator[None]:
    """An import file that is not UTF-8 text (read_lines decodes it) refused in one sentence,
    not a UnicodeDecodeError traceback."""
    try:
        yield
    except UnicodeDecodeError:
        raise LogError(
            "Refused the whole import file: it is not a liv export (not UTF-8 text); nothing "
            "was imported.",
            reason=LogErrorReason.BAD_FILE,
        ) from None


def _bad_file(line_no: int, detail: str) -> LogError:
    return LogError(
        f"Refused the whole import file: line {line_no} {detail}; nothing was imported.",
        reason=LogErrorReason.BAD_FILE,
    )


@dataclass(frozen=True, slots=True)
class ImportLine:
    """One record line of an import file: what the checks and the writers keep of it.

    The record itself (its envelope above all) is not kept: the writers read it again
    (:func:`import_records`), and ``line_sha256`` proves it is the line that was checked.
    """

    line_no: int
    line_sha256: bytes
    log_id: str
    chain_index: int
    session_id: str
    record_hash: str
    patient_id: str
    device_id: str
    voucher: Voucher | None
    kind: str = "therapy"  # the record's kind (a record without the field is therapy)
    clock: str | None = None  # why its times show the home computer's clock was wrong
    clock_ahead: bool = False  # ... dated ahead of the importer's clock: never counted
    started_utc: datetime | None = None  # its times, for the order checks (clockorder)
    ended_utc: datetime | None = None


@dataclass
class ImportScan:
    """An import file checked as it streamed: its records' lines and the chains' verdict."""

    records: list[ImportLine] = field(default_factory=list)  # file order, repeats left out
    duplicates: int = 0  # lines repeating a record of the file
    bad: BadRecord | None = None  # the first record whose chain does not verify
    heads: dict[str, str] = field(default_factory=dict)  # log_id -> last record_hash
    patients: set[str] = field(default_factory=set)  # whom the file's records name


# raw, voucher, index, log, session, the home clock's error (clock_problem), start, end
_Parsed = tuple[
    dict[str, Any], Voucher | None, int, str, str, tuple[str, bool] | None, datetime, datetime
]


def _parse_line(
    line_no: int, line: str, now: datetime, valid_prescription: bool = False
) -> _Parsed | None:
    """One line as a record (its voucher taken out), None for a blank line or the header.

    Raises the ``bad_file`` LogError naming the line for anything that is not a finished
    session record in the export's shape (docs/log-format.md section 8, step 1), or whose
    figures no session can have (``_implausible``, judged against ``now``).
    """
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        raise _bad_file(line_no, "is not valid JSON") from None
    except RecursionError:  # json.loads nests by recursion: thousands of [ or {
        raise _bad_file(line_no, "is nested too deeply to be a session record") from None
    if not isinstance(obj, dict):
        raise _bad_file(line_no, "is not a JSON object")
    if line_no == 1 and obj.get("schema") == EXPORT_HEADER_SCHEMA:
        return None  # the export's header: the exporting log's verification status
    voucher: Voucher | None = None
    if obj.get(VOUCHER_FIELD) is not None:
        try:
            voucher = Voucher.from_json(obj[VOUCHER_FIELD])
        except ValueError as exc:
            raise _bad_file(line_no, f"has an unusable {VOUCHER_FIELD}: {exc}") from None
    obj.pop(VOUCHER_FIELD, None)
    expected = set(EXPORT_FIELDS)
    missing = expected - set(obj) - OPTIONAL_FIELDS  # absent from older exports
    extra = set(obj) - expected
    if missing:
        raise _bad_file(line_no, f"lacks the field(s) {', '.join(sorted(missing))}")
    if extra:
        raise _bad_file(line_no, f"has unknown field(s) {', '.join(sorted(extra))}")
    try:
        record = _record_from_raw(obj)
    except ValueError as exc:
        raise _bad_file(line_no, f"is not a session record: {exc}") from None
    if not record.finished or record.chain_index is None:
        raise _bad_file(line_no, "is a running session (only finished records are imported)")
    absurd = _implausible(record, valid_prescription=valid_prescription)
    if absurd is not None:
        raise _bad_file(line_no, f"is not a plausible session record: {absurd}")
    clock = clock_problem(record, now)
    assert record.ended_utc is not None  # finished
    return (
        obj,
        voucher,
        record.chain_index,
        record.log_id,
        record.session_id,
        clock,
        record.started_utc,
        record.ended_utc,
    )


def scan_import(
    lines: Iterable[str], now: datetime | None = None, *, valid_prescriptions: bool = False
) -> ImportScan:
    """Check an import file as it streams, one line at a time, holding no record.

    Each line's shape is checked (a ``bad_file`` LogError names the first bad line), then its
    content, hash and link to the record before it in its chain (:class:`StreamingChains`);
    a line repeating a record is counted, a second record in one place or one session in two
    places is refused. What is kept per record is an :class:`ImportLine`.
    """
    scan = ImportScan()
    chains = StreamingChains()
    owners: dict[str, tuple[str, int]] = {}
    moment = datetime.now(UTC) if now is None else now
    for line_no, line in enumerate(lines, 1):
        parsed = _parse_line(line_no, line, moment, valid_prescriptions)
        if parsed is None:
            continue
        obj, voucher, index, log_id, session_id, clock, started, ended = parsed
        same = chains.held_hash(log_id, index)
        if same is not None:
            if same == obj["record_hash"]:
                scan.duplicates += 1
                continue
            what = f"two different records claim this place (line {line_no})"
            bad = BadRecord(log_id, index, session_id, what)
            raise LogError(
                f"Refused the whole import file: record {index} of log {log_id} appears twice "
                f"with different content (line {line_no}); nothing was imported.",
                reason=LogErrorReason.TAMPERED,
                bad_record=bad,
            )
        place = (log_id, index)
        if owners.setdefault(session_id, place) != place:
            raise _bad_file(line_no, f"repeats session {session_id} in another record")
        chains.add(log_id, _Entry(session_id, index, obj, where=f" (line {line_no})"))
        scan.patients.add(str(obj["patient_id"]))
        if len(scan.records) >= MAX_IMPORT_RECORDS:
            raise _bad_file(
                line_no,
                f"is record {MAX_IMPORT_RECORDS + 1:,} of the file: an export holds at most "
                f"{MAX_IMPORT_RECORDS:,} records (a five-year study is under 4,000); split it",
            )
        scan.records.append(
            ImportLine(
                line_no,
                hashlib.sha256(line.encode("utf-8")).digest(),
                log_id,
                index,
                session_id,
                str(obj["record_hash"]),
                str(obj["patient_id"]),
                str(obj["device_id"]),
                voucher,
                str(obj.get("kind") or "therapy"),
                None if clock is None else clock[0],
                clock is not None and clock[1],
                started,
                ended,
            )
        )
    scan.bad, scan.heads = chains.result()
    return scan


def import_records(
    lines: Iterable[str], records: Sequence[ImportLine]
) -> Iterator[tuple[ImportLine, dict[str, Any]]]:
    """The second pass: each record of ``records`` (a scan of the same file) with its full
    record, one at a time; a ``bad_file`` LogError if the file changed since it was scanned."""
    wanted = iter(records)
    line_of = next(wanted, None)
    for line_no, line in enumerate(lines, 1):
        if line_of is None:
            return
        if line_no != line_of.line_no:
            continue
        if hashlib.sha256(line.encode("utf-8")).digest() != line_of.line_sha256:
            raise _changed(line_no)
        # The very line the first pass checked (same hash): its record, without checking it
        # again; the voucher was kept in line_of.
        raw = json.loads(line)
        raw.pop(VOUCHER_FIELD, None)
        yield line_of, raw
        line_of = next(wanted, None)
    if line_of is not None:
        raise _changed(line_of.line_no)


def _changed(line_no: int) -> LogError:
    return LogError(
        f"Refused the whole import file: it changed while it was imported (line {line_no}); "
        "nothing was imported, import it again.",
        reason=LogErrorReason.BAD_FILE,
    )


def read_lines(stream: BinaryIO, digest: Any = None) -> Iterator[str]:
    """The text lines of a UTF-8 file (a leading byte-order mark dropped), hashing its bytes
    into ``digest`` (a hashlib object) when given. UnicodeDecodeError for a file not UTF-8;
    the ``bad_file`` LogError for a line longer than :data:`MAX_LINE_BYTES`, read no further.
    """
    for number, data in enumerate(_bounded(stream.readline), 1):
        if digest is not None:
            digest.update(data)
        text = data.decode("utf-8")
        yield text.removeprefix("\ufeff") if number == 1 else text


def _bounded(readline: Callable[[int], AnyStr]) -> Iterator[AnyStr]:
    """The lines ``readline`` gives, each at most :data:`MAX_LINE_BYTES` long (bytes or
    characters); a longer one is the ``bad_file`` LogError, read no further."""
    number = 0
    while line := readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise _too_long(number)
        yield line


def _too_long(line_no: int) -> LogError:
    return _bad_file(
        line_no,
        f"is longer than {MAX_LINE_BYTES // 1_000_000} MB, far more than any session record",
    )


def limited_lines(stream: TextIO) -> Iterator[str]:
    """The lines of a text stream, each at most :data:`MAX_LINE_BYTES` characters (a longer
    one is the ``bad_file`` LogError, read no further)."""
    return _bounded(stream.readline)


@contextlib.contextmanager
def _rereadable(source: TextIO | Path) -> Iterator[Callable[[], Iterator[str]]]:
    """A way to read ``source``'s lines from its start, as often as needed: a file is opened
    again; a stream is read from where it stood, copied to a temporary file if it cannot seek."""
    if isinstance(source, Path):

        def from_path() -> Iterator[str]:
            with open(source, "rb") as stream:
                yield from read_lines(stream)

        yield from_path
        return
    if source.seekable():
        stream: TextIO = source
        start = source.tell()
        spool = None
    else:
        spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")  # noqa: SIM115
        shutil.copyfileobj(source, spool)
        stream, start = spool, 0

    def from_stream() -> Iterator[str]:
        stream.seek(start)
        yield from limited_lines(stream)

    try:
        yield from_stream
    finally:
        if spool is not None:
            spool.close()
