"""A whole protocol checked field by field: schedule, windows, dates, the hours in a day."""

from __future__ import annotations

import datetime
import difflib
import itertools
from dataclasses import dataclass
from typing import Any

from controller.schedule import FrequencySchedule, ScheduleError
from sessions.protocol.fields import (
    _DEFAULTS,
    _FIELDS,
    _REQUIRED,
    HARD_LIMITS,
    MAX_STUDY_DAYS,
    DailyWindow,
)
from sessions.protocol.problems import _EXAMPLE_HINT, ProtocolFileError, _Problems, _shown
from sessions.protocol.values import _Reader
from sessions.protocol.yamltree import _Entry, _join, _Map, _Refused, _Scalar, _Seq, _Tree

_DAY_HOURS = 24.0


@dataclass
class _StepStart:
    at_s: float
    text: str
    line: int | None
    name: str


def _read_schedule(
    reader: _Reader, node: _Tree
) -> tuple[FrequencySchedule | None, list[_StepStart]]:
    name = "frequency_schedule"
    mapping = reader.mapping(node, name, _FIELDS[name])
    if mapping is None:
        return None, []
    for key, entry in mapping.entries.items():
        if key not in ("steps", "sweep"):
            reader.add(
                entry.key_line,
                _join(name, key),
                f"{name} has an unknown key {_shown(key)}; it takes steps or sweep",
            )
    given = [key for key in ("steps", "sweep") if key in mapping.entries]
    if len(given) != 1:
        reader.add(
            mapping.line,
            name,
            f"{name} needs exactly one of steps or sweep"
            + (", not both" if len(given) == 2 else ""),
        )
        return None, []
    if given == ["sweep"]:
        return _read_sweep(reader, mapping.entries["sweep"].value, f"{name}.sweep"), []
    return _read_steps(reader, mapping.entries["steps"].value, f"{name}.steps")


def _read_sweep(reader: _Reader, node: _Tree, name: str) -> FrequencySchedule | None:
    sweep = reader.mapping(node, name, "{low_hz: 30, high_hz: 90, seconds_each_way: 60}")
    if sweep is None:
        return None
    keys = ("low_hz", "high_hz", "seconds_each_way")
    if not reader.keys(sweep, name, keys, keys):
        for key in keys:  # still judge the values that are there
            if key in sweep.entries:
                _read_sweep_value(reader, sweep, name, key)
        return None
    low_hz = _read_sweep_value(reader, sweep, name, "low_hz")
    high_hz = _read_sweep_value(reader, sweep, name, "high_hz")
    one_way_s = _read_sweep_value(reader, sweep, name, "seconds_each_way")
    if low_hz is None or high_hz is None or one_way_s is None:
        return None
    if not high_hz > low_hz:
        reader.add(
            sweep.entries["high_hz"].value.line,
            f"{name}.high_hz",
            f"{name}.high_hz = {high_hz:g} must be above low_hz = {low_hz:g}",
        )
        return None
    return FrequencySchedule(steps=((0.0, low_hz),), sweep=(low_hz, high_hz, one_way_s))


def _read_sweep_value(reader: _Reader, sweep: _Map, name: str, key: str) -> float | None:
    if key == "seconds_each_way":
        return reader.number(
            sweep.entries[key].value, f"{name}.{key}", "seconds, e.g. 60", "sweep_seconds_each_way"
        )
    return reader.number(sweep.entries[key].value, f"{name}.{key}", "Hz, e.g. 30", "frequency_hz")


def _read_steps(
    reader: _Reader, node: _Tree, name: str
) -> tuple[FrequencySchedule | None, list[_StepStart]]:
    steps_seq = reader.sequence(node, name, "a list of {at_s: SECONDS, hz: HZ} items")
    if steps_seq is None:
        return None, []
    if not steps_seq.items:
        reader.add(steps_seq.line, name, f"{name} is empty; give at least one step")
        return None, []
    steps: list[tuple[float, float]] = []
    starts: list[_StepStart] = []
    complete = True
    for item_name, item, fine in reader.items(
        steps_seq, name, ("at_s", "hz"), "{at_s: SECONDS, hz: HZ}"
    ):
        if item is None:
            complete = False
            continue
        at_s = hz = None
        if "at_s" in item.entries:
            at_node = item.entries["at_s"].value
            at_s = reader.number(at_node, f"{item_name}.at_s", "seconds, e.g. 60", None)
            if at_s is not None and isinstance(at_node, _Scalar):
                if at_s < 0:
                    reader.add(
                        at_node.line,
                        f"{item_name}.at_s",
                        f"{item_name}.at_s = {_shown(at_node.text)} must not be negative",
                    )
                    at_s = None
                else:
                    starts.append(_StepStart(at_s, at_node.text, at_node.line, item_name))
        if "hz" in item.entries:
            hz = reader.number(
                item.entries["hz"].value, f"{item_name}.hz", "Hz, e.g. 30", "frequency_hz"
            )
        if not fine or at_s is None or hz is None:
            complete = False
            continue
        steps.append((at_s, hz))
    if starts and starts[0].name == f"{name}[1]" and starts[0].at_s != 0:
        first = starts[0]
        reader.add(
            first.line,
            f"{first.name}.at_s",
            f"{first.name}.at_s = {_shown(first.text)}: the first step must start at 0 s",
        )
        complete = False
    for before, after in itertools.pairwise(starts):
        if after.at_s <= before.at_s:
            reader.add(
                after.line,
                f"{after.name}.at_s",
                f"{after.name}.at_s = {_shown(after.text)} must be later than "
                f"{before.name}.at_s = {_shown(before.text)}: steps are listed in time order",
            )
            complete = False
    if not complete:
        return None, starts
    return FrequencySchedule(steps=tuple(steps)), starts


def _read_windows(
    reader: _Reader, node: _Tree, minutes: float | None
) -> tuple[DailyWindow, ...] | None:
    name = "daily_windows"
    seq = reader.sequence(node, name, "a list of {start: HH:MM, end: HH:MM} items")
    if seq is None:
        return None
    windows: list[tuple[DailyWindow, int | None, str]] = []
    complete = True
    for item_name, item, fine in reader.items(
        seq, name, ("start", "end"), "{start: HH:MM, end: HH:MM}"
    ):
        if item is None:
            complete = False
            continue
        start = end = None
        if "start" in item.entries:
            start = reader.time_of_day(item.entries["start"].value, f"{item_name}.start")
        if "end" in item.entries:
            end = reader.time_of_day(item.entries["end"].value, f"{item_name}.end")
        if not fine or start is None or end is None:
            complete = False
            continue
        window = DailyWindow(start[0], end[0])
        if not end[0] > start[0]:
            reader.add(
                end[1],
                f"{item_name}.end",
                f"{item_name} {window.describe()} must end after it starts "
                "(a window cannot cross midnight: split it in two)",
            )
            complete = False
            continue
        length_min = _minutes_of_day(end[0]) - _minutes_of_day(start[0])
        if minutes is not None and length_min < minutes:
            reader.add(
                start[1],
                item_name,
                f"{item_name} {window.describe()} is shorter than one {minutes:g}-minute session",
            )
            complete = False
        windows.append((window, start[1], item_name))
    windows.sort(key=lambda entry: (entry[0].start, entry[0].end))
    latest: tuple[DailyWindow, int | None, str] | None = None
    for entry in windows:
        window, line, item_name = entry
        if latest is not None and window.start < latest[0].end:
            other, other_line, other_name = latest
            where = f" (line {other_line})" if other_line is not None else ""
            reader.add(
                line,
                item_name,
                f"{item_name} {window.describe()} overlaps {other_name} "
                f"{other.describe()}{where}; windows must not overlap",
            )
            complete = False
        if latest is None or window.end > latest[0].end:
            latest = entry
    if not complete:
        return None
    return tuple(window for window, _, _ in windows)


def _minutes_of_day(moment: datetime.time) -> int:
    return moment.hour * 60 + moment.minute


def _line_of(entries: dict[str, _Entry], *keys: str) -> int | None:
    lines = [entries[k].value.line for k in keys if k in entries]
    known = [line for line in lines if line is not None]
    return max(known) if known else None


def _checked_fields(
    tree: _Tree | None, source: str, problems: _Problems | None = None
) -> dict[str, Any]:
    """The validated constructor arguments of a protocol, or ProtocolFileError with them all."""
    problems = problems if problems is not None else _Problems()
    fields = _read_fields(tree, problems)
    if problems.items or fields is None:
        raise ProtocolFileError(source, problems.items)
    return fields


def _read_fields(tree: _Tree | None, problems: _Problems) -> dict[str, Any] | None:
    if tree is None:
        return None
    if not isinstance(tree, _Map):
        if isinstance(tree, _Scalar) and tree.text == "":
            problems.add(tree.line, "", "the file holds no fields; " + _EXAMPLE_HINT)
        elif not isinstance(tree, _Refused):
            kind = "a list" if isinstance(tree, _Seq) else f"the single value {_shown(tree.text)}"
            problems.add(tree.line, "", f"the file holds {kind}; {_EXAMPLE_HINT}")
        return None
    reader = _Reader(problems)
    entries = tree.entries
    allowed = list(_FIELDS)
    for key, entry in entries.items():
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, allowed, n=1) if len(key) < 64 else []
            hint = f" (did you mean {close[0]}?)" if close else ""
            reader.add(
                entry.key_line,
                key,
                f"unknown field {_shown(key)}{hint}; the fields are: {', '.join(allowed)}",
            )
    for key in _REQUIRED:
        if key not in entries:
            reader.add(None, key, f"missing required field {key}: {_FIELDS[key]}")

    def value(key: str) -> _Tree | None:
        entry = entries.get(key)
        return None if entry is None else entry.value

    fields: dict[str, Any] = dict(_DEFAULTS)

    node = value("patient_id")
    fields["patient_id"] = None if node is None else reader.patient_id(node)
    node = value("target_g")
    fields["target_g"] = (
        None if node is None else reader.number(node, "target_g", _FIELDS["target_g"], "target_g")
    )
    key = "minutes_per_session"
    node = value(key)
    fields[key] = None if node is None else reader.number(node, key, _FIELDS[key], key)
    minutes = fields[key]

    fixed_node, schedule_node = value("frequency_hz"), value("frequency_schedule")
    starts: list[_StepStart] = []
    if fixed_node is not None and schedule_node is not None:
        reader.add(
            _line_of(entries, "frequency_hz", "frequency_schedule"),
            "frequency_schedule",
            "give exactly one of frequency_hz or frequency_schedule, not both",
        )
        fields["schedule"] = None
    elif fixed_node is not None:
        hz = reader.number(fixed_node, "frequency_hz", _FIELDS["frequency_hz"], "frequency_hz")
        fields["schedule"] = None
        if hz is not None:
            try:
                fields["schedule"] = FrequencySchedule.fixed(hz, HARD_LIMITS["frequency_hz"])
            except ScheduleError as exc:  # pragma: no cover - the limit was checked above
                reader.add(fixed_node.line, "frequency_hz", str(exc))
    elif schedule_node is not None:
        fields["schedule"], starts = _read_schedule(reader, schedule_node)
    else:
        reader.add(
            None,
            "frequency_hz",
            "missing the frequency: give frequency_hz (e.g. frequency_hz: 30) "
            "or a frequency_schedule with steps: or sweep:",
        )
        fields["schedule"] = None

    if minutes is not None:
        session_s = minutes * 60.0
        for start in starts:
            if start.at_s >= session_s:
                reader.add(
                    start.line,
                    f"{start.name}.at_s",
                    f"{start.name}.at_s = {_shown(start.text)} s is not within the "
                    f"{minutes:g}-minute session (the step would never be reached)",
                )
                fields["schedule"] = None

    key = "sessions_per_day"
    node = value(key)
    if node is not None:
        fields[key] = reader.integer(node, key, _FIELDS[key], key)
    for key in ("min_gap_hours", "dose_tolerance"):
        node = value(key)
        if node is not None:
            fields[key] = reader.number(node, key, _FIELDS[key], key)
    node = value("daily_windows")
    if node is not None:
        fields["daily_windows"] = _read_windows(reader, node, minutes)

    dates: dict[str, tuple[datetime.date, int | None] | None] = {}
    for key in ("study_start", "study_end"):
        node = value(key)
        read = None if node is None else reader.date(node, key)
        dates[key] = read
        fields[key] = None if read is None else read[0]
    first, last = dates["study_start"], dates["study_end"]
    if first is not None and last is not None and last[0] < first[0]:
        where = f" (line {first[1]})" if first[1] is not None else ""
        reader.add(
            last[1],
            "study_end",
            f"study_end = {last[0].isoformat()} is before study_start = "
            f"{first[0].isoformat()}{where}",
        )
    elif first is not None and last is not None:
        days = (last[0] - first[0]).days + 1
        if days > MAX_STUDY_DAYS:
            reader.add(
                last[1],
                "study_end",
                f"study_end = {last[0].isoformat()} makes the study {days} days long; a study "
                f"lasts at most {MAX_STUDY_DAYS} days (five years) from study_start = "
                f"{first[0].isoformat()}: prescribe a longer course as a new protocol",
            )

    node = value("timezone")
    fields["timezone"] = None if node is None else reader.timezone(node)

    sessions, gap_h = fields["sessions_per_day"], fields["min_gap_hours"]
    if minutes is not None and sessions is not None and gap_h is not None:
        needed_h = sessions * minutes / 60.0 + (sessions - 1) * gap_h
        if needed_h > _DAY_HOURS + 1e-9:
            reader.add(
                _line_of(entries, "sessions_per_day", "min_gap_hours", "minutes_per_session"),
                "sessions_per_day",
                f"sessions_per_day = {sessions} with minutes_per_session = {minutes:g} and "
                f"min_gap_hours = {gap_h:g} needs {needed_h:.4g} hours, more than a day "
                "(sessions_per_day x minutes_per_session + (sessions_per_day - 1) x "
                "min_gap_hours must be at most 24 hours)",
            )

    if problems.items or any(v is None for v in fields.values()):
        return None
    return fields
