"""The fields of a protocol file: names, hints, defaults, units, hard limits and DailyWindow."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from firmware_bridge.dose_limits import DOSE_LIMITS

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


# The longest study one protocol may describe, counting its first and last day: five years
# (leap days included). Trials run for a year or two; a longer course is prescribed again.
MAX_STUDY_DAYS = 5 * 365 + 2


@dataclass(frozen=True)
class DailyWindow:
    """A time of day (local to the protocol's time zone) within which sessions may be run."""

    start: datetime.time
    end: datetime.time

    def describe(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"
