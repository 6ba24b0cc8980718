"""Protocol files: the examples load, YAML traps and out-of-limit values are refused with their
line, canonical records round-trip, and no input makes the reader raise anything else."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import re
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.schedule import FrequencySchedule
from firmware_bridge.errors import LivError
from sessions.protocol import (
    HARD_LIMITS,
    MAX_STUDY_DAYS,
    DailyWindow,
    PatientProtocol,
    ProtocolFileError,
    load_protocol,
    parse_protocol,
    protocol_from_dict,
)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.yaml"))
EXAMPLE_TEXTS = [path.read_text(encoding="utf-8") for path in EXAMPLE_FILES]
PROPERTY = settings(max_examples=200, deadline=None)

# field -> value text, in file order; line n of the text holds the n-th field.
BASE_FIELDS: dict[str, str] = {
    "patient_id": "P-0001",
    "target_g": "0.3",
    "frequency_hz": "30",
    "minutes_per_session": "10",
    "sessions_per_day": "2",
    "min_gap_hours": "3",
    "study_start": "2025-01-06",
    "study_end": "2026-01-05",
    "timezone": "Europe/London",
    "dose_tolerance": "0.1",
}


def protocol_text(**changes: str) -> str:
    """The base protocol with some values replaced (each written verbatim)."""
    fields = {**BASE_FIELDS, **changes}
    return "".join(f"{key}: {value}\n" for key, value in fields.items())


def protocol_without(*dropped: str) -> str:
    """The base protocol with some fields left out."""
    return "".join(f"{k}: {v}\n" for k, v in BASE_FIELDS.items() if k not in dropped)


def line_of(key: str, **changes: str) -> int:
    return list({**BASE_FIELDS, **changes}).index(key) + 1


def refusal(text: str) -> ProtocolFileError:
    with pytest.raises(ProtocolFileError) as info:
        parse_protocol(text, source="test.yaml")
    return info.value


def only_problem(text: str) -> str:
    problems = refusal(text).problems
    assert len(problems) == 1, [str(p) for p in problems]
    return str(problems[0])


# --------------------------------------------------------------------------------------------
# Examples


def test_the_four_documented_examples_exist() -> None:
    names = {path.name for path in EXAMPLE_FILES}
    assert {
        "twice-daily-30hz.yaml",
        "morning-evening-windows.yaml",
        "frequency-steps.yaml",
        "sweep.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_loads_and_round_trips(path: Path) -> None:
    protocol = load_protocol(path)
    again = protocol_from_dict(protocol.to_dict())
    assert again == protocol
    assert again.sha256 == protocol.sha256
    assert path.read_text(encoding="utf-8").count("#") >= 3, "examples are commented"


def test_twice_daily_example_holds_the_common_prescription() -> None:
    protocol = load_protocol(EXAMPLES_DIR / "twice-daily-30hz.yaml")
    assert protocol.target_g == 0.3
    assert protocol.schedule == FrequencySchedule.fixed(30.0)
    assert protocol.minutes_per_session == 10.0
    assert protocol.sessions_per_day == 2
    assert protocol.min_gap_hours == 3.0
    assert (protocol.study_end - protocol.study_start).days >= 364
    assert protocol.timezone == "Europe/London"
    assert protocol.zone == zoneinfo.ZoneInfo("Europe/London")
    assert protocol.daily_windows == ()


def test_windows_steps_and_sweep_examples() -> None:
    windows = load_protocol(EXAMPLES_DIR / "morning-evening-windows.yaml").daily_windows
    assert windows == (
        DailyWindow(datetime.time(6, 30), datetime.time(10, 0)),
        DailyWindow(datetime.time(17, 0), datetime.time(21, 30)),
    )
    steps = load_protocol(EXAMPLES_DIR / "frequency-steps.yaml").schedule
    assert steps.steps == ((0.0, 30.0), (240.0, 45.0), (480.0, 90.0))
    assert steps.freq_at(300.0) == 45.0
    sweep = load_protocol(EXAMPLES_DIR / "sweep.yaml").schedule
    assert sweep.sweep == (30.0, 90.0, 60.0)
    assert sweep.freq_at(60.0) == 90.0


# --------------------------------------------------------------------------------------------
# YAML traps

TRAPS = """\
patient_id: P-0001
target_g: 0x1E
frequency_hz: 030
minutes_per_session: 10:30
sessions_per_day: no
min_gap_hours: &gap 3
dose_tolerance: *gap
timezone: !!python/object:os.system Europe/London
study_start: 2025-01-06
study_end: 2026-01-05
patient_id: P-0002
daily_windows: !!python/object/apply:os.system ["echo owned"]
"""


def test_a_file_full_of_traps_names_every_problem_with_its_line() -> None:
    error = refusal(TRAPS)
    text = [str(p) for p in error.problems]
    expected = [
        (2, "target_g = 0x1E is hexadecimal"),
        (3, "frequency_hz = 030 has a leading zero"),
        (3, "octal number 24"),
        (4, "minutes_per_session = 10:30 is not a number"),
        (4, "base-60 number 630"),
        (5, "sessions_per_day = no is a yes/no word"),
        (6, "anchor &gap is not allowed"),
        (7, "alias *gap is not allowed"),
        (8, "tag !!python/object:os.system is not allowed"),
        (11, "patient_id is given twice, on line 1 and line 11"),
        (12, "tag !!python/object/apply:os.system is not allowed"),
    ]
    for line, fragment in expected:
        assert any(t.startswith(f"line {line}: ") and fragment in t for t in text), (
            line,
            fragment,
            text,
        )
    assert len(error.problems) == 9
    assert [p.line for p in error.problems] == sorted(p.line or 0 for p in error.problems)
    assert str(error).startswith("test.yaml: 9 problems")


TRAP_CASES: list[tuple[str, str, str]] = [  # (field, value as written, part of the message)
    ("target_g", "0x1E", "hexadecimal"),
    ("frequency_hz", "030", "write 30"),
    ("frequency_hz", "0030.5", "write 30.5"),
    ("minutes_per_session", "10:30", "base-60 number 630"),
    ("minutes_per_session", "1_0", "digit separators"),
    ("minutes_per_session", "10 min", "write the number alone"),
    ("minutes_per_session", "1e1", "exponent"),
    ("minutes_per_session", "1.0e+1", "exponent"),
    ("target_g", ".3", "write 0.3"),
    ("target_g", "0,3", "write 0.3"),
    ("target_g", "+0.3", "plus sign"),
    ("target_g", "0b1", "binary"),
    ("target_g", ".inf", "not a finite number"),
    ("target_g", ".NaN", "not a finite number"),
    ("target_g", "~", "null"),
    ("target_g", "null", "null"),
    ("target_g", "yes", "yes/no word"),
    ("target_g", "Off", "yes/no word"),
    ("target_g", "", "has no value"),
    ("target_g", "[0.3]", "not a list"),
    ("target_g", "{g: 0.3}", "not a mapping"),
    ("sessions_per_day", "2.0", "whole number"),
    ("sessions_per_day", "true", "yes/no word"),
    ("sessions_per_day", "02", "write 2"),
    ("dose_tolerance", "10%", "write the number alone"),
    ("study_start", "2025/01/06", "write a date as YYYY-MM-DD"),
    ("study_start", "06-01-2025", "write a date as YYYY-MM-DD"),
    ("study_start", "2025-02-30", "not a day of the calendar"),
    ("study_start", "2025-1-6", "write a date as YYYY-MM-DD"),
    ("timezone", "no", "not a known IANA time zone"),
    ("patient_id", "no", "choose another id"),
    ("patient_id", "Jane Doe", "1-64 letters"),
]


def test_each_trap_is_refused_on_its_own_line() -> None:
    wrong = []
    for field, written, fragment in TRAP_CASES:
        problems = [str(p) for p in refusal(protocol_text(**{field: written})).problems]
        expected_start = f"line {line_of(field)}: {field}"
        ok = len(problems) == 1 and problems[0].startswith(expected_start)
        if not ok or fragment not in problems[0]:
            wrong.append((field, written, problems))
    assert not wrong, wrong


def test_quoting_changes_nothing_a_quoted_trap_is_still_a_trap() -> None:
    assert parse_protocol(protocol_text(target_g='"0.3"', study_start="'2025-01-06'")) == (
        parse_protocol(protocol_text())
    )
    assert "leading zero" in only_problem(protocol_text(frequency_hz='"030"'))


def test_patient_id_is_kept_exactly_as_written() -> None:
    assert parse_protocol(protocol_text(patient_id="0123")).patient_id == "0123"
    assert parse_protocol(protocol_text(patient_id="007.5")).patient_id == "007.5"
    assert parse_protocol(protocol_text(patient_id="A" * 64)).patient_id == "A" * 64
    assert "1-64" in only_problem(protocol_text(patient_id="A" * 65))
    assert "must not start with '.'" in only_problem(protocol_text(patient_id=".."))


def test_explicit_str_tag_anchor_on_a_mapping_and_merge_keys_are_refused() -> None:
    assert "tag !!str" in only_problem(protocol_text(target_g="!!str 0.3"))
    windows = "daily_windows: &w\n  - {start: '07:00', end: '09:00'}\n"
    assert "anchor &w" in only_problem(protocol_text() + windows)
    merged = "frequency_schedule:\n  <<: {steps: [{at_s: 0, hz: 30}]}\n"
    problems = [str(p) for p in refusal(protocol_without("frequency_hz") + merged).problems]
    assert any('unknown key "<<"' in p for p in problems), problems


@pytest.mark.parametrize(
    ("text", "fragment", "line"),
    [
        ("", "holds no fields", None),
        ("# only a comment\n", "holds no fields", None),
        ("---\n", "holds no fields", 2),
        ("- patient_id: P-1\n", "holds a list", 1),
        ("just words\n", "holds the single value", 1),
        (protocol_text() + "---\n" + protocol_text(), "second YAML document", 11),
        ("patient_id: [P-1\n", "cannot be read", 2),
        ("patient_id: P-1\n\ttarget_g: 0.3\n", "cannot be read", 2),
        ("patient_id: P-1\ntarget_g: 0.3\x07\n", "control character", 2),
        ("a:\n" + "  - " * 40 + "x\n", "nests deeper", None),
    ],
)
def test_files_that_are_not_one_mapping(text: str, fragment: str, line: int | None) -> None:
    problems = refusal(text).problems
    found = [p for p in problems if fragment in p.message]
    assert found, [str(p) for p in problems]
    if line is not None:
        assert found[0].line == line


# --------------------------------------------------------------------------------------------
# Hard limits: accepted at the boundary, refused just outside, never clamped


def test_hard_limits_are_the_documented_ones() -> None:
    assert HARD_LIMITS["target_g"] == (0.1, 0.4)
    assert HARD_LIMITS["frequency_hz"] == (30.0, 90.0)
    assert HARD_LIMITS["minutes_per_session"] == (1.0, 30.0)
    assert HARD_LIMITS["sessions_per_day"] == (1, 4)
    assert HARD_LIMITS["min_gap_hours"] == (0.0, 24.0)
    assert HARD_LIMITS["dose_tolerance"] == (0.01, 0.15)
    assert HARD_LIMITS["sweep_seconds_each_way"] == (10.0, 1800.0)


def sweep_text(low: str = "30", high: str = "90", seconds: str = "60") -> str:
    return f"{{sweep: {{low_hz: {low}, high_hz: {high}, seconds_each_way: {seconds}}}}}"


def steps_text(second_hz: str) -> str:
    return f"{{steps: [{{at_s: 0, hz: 30}}, {{at_s: 60, hz: {second_hz}}}]}}"


def schedule(text: str) -> dict[str, str]:
    # replaces frequency_hz in place, so line numbers stay those of BASE_FIELDS
    return {"frequency_hz": "", "schedule_text": text}


def limit_case(changes: dict[str, str]) -> str:
    if "schedule_text" in changes:
        changes = dict(changes)
        text = changes.pop("schedule_text")
        fields = {**BASE_FIELDS, **changes}
        out = []
        for key, value in fields.items():
            if key == "frequency_hz":
                out.append(f"frequency_schedule: {text}\n")
            else:
                out.append(f"{key}: {value}\n")
        return "".join(out)
    return protocol_text(**changes)


LIMIT_CASES: list[tuple[str, dict[str, str], dict[str, str], str]] = [
    # (name, accepted at the boundary, refused just outside, field named in the refusal)
    ("target_g low", {"target_g": "0.1"}, {"target_g": "0.0999"}, "target_g"),
    ("target_g high", {"target_g": "0.4"}, {"target_g": "0.4001"}, "target_g"),
    ("frequency low", {"frequency_hz": "30"}, {"frequency_hz": "29.999"}, "frequency_hz"),
    ("frequency high", {"frequency_hz": "90"}, {"frequency_hz": "90.001"}, "frequency_hz"),
    ("minutes low", {"minutes_per_session": "1"}, {"minutes_per_session": "0.999"}, "minutes"),
    ("minutes high", {"minutes_per_session": "30"}, {"minutes_per_session": "30.001"}, "minutes"),
    ("sessions low", {"sessions_per_day": "1"}, {"sessions_per_day": "0"}, "sessions_per_day"),
    ("sessions high", {"sessions_per_day": "4"}, {"sessions_per_day": "5"}, "sessions_per_day"),
    ("gap low", {"min_gap_hours": "0"}, {"min_gap_hours": "-0.001"}, "min_gap_hours"),
    (
        "gap high",
        {"min_gap_hours": "24", "sessions_per_day": "1"},
        {"min_gap_hours": "24.001", "sessions_per_day": "1"},
        "min_gap_hours",
    ),
    ("tolerance low", {"dose_tolerance": "0.01"}, {"dose_tolerance": "0.0099"}, "dose_tolerance"),
    ("tolerance high", {"dose_tolerance": "0.15"}, {"dose_tolerance": "0.151"}, "dose_tolerance"),
    (
        "sweep low_hz",
        schedule(sweep_text(low="30")),
        schedule(sweep_text(low="29.99")),
        "frequency_schedule.sweep.low_hz",
    ),
    (
        "sweep high_hz",
        schedule(sweep_text(high="90")),
        schedule(sweep_text(high="90.01")),
        "frequency_schedule.sweep.high_hz",
    ),
    (
        "sweep seconds low",
        schedule(sweep_text(seconds="10")),
        schedule(sweep_text(seconds="9.999")),
        "frequency_schedule.sweep.seconds_each_way",
    ),
    (
        "sweep seconds high",
        schedule(sweep_text(seconds="1800")),
        schedule(sweep_text(seconds="1800.001")),
        "frequency_schedule.sweep.seconds_each_way",
    ),
    (
        "step hz low",
        schedule(steps_text("30")),
        schedule(steps_text("29.99")),
        "frequency_schedule.steps[2].hz",
    ),
    (
        "step hz high",
        schedule(steps_text("90")),
        schedule(steps_text("90.01")),
        "frequency_schedule.steps[2].hz",
    ),
]


@pytest.mark.parametrize(
    ("accepted", "refused", "field"),
    [case[1:] for case in LIMIT_CASES],
    ids=[case[0] for case in LIMIT_CASES],
)
def test_hard_limit_holds_at_the_boundary_and_refuses_beyond(
    accepted: dict[str, str], refused: dict[str, str], field: str
) -> None:
    parse_protocol(limit_case(accepted))
    message = only_problem(limit_case(refused))
    assert re.match(rf"line \d+: {re.escape(field)}\S* = \S+ is outside the allowed ", message)


def test_refusal_message_has_the_documented_shape() -> None:
    error = refusal(protocol_text(minutes_per_session="45"))
    assert (
        str(error)
        == "test.yaml: line 4: minutes_per_session = 45 is outside the allowed 1-30 minutes"
    )
    assert isinstance(error, LivError)
    assert isinstance(error, ValueError)
    assert error.problems[0].field == "minutes_per_session"


def test_sessions_must_fit_in_a_day_with_their_gaps() -> None:
    # 2 x 30 min + 1 x 23 h = 24 h exactly: fits
    parse_protocol(protocol_text(minutes_per_session="30", min_gap_hours="23"))
    message = only_problem(protocol_text(minutes_per_session="30", min_gap_hours="23.01"))
    assert message.startswith(f"line {line_of('min_gap_hours')}: ")
    assert "more than a day" in message
    four = {"sessions_per_day": "4", "minutes_per_session": "30"}
    parse_protocol(protocol_text(min_gap_hours="7.33", **four))
    assert "more than a day" in only_problem(protocol_text(min_gap_hours="7.34", **four))


# --------------------------------------------------------------------------------------------
# Fields: unknown, missing, cross-checks


def test_unknown_field_is_named_with_a_suggestion_and_the_allowed_list() -> None:
    text = protocol_text() + "minute_per_session: 10\n"
    message = only_problem(text)
    assert message.startswith("line 11: unknown field minute_per_session")
    assert "did you mean minutes_per_session?" in message
    assert "dose_tolerance" in message


@pytest.mark.parametrize(
    "field",
    ["patient_id", "target_g", "minutes_per_session", "study_start", "study_end", "timezone"],
)
def test_each_missing_required_field_is_named(field: str) -> None:
    message = only_problem(protocol_without(field))
    assert message.startswith(f"missing required field {field}")


def test_defaults_apply_when_optional_fields_are_left_out() -> None:
    optional = ("sessions_per_day", "min_gap_hours", "dose_tolerance")
    protocol = parse_protocol(protocol_without(*optional))
    assert (protocol.sessions_per_day, protocol.min_gap_hours, protocol.dose_tolerance) == (
        2,
        3.0,
        0.1,
    )
    assert protocol.daily_windows == ()


def test_frequency_exactly_one_of_fixed_or_schedule() -> None:
    assert "missing the frequency" in only_problem(protocol_without("frequency_hz"))
    both = protocol_text() + "frequency_schedule: " + steps_text("45") + "\n"
    assert "not both" in only_problem(both)


@pytest.mark.parametrize(
    ("schedule_text", "fragment"),
    [
        ("{steps: [{at_s: 5, hz: 30}]}", "first step must start at 0 s"),
        ("{steps: [{at_s: 0, hz: 30}, {at_s: 0, hz: 40}]}", "must be later than"),
        ("{steps: [{at_s: 0, hz: 30}, {at_s: 600, hz: 40}]}", "not within the 10-minute session"),
        ("{steps: [{at_s: 0, hz: 30}, {at_s: -1, hz: 40}]}", "must not be negative"),
        ("{steps: []}", "is empty"),
        ("{steps: [{at_s: 0, hz: 30, gain: 2}]}", "unknown key gain"),
        ("{steps: [{at_s: 0}]}", "is missing hz"),
        ("{sweep: {low_hz: 60, high_hz: 60, seconds_each_way: 60}}", "must be above low_hz"),
        ("{sweep: {low_hz: 30, high_hz: 90}}", "is missing seconds_each_way"),
        ("{steps: [{at_s: 0, hz: 30}], sweep: {low_hz: 30}}", "exactly one of steps or sweep"),
        ("sweep:30-90/60", "must be a mapping"),
    ],
)
def test_schedule_problems(schedule_text: str, fragment: str) -> None:
    problems = refusal(limit_case(schedule(schedule_text))).problems
    assert any(fragment in p.message and p.line == line_of("frequency_hz") for p in problems), [
        str(p) for p in problems
    ]


@pytest.mark.parametrize(
    ("zone", "fragment"),
    [
        ("Europe/Londn", "did you mean Europe/London?"),
        ("Mars/Olympus_Mons", "not a known IANA time zone"),
        ("localtime", "not a known IANA time zone"),
        ("../../etc/passwd", "not a known IANA time zone"),
        ("europe/london", "not a known IANA time zone"),
        ("posix/Europe/London", "not a known IANA time zone"),
        ("right/Europe/London", "not a known IANA time zone"),
    ],
)
def test_unknown_time_zone_is_refused(zone: str, fragment: str) -> None:
    message = only_problem(protocol_text(timezone=zone))
    assert message.startswith(f"line {line_of('timezone')}: timezone = ")
    assert fragment in message


def test_study_end_before_start_is_refused_and_one_day_is_allowed() -> None:
    message = only_problem(protocol_text(study_end="2025-01-05"))
    assert message.startswith(f"line {line_of('study_end')}: study_end = 2025-01-05 is before")
    one_day = parse_protocol(protocol_text(study_end="2025-01-06"))
    assert one_day.study_start == one_day.study_end


def windows(*pairs: tuple[str, str]) -> str:
    lines = "".join(f"  - {{start: {start}, end: {end}}}\n" for start, end in pairs)
    return protocol_text() + "daily_windows:\n" + lines


def test_windows_touching_are_accepted_and_sorted() -> None:
    protocol = parse_protocol(windows(("18:00", "21:00"), ("07:00", "11:00"), ("11:00", "12:00")))
    assert [w.start for w in protocol.daily_windows] == [
        datetime.time(7),
        datetime.time(11),
        datetime.time(18),
    ]


@pytest.mark.parametrize(
    ("pairs", "line", "fragment"),
    [
        ((("07:00", "11:00"), ("10:30", "12:00")), 13, "overlaps daily_windows[1] 07:00-11:00"),
        ((("07:00", "11:00"), ("06:00", "23:00")), 12, "overlaps daily_windows[2] 06:00-23:00"),
        ((("11:00", "07:00"),), 12, "must end after it starts"),
        ((("07:00", "07:05"),), 12, "shorter than one 10-minute session"),
        ((("7:00", "11:00"),), 12, "write two-digit hours: 07:00"),
        ((("07:00", "24:00"),), 12, "ends at 23:59"),
        ((("07:00", "11:00:00"),), 12, "not a time of day"),
        ((("07:00", "1100"),), 12, "not a time of day"),
    ],
)
def test_window_problems(pairs: tuple[tuple[str, str], ...], line: int, fragment: str) -> None:
    message = only_problem(windows(*pairs))
    assert message.startswith(f"line {line}: daily_windows[")
    assert fragment in message


def test_all_problems_are_reported_at_once_sorted_by_line() -> None:
    text = protocol_text(target_g="0.9", minutes_per_session="0", timezone="Nowhere")
    text = text.replace("patient_id: P-0001\n", "") + "patient_id: P 1\n"
    error = refusal(text)
    assert [p.field for p in error.problems] == [
        "target_g",
        "minutes_per_session",
        "timezone",
        "patient_id",
    ]
    assert [p.line for p in error.problems] == [1, 3, 8, 10]


# --------------------------------------------------------------------------------------------
# Records: canonical form and round trip


def test_to_dict_is_canonical_json_and_independent_of_spelling() -> None:
    plain = parse_protocol(protocol_text())
    spelled = parse_protocol(
        "# comments and quotes do not change the prescription\n"
        + protocol_text(target_g='"0.30"', frequency_hz="30.0", study_end="'2026-01-05'")
    )
    assert spelled == plain
    assert spelled.sha256 == plain.sha256
    as_steps = parse_protocol(
        limit_case(schedule("{steps: [{at_s: 0, hz: 30}]}"))
    )  # one step from 0 s is a fixed frequency
    assert as_steps.sha256 == plain.sha256
    data = plain.to_dict()
    assert json.loads(plain.canonical_json()) == data
    assert plain.canonical_json() == json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert re.fullmatch(r"[0-9a-f]{64}", plain.sha256)
    other = parse_protocol(protocol_text(target_g="0.31"))
    assert other.sha256 != plain.sha256


def test_protocol_from_dict_checks_again() -> None:
    data = load_protocol(EXAMPLES_DIR / "frequency-steps.yaml").to_dict()
    tampered = {**data, "target_g": 0.9}
    with pytest.raises(ProtocolFileError, match=r"target_g = 0\.9 is outside"):
        protocol_from_dict(tampered)
    with pytest.raises(ProtocolFileError, match="boolean"):
        protocol_from_dict({**data, "sessions_per_day": True})
    with pytest.raises(ProtocolFileError, match="missing required field timezone"):
        protocol_from_dict({k: v for k, v in data.items() if k != "timezone"})
    steps = data["frequency_schedule"]["steps"]
    bad_steps = {**data, "frequency_schedule": {"steps": [*steps, {"at_s": 700.0, "hz": 120.0}]}}
    with pytest.raises(ProtocolFileError, match=r"steps\[4\]\.hz = 120\.0 is outside"):
        protocol_from_dict(bad_steps)
    with pytest.raises(ProtocolFileError, match="a dict"):
        protocol_from_dict([data])  # type: ignore[arg-type]


def test_a_protocol_cannot_be_built_or_changed_past_the_limits() -> None:
    protocol = load_protocol(EXAMPLES_DIR / "twice-daily-30hz.yaml")
    with pytest.raises(ProtocolFileError, match="target_g"):
        dataclasses.replace(protocol, target_g=0.9)
    with pytest.raises(ProtocolFileError, match="frequency_hz"):
        dataclasses.replace(protocol, schedule=FrequencySchedule(steps=((0.0, 120.0),)))
    with pytest.raises(ProtocolFileError, match="sessions_per_day"):
        dataclasses.replace(protocol, sessions_per_day=True)
    with pytest.raises(ProtocolFileError, match="daily_windows"):
        dataclasses.replace(
            protocol, daily_windows=(DailyWindow(datetime.time(7, 0, 30), datetime.time(9)),)
        )
    assert dataclasses.replace(protocol, minutes_per_session=12).minutes_per_session == 12.0


# --------------------------------------------------------------------------------------------
# Files


def test_missing_and_unreadable_files_get_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ProtocolFileError, match="does not exist") as info:
        load_protocol(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(info.value)
    with pytest.raises(ProtocolFileError, match="folder"):
        load_protocol(tmp_path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(protocol_text(patient_id="P-1").encode() + b"# caf\xe9\n")
    with pytest.raises(ProtocolFileError, match=r"line 11: the file is not UTF-8"):
        load_protocol(latin1)


def test_a_file_saved_with_a_byte_order_mark_and_crlf_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "windows.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + protocol_text().replace("\n", "\r\n").encode())
    assert load_protocol(path) == parse_protocol(protocol_text())


# --------------------------------------------------------------------------------------------
# Properties


def parse_or_refuse(text: str) -> PatientProtocol | None:
    """Any outcome but ProtocolFileError or a protocol is a bug (the test fails on it)."""
    outcome: PatientProtocol | ProtocolFileError
    try:
        outcome = parse_protocol(text)
    except ProtocolFileError as exc:
        outcome = exc
    if isinstance(outcome, ProtocolFileError):
        assert outcome.problems
        assert all(p.message for p in outcome.problems)
        return None
    assert protocol_from_dict(outcome.to_dict()) == outcome
    return outcome


@PROPERTY
@given(text=st.text(max_size=400))
def test_random_text_is_refused_cleanly(text: str) -> None:
    parse_or_refuse(text)


YAML_TOKENS = [
    "0x1E", "030", "10:30", "no", "yes", "on", "~", "null", "&a ", "*a",
    "!!python/object:os.system ", "!!str ", "!e!x ", "---\n", "...\n", "- ", ": ", "? ",
    "[", "]", "{", "}", ",", "\t", "\n",
    "#", "'", '"', "1e3", ".5", "24:00", "07:00", "2025-02-30", "\x00", "\ufeff", "\u2028",
    "|\n", ">-\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "<<: ", "\\", "-1", "1800", "25",
    "100", "0.6", "9" * 400, "[" * 30, "{a: " * 30, "-" * 3, "   ", "\r", "é", "\U0001F600",
]  # fmt: skip


@st.composite
def mutated_examples(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        kind = draw(st.sampled_from(["insert", "delete", "value", "duplicate", "swap"]))
        token = draw(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=8)))
        if kind == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + token + text[at:]
        elif kind == "delete":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif kind == "value":
            index = draw(st.integers(0, len(lines) - 1))
            key, sep, _ = lines[index].partition(": ")
            lines[index] = f"{key}{sep or ': '}{token}"
            text = "\n".join(lines)
        elif kind == "duplicate":
            index = draw(st.integers(0, len(lines) - 1))
            lines.insert(draw(st.integers(0, len(lines))), lines[index])
            text = "\n".join(lines)
        else:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


@PROPERTY
@given(text=mutated_examples())
def test_mutated_examples_are_accepted_or_refused_cleanly(text: str) -> None:
    parse_or_refuse(text)


yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.dates().map(str)
    | st.sampled_from(YAML_TOKENS),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from([*BASE_FIELDS, "at_s", "hz", "steps", "sweep"]), inner)
    ),
    max_leaves=6,
)


@settings(max_examples=100, deadline=None)  # drawing nested values is the slow part
@given(
    changes=st.dictionaries(
        st.sampled_from([*BASE_FIELDS, "frequency_schedule", "daily_windows", "x"]), yaml_values
    )
)
def test_yaml_written_by_another_tool_is_accepted_or_refused_cleanly(
    changes: dict[str, Any],
) -> None:
    data: dict[str, Any] = {**BASE_FIELDS, **changes}
    text = yaml.safe_dump(data, allow_unicode=True)
    parse_or_refuse(text)
    with contextlib.suppress(ProtocolFileError):
        protocol_from_dict(data)


@st.composite
def valid_protocols(draw: st.DrawFn) -> PatientProtocol:
    minutes = draw(st.integers(60, 1800)) / 60
    sessions = draw(st.integers(1, 4))
    if sessions == 1:
        gap_h = draw(st.integers(0, 2400)) / 100
    else:
        room_h = (24 - sessions * minutes / 60) / (sessions - 1)
        gap_h = draw(st.integers(0, min(2400, math.floor(room_h * 100)))) / 100
    hz = st.integers(300, 900).map(lambda n: n / 10)
    kind = draw(st.sampled_from(["fixed", "steps", "sweep"]))
    if kind == "fixed":
        schedule = FrequencySchedule.fixed(draw(hz), (30.0, 90.0))
    elif kind == "steps":
        later = draw(st.lists(st.integers(1, int(minutes * 60) - 1), unique=True, max_size=4))
        starts = [0, *sorted(later)]
        schedule = FrequencySchedule(steps=tuple((float(s), draw(hz)) for s in starts))
    else:
        low, high = sorted(draw(st.lists(hz, min_size=2, max_size=2, unique=True)))
        one_way = draw(st.integers(100, 18000)) / 10
        schedule = FrequencySchedule(steps=((0.0, low),), sweep=(low, high, one_way))
    windows: list[DailyWindow] = []
    at_min = 0
    for _ in range(draw(st.integers(0, 3))):
        start = at_min + draw(st.integers(0, 300))
        end = start + draw(st.integers(30, 300))
        if end > 23 * 60 + 59:
            break
        windows.append(
            DailyWindow(datetime.time(start // 60, start % 60), datetime.time(end // 60, end % 60))
        )
        at_min = end
    first = draw(st.dates(datetime.date(2000, 1, 1), datetime.date(2100, 1, 1)))
    last = first + datetime.timedelta(days=draw(st.integers(0, MAX_STUDY_DAYS - 1)))
    patient_id = draw(st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", fullmatch=True))
    if patient_id.lower() in {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}:
        patient_id = "P-" + patient_id
    return PatientProtocol(
        patient_id=patient_id,
        target_g=draw(st.integers(100, 400)) / 1000,
        schedule=schedule,
        minutes_per_session=minutes,
        sessions_per_day=sessions,
        min_gap_hours=gap_h,
        daily_windows=tuple(windows),
        study_start=first,
        study_end=last,
        timezone=draw(
            st.sampled_from(
                ["UTC", "Europe/London", "America/Indiana/Indianapolis", "Asia/Kolkata"]
            )
        ),
        dose_tolerance=draw(st.integers(1, 15)) / 100,
    )


@PROPERTY
@given(protocol=valid_protocols())
def test_valid_protocols_round_trip_through_records_and_yaml(protocol: PatientProtocol) -> None:
    again = protocol_from_dict(json.loads(protocol.canonical_json()))
    assert again == protocol
    assert again.sha256 == protocol.sha256
    from_yaml = parse_protocol(yaml.safe_dump(protocol.to_dict(), sort_keys=False))
    assert from_yaml == protocol
    assert from_yaml.sha256 == protocol.sha256


def test_a_known_time_zone_is_checked_without_listing_every_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listing all zones costs 20-50 ms of every `liv status` and `liv start`."""
    import sessions.protocol.values as zone_values

    def listing() -> set[str]:
        raise AssertionError("every zone was listed to check one")

    monkeypatch.setattr(zoneinfo, "available_timezones", listing)
    zone_values._known_zones.cache_clear()
    try:
        protocol = parse_protocol(protocol_text(timezone="America/Indiana/Indianapolis"))
    finally:
        zone_values._known_zones.cache_clear()
    assert protocol.timezone == "America/Indiana/Indianapolis"
