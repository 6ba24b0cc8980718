"""``liv start``: the session due now, its progress line and its exit status."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import functools
import io
import logging
import os
import shutil
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

from sessions.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from sessions.commands.common import home_of, open_log, pins_of
from sessions.home import LivHome
from sessions.log import (
    SessionKind,
    SessionStatus,
)
from sessions.scheduling import Decision
from sessions.stops import STOP_CTRL_C, STOP_PIPE, STOP_SIGHUP, STOP_SIGTERM, STOP_SIGTERM_V1
from sessions.text import terminal_text
from sessions.wording import (
    PROGRESS_WORDING,
    clock_left,
    progress_text,
    say,
    start_sentence,
)

if TYPE_CHECKING:
    from sessions.protocol.model import PatientProtocol
    from sessions.runner import Progress, SessionOutcome, StopRequest

_log = logging.getLogger(__name__)


def terminal_columns() -> int:
    """The terminal's width now (it can change while the patient stands): $COLUMNS, the
    terminal itself, else 80."""
    return shutil.get_terminal_size((80, 24)).columns


BAR_MIN = 10  # narrower than this, the bar tells nothing: the words alone are shown
BAR_MAX = 40
PLAIN_EVERY_S = 60.0  # off a terminal, a line a minute of dose (and at each change of state)
# A new state is shown once it has lasted this long (plate time): stepping off flips the
# controller's state between "at dose" and "below dose" for a moment before "paused", which the
# patient should not see as a flickering line. "stopping" is shown at once.
STEADY_S = 1.0


def progress_bar(fraction: float, width: int, full: str = "#", empty: str = "-") -> str:
    """``[####------]``, ``width`` characters in all, filled to ``fraction`` (0..1)."""
    inner = max(0, width - 2)
    filled = min(inner, max(0, int(fraction * inner + 1e-9)))
    return "[" + full * filled + empty * (inner - filled) + "]"


@functools.lru_cache(maxsize=32)
def bar_layout(width: int, goal_s: float) -> tuple[int, int]:
    """(words column, bar width) of the progress line on a terminal ``width`` wide; (0, 0): no
    bar. Fixed for a session whatever its state says, so the bar never jumps or changes width:
    the words column holds the longest words (all of them where there is room).

    Remembered per (width, goal): the sentences are constants, and on a terminal the line is
    laid out every 0.1 s of plate time (composing every state's words took 8 us a time)."""
    room = max(1, width - 1)
    longest = max(len(progress_text(state, goal_s)) for state in PROGRESS_WORDING)
    shortest = len(say("progress.left", left=clock_left(goal_s)))
    column = min(longest, room - 2 - BAR_MIN)
    if column < shortest:
        return 0, 0
    return column, min(BAR_MAX, room - 2 - column)


def progress_display(p: Progress, goal_s: float, width: int, unicode_bar: bool = False) -> str:
    """The patient's progress line, never wider than ``width - 1`` (a terminal wraps a line
    that fills its last column): the words first, then a bar of fixed width and place
    (:func:`bar_layout`). Words too long for their column are shown in full without the bar
    where the terminal has room for them ('Paused - step back onto the plate')."""
    room = max(1, width - 1)
    parts = progress_text(p.state, p.remaining_s).split(" - ")
    # Narrower terminals drop the words from the end ('... - getting back to full strength'),
    # then keep only the time left, which matters most while standing.
    candidates = [" - ".join(parts[:n]) for n in range(len(parts), 1, -1)]
    left = say("progress.left", left=clock_left(p.remaining_s))
    candidates += [left, parts[0]] if left in parts else [parts[0]]
    column, bar_width = bar_layout(width, goal_s)
    fitting = next((c for c in candidates if len(c) <= column), None)
    if bar_width and fitting is not None and not column < len(candidates[0]) <= room:
        fraction = 1.0 if goal_s <= 0 else min(1.0, p.at_dose_s / goal_s)
        full, empty = ("█", "░") if unicode_bar else ("#", "-")
        return f"{fitting:<{column}}  {progress_bar(fraction, bar_width, full, empty)}"
    return next((c for c in candidates if len(c) <= room), candidates[-1][:room])


class _DisplayWriter:
    """Writes a display's text on a thread of its own while a session runs.

    A terminal whose output is paused (Ctrl-S) or slow (a remote session) blocks whatever writes
    to it; the control loop must never wait for the screen, or the plate's watchdog would end
    the therapy for a paused display. The loop only queues text here. Progress text may be
    dropped while the screen is held up (on a terminal only the newest line matters); the
    sentences the patient must read never are.
    """

    MAX_PENDING = 64

    def __init__(self, line: ProgressLine) -> None:
        self._line = line
        self._items: deque[tuple[str, str]] = deque()  # (kind, text): progress, plain, say
        self._ready = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="liv-display", daemon=True)
        self._thread.start()

    def put(self, kind: str, text: str) -> None:
        with self._ready:
            items = self._items
            if kind == "progress" and self._line.tty and items and items[-1][0] == "progress":
                # a rewrite of the same line: only the newest counts, padded to clear whatever
                # the one it replaces would have cleared
                items[-1] = (kind, text.ljust(len(items[-1][1])))
            else:
                items.append((kind, text))
                if len(items) > self.MAX_PENDING:  # the screen is held up: drop old progress
                    for item in items:
                        if item[0] == "progress":
                            items.remove(item)
                            break
            self._ready.notify()

    def close(self) -> None:
        """Write everything still queued (waits for a paused screen), then end the thread."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        try:
            self._thread.join()
        except KeyboardInterrupt:
            # The session is over and recorded: a Ctrl-C here (a screen still paused) only ends
            # the wait; Ctrl-C also resumes a paused terminal, so the rest is shown shortly.
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._items and not self._closing:
                    self._ready.wait()
                if not self._items:
                    return
                kind, text = self._items.popleft()
            try:
                if kind == "say":
                    self._line.say_now(text)
                else:
                    self._line.emit(text, stop=False)
            except OSError as exc:  # e.g. ENOSPC on a full disk: the screen, not the therapy
                _log.warning("the display cannot be written (%s); the session goes on", exc)
                self._line.closed = True


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
        self._steady: str | None = None  # the state shown
        self._pending: tuple[str, float] | None = None  # a new state, since (plate time)
        self._writer: _DisplayWriter | None = None
        self._broken: int | None = None  # errno of a closed output found by the writer
        self._stop_told = False

    @contextlib.contextmanager
    def unblocked(self) -> Iterator[None]:
        """While inside, text is written by a thread of its own (:class:`_DisplayWriter`):
        a paused or slow terminal never holds up the caller. Everything queued is written on
        the way out. An output without a file descriptor (a test's buffer) stays direct."""
        try:
            self.out.fileno()
        except (OSError, ValueError, io.UnsupportedOperation):
            yield
            return
        writer = self._writer = _DisplayWriter(self)
        try:
            yield
        finally:
            self._writer = None
            writer.close()

    def steady_state(self, p: Progress) -> str:
        """The state to show: a new one once it has lasted STEADY_S of plate time (states with
        the same words count as one), "stopping" and the first at once."""

        def words(state: str) -> str:
            return PROGRESS_WORDING.get(state, state)

        if self._steady is None or p.state == "stopping":
            self._steady, self._pending = p.state, None
        elif words(p.state) == words(self._steady):
            self._pending = None
        elif self._pending is None or words(self._pending[0]) != words(p.state):
            self._pending = (p.state, p.elapsed_s)
        elif p.elapsed_s - self._pending[1] >= STEADY_S - 1e-9:
            self._steady, self._pending = p.state, None
        return self._steady

    def __call__(self, p: Progress) -> None:
        self._stop_if_broken()  # every update (0.1 s of plate time), not only when a line is due
        state = self.steady_state(p)
        if state != p.state:
            p = dataclasses.replace(p, state=state)
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
        if self._writer is not None:
            self._writer.put("say", text)
        else:
            self.say_now(text)

    def say_now(self, text: str) -> None:
        self.emit(text + "\n", stop=False)
        if self.closed:
            with contextlib.suppress(OSError):
                print(text, file=sys.stderr)

    def finish(self) -> None:
        if self.tty:
            self.write("\n", stop=False)

    def write(self, text: str, stop: bool = True) -> None:
        """``text`` to the output; ``stop``: progress, whose closed output stops the session
        (raised here, in the caller, also when the writer thread found it)."""
        writer = self._writer
        if writer is None:
            self.emit(text, stop)
            return
        if stop:
            self._stop_if_broken()
        writer.put("progress" if stop else "plain", text)

    def _stop_if_broken(self) -> None:
        """Raise, once, the stop for an output the writer thread found closed."""
        if self._broken is not None and not self._stop_told:
            self._stop_told = True
            raise _closed_output_stop(self._broken)

    def emit(self, text: str, stop: bool = True) -> None:
        """Write now (this thread waits for the output); a closed output is noted, and with
        ``stop`` stops the session."""
        if self.closed:
            return
        try:
            self.out.write(text)
            self.out.flush()  # a closed pipe shows now, not at exit
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            self._close_output()
            self._broken = exc.errno
            if stop:
                self._stop_told = True
                raise _closed_output_stop(exc.errno) from None

    def _close_output(self) -> None:
        self.closed = True
        _log.warning("the output is closed; the session stops and prints go to /dev/null")
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())  # the interpreter's last flush cannot fail
            os.close(devnull)


def _closed_output_stop(err: int) -> StopRequest:
    """The stop for an output found closed: a hung-up terminal (EIO) or a closed pipe."""
    from sessions.runner import StopRequest

    return StopRequest(STOP_SIGHUP if err == errno.EIO else STOP_PIPE)


def _notice(text: str) -> None:
    """A setup event beside the session (the plate paired with this home at its first
    session): for the log and engineers (-v), not a sentence the patient has to act on; the
    patient reads one sentence, the outcome (docs/wording.md)."""
    _log.info("%s", text)


def start_session(
    args: argparse.Namespace,
    home: LivHome,
    device_url: str,
    out: TextIO,
    protocol: PatientProtocol | None = None,
) -> SessionOutcome:
    """Run the session due now and tell the patient its outcome in one sentence.

    ``protocol``: the installed one when the caller has just read and checked it.
    """
    from sessions.runner import run_session

    if protocol is None:
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
        display.say(f"{what} {say('progress.begin')}")

    with open_log(args, home) as log:
        try:
            with display.unblocked():  # a paused terminal (Ctrl-S) never holds up the plate
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
INTERRUPTING_STOPS = frozenset({STOP_CTRL_C, STOP_SIGTERM, STOP_SIGTERM_V1, STOP_SIGHUP, STOP_PIPE})


def start_exit_status(status: SessionStatus, reason: str | None) -> int:
    """The exit status of ``liv start`` for a finished record: its reason tells which."""
    if status is SessionStatus.COMPLETED:
        return EXIT_OK
    if status is SessionStatus.STOPPED_BY_PATIENT and reason in INTERRUPTING_STOPS:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


def cmd_start(args: argparse.Namespace) -> int:
    home = home_of(args)
    # The prescription is looked at before the plate: a home with nothing set up is told what
    # `liv status` tells it (no prescription yet), not to plug in a plate.
    protocol = home.protocol()
    outcome = start_session(args, home, home.device(args.device), sys.stdout, protocol)
    return start_exit_status(outcome.record.status, outcome.record.reason)
