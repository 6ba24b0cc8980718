"""Each day is judged by the protocol in force that day, and reports show every protocol change.

A protocol is in force from its first session (the log keeps the protocol each session ran
under) or, for the protocol installed now, from when it was installed if that is earlier; the
first one from the start of its study. Every figure below was counted by hand.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from sessions.adherence import AdherenceReport, compute_adherence, protocol_periods
from sessions.cli import main
from sessions.commands.status import status_lines
from sessions.log import SessionLog
from sessions.protocol import PatientProtocol
from sessions.report import render_csv, render_html, render_json, render_table
from tests.simhelpers import enrol_home, write_signed
from tests.test_adherence import Book, Rec, at, d, make_protocol
from tests.test_report_html import (
    _chromium_args,
    _png_pixels,
    _run_chromium,
    month_html,
    needs_chromium,
)

OLD = make_protocol()  # 2 x 10 min a day, study 2026-03-02 to 2026-03-31 (Europe/London)


def under(protocol: PatientProtocol, records: list[Rec]) -> list[Rec]:
    """The records as the log keeps them: each with the protocol it ran under."""
    return [replace(r, protocol_json=protocol.canonical_json()) for r in records]


def old_period(report: AdherenceReport, protocol: PatientProtocol) -> tuple[int, int]:
    """Slots completed and prescribed over the counted days judged by ``protocol``."""
    days = [x for x in report.days if x.counted and x.protocol_sha256 == protocol.sha256]
    return sum(x.slots_completed for x in days), sum(x.slots_prescribed for x in days)


# --------------------------------------------------------------------------------------------
# A re-installed protocol with a new study start: the missed days of the first study stay


def reinstall_scenario() -> tuple[PatientProtocol, list[Rec], datetime]:
    """3 of 6 slots on 03-02..03-04, then the same protocol re-installed with a new start."""
    book = Book()
    book.add(d(2), 1, 8)
    book.add(d(2), 2, 18)
    book.add(d(3), 1, 8)  # 03-03 slot 2 and all of 03-04 missed
    first = under(OLD, book.records)
    new = make_protocol(study_start="2026-03-10")
    later = Book()
    later.add(d(10), 1, 8)  # 03-10: one of two slots
    return new, first + under(new, later.records), at(d(5), 9)


def test_a_reinstall_with_a_new_study_start_keeps_the_earlier_missed_days() -> None:
    new, records, installed = reinstall_scenario()
    report = compute_adherence(new, records, today=d(11), installed_utc=installed)
    assert old_period(report, OLD) == (3, 6)
    assert report.missed_days == (d(4),)
    assert [x.status for x in report.days[:3]] == ["full", "partial", "missed"]
    # 03-05 to 03-09: the new protocol is in force but its study has not started
    assert {x.status for x in report.days[3:8]} == {"outside"}
    assert not any(x.counted for x in report.days[3:8])
    assert report.day(d(10)) is not None
    assert report.day(d(10)).status == "partial"  # type: ignore[union-attr]
    assert (report.slots_completed, report.slots_prescribed) == (4, 8)
    assert report.period_start == d(2)  # the earlier study is still reported


def test_without_an_install_time_the_new_protocol_starts_at_its_first_session() -> None:
    new, records, _ = reinstall_scenario()
    report = compute_adherence(new, records, today=d(11))
    # the old protocol stays in force until the new one was first used on 03-10
    assert old_period(report, OLD) == (3, 16)
    assert report.missed_days == (d(4), d(5), d(6), d(7), d(8), d(9))
    periods = report.protocols
    assert [p.in_force_from for p in periods] == [None, d(10)]
    assert periods[0].in_force_until == d(9)


def test_the_report_command_keeps_the_old_period(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through `liv report`: sessions in a real log, the protocol re-installed in the home."""
    home = tmp_path / "home"
    new, records, installed = reinstall_scenario()
    rx_old, rx_new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    write_signed(rx_old, yaml.safe_dump(OLD.to_dict()))
    write_signed(rx_new, yaml.safe_dump(new.to_dict()))
    enrol_home(home)
    assert main(["protocol", "install", str(rx_old), "--home", str(home)]) == 0
    with SessionLog(home / "liv.db") as log:
        for r in records[:3]:
            write_session(log, OLD, r)
    assert main(["protocol", "install", str(rx_new), "--home", str(home)]) == 0
    stamp = installed.timestamp()
    os.utime(home / "protocol.yaml", (stamp, stamp))  # installed on 03-05
    with SessionLog(home / "liv.db") as log:
        write_session(log, new, records[3])
    capsys.readouterr()
    argv = ["report", "--home", str(home), "--format", "json", "--until", "2026-03-10"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    by_day = {x["date"]: x for x in data["days"]}
    old_days = [by_day[f"2026-03-0{k}"] for k in (2, 3, 4)]
    assert [x["protocol_sha256"] for x in old_days] == [OLD.sha256] * 3
    assert sum(x["slots_completed"] for x in old_days) == 3
    assert sum(x["slots_prescribed"] for x in old_days) == 6
    assert data["missed_days"] == ["2026-03-04"]
    assert data["overall"]["slots_completed"] == 4
    assert data["overall"]["slots_prescribed"] == 8
    assert [p["sha256"] for p in data["protocols"]] == [OLD.sha256, new.sha256]
    assert data["protocols"][1]["in_force_from"] == "2026-03-05"
    assert data["protocols"][1]["changes"] == [
        "study 2026-03-02 to 2026-03-31 -> 2026-03-10 to 2026-03-31"
    ]


def write_session(log: SessionLog, protocol: PatientProtocol, r: Rec) -> None:
    assert r.ended_utc is not None
    session_id = log.start_session(
        patient_id=r.patient_id,
        device_id=r.device_id,
        firmware_version=r.firmware_version,
        protocol_sha256=protocol.sha256,
        protocol_json=protocol.canonical_json(),
        started_utc=r.started_utc,
        timezone=protocol.timezone,
        local_date=r.local_date,
        slot=r.slot,
        minutes_prescribed=r.minutes_prescribed,
        target_g=protocol.target_g,
    )
    log.finish_session(
        session_id,
        status=r.status,
        reason=r.reason,
        ended_utc=r.ended_utc,
        minutes_at_dose=r.minutes_at_dose,
        envelope=[],
        freqs_hz=[30.0],
        safety_events=[],
        mean_error_pct=0.0,
        p95_abs_error_pct=0.4,
        exposure=None,
    )


# --------------------------------------------------------------------------------------------
# Minutes and sessions per day change mid-study

NEW_RX = make_protocol(minutes_per_session=15.0, sessions_per_day=1, min_gap_hours=4.0)


def mid_study_change() -> list[Rec]:
    """2 x 10 min on 03-02..03-04 (full), then 1 x 15 min on 03-05 and 03-06; 03-07 missed."""
    book = Book()
    for day in (2, 3, 4):
        book.add(d(day), 1, 8)
        book.add(d(day), 2, 18)
    later = Book()
    for day in (5, 6):
        later.add(d(day), 1, 8, at_dose=15.0, prescribed=15.0)
    return under(OLD, book.records) + under(NEW_RX, later.records)


def test_a_prescription_change_mid_study_judges_each_side_by_its_own() -> None:
    report = compute_adherence(NEW_RX, mid_study_change(), today=d(8))
    rows = [
        (x.day, x.status, x.slots_completed, x.slots_prescribed, x.minutes_prescribed)
        for x in report.days
    ]
    assert rows == [
        (d(2), "full", 2, 2, 20.0),
        (d(3), "full", 2, 2, 20.0),
        (d(4), "full", 2, 2, 20.0),
        (d(5), "full", 1, 1, 15.0),
        (d(6), "full", 1, 1, 15.0),
        (d(7), "missed", 0, 1, 15.0),
        (d(8), "today", 0, 1, 15.0),  # in progress, not counted
    ]
    assert (report.slots_completed, report.slots_prescribed) == (8, 9)
    assert (report.minutes_at_dose, report.minutes_prescribed) == (90.0, 105.0)
    assert report.flagged == ()  # no 10-minute session is "under dose" for a 15-minute slot


def test_an_installed_protocol_never_used_judges_the_days_since_it_was_installed() -> None:
    records = mid_study_change()[:6]  # only the old protocol's sessions
    report = compute_adherence(NEW_RX, records, today=d(8), installed_utc=at(d(5), 7))
    assert [x.status for x in report.days] == ["full"] * 3 + ["missed"] * 3 + ["today"]
    assert [x.minutes_prescribed for x in report.days] == [20.0] * 3 + [15.0] * 4
    assert report.protocols[-1].in_force_from == d(5)
    assert report.protocols[-1].first_used is None


def test_an_install_time_before_the_old_protocols_last_session_is_not_believed() -> None:
    # a file time earlier than a session of the old protocol: in force from that session on
    report = compute_adherence(
        NEW_RX, mid_study_change()[:6], today=d(8), installed_utc=at(d(1), 7)
    )
    assert [p.in_force_from for p in report.protocols] == [None, d(4)]
    assert report.day(d(3)).minutes_prescribed == 20.0  # type: ignore[union-attr]


def test_going_back_to_an_earlier_protocol_is_a_new_period() -> None:
    records = mid_study_change()
    back = Book()
    back.add(d(9), 1, 8)
    back.add(d(9), 2, 18)
    records += under(OLD, back.records)
    periods = protocol_periods(OLD, records, today=d(10))
    assert [p.sha256 for p in periods] == [OLD.sha256, NEW_RX.sha256, OLD.sha256]
    assert [(p.in_force_from, p.in_force_until) for p in periods] == [
        (None, d(4)),
        (d(5), d(8)),
        (d(9), None),
    ]
    assert [p.sessions for p in periods] == [6, 2, 2]
    assert periods[1].changes == (
        "minutes per session 10 -> 15",
        "sessions per day 2 -> 1",
        "rest between sessions 3 h -> 4 h",
    )
    assert periods[2].changes == (
        "minutes per session 15 -> 10",
        "sessions per day 1 -> 2",
        "rest between sessions 4 h -> 3 h",
    )
    report = compute_adherence(OLD, records, today=d(10))
    assert report.day(d(8)).minutes_prescribed == 15.0  # type: ignore[union-attr]
    assert report.day(d(9)).status == "full"  # type: ignore[union-attr]


def test_one_protocol_is_one_period_in_force_from_its_study_start() -> None:
    book = Book()
    book.add(d(2), 1, 8)
    periods = protocol_periods(OLD, under(OLD, book.records), today=d(3))
    assert len(periods) == 1
    assert periods[0].in_force_from is None
    assert periods[0].in_force_until is None
    assert periods[0].current
    assert periods[0].changes == ()


# --------------------------------------------------------------------------------------------
# The reports show each change


def changed_report() -> AdherenceReport:
    return compute_adherence(NEW_RX, mid_study_change(), today=d(8))


def test_json_lists_the_protocols_and_each_day_names_its_own() -> None:
    data = json.loads(render_json(changed_report()))
    assert [p["sha256"] for p in data["protocols"]] == [OLD.sha256, NEW_RX.sha256]
    first, second = data["protocols"]
    assert first["in_force_from"] is None
    assert first["in_force_until"] == "2026-03-04"
    assert second["in_force_from"] == "2026-03-05"
    assert second["in_force_until"] is None
    assert second["current"] is True
    assert second["minutes_per_session"] == 15.0
    assert second["sessions_per_day"] == 1
    assert second["study_start"] == "2026-03-02"
    assert "minutes per session 10 -> 15" in second["changes"]
    assert [x["protocol_sha256"] for x in data["days"]] == [OLD.sha256] * 3 + [NEW_RX.sha256] * 4


def test_the_table_names_each_protocol_and_the_day_it_changed() -> None:
    text = render_table(changed_report())
    lines = [" ".join(line.split()) for line in text.splitlines()]
    joined = " ".join(lines)  # the report wraps long lines at 100 characters
    assert "Protocols (each day is judged by the protocol in force that day):" in lines
    assert (
        f"{OLD.sha256[:12]} from the start of its study to 2026-03-04: 0.3 g peak at 30 Hz, "
        "2 a day x 10 min; study 2026-03-02 to 2026-03-31"
    ) in joined
    assert (
        f"{NEW_RX.sha256[:12]} from 2026-03-05 to now (in force): 0.3 g peak at 30 Hz, "
        "1 a day x 15 min; study 2026-03-02 to 2026-03-31"
    ) in joined
    assert (
        "changed on 2026-03-05: minutes per session 10 -> 15; sessions per day 2 -> 1; "
        "rest between sessions 3 h -> 4 h"
    ) in joined
    assert f"2026-03-05 Thu full 1/1 15.0/15.0 15.0 min in 1 changed to " \
        f"{NEW_RX.sha256[:12]}" in lines  # fmt: skip
    assert "2026-03-04 Wed full 2/2 20.0/20.0 20.0 min in 2" in lines


def test_csv_rows_name_their_protocol_and_the_change() -> None:
    rows = list(csv.DictReader(io.StringIO(render_csv(changed_report()))))
    assert [r["protocol"] for r in rows] == [OLD.sha256[:12]] * 3 + [NEW_RX.sha256[:12]] * 4
    changes = {r["date"]: r["protocol_change"] for r in rows if r["protocol_change"]}
    assert changes == {
        "2026-03-05": f"protocol {NEW_RX.sha256[:12]} in force: minutes per session 10 -> 15; "
        "sessions per day 2 -> 1; rest between sessions 3 h -> 4 h"
    }


def test_html_marks_the_change_in_the_calendar_and_the_chart_and_lists_it() -> None:
    records = mid_study_change()
    page = render_html(changed_report(), NEW_RX, records)
    cells = re.findall(r'<td><div class="day (\w+)" title="([^"]*)">(.*?)</div></td>', page)
    marked = [title.split(":")[0] for _, title, inner in cells if 'class="pc"' in inner]
    assert marked == ["Thu 5 Mar 2026"]
    title = next(t for _, t, _ in cells if t.startswith("Thu 5 Mar 2026"))
    assert "minutes per session 10 -&gt; 15" in title
    assert "Protocol changes (1)" in page
    assert "<h2>Prescription in force now</h2>" in page
    table = page[page.index('<table class="data protocols">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 3  # head + two protocols
    assert NEW_RX.sha256[:12] in table
    assert OLD.sha256[:12] in table
    assert "sessions per day 2 -&gt; 1" in table
    assert page.count('<g class="protocol-change">') == 1  # the minutes chart's marker
    assert "prescribed 15 min" in page  # the prescribed line follows the protocol in force


CHANGE_RGB = (0x6B, 0x3F, 0xA0)  # the protocol-change marker (sessions/report/)


def painted(page: str, tmp_path: Path, name: str) -> Counter[tuple[int, int, int]]:
    """The colours headless Chromium paints for ``page``."""
    source, shot = tmp_path / f"{name}.html", tmp_path / f"{name}.png"
    source.write_text(page, encoding="utf-8")
    args = [*_chromium_args(tmp_path / f"profile-{name}"), f"--screenshot={shot}"]
    _run_chromium([*args, "--hide-scrollbars", source.as_uri()], tmp_path)
    _, _, rows = _png_pixels(shot.read_bytes())
    colours: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        colours.update(zip(row[0::3], row[1::3], row[2::3], strict=True))
    return colours


@needs_chromium
def test_chromium_paints_the_change_marker(tmp_path: Path) -> None:
    changed = render_html(changed_report(), NEW_RX, mid_study_change())
    dom = _run_chromium(
        [*_chromium_args(tmp_path / "profile-dom"), "--dump-dom", _write(tmp_path, changed)],
        tmp_path,
    ).decode("utf-8")
    assert dom.count('<span class="pc" aria-hidden="true">Rx</span>') == 1  # Thu 5 Mar
    assert "Protocol changes (1)" in dom
    assert painted(changed, tmp_path, "changed")[CHANGE_RGB] > 50  # the badge and the line
    assert painted(month_html(), tmp_path, "month")[CHANGE_RGB] == 0  # no change, no marker


def _write(tmp_path: Path, page: str) -> str:
    path = tmp_path / "page.html"
    path.write_text(page, encoding="utf-8")
    return path.as_uri()


def test_a_report_with_one_protocol_shows_no_change() -> None:
    book = Book()
    book.add(d(2), 1, 8)
    report = compute_adherence(OLD, under(OLD, book.records), today=d(4))
    page = render_html(report, OLD, under(OLD, book.records))
    assert 'class="pc"' not in page
    assert "Protocol changes" not in page
    assert "Protocols (" not in render_table(report)
    assert [p["changes"] for p in report.to_dict()["protocols"]] == [[]]


# --------------------------------------------------------------------------------------------
# `liv status` uses the protocol in force now


def test_status_uses_the_protocol_in_force_now() -> None:
    records: list[Any] = mid_study_change()
    now = at(d(6), 12)
    lines = status_lines(NEW_RX, records, now)
    assert lines[1] == "  Session 1: done."  # one 15-minute slot today, under the new protocol
    assert len([line for line in lines if line.startswith("  Session")]) == 1
    # the streak counts days complete under today's prescription: 03-05 and 03-06
    assert lines[-1] == "Every session done 2 days in a row."
