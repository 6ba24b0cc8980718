"""Patient protocol files: what a clinician prescribes, read strictly and validated whole.

A protocol is one YAML mapping (``docs/protocol-file.md`` describes every field). It is read by
a YAML loader that resolves nothing implicitly, so every plain scalar arrives as the exact text
the clinician wrote; each field is then converted by a strict rule of its own. YAML 1.1's
surprises (``10:30`` read as 630, ``030`` as 24, ``no`` as False, a repeated key silently
winning) therefore cannot slip through as a wrong dose. Values outside ``HARD_LIMITS`` are
refused, never clamped, and every problem in a file is reported at once, sorted by line.

Errors::

    LivError (firmware_bridge.errors)     ValueError
    └── ProtocolFileError ────────────────┘    carries .source and .problems (ProtocolProblem)

A ``PatientProtocol`` checks itself when constructed, so one built by hand or changed with
``dataclasses.replace`` is held to the same rules as one read from a file.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import hashlib
import itertools
import json
import math
import pathlib
import re
import stat
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, TypeAlias

import yaml
from yaml.events import AliasEvent, StreamEndEvent, StreamStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controller.schedule import FrequencySchedule, ScheduleError
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.errors import LivError

__all__ = [
    "HARD_LIMITS",
    "MAX_STUDY_DAYS",
    "DailyWindow",
    "PatientProtocol",
    "ProtocolFileError",
    "ProtocolProblem",
    "load_protocol",
    "parse_protocol",
    "protocol_from_bytes",
    "protocol_from_dict",
    "read_protocol_bytes",
]

# The limits no protocol can exceed, inclusive at both ends. Outside them a protocol is refused.
# They are the dose limits every layer shares (firmware_bridge/dose_limits.py), by field name.
HARD_LIMITS: Mapping[str, tuple[float, float]] = MappingProxyType(DOSE_LIMITS.protocol_ranges())

_UNITS = {
    "target_g": "g",
    "frequency_hz": "Hz",
    "minutes_per_session": "minutes",
    "sessions_per_day": "sessions a day",
    "min_gap_hours": "hours",
    "dose_tolerance": "(a fraction of target_g: 0.1 means +/-10%)",
    "sweep_seconds_each_way": "seconds",
}

_DEFAULTS: dict[str, Any] = {
    "sessions_per_day": 2,
    "min_gap_hours": 3.0,
    "daily_windows": (),
    "dose_tolerance": 0.10,
}

# Field name -> what to write, used in "missing" and "write ..." hints.
_FIELDS: dict[str, str] = {
    "patient_id": "a pseudonymous id such as P-0042",
    "target_g": "the target peak acceleration in g, e.g. 0.3",
    "frequency_hz": "a fixed frequency in Hz, e.g. 30",
    "frequency_schedule": "a mapping with steps: or sweep: (see docs/protocol-file.md)",
    "minutes_per_session": "the minutes of vibration per session, e.g. 10",
    "sessions_per_day": "a whole number of sessions a day, e.g. 2",
    "min_gap_hours": "the minimum hours of rest between sessions, e.g. 3",
    "daily_windows": "a list of {start: HH:MM, end: HH:MM} times of day",
    "study_start": "the first day of the study as YYYY-MM-DD, e.g. 2025-03-01",
    "study_end": "the last day of the study as YYYY-MM-DD, e.g. 2026-02-28",
    "timezone": "an IANA time zone name, e.g. Europe/London",
    "dose_tolerance": "a fraction of target_g, e.g. 0.1 for +/-10%",
}
_REQUIRED = (
    "patient_id",
    "target_g",
    "minutes_per_session",
    "study_start",
    "study_end",
    "timezone",
)

MAX_TEXT_CHARS = 100_000  # a protocol is a page of text; anything larger is not one
# The longest study one protocol may describe, counting its first and last day: five years
# (leap days included). Trials run for a year or two; a longer course is prescribed again.
MAX_STUDY_DAYS = 5 * 365 + 2
_MAX_NESTING = 16  # deeper YAML than this is not a protocol (and would recurse without end)
_REFUSED_TAG = "!liv/refused"  # marks a node already reported (alias, anchor, explicit tag)
_DAY_HOURS = 24.0

_ASCII = re.ASCII
_DECIMAL_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?", _ASCII)
_INTEGER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)", _ASCII)
_TIME_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])", _ASCII)
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", _ASCII)
_PATIENT_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}", _ASCII)
_ZONE_NAME_RE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*", _ASCII)
_NOT_IANA_ZONES = frozenset({"localtime", "posixrules", "Factory"})
_BOOL_WORDS = frozenset(
    w.lower() for w in ("y", "n", "yes", "no", "true", "false", "on", "off")
)  # YAML 1.1 reads all of these (in any of its spellings) as booleans
_NULL_WORDS = frozenset({"~", "null"})
_SAFE_SHOWN_RE = re.compile(r"[\w.:+\-/@&*!~,%]+")


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class ProtocolProblem:
    """One thing wrong with a protocol: the file line (when known), the field, and what."""

    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        return self.message if self.line is None else f"line {self.line}: {self.message}"


def _problem_order(problem: ProtocolProblem) -> tuple[bool, int]:
    return (problem.line is None, problem.line or 0)


class ProtocolFileError(LivError, ValueError):
    """A protocol file (or dict) that cannot be accepted; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: Iterable[ProtocolProblem]) -> None:
        self.source = source
        # sorted() is stable: problems on one line keep the order they were found in.
        self.problems: tuple[ProtocolProblem, ...] = tuple(sorted(problems, key=_problem_order))
        if len(self.problems) == 1:
            text = f"{source}: {self.problems[0]}"
        else:
            listed = "\n".join(f"  {p}" for p in self.problems)
            text = f"{source}: {len(self.problems)} problems, the protocol is refused:\n{listed}"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.problems))


class _Problems:
    """Collects problems while a whole protocol is checked."""

    def __init__(self) -> None:
        self.items: list[ProtocolProblem] = []

    def add(self, line: int | None, field: str, message: str) -> None:
        self.items.append(ProtocolProblem(line, field, message))


def _shown(text: str) -> str:
    """The value as written, quoted only when it would otherwise be unclear."""
    if len(text) > 40:
        text = text[:37] + "..."
    if _SAFE_SHOWN_RE.fullmatch(text):
        return text
    return json.dumps(text)


# --------------------------------------------------------------------------------------------
# Reading YAML into a tree of exact text


@dataclass(frozen=True)
class _Scalar:
    text: str
    line: int | None


@dataclass(frozen=True)
class _Seq:
    items: tuple[_Tree, ...]
    line: int | None


@dataclass(frozen=True)
class _Entry:
    key_line: int | None
    value: _Tree


@dataclass(frozen=True)
class _Map:
    entries: dict[str, _Entry]  # first occurrence of each key, in written order
    line: int | None


@dataclass(frozen=True)
class _Refused:
    """A value already reported (an alias, an anchor, a tag): not judged a second time."""

    line: int | None


_Tree: TypeAlias = _Scalar | _Seq | _Map | _Refused


class _TooDeepError(Exception):
    def __init__(self, line: int | None) -> None:
        self.line = line
        super().__init__(line)


def _tag_as_written(tag: str) -> str:
    prefix = "tag:yaml.org,2002:"
    shown = "!!" + tag[len(prefix) :] if tag.startswith(prefix) else tag
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _mark_line(mark: Any) -> int | None:
    line = getattr(mark, "line", None)
    return line + 1 if isinstance(line, int) else None


class _StrictLoader(yaml.SafeLoader):
    """Composes YAML nodes with no implicit types; notes anchors, aliases and tags as problems.

    Only the reader, scanner, parser and composer are used: the tree of nodes is converted by
    this module, field by field, never by a YAML constructor.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 (PyYAML's class attribute)

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.refusals: list[ProtocolProblem] = []
        self._depth = 0

    def _next_event(self, consume: bool) -> Any:
        """The next parser event (PyYAML's parser methods are untyped)."""
        step: Callable[[], Any] = self.get_event if consume else self.peek_event
        return step()

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self._next_event(consume=False)
        start_mark: Any = event.start_mark
        end_mark: Any = event.end_mark
        line = _mark_line(start_mark)
        if isinstance(event, AliasEvent):
            self._next_event(consume=True)
            self.refusals.append(
                ProtocolProblem(
                    line,
                    "",
                    f"the alias *{event.anchor} is not allowed: write the value out in full "
                    "(anchors and aliases hide what a field holds)",
                )
            )
            return ScalarNode(_REFUSED_TAG, "", start_mark, end_mark)
        refused = False
        if event.anchor is not None:
            refused = True
            self.anchors.pop(event.anchor, None)  # refused anyway: no "duplicate anchor" error
            self.refusals.append(
                ProtocolProblem(
                    line,
                    "",
                    f"the anchor &{event.anchor} is not allowed: write each value out in full "
                    "(anchors and aliases hide what a field holds)",
                )
            )
        tag = getattr(event, "tag", None)
        if tag is not None:
            refused = True
            self.refusals.append(
                ProtocolProblem(
                    line,
                    "",
                    f"the YAML tag {_tag_as_written(str(tag))} is not allowed: a protocol "
                    "holds plain values only",
                )
            )
        self._depth += 1
        try:
            if self._depth > _MAX_NESTING:
                raise _TooDeepError(line)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if refused and node is not None:
            return ScalarNode(_REFUSED_TAG, "", node.start_mark, node.end_mark)
        return node


def _compose(text: str, problems: _Problems) -> Node | None:
    """The single document's root node, or None (with the reason added to ``problems``)."""
    loader: _StrictLoader | None = None
    root: Node | None = None
    try:
        loader = _StrictLoader(text)  # checks every character first
        if loader.check_event(StreamStartEvent):
            loader._next_event(consume=True)
        if loader.check_event(StreamEndEvent):
            problems.add(None, "", "the file holds no fields; " + _EXAMPLE_HINT)
            return None
        root = loader.compose_document()
        if not loader.check_event(StreamEndEvent):
            second = loader._next_event(consume=False)
            problems.add(
                _mark_line(second.start_mark),
                "",
                "a second YAML document starts here: a protocol file holds exactly one "
                "(remove the '---' line and what follows, or split the file)",
            )
    except _TooDeepError as exc:
        problems.add(exc.line, "", f"the YAML nests deeper than {_MAX_NESTING} levels")
        root = None
    except yaml.MarkedYAMLError as exc:
        line = _mark_line(exc.problem_mark) or _mark_line(exc.context_mark)
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        problems.add(line, "", f"the YAML cannot be read: {what}")
        root = None
    except yaml.reader.ReaderError as exc:
        position = exc.position if isinstance(exc.position, int) else 0
        line = text.count("\n", 0, position) + 1
        code = exc.character if isinstance(exc.character, int) else 0
        problems.add(
            line,
            "",
            f"the file contains a control character YAML does not allow (U+{code:04X}); "
            "save it as plain text",
        )
        root = None
    except yaml.YAMLError as exc:  # any other reader or parser complaint
        problems.add(None, "", f"the YAML cannot be read: {exc}")
        root = None
    finally:
        if loader is not None:
            problems.items.extend(loader.refusals)
            loader.dispose()
    return root


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _tree_from_node(node: Node, path: str, problems: _Problems) -> _Tree:
    line = _mark_line(node.start_mark)
    if node.tag == _REFUSED_TAG:
        return _Refused(line)
    if isinstance(node, ScalarNode):
        return _Scalar(str(node.value), line)
    if isinstance(node, SequenceNode):
        return _Seq(
            tuple(
                _tree_from_node(item, f"{path}[{number}]", problems)
                for number, item in enumerate(node.value, start=1)
            ),
            line,
        )
    if not isinstance(node, MappingNode):  # pragma: no cover - PyYAML has only three kinds
        return _Refused(line)
    entries: dict[str, _Entry] = {}
    for key_node, value_node in node.value:
        key_line = _mark_line(key_node.start_mark)
        if key_node.tag == _REFUSED_TAG:
            continue
        if not isinstance(key_node, ScalarNode):
            problems.add(key_line, path, "a key must be a plain name, not a list or a mapping")
            continue
        key = str(key_node.value)
        name = _join(path, key)
        if key in entries:
            problems.add(
                key_line,
                name,
                f"{name} is given twice, on line {entries[key].key_line} and line {key_line}; "
                "YAML would silently keep the last one, so each field may appear only once",
            )
            continue
        entries[key] = _Entry(key_line, _tree_from_node(value_node, name, problems))
    return _Map(entries, line)


def _float_text(value: float) -> str:
    """A float written as plain decimal digits that read back to exactly the same float."""
    if not math.isfinite(value):
        return repr(value)
    return format(Decimal(repr(value)), "f")


def _tree_from_python(value: object, path: str, problems: _Problems, depth: int = 0) -> _Tree:
    """The tree of a dict as ``PatientProtocol.to_dict`` writes it (numbers become text)."""
    name = path or "the protocol"
    if depth > _MAX_NESTING:
        problems.add(None, path, f"{name} nests deeper than {_MAX_NESTING} levels")
        return _Refused(None)
    if isinstance(value, bool):
        problems.add(None, path, f"{name} = {value} is a boolean; no field takes true/false")
        return _Refused(None)
    if value is None:
        return _Scalar("", None)
    if isinstance(value, str):
        return _Scalar(value, None)
    if isinstance(value, int):
        return _Scalar(str(value), None)
    if isinstance(value, float):
        return _Scalar(_float_text(value), None)
    if isinstance(value, list | tuple):
        return _Seq(
            tuple(
                _tree_from_python(item, f"{path}[{number}]", problems, depth + 1)
                for number, item in enumerate(value, start=1)
            ),
            None,
        )
    if isinstance(value, dict):
        entries: dict[str, _Entry] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(None, path, f"{name} has a key {key!r} that is not text")
                continue
            entries[key] = _Entry(
                None, _tree_from_python(item, _join(path, key), problems, depth + 1)
            )
        return _Map(entries, None)
    problems.add(None, path, f"{name} holds a {type(value).__name__}; write it as text")
    return _Refused(None)


# --------------------------------------------------------------------------------------------
# Converting exact text into values, strictly


def _yaml11_octal(digits: str) -> str:
    return f" as the octal number {int(digits, 8)}" if re.fullmatch(r"[0-7]+", digits) else ""


def _why_not_a_number(text: str) -> str:
    """Why ``text`` is refused as a number, and what YAML 1.1 would have made of it."""
    lowered = text.lower()
    if lowered in _BOOL_WORDS:
        return "is a yes/no word (YAML 1.1 reads it as a boolean), not a number"
    if lowered in _NULL_WORDS:
        return "is YAML's empty value (null), not a number"
    body = text.lstrip("+-")
    if re.fullmatch(r"[0-9]+(?::[0-5]?[0-9])+(?:\.[0-9]*)?", body, _ASCII):
        whole, _, fraction = body.partition(".")
        base60 = 0
        for part in whole.split(":"):
            base60 = base60 * 60 + int(part)
        read_as = f"{base60}.{fraction}" if fraction else str(base60)
        return (
            f"is not a number (YAML 1.1 reads it as the base-60 number {read_as}); "
            "no time of day is expected here"
        )
    if re.fullmatch(r"0[xX][0-9a-fA-F_]*", body, _ASCII):
        return "is hexadecimal (YAML 1.1 reads it as a different number); use decimal digits"
    if re.fullmatch(r"0[bB][01_]*", body, _ASCII):
        return "is binary; use decimal digits"
    if "_" in body and re.fullmatch(r"[0-9_.]+", body, _ASCII):
        return "has digit separators (_); write the digits alone"
    if re.fullmatch(r"0[0-9]+(?:\.[0-9]+)?", body, _ASCII):
        digits, _, _ = body.partition(".")
        octal = "" if "." in body else _yaml11_octal(digits)
        plain = re.sub(r"^0+(?=[0-9])", "", body)
        return (
            f"has a leading zero (YAML 1.1 reads such numbers{octal or ' differently'}); "
            f"write {text[: len(text) - len(body)]}{plain}"
        )
    if re.fullmatch(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+", body, _ASCII):
        return "uses exponent notation, which YAML readers disagree on; write the digits out"
    if lowered.lstrip("+-") in {".inf", "inf", "infinity", ".nan", "nan"}:
        return "is not a finite number"
    if text.startswith("+") and _DECIMAL_RE.fullmatch(body):
        return "has a plus sign; write the number alone"
    if re.fullmatch(r"\.[0-9]+", body, _ASCII):
        return f"needs a digit before the decimal point: write 0{text}"
    if re.fullmatch(r"[0-9]+\.", body, _ASCII):
        return f"ends in a decimal point: write {text[:-1]}"
    if re.fullmatch(r"[0-9]+,[0-9]+", body, _ASCII):
        return f"uses a decimal comma: write {text.replace(',', '.')}"
    if re.fullmatch(r"-?[0-9.]+\s*[^\s0-9.].*", text, _ASCII):
        return "has text after the number; write the number alone (the unit is fixed)"
    return "is not a number"


class _Reader:
    """Converts tree values to field values, adding a problem for each one it refuses."""

    def __init__(self, problems: _Problems) -> None:
        self.problems = problems

    def add(self, line: int | None, field: str, message: str) -> None:
        self.problems.add(line, field, message)

    def scalar(self, node: _Tree, name: str, what: str) -> _Scalar | None:
        if isinstance(node, _Refused):
            return None
        if isinstance(node, _Scalar):
            if node.text == "":
                self.add(node.line, name, f"{name} has no value; write {what}")
                return None
            return node
        kind = "a list" if isinstance(node, _Seq) else "a mapping"
        self.add(node.line, name, f"{name} must be a single value, not {kind}; write {what}")
        return None

    def mapping(self, node: _Tree, name: str, what: str) -> _Map | None:
        if isinstance(node, _Map):
            return node
        if isinstance(node, _Scalar) and node.text == "":
            self.add(node.line, name, f"{name} has no value; write {what}")
        elif not isinstance(node, _Refused):
            kind = "a list" if isinstance(node, _Seq) else f"the value {_shown(node.text)}"
            self.add(node.line, name, f"{name} must be a mapping, not {kind}; write {what}")
        return None

    def sequence(self, node: _Tree, name: str, what: str) -> _Seq | None:
        if isinstance(node, _Seq):
            return node
        if isinstance(node, _Scalar) and node.text == "":
            self.add(node.line, name, f"{name} has no value; write {what}, or leave it out")
        elif not isinstance(node, _Refused):
            kind = "a mapping" if isinstance(node, _Map) else f"the value {_shown(node.text)}"
            self.add(node.line, name, f"{name} must be a list, not {kind}; write {what}")
        return None

    def keys(self, node: _Map, name: str, allowed: Sequence[str], required: Sequence[str]) -> bool:
        """Refuse unknown and missing keys of a small nested mapping; True if all is well."""
        fine = True
        for key, entry in node.entries.items():
            if key not in allowed:
                fine = False
                self.add(
                    entry.key_line,
                    _join(name, key),
                    f"{name} has an unknown key {_shown(key)}; it takes {', '.join(allowed)}",
                )
        missing = [key for key in required if key not in node.entries]
        if missing:
            fine = False
            self.add(node.line, name, f"{name} is missing {' and '.join(missing)}")
        return fine

    def number(self, node: _Tree, name: str, what: str, limit: str | None) -> float | None:
        """A decimal number, optionally inside ``HARD_LIMITS[limit]``."""
        scalar = self.scalar(node, name, what)
        if scalar is None:
            return None
        text = scalar.text
        if not _DECIMAL_RE.fullmatch(text):
            self.add(scalar.line, name, f"{name} = {_shown(text)} {_why_not_a_number(text)}")
            return None
        value = float(text) + 0.0  # + 0.0 turns -0 into 0, so one value has one spelling
        if not math.isfinite(value):
            self.add(scalar.line, name, f"{name} = {_shown(text)} is too large")
            return None
        if limit is not None and not self.within(value, text, scalar.line, name, limit):
            return None
        return value

    def integer(self, node: _Tree, name: str, what: str, limit: str) -> int | None:
        scalar = self.scalar(node, name, what)
        if scalar is None:
            return None
        text = scalar.text
        if not _INTEGER_RE.fullmatch(text):
            reason = (
                "must be a whole number" if _DECIMAL_RE.fullmatch(text) else _why_not_a_number(text)
            )
            self.add(scalar.line, name, f"{name} = {_shown(text)} {reason}")
            return None
        if len(text) > 20:
            self.add(scalar.line, name, f"{name} = {_shown(text)} is too large")
            return None
        value = int(text)
        if not self.within(value, text, scalar.line, name, limit):
            return None
        return value

    def within(self, value: float, text: str, line: int | None, name: str, limit: str) -> bool:
        low, high = HARD_LIMITS[limit]
        if low <= value <= high:
            return True
        self.add(
            line,
            name,
            f"{name} = {_shown(text)} is outside the allowed {low:g}-{high:g} {_UNITS[limit]}",
        )
        return False

    def time_of_day(self, node: _Tree, name: str) -> tuple[datetime.time, int | None] | None:
        what = "a time of day as HH:MM on the 24-hour clock, e.g. 07:00 or 19:30"
        scalar = self.scalar(node, name, what)
        if scalar is None:
            return None
        text = scalar.text
        match = _TIME_RE.fullmatch(text)
        if match is None:
            if re.fullmatch(r"[0-9]:[0-5][0-9]", text, _ASCII):
                hint = f"write two-digit hours: 0{text}"
            elif text in {"24:00", "24:00:00"}:
                hint = "a window that ends at midnight ends at 23:59"
            else:
                hint = f"write {what}"
            self.add(scalar.line, name, f"{name} = {_shown(text)} is not a time of day; {hint}")
            return None
        return datetime.time(int(match[1]), int(match[2])), scalar.line

    def date(self, node: _Tree, name: str) -> tuple[datetime.date, int | None] | None:
        what = "a date as YYYY-MM-DD, e.g. 2025-03-01"
        scalar = self.scalar(node, name, what)
        if scalar is None:
            return None
        text = scalar.text
        if not _DATE_RE.fullmatch(text):
            self.add(scalar.line, name, f"{name} = {_shown(text)} is not a date; write {what}")
            return None
        try:
            return datetime.date.fromisoformat(text), scalar.line
        except ValueError:
            self.add(scalar.line, name, f"{name} = {_shown(text)} is not a day of the calendar")
            return None

    def patient_id(self, node: _Tree) -> str | None:
        name = "patient_id"
        scalar = self.scalar(node, name, _FIELDS[name])
        if scalar is None:
            return None
        text = scalar.text
        if not _PATIENT_ID_RE.fullmatch(text):
            self.add(
                scalar.line,
                name,
                f"{name} = {_shown(text)} is not allowed: use 1-64 letters, digits, '-', '_' "
                "or '.' (a pseudonymous id, never a name)",
            )
            return None
        if text.startswith("."):
            self.add(scalar.line, name, f"{name} = {_shown(text)} must not start with '.'")
            return None
        if text.lower() in _BOOL_WORDS or text.lower() in _NULL_WORDS:
            self.add(
                scalar.line,
                name,
                f"{name} = {_shown(text)} is a word other YAML readers turn into a boolean "
                "or nothing; choose another id",
            )
            return None
        return text

    def timezone(self, node: _Tree) -> str | None:
        name = "timezone"
        scalar = self.scalar(node, name, _FIELDS[name])
        if scalar is None:
            return None
        text = scalar.text
        if _is_known_zone(text):
            return text
        known = _known_zones()
        close = difflib.get_close_matches(text, sorted(known), n=1) if len(text) < 64 else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        if not known:
            hint = " (this computer has no time zone database: install the tzdata package)"
        self.add(
            scalar.line,
            name,
            f"{name} = {_shown(text)} is not a known IANA time zone name{hint}; write one "
            "like Europe/London or America/Indiana/Indianapolis",
        )
        return None


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_IANA_ZONES


def _is_known_zone(name: str) -> bool:
    if not _ZONE_NAME_RE.fullmatch(name) or name not in _known_zones():
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# The protocol


@dataclass(frozen=True)
class DailyWindow:
    """A time of day (local to the protocol's time zone) within which sessions may be run."""

    start: datetime.time
    end: datetime.time

    def describe(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


_FLOAT_FIELDS = ("target_g", "minutes_per_session", "min_gap_hours", "dose_tolerance")


@dataclass(frozen=True)
class PatientProtocol:
    """One patient's prescription, validated whole; construct it only with valid values.

    ``min_gap_hours`` is the rest from the end of one session to the start of the next.
    ``daily_windows`` are in time order; empty means sessions may run at any time of day.
    """

    patient_id: str
    target_g: float
    schedule: FrequencySchedule
    minutes_per_session: float
    sessions_per_day: int
    min_gap_hours: float
    daily_windows: tuple[DailyWindow, ...]
    study_start: datetime.date
    study_end: datetime.date
    timezone: str
    dose_tolerance: float

    def __post_init__(self) -> None:
        source = "PatientProtocol"
        wrong_type = [
            name
            for name in _FLOAT_FIELDS
            if isinstance(getattr(self, name), bool)
            or not isinstance(getattr(self, name), int | float)
        ]
        if isinstance(self.sessions_per_day, bool) or not isinstance(self.sessions_per_day, int):
            wrong_type.append("sessions_per_day")
        if wrong_type:
            raise ProtocolFileError(
                source, [ProtocolProblem(None, n, f"{n} must be a number") for n in wrong_type]
            )
        for name in _FLOAT_FIELDS:  # one type per field, so equal protocols print equally
            object.__setattr__(self, name, float(getattr(self, name)) + 0.0)
        try:
            data = self.to_dict()
        except (AttributeError, TypeError, ValueError) as exc:
            problem = ProtocolProblem(None, "", f"not a valid protocol: {exc}")
            raise ProtocolFileError(source, [problem]) from None
        checked = _checked_fields(_tree_from_python(data, "", _Problems()), source)
        differs = [name for name, value in checked.items() if getattr(self, name) != value]
        if differs:
            raise ProtocolFileError(
                source,
                [
                    ProtocolProblem(
                        None, name, f"{name} cannot be written in a protocol file as it is"
                    )
                    for name in differs
                ],
            )

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def to_dict(self) -> dict[str, Any]:
        """The canonical form: JSON types only, the schedule as a protocol file writes it."""
        data: dict[str, Any] = {
            "patient_id": self.patient_id,
            "target_g": _plain(self.target_g),
        }
        data.update(_schedule_to_dict(self.schedule))
        data.update(
            {
                "minutes_per_session": _plain(self.minutes_per_session),
                "sessions_per_day": self.sessions_per_day,
                "min_gap_hours": _plain(self.min_gap_hours),
                "daily_windows": [
                    {"start": f"{w.start:%H:%M}", "end": f"{w.end:%H:%M}"}
                    for w in self.daily_windows
                ],
                "study_start": self.study_start.isoformat(),
                "study_end": self.study_end.isoformat(),
                "timezone": self.timezone,
                "dose_tolerance": _plain(self.dose_tolerance),
            }
        )
        return data

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        """Identifies the prescription, whatever comments or spelling its file used."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


def _plain(value: float) -> float:
    return float(value) + 0.0


def _schedule_to_dict(schedule: FrequencySchedule) -> dict[str, Any]:
    if schedule.sweep is not None:
        low_hz, high_hz, one_way_s = schedule.sweep
        sweep = {
            "low_hz": _plain(low_hz),
            "high_hz": _plain(high_hz),
            "seconds_each_way": _plain(one_way_s),
        }
        return {"frequency_schedule": {"sweep": sweep}}
    if len(schedule.steps) == 1 and schedule.steps[0][0] == 0:
        return {"frequency_hz": _plain(schedule.steps[0][1])}
    steps = [{"at_s": _plain(at_s), "hz": _plain(hz)} for at_s, hz in schedule.steps]
    return {"frequency_schedule": {"steps": steps}}


# --------------------------------------------------------------------------------------------
# Checking a whole protocol


_EXAMPLE_HINT = (
    "a protocol is a mapping of 'field: value' lines such as 'patient_id: P-0042' "
    "(see examples/ and docs/protocol-file.md)"
)


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
    for number, item_node in enumerate(steps_seq.items, start=1):
        item_name = f"{name}[{number}]"
        item = reader.mapping(item_node, item_name, "{at_s: SECONDS, hz: HZ}")
        if item is None:
            complete = False
            continue
        fine = reader.keys(item, item_name, ("at_s", "hz"), ("at_s", "hz"))
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
    for number, item_node in enumerate(seq.items, start=1):
        item_name = f"{name}[{number}]"
        item = reader.mapping(item_node, item_name, "{start: HH:MM, end: HH:MM}")
        if item is None:
            complete = False
            continue
        fine = reader.keys(item, item_name, ("start", "end"), ("start", "end"))
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


# --------------------------------------------------------------------------------------------
# Public entry points


def parse_protocol(text: str, source: str = "<protocol>") -> PatientProtocol:
    """Read and check a protocol from YAML text; ProtocolFileError lists every problem."""
    problems = _Problems()
    if len(text) > MAX_TEXT_CHARS:
        problems.add(
            None, "", f"the text is longer than {MAX_TEXT_CHARS} characters: not a protocol"
        )
        raise ProtocolFileError(source, problems.items)
    root = _compose(text, problems)
    tree = None if root is None else _tree_from_node(root, "", problems)
    return PatientProtocol(**_checked_fields(tree, source, problems))


def read_protocol_bytes(path: pathlib.Path | str) -> bytes:
    """The bytes of a protocol file, read once; ProtocolFileError says why it cannot be read.

    What is checked (signature, fields) and what is installed are these same bytes, so a file
    that changes while it is read cannot slip a different text between the two.
    """
    path = pathlib.Path(path)
    source = str(path)

    def refuse(message: str) -> ProtocolFileError:
        return ProtocolFileError(source, [ProtocolProblem(None, "", message)])

    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise refuse("this is a folder, not a protocol file")
        if not stat.S_ISREG(mode):
            raise refuse("this is not a regular file")
        with path.open("rb") as stream:
            data = stream.read(MAX_TEXT_CHARS * 4 + 1)
    except FileNotFoundError:
        raise refuse("the protocol file does not exist") from None
    except PermissionError:
        raise refuse("the protocol file cannot be read: permission denied") from None
    except OSError as exc:
        raise refuse(f"the protocol file cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_TEXT_CHARS * 4:
        raise refuse("the file is far too large to be a protocol")
    return data


def protocol_from_bytes(data: bytes, source: str = "<protocol>") -> PatientProtocol:
    """Read and check a protocol from a file's bytes (UTF-8, an optional BOM)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problem = ProtocolProblem(
            line, "", f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8"
        )
        raise ProtocolFileError(source, [problem]) from None
    return parse_protocol(text, source)


def load_protocol(path: pathlib.Path | str) -> PatientProtocol:
    """Read and check a protocol file (UTF-8 YAML); ProtocolFileError says what is wrong."""
    return protocol_from_bytes(read_protocol_bytes(path), str(pathlib.Path(path)))


def protocol_from_dict(data: dict[str, Any]) -> PatientProtocol:
    """The protocol ``PatientProtocol.to_dict`` wrote (e.g. into a session log), checked again."""
    source = "protocol record"
    problems = _Problems()
    if not isinstance(data, dict):
        problems.add(None, "", f"a protocol record is a dict, not a {type(data).__name__}")
        raise ProtocolFileError(source, problems.items)
    tree = _tree_from_python(data, "", problems)
    return PatientProtocol(**_checked_fields(tree, source, problems))
