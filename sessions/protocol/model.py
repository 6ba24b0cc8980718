"""PatientProtocol, the checked prescription, and its canonical dict, JSON and sha256."""

from __future__ import annotations

import datetime
import hashlib
import json
import zoneinfo
from dataclasses import dataclass
from typing import Any

from controller.schedule import FrequencySchedule
from sessions.protocol.check import _checked_fields
from sessions.protocol.fields import DailyWindow
from sessions.protocol.problems import ProtocolFileError, ProtocolProblem, _Problems
from sessions.protocol.yamltree import _tree_from_python

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
