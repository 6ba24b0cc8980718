"""The clinic database keeps its history: the same file imported again adds nothing, and the
database itself refuses to change or delete a row of the history (migration 9).

Runs on SQLite and PostgreSQL (the fixture of tests/test_clinic_db.py); docs/clinic.md,
"History is never rewritten".
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from sessions.clinic import importer
from sessions.clinic.db import APPEND_ONLY_TABLES, SCHEMA_VERSION, ClinicDb, ClinicDbError
from sessions.clinic.plates import record_prescription
from sessions.clinic.problems import acknowledge
from sessions.protocol import protocol_from_dict
from tests import test_clinic_db
from tests.test_clinic_acknowledge import overview_json, problems_json, run
from tests.test_clinic_db import (
    TODAY,
    copy_at_schema,
    count,
    import_registered,
    make_records,
    protocol_dict,
    write_export,
)

db_url = test_clinic_db.db_url  # the fixture: SQLite and PostgreSQL
postgres_server = test_clinic_db.postgres_server

HISTORY_ROWS = "SELECT (SELECT COUNT(*) FROM imports) + (SELECT COUNT(*) FROM problems)"


def _conflicting(tmp_path: Path) -> Path:
    """P1's log as another copy tells it: record 8 differs from the one the clinic holds."""
    forked = make_records("P1", 6, seed=3, tweak={8: {"minutes_at_dose": 3.0}})
    return write_export(tmp_path / "forked.jsonl", forked)


def test_a_refused_file_imported_again_and_again_adds_nothing(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clinician's daily import script: the same refused files every day. Before, each run
    added a row to `imports` and one to `problems` per patient named, and the patient's
    integrity count grew by one a day."""
    edited = make_records("P2", 3, seed=9)
    edited[2]["minutes_at_dose"] = 9.5  # changed after hashing: does not verify
    unverified = write_export(tmp_path / "edited.jsonl", edited)
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "p1.jsonl", make_records("P1", 5, seed=3)))
        first = [import_registered(db, f) for f in (_conflicting(tmp_path), unverified)]
    assert all(o.refused and not o.notes for o in first)
    rows = count(db_url, HISTORY_ROWS)
    assert rows == 5  # 3 imports, 2 problems
    assert overview_json(capsys, db_url)["patients"][0]["open_flags"]["integrity"] == 1
    for _ in range(3):
        with ClinicDb(db_url) as db:
            again = [import_registered(db, f) for f in (_conflicting(tmp_path), unverified)]
        assert count(db_url, HISTORY_ROWS) == rows
        assert [o.refused for o in again] == [o.refused for o in first]
        assert all("already refused for the same reason on 20" in o.notes[0] for o in again)
    assert len(problems_json(capsys, db_url)) == 2
    assert overview_json(capsys, db_url)["patients"][0]["open_flags"]["integrity"] == 1

    # the command says so, and still exits 1: the file is still refused
    code, _, err = run(capsys, "clinic", "import", "--db", db_url, str(unverified))
    assert code == 1
    assert "refused " in err
    assert "note: this file was already refused for the same reason on " in err
    assert count(db_url, HISTORY_ROWS) == rows


def test_a_daily_import_of_the_same_folder_grows_nothing(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folder a clinic's script imports every day: a patient's export, an older copy of it
    (a rollback) and a refused file. Before, every run added an `imports` row per file and a
    problem for the rollback and for the refusal, each open one on the overview."""
    records = make_records("P1", 5, seed=3)
    folder = tmp_path / "exports"
    folder.mkdir()
    files = [
        str(write_export(folder / "full.jsonl", records)),
        str(write_export(folder / "old.jsonl", records[:6])),
        str(_conflicting(folder)),
    ]
    test_clinic_db.cli_register(db_url, "LIV-P1")
    daily = ("clinic", "import", "--db", db_url, *files)
    assert run(capsys, *daily)[0] == 1  # one file refused
    rows = count(db_url, HISTORY_ROWS)
    assert rows == 5  # 3 imports, a rollback, a refusal
    for _ in range(2):
        code, out, err = run(capsys, *daily)
        assert code == 1
        assert count(db_url, HISTORY_ROWS) == rows
        assert "imported " in out
        assert "warning: the export ends at record 5" in err  # still said, not recorded again
        assert "note: this file was imported before with the same result" in err
        assert "note: this file was already refused for the same reason" in err
    assert overview_json(capsys, db_url)["patients"][0]["open_flags"]["integrity"] == 2
    # a file not seen before is recorded, though every record in it is held: its import and
    # its own rollback (it loses 2 records, not 4)
    assert run(capsys, "clinic", "import", "--db", db_url,
               str(write_export(folder / "part.jsonl", records[:8])))[0] == 0  # fmt: skip
    assert count(db_url, HISTORY_ROWS) == rows + 2


def test_a_refused_file_that_tells_something_new_is_recorded_again(
    db_url: str, tmp_path: Path
) -> None:
    """Only exact repeats are dropped: other bytes, another name (the sentence names the file),
    or a patient the earlier refusal did not name are each recorded."""
    edited = make_records("P2", 3, seed=9)
    edited[2]["minutes_at_dose"] = 9.5
    bad = write_export(tmp_path / "edited.jsonl", edited)
    with ClinicDb(db_url) as db:
        import_registered(db, bad)
        copy = tmp_path / "edited-copy.jsonl"
        copy.write_bytes(bad.read_bytes())
        assert not import_registered(db, copy).notes  # another name: recorded
        edited[2]["minutes_at_dose"] = 9.4  # the next export, refused in the same words
        assert not import_registered(db, write_export(bad, edited)).notes
    assert count(db_url, "SELECT COUNT(*) FROM problems") == 3
    assert count(db_url, "SELECT COUNT(DISTINCT file_sha256) FROM imports") == 2


def test_a_conflict_found_when_storing_is_recorded_again_under_another_name(
    db_url: str, tmp_path: Path
) -> None:
    """A conflict found while storing (a session the clinic holds in another place) is told in
    a sentence that does not name the file: a copy of it found elsewhere is still recorded,
    with its name, like every other refusal."""
    first = make_records("P1", 2, seed=4)
    other = make_records("P2", 2, seed=5, tweak={0: {"session_id": first[1]["session_id"]}})
    stolen = write_export(tmp_path / "b.jsonl", other)
    copy = tmp_path / "elsewhere.jsonl"
    copy.write_bytes(stolen.read_bytes())
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "a.jsonl", first))
        refusals = [import_registered(db, f) for f in (stolen, copy, stolen)]
    assert all(o.refused and str(tmp_path) not in o.refused for o in refusals)
    assert [bool(o.notes) for o in refusals] == [False, False, True]
    names = "SELECT file_name FROM imports WHERE outcome = 'refused' ORDER BY file_name"
    with ClinicDb(db_url) as db:
        assert [r[0] for r in db.query(names)] == [str(stolen), str(copy)]


def _history(db_url: str, tmp_path: Path) -> None:
    """A row in every append-only table: records, a rollback, a refusal, an acknowledgement,
    a plate and a signed prescription."""
    records = make_records("P1", 5, seed=3)
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "full.jsonl", records))
        import_registered(db, write_export(tmp_path / "old.jsonl", records[:6]))
        assert import_registered(db, _conflicting(tmp_path)).refused
        problem = db.query("SELECT problem_id FROM problems WHERE kind = 'rollback'")[0][0]
        record_prescription(db, protocol_from_dict(protocol_dict("P9", TODAY)), "clinic-key")
        acknowledge(db, problem, "called", "A")


def _snapshot(db: ClinicDb) -> dict[str, list[str]]:
    """Every row of the history; on SQLite with its rowid, which a row replaced by the same
    content does not keep."""
    rows = "*" if db.postgres else "rowid, *"
    return {t: sorted(map(repr, db.query(f"SELECT {rows} FROM {t}"))) for t in APPEND_ONLY_TABLES}


def _tried(db: ClinicDb, sql: str) -> None:
    """``sql`` refused as append-only, or done (what it did is compared after)."""
    try:
        db.execute(sql)
    except ClinicDbError as exc:
        refused = str(exc)
    else:
        return
    assert "is append-only: its rows are never" in refused


def _refused_everywhere(db: ClinicDb) -> None:
    """Every UPDATE, DELETE (and PostgreSQL TRUNCATE) of every append-only table is refused,
    with a sentence naming the table, and leaves its rows as they were."""
    before = _snapshot(db)
    for table in APPEND_ONLY_TABLES:
        assert before[table], f"{table} holds no row: the test would prove nothing"
        column = db.execute(f"SELECT * FROM {table} LIMIT 1").description[0][0]
        statements = [f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}"]
        for sql in statements:
            with pytest.raises(ClinicDbError, match=f"{table} is append-only: its rows are never"):
                db.execute(sql)
        if db.postgres:  # CASCADE: the tables that refer to it too, whose trigger may speak
            with pytest.raises(ClinicDbError, match="is append-only: its rows are never"):
                db.execute(f"TRUNCATE {table} CASCADE")
        with pytest.raises(ClinicDbError, match="append-only"), db.transaction():
            db.execute(f"DELETE FROM {table} WHERE 1 = 1")
        # a row written over by an INSERT: an upsert, and SQLite's REPLACE (which deletes the
        # row held without firing its DELETE trigger), each with the rows themselves
        key = ", ".join(APPEND_ONLY_TABLES[table][0])
        written_over = [
            f"INSERT INTO {table} SELECT * FROM {table} WHERE 1 = 1 ON CONFLICT ({key})"
            f" DO UPDATE SET {column} = excluded.{column}",
            *([] if db.postgres else [f"REPLACE INTO {table} SELECT * FROM {table}"]),
        ]
        for sql in written_over:
            _tried(db, sql)
    assert _snapshot(db) == before


def test_the_database_refuses_to_change_or_delete_the_history(db_url: str, tmp_path: Path) -> None:
    _history(db_url, tmp_path)
    with ClinicDb(db_url) as db:
        _refused_everywhere(db)
        # what is recomputed stays writable: the summary rows, the envelopes
        db.execute("DELETE FROM patient_days WHERE patient_id = 'P1'")
        db.execute("UPDATE patients SET refreshed_utc = 'now'")
        db.execute("DELETE FROM envelopes")


def test_anyone_with_sql_access_is_refused_too(tmp_path: Path) -> None:
    """Not only this program: the SQLite file opened with the sqlite3 shell's library."""
    url = str(tmp_path / "clinic.db")
    _history(url, tmp_path)
    conn = sqlite3.connect(url)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="problems is append-only"):
            conn.execute("UPDATE problems SET detail = 'nothing happened'")
        with pytest.raises(sqlite3.IntegrityError, match="problem_notes is append-only"):
            conn.execute("DELETE FROM problem_notes")
    finally:
        conn.close()


def test_a_database_at_schema_8_with_history_is_protected_when_opened(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a clinic holds today (schema 8, written by the previous software) keeps every row,
    is protected once opened, and goes on importing and acknowledging."""
    scratch = str(tmp_path / "scratch.db")
    _history(scratch, tmp_path)
    copy_at_schema(scratch, db_url, 8)
    with ClinicDb(db_url, migrate=False) as db:
        assert db.version == 8
        db.execute("UPDATE problems SET detail = detail")  # not yet protected
        before = _snapshot(db)
    with ClinicDb(db_url) as db:
        assert (db.migrated_from, db.version) == (8, SCHEMA_VERSION) == (8, 9)
        assert _snapshot(db) == before
        _refused_everywhere(db)
        later = make_records("P1", 6, seed=3, last_day=TODAY)  # the same log, a day longer
        outcome = import_registered(db, write_export(tmp_path / "later.jsonl", later))
        assert (outcome.refused, outcome.added, outcome.duplicates) == (None, 2, 10)
        import_registered(db, write_export(tmp_path / "old.jsonl", later[:6]))  # a rollback
    opened = [p for p in problems_json(capsys, db_url) if p["kind"] == "rollback"]
    assert len(opened) == 1  # lost 6 now, not 4: a new occurrence
    code, _, err = run(capsys, "clinic", "acknowledge", opened[0]["short_id"], "--note", "ok",
                       "--by", "A", "--db", db_url)  # fmt: skip
    assert code == 0, err
    assert count(db_url, "SELECT COUNT(*) FROM problem_notes") == 2
    assert count(db_url, "SELECT SUM(added) FROM imports") == 12


def test_an_imports_reference_deferred_to_the_commit_is_still_checked(
    db_url: str, tmp_path: Path
) -> None:
    """An import writes its `imports` row last; a record naming an import that never comes is
    refused at the commit, and the transaction leaves nothing behind."""
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "p1.jsonl", make_records("P1", 1)))
        cursor = db.execute("SELECT * FROM records")
        row = dict(zip([d[0] for d in cursor.description], cursor.fetchall()[0], strict=True))
        row.update(session_id="S-orphan", log_id="L-orphan", import_id="no such import")
        insert = f"INSERT INTO records ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"

        def orphan() -> None:
            with db.transaction():
                db.defer_foreign_keys()
                db.execute(insert, list(row.values()))

        with pytest.raises(ClinicDbError, match=r"(?i)foreign key"):
            orphan()
        assert db.query("SELECT COUNT(*) FROM records") == [(2,)]


def test_two_programs_importing_the_same_file_at_once_record_it_once(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clinicians' scripts run over the same folder at the same moment: an older copy of a
    patient's export (a rollback, every record held) and a refused file are each recorded once.
    Both programs check for an earlier import before either has committed (the barrier holds
    the first until the second arrives, or 2 s): only a lock per file keeps them apart. No
    envelopes: re-inserting the pruned ones would make the second wait for the first."""
    records = make_records("P1", 5, seed=3, envelope_points=0)
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "full.jsonl", records))
    old = write_export(tmp_path / "old.jsonl", records[:6])
    refused = _conflicting(tmp_path)
    check = importer._recorded_before

    def both_at_once(*args: Any) -> str | None:
        # broken: the other program is held elsewhere (a lock), and checks after this one
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=2)
        return check(*args)

    monkeypatch.setattr(importer, "_recorded_before", both_at_once)
    for path in (old, refused):
        barrier = threading.Barrier(2)
        outcomes: list[importer.ImportOutcome] = []

        def one_program(
            path: Path = path, outcomes: list[importer.ImportOutcome] = outcomes
        ) -> None:
            with ClinicDb(db_url) as db:
                outcomes.append(importer.import_export(db, path))

        programs = [threading.Thread(target=one_program) for _ in range(2)]
        for program in programs:
            program.start()
        for program in programs:
            program.join(timeout=60)
        assert len(outcomes) == 2
        assert [bool(o.refused) for o in outcomes] == [path == refused] * 2
        assert count(db_url, f"SELECT COUNT(*) FROM imports WHERE file_name = '{path}'") == 1
    assert count(db_url, "SELECT COUNT(*) FROM problems") == 2  # the rollback, the refusal


def test_a_full_disk_is_reported_as_such(tmp_path: Path) -> None:
    """SQLite rolls a transaction back itself when the disk fills (SQLITE_FULL); the ROLLBACK
    that followed then failed ("no transaction is active") and its sentence replaced the one
    that says what happened. Here the database may not grow by more than a page."""
    with ClinicDb(str(tmp_path / "clinic.db")) as db:
        pages = db.query("PRAGMA page_count")[0][0]
        db.execute(f"PRAGMA max_page_count = {pages + 1}")
        with pytest.raises(ClinicDbError, match="database or disk is full"), db.transaction():
            db.executemany(
                "INSERT INTO patient_days (patient_id, day, status, slots_prescribed,"
                " slots_completed, minutes_prescribed, minutes_at_dose)"
                " VALUES ('P1', ?, 'completed', 2, 2, 20, 20)",
                [(f"day {k}" + "." * 500,) for k in range(100)],
            )
        assert db.query("SELECT COUNT(*) FROM patient_days") == [(0,)]


def test_a_refusal_that_names_a_patient_the_earlier_one_did_not_is_recorded(
    db_url: str, tmp_path: Path
) -> None:
    """The same refused file, refused in the same words, but charged to a patient the earlier
    refusal did not name (here a refusal recorded with no patient, the same file's row made by
    hand): the patient's integrity flag must show it, so it is recorded."""
    edited = make_records("P2", 3, seed=9)
    edited[2]["minutes_at_dose"] = 9.5  # does not verify: charged to P2, whom it claims
    bad = write_export(tmp_path / "edited.jsonl", edited)
    with ClinicDb(str(tmp_path / "scratch.db")) as scratch:
        outcome = import_registered(scratch, bad)
        (sha,) = scratch.query("SELECT file_sha256 FROM imports")[0]
    assert outcome.refused
    with ClinicDb(db_url) as db, db.transaction():
        db.execute(
            "INSERT INTO imports (import_id, file_name, file_sha256, imported_utc, outcome,"
            " added, duplicates, detail) VALUES ('earlier', ?, ?, '2026-01-01', 'refused', 0,"
            " 0, ?)",
            (str(bad), sha, outcome.refused),
        )
        db.execute(
            "INSERT INTO problems (problem_id, import_id, kind, patient_id, detail, found_utc)"
            " VALUES ('p-earlier', 'earlier', 'unverified', NULL, ?, '2026-01-01')",
            (outcome.refused,),
        )
    with ClinicDb(db_url) as db:
        again = import_registered(db, bad)
    assert (again.refused, again.notes) == (outcome.refused, [])
    assert count(db_url, "SELECT COUNT(*) FROM problems WHERE patient_id = 'P2'") == 1
