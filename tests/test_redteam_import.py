"""Red team: hostile import files at the clinic (`liv clinic import`) and at home (`liv import`).

An export is a file the patient's computer hands over: whoever holds that computer writes it.
Each attack below is a file such a person can write, and each test asserts the product's
refusal: one sentence naming what is wrong, exit status 1, no traceback, nothing stored, and
memory bounded by a record, not by the file.

The absurd records are vouched for by their plate (the test plate's key signs them, as a real
plate countersigns any digest its host hands it, docs/trust.md): the signature cannot be what
refuses them.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from sessions.cli import main
from sessions.clinic.db import ClinicDb
from sessions.clinic.importer import import_export
from sessions.log import LogError, SessionLog, exchange
from sessions.log.canonical import canonical_json
from sessions.log.exchange import MAX_LINE_BYTES
from sessions.log.vouch import Pin
from tests.test_clinic_db import (
    TODAY,
    count,
    make_records,
    plate_key_hex,
    register_plates,
    vouched,
    write_export,
)

PLATE = "LIV-P1"


def _clinic_import(tmp_path: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`liv clinic import` of ``path`` with the plate registered: refused, nothing stored."""
    db = str(tmp_path / "clinic.db")
    with ClinicDb(db) as clinic:
        register_plates(clinic, PLATE)
    capsys.readouterr()
    assert main(["clinic", "import", "--db", db, str(path)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert count(db, "SELECT COUNT(*) FROM records") == 0
    return err


def _home_import(tmp_path: Path, path: Path) -> LogError:
    """The home's import of ``path`` (the plate enrolled): refused, nothing stored."""
    plates = {PLATE: Pin(PLATE, plate_key_hex(PLATE), 1)}
    with SessionLog(tmp_path / "home.db") as log:
        with pytest.raises(LogError) as refused:
            log.import_jsonl(path, plates=plates)
        assert log.sessions() == []
    return refused.value


# ---- structure: nesting and size -----------------------------------------------------------


def test_a_deeply_nested_line_is_refused_in_one_sentence_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """json.loads raises RecursionError (not ValueError) past ~1000 levels of nesting."""
    record = vouched(make_records("P1", 1))[0]
    line = canonical_json(record)[:-1] + ',"x":' + "[" * 100_000 + "]" * 100_000 + "}"
    path = tmp_path / "deep.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    err = _clinic_import(tmp_path, path, capsys)
    assert "line 1 is nested too deeply" in err
    assert "nothing was imported" in err
    refused = _home_import(tmp_path, path)
    assert "line 1 is nested too deeply" in str(refused)


def test_a_deeply_nested_line_does_not_crash_the_homes_key_enrolment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`liv import --device-key` reads the file once more to find the plate's first counter."""
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "\n", encoding="utf-8")
    home = tmp_path / "home"
    code = main(["import", str(path), "--device-key", plate_key_hex(PLATE), "--home", str(home)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    assert "line 1 is nested too deeply" in err


def test_a_line_longer_than_any_record_is_refused_without_reading_it_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 40 MB line with no newline: refused after MAX_LINE_BYTES, memory stays below it."""
    path = tmp_path / "huge.jsonl"
    with open(path, "w", encoding="utf-8") as stream:
        stream.write('{"session_id":"')
        for _ in range(40):
            stream.write("x" * 1_000_000)
        stream.write('"}\n')
    tracemalloc.start()
    try:
        err = _clinic_import(tmp_path, path, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"line 1 is longer than {MAX_LINE_BYTES // 1_000_000} MB" in err
    assert peak < 3 * MAX_LINE_BYTES
    refused = _home_import(tmp_path, path)
    assert "line 1 is longer than" in str(refused)


def test_a_real_size_record_is_far_below_the_line_limit() -> None:
    """The limit leaves room: a 60-minute engineering run at 10 envelope points a second."""
    record = make_records("P1", 1, envelope_points=36_000)[0]
    assert len(canonical_json(record).encode()) * 10 < MAX_LINE_BYTES


# ---- absurd records that their plate vouches for --------------------------------------------

ABSURD: dict[str, tuple[dict[str, Any], str]] = {
    "negative minutes": ({"minutes_at_dose": -50.0}, "minutes_at_dose -50 is negative"),
    "more minutes than prescribed": (
        {"minutes_at_dose": 500.0},
        "minutes_at_dose 500 is more than the 10 minutes prescribed",
    ),
    "a session of a week": (
        {"minutes_at_dose": 10080.0, "minutes_prescribed": 10080.0},
        "minutes_prescribed 10080 is outside 0-1440",
    ),
    "started in 1970": (
        {"started_utc": "1970-01-01T08:00:00.000+00:00"},
        "started_utc 1970-01-01T08:00:00.000+00:00 is before 2000-01-01",
    ),
    "started in 9999": (
        {
            "started_utc": "9999-12-31T08:00:00.000+00:00",
            "ended_utc": "9999-12-31T08:10:00.000+00:00",
        },
        "started_utc 9999-12-31T08:00:00.000+00:00 is after 2999-12-31",
    ),
    "a day in 9999": ({"local_date": "9999-12-31"}, "local_date 9999-12-31 is after 2999-12-31"),
    "a day in year 1": ({"local_date": "0001-01-01"}, "local_date 0001-01-01 is before 2000-01-01"),
    "started_local in year 1": (
        {"started_local": "0001-01-01T00:00:00.000+00:00"},
        "started_local 0001-01-01T00:00:00.000+00:00 is before 2000-01-01",
    ),
    "ended_local in 9999": (
        {"ended_local": "9999-12-31T23:59:00.000+00:00"},
        "ended_local 9999-12-31T23:59:00.000+00:00 is after 2999-12-31",
    ),
    "another patient's name on a prescription": (
        {"patient_id": "P2"},
        "patient_id 'P2' is not the patient its prescription names ('P1')",
    ),
    "a prescription that is no protocol": (
        {"protocol_json": "{}", "protocol_sha256": hashlib.sha256(b"{}").hexdigest()},
        "its prescription (protocol_json) is not a valid protocol",
    ),
    "a prescription nested too deeply": (
        {"protocol_json": '{"a":' + "[" * 50_000 + "}"},
        "protocol_json is nested too deeply to be a prescription",
    ),
    "a fingerprint of another prescription": (
        {"protocol_sha256": "ab" * 32},
        "protocol_sha256 is not the SHA-256 of its protocol_json",
    ),
    "a time zone that does not exist": (
        {"timezone": "Mars/Olympus_Mons"},
        "timezone 'Mars/Olympus_Mons' is not a known time zone",
    ),
}


def _absurd_export(tmp_path: Path, changes: dict[str, Any]) -> Path:
    records = make_records("P1", 2, tweak={1: changes})  # hashed after the change ...
    return write_export(tmp_path / "absurd.jsonl", records)  # ... and signed by the plate


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_an_absurd_record_its_plate_vouches_for_is_refused_at_the_clinic(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, sentence = ABSURD[case]
    err = _clinic_import(tmp_path, _absurd_export(tmp_path, changes), capsys)
    assert "line 2 is not a plausible session record" in err
    assert sentence in err
    assert "nothing was imported" in err


# what the clinic needs to judge adherence and check its signed prescriptions; the home does
# not, and home logs of older tests hold such prescriptions
AT_THE_CLINIC_ONLY = {"a prescription that is no protocol", "a fingerprint of another prescription"}


@pytest.mark.parametrize("case", sorted(set(ABSURD) - AT_THE_CLINIC_ONLY))
def test_an_absurd_record_its_plate_vouches_for_is_refused_at_home(
    case: str, tmp_path: Path
) -> None:
    changes, sentence = ABSURD[case]
    refused = _home_import(tmp_path, _absurd_export(tmp_path, changes))
    assert "line 2 is not a plausible session record" in str(refused)
    assert sentence in str(refused)


def test_a_record_dated_9999_cannot_hide_a_patient_from_the_overview(tmp_path: Path) -> None:
    """Before: the record was stored, then the overview's refresh crashed (date overflow), so the
    patient's rows kept their older figures, and a new patient never appeared at all."""
    db = str(tmp_path / "clinic.db")
    good = write_export(tmp_path / "good.jsonl", make_records("P1", 2))
    with ClinicDb(db) as clinic:
        register_plates(clinic, PLATE)
        assert import_export(clinic, good).refused is None
        records = make_records("P1", 3, last_day=TODAY, tweak={5: {"local_date": "9999-12-31"}})
        outcome = import_export(clinic, write_export(tmp_path / "late.jsonl", records))
    assert outcome.refused is not None
    assert count(db, "SELECT COUNT(*) FROM records") == 4
    assert count(db, "SELECT COUNT(*) FROM problems WHERE detail LIKE '%is after 2999-12-31%'") == 1
    assert count(db, "SELECT COUNT(*) FROM patients WHERE patient_id = 'P1'") == 1


def test_a_file_of_more_records_than_any_study_is_refused_before_memory_grows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forged lines need no signature to be scanned (the vouchers are checked after the scan),
    and the scan keeps a summary per record: the count is capped. The cap is lowered here so
    the file stays small; MAX_IMPORT_RECORDS is 100,000 (at most about 130 MB of summaries)."""
    monkeypatch.setattr(exchange, "MAX_IMPORT_RECORDS", 6)
    path = write_export(tmp_path / "many.jsonl", make_records("P1", 4), vouch=False)
    err = _clinic_import(tmp_path, path, capsys)
    assert "line 7 is record 7 of the file: an export holds at most 6 records" in err
    refused = _home_import(tmp_path, path)
    assert "an export holds at most 6 records" in str(refused)


def test_a_prescription_holding_a_lone_surrogate_is_refused_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``\\ud800`` escape in the file decodes to a character UTF-8 cannot encode: hashing the
    prescription's text to check its SHA-256 raised UnicodeEncodeError (a traceback)."""
    record = vouched(make_records("P1", 1))[0]
    line = canonical_json(record)
    start = line.index('"protocol_json":"') + len('"protocol_json":"')
    line = line[:start] + '{\\"x\\":\\"\\ud800\\",' + line[start + 1 :]
    path = tmp_path / "surrogate.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    err = _clinic_import(tmp_path, path, capsys)
    assert "nothing was imported" in err
