"""Frequency schedules: fixed, a list of steps, or a slow sweep, all inside the therapy band.

Parsed from text for the command line:

    45                      fixed 45 Hz
    steps:30@0,45@60,90@120 30 Hz from 0 s, 45 Hz from 60 s, 90 Hz from 120 s
    sweep:30-90/60          a triangle sweep 30 -> 90 -> 30 Hz taking 60 s each way
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

BAND_HZ = (30.0, 90.0)  # the therapy band of `liv run`; protocols pass their own limits


class ScheduleError(ValueError):
    """A schedule outside the therapy band or written wrongly; the message says which."""


def _check_band(freq_hz: float, what: str, band: tuple[float, float] = BAND_HZ) -> float:
    low, high = band
    if not (math.isfinite(freq_hz) and low <= freq_hz <= high):
        raise ScheduleError(f"{what} {freq_hz:g} Hz is outside the allowed {low:g}-{high:g} Hz")
    return freq_hz


@dataclass(frozen=True)
class FrequencySchedule:
    """Frequency as a function of exposure time; ``steps`` holds (start_s, freq_hz) pairs."""

    steps: tuple[tuple[float, float], ...] = ()
    sweep: tuple[float, float, float] | None = None  # (low_hz, high_hz, seconds one way)

    @classmethod
    def fixed(cls, freq_hz: float, band: tuple[float, float] = BAND_HZ) -> FrequencySchedule:
        return cls(steps=((0.0, _check_band(freq_hz, "frequency", band)),))

    @property
    def span_hz(self) -> tuple[float, float]:
        """Lowest and highest frequency the schedule reaches."""
        if self.sweep is not None:
            return self.sweep[0], self.sweep[1]
        freqs = [f for _, f in self.steps]
        return min(freqs), max(freqs)

    @property
    def constant_hz(self) -> float | None:
        """The one frequency of a fixed schedule (what :meth:`freq_at` returns at any time), or
        None for steps and sweeps: the loop asks a fixed schedule once, not every block."""
        if self.sweep is None and len(self.steps) == 1:
            return self.steps[0][1]
        return None

    def freq_at(self, t_s: float) -> float:
        if self.sweep is not None:
            low, high, one_way = self.sweep
            cycle = (t_s / one_way) % 2.0
            frac = cycle if cycle <= 1.0 else 2.0 - cycle
            return low + (high - low) * frac
        current = self.steps[0][1]
        for start, freq in self.steps:
            if t_s >= start:
                current = freq
        return current

    def describe(self) -> str:
        if self.sweep is not None:
            low, high, one_way = self.sweep
            return f"sweep {low:g}-{high:g} Hz, {one_way:g} s each way"
        if len(self.steps) == 1:
            return f"{self.steps[0][1]:g} Hz"
        return ", ".join(f"{f:g} Hz from {t:g} s" for t, f in self.steps)


def parse_schedule(text: str, band: tuple[float, float] = BAND_HZ) -> FrequencySchedule:
    """Parse the command-line forms in the module docstring; ScheduleError says what is wrong.

    Every frequency must lie within ``band`` (default the 30-90 Hz therapy band).
    """
    text = text.strip()
    try:
        if text.startswith("steps:"):
            steps = []
            for item in text[len("steps:") :].split(","):
                freq_text, _, start_text = item.partition("@")
                steps.append((float(start_text), _check_band(float(freq_text), "step", band)))
            if not steps or steps[0][0] != 0.0:
                raise ScheduleError("the first step must start at 0 s, e.g. steps:30@0,45@60")
            if any(b[0] <= a[0] for a, b in itertools.pairwise(steps)):
                raise ScheduleError("step start times must increase")
            return FrequencySchedule(steps=tuple(steps))
        if text.startswith("sweep:"):
            span, _, seconds = text[len("sweep:") :].partition("/")
            low_text, _, high_text = span.partition("-")
            low = _check_band(float(low_text), "sweep start", band)
            high = _check_band(float(high_text), "sweep end", band)
            one_way = float(seconds)
            if not high > low:
                raise ScheduleError("a sweep needs low-high with high above low, e.g. 30-90")
            if not (math.isfinite(one_way) and one_way >= 10.0):
                raise ScheduleError("a sweep must take at least 10 s each way (slow sweep)")
            return FrequencySchedule(steps=((0.0, low),), sweep=(low, high, one_way))
        return FrequencySchedule.fixed(float(text), band)
    except ScheduleError:
        raise
    except ValueError:
        raise ScheduleError(
            f"cannot read schedule {text!r}: use HZ, steps:HZ@S,HZ@S,... or sweep:LOW-HIGH/S"
        ) from None
