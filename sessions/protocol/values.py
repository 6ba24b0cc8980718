"""Exact text turned into field values by strict rules: numbers, times, dates, ids, zones."""

from __future__ import annotations

import datetime
import difflib
import functools
import math
import os
import re
import zoneinfo
from collections.abc import Iterator, Sequence

from sessions.protocol.fields import _FIELDS, _UNITS, HARD_LIMITS
from sessions.protocol.problems import _Problems, _shown
from sessions.protocol.yamltree import _join, _Map, _Refused, _Scalar, _Seq, _Tree

_ASCII = re.ASCII
_DECIMAL_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?", _ASCII)
_INTEGER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)", _ASCII)
_TIME_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])", _ASCII)
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", _ASCII)
_PATIENT_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}", _ASCII)
_ZONE_NAME_RE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*", _ASCII)
_NOT_IANA_ZONES = frozenset({"localtime", "posixrules", "Factory"})
# copies of the zones some systems install (leap-second "right/" and "posix/"): not zone names,
# and not listed by zoneinfo.available_timezones, so a file one computer accepts another refuses
_ZONE_COPY_TREES = frozenset({"posix", "right"})
_BOOL_WORDS = frozenset(
    w.lower() for w in ("y", "n", "yes", "no", "true", "false", "on", "off")
)  # YAML 1.1 reads all of these (in any of its spellings) as booleans
_NULL_WORDS = frozenset({"~", "null"})


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

    def items(
        self, node: _Seq, name: str, keys: Sequence[str], what: str
    ) -> Iterator[tuple[str, _Map | None, bool]]:
        """Each item of a list of small mappings that take exactly ``keys``: its name, the
        mapping (None, reported, when the item is not one) and whether its keys are right."""
        for number, item_node in enumerate(node.items, start=1):
            item_name = f"{name}[{number}]"
            item = self.mapping(item_node, item_name, what)
            yield item_name, item, item is not None and self.keys(item, item_name, keys, keys)

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
    """Whether ``name`` is an IANA zone this computer knows, spelled exactly as it lists it.

    Listing every zone (``zoneinfo.available_timezones``) costs 20-50 ms, paid by every
    ``liv status`` and ``liv start`` before the plate moves; so a name that loads is checked
    for its exact spelling in the zone directory, and the whole list is read only for a zone
    that comes from the tzdata package instead of a directory.
    """
    if not _ZONE_NAME_RE.fullmatch(name) or name in _NOT_IANA_ZONES:
        return False
    if name.split("/", 1)[0] in _ZONE_COPY_TREES:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    for root in zoneinfo.TZPATH:
        if os.path.isfile(os.path.join(root, name)):
            return _spelled_as_stored(root, name)
    return name in _known_zones()


def _spelled_as_stored(root: str, name: str) -> bool:
    """Each part of ``name`` is a directory entry under ``root`` with exactly that case (a
    case-insensitive disk would otherwise accept "europe/london")."""
    here = root
    for part in name.split("/"):
        try:
            if part not in os.listdir(here):
                return False
        except OSError:
            return False
        here = os.path.join(here, part)
    return True
