"""The clinic overview: figures from compute_adherence, open flags, attention order, HTML, report.

Run on SQLite and PostgreSQL (the ``db_url`` fixture of tests/test_clinic_db.py).
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from sessions.adherence import compute_adherence
from sessions.cli import main
from sessions.clinic.db import ClinicDb
from sessions.clinic.importer import HeldSession, load_sessions
from sessions.clinic.overview import (
    attention_key,
    clinic_problems,
    current_protocol,
    overview,
    patient_report,
    patient_summary,
)
from sessions.log import SessionLog
from sessions.log.fields import _summary_from_raw
from sessions.report import render_json
from tests import test_clinic_db
from tests.test_clinic_db import TODAY, cli_register, import_registered, make_records, write_export
from tests.test_report_html import CHROMIUM, _chromium_args, _run_chromium

# the fixtures: every test with db_url runs on SQLite and on PostgreSQL
db_url = test_clinic_db.db_url
postgres_server = test_clinic_db.postgres_server

NOW = datetime(TODAY.year, TODAY.month, TODAY.day, 12, 0, tzinfo=UTC)  # noon: same day in Berlin
YESTERDAY = TODAY - timedelta(days=1)


def _import(db: ClinicDb, path: Path, records: list[dict[str, object]]) -> None:
    outcome = import_registered(db, write_export(path, records))
    assert outcome.refused is None, outcome.refused


def test_overview_figures_are_compute_adherences_over_each_window(
    db_url: str, tmp_path: Path
) -> None:
    # missed days 3 and 20 days ago, a short session 5 days ago, a protocol change mid-way
    records = make_records(
        "P1",
        60,
        skip_days=frozenset({39, 56}),
        tweak={
            2 * 54: {"minutes_at_dose": 4.0, "status": "stopped_by_patient"},
        },
    )
    with ClinicDb(db_url) as db:
        _import(db, tmp_path / "p1.jsonl", records)
        (row,) = overview(db, now=NOW)
        sessions = [h.summary for h in load_sessions(db, "P1")]
    protocol = current_protocol(sessions)

    def expected(since: date | None) -> tuple[float | None, float | None]:
        report = compute_adherence(
            protocol, sessions, since=since, until=YESTERDAY if since else None, today=TODAY
        )
        return report.session_adherence, report.dose_adherence

    for window, since in (
        (row.last_7, TODAY - timedelta(days=7)),
        (row.last_30, TODAY - timedelta(days=30)),
        (row.study, None),
    ):
        assert (window.session_adherence, window.dose_adherence) == pytest.approx(expected(since))
    assert row.last_7.session_adherence == pytest.approx(11 / 14)  # day -3 missed, one short
    assert row.days_since_last == 1
    assert row.flags["under_dose"] == 1
    assert (row.device_id, row.firmware_version) == ("LIV-P1", "1.2.0")


def test_flags_are_open_for_30_days_and_trips_sort_first(db_url: str, tmp_path: Path) -> None:
    trip = {"status": "tripped", "minutes_at_dose": 2.0, "reason": "overload"}
    override = {"override": True, "override_reason": "travel"}
    with ClinicDb(db_url) as db:
        # tripped 2 days ago: needs attention before a patient with worse adherence
        _import(db, tmp_path / "a.jsonl", make_records("A-trip", 20, tweak={36: trip}))
        # an old trip (40 days ago) is no longer open; an override 10 days ago is
        old = make_records("B-old", 50, skip_days=frozenset({47, 48}), seed=2,
                           tweak={18: trip, 80: override})  # fmt: skip
        _import(db, tmp_path / "b.jsonl", old)
        _import(db, tmp_path / "c.jsonl", make_records("C-fine", 20, seed=3))
        rows = overview(db, now=NOW)
    by_id = {r.patient_id: r for r in rows}
    assert [r.patient_id for r in rows] == ["A-trip", "B-old", "C-fine"]
    assert by_id["A-trip"].flags["trips"] == 1
    assert by_id["A-trip"].flags["under_dose"] == 1
    assert by_id["B-old"].flags["trips"] == 0
    assert by_id["B-old"].flags["overrides"] == 1
    assert attention_key(by_id["B-old"]) < attention_key(by_id["C-fine"])  # lower adherence


def test_integrity_problems_come_first_then_the_longest_silence(
    db_url: str, tmp_path: Path
) -> None:
    with ClinicDb(db_url) as db:
        full = make_records("Z-rolled-back", 10, seed=4)
        _import(db, tmp_path / "z.jsonl", full)
        _import(db, tmp_path / "z-old.jsonl", full[:10])  # an older copy: a rollback
        # two patients with nothing counted in the last 7 days: the longer silence first
        for name, silent_days, seed in (("M-silent-9d", 9, 5), ("N-silent-8d", 8, 6)):
            last_day = TODAY - timedelta(days=silent_days)
            records = make_records(name, 10, last_day=last_day, seed=seed)
            _import(db, tmp_path / f"{name}.jsonl", records)
        rows = overview(db, now=NOW)
    assert [r.patient_id for r in rows] == ["Z-rolled-back", "M-silent-9d", "N-silent-8d"]
    assert rows[0].flags["integrity"] == 1
    assert rows[1].days_since_last == 9
    assert rows[1].last_7.session_adherence == 0.0


def test_a_tampered_export_flags_its_patient_and_a_stranger_is_listed_apart(
    db_url: str, tmp_path: Path
) -> None:
    with ClinicDb(db_url) as db:
        _import(db, tmp_path / "ok.jsonl", make_records("P1", 5, seed=11))
        edited = make_records("P1", 6, seed=11)
        edited[11]["minutes_at_dose"] = 10.0 if edited[11]["minutes_at_dose"] != 10.0 else 9.0
        assert import_registered(db, write_export(tmp_path / "edit.jsonl", edited)).refused
        stranger = make_records("NEW-1", 2, seed=12)
        stranger[0]["slot"] = 2
        assert import_registered(db, write_export(tmp_path / "new.jsonl", stranger)).refused
        rows = overview(db, now=NOW)
        problems = clinic_problems(db)
    assert [(r.patient_id, r.flags["integrity"]) for r in rows] == [("P1", 1)]
    assert len(problems) == 1
    assert "new.jsonl" in problems[0]


def test_simulated_sessions_never_count_and_are_flagged() -> None:
    records = make_records("P1", 3)
    held = [HeldSession(_summary_from_raw(r), "therapy") for r in records[:4]]
    held += [HeldSession(_summary_from_raw(r), "simulated") for r in records[4:]]
    summary = patient_summary("P1", held)
    counted = {day: done for day, _, _, done, _, _ in summary.days}
    assert counted[YESTERDAY.isoformat()] == 0  # the day's two sessions were simulated
    assert [f[1] for f in summary.flags] == ["simulated", "simulated"]


def test_the_clinic_report_is_the_home_report_of_the_same_records(
    db_url: str, tmp_path: Path
) -> None:
    records = make_records("P1", 30, skip_days=frozenset({4, 11}), seed=8)
    export = write_export(tmp_path / "p1.jsonl", records)
    with SessionLog(tmp_path / "home.db") as log:
        log.import_jsonl(export)
        home = log.summaries()
    home_report = render_json(compute_adherence(current_protocol(home), home, today=TODAY))
    with ClinicDb(db_url) as db:
        import_registered(db, export)
        clinic = patient_report(db, "P1", "json", today=TODAY)
    assert json.loads(clinic) == json.loads(home_report)


def test_the_clinic_html_report_draws_flagged_sessions_from_the_stored_record(
    db_url: str, tmp_path: Path
) -> None:
    trip = {"status": "tripped", "minutes_at_dose": 2.0, "reason": "overload"}
    records = make_records("P1", 10, tweak={15: trip}, envelope_points=30)
    with ClinicDb(db_url) as db:
        _import(db, tmp_path / "p1.jsonl", records)
        page = patient_report(db, "P1", "html", today=TODAY)
    assert "Amplitude traces of flagged sessions" in page
    assert f"<figcaption>{records[15]['session_id']} &#183; LIV-P1</figcaption>" in page


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not found")
def test_the_html_overview_opens_in_chromium_with_a_report_per_row(
    tmp_path: Path,
) -> None:
    db = tmp_path / "clinic.db"
    exports = [
        write_export(tmp_path / "good.jsonl",
                     make_records("GOOD", 10, last_day=date.today() - timedelta(days=1))),
        write_export(tmp_path / "late.jsonl",
                     make_records("LATE.1", 10, seed=2,
                                  last_day=date.today() - timedelta(days=6))),
    ]  # fmt: skip
    cli_register(str(db), "LIV-GOOD", "LIV-LATE.1")
    assert main(["clinic", "import", "--db", str(db), *map(str, exports)]) == 0
    page = tmp_path / "site" / "overview.html"
    page.parent.mkdir()
    html_args = ["--format", "html", "--out", str(page)]
    assert main(["clinic", "overview", "--db", str(db), *html_args]) == 0
    dom = _run_chromium(
        [*_chromium_args(tmp_path / "profile"), "--dump-dom", page.as_uri()], tmp_path
    ).decode()
    rows = re.findall(r'<tr class="patient[^"]*" data-patient="([^"]*)">', dom)
    assert rows == ["LATE.1", "GOOD"]  # the patient silent for 6 days first
    links = re.findall(r'<a href="([^"]+)">', dom)
    assert len(links) == 2
    for link, patient in zip(links, rows, strict=True):
        report = (page.parent / link).read_text(encoding="utf-8")
        assert "<html" in report
        assert patient in report
