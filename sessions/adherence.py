"""Adherence: how much of the prescribed therapy a patient received, from the session log.

Pure functions over one patient's protocol and logged sessions, so every rule (a slot split
over a cut-short session and its resumption, extra sessions, midnight, daylight-saving days,
sessions outside the study) is tested without a plate. ``docs/adherence.md`` states the rules
for clinicians; in short:

- a day is the patient's local day (the ``local_date`` the log gave each session's slot);
- a day has ``sessions_per_day`` slots; a slot is *complete* when the minutes at dose of its
  sessions add up to ``minutes_per_session`` (the rule scheduling uses to decide it is done);
- minutes at dose are capped per slot at the prescription, so extra sessions and extra minutes
  never make up for another slot or another day;
- only days that are over (before ``today``) are counted; today is shown as in progress;
- session adherence = complete slots / prescribed slots, dose adherence = capped minutes at
  dose / prescribed minutes, per day, per ISO week and overall;
- only therapy counts: sessions on a simulator (kind ``simulated``) and engineering runs (kind
  ``engineering``) are listed apart and never counted; in a demo home (``LivHome.is_demo``)
  simulated sessions count, and every output says so (:data:`DEMO_LABEL`);
- every day is judged by the protocol in force that day: a protocol comes into force when its
  first session ran (the log keeps each session's protocol) or, for the protocol installed now,
  when it was installed, if that is earlier; the first protocol is in force from the start of
  its study. A new protocol never re-scores the days before it.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

# defined in sessions.kinds (liv start reads them without the reports), exported from here too
from sessions.kinds import PRESENCE_EVENT, counted_kinds, session_kind
from sessions.protocol import MAX_STUDY_DAYS, ProtocolFileError, protocol_from_dict
from sessions.scheduling import AT_DOSE_EPSILON_MIN, LoggedSession, Prescription, day_summary
from sessions.stops import stop_word

__all__ = [
    "AMPLITUDE_P95_LIMIT_PCT",
    "COUNTED_STATUSES",
    "DAY_STATUSES",
    "DEMO_LABEL",
    "FLAG_KINDS",
    "MAX_REPORT_DAYS",
    "PRESENCE_EVENT",
    "AdherenceRatios",
    "AdherenceReport",
    "CountedDaySums",
    "DayAdherence",
    "DeviceUse",
    "Flag",
    "Plan",
    "ProtocolPeriod",
    "SessionLike",
    "SetApart",
    "Totals",
    "WeekAdherence",
    "compute_adherence",
    "counted_kinds",
    "session_kind",
]

# Every output of a demo home carries this label (sessions there are simulated, and counted).
DEMO_LABEL = "demo: simulated sessions, not therapy"


# A session whose 95th-percentile absolute amplitude error (1-s windows after settling) is above
# this is flagged. The controller is specified to hold p95 within 0.5% and to stay within +/-2%
# of the target after a load step (docs/performance.md); beyond 2% it did not do its job.
AMPLITUDE_P95_LIMIT_PCT = 2.0

logger = logging.getLogger(__name__)

# What a day in the report can be. Only "full", "partial" and "missed" days are counted;
# "outside" is a day of the report period that no study in force covers (between two studies).
DAY_STATUSES = ("full", "partial", "missed", "today", "future", "outside")
COUNTED_STATUSES = frozenset({"full", "partial", "missed"})

# Flag kinds, most serious first; flags of one session are listed in this order.
FLAG_KINDS = (
    "tripped",
    "fault",
    "clock_set_back",
    "interrupted",
    "stopped_by_patient",
    "running",
    "under_dose",
    "amplitude_error",
    "presence_not_verified",
    "override",
    "extra_session",
    "outside_study",
    "after_today",
)
_STATUS_FLAGS = {
    "tripped": "safety trip",
    "interrupted": "interrupted (crash, kill or power loss)",
    "stopped_by_patient": "stopped by the patient",
}
_DECIMALS = 6  # numbers in to_dict(), as the session log stores them

# A report holds one entry per day of its period: never more days than the longest study.
MAX_REPORT_DAYS = MAX_STUDY_DAYS


class _Schedule(Protocol):
    def describe(self) -> str: ...


class Plan(Prescription, Protocol):
    """The fields of a patient protocol that adherence reads."""

    @property
    def patient_id(self) -> str: ...
    @property
    def target_g(self) -> float: ...
    @property
    def dose_tolerance(self) -> float: ...
    @property
    def schedule(self) -> _Schedule: ...
    @property
    def sha256(self) -> str: ...


class SessionLike(LoggedSession, Protocol):
    """The fields of a logged session that adherence reads (``sessions.log.SessionRecord``)."""

    @property
    def patient_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def firmware_version(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def override(self) -> bool: ...
    @property
    def override_reason(self) -> str | None: ...
    @property
    def minutes_prescribed(self) -> float: ...
    @property
    def p95_abs_error_pct(self) -> float | None: ...
    @property
    def mean_error_pct(self) -> float | None: ...
    @property
    def safety_events(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def protocol_json(self) -> str: ...  # the protocol it ran under; empty: the one given


def _num(value: float | None) -> float | None:
    return None if value is None else round(value, _DECIMALS) + 0.0


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


class AdherenceRatios:
    """Session and dose adherence from slot and minute sums (a day, a week, a window).

    Session adherence is the completed slots over the prescribed ones, dose adherence the
    minutes at dose over the minutes prescribed; ``None`` when nothing was prescribed.
    """

    slots_prescribed: int
    slots_completed: int
    minutes_prescribed: float
    minutes_at_dose: float

    @property
    def session_adherence(self) -> float | None:
        return _ratio(self.slots_completed, self.slots_prescribed)

    @property
    def dose_adherence(self) -> float | None:
        return _ratio(self.minutes_at_dose, self.minutes_prescribed)


class CountedDaySums(AdherenceRatios):
    """Sums over the counted days of a period: a report's weeks and whole period (``Totals``,
    ``WeekAdherence``), a clinic overview's window (``sessions.clinic.overview.Window``)."""

    days_counted: int


@dataclass(frozen=True)
class DayAdherence(AdherenceRatios):
    """One local day of the report period."""

    day: date
    status: str  # one of DAY_STATUSES
    slots_prescribed: int
    slots_completed: int
    minutes_prescribed: float
    minutes_at_dose: float  # capped at the prescription slot by slot
    slot_minutes: tuple[float, ...]  # capped minutes at dose of slot 1, 2, ...
    minutes_logged: float  # every session of the day, uncapped, extra sessions included
    sessions_logged: int
    protocol_sha256: str | None = None  # the protocol the day is judged by; None: "outside"

    @property
    def counted(self) -> bool:
        return self.status in COUNTED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(),
            "status": self.status,
            "counted": self.counted,
            "slots_prescribed": self.slots_prescribed,
            "slots_completed": self.slots_completed,
            "minutes_prescribed": _num(self.minutes_prescribed),
            "minutes_at_dose": _num(self.minutes_at_dose),
            "slot_minutes": [_num(m) for m in self.slot_minutes],
            "minutes_logged": _num(self.minutes_logged),
            "sessions_logged": self.sessions_logged,
            "session_adherence": _num(self.session_adherence),
            "dose_adherence": _num(self.dose_adherence),
            "protocol_sha256": self.protocol_sha256,
        }


@dataclass(frozen=True)
class ProtocolPeriod:
    """One protocol the patient was under, and the local days it was in force.

    A protocol is in force from ``in_force_from`` (``None``: from the start of its study, for
    the first one) to ``in_force_until`` (``None``: still in force). A protocol replaced on the
    day it came into force is in force on no day (``in_force_until`` before ``in_force_from``).
    ``changes`` says what differs from the protocol before it, one short phrase per field.
    """

    sha256: str
    in_force_from: date | None
    in_force_until: date | None
    first_used: date | None  # local date of its first session; None: no session yet
    sessions: int  # the patient's sessions that ran under it
    current: bool  # the protocol in force now
    target_g: float
    dose_tolerance: float
    frequency: str
    minutes_per_session: float
    sessions_per_day: int
    min_gap_hours: float
    daily_windows: str
    study_start: date
    study_end: date
    timezone: str
    changes: tuple[str, ...]

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]

    def in_force(self, day: date) -> bool:
        return (self.in_force_from is None or self.in_force_from <= day) and (
            self.in_force_until is None or day <= self.in_force_until
        )

    def prescribes(self, day: date) -> bool:
        """In force that day, and the day is inside its study: the day is counted by it."""
        return self.in_force(day) and self.study_start <= day <= self.study_end

    def describe(self) -> str:
        """The prescription in one line."""
        return (
            f"{self.target_g:g} g peak at {self.frequency}, {self.sessions_per_day} a day x "
            f"{self.minutes_per_session:g} min; study {self.study_start.isoformat()} to "
            f"{self.study_end.isoformat()}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "in_force_from": None if self.in_force_from is None else self.in_force_from.isoformat(),
            "in_force_until": (
                None if self.in_force_until is None else self.in_force_until.isoformat()
            ),
            "first_used": None if self.first_used is None else self.first_used.isoformat(),
            "sessions": self.sessions,
            "current": self.current,
            "target_g": _num(self.target_g),
            "dose_tolerance": _num(self.dose_tolerance),
            "frequency": self.frequency,
            "minutes_per_session": _num(self.minutes_per_session),
            "sessions_per_day": self.sessions_per_day,
            "min_gap_hours": _num(self.min_gap_hours),
            "daily_windows": self.daily_windows,
            "study_start": self.study_start.isoformat(),
            "study_end": self.study_end.isoformat(),
            "timezone": self.timezone,
            "changes": list(self.changes),
        }


@dataclass(frozen=True)
class Totals(CountedDaySums):
    """Sums over the counted days of a period (a week, the whole report)."""

    days_counted: int
    slots_prescribed: int
    slots_completed: int
    minutes_prescribed: float
    minutes_at_dose: float
    full_days: int
    partial_days: int
    missed_days: tuple[date, ...]

    @classmethod
    def of(cls, days: Iterable[DayAdherence]) -> Totals:
        counted = [d for d in days if d.counted]
        return cls(
            days_counted=len(counted),
            slots_prescribed=sum(d.slots_prescribed for d in counted),
            slots_completed=sum(d.slots_completed for d in counted),
            minutes_prescribed=math.fsum(d.minutes_prescribed for d in counted),
            minutes_at_dose=math.fsum(d.minutes_at_dose for d in counted),
            full_days=sum(d.status == "full" for d in counted),
            partial_days=sum(d.status == "partial" for d in counted),
            missed_days=tuple(d.day for d in counted if d.status == "missed"),
        )


@dataclass(frozen=True)
class WeekAdherence(CountedDaySums):
    """One ISO week (Monday to Sunday of local dates), over the days of it in the period."""

    iso_year: int
    iso_week: int
    first_day: date  # first day of the week inside the report period
    last_day: date
    days_counted: int
    slots_prescribed: int
    slots_completed: int
    minutes_prescribed: float
    minutes_at_dose: float
    missed_days: tuple[date, ...]

    @property
    def label(self) -> str:
        return f"{self.iso_year}-W{self.iso_week:02d}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "week": self.label,
            "first_day": self.first_day.isoformat(),
            "last_day": self.last_day.isoformat(),
            "days_counted": self.days_counted,
            "slots_prescribed": self.slots_prescribed,
            "slots_completed": self.slots_completed,
            "minutes_prescribed": _num(self.minutes_prescribed),
            "minutes_at_dose": _num(self.minutes_at_dose),
            "session_adherence": _num(self.session_adherence),
            "dose_adherence": _num(self.dose_adherence),
            "missed_days": [d.isoformat() for d in self.missed_days],
        }


@dataclass(frozen=True)
class Flag:
    """One reason a clinician may want to look at one session."""

    session_id: str
    local_date: date
    slot: int
    started_local: str  # ISO 8601 with the offset, in the protocol's time zone
    device_id: str
    status: str
    kind: str  # one of FLAG_KINDS
    reason: str  # a short sentence

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "local_date": self.local_date.isoformat(),
            "slot": self.slot,
            "started_local": self.started_local,
            "device_id": self.device_id,
            "status": self.status,
            "kind": self.kind,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class DeviceUse:
    """One plate the patient used in the report's sessions."""

    device_id: str
    firmware_versions: tuple[str, ...]
    sessions: int
    first_day: date
    last_day: date
    minutes_at_dose: float  # uncapped

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "firmware_versions": list(self.firmware_versions),
            "sessions": self.sessions,
            "first_day": self.first_day.isoformat(),
            "last_day": self.last_day.isoformat(),
            "minutes_at_dose": _num(self.minutes_at_dose),
        }


@dataclass(frozen=True)
class SetApart:
    """A session of the period that does not count: on a simulator, or an engineering run."""

    session_id: str
    kind: str  # "simulated" or "engineering" (SessionKind)
    local_date: date
    slot: int
    started_local: str  # ISO 8601 with the offset, in the protocol's time zone
    device_id: str
    status: str
    minutes_at_dose: float
    target_g: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "kind": self.kind,
            "local_date": self.local_date.isoformat(),
            "slot": self.slot,
            "started_local": self.started_local,
            "device_id": self.device_id,
            "status": self.status,
            "minutes_at_dose": _num(self.minutes_at_dose),
            "target_g": _num(self.target_g),
        }


@dataclass(frozen=True)
class AdherenceReport:
    """Adherence of one patient over one period; ``to_dict()`` is plain JSON."""

    patient_id: str
    timezone: str
    study_start: date
    study_end: date
    period_start: date  # the requested period clipped to the study and to today
    period_end: date  # may be before period_start: then the period is empty
    today: date
    minutes_per_session: float
    sessions_per_day: int
    days: tuple[DayAdherence, ...]
    weeks: tuple[WeekAdherence, ...]
    totals: Totals
    flagged: tuple[Flag, ...]
    devices: tuple[DeviceUse, ...]
    sessions_considered: int  # the patient's sessions dated in the requested (unclipped) period
    # every protocol of the patient's history, oldest first; the last one is in force now
    protocols: tuple[ProtocolPeriod, ...] = ()
    # sessions of the period that do not count (simulated, engineering), listed apart
    set_apart: tuple[SetApart, ...] = ()
    demo: bool = False  # a demo home: simulated sessions count, every output says so

    @property
    def label(self) -> str | None:
        """The label every output of this report carries, if any (:data:`DEMO_LABEL`)."""
        return DEMO_LABEL if self.demo else None

    def protocol_on(self, day: date) -> ProtocolPeriod | None:
        """The protocol in force on ``day`` (the latest to come into force by then)."""
        return next((p for p in reversed(self.protocols) if p.in_force(day)), None)

    def in_study(self, day: date) -> bool:
        """Whether the protocol in force on ``day`` prescribes it (inside its study)."""
        if not self.protocols:
            return self.study_start <= day <= self.study_end
        found = self.protocol_on(day)
        return found is not None and found.prescribes(day)

    @property
    def protocol_changes(self) -> tuple[ProtocolPeriod, ...]:
        """The protocols that replaced another, in the order they came into force."""
        return tuple(p for p in self.protocols[1:] if p.in_force_from is not None)

    @property
    def days_counted(self) -> int:
        return self.totals.days_counted

    @property
    def slots_prescribed(self) -> int:
        return self.totals.slots_prescribed

    @property
    def slots_completed(self) -> int:
        return self.totals.slots_completed

    @property
    def minutes_prescribed(self) -> float:
        return self.totals.minutes_prescribed

    @property
    def minutes_at_dose(self) -> float:
        return self.totals.minutes_at_dose

    @property
    def full_days(self) -> int:
        return self.totals.full_days

    @property
    def partial_days(self) -> int:
        return self.totals.partial_days

    @property
    def missed_days(self) -> tuple[date, ...]:
        return self.totals.missed_days

    @property
    def session_adherence(self) -> float | None:
        return self.totals.session_adherence

    @property
    def dose_adherence(self) -> float | None:
        return self.totals.dose_adherence

    def day(self, day: date) -> DayAdherence | None:
        return next((d for d in self.days if d.day == day), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "timezone": self.timezone,
            "study_start": self.study_start.isoformat(),
            "study_end": self.study_end.isoformat(),
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "today": self.today.isoformat(),
            "minutes_per_session": _num(self.minutes_per_session),
            "sessions_per_day": self.sessions_per_day,
            "amplitude_p95_limit_pct": AMPLITUDE_P95_LIMIT_PCT,
            "overall": {
                "days_counted": self.days_counted,
                "full_days": self.full_days,
                "partial_days": self.partial_days,
                "slots_prescribed": self.slots_prescribed,
                "slots_completed": self.slots_completed,
                "minutes_prescribed": _num(self.minutes_prescribed),
                "minutes_at_dose": _num(self.minutes_at_dose),
                "session_adherence": _num(self.session_adherence),
                "dose_adherence": _num(self.dose_adherence),
            },
            "missed_days": [d.isoformat() for d in self.missed_days],
            "days": [d.to_dict() for d in self.days],
            "weeks": [w.to_dict() for w in self.weeks],
            "flagged": [f.to_dict() for f in self.flagged],
            "devices": [d.to_dict() for d in self.devices],
            "sessions_considered": self.sessions_considered,
            "protocols": [p.to_dict() for p in self.protocols],
            "demo": self.demo,
            "label": self.label,
            "counted_kinds": sorted(k.value for k in counted_kinds(self.demo)),
            "set_apart": [s.to_dict() for s in self.set_apart],
        }


def compute_adherence(
    protocol: Plan,
    sessions: Iterable[SessionLike],
    since: date | None = None,
    until: date | None = None,
    today: date | None = None,
    *,
    installed_utc: datetime | None = None,
    demo: bool = False,
    set_back: Collection[str] = (),
) -> AdherenceReport:
    """Adherence of ``protocol``'s patient over ``[since, until]`` (local dates, inclusive).

    ``protocol`` is the protocol in force now and ``installed_utc`` when it was installed
    (``None``: unknown). Every day is judged by the protocol in force that day, found from the
    protocol each session ran under (``protocol_json``; empty means ``protocol``): see
    ``protocol_periods``. ``since``/``until`` default to the days the protocols prescribe up to
    today and are clipped to them for the figures; sessions of other patients are ignored.
    Sessions dated in the requested period but outside the study (or after today) are not
    counted but are flagged. ``today`` defaults to the current date in the protocol's time
    zone. The days of the report grow with the period, never with the study: a period longer
    than MAX_REPORT_DAYS is refused (ValueError naming --since/--until).

    Only sessions of :func:`counted_kinds` (``demo``) count; the others of the period are
    listed in ``set_apart`` and change nothing else (no day, flag, device or protocol).

    ``set_back`` holds the session ids of records dated before a record recorded before them
    (the home computer's clock was set back, ``SessionLog.set_back``): such a session
    happened, but not on the day it claims, so it is flagged ``clock_set_back`` and credited
    to no day.
    """
    if since is not None and until is not None and since > until:
        raise ValueError(f"since {since.isoformat()} is after until {until.isoformat()}")
    zone = ZoneInfo(protocol.timezone)
    if today is None:
        today = datetime.now(zone).date()
    counted = counted_kinds(demo)
    everything = [s for s in sessions if s.patient_id == protocol.patient_id]
    theirs = [s for s in everything if session_kind(s) in counted]
    plans = _PlanReader(protocol)
    periods = _periods(protocol, theirs, plans, installed_utc, today)
    mine = sorted(
        (
            s
            for s in theirs
            if (since is None or s.local_date >= since) and (until is None or s.local_date <= until)
        ),
        key=_session_order,
    )
    first, last = _prescribed_span(protocol, periods)
    start = max(since or first, first)
    end = min(until or last, last)
    if until is None:
        end = min(end, today)
    if (end - start).days + 1 > MAX_REPORT_DAYS:
        raise ValueError(
            f"the report period {start.isoformat()} to {end.isoformat()} is "
            f"{(end - start).days + 1} days long; a report covers at most {MAX_REPORT_DAYS} "
            "days: choose a shorter period with --since and --until"
        )

    backdated = frozenset(set_back)
    by_day: dict[date, list[LoggedSession]] = defaultdict(list)
    for s in mine:
        if s.session_id not in backdated:
            by_day[s.local_date].append(s)
    days = []
    complete_slots: set[tuple[date, int]] = set()
    for day in (start + timedelta(days=k) for k in range((end - start).days + 1)):
        period = _in_force(periods, day)
        found = _day(period, by_day.get(day, []), day, today)
        days.append(found)
        complete_slots.update(
            (day, k)
            for k, m in enumerate(found.slot_minutes, start=1)
            if m >= period.plan.minutes_per_session - AT_DOSE_EPSILON_MIN
        )
    return AdherenceReport(
        patient_id=protocol.patient_id,
        timezone=protocol.timezone,
        study_start=protocol.study_start,
        study_end=protocol.study_end,
        period_start=start,
        period_end=end,
        today=today,
        minutes_per_session=protocol.minutes_per_session,
        sessions_per_day=protocol.sessions_per_day,
        days=tuple(days),
        weeks=_weeks(days),
        totals=Totals.of(days),
        flagged=tuple(
            f
            for s in mine
            for f in _flags(
                _in_force(periods, s.local_date).plan, s, zone, today, complete_slots, backdated
            )
        ),
        devices=_devices(mine),
        sessions_considered=len(mine),
        protocols=_described(periods),
        set_apart=tuple(
            _set_apart(s, zone)
            for s in sorted(everything, key=_session_order)
            if session_kind(s) not in counted
            and (since is None or s.local_date >= since)
            and (until is None or s.local_date <= until)
        ),
        demo=demo,
    )


def _set_apart(s: SessionLike, zone: ZoneInfo) -> SetApart:
    return SetApart(
        session_id=s.session_id,
        kind=session_kind(s).value,
        local_date=s.local_date,
        slot=s.slot,
        started_local=s.started_utc.astimezone(zone).isoformat(timespec="seconds"),
        device_id=s.device_id,
        status=str(s.status),
        minutes_at_dose=s.minutes_at_dose,
        target_g=float(getattr(s, "target_g", 0.0)),
    )


# ---- which protocol is in force when ------------------------------------------------------


class _PlanReader:
    """The protocol a session ran under, read once per distinct protocol text."""

    def __init__(self, current: Plan) -> None:
        self.current = current
        self._known: dict[str, Plan] = {}

    def of(self, session: SessionLike) -> Plan:
        text = session.protocol_json
        if not text:
            return self.current
        plan = self._known.get(text)
        if plan is None:
            try:
                plan = protocol_from_dict(json.loads(text))
            except (ValueError, TypeError, ProtocolFileError, RecursionError) as exc:
                # the log checks this text when it is written; judge by the current protocol
                logger.warning(
                    "session %s: its protocol cannot be read (%s); judged by the current one",
                    session.session_id,
                    exc,
                )
                plan = self.current
            if plan.sha256 == self.current.sha256:
                plan = self.current
            self._known[text] = plan
        return plan


@dataclass
class _Period:
    """A run of the patient's history under one protocol (mutable while it is built)."""

    plan: Plan
    starts_utc: datetime | None  # when it came into force; None: from the start of its study
    first_used_utc: datetime | None = None
    last_used_utc: datetime | None = None
    sessions: int = 0
    from_day: date | None = None  # local date it came into force (set once all are known)
    until_day: date | None = None
    previous: Plan | None = field(default=None, repr=False)


def protocol_periods(
    current: Plan,
    sessions: Iterable[SessionLike],
    installed_utc: datetime | None = None,
    today: date | None = None,
) -> tuple[ProtocolPeriod, ...]:
    """The protocols of one patient's history, oldest first, each with the days it was in force.

    The rule (docs/adherence.md, "Which protocol judges a day"): going through the sessions in
    the order they started, a protocol comes into force when the first session that ran under
    it started, unless it is the protocol before (a run of sessions under one protocol is one
    period). The first protocol is in force from the start of its study. ``current`` (the
    protocol installed now) comes into force when it was installed (``installed_utc``) or first
    used, whichever is earlier, but never before the last session of the protocol it replaced;
    installed and never used, with no install time known, it is in force from ``today``. A
    protocol is in force from the local day it came into force until the day before the next
    one did; on a day two protocols share, the later one judges the day.
    """
    zone = ZoneInfo(current.timezone)
    if today is None:
        today = datetime.now(zone).date()
    theirs = [s for s in sessions if s.patient_id == current.patient_id]
    return _described(_periods(current, theirs, _PlanReader(current), installed_utc, today))


def _periods(
    current: Plan,
    sessions: Sequence[SessionLike],
    plans: _PlanReader,
    installed_utc: datetime | None,
    today: date,
) -> list[_Period]:
    runs: list[_Period] = []
    for s in sorted(sessions, key=lambda s: (s.started_utc, s.session_id)):
        plan = plans.of(s)
        if not runs or runs[-1].plan.sha256 != plan.sha256:
            runs.append(_Period(plan, s.started_utc if runs else None, s.started_utc))
        run = runs[-1]
        run.sessions += 1
        run.last_used_utc = s.started_utc
    if not runs:
        runs.append(_Period(current, None))
    elif runs[-1].plan.sha256 != current.sha256:
        after = runs[-1].last_used_utc
        runs.append(_Period(current, after if installed_utc is None else installed_utc))
        if installed_utc is None:  # nothing says when: in force from today
            runs[-1].from_day = today
        elif after is not None and installed_utc < after:
            runs[-1].starts_utc = after
    elif len(runs) > 1 and installed_utc is not None:
        last, before = runs[-1], runs[-2]
        assert last.starts_utc is not None
        assert before.last_used_utc is not None
        last.starts_utc = max(min(last.starts_utc, installed_utc), before.last_used_utc)
    floor: date | None = None
    for k, run in enumerate(runs):
        if k:
            run.previous = runs[k - 1].plan
        if run.from_day is None and run.starts_utc is not None:
            run.from_day = run.starts_utc.astimezone(ZoneInfo(run.plan.timezone)).date()
        if run.from_day is not None and floor is not None:
            run.from_day = max(run.from_day, floor)  # in force in the order they came
        floor = run.from_day if run.from_day is not None else floor
    for run, successor in itertools.pairwise(runs):
        assert successor.from_day is not None
        run.until_day = successor.from_day - timedelta(days=1)
    return runs


def _in_force(periods: Sequence[_Period], day: date) -> _Period:
    """The period in force on ``day``: the latest that came into force by then."""
    starts = [p.from_day or date.min for p in periods]
    k = bisect.bisect_right(starts, day) - 1
    return periods[max(k, 0)]


def _prescribed_span(current: Plan, periods: Sequence[_Period]) -> tuple[date, date]:
    """First and last day any protocol in force prescribes; the current study if none does."""
    spans = []
    for p in periods:
        first = max(p.from_day or p.plan.study_start, p.plan.study_start)
        last = min(p.until_day or p.plan.study_end, p.plan.study_end)
        if first <= last:
            spans.append((first, last))
    if not spans:
        return current.study_start, current.study_end
    return min(f for f, _ in spans), max(last for _, last in spans)


def _windows(plan: Plan) -> str:
    return ", ".join(f"{w.start:%H:%M}-{w.end:%H:%M}" for w in plan.daily_windows) or "any time"


def _changes(before: Plan, after: Plan) -> tuple[str, ...]:
    """What differs between two protocols, one short phrase per field."""
    found = []
    pairs: list[tuple[str, str, str]] = [
        ("target", f"{before.target_g:g} g", f"{after.target_g:g} g"),
        ("dose tolerance", f"+/-{100 * before.dose_tolerance:g}%",
         f"+/-{100 * after.dose_tolerance:g}%"),
        ("frequency", before.schedule.describe(), after.schedule.describe()),
        ("minutes per session", f"{before.minutes_per_session:g}",
         f"{after.minutes_per_session:g}"),
        ("sessions per day", str(before.sessions_per_day), str(after.sessions_per_day)),
        ("rest between sessions", f"{before.min_gap_hours:g} h", f"{after.min_gap_hours:g} h"),
        ("daily windows", _windows(before), _windows(after)),
        ("study", f"{before.study_start.isoformat()} to {before.study_end.isoformat()}",
         f"{after.study_start.isoformat()} to {after.study_end.isoformat()}"),
        ("time zone", before.timezone, after.timezone),
    ]  # fmt: skip
    for what, old, new in pairs:
        if old != new:
            found.append(f"{what} {old} -> {new}")
    return tuple(found) or ("the same prescription, installed again",)


def _described(periods: Sequence[_Period]) -> tuple[ProtocolPeriod, ...]:
    out = []
    for k, p in enumerate(periods):
        zone = ZoneInfo(p.plan.timezone)
        first_used = p.first_used_utc.astimezone(zone).date() if p.first_used_utc else None
        out.append(
            ProtocolPeriod(
                sha256=p.plan.sha256,
                in_force_from=p.from_day,
                in_force_until=p.until_day,
                first_used=first_used,
                sessions=p.sessions,
                current=k == len(periods) - 1,
                target_g=p.plan.target_g,
                dose_tolerance=p.plan.dose_tolerance,
                frequency=p.plan.schedule.describe(),
                minutes_per_session=p.plan.minutes_per_session,
                sessions_per_day=p.plan.sessions_per_day,
                min_gap_hours=p.plan.min_gap_hours,
                daily_windows=_windows(p.plan),
                study_start=p.plan.study_start,
                study_end=p.plan.study_end,
                timezone=p.plan.timezone,
                changes=() if p.previous is None else _changes(p.previous, p.plan),
            )
        )
    return tuple(out)


def _session_order(s: SessionLike) -> tuple[date, int, datetime, str]:
    return (s.local_date, s.slot, s.started_utc, s.session_id)


def _day(period: _Period, sessions: list[LoggedSession], day: date, today: date) -> DayAdherence:
    protocol = period.plan
    logged = math.fsum(s.minutes_at_dose for s in sessions)
    if not protocol.study_start <= day <= protocol.study_end:  # no study in force that day
        return DayAdherence(day, "outside", 0, 0, 0.0, 0.0, (), logged, len(sessions))
    per_slot = protocol.minutes_per_session
    capped = tuple(
        min(max(m, 0.0), per_slot) for m in day_summary(protocol, sessions, day)
    )  # slots 1..sessions_per_day only: extra slots are left out here
    completed = sum(m >= per_slot - AT_DOSE_EPSILON_MIN for m in capped)
    at_dose = math.fsum(capped)
    if day > today:
        status = "future"
    elif day == today:
        status = "today"
    elif completed == protocol.sessions_per_day:
        status = "full"
    elif at_dose > 0.0:
        status = "partial"
    else:
        status = "missed"
    return DayAdherence(
        day=day,
        status=status,
        slots_prescribed=protocol.sessions_per_day,
        slots_completed=completed,
        minutes_prescribed=per_slot * protocol.sessions_per_day,
        minutes_at_dose=at_dose,
        slot_minutes=capped,
        minutes_logged=logged,
        sessions_logged=len(sessions),
        protocol_sha256=protocol.sha256,
    )


def _weeks(days: Sequence[DayAdherence]) -> tuple[WeekAdherence, ...]:
    grouped: dict[tuple[int, int], list[DayAdherence]] = defaultdict(list)
    for d in days:
        iso = d.day.isocalendar()
        grouped[(iso.year, iso.week)].append(d)
    weeks = []
    for (year, week), members in sorted(grouped.items()):
        totals = Totals.of(members)
        weeks.append(
            WeekAdherence(
                iso_year=year,
                iso_week=week,
                first_day=members[0].day,
                last_day=members[-1].day,
                days_counted=totals.days_counted,
                slots_prescribed=totals.slots_prescribed,
                slots_completed=totals.slots_completed,
                minutes_prescribed=totals.minutes_prescribed,
                minutes_at_dose=totals.minutes_at_dose,
                missed_days=totals.missed_days,
            )
        )
    return tuple(weeks)


def _minutes(value: float) -> str:
    return f"{value:.1f}"


def _flags(
    protocol: Plan,
    s: SessionLike,
    zone: ZoneInfo,
    today: date,
    complete_slots: set[tuple[date, int]],
    set_back: Collection[str],
) -> list[Flag]:
    found: dict[str, str] = {}
    if s.session_id in set_back:
        found["clock_set_back"] = (
            "dated before a session already recorded (the computer's clock was set back, or a "
            "clock that ran fast was put right): not counted"
        )
    status = str(s.status)
    if status in _STATUS_FLAGS:
        detail = s.reason.strip()
        flag = _STATUS_FLAGS[status]
        if status == "stopped_by_patient" and stop_word(detail) != "stopped_by_user":
            flag = "stopped"  # by the computer, or by itself (nobody on the plate, out of time)
        found[status] = flag + (f": {detail}" if detail else "")
    if status == "running":
        found["running"] = "not finished: still running, or ended without being recovered yet"
    # The presence facts are stored as an event of their own; they are a fault of nobody's.
    events = [e for e in s.safety_events if e.get("reason") != PRESENCE_EVENT]
    if events:
        reasons = sorted({str(e.get("reason", "unknown")) for e in events})
        count = len(events)
        found["fault"] = f"{count} safety event{'s' * (count != 1)}: {', '.join(reasons)}"
    for event in s.safety_events:
        values = event.get("values")
        if (
            event.get("reason") == PRESENCE_EVENT
            and isinstance(values, Mapping)
            and values.get("verified") is False
        ):
            found["presence_not_verified"] = str(event.get("text", "presence not verified"))
    if status != "running" and s.minutes_at_dose < s.minutes_prescribed - AT_DOSE_EPSILON_MIN:
        text = f"{_minutes(s.minutes_at_dose)} of {_minutes(s.minutes_prescribed)} min at dose"
        if (s.local_date, s.slot) in complete_slots:
            text += "; the slot was completed by a resumed session"
        found["under_dose"] = text
    p95 = s.p95_abs_error_pct
    if p95 is not None and p95 > AMPLITUDE_P95_LIMIT_PCT:
        found["amplitude_error"] = (
            f"95th-percentile amplitude error {p95:.2f}% (limit {AMPLITUDE_P95_LIMIT_PCT:g}%)"
        )
    if s.override:
        found["override"] = "started by override: " + (
            (s.override_reason or "").strip() or "no reason recorded"
        )
    if s.slot > protocol.sessions_per_day or s.slot < 1:
        found["extra_session"] = (
            f"slot {s.slot} of {protocol.sessions_per_day} a day: extra, not counted"
        )
    if not protocol.study_start <= s.local_date <= protocol.study_end:
        found["outside_study"] = (
            f"dated outside the study ({protocol.study_start.isoformat()} to "
            f"{protocol.study_end.isoformat()}): not counted"
        )
    if s.local_date > today:
        found["after_today"] = f"dated after today ({today.isoformat()}): not counted"
    started = s.started_utc.astimezone(zone).isoformat(timespec="seconds")
    return [
        Flag(s.session_id, s.local_date, s.slot, started, s.device_id, status, kind, found[kind])
        for kind in FLAG_KINDS
        if kind in found
    ]


def _devices(sessions: Sequence[SessionLike]) -> tuple[DeviceUse, ...]:
    grouped: dict[str, list[SessionLike]] = defaultdict(list)
    for s in sessions:
        grouped[s.device_id].append(s)
    return tuple(
        DeviceUse(
            device_id=device,
            firmware_versions=tuple(sorted({s.firmware_version for s in used})),
            sessions=len(used),
            first_day=min(s.local_date for s in used),
            last_day=max(s.local_date for s in used),
            minutes_at_dose=math.fsum(s.minutes_at_dose for s in used),
        )
        for device, used in sorted(grouped.items())
    )
