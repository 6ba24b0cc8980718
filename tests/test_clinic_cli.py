"""`liv clinic ...` as a clinician runs it: messages, exit statuses, where the database is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sessions.cli import main
from tests import test_clinic_db
from tests.test_clinic_db import cli_register, count, make_records, write_export

db_url = test_clinic_db.db_url  # the fixture: SQLite and PostgreSQL
postgres_server = test_clinic_db.postgres_server
REPO = Path(__file__).resolve().parent.parent


def test_import_names_each_file_and_exits_1_when_one_is_refused(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_export(tmp_path / "good.jsonl", make_records("P1", 2))
    edited = make_records("P2", 2, seed=2)
    edited[1]["minutes_at_dose"] = 2.0
    bad = write_export(tmp_path / "bad.jsonl", edited)
    cli_register(db_url, "LIV-P1", "LIV-P2")
    assert main(["clinic", "import", "--db", db_url, str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert f"imported {good}: 4 new records, 0 already held (P1)" in out
    assert f"refused {bad}:" in err
    assert "does not verify" in err
    assert "1 of 2 file(s) refused" in err
    assert "Traceback" not in out + err
    assert main(["clinic", "import", "--db", db_url, str(good)]) == 0
    assert "0 new records, 4 already held" in capsys.readouterr().out


def test_a_missing_file_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "c.db")
    assert main(["clinic", "import", "--db", db, str(tmp_path / "nowhere.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "nowhere.jsonl cannot be read" in err
    assert "Traceback" not in err


def test_a_file_that_is_not_an_export_is_refused_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "c.db")
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"\xff\xd8\xff\xe0 not text")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n", encoding="utf-8")
    assert main(["clinic", "import", "--db", db, str(binary), str(text)]) == 1
    err = capsys.readouterr().err
    assert "photo.jpg is not a liv export (not UTF-8 text)" in err
    assert "notes.txt: Refused the whole import file: line 1 is not valid JSON" in err
    assert "Traceback" not in err
    assert count(db, "SELECT COUNT(*) FROM problems WHERE patient_id IS NULL") == 2


def test_an_unreachable_server_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://liv:secret@/clinic?host=/nonexistent-dir&port=1"
    assert main(["clinic", "overview", "--db", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("liv: the clinic database postgresql://liv@/clinic")
    assert "secret" not in err  # the password is never printed
    assert len(err.strip().splitlines()) == 1


def test_the_database_lives_in_the_clinic_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIV_CLINIC_DB", raising=False)
    monkeypatch.setenv("LIV_CLINIC_HOME", str(tmp_path / "clinic"))
    export = write_export(tmp_path / "e.jsonl", make_records("P1", 1))
    cli_register("", "LIV-P1")
    assert main(["clinic", "import", str(export)]) == 0
    db = tmp_path / "clinic" / "clinic.db"
    assert db.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "clinic").stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("LIV_CLINIC_DB", str(tmp_path / "other.db"))
    cli_register("", "LIV-P1")
    assert main(["clinic", "import", str(export)]) == 0
    assert count(str(tmp_path / "other.db"), "SELECT COUNT(*) FROM records") == 2


def test_the_html_overview_needs_a_file_and_an_unknown_patient_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "c.db")
    assert main(["clinic", "overview", "--db", db, "--format", "html"]) == 1
    assert "give --out FILE.html" in capsys.readouterr().err
    assert main(["clinic", "report", "--db", db, "NOBODY"]) == 1
    assert "no therapy sessions of patient 'NOBODY'" in capsys.readouterr().err


def test_two_clinicians_importing_at_once_from_two_programs(db_url: str, tmp_path: Path) -> None:
    exports = [
        str(write_export(tmp_path / f"p{k}.jsonl", make_records(f"P{k}", 10, seed=20 + k)))
        for k in range(4)
    ]
    cli_register(db_url, *(f"LIV-P{k}" for k in range(4)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    programs = [
        subprocess.Popen(
            [sys.executable, "-m", "sessions.cli", "clinic", "import", "--db", db_url, *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        for files in (exports, exports[::-1])
    ]
    for program in programs:
        _, err = program.communicate(timeout=90)
        assert program.returncode == 0, err.decode()
    assert count(db_url, "SELECT COUNT(*) FROM records") == 4 * 20
    assert count(db_url, "SELECT SUM(added) FROM imports") == 4 * 20
    # each file once: the second program's import of it added nothing and found nothing new
    assert count(db_url, "SELECT COUNT(*) FROM imports") == 4
    assert count(db_url, "SELECT SUM(sessions) FROM patients") == 4 * 20
