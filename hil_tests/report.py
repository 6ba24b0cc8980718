"""The qualification report: every check with its measured figure, its limit and its verdict.

Tests record into one :class:`QualificationReport` per run (the ``qualification`` fixture);
``pytest_sessionfinish`` writes it as ``hil-report.json`` and ``hil-report.txt`` when the run
was given ``--report DIR``. A check decides its own verdict from the figure and the limit, and
the test then asserts that verdict, so the file and the test outcome can never disagree.
"""

from __future__ import annotations

import json
import math
import operator
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPORT_JSON = "hil-report.json"
REPORT_TEXT = "hil-report.txt"
REPORT_FORMAT = 1
_RANK = {"passed": 0, "not applicable": 1, "skipped": 1, "failed": 2, "error": 2}

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}


@dataclass
class Check:
    """One qualification figure: what was measured, against what limit, and the verdict.

    ``passed`` is None for a figure recorded for information only (no limit applies, for
    example wall-clock latency through a simulator running faster than real time).
    """

    check_id: str
    title: str
    measured: float | int | str | None
    unit: str
    limit: float | int | str | list[str] | None
    comparison: str
    passed: bool | None
    test: str = ""
    note: str = ""

    def describe(self) -> str:
        """A sentence for an assertion message and the text report."""
        figure = _fmt(self.measured, self.unit)
        if self.passed is None:
            return (
                f"{self.title}: {figure} (for information{'; ' + self.note if self.note else ''})"
            )
        limit = f"{self.comparison} {_fmt(self.limit, self.unit)}"
        verdict = "pass" if self.passed else "FAIL"
        note = f" ({self.note})" if self.note else ""
        return f"{self.title}: {figure}, limit {limit}: {verdict}{note}"


@dataclass
class TestOutcome:
    nodeid: str
    outcome: str  # passed, failed, error, skipped, not applicable
    duration_s: float
    reason: str = ""


@dataclass
class QualificationReport:
    """Everything an engineer files with a plate after a run of the suite."""

    url: str
    options: dict[str, Any]
    started_utc: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )
    device: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    outcomes: dict[str, TestOutcome] = field(default_factory=dict)
    duration_s: float = 0.0
    current_test: str = ""

    # ---- recording -----------------------------------------------------------------------

    def set_device(self, info: dict[str, Any]) -> None:
        """The device's hello (the first one seen; later opens must describe the same plate)."""
        if not self.device:
            self.device = dict(info)

    def note(self, key: str, value: Any) -> None:
        """A fact about the run that is not a check (clock rate, calibration gains, ...)."""
        self.environment[key] = value

    def check(
        self,
        check_id: str,
        title: str,
        measured: float | int | None,
        limit: float | int | None,
        comparison: str = "<=",
        unit: str = "",
        note: str = "",
    ) -> Check:
        """Record a figure against a limit; the verdict is ``measured <comparison> limit``.

        A missing measurement (None or NaN) fails: a check that could not be measured has not
        been passed.
        """
        if comparison not in _COMPARISONS:
            raise ValueError(f"unknown comparison {comparison!r}")
        if limit is None:
            raise ValueError("a check needs a limit; use info() for a figure without one")
        measured, limit = _plain(measured), _plain(limit)
        ok = bool(
            measured is not None
            and not (isinstance(measured, float) and math.isnan(measured))
            and _COMPARISONS[comparison](measured, limit)
        )
        return self._add(Check(check_id, title, measured, unit, limit, comparison, ok, note=note))

    def expect(
        self, check_id: str, title: str, observed: str, expected: str, note: str = ""
    ) -> Check:
        """Record an observed outcome (a refusal reason, a fault code) against the expected one."""
        return self._add(
            Check(check_id, title, observed, "", expected, "==", observed == expected, note=note)
        )

    def expect_one_of(
        self, check_id: str, title: str, observed: str, accepted: list[str], note: str = ""
    ) -> Check:
        """Record an observed outcome that passes if it is any of ``accepted``."""
        return self._add(
            Check(check_id, title, observed, "", accepted, "in", observed in accepted, note=note)
        )

    def info(
        self,
        check_id: str,
        title: str,
        measured: float | int | str | None,
        unit: str = "",
        note: str = "",
    ) -> Check:
        """Record a figure with no limit (reported, not judged)."""
        return self._add(Check(check_id, title, _plain(measured), unit, None, "", None, note=note))

    def _add(self, check: Check) -> Check:
        check.test = self.current_test
        self.checks = [c for c in self.checks if c.check_id != check.check_id]  # a rerun replaces
        self.checks.append(check)
        return check

    def record_outcome(self, outcome: TestOutcome) -> None:
        """Merge one phase (setup, call, teardown) into the test's outcome.

        Durations add up (a session fixture's setup, such as the calibration, counts for the
        test that needed it first); the worst phase decides: error/failed over skipped over
        passed.
        """
        previous = self.outcomes.get(outcome.nodeid)
        if previous is None:
            outcome.duration_s = round(outcome.duration_s, 3)
            self.outcomes[outcome.nodeid] = outcome
            return
        previous.duration_s = round(previous.duration_s + outcome.duration_s, 3)
        if _RANK[outcome.outcome] > _RANK[previous.outcome]:
            previous.outcome = outcome.outcome
            previous.reason = outcome.reason

    # ---- verdict and output -------------------------------------------------------------

    @property
    def verdict(self) -> str:
        """PASS only if every applicable test ran and passed; INCOMPLETE if some were skipped.

        A test skipped as not applicable (a capability the plate does not have, fault
        injection on a real plate) does not make the run incomplete; one skipped because
        motion was not allowed does.
        """
        outcomes = [o.outcome for o in self.outcomes.values()]
        if any(o in ("failed", "error") for o in outcomes) or any(
            c.passed is False for c in self.checks
        ):
            return "FAIL"
        if not outcomes or any(o == "skipped" for o in outcomes):
            return "INCOMPLETE"
        return "PASS"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "verdict": self.verdict,
            "url": self.url,
            "date_utc": self.started_utc,
            "duration_s": round(self.duration_s, 2),
            "device": self.device,
            "host": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "liv_platform": _package_version(),
            },
            "options": self.options,
            "environment": self.environment,
            "checks": [asdict(c) for c in self.checks],
            "tests": [asdict(o) for o in self.outcomes.values()],
        }

    def to_text(self) -> str:
        dev = self.device
        lines = [
            "LIV plate qualification (hil_tests)",
            "",
            f"verdict            {self.verdict}",
            f"device id          {dev.get('device_id', '(no handshake)')}",
            f"firmware           {dev.get('firmware_version', '-')}",
            f"protocol           {dev.get('protocol_version', '-')}",
            f"capabilities       {', '.join(dev.get('capabilities', [])) or '-'}",
            f"url                {self.url}",
            f"date (UTC)         {self.started_utc}",
            f"duration           {self.duration_s:.1f} s",
            f"options            {_options_text(self.options)}",
        ]
        for key, value in self.environment.items():
            lines.append(f"{key:<18} {_fmt(value, '')}")
        lines += ["", "Checks", ""]
        rows = [("id", "measured", "limit", "verdict")]
        for c in self.checks:
            limit = "-" if c.passed is None else f"{c.comparison} {_fmt(c.limit, c.unit)}"
            verdict = "info" if c.passed is None else ("pass" if c.passed else "FAIL")
            rows.append((c.check_id, _fmt(c.measured, c.unit), limit, verdict))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        lines += ["", "What each check means", ""]
        for c in self.checks:
            lines.append(f"{c.check_id}: {c.title}.{' ' + c.note + '.' if c.note else ''}")
        lines += ["", "Tests", ""]
        for o in self.outcomes.values():
            reason = f"  ({o.reason})" if o.reason else ""
            lines.append(f"{o.outcome.upper():<14} {o.duration_s:6.1f} s  {o.nodeid}{reason}")
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        json_path = directory / REPORT_JSON
        text_path = directory / REPORT_TEXT
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        text_path.write_text(self.to_text())
        return json_path, text_path


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (for JSON)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _fmt(value: object, unit: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        text = f"{value:.4g}"
    elif isinstance(value, list | tuple):
        text = ", ".join(_fmt(v, "") for v in value)
    elif isinstance(value, dict):
        text = ", ".join(f"{k}: {_fmt(v, '')}" for k, v in value.items())
    else:
        text = str(value)
    return f"{text} {unit}" if unit else text


def _options_text(options: dict[str, Any]) -> str:
    shown = [f"{k}={v}" for k, v in options.items() if v not in (None, False)]
    return ", ".join(shown) or "-"


def _package_version() -> str:
    try:
        return metadata.version("liv-platform")
    except metadata.PackageNotFoundError:
        return "unknown"
