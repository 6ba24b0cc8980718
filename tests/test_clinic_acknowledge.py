"""A clinician acknowledges a problem with a note: it leaves the overview, stays on record.

`liv clinic problems` lists the open problems with a short id; `liv clinic acknowledge ID
--note TEXT [--by NAME]` adds a row to ``problem_notes`` (migration 8) and never changes the
problem. Runs on SQLite and PostgreSQL (the fixture of tests/test_clinic_db.py).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from sessions.cli import main
from sessions.clinic.db import SCHEMA_VERSION, ClinicDb
from sessions.clinic.importer import import_export
from sessions.clinic.problems import MAX_NOTE_CHARS
from sessions.jsonshapes import validate
from tests import test_clinic_db
from tests.test_clinic_db import count, import_registered, make_records, write_export

db_url = test_clinic_db.db_url  # the fixture: SQLite and PostgreSQL
postgres_server = test_clinic_db.postgres_server


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # a usage error (argparse)
        code = int(str(exc.code))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def rolled_back(db_url: str, tmp_path: Path) -> list[dict[str, Any]]:
    """P1's whole log, then an older copy of it: one rollback problem. Returns the records."""
    records = make_records("P1", 10)
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "full.jsonl", records))
        outcome = import_registered(db, write_export(tmp_path / "old.jsonl", records[:6]))
    assert len(outcome.problems) == 1
    return records


def overview_json(capsys: pytest.CaptureFixture[str], db_url: str) -> dict[str, Any]:
    code, out, err = run(capsys, "clinic", "overview", "--format", "json", "--db", db_url)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def problems_json(capsys: pytest.CaptureFixture[str], db_url: str, *more: str) -> list[Any]:
    code, out, err = run(capsys, "clinic", "problems", "--json", "--db", db_url, *more)
    assert code == 0, err
    data: list[Any] = json.loads(out)
    for item in data:
        validate(item, "liv.clinic_problem/1")
    return data


def problem_rows(db_url: str) -> list[tuple[Any, ...]]:
    with ClinicDb(db_url) as db:
        return db.query("SELECT * FROM problems ORDER BY problem_id")


def test_an_acknowledged_problem_leaves_the_overview_and_is_shown_with_its_note(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rolled_back(db_url, tmp_path)
    [patient] = overview_json(capsys, db_url)["patients"]
    assert patient["open_flags"]["integrity"] == 1
    assert patient["acknowledged_problems"] == 0

    code, out, _ = run(capsys, "clinic", "problems", "--db", db_url)
    assert code == 0
    short = out.split()[0]
    assert len(short) == 8
    assert "rollback" in out
    assert "lost 14 record(s)" in out
    assert "1 open problem(s)" in out

    note = "called P1: restored an old backup"
    code, out, err = run(capsys, "clinic", "acknowledge", short, "--db", db_url,
                         "--note", note, "--by", "Dr Weber")  # fmt: skip
    assert code == 0, err
    assert "acknowledged by Dr Weber" in out

    data = overview_json(capsys, db_url)
    [patient] = data["patients"]
    assert patient["open_flags"]["integrity"] == 0
    assert patient["acknowledged_problems"] == 1
    assert data["acknowledged_problems"] == 1
    code, out, _ = run(capsys, "clinic", "overview", "--db", db_url)
    assert "integrity" not in out
    assert "1 problem(s) acknowledged" in out
    page = tmp_path / "site" / "overview.html"
    run(capsys, "clinic", "overview", "--format", "html", "--out", str(page), "--db", db_url)
    assert 'id="acknowledged">1 problem(s) acknowledged' in page.read_text(encoding="utf-8")

    assert problems_json(capsys, db_url) == []
    code, out, _ = run(capsys, "clinic", "problems", "--db", db_url)
    assert "no open problems (1 acknowledged" in out
    [shown] = problems_json(capsys, db_url, "--all")
    assert shown["short_id"] == short
    assert shown["problem_id"].startswith(short)
    assert (shown["open"], shown["kind"], shown["patient_id"]) == (False, "rollback", "P1")
    assert shown["acknowledged_by"] == "Dr Weber"
    assert shown["note"] == "called P1: restored an old backup"
    assert shown["acknowledged_utc"] >= shown["found_utc"]
    assert shown["acknowledged_as"] == shown["problem_id"]
    code, out, _ = run(capsys, "clinic", "problems", "--all", "--db", db_url)
    assert "by Dr Weber: called P1: restored an old backup" in out
    assert "1 problem(s): 0 open, 1 acknowledged" in out


def test_acknowledging_adds_a_note_and_never_changes_the_problem(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    rolled_back(db_url, tmp_path)
    before = problem_rows(db_url)
    [problem] = problems_json(capsys, db_url)
    monkeypatch.setenv("LOGNAME", "nurse1")  # the OS user name getpass reads first
    code, _, err = run(capsys, "clinic", "acknowledge", problem["problem_id"].upper(),
                       "--note", "  done  ", "--db", db_url)  # fmt: skip
    assert code == 0, err
    assert problem_rows(db_url) == before
    with ClinicDb(db_url) as db:
        notes = db.query("SELECT problem_id, acknowledged_by, note FROM problem_notes")
    assert notes == [(problem["problem_id"], "nurse1", "done")]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--note", ""], "the note is empty"),
        (["--note", "   "], "the note is empty"),
        (["--note", "x" * (MAX_NOTE_CHARS + 1)], f"at most {MAX_NOTE_CHARS} are allowed"),
        (["--note", "called\nher"], "write it on one line"),
        (["--note", "ok", "--by", " "], "--by must be a name of 1 to 100 characters"),
    ],
)
def test_a_bad_note_is_refused_in_one_sentence_and_records_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    db = str(tmp_path / "clinic.db")
    rolled_back(db, tmp_path)
    [problem] = problems_json(capsys, db)
    code, _out, err = run(capsys, "clinic", "acknowledge", problem["short_id"], *argv, "--db", db)
    assert code == 1
    assert says in err
    assert err.startswith("liv: ")
    assert err.count("\n") == 1
    assert count(db, "SELECT COUNT(*) FROM problem_notes") == 0
    assert len(problems_json(capsys, db)) == 1


def test_unknown_short_ambiguous_and_acknowledged_ids_are_refused(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rolled_back(db_url, tmp_path)
    [problem] = problems_json(capsys, db_url)
    ack = ("clinic", "acknowledge", "--db", db_url, "--by", "A")
    code, _, err = run(capsys, *ack, "ffffffffzz", "--note", "n")
    assert code == 1
    assert "no problem has the id 'ffffffffzz'; 'liv clinic problems' lists" in err
    code, _, err = run(capsys, *ack, problem["problem_id"][:3], "--note", "n")
    assert code == 1
    assert "too short: give at least 4 characters" in err
    code, _, err = run(capsys, "clinic", "acknowledge", problem["short_id"], "--db", db_url)
    assert code == 2  # no --note: a usage error naming it
    assert "--note" in err
    assert run(capsys, *ack, problem["short_id"], "--note", "first")[0] == 0
    code, _, err = run(capsys, *ack, problem["short_id"], "--note", "second")
    assert code == 1
    assert "already acknowledged, by A at " in err
    assert "'first'" in err
    assert count(db_url, "SELECT COUNT(*) FROM problem_notes") == 1


def test_reimporting_the_same_file_does_not_reopen_but_a_new_occurrence_is_open(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = rolled_back(db_url, tmp_path)
    [problem] = problems_json(capsys, db_url)
    assert run(capsys, "clinic", "acknowledge", problem["short_id"], "--note", "seen",
               "--by", "A", "--db", db_url)[0] == 0  # fmt: skip
    with ClinicDb(db_url) as db:  # the same old file again: found again, nothing recorded
        again = import_registered(db, tmp_path / "old.jsonl")
    assert again.problems
    assert "the problem(s) above were recorded on " in again.notes[0]
    assert count(db_url, "SELECT COUNT(*) FROM problems") == 1
    assert problems_json(capsys, db_url) == []
    assert overview_json(capsys, db_url)["patients"][0]["open_flags"]["integrity"] == 0
    _recorded_again_as_before(db_url, problem["problem_id"])  # what older software did
    every = problems_json(capsys, db_url, "--all")
    again_rows = [p for p in every if p["problem_id"] != problem["problem_id"]]
    assert again_rows[0]["acknowledged_as"] == problem["problem_id"]
    assert overview_json(capsys, db_url)["patients"][0]["open_flags"]["integrity"] == 0

    # a refused file: the same file again stays acknowledged, another file is new
    edited = make_records("P1", 3, seed=9)
    edited[2]["minutes_at_dose"] = 9.5
    bad = write_export(tmp_path / "bad.jsonl", edited)
    with ClinicDb(db_url) as db:
        assert import_registered(db, bad).refused is not None
    [refusal] = problems_json(capsys, db_url)
    assert run(capsys, "clinic", "acknowledge", refusal["short_id"], "--note", "asked for a "
               "new export", "--by", "A", "--db", db_url)[0] == 0  # fmt: skip
    with ClinicDb(db_url) as db:
        assert import_registered(db, bad).refused is not None
    assert problems_json(capsys, db_url) == []
    edited[2]["minutes_at_dose"] = 9.4  # the patient's next export, refused in the same words
    write_export(bad, edited)
    with ClinicDb(db_url) as db:
        assert import_registered(db, bad).refused is not None
    [new_refusal] = problems_json(capsys, db_url)
    assert new_refusal["kind"] == "unverified"

    # an older copy again, from another file: a new occurrence, open
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "older.jsonl", records[:4]))
    open_now = problems_json(capsys, db_url)
    assert sorted(p["kind"] for p in open_now) == ["rollback", "unverified"]
    assert overview_json(capsys, db_url)["patients"][0]["open_flags"]["integrity"] == 2


def _recorded_again_as_before(db_url: str, problem_id: str) -> None:
    """The problem found again by another import of the same file, as the software before
    the repeat check recorded it: another import row, another problem row."""
    import_id = str(uuid.uuid4())
    with ClinicDb(db_url) as db, db.transaction():
        (row,) = db.query(
            "SELECT i.file_name, i.file_sha256, p.kind, p.patient_id, p.log_id, p.chain_index,"
            " p.detail FROM problems p JOIN imports i ON i.import_id = p.import_id"
            " WHERE p.problem_id = ?",
            (problem_id,),
        )
        db.execute(
            "INSERT INTO imports (import_id, file_name, file_sha256, imported_utc, outcome,"
            " added, duplicates, detail) VALUES (?, ?, ?, '2026-03-02T00:00:00.000+00:00',"
            " 'imported', 0, 12, ?)",
            (import_id, row[0], row[1], row[6]),
        )
        db.execute(
            "INSERT INTO problems (problem_id, import_id, kind, patient_id, log_id, chain_index,"
            " detail, found_utc) VALUES (?, ?, ?, ?, ?, ?, ?, '2026-03-02T00:00:00.000+00:00')",
            (str(uuid.uuid4()), import_id, *row[2:]),
        )


def test_an_old_database_is_migrated_and_keeps_its_problems_open(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = make_records("P1", 10)
    scratch = str(tmp_path / "scratch.db")
    with ClinicDb(scratch) as db:
        import_registered(db, write_export(tmp_path / "full.jsonl", records))
        import_registered(db, write_export(tmp_path / "old.jsonl", records[:6]))
    test_clinic_db.copy_at_schema(scratch, db_url, 7)  # the schema before acknowledgements
    with ClinicDb(db_url, migrate=False) as db:
        before = db.query("SELECT * FROM problems ORDER BY problem_id")
    assert len(before) == 1
    with ClinicDb(db_url) as db:
        assert (db.migrated_from, db.version) == (7, SCHEMA_VERSION)
    assert problem_rows(db_url) == before
    [problem] = problems_json(capsys, db_url)
    assert problem["open"]
    assert problem["kind"] == "rollback"
    assert overview_json(capsys, db_url)["patients"][0]["open_flags"]["integrity"] == 1


def test_ids_that_share_a_prefix_are_shown_longer_and_a_shared_prefix_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "clinic.db")
    rolled_back(db, tmp_path)
    with ClinicDb(db) as conn:
        [(import_id,)] = conn.query("SELECT import_id FROM problems")
        for problem_id in ("abcd1234-0000-4000-8000-000000000001",
                           "abcd1234-0000-4000-8000-000000000002"):  # fmt: skip
            conn.execute(
                "INSERT INTO problems (problem_id, import_id, kind, patient_id, detail,"
                " found_utc) VALUES (?, ?, 'gap', 'P1', ?, '2026-03-01T00:00:00.000+00:00')",
                (problem_id, import_id, f"made up {problem_id}"),
            )
    shown = problems_json(capsys, db)
    assert {len(p["short_id"]) for p in shown} == {36}  # they differ at the last character
    code, _, err = run(capsys, "clinic", "acknowledge", "abcd1234", "--note", "n", "--db", db)
    assert code == 1
    assert "2 problems have ids starting 'abcd1234': give more of the id" in err
    code, _, err = run(capsys, "clinic", "acknowledge", "abcd1234-0000-4000-8000-000000000002",
                       "--note", "n", "--by", "A", "--db", db)  # fmt: skip
    assert code == 0, err
    assert len(problems_json(capsys, db)) == 2


def test_the_same_old_backup_restored_twice_is_a_new_problem_the_second_time(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exports are deterministic: the same backup restored again gives a byte-identical file,
    but what it loses depends on what the clinic held by then (4 records, then 14)."""
    recs = make_records("P1", 20)
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "ten.jsonl", recs[:10]))
        import_registered(db, write_export(tmp_path / "old.jsonl", recs[:6]))
    (first,) = problems_json(capsys, db_url)
    acknowledge = ("clinic", "acknowledge", first["short_id"], "--note", "restored")
    assert run(capsys, *acknowledge, "--by", "A", "--db", db_url)[0] == 0
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "twenty.jsonl", recs))
        import_registered(db, write_export(tmp_path / "old_again.jsonl", recs[:6]))
    assert (tmp_path / "old.jsonl").read_bytes() == (tmp_path / "old_again.jsonl").read_bytes()
    (second,) = problems_json(capsys, db_url)
    assert second["detail"] != first["detail"]


def test_a_note_that_is_not_text_is_refused_without_a_traceback(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bytes that are not UTF-8 on the command line arrive as lone surrogates, which neither
    database can store: before, the command ended in a traceback."""
    rolled_back(db_url, tmp_path)
    (problem,) = problems_json(capsys, db_url)
    code, _, err = run(
        capsys, "clinic", "acknowledge", problem["short_id"], "--note", "caf\udce9 called",
        "--by", "A", "--db", db_url,
    )  # fmt: skip
    assert code == 1
    assert "not text (UTF-8)" in err
    code, _, err = run(
        capsys, "clinic", "acknowledge", problem["short_id"], "--note", "called",
        "--by", "j\udce9r\udcf4me", "--db", db_url,
    )  # fmt: skip
    assert code == 1
    assert "(UTF-8)" in err
    assert count(db_url, "SELECT COUNT(*) FROM problem_notes") == 0


def test_a_refused_file_read_from_a_pipe_is_told_apart_by_what_was_found(
    db_url: str, tmp_path: Path
) -> None:
    """A pipe is empty once the check has read it (and /dev/zero never ends): its digest was
    that of no bytes for every piped file, so one note hid every later piped refusal."""
    first = make_records("P1", 3, seed=3)
    first[1]["minutes_at_dose"] = 1.0
    path = write_export(tmp_path / "a.jsonl", first)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(path.read_bytes()))
    writer.start()
    with ClinicDb(db_url) as db:
        outcome = import_export(db, fifo)
    writer.join(timeout=10)
    assert outcome.refused
    assert count(db_url, "SELECT COUNT(*) FROM imports WHERE file_sha256 = ''") == 1
