"""Mends of what the second reader found in the red team's change (one test or more a finding).

F1: an upgraded clinic's first new signing must not flag every patient whose prescription was
signed before the clinic recorded what it signs.
F2: a record written by a wrong home clock (dated ahead, or ending before it started) is
imported and flagged, not refused with every later export of the patient.
F3: another program's database with a table named meta is refused before a byte changes.
F4: an import file cannot grow memory through long ids or long prescriptions.
F5: a plate handed on to the next patient is not flagged as shared; an overlap is, said once.
F7: liv import of a file that is not UTF-8 answers in a sentence.
F8: an import into a database that holds no signed prescription says the check is off.
F9: a linked log is refused with what to do instead (its real path, --db or LIV_DB).
"""

from __future__ import annotations

import gc
import json
import sqlite3
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sessions.cli import main
from sessions.clinic.db import ClinicDb
from sessions.clinic.importer import load_sessions
from sessions.clinic.overview import patient_summary
from sessions.log import LogError, LogErrorReason, SessionLog
from sessions.log.canonical import canonical_json
from sessions.log.exchange import read_lines, scan_import
from sessions.log.fields import _iso
from sessions.protocol import parse_protocol
from tests.simhelpers import protocol_yaml
from tests.test_clinic_db import (
    TODAY,
    count,
    make_records,
    plate_key_hex,
    register_plates,
    vouched,
    write_export,
)
from tests.test_redteam_files import _home_with_link, _state
from tests.test_redteam_prescriptions import PLATE, PRESCRIBED, SELF_MADE, _records

# --- F1: prescriptions signed before the upgrade ---------------------------------------------


def _clinic_before_the_upgrade(tmp_path: Path) -> tuple[list[str], Path]:
    """A clinic whose database predates migration 5: P1's prescription signed, plate LIV-P1
    registered, five days of P1's sessions imported; then the prescriptions table is taken
    away, as a database of before the red team's change had none."""
    where = ["--clinic-dir", str(tmp_path / "clinic")]
    assert main(["clinic", "init", *where]) == 0
    rx = tmp_path / "p1.yaml"
    rx.write_text(protocol_yaml(**PRESCRIBED), encoding="utf-8")
    assert main(["protocol", "sign", str(rx), *where]) == 0
    assert main(["clinic", "plate", "add", PLATE, plate_key_hex(PLATE), *where]) == 0
    return where, tmp_path / "clinic" / "clinic.db"


def _downgrade(db: Path) -> None:
    """The database as of schema 4: what a clinic of before the red team's change holds."""
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE prescriptions")
        conn.execute("DROP TABLE IF EXISTS problem_notes")  # migration 8's
        if any(col[1] == "clock_ahead" for col in conn.execute("PRAGMA table_info(records)")):
            conn.execute("ALTER TABLE records DROP COLUMN clock_ahead")  # migration 7's
        conn.execute("DELETE FROM schema_version WHERE version >= 5")
    conn.close()


def test_an_upgrade_keeps_the_prescriptions_of_accepted_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where, db = _clinic_before_the_upgrade(tmp_path)
    records = _records(parse_protocol(protocol_yaml(**PRESCRIBED)), 10)
    first = write_export(tmp_path / "first.jsonl", records[:10])
    assert main(["clinic", "import", str(first), *where]) == 0
    _downgrade(db)
    # after the upgrade, the clinic signs a new prescription for another patient ...
    rx2 = tmp_path / "p2.yaml"
    rx2.write_text(protocol_yaml(patient_id="P2"), encoding="utf-8")
    assert main(["protocol", "sign", str(rx2), *where]) == 0
    # ... and P1's next export, under the prescription signed before the upgrade, is not flagged
    later = write_export(tmp_path / "later.jsonl", records)
    capsys.readouterr()
    assert main(["clinic", "import", str(later), *where]) == 0
    out = capsys.readouterr()
    assert "never signed" not in out.err + out.out


def test_a_prescription_signed_before_the_upgrade_is_recorded_after_checking_its_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where, db = _clinic_before_the_upgrade(tmp_path)
    rx3 = tmp_path / "p3.yaml"
    rx3.write_text(protocol_yaml(patient_id="P3"), encoding="utf-8")
    assert main(["protocol", "sign", str(rx3), *where]) == 0  # signed, never imported from
    _downgrade(db)
    signed = tmp_path / "p3.signed.yaml"
    before = signed.read_bytes()
    capsys.readouterr()
    assert main(["protocol", "sign", str(signed), *where]) == 1  # signing it again: refused
    assert "--record-signed" in capsys.readouterr().err
    assert main(["protocol", "sign", "--record-signed", str(signed), *where]) == 0
    assert signed.read_bytes() == before
    with sqlite3.connect(db) as conn:
        held = {r[0] for r in conn.execute("SELECT patient_id FROM prescriptions")}
    conn.close()
    assert "P3" in held
    # a file signed with another key, or changed after signing, is not recorded
    other = ["--clinic-dir", str(tmp_path / "other")]
    assert main(["clinic", "init", *other]) == 0
    rx4 = tmp_path / "p4.yaml"
    rx4.write_text(protocol_yaml(patient_id="P4"), encoding="utf-8")
    assert main(["protocol", "sign", str(rx4), *other]) == 0
    capsys.readouterr()
    assert main(["protocol", "sign", "--record-signed", str(tmp_path / "p4.signed.yaml"),
                 *where]) == 1  # fmt: skip
    assert "signed with another key" in capsys.readouterr().err
    changed = tmp_path / "p3b.signed.yaml"
    changed.write_bytes(before.replace(b"P3", b"P5"))
    assert main(["protocol", "sign", "--record-signed", str(changed), *where]) == 1
    assert "changed after it was signed" in capsys.readouterr().err
    with sqlite3.connect(db) as conn:
        held = {r[0] for r in conn.execute("SELECT patient_id FROM prescriptions")}
    conn.close()
    assert not held & {"P4", "P5"}


# --- F2: a home clock error is flagged, not refused --------------------------------------------

# What a home computer's wrong clock writes (/tmp/rv1s/ntp.py, fut.py): both are sessions that
# happened; before, their files were refused, and with them every later export of the patient.
_AHEAD = (datetime.now(UTC) + timedelta(days=3)).replace(hour=8, minute=5)
CLOCK: dict[str, tuple[dict[str, Any], str, bool]] = {
    "a clock stepped back by NTP during the session": (
        {"ended_utc": "2026-01-01T00:00:00.000+00:00"},
        "ended_utc 2026-01-01T00:00:00.000+00:00 is before started_utc",
        False,
    ),
    "a clock three days ahead": (
        {
            "started_utc": _iso(_AHEAD),
            "started_local": _iso(_AHEAD),
            "ended_utc": _iso(_AHEAD + timedelta(minutes=10, seconds=3)),
            "ended_local": _iso(_AHEAD + timedelta(minutes=10, seconds=3)),
            "local_date": _AHEAD.date().isoformat(),
        },
        f"started_utc {_iso(_AHEAD)} is in the future",
        True,
    ),
}


def _clock_export(tmp_path: Path, changes: dict[str, Any]) -> Path:
    records = make_records("P1", 3, tweak={5: changes})  # the last record, hashed after ...
    return write_export(tmp_path / "clock.jsonl", records)  # ... and signed by its plate


@pytest.mark.parametrize("case", sorted(CLOCK))
def test_a_record_of_a_wrong_home_clock_is_imported_and_flagged_at_the_clinic(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, detail, ahead = CLOCK[case]
    db = str(tmp_path / "clinic.db")
    with ClinicDb(db) as clinic:
        register_plates(clinic, "LIV-P1")
    capsys.readouterr()
    assert main(["clinic", "import", "--db", db, str(_clock_export(tmp_path, changes))]) == 0
    err = capsys.readouterr().err
    assert "patient P1: 1 session(s) recorded while the home computer's clock was wrong" in err
    assert detail in err
    assert count(db, "SELECT COUNT(*) FROM records") == 6
    assert count(db, "SELECT COUNT(*) FROM problems WHERE kind = 'home_clock'") == 1
    with ClinicDb(db) as clinic:
        held = load_sessions(clinic, "P1")
        summary = patient_summary("P1", held)
    assert [h.counted for h in held].count(False) == int(ahead)
    if ahead:  # not counted: the day it names completes no slot ...
        day = {d[0]: d for d in summary.days}.get(_AHEAD.date().isoformat())
        assert day is None or day[3] == 0
        assert any(f[1] == "clock_ahead" for f in summary.flags)  # ... and it is shown
    # the next export of the patient, holding the record again, is not refused
    assert main(["clinic", "import", "--db", db, str(_clock_export(tmp_path, changes))]) == 0


@pytest.mark.parametrize("case", sorted(CLOCK))
def test_a_record_of_a_wrong_home_clock_is_imported_at_home(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, _, _ = CLOCK[case]
    path = _clock_export(tmp_path, changes)
    home = tmp_path / "home"
    capsys.readouterr()
    assert main(["import", str(path), "--home", str(home), "--device-key",
                 plate_key_hex("LIV-P1")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "imported 6 records" in out
    assert "1 of them were recorded while the home computer's clock was wrong" in out


# --- F3: a database with a table named meta is not taken for a session log -------------------


def _lookalike(path: Path, kind: str, journal: str) -> Path:
    """Another program's database that has a ``meta`` table, as Chromium's History has."""
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute("CREATE TABLE meta (key LONGVARCHAR NOT NULL UNIQUE PRIMARY KEY, value TEXT)")
    if kind == "chromium history":
        conn.execute("INSERT INTO meta VALUES ('version', '56'), ('last_compatible_version', '16')")
        conn.execute("CREATE TABLE urls (id INTEGER PRIMARY KEY, url TEXT, title TEXT)")
        conn.execute("INSERT INTO urls VALUES (1, 'https://example.org', 'x')")
    else:  # a schema_version row, but none of a session log's tables
        conn.execute("INSERT INTO meta VALUES ('schema_version', '7'), ('log_id', 'x')")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.commit()
    conn.close()
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("kind", ["chromium history", "a meta table with a schema version"])
def test_another_programs_database_with_a_meta_table_is_refused_unchanged(
    tmp_path: Path, kind: str, journal: str
) -> None:
    """Before: the probe took any table named meta for a log's, switched the file to WAL
    (its header bytes changed) and then said it was left unchanged."""
    other = _lookalike(tmp_path / "History", kind, journal)
    before = _state(other)
    with pytest.raises(LogError) as refused:
        SessionLog(other)
    assert refused.value.reason is LogErrorReason.CORRUPT
    assert "it holds another kind of database; it was left unchanged" in str(refused.value)
    assert _state(other) == before


def test_a_session_log_still_opens_after_the_probe(tmp_path: Path) -> None:
    path = tmp_path / "liv.db"
    with SessionLog(path) as log:
        made = log.log_id
    with SessionLog(path) as log:
        assert log.log_id == made


# --- F4: what the import keeps per record is bounded -----------------------------------------


@pytest.mark.parametrize("field", ["session_id", "log_id", "patient_id", "device_id"])
def test_an_id_longer_than_any_this_software_writes_is_refused_at_its_line(
    field: str, tmp_path: Path
) -> None:
    """Before: 25 lines with ids of 3.9 MB each were kept whole in the scan's summaries
    (234 MB traced); the 100,000-record cap bounded the count, not the size."""
    base = make_records("P1", 1)[0]
    path = tmp_path / "ids.jsonl"
    with open(path, "w", encoding="utf-8") as stream:
        for k in range(3):
            stream.write(canonical_json({**base, field: f"{k:08d}" + "x" * 1_000_000}) + "\n")
    tracemalloc.start()
    try:
        with open(path, "rb") as stream, pytest.raises(LogError) as refused:
            scan_import(read_lines(stream))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"line 1 is not a plausible session record: {field} '00000000xxxx" in str(refused.value)
    assert "(1,000,008 characters)" in str(refused.value)
    assert peak < 16_000_000


def test_the_prescription_check_remembers_digests_not_prescriptions(tmp_path: Path) -> None:
    """Before: its cache was keyed by the prescription's text, so 64 hostile lines of 8 MB could
    stay in memory after the import (here 12 of 1 MB: 12 MB kept)."""
    tweak = {
        k: {"protocol_json": json.dumps({"patient_id": "P1", "pad": f"{k}" + "x" * 1_000_000})}
        for k in range(12)
    }
    path = write_export(tmp_path / "big.jsonl", make_records("P1", 6, tweak=tweak), vouch=False)
    gc.collect()
    tracemalloc.start()
    try:
        with open(path, "rb") as stream:
            scan = scan_import(read_lines(stream))
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(scan.records) == 12
    assert kept < 2_000_000


# --- F5: a plate handed on to the next patient is not a shared plate --------------------------


def _on_one_plate(tmp_path: Path, p1_back: int) -> tuple[Path, Path]:
    """P1's three days on plate LIV-A ending ``p1_back`` days before yesterday, then P2's three
    days to yesterday on the same plate (its counters going on after P1's)."""
    first = vouched(
        make_records("P1", 3, device_id="LIV-A", seed=1, last_day=TODAY - timedelta(p1_back + 1))
    )
    last = first[-1]["device_voucher"]
    second = vouched(
        make_records("P2", 3, device_id="LIV-A", seed=2),
        first_counter=last["counter"] + 1,
        head=last["head"],
    )
    return write_export(tmp_path / "p1.jsonl", first), write_export(tmp_path / "p2.jsonl", second)


@pytest.mark.parametrize("p1_back", [5, 1])
def test_a_plate_is_flagged_shared_only_when_two_patients_therapy_overlaps(
    tmp_path: Path, p1_back: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a plate handed on after P1's therapy ended was flagged on both, permanently, and
    the sentence printed twice."""
    db = str(tmp_path / "clinic.db")
    own, next_patient = _on_one_plate(tmp_path, p1_back)
    with ClinicDb(db) as clinic:
        register_plates(clinic, "LIV-A")
    assert main(["clinic", "import", "--db", db, str(own)]) == 0
    capsys.readouterr()
    assert main(["clinic", "import", "--db", db, str(next_patient)]) == 0
    said = capsys.readouterr()
    flagged = count(db, "SELECT COUNT(*) FROM problems WHERE kind = 'shared_plate'")
    if p1_back == 5:  # handed on: P1's last session before P2's first
        assert flagged == 0
        assert "vouched for the therapy sessions of 2 patients" not in said.err + said.out
    else:  # the same days
        assert flagged == 2
        assert (said.err + said.out).count("vouched for the therapy sessions of 2 patients") == 1


# --- F7: a file that is not UTF-8 at liv import -----------------------------------------------


@pytest.mark.parametrize("with_key", [True, False])
def test_liv_import_of_a_file_that_is_not_utf8_answers_in_a_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_key: bool
) -> None:
    """Before: a UnicodeDecodeError traceback (with --device-key, and without)."""
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"a":"\u00e9"}\n'.encode("latin-1"))
    key = ["--device-key", plate_key_hex("LIV-P1")] if with_key else []
    capsys.readouterr()
    assert main(["import", str(path), "--home", str(tmp_path / "home"), *key]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "it is not a liv export (not UTF-8 text); nothing was imported" in err


# --- F8: signing into one database, importing into another ------------------------------------


def test_an_import_into_a_database_without_signed_prescriptions_says_the_check_is_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the prescriptions went to the clinic directory's clinic.db, the imports to
    --db, and the unsigned-prescription check was silently off."""
    where, _ = _clinic_before_the_upgrade(tmp_path)  # signs into the clinic directory's db
    other = str(tmp_path / "imports.db")
    with ClinicDb(other) as clinic:
        register_plates(clinic, PLATE)
    export = write_export(
        tmp_path / "e.jsonl", _records(parse_protocol(protocol_yaml(**PRESCRIBED)), 2)
    )
    capsys.readouterr()
    assert main(["clinic", "import", "--db", other, str(export)]) == 0
    err = capsys.readouterr().err
    assert "4 therapy record(s) arrived, but this database holds no prescription signed" in err
    assert main(["clinic", "import", str(export), *where]) == 0  # where the signing went
    assert "holds no prescription signed" not in capsys.readouterr().err


# --- F9: a log moved to another disk behind a link ---------------------------------------------


def test_a_linked_log_is_refused_with_what_to_do_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: "keep it and contact service", though the patient's own log moved to another
    disk is reached by its real path."""
    disk = tmp_path / "disk"
    disk.mkdir()
    real = disk / "liv.db"
    SessionLog(real).close()
    home = _home_with_link(tmp_path, real)
    capsys.readouterr()
    assert main(["status", "--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert f"give its real path instead: --db {real.resolve()} (or set LIV_DB to it)" in err
    assert "else keep it and contact service" in err  # a link the patient did not make
    assert main(["status", "--home", str(home.root), "--db", str(real.resolve())]) == 0


def test_the_upgrade_does_not_record_a_prescription_flagged_after_the_first_signing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Migration 6 takes only what was accepted before the check was on: a self-signed
    prescription imported (and flagged) after the clinic's first signing stays unsigned."""
    where, db = _clinic_before_the_upgrade(tmp_path)
    self_made = parse_protocol(protocol_yaml(**SELF_MADE))
    export = write_export(tmp_path / "self.jsonl", _records(self_made, 3))
    assert main(["clinic", "import", str(export), *where]) == 0
    with sqlite3.connect(db) as conn:  # the database as schema 5 left it
        conn.execute("ALTER TABLE records DROP COLUMN clock_ahead")
        conn.execute("DROP TABLE problem_notes")
        conn.execute("DELETE FROM schema_version WHERE version >= 6")
    conn.close()
    capsys.readouterr()
    assert main(["clinic", "overview", *where]) == 0  # opens it: migrations 6, 7 and 8
    with sqlite3.connect(db) as conn:
        held = {r[0] for r in conn.execute("SELECT sha256 FROM prescriptions")}
    conn.close()
    assert self_made.sha256 not in held
    assert parse_protocol(protocol_yaml(**PRESCRIBED)).sha256 in held
