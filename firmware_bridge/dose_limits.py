"""The therapy's dose limits: one table that the protocol parser, the controller and the CLI read.

It lives in the lowest layer so that every layer (and, later, the signer and the firmware) can
import the same numbers; nothing here depends on anything above it. ``docs/protocol-file.md``
("Hard limits") and ``docs/safety.md`` ("Dose limits") give the reasons for each number.

The table is built so that every combination a protocol may hold can be run. The top of the
at-dose band of the highest target, raised by the overshoot the controller is allowed, stays
below the supervisor's over-acceleration ceiling with a margin::

    target_g.high x (1 + dose_tolerance.high) x (1 + control_overshoot_fraction)
        <= over_acceleration_ceiling_g x (1 - trip_margin_fraction)
    0.4 g x 1.15 x 1.05 = 0.483 g  <=  0.5 g x 0.98 = 0.49 g

and the ceiling itself lies at or below the hard ceiling that no setting can raise. The plate's
own firmware keeps a ceiling of its own (``firmware_ceiling_g``, announced in HELLO): above the
supervisor's, so that the host normally trips first, and at most the hard ceiling::

    over_acceleration_ceiling_g < firmware_ceiling_g <= hard_ceiling_g
    0.5 g < 0.6 g <= 1.0 g

``DoseLimits`` checks these inequalities when it is built, so a table that breaks them cannot
exist.

Errors::

    LivError (firmware_bridge.errors)     ValueError
    └── DoseLimitError ───────────────────┘    a value outside the table; the message names it
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

from firmware_bridge.errors import LivError

__all__ = ["DOSE_LIMITS", "DoseLimitError", "DoseLimits", "DoseRange"]


class DoseLimitError(LivError, ValueError):
    """A dose or setting outside the dose limits; the message names the limit and its range."""


class DoseRange(NamedTuple):
    """An inclusive range ``low``..``high`` of one quantity, in the unit its field name says."""

    low: float
    high: float

    def holds(self, value: float) -> bool:
        """Whether ``value`` lies within the range (NaN and infinities never do)."""
        return math.isfinite(value) and self.low <= value <= self.high

    def describe(self) -> str:
        """``low-high`` as people write it, e.g. ``0.1-0.4``."""
        return f"{self.low:g}-{self.high:g}"


@dataclass(frozen=True)
class DoseLimits:
    """The dose limits of the therapy; every range is inclusive at both ends.

    Protocol ranges carry the name of the protocol field they bound (``docs/protocol-file.md``).
    """

    # what a protocol may prescribe (ranges named after the protocol fields they bound)
    target_g: DoseRange  # target peak acceleration, g
    frequency_hz: DoseRange  # every frequency a schedule reaches, Hz
    minutes_per_session: DoseRange  # vibration time of one session, minutes
    sessions_per_day: DoseRange  # whole sessions
    min_gap_hours: DoseRange  # rest from the end of one session to the start of the next
    dose_tolerance: DoseRange  # fraction of target_g that still counts as "at dose"
    sweep_seconds_each_way: DoseRange  # a sweep is slow, and no longer than a session
    # what the controller and its supervisor hold to
    control_overshoot_fraction: float  # the controller's allowed overshoot of its target
    trip_margin_fraction: float  # kept free below the ceiling, as a fraction of the ceiling
    over_acceleration_ceiling_g: float  # the supervisor trips above this fitted peak, g
    hard_ceiling_g: float  # no setting may raise the supervisor's ceiling above this, g
    # what the plate's firmware holds to on its own (announced in HELLO as ceiling_mg)
    firmware_ceiling_g: float  # the firmware ramps to zero above this measured peak, g
    # what the empty plate is calibrated across
    calibration_hz: DoseRange  # must cover frequency_hz, Hz

    def __post_init__(self) -> None:
        problems = self.inconsistencies()
        if problems:
            raise ValueError("the dose limits contradict themselves: " + "; ".join(problems))

    def protocol_ranges(self) -> dict[str, DoseRange]:
        """The ranges that bound protocol fields, by field name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), DoseRange) and f.name != "calibration_hz"
        }

    @property
    def worst_case_peak_g(self) -> float:
        """The highest peak an accepted protocol can ask for: top of the highest at-dose band,
        plus the controller's allowed overshoot."""
        return (
            self.target_g.high
            * (1.0 + self.dose_tolerance.high)
            * (1.0 + self.control_overshoot_fraction)
        )

    def highest_target_g(self, ceiling_g: float) -> float:
        """The highest target a controller may hold under ``ceiling_g``.

        Its allowed overshoot must stay below the ceiling with the trip margin to spare.
        """
        return (
            ceiling_g * (1.0 - self.trip_margin_fraction) / (1.0 + self.control_overshoot_fraction)
        )

    def inconsistencies(self) -> list[str]:
        """Every inequality of the module docstring that this table breaks (empty when sound)."""
        problems: list[str] = []
        for name, value in self.protocol_ranges().items():
            if not (
                math.isfinite(value.low) and math.isfinite(value.high) and value.low <= value.high
            ):
                problems.append(f"{name} {value.describe()} is not a range")
        if not self.target_g.low > 0.0:
            problems.append("the lowest target must be above 0 g")
        if not 0.0 <= self.control_overshoot_fraction < 1.0:
            problems.append("the controller's overshoot must be a fraction from 0 to below 1")
        if not 0.0 <= self.trip_margin_fraction < 1.0:
            problems.append("the trip margin must be a fraction from 0 to below 1")
        if not 0.0 < self.over_acceleration_ceiling_g <= self.hard_ceiling_g:
            problems.append(
                f"the over-acceleration ceiling {self.over_acceleration_ceiling_g:g} g must be "
                f"above 0 and at most the hard ceiling {self.hard_ceiling_g:g} g"
            )
        if not self.over_acceleration_ceiling_g < self.firmware_ceiling_g <= self.hard_ceiling_g:
            problems.append(
                f"the firmware's ceiling {self.firmware_ceiling_g:g} g must lie above the "
                f"supervisor's {self.over_acceleration_ceiling_g:g} g (the host trips first) and "
                f"at most the hard ceiling {self.hard_ceiling_g:g} g"
            )
        room_g = self.over_acceleration_ceiling_g * (1.0 - self.trip_margin_fraction)
        if not self.worst_case_peak_g <= room_g:
            problems.append(
                f"the highest target {self.target_g.high:g} g with its "
                f"+{100 * self.dose_tolerance.high:g}% tolerance and "
                f"{100 * self.control_overshoot_fraction:g}% overshoot reaches "
                f"{self.worst_case_peak_g:.3f} g, above {room_g:.3f} g (the ceiling "
                f"{self.over_acceleration_ceiling_g:g} g less its "
                f"{100 * self.trip_margin_fraction:g}% margin)"
            )
        cal, band = self.calibration_hz, self.frequency_hz
        if not cal.low <= band.low <= band.high <= cal.high:
            problems.append(
                f"the calibration band {cal.describe()} Hz must cover the therapy band "
                f"{band.describe()} Hz"
            )
        if self.sweep_seconds_each_way.high > self.minutes_per_session.high * 60.0:
            problems.append("one way of a sweep must not take longer than the longest session")
        if self.sessions_per_day.low < 1 or self.minutes_per_session.low <= 0.0:
            problems.append("a protocol must prescribe at least one session of some minutes")
        return problems


# The dose limits in force; nothing in the product uses any other table. The reasons for each
# number are in docs/protocol-file.md ("Hard limits") and docs/safety.md ("Dose limits").
DOSE_LIMITS = DoseLimits(
    target_g=DoseRange(0.1, 0.4),  # published doses 0.2-0.4 g
    frequency_hz=DoseRange(30.0, 90.0),  # published frequencies 30-90 Hz
    minutes_per_session=DoseRange(1.0, 30.0),
    sessions_per_day=DoseRange(1, 4),
    min_gap_hours=DoseRange(0.0, 24.0),
    dose_tolerance=DoseRange(0.01, 0.15),  # sine test standards: +/-10-15%
    sweep_seconds_each_way=DoseRange(10.0, 1800.0),
    control_overshoot_fraction=0.05,  # the controller's specification (docs/performance.md)
    trip_margin_fraction=0.02,
    over_acceleration_ceiling_g=0.5,
    hard_ceiling_g=1.0,
    firmware_ceiling_g=0.6,  # the plate's own backstop: 20% above the supervisor's ceiling
    calibration_hz=DoseRange(25.0, 100.0),  # one 5 Hz step below, 10 Hz above the band
)
