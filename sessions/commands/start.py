"""``liv start``: the session due now, its progress line and its exit status."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from sessions.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from sessions.commands.common import home_of, open_log, pins_of
from sessions.home import LivHome
from sessions.log import (
    SessionKind,
    SessionStatus,
)
from sessions.scheduling import Decision
from sessions.stops import STOP_CTRL_C, STOP_PIPE, STOP_SIGHUP, STOP_SIGTERM
from sessions.text import terminal_text
from sessions.wording import (
    clock_left,
    progress_text,
    say,
    start_sentence,
)

if TYPE_CHECKING:
    from sessions.runner import Progress, SessionOutcome

_log = logging.getLogger(__name__)


def terminal_columns() -> int:
    """The terminal's width now (it can change while the patient stands): $COLUMNS, the
    terminal itself, else 80."""
    return shutil.get_terminal_size((80, 24)).columns


BAR_MIN = 10  # narrower than this, the bar tells nothing: the words alone are shown
BAR_MAX = 40
PLAIN_EVERY_S = 60.0  # off a terminal, a line a minute of dose (and at each change of state)


def progress_bar(fraction: float, width: int, full: str = "#", empty: str = "-") -> str:
    """``[####------]``, ``width`` characters in all, filled to ``fraction`` (0..1)."""
    inner = max(0, width - 2)
    filled = min(inner, max(0, int(fraction * inner + 1e-9)))
    return "[" + full * filled + empty * (inner - filled) + "]"


def progress_display(p: Progress, goal_s: float, width: int, unicode_bar: bool = False) -> str:
    """The patient's progress line, never wider than ``width - 1`` (a terminal wraps a line
    that fills its last column): the words first, then a bar where there is room."""
    room = max(1, width - 1)
    parts = progress_text(p.state, p.remaining_s).split(" - ")
    # Narrower terminals drop the words from the end ('... - getting back to full strength'),
    # then keep only the time left, which matters most while standing.
    candidates = [" - ".join(parts[:n]) for n in range(len(parts), 1, -1)]
    left = say("progress.left", left=clock_left(p.remaining_s))
    candidates += [left, parts[0]] if left in parts else [parts[0]]
    words = next((c for c in candidates if len(c) <= room), candidates[-1][:room])
    space = room - len(words) - 2
    if space < BAR_MIN:
        return words
    fraction = 1.0 if goal_s <= 0 else min(1.0, p.at_dose_s / goal_s)
    full, empty = ("█", "░") if unicode_bar else ("#", "-")
    return f"{words}  {progress_bar(fraction, min(space, BAR_MAX), full, empty)}"


class ProgressLine:
    """One line the patient watches; rewritten in place on a terminal, sparse otherwise.

    On a terminal the line fits its width (read at every update) and carries a bar; off one
    (a pipe, a log, CI) a plain line is written at each change of state and every
    PLAIN_EVERY_S of dose, with no control characters. The words come from sessions/wording.py;
    no numbers of the plate's own are shown.
    A closed output (``liv start | head``: EPIPE; a hung-up terminal: EIO) stops the session
    as Ctrl-C does, once (:class:`StopRequest`); later output goes to /dev/null instead.
    """

    def __init__(
        self,
        out: TextIO,
        target_g: float,
        goal_s: float | None = None,
        columns: Callable[[], int] = terminal_columns,
    ) -> None:
        self.out = out
        self.tty = out.isatty()
        self.target_g = target_g
        self.goal_s = goal_s
        self.columns = columns
        self.closed = False
        self.unicode_bar = "utf" in (getattr(out, "encoding", None) or "").lower()
        self._last_state = ""
        self._last_print = -1e9
        self._shown = 0  # characters of the line now on the terminal

    def __call__(self, p: Progress) -> None:
        goal_s = self.goal_s if self.goal_s is not None else p.at_dose_s + p.remaining_s
        if self.tty:
            text = progress_display(p, goal_s, self.columns(), self.unicode_bar)
            pad = " " * max(0, self._shown - len(text))  # clear what a longer line left
            self.write("\r" + text + pad)
            self._shown = len(text)
        elif p.state != self._last_state or p.at_dose_s - self._last_print >= PLAIN_EVERY_S:
            done = 0 if goal_s <= 0 else min(100, int(100 * p.at_dose_s / goal_s))
            self.write(f"{progress_text(p.state, p.remaining_s)} ({done}% done)\n")
            self._last_print = p.at_dose_s
        self._last_state = p.state

    def say(self, text: str) -> None:
        """A line the patient must read; on stderr when the output is closed."""
        text = terminal_text(text)
        self.write(text + "\n", stop=False)
        if self.closed:
            with contextlib.suppress(OSError):
                print(text, file=sys.stderr)

    def finish(self) -> None:
        if self.tty:
            self.write("\n", stop=False)

    def write(self, text: str, stop: bool = True) -> None:
        if self.closed:
            return
        try:
            self.out.write(text)
            self.out.flush()  # a closed pipe shows now, not at exit
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            self._close_output()
            if stop:
                from sessions.runner import StopRequest

                raise StopRequest(STOP_SIGHUP if exc.errno == errno.EIO else STOP_PIPE) from None

    def _close_output(self) -> None:
        self.closed = True
        _log.warning("the output is closed; the session stops and prints go to /dev/null")
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())  # the interpreter's last flush cannot fail
            os.close(devnull)


def _notice(text: str) -> None:
    """A setup event beside the session (the plate paired with this home at its first
    session): for the log and engineers (-v), not a sentence the patient has to act on; the
    patient reads one sentence, the outcome (docs/wording.md)."""
    _log.info("%s", text)


def start_session(
    args: argparse.Namespace, home: LivHome, device_url: str, out: TextIO
) -> SessionOutcome:
    """Run the session due now and tell the patient its outcome in one sentence."""
    from sessions.runner import run_session

    protocol = home.protocol()
    display = ProgressLine(out, protocol.target_g)

    def begin(decision: Decision) -> None:  # what is starting, then when to step on and how to stop
        what = start_sentence(
            decision.slot,
            protocol.sessions_per_day,
            decision.minutes,
            decision.resumed_from is not None,
            decision.override_reason is not None,
        )
        display.write(f"{what} {say('progress.begin')}\n")

    with open_log(args, home) as log:
        try:
            outcome = run_session(
                protocol=protocol,
                log=log,
                device_url=device_url,
                calibrations=home.calibrations(getattr(args, "calibration_dir", None)),
                override_reason=getattr(args, "override", None),
                on_progress=display,
                on_decision=begin,
                demo=home.is_demo,
                pins=pins_of(home),
                on_notice=_notice,
                on_warning=display.say,
            )
        finally:
            display.finish()
    display.say(outcome.message)
    note = _not_therapy_note(outcome.record.kind, home.is_demo)
    if note is not None:
        display.say(note)
    return outcome


def _not_therapy_note(kind: SessionKind, demo: bool) -> str | None:
    """A sentence after the outcome when the session is not therapy (docs/wording.md)."""
    if demo:
        return say("status.demo")
    if kind is SessionKind.SIMULATED:
        return say("start.simulated")
    return None


# The stops that interrupt a session (docs/cli.md, exit codes): Ctrl-C, SIGTERM, SIGHUP and a
# closed output. Other sessions recorded as stopped by the patient (nobody on the plate, the
# time ran out) are failures, not interruptions.
INTERRUPTING_STOPS = frozenset({STOP_CTRL_C, STOP_SIGTERM, STOP_SIGHUP, STOP_PIPE})


def start_exit_status(status: SessionStatus, reason: str | None) -> int:
    """The exit status of ``liv start`` for a finished record: its reason tells which."""
    if status is SessionStatus.COMPLETED:
        return EXIT_OK
    if status is SessionStatus.STOPPED_BY_PATIENT and reason in INTERRUPTING_STOPS:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


def cmd_start(args: argparse.Namespace) -> int:
    home = home_of(args)
    outcome = start_session(args, home, home.device(args.device), sys.stdout)
    return start_exit_status(outcome.record.status, outcome.record.reason)
