"""A home clock set back between sessions to fill a missed day (backdating), detected.

The home computer writes each session's times, and adherence is counted by the day they name:
whoever holds the computer can set its clock back to yesterday evening and run a session now.
What cannot be forged is the order: the plate countersigns records with a counter that never
decreases, and a log chains them in the order they finished, each record's hash covering its
times. A record that starts (more than a few minutes) before a record recorded before it
ended was made with the clock set back: it is flagged, kept, and credited to no day, at home
(``liv status``, ``liv report``, ``liv verify``) and at the clinic (import problem
``clock_set_back``, the overview's days and flags).

The first test runs the attack end to end on a simulated plate, through the patient's own
commands; on the code before the check (commit 2788c78) its backdated session completed
yesterday's missing slot in the report and the streak, and nothing said anything.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from benchmarks.make_log import completed_record, make_log
from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from sessions.cli import main
from sessions.clinic.db import ClinicDb
from sessions.home import LivHome
from sessions.log import GENESIS_HASH, PINS_FILE, DevicePins, SessionLog, SessionStatus
from sessions.protocol import PatientProtocol, protocol_from_dict
from sessions.runner import run_session
from tests.simhelpers import install_signed
from tests.test_clinic_db import (
    import_registered,
    protocol_dict,
    vouched,
    write_export,
)
from tests.test_states_rhythm import PlateClock, local

ZONE = "Europe/Berlin"
DEVICE_ID = "SIM-BACK"


# --- the attack, end to end at home ---------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> LivHome:
    h = LivHome(tmp_path / "home")
    h.ensure()
    (h.root / "DEMO").write_text("demo\n")  # sessions on the simulator count, as in the clinic
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
        h.calibrations().save(identify(device))
    return h


def _run(home: LivHome, clock: PlateClock, override: str | None = None) -> Any:
    url = f"sim://?speed=max&mass=70&seed=5&device_id={DEVICE_ID}"
    with SessionLog(home.db_path()) as log:
        outcome = run_session(
            protocol=home.protocol(), log=log, device_url=url, calibrations=home.calibrations(),
            now=clock, on_progress=clock.follow, demo=True, override_reason=override,
        )  # fmt: skip
    assert outcome.record.status is SessionStatus.COMPLETED, outcome.record.reason
    return outcome.record


def _liv(home: LivHome, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv, "--home", str(home.root)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_a_session_run_with_the_clock_set_back_is_flagged_at_home_and_not_credited(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Yesterday's two sessions and the morning of the day before ran; that evening was
    missed. Today the clock is set back to that evening and a session runs (an override lifts
    the gap the scheduler would have held it back with): it is recorded, chained and
    countersigned by the real plate, dated the missed evening."""
    zone = ZoneInfo(ZONE)
    yesterday = datetime.now(zone).date() - timedelta(days=1)
    before = yesterday - timedelta(days=1)
    install_signed(
        home, timezone=ZONE, study_start=before.isoformat(),
        study_end=(yesterday + timedelta(days=30)).isoformat(),
    )  # fmt: skip
    clock = PlateClock()
    for day, hour in ((before, 8), (yesterday, 8), (yesterday, 19)):
        clock.set(local(ZONE, day, hour, 0))
        _run(home, clock)
    clock.set(local(ZONE, before, 19, 30))  # the clock set back by a day
    backdated = _run(home, clock, override="I forgot")
    assert (backdated.local_date, backdated.slot) == (before, 2)

    code, out, _ = _liv(home, capsys, "report", "--format", "json")
    assert code == 0
    report = json.loads(out)
    (day,) = [d for d in report["days"] if d["date"] == before.isoformat()]
    assert day["slots_completed"] == 1, "the backdated session completed the missed evening"
    flags = [f for f in report["flagged"] if f["session_id"] == backdated.session_id]
    assert "clock_set_back" in [f["kind"] for f in flags]

    code, out, _ = _liv(home, capsys, "status", "--json")
    assert code == 0
    assert json.loads(out)["streak_days"] == 1  # yesterday only: the day before is not full
    code, out, _ = _liv(home, capsys, "status")
    assert "started before one recorded before it ended" in out
    assert "This computer's clock was set back" in out
    assert "Check that the clock is right" in out

    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
        key = device.identity().public_key
    DevicePins(home.root / PINS_FILE).pin(DEVICE_ID, key, 1)
    code, out, err = _liv(home, capsys, "verify", "--no-device")
    assert code == 0, err  # the log is intact: it says what the times show
    assert "CLOCK SET BACK: 1 session(s)" in err
    assert backdated.session_id in err


# --- the check itself ----------------------------------------------------------------------


def _record(session_id: str, log_id: str, index: int, start: datetime, minutes: float = 10.0,
            key: str | None = None, counter: int | None = None) -> Any:  # fmt: skip
    from sessions.log.clockorder import TimedRecord

    return TimedRecord(session_id, log_id, index, start, start + timedelta(minutes=minutes),
                       key, counter)  # fmt: skip


def test_the_slack_lets_an_ntp_step_pass_and_a_set_back_beyond_it_is_found() -> None:
    from sessions.log.clockorder import CHAIN, PLATE, SET_BACK_SLACK, set_back_records

    t0 = datetime(2026, 5, 4, 6, 0, tzinfo=UTC)
    end = t0 + timedelta(minutes=10)
    ntp = [_record("a", "L", 0, t0), _record("b", "L", 1, end - timedelta(seconds=40))]
    assert set_back_records(ntp) == {}
    beyond = [_record("a", "L", 0, t0), _record("b", "L", 1, end - SET_BACK_SLACK * 2)]
    found = set_back_records(beyond)
    assert list(found) == ["b"]
    assert found["b"].order == CHAIN
    assert found["b"].earlier_session == "a"
    # every session run while the clock stayed back is found, not only the first: c starts
    # after b ended, but still before a ended
    hour_back = [_record("a", "L", 0, t0), _record("b", "L", 1, end - timedelta(minutes=60)),
                 _record("c", "L", 2, end - timedelta(minutes=45))]  # fmt: skip
    found = set_back_records(hour_back)
    assert sorted(found) == ["b", "c"]
    assert found["c"].earlier_session == "a"
    # a new chain escapes the chain order, not the plate's
    plate = [_record("a", "L1", 0, t0, key="K", counter=7),
             _record("b", "L2", 0, t0 - timedelta(hours=12), key="K", counter=8)]  # fmt: skip
    assert set_back_records(plate)["b"].order == PLATE


# --- the clinic ---------------------------------------------------------------------------


def _chain(
    patient: str,
    times: list[tuple[datetime, int, str]],
    *,
    log_id: str | None = None,
    study_start: date = date(2026, 1, 1),
) -> list[dict[str, Any]]:
    """A verifying chain of 10-minute therapy records started at the UTC ``times`` (with their
    slot and plate), in that order: each record's day is its start's in Berlin."""
    protocol: PatientProtocol = protocol_from_dict(protocol_dict(patient, study_start, 365))
    log_id = log_id or str(uuid.uuid4())
    records: list[dict[str, Any]] = []
    prev = GENESIS_HASH
    for started, slot, plate in times:
        raw = completed_record(
            log_id=log_id, chain_index=len(records), prev_hash=prev,
            session_id=str(uuid.uuid4()), device_id=plate, firmware_version="1.2.0",
            protocol=protocol, started=started, ended=started + timedelta(minutes=10, seconds=3),
            slot=slot, mean_error_pct=-0.4, p95_abs_error_pct=1.2, envelope=[[0.0, 0.3]],
        )  # fmt: skip
        prev = raw["record_hash"]
        records.append(raw)
    return records


def _berlin(day: date, hour: int, minute: int = 5, fold: int = 0) -> datetime:
    moment = datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(ZONE), fold=fold)
    return moment.astimezone(UTC)


def _twice_a_day(first: date, days: int, plate: str = "LIV-P1") -> list[tuple[datetime, int, str]]:
    return [
        (_berlin(first + timedelta(days=k), hour), slot, plate)
        for k in range(days)
        for slot, hour in ((1, 8), (2, 18))
    ]


def _import(tmp_path: Path, records: list[dict[str, Any]]) -> tuple[Any, ClinicDb]:
    db = ClinicDb(str(tmp_path / "clinic.db"))
    outcome = import_registered(db, write_export(tmp_path / "export.jsonl", records))
    assert outcome.refused is None, outcome.refused
    return outcome, db


def _slots(db: ClinicDb, patient: str, day: date) -> int:
    rows = db.query(
        "SELECT slots_completed FROM patient_days WHERE patient_id = ? AND day = ?",
        (patient, day.isoformat()),
    )
    return int(rows[0][0])


def _problems(db: ClinicDb, kind: str) -> list[str]:
    return [str(d) for (d,) in db.query("SELECT detail FROM problems WHERE kind = ?", (kind,))]


def test_the_clinic_flags_a_backdated_record_and_credits_it_to_no_day(tmp_path: Path) -> None:
    """Six days of sessions; the evening of day 3 was missed, and a session run after day 6's
    evening with the clock set back to day 3's evening is the chain's last record."""
    first = date(2026, 2, 1)
    times = [t for t in _twice_a_day(first, 6) if t[0] != _berlin(first + timedelta(days=2), 18)]
    missed = first + timedelta(days=2)
    times.append((_berlin(missed, 19), 2, "LIV-P1"))
    records = _chain("P1", times)
    outcome, db = _import(tmp_path, records)
    with db:
        backdated = records[-1]
        (problem,) = _problems(db, "clock_set_back")
        assert problem in outcome.problems
        assert problem.startswith("patient P1: 1 session(s) are dated earlier than a session")
        assert f"record {backdated['chain_index']} of log {backdated['log_id']}" in problem
        assert backdated["session_id"] in problem
        assert "the plate countersigned it after" in problem
        assert "credited to no day" in problem
        assert _slots(db, "P1", missed) == 1  # kept, but it does not fill the missed evening
        assert db.query("SELECT COUNT(*) FROM records")[0][0] == len(records)
        flags = db.query(
            "SELECT kind, local_date FROM patient_flags WHERE session_id = ?",
            (backdated["session_id"],),
        )
        assert ("clock_set_back", missed.isoformat()) in [tuple(f) for f in flags]
        # imported again, nothing new: no second problem
        again = import_registered(db, tmp_path / "export.jsonl")
        assert again.added == 0
        assert not any("set back" in p for p in again.problems)


def test_a_later_export_that_backdates_against_what_the_clinic_holds_is_flagged(
    tmp_path: Path,
) -> None:
    """The record the backdated one is judged against came in an earlier import."""
    first = date(2026, 2, 1)
    times = _twice_a_day(first, 4)
    del times[3]  # day 2's evening missed
    times.append((_berlin(first + timedelta(days=1), 19), 2, "LIV-P1"))
    records = _chain("P1", times)
    db = ClinicDb(str(tmp_path / "clinic.db"))
    with db:
        assert import_registered(db, write_export(tmp_path / "a.jsonl", records[:-1])).added
        outcome = import_registered(db, write_export(tmp_path / "b.jsonl", records))
        assert outcome.added == 1
        assert any("dated earlier than a session" in p for p in outcome.problems)
        assert _slots(db, "P1", first + timedelta(days=1)) == 1


def test_a_new_log_backdated_against_the_old_one_is_caught_by_the_plates_order(
    tmp_path: Path,
) -> None:
    """A fresh log escapes the chain order (its first record has nothing before it), not the
    plate's: the plate's counters run on from the old log's, which the clinic holds."""
    first = date(2026, 2, 1)
    days = _twice_a_day(first, 3)
    old = vouched(_chain("P1", [*days[:3], days[4]]))  # day 2's evening missed
    head = old[-1]["device_voucher"]["head"]
    new = _chain("P1", [(_berlin(first + timedelta(days=1), 19), 2, "LIV-P1")])
    db = ClinicDb(str(tmp_path / "clinic.db"))
    with db:
        assert import_registered(db, write_export(tmp_path / "old.jsonl", old)).added == 4
        newer = vouched(new, first_counter=5, head=head)
        outcome = import_registered(db, write_export(tmp_path / "new.jsonl", newer))
        assert outcome.refused is None, outcome.refused
        (problem,) = _problems(db, "clock_set_back")
        assert "the plate countersigned it after" in problem
        assert _slots(db, "P1", first + timedelta(days=1)) == 1
        assert _problems(db, "new_chain")  # and the new log beside the old one, as before


@pytest.mark.parametrize(
    "history",
    ["dst", "clock_corrected_forward", "two_plates", "ntp_step_back", "clock_ahead_put_right"],
)
def test_honest_histories_raise_no_flag_at_the_clinic(tmp_path: Path, history: str) -> None:
    first = date(2026, 3, 20)
    times = _twice_a_day(first, 14)  # across the spring change (29 March)
    if history == "dst":
        # the autumn night 02:00-03:00 twice: 02:30 (first), then 02:15 of the second pass
        autumn = date(2026, 10, 25)
        times += [(_berlin(autumn, 2, 30, fold=0), 1, "LIV-P1"),
                  (_berlin(autumn, 2, 15, fold=1), 2, "LIV-P1")]  # fmt: skip
        assert times[-1][0] > times[-2][0] + timedelta(minutes=10)
    elif history == "clock_corrected_forward":  # the clock was hours slow, then put right
        slow = [(t - timedelta(hours=3), s, p) for t, s, p in times[:8]]
        times = slow + times[8:]
    elif history == "two_plates":
        times = [(t, s, "LIV-P1" if k % 3 else "LIV-P2") for k, (t, s, p) in enumerate(times)]
    elif history == "ntp_step_back":  # a fast clock stepped back 90 s before the next session
        _t, s, p = times[5]
        times[5] = (times[4][0] + timedelta(minutes=10, seconds=3) - timedelta(seconds=90), s, p)
    elif history == "clock_ahead_put_right":  # years ahead once (flagged as such), then right
        times.insert(4, (datetime(2031, 1, 1, 8, tzinfo=UTC), 1, "LIV-P1"))
    outcome, db = _import(tmp_path, _chain("P1", times))
    with db:
        assert _problems(db, "clock_set_back") == []
        assert not any("set back" in p for p in outcome.problems)
        flagged = db.query("SELECT COUNT(*) FROM patient_flags WHERE kind = 'clock_set_back'")
        assert flagged[0][0] == 0
        assert _slots(db, "P1", first + timedelta(days=3)) == 2


# --- honest histories at home ---------------------------------------------------------------


def _write(log: SessionLog, protocol: PatientProtocol, start: datetime, slot: int) -> str:
    zone = ZoneInfo(protocol.timezone)
    sid = log.start_session(
        patient_id=protocol.patient_id, device_id="LIV-P1", firmware_version="1.2.0",
        protocol_sha256=protocol.sha256, protocol_json=protocol.canonical_json(),
        started_utc=start, timezone=protocol.timezone,
        local_date=start.astimezone(zone).date(), slot=slot, minutes_prescribed=10.0,
        target_g=0.3,
    )  # fmt: skip
    log.finish_session(
        sid, status="completed", reason="", ended_utc=start + timedelta(minutes=10),
        minutes_at_dose=10.0, envelope=[(0.1, 0.3)], freqs_hz=[30.0], safety_events=[],
        mean_error_pct=0.0, p95_abs_error_pct=1.0, exposure=None,
    )  # fmt: skip
    return sid


def _count_full_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the full set-back check so a test can count how often the quick path fell back."""
    from sessions.log import storage

    calls: list[int] = []
    full = storage.set_back_records

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return full(*args, **kwargs)

    monkeypatch.setattr(storage, "set_back_records", counted)
    return calls


def test_at_home_an_ntp_step_passes_and_a_set_back_is_found_by_the_quick_and_full_check(
    tmp_path: Path,
) -> None:
    protocol = protocol_from_dict(protocol_dict("P1", date(2026, 1, 1), 365))
    day = date(2026, 2, 2)
    with SessionLog(tmp_path / "liv.db") as log:
        _write(log, protocol, _berlin(day, 8), 1)
        # the evening session starts 30 s before the morning one "ended": NTP stepped back
        _write(log, protocol, _berlin(day, 8, 5 + 10) - timedelta(seconds=30), 2)
        _write(log, protocol, _berlin(day + timedelta(days=1), 8), 1)
        assert log.set_back() == {}
        assert log.set_back(quick=True) == {}
        sid = _write(log, protocol, _berlin(day - timedelta(days=1), 18), 2)  # set back a day
        assert list(log.set_back()) == [sid]
        assert list(log.set_back("P1", quick=True)) == [sid]


@pytest.mark.slow
def test_a_five_year_home_log_raises_no_flag(tmp_path: Path) -> None:
    path = tmp_path / "liv.db"
    count = make_log(path, years=5, points_per_s=0.05, nv=tmp_path / "nv")
    assert count >= 3650
    with SessionLog(path) as log:
        patient = log.summaries()[0].patient_id
        assert log.set_back() == {}  # both orders, every record read
        assert log.set_back(patient, quick=True) == {}


# --- the second reader's findings -----------------------------------------------------------


def test_a_record_ending_in_the_first_minutes_of_year_one_is_compared_without_overflow() -> None:
    from sessions.log.clockorder import set_back_records

    year1 = datetime(1, 1, 1, tzinfo=UTC)  # a hand-edited record: end - 5 min does not exist
    records = [
        _record("a", "L", 0, year1, 2),
        _record("b", "L", 1, datetime(2026, 5, 4, tzinfo=UTC)),
    ]
    assert set_back_records(records) == {}
    back = [_record("a", "L", 0, year1 + timedelta(minutes=30)), _record("b", "L", 1, year1)]
    assert list(set_back_records(back)) == ["b"]


def test_after_an_ntp_step_the_quick_path_answers_without_the_full_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protocol = protocol_from_dict(protocol_dict("P1", date(2026, 1, 1), 365))
    day = date(2026, 2, 2)
    calls = _count_full_checks(monkeypatch)
    with SessionLog(tmp_path / "liv.db") as log:
        _write(log, protocol, _berlin(day, 8), 1)
        # NTP stepped the clock back 30 s: the next record starts before the last one "ended"
        _write(log, protocol, _berlin(day, 8, 5 + 10) - timedelta(seconds=30), 1)
        _write(log, protocol, _berlin(day, 18), 2)
        assert log.set_back("P1", quick=True) == {}
        assert calls == []  # answered by the one pass over the index, as before the step
        sid = _write(log, protocol, _berlin(day, 18, 5 + 10) - timedelta(minutes=6), 2)
        assert list(log.set_back("P1", quick=True)) == [sid]  # beyond the slack: checked
        assert calls == [1]


def test_a_clock_still_set_back_by_days_does_not_hide_the_record_it_backdated(
    tmp_path: Path,
) -> None:
    protocol = protocol_from_dict(protocol_dict("P1", date(2026, 1, 1), 365))
    day = date(2026, 3, 10)
    with SessionLog(tmp_path / "liv.db") as log:
        _write(log, protocol, _berlin(day - timedelta(days=1), 8), 1)
        _write(log, protocol, _berlin(day + timedelta(days=1), 8), 1)
        _write(log, protocol, _berlin(day + timedelta(days=1), 18), 2)
        fake_now = _berlin(day - timedelta(days=1), 19)  # the true time: two days later
        sid = _write(log, protocol, fake_now, 2)
        reader = fake_now + timedelta(minutes=11)  # status right after, the clock still back
        assert list(log.set_back("P1", reader, quick=True)) == [sid]
        assert list(log.set_back("P1", reader)) == [sid]
        assert log.clock_behind(reader) == _berlin(day + timedelta(days=1), 18, 15)
        assert log.clock_behind(reader, "P1") == log.clock_behind(reader)
        assert log.clock_behind(_berlin(day + timedelta(days=2), 7)) is None


def test_status_says_the_clock_is_behind_and_names_the_set_back_day(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    today = datetime.now(ZoneInfo(ZONE)).date()
    install_signed(
        home, timezone=ZONE, study_start=(today - timedelta(days=5)).isoformat(),
        study_end=(today + timedelta(days=30)).isoformat(),
    )  # fmt: skip
    protocol = home.protocol()
    now = datetime.now(UTC)
    with SessionLog(home.db_path()) as log:
        _write(log, protocol, now - timedelta(days=1, hours=2), 1)
        sid = _write(log, protocol, now - timedelta(days=2), 2)  # backdated a day
    code, out, _ = _liv(home, capsys, "status")
    assert code == 0
    day = (now - timedelta(days=2)).astimezone(protocol.zone).date()
    assert f"{day:%A} {day.day} {day:%B}" in out
    assert "clock was set back" in out
    data = json.loads(_liv(home, capsys, "status", "--json")[1])
    assert data["clock_set_back_sessions"] == [sid]
    data = json.loads(_liv(home, capsys, "verify", "--json")[1])
    assert data["clock_set_back_sessions"] == [sid]
    with SessionLog(home.db_path()) as log:  # now a session dated two days ahead of the clock
        _write(log, protocol, now + timedelta(days=2), 1)
    out = _liv(home, capsys, "status")[1]
    assert "clock may be behind" in out


@pytest.mark.parametrize("history", ["two_plates_interleaved", "plate_replaced", "new_computer"])
def test_honest_vouched_histories_raise_no_flag_at_the_clinic(tmp_path: Path, history: str) -> None:
    """Signed by their plates: two plates used in turn, a plate replaced mid-study, and the
    computer replaced (a new log) with the same plate counting on."""
    first = date(2026, 3, 20)
    times = _twice_a_day(first, 14)
    if history == "two_plates_interleaved":
        two = [(t, s, "LIV-P1" if k % 3 else "LIV-P2") for k, (t, s, _p) in enumerate(times)]
        exports = [vouched(_chain("P1", two))]
    elif history == "plate_replaced":
        replaced = [(t, s, "LIV-P1" if k < 12 else "LIV-P2") for k, (t, s, _p) in enumerate(times)]
        exports = [vouched(_chain("P1", replaced))]
    else:
        old = vouched(_chain("P1", times[:10]))
        head = old[-1]["device_voucher"]["head"]
        exports = [old, vouched(_chain("P1", times[10:]), first_counter=11, head=head)]
    db = ClinicDb(str(tmp_path / "clinic.db"))
    with db:
        for k, records in enumerate(exports):
            outcome = import_registered(db, write_export(tmp_path / f"e{k}.jsonl", records))
            assert outcome.refused is None, outcome.refused
            assert not any("set back" in p for p in outcome.problems)
        assert _problems(db, "clock_set_back") == []
        flagged = db.query("SELECT COUNT(*) FROM patient_flags WHERE kind = 'clock_set_back'")
        assert flagged[0][0] == 0
        assert _slots(db, "P1", first + timedelta(days=12)) == 2


def test_status_names_a_set_back_session_for_two_weeks_only(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    """A false flag (a fast clock put right) cannot be cleared at home: status stops naming it
    after two weeks; the JSON and verify still list it."""
    today = datetime.now(ZoneInfo(ZONE)).date()
    install_signed(
        home, timezone=ZONE, study_start=(today - timedelta(days=40)).isoformat(),
        study_end=(today + timedelta(days=30)).isoformat(),
    )  # fmt: skip
    protocol = home.protocol()
    now = datetime.now(UTC)
    with SessionLog(home.db_path()) as log:
        _write(log, protocol, now - timedelta(days=20), 1)
        sid = _write(log, protocol, now - timedelta(days=21), 2)  # set back a day, 20 days ago
        _write(log, protocol, now - timedelta(days=3), 1)
    out = _liv(home, capsys, "status")[1]
    assert "recorded before" not in out
    assert json.loads(_liv(home, capsys, "status", "--json")[1])["clock_set_back_sessions"] == [sid]
    with SessionLog(home.db_path()) as log:  # and a recent one is named, alone
        recent = _write(log, protocol, now - timedelta(days=4), 2)
    out = _liv(home, capsys, "status")[1]
    day = (now - timedelta(days=4)).astimezone(protocol.zone).date()
    assert f"The session dated {day:%A} {day.day} {day:%B %Y} started before" in out
    data = json.loads(_liv(home, capsys, "status", "--json")[1])
    assert data["clock_set_back_sessions"] == [sid, recent]


def test_after_an_import_the_quick_path_reads_both_orders_without_the_full_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second chain (``liv import`` of the old computer's log) no longer sends every status
    to the full check; a record backdated against the other chain is still found, by the
    plate's order."""
    calls = _count_full_checks(monkeypatch)
    first = date(2026, 2, 1)
    days = _twice_a_day(first, 3)
    old = vouched(_chain("P1", [*days[:3], days[4]]))  # day 2's evening missed
    head = old[-1]["device_voucher"]["head"]
    honest = vouched(_chain("P1", days[5:]), first_counter=5, head=head)
    with SessionLog(tmp_path / "honest.db") as log:
        log.import_jsonl(write_export(tmp_path / "old.jsonl", old))
        log.import_jsonl(write_export(tmp_path / "new.jsonl", honest))
        assert log.set_back("P1", quick=True) == {}
        assert calls == []
    backdated = vouched(
        _chain("P1", [(_berlin(first + timedelta(days=1), 19), 2, "LIV-P1")]),
        first_counter=5, head=head,
    )  # fmt: skip
    with SessionLog(tmp_path / "backdated.db") as log:
        log.import_jsonl(write_export(tmp_path / "old.jsonl", old))
        log.import_jsonl(write_export(tmp_path / "back.jsonl", backdated))
        assert [b.order for b in log.set_back("P1", quick=True).values()] == ["plate"]
        assert calls == [1]
