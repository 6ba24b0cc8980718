"""What the engineers' commands share: the run's record in the log, the progress line, output."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo

from firmware_bridge.errors import LivError
from sessions.commands.common import home_of, open_log
from sessions.commands.start import BAR_MAX, BAR_MIN, progress_bar, terminal_columns
from sessions.text import echo, terminal_line

if TYPE_CHECKING:
    from controller.calibration import Calibration, CalibrationStore
    from firmware_bridge.client import DeviceInfo

_log = logging.getLogger("liv")


def emit(data: dict[str, Any], as_json: bool, lines: Sequence[str]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))  # JSON escapes every control char
    else:
        echo("\n".join(lines))


class EngineeringRun:
    """One engineering run in the session log (kind ``engineering``, never therapy).

    The row is written before the plate moves and finished with the true stop reason however
    the run ends (done, a fault, Ctrl-C, a lost link), so no engineering run goes unrecorded.
    It is filed under the installed protocol's patient, if any, so a clinician sees it apart in
    that patient's report; otherwise under ``ENGINEERING_PATIENT``.
    """

    def __init__(
        self, args: argparse.Namespace, command: str, info: DeviceInfo, target_g: float,
        seconds: float, settings: dict[str, Any],
    ) -> None:  # fmt: skip
        self.args = args
        self.command = command
        self.info = info
        self.target_g = target_g
        self.seconds = seconds
        self.settings = settings
        self.status = "completed"
        self.reason = ""
        self.envelope: list[tuple[float, float]] = []
        self.freqs_hz: list[float] = []
        self.events: list[dict[str, Any]] = []
        self.errors: tuple[float | None, float | None] = (None, None)

    def __enter__(self) -> EngineeringRun:
        import hashlib

        from sessions.log import SessionKind, canonical_json

        home = home_of(self.args)
        patient_id, zone = _engineering_subject(home)
        text = canonical_json({"command": self.command, "engineer": True, **self.settings})
        started = datetime.now(UTC)
        self._log_cm = open_log(self.args, home)
        self.log = self._log_cm.__enter__()
        try:
            self.session_id = self.log.start_session(
                patient_id=patient_id,
                device_id=self.info.device_id,
                firmware_version=self.info.firmware_version,
                protocol_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                protocol_json=text,
                started_utc=started,
                timezone=zone,
                local_date=started.astimezone(ZoneInfo(zone)).date(),
                slot=1,
                minutes_prescribed=max(self.seconds, 0.001) / 60.0,
                target_g=self.target_g,
                kind=SessionKind.ENGINEERING,
            )
        except BaseException:
            self._log_cm.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        from firmware_bridge.errors import DeviceFaultError
        from sessions.log import LogError

        if isinstance(exc, KeyboardInterrupt):
            self.status, self.reason = "stopped_by_patient", "Ctrl-C: stopped by the engineer"
        elif isinstance(exc, DeviceFaultError):
            self.status, self.reason = "tripped", f"the plate stopped itself: {exc}"
        elif exc is not None:
            self.status, self.reason = "tripped", f"the run failed: {exc}"
        try:
            self.log.finish_session(
                self.session_id,
                status=self.status,
                reason=self.reason or f"{self.command} ran to its end",
                ended_utc=datetime.now(UTC),
                minutes_at_dose=0.0,  # an engineering run never delivers a dose
                envelope=self.envelope,
                freqs_hz=self.freqs_hz,
                safety_events=self.events,
                mean_error_pct=self.errors[0],
                p95_abs_error_pct=self.errors[1],
                exposure=None,
            )
        except LogError as failure:
            if exc is None:
                raise
            logging.getLogger(__name__).warning("engineering run not recorded: %s", failure)
        finally:
            self._log_cm.__exit__(None, None, None)


ENGINEERING_PATIENT = "engineering"  # engineering runs of an installation with no protocol


def _engineering_subject(home: Any) -> tuple[str, str]:
    """(patient_id, time zone) an engineering run is filed under (see EngineeringRun)."""
    if home.protocol_path.exists():
        with contextlib.suppress(LivError):
            protocol = home.protocol()
            return str(protocol.patient_id), str(protocol.timezone)
    return ENGINEERING_PATIENT, "UTC"


def calibration_store(args: argparse.Namespace) -> CalibrationStore:
    """The calibrations of the data directory every command uses (or --calibration-dir)."""
    home = home_of(args)
    home.check()
    store = home.calibrations(args.calibration_dir)
    store.check()
    return store


def calibration_lines(cal: Calibration, where: Path) -> list[str]:
    lines = [
        f"calibration of {terminal_line(cal.device_id)} saved to {where}",
        "  freq Hz   g per unit drive",
    ]
    lines += [f"  {f:7.1f}   {g:.4f}" for f, g in zip(cal.freqs_hz, cal.g_per_drive, strict=True)]
    return lines


ENGINEER_PLAIN_EVERY_S = 5.0  # off a terminal: a progress line every 5 s of plate time
ENGINEER_REDRAW_S = 0.2  # on a terminal: the line is redrawn at most this often (plate time)


def clock(seconds: float, up: bool = True) -> str:
    """``m:ss`` of a non-negative time, for a progress line: a time left is rounded up, a time
    elapsed (``up=False``) down, so the two add up to the total."""
    whole = max(0, math.ceil(seconds - 1e-9) if up else math.floor(seconds + 1e-9))
    return f"{whole // 60}:{whole % 60:02d}"


class EngineerProgress:
    """The engineer's progress line on stderr during ``liv calibrate`` and ``liv run``.

    On a terminal one line is redrawn in place, never wider than the terminal minus one column
    (read at every redraw): the parts are dropped from the end until the line fits, and a bar
    is added where at least BAR_MIN columns are left (the width logic of the patient's
    ProgressLine). Off a terminal a plain line is written at the first update, every
    ENGINEER_PLAIN_EVERY_S of plate time and at the last, with no control characters. Stdout
    (and so ``--json``) is never touched; a closed stderr ends the display, never the run.
    """

    def __init__(self, out: TextIO | None = None, columns: Callable[[], int] | None = None) -> None:
        self.out = sys.stderr if out is None else out
        self.tty = self.out.isatty()
        self.columns = terminal_columns if columns is None else columns
        self.closed = False
        self._last_s: float | None = None
        self._shown = 0  # characters of the line now on the terminal

    def due(self, plate_s: float) -> bool:
        """Whether an update at ``plate_s`` would be shown (the caller may skip composing it)."""
        every = ENGINEER_REDRAW_S if self.tty else ENGINEER_PLAIN_EVERY_S
        return self._last_s is None or plate_s - self._last_s >= every

    def show(self, plate_s: float, parts: Sequence[str], fraction: float, last: bool) -> None:
        """One update at ``plate_s`` of plate time; ``parts`` most important first."""
        if not last and not self.due(plate_s):
            return
        self._last_s = plate_s
        parts = [terminal_line(part) for part in parts]
        if not self.tty:
            self._write(", ".join(parts) + "\n")
            return
        room = max(1, self.columns() - 1)
        fits = [", ".join(parts[:n]) for n in range(len(parts), 0, -1)]
        text = next((c for c in fits if len(c) <= room), fits[-1][:room])
        space = room - len(text) - 2
        if space >= BAR_MIN:
            bar = progress_bar(fraction, min(space, BAR_MAX))
            text = f"{text}  {bar}"
        pad = " " * max(0, self._shown - len(text))  # clear what a longer line left
        self._write("\r" + text + pad)
        self._shown = len(text)

    def finish(self) -> None:
        if self.tty and self._shown:
            self._write("\n")
            self._shown = 0

    def _write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError) as exc:
            self.closed = True
            _log.warning("progress display stopped: %s", exc)
