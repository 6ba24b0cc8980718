"""Patient and clinician commands: protocol, start, status, sessions, show, verify, export, import.

Each handler takes the parsed arguments and returns an exit status; expected failures raise a
LivError whose message is the one sentence the person sees (sessions/cli.py prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from controller.privatefiles import write_private_file
from firmware_bridge.errors import LivError
from sessions.adherence import DEMO_LABEL, counted_kinds, session_kind
from sessions.home import LivHome, SetupError, resolve_home
from sessions.log import (
    PINS_FILE,
    DevicePins,
    Pin,
    PlateState,
    SessionKind,
    SessionLog,
    SessionRecord,
    SessionStatus,
    SessionSummary,
    TrustResult,
    VerifyResult,
)
from sessions.prescription import (
    NOT_SIGNED_SENTENCE,
    SignatureStatus,
    check_signature,
    sign_protocol_bytes,
)
from sessions.protocol import (
    PatientProtocol,
    protocol_from_bytes,
    protocol_from_dict,
    read_protocol_bytes,
)
from sessions.scheduling import Decision, LoggedSession, day_summary, decide, history_start
from sessions.stops import STOP_CTRL_C, STOP_PIPE, STOP_SIGHUP, STOP_SIGTERM
from sessions.text import echo, terminal_line, terminal_text
from sessions.wording import (
    clock_left,
    day_text,
    minutes_text,
    progress_text,
    say,
    start_sentence,
    streak_sentence,
)

# What only some commands need (the plate, the control loop and its numerics, the report
# renderers) is imported inside them, so `liv --help` and `liv status` start in a fraction
# of a second (docs/performance.md); tests/test_log_scale.py checks that they stay out.
if TYPE_CHECKING:
    from controller.calibration import CalibrationStore
    from sessions.runner import Progress, SessionOutcome

EXIT_REFUSED = 1

_counted = counted_kinds
_kind_of = session_kind

_log = logging.getLogger(__name__)


def home_of(args: argparse.Namespace) -> LivHome:
    """The installation a command works on (sessions.home.resolve_home: one rule for all)."""
    return resolve_home(getattr(args, "home", None))


@contextmanager
def _open_log(
    args: argparse.Namespace, home: LivHome | None = None, *, read_only: bool = False
) -> Iterator[SessionLog]:
    """The session log; ``read_only`` (audits) never creates, migrates or writes it."""
    home = home_of(args) if home is None else home
    home.check()
    path = home.db_path(getattr(args, "db", None))
    if not read_only:
        if path.parent == home.root:
            home.ensure()  # created private, like every directory of the installation
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with SessionLog(path, read_only=read_only) as log:
        yield log


# ---- protocol --------------------------------------------------------------------------------


def describe_protocol(p: PatientProtocol) -> list[str]:
    windows = ", ".join(f"{w.start:%H:%M}-{w.end:%H:%M}" for w in p.daily_windows) or "any time"
    return [
        f"patient           {p.patient_id}",
        f"target            {p.target_g:g} g peak at {p.schedule.describe()}",
        f"sessions          {p.sessions_per_day} a day x {p.minutes_per_session:g} minutes at dose "
        f"(+/-{100 * p.dose_tolerance:g}% counts as at dose)",
        f"gap               at least {p.min_gap_hours:g} h between sessions; windows: {windows}",
        f"study             {p.study_start.isoformat()} to {p.study_end.isoformat()} "
        f"({p.timezone})",
        f"sha256            {p.sha256}",
    ]


def study_warning(protocol: PatientProtocol, now: datetime) -> str | None:
    """One sentence when the study has ended or not yet started on the patient's today."""
    today = now.astimezone(protocol.zone).date()
    if today > protocol.study_end:
        return say("install.study_ended", day=day_text(protocol.study_end))
    if today < protocol.study_start:
        return say("install.study_later", day=day_text(protocol.study_start))
    return None


def plain_protocol(p: PatientProtocol) -> str:
    """The prescription in a patient's words (the technical lines are for ``-v`` and check)."""
    per_day = (
        "1 session a day" if p.sessions_per_day == 1 else f"{p.sessions_per_day} sessions a day"
    )
    return say(
        "install.summary",
        per_day=per_day,
        minutes=minutes_text(p.minutes_per_session),
        first=day_text(p.study_start),
        last=day_text(p.study_end),
    )


def _warn_about_study(protocol: PatientProtocol) -> None:
    warning = study_warning(protocol, datetime.now(UTC))
    if warning is not None:
        echo(f"liv: warning: {warning}", file=sys.stderr)


def cmd_protocol_check(args: argparse.Namespace) -> int:
    """Validate a protocol file and say whether (and by whom) it is signed.

    An unsigned file is a valid template (exit 0); a signature that does not match the text
    fails (exit 1), as it would at install.
    """
    data = read_protocol_bytes(args.file)
    protocol = protocol_from_bytes(data, args.file)
    home = home_of(args)
    signature = check_signature(data, home.clinic_key())
    if getattr(args, "json", False):
        from sessions.jsonshapes import protocol_check_shape

        warning = study_warning(protocol, datetime.now(UTC))
        shape = protocol_check_shape(args.file, protocol, warning)
        shape["signature"] = signature.status.value
        shape["signer"] = signature.signer_fingerprint
        shape["signature_text"] = signature.describe()
        _print_json(shape)
        return EXIT_REFUSED if signature.status is SignatureStatus.ALTERED else 0
    echo(f"{args.file}: valid")
    echo("\n".join(describe_protocol(protocol)))
    echo(f"signature         {signature.describe()}")
    _warn_about_study(protocol)
    if signature.status is SignatureStatus.ALTERED:
        echo(f"liv: {args.file}: {NOT_SIGNED_SENTENCE}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def cmd_protocol_install(args: argparse.Namespace) -> int:
    home = home_of(args)
    protocol = home.install_protocol(Path(args.file))
    echo(say("install.done"))
    echo(plain_protocol(protocol))
    if getattr(args, "verbose", False):  # the engineer's view: what was installed, where
        echo(f"installed {args.file} as the active protocol in {home.root}")
        echo("\n".join(describe_protocol(protocol)))
        echo(f"signature         {home.protocol_signature().describe()}")
    _warn_about_study(protocol)
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    home = home_of(args)
    done = home.enrol(Path(args.key_file), replace=args.replace)
    if not done.changed:
        echo(f"this home is already enrolled with clinic key {done.fingerprint}")
    elif done.replaced is None:
        echo(f"this home is enrolled with clinic key {done.fingerprint}")
    else:
        echo(
            f"this home is now enrolled with clinic key {done.fingerprint} instead of "
            f"{done.replaced} (recorded in {home.enrolment_history_path}); install a "
            "prescription signed by the new clinic"
        )
    return 0


def pins_of(home: LivHome) -> DevicePins:
    """The plates' keys this home trusts (sessions/log/vouch.py)."""
    return DevicePins(home.root / PINS_FILE)


def _first_held_counter(args: argparse.Namespace, home: LivHome, key: bytes) -> int | None:
    """The lowest counter of this plate key in the home's log (None without log or key)."""
    if not home.db_path(getattr(args, "db", None)).exists():
        return None
    with _open_log(args, home, read_only=True) as log:
        return log.first_voucher_counter(key)


def cmd_device_set(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.check()  # before talking to the plate: a home that cannot be used is refused first
    from firmware_bridge.client import DeviceClient
    from sessions.runner import PlateKeyChangedError

    pins = pins_of(home)
    with DeviceClient.open(args.url) as device:  # only a plate that answers is configured
        info = device.info
        identity = device.identity() if device.can_countersign else None
    pinned = pins.get(info.device_id)
    re_pair = getattr(args, "re_pair", False)
    if (
        identity is not None
        and pinned is not None
        and not re_pair
        and pinned.device_key != identity.public_key.hex()
    ):
        raise PlateKeyChangedError(info.device_id, pinned.key_id, identity.public_key)
    home.set_device(args.url)
    echo(
        f"plate {terminal_line(info.device_id)} (firmware "
        f"{terminal_line(info.firmware_version)}) at {terminal_line(args.url)} configured"
    )
    if identity is None:
        echo("this plate cannot vouch for sessions (no device signatures): records stay unvouched")
    elif pinned is None or re_pair:
        held = _first_held_counter(args, home, identity.public_key)
        pin = pins.pin(
            info.device_id, identity.public_key, held if held is not None else identity.counter + 1
        )
        echo(
            f"{'re-paired' if pinned is not None else 'paired'} with plate "
            f"{terminal_line(info.device_id)} (key {pin.key_id}): only this "
            "plate can vouch for this home's sessions"
        )
    return 0


def port_url(port: Any) -> str:
    """The --device URL that finds this port by its USB identity, which survives a reboot:
    its serial number when it has one, else VID:PID; a port with no USB identity by its path."""
    if port.serial_number:
        return f"hwgrep://SER={re.escape(port.serial_number)}"
    if port.vid is not None and port.pid is not None:
        return f"hwgrep://{port.vid:04X}:{port.pid:04X}"
    return str(port.device)


def cmd_device_list(args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    ports = sorted(list_ports.comports(), key=lambda p: p.device)
    rows = [
        {
            "device": p.device,
            "description": p.description,
            "vid_pid": None if p.vid is None else f"{p.vid:04X}:{p.pid or 0:04X}",
            "serial_number": p.serial_number,
            "manufacturer": p.manufacturer,
            "url": port_url(p),
        }
        for p in ports
    ]
    if args.json:
        from sessions.jsonshapes import port_shape

        _print_json([port_shape(r) for r in rows])
        return 0
    if not rows:
        echo("No serial ports found: is the plate plugged in and switched on?")
        return 0
    header = ("port", "VID:PID", "serial number", "description", "use as --device")
    table = [
        tuple(
            terminal_line(v or "-")
            for v in (r["device"], r["vid_pid"], r["serial_number"], r["description"], r["url"])
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


# ---- sessions --------------------------------------------------------------------------------


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

    with _open_log(args, home) as log:
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
EXIT_OK, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 130


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


def status_lines(
    protocol: PatientProtocol,
    sessions: Sequence[LoggedSession],
    now: datetime,
    minutes: Mapping[tuple[date, int], float] | None = None,
    *,
    demo: bool = False,
) -> list[str]:
    """Today, the next session and the streak.

    ``sessions`` needs to hold only the sessions since :func:`history_start` (all ``decide``
    reads); ``minutes`` the minutes at dose per (day, slot) the streak counts back through
    (``SessionStore.slot_minutes`` of the kinds that count; by default summed from
    ``sessions``). Only therapy counts (and, in a demo home, ``demo``, simulated sessions):
    today's other sessions are named on a line of their own.
    """
    counted = _counted(demo)
    recent = [s for s in sessions if _kind_of(s) in counted]
    if minutes is None:
        minutes = _minutes_by_slot(recent)
    zone = protocol.zone
    today = now.astimezone(zone).date()
    done = day_summary(protocol, recent, today)
    goal = protocol.minutes_per_session
    lines = [say("status.demo")] if demo else []
    lines.append(
        say("status.today", day=f"{today:%A} {today.day} {today:%B %Y}", zone=protocol.timezone)
    )
    # Outside the study no slot is due; the next line says when it starts or that it ended.
    in_study = protocol.study_start <= today <= protocol.study_end
    for k, delivered in enumerate(done if in_study else [], start=1):
        if delivered >= goal - 1e-6:
            lines.append("  " + say("status.slot_done", slot=k))
        elif delivered > 0:
            counted_text, of = minutes_text(delivered), minutes_text(goal)
            lines.append("  " + say("status.slot_part", slot=k, counted=counted_text, goal=of))
        else:
            lines.append("  " + say("status.slot_due", slot=k))
    if any(s.local_date == today and _kind_of(s) not in counted for s in sessions):
        lines.append("  " + say("status.not_counted"))
    decision = decide(protocol, recent, now)
    if decision.allowed:
        lines.append(say("status.next_now", slot=decision.slot))
    else:
        lines.append(say("status.next", message=decision.message))
    lines.append(streak_sentence(streak(protocol, minutes, today)))
    return lines


def streak(
    protocol: PatientProtocol, minutes: Mapping[tuple[date, int], float], today: date
) -> int:
    """Consecutive complete days ending today (or yesterday, if today is still open).

    ``minutes`` maps (local day, slot) to the minutes at dose logged in it
    (``SessionStore.slot_minutes``): one lookup per day, however long the log.
    """
    goal = protocol.minutes_per_session
    slots = range(1, protocol.sessions_per_day + 1)

    def complete(day: date) -> bool:
        return all(minutes.get((day, k), 0.0) >= goal - 1e-6 for k in slots)

    day = today if complete(today) else today - timedelta(days=1)
    count = 0
    while day >= protocol.study_start and complete(day):
        count += 1
        day -= timedelta(days=1)
    return count


def _minutes_by_slot(sessions: Sequence[LoggedSession]) -> dict[tuple[date, int], float]:
    totals: dict[tuple[date, int], float] = {}
    for s in sessions:
        key = (s.local_date, s.slot)
        totals[key] = totals.get(key, 0.0) + s.minutes_at_dose
    return totals


def _status_of_log(
    log: SessionLog, protocol: PatientProtocol, now: datetime, demo: bool = False
) -> tuple[list[SessionSummary], dict[tuple[date, int], float]]:
    """What ``status`` reads: recent summaries (every kind) and the per-slot minutes of the
    kinds that count, never an envelope."""
    recent = log.summaries(protocol.patient_id, since=history_start(protocol, now))
    return recent, log.slot_minutes(protocol.patient_id, kinds=_counted(demo))


def status_shape(
    protocol: PatientProtocol,
    sessions: Sequence[LoggedSession],
    now: datetime,
    minutes: Mapping[tuple[date, int], float],
    *,
    demo: bool = False,
) -> dict[str, Any]:
    """``liv status --json`` (liv.status/1): the figures ``status_lines`` says in words.

    Only the kinds that count are in the figures (therapy; in a demo home, simulated too)."""
    counted = _counted(demo)
    sessions = [s for s in sessions if _kind_of(s) in counted]
    today = now.astimezone(protocol.zone).date()
    in_study = protocol.study_start <= today <= protocol.study_end
    goal = protocol.minutes_per_session
    slots = []
    for k, delivered in enumerate(day_summary(protocol, sessions, today) if in_study else [], 1):
        state = "done" if delivered >= goal - 1e-6 else "partial" if delivered else "due"
        slots.append({"slot": k, "state": state, "minutes_at_dose": round(delivered, 1) + 0.0})
    decision = decide(protocol, sessions, now)
    at = decision.next_allowed_utc
    return {
        "schema": "liv.status/1",
        "today": today.isoformat(),
        "timezone": protocol.timezone,
        "in_study": in_study,
        "slots": slots,
        "next_allowed": decision.allowed,
        "next_message": decision.message,
        "next_allowed_local": None
        if at is None
        else at.astimezone(protocol.zone).isoformat(timespec="minutes"),
        "streak_days": streak(protocol, minutes, today),
        "demo": demo,
    }


def cmd_status(args: argparse.Namespace) -> int:
    home = home_of(args)
    protocol = home.protocol()
    now = datetime.now(UTC)
    with _open_log(args, home) as log:
        recent, minutes = _status_of_log(log, protocol, now, home.is_demo)
    if getattr(args, "json", False):
        _print_json(status_shape(protocol, recent, now, minutes, demo=home.is_demo))
        return 0
    echo("\n".join(status_lines(protocol, recent, now, minutes, demo=home.is_demo)))
    # the patient reads that the prescription is the clinic's; the key's detail is for -v
    echo(say("status.prescription_ok"))
    if getattr(args, "verbose", False):
        echo(f"liv: prescription {home.protocol_signature().describe()}", file=sys.stderr)
    return 0


def _print_json(data: object) -> None:
    """JSON for programs on standard output (JSON escapes every control character)."""
    print(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))


def _parse_date(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


def _period(args: argparse.Namespace) -> tuple[date | None, date | None]:
    """``--since`` and ``--until`` as dates; a period that ends before it starts is refused."""
    since, until = _parse_date(args.since), _parse_date(args.until)
    if since is not None and until is not None and since > until:
        from sessions.cli import UsageError

        raise UsageError(
            f"--since {since.isoformat()} is after --until {until.isoformat()}: give a "
            "--since on or before the --until day"
        )
    return since, until


def resolve_session_id(log: SessionLog, text: str) -> str:
    """The session a full id or a unique prefix of one names ('liv show 3f2a')."""
    wanted = text.strip().lower()
    if not wanted:
        raise LivError("give a session id (or its first characters): see 'liv sessions'")
    found = sorted({r.session_id for r in log.summaries() if r.session_id.startswith(wanted)})
    if wanted in found:
        return wanted
    if len(found) == 1:
        return found[0]
    if not found:
        raise LivError(f"no session id starts with '{text}': see 'liv sessions' for the ids")
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
    raise LivError(
        f"'{text}' is the start of {len(found)} session ids ({shown}): give more characters"
    )


def cmd_sessions(args: argparse.Namespace) -> int:
    from sessions.jsonshapes import start_time, status_word

    since, until = _period(args)
    home = home_of(args)
    with _open_log(args, home, read_only=True) as log:
        records = log.summaries(patient_id=args.patient, since=since, until=until)
    demo = home.is_demo
    if args.json:
        _print_json([_summary(r, demo) for r in records])
        return 0
    if demo:
        echo(DEMO_LABEL.upper())
    echo(f"{'session':<36} {'patient':<12} {'local day':<10} {'start':<5} {'slot':>4} "
         f"{'status':<15} {'at dose':>8}  kind")  # fmt: skip
    for r in records:
        session_id, patient_id = terminal_line(r.session_id), terminal_line(r.patient_id)
        echo(f"{session_id:<36} {patient_id:<12} {r.local_date.isoformat():<10} "
             f"{start_time(r):<5} {r.slot:>4} {status_word(r.status.value):<15} "
             f"{r.minutes_at_dose:>7.1f}m  {_kind_text(r.kind)}")  # fmt: skip
    return 0


def _kind_text(kind: SessionKind) -> str:
    """How a list names a record's kind: anything but therapy says it does not count."""
    if kind is SessionKind.THERAPY:
        return kind.value
    return f"{kind.value} (not therapy)"


def _summary(r: SessionSummary, demo: bool = False) -> dict[str, Any]:
    """A session as JSON (liv.session/1, sessions/jsonshapes.py)."""
    from sessions.jsonshapes import session_shape

    return session_shape(r, counts=r.kind in _counted(demo), label=DEMO_LABEL if demo else None)


def sparkline(envelope: tuple[tuple[float, float], ...], target_g: float, width: int = 60) -> str:
    """The session's amplitude as one line of block characters (full height = target x 1.2)."""
    if not envelope:
        return "(no amplitude recorded)"
    bars = " ▁▂▃▄▅▆▇█"
    values = [a for _, a in envelope]
    step = max(1, len(values) // width)
    picked = [max(values[i : i + step]) for i in range(0, len(values), step)]
    top = 1.2 * target_g
    return "".join(bars[min(8, max(0, round(8 * v / top)))] for v in picked)


def show_lines(record: SessionRecord) -> list[str]:
    """One session in plain words and values rounded to their meaning (``liv show``)."""
    from sessions.jsonshapes import start_time, status_word

    def text(value: object) -> str:
        return terminal_line(str(value)) if value not in (None, "") else "-"

    ended = record.ended_local
    errors = (
        "not measured (the session ended before the amplitude settled)"
        if record.p95_abs_error_pct is None
        else f"95% of 1-s windows within {record.p95_abs_error_pct:.1f}% of the target"
        + (
            f" (+/- {record.error_uncertainty_pct:.1f}%, one window's standard uncertainty)"
            if record.error_uncertainty_pct is not None
            else ""
        )
        + (f", mean {record.mean_error_pct:+.1f}%" if record.mean_error_pct is not None else "")
    )
    events = [
        f"{text(e.get('reason', 'event'))}"
        + (f" at {float(e['t_s']):.1f} s" if isinstance(e.get("t_s"), int | float) else "")
        + (f": {text(e['detail'])}" if e.get("detail") not in (None, "") else "")
        for e in record.safety_events
    ]
    names = {"a_w_m_s2": ("a_w", "m/s^2"), "a8_m_s2": ("A(8)", "m/s^2"),
             "vdv_m_s1_75": ("VDV", "m/s^1.75"), "duration_s": ("over", "s")}  # fmt: skip
    exposure_text = (
        ", ".join(
            f"{names.get(k, (k, ''))[0]} {v:.2f} {names.get(k, (k, ''))[1]}".rstrip()
            for k, v in sorted(record.exposure.items())
        )
        if record.exposure
        else "not recorded"
    )
    rows = [
        ("session", text(record.session_id)),
        ("patient", text(record.patient_id)),
        ("plate", f"{text(record.device_id)} (firmware {text(record.firmware_version)})"),
        ("day", f"{record.local_date.isoformat()}, session {record.slot} of the day"),
        (
            "time",
            f"{start_time(record)} to {ended:%H:%M} ({text(record.timezone)})"
            if ended is not None
            else f"{start_time(record)}, still running ({text(record.timezone)})",
        ),
        ("outcome", status_word(record.status.value).replace("_", " ")),
        ("kind", _kind_text(record.kind)),
        ("why", text(record.reason)),
        (
            "at dose",
            f"{record.minutes_at_dose:.1f} of {record.minutes_prescribed:.1f} minutes",
        ),
        ("target", f"{record.target_g:.2f} g peak"),
        ("accuracy", errors),
        ("safety events", "; ".join(events) if events else "none"),
        ("exposure", exposure_text),
        ("override", text(record.override_reason) if record.override else "no"),
        ("resumes", text(record.resumed_from)),
        ("amplitude", sparkline(record.envelope, record.target_g)),
    ]
    return [f"{key:<14} {value}" for key, value in rows]


def cmd_show(args: argparse.Namespace) -> int:
    from sessions.report import render_session_svg

    home = home_of(args)
    with _open_log(args, home, read_only=True) as log:
        record = log.get(resolve_session_id(log, args.session_id))
    if args.svg:
        Path(args.svg).write_text(render_session_svg(record, standalone=True), encoding="utf-8")
        echo(f"amplitude chart written to {args.svg}", file=sys.stderr if args.json else None)
    if args.json:
        from sessions.jsonshapes import session_detail_shape

        _print_json(session_detail_shape(record, record.envelope, record.exposure))
        return 0
    if home.is_demo:
        echo(DEMO_LABEL.upper())
    echo("\n".join(show_lines(record)))
    return 0


def _plate_state(args: argparse.Namespace, home: LivHome) -> tuple[PlateState | None, str]:
    """The connected plate's IDENTITY for verify, or None and why not (one phrase)."""
    url = getattr(args, "device", None)
    if not url and not getattr(args, "no_device", False):
        with contextlib.suppress(SetupError, OSError):
            url = home.device()
    if not url:
        return None, "no plate given"
    from firmware_bridge.client import DeviceClient
    from firmware_bridge.errors import BridgeError

    try:
        with DeviceClient.open(url) as device:
            if not device.can_countersign:
                return None, "the plate does not countersign records"
            identity = device.identity()
    except BridgeError as exc:
        if getattr(args, "device", None):
            raise
        _log.info("verify without the plate: %s", exc)
        return None, "the plate is not connected"
    plate = PlateState(
        identity.device_id, identity.public_key.hex(), identity.counter, identity.head.hex()
    )
    return plate, ""


def cmd_verify(args: argparse.Namespace) -> int:
    """Check the hash chains, what the plate vouches for and, connected, the plate's counter."""
    home = home_of(args)
    plate, no_plate = _plate_state(args, home)
    with _open_log(args, home, read_only=True) as log:
        result, trust = log_integrity(log, home, plate)
    if getattr(args, "json", False):
        from sessions.jsonshapes import verification_shape

        _print_json(verification_shape(result, trust, plate is not None))
        return 0 if result.ok and trust is not None and trust.ok else 1
    if home.is_demo:
        echo(DEMO_LABEL.upper())
    if not result.ok:
        bad = result.first_bad
        assert bad is not None
        echo(
            f"LOG CHANGED: record {bad.chain_index} ({terminal_line(bad.session_id)}) of chain "
            f"{terminal_line(bad.chain)}: {terminal_line(bad.what)}",
            file=sys.stderr,
        )
        return 1
    assert trust is not None
    if not trust.ok:
        more = trust.problem_count - 1
        also = f" ({more} more problem{'s' if more != 1 else ''}, see -v)" if more else ""
        for problem in trust.problems:
            _log.warning("verify: %s", problem)
        echo(
            f"LOG NOT VOUCHED FOR BY THE PLATE: {terminal_line(trust.problems[0])}{also}.",
            file=sys.stderr,
        )
        return 1
    parts = [f"log verified: {result.records_checked} finished records, every chain intact"]
    if trust.vouched:
        parts.append(f"{trust.vouched} vouched for by the plate")
    if trust.legacy:
        parts.append(f"{trust.legacy} recorded before device signatures (not vouched for)")
    if plate is not None:
        parts.append(f"the plate's counter {plate.counter} matches the log")
    elif trust.vouched:
        parts.append(
            f"{no_plate}: records deleted from the end can only be detected with the plate "
            "connected (liv verify --device URL)"
        )
    echo("; ".join(parts))
    return 0


# `liv export --format`: what each writes and the file name it takes in an --out directory.
EXPORT_FORMATS = {
    "jsonl": "liv-log.jsonl",
    "csv": "liv-sessions.csv",
    "csv-records": "liv-records.csv",
    "csv-envelopes": "liv-envelopes.csv",
    "fhir": "liv-fhir.json",
}


def log_integrity(
    log: SessionLog, home: LivHome, plate: PlateState | None = None
) -> tuple[VerifyResult, TrustResult | None]:
    """The log's hash chains and, when they hold, what the plate vouches for (with ``plate``,
    against its counter and head too): what verify, every report and every export state."""
    pins = pins_of(home).all()
    result = log.verify()
    trust = log.verify_vouchers(pins, plate) if result.ok else None
    if trust is not None and trust.vouched and not pins:
        trust.add("no plate is paired with this home, so nobody vouches for whose key signed")
    return result, trust


def _integrity_ok(result: VerifyResult, trust: TrustResult | None) -> bool:
    return result.ok and (trust is None or trust.ok)


def _integrity_text(result: VerifyResult, trust: TrustResult | None = None) -> str:
    """The log's verification status in one CSV cell."""
    if result.ok and trust is not None and not trust.ok:
        first = trust.problems[0] if trust.problems else "a countersignature does not hold"
        return f"NOT VOUCHED FOR by the plate: {first}"
    if result.ok:
        return f"verified ({result.records_checked} records, every chain intact)"
    bad = result.first_bad
    assert bad is not None
    return (
        f"FAILED verification: record {bad.chain_index} ({bad.session_id}) of chain "
        f"{bad.chain}: {bad.what}"
    )


def cmd_export(args: argparse.Namespace) -> int:
    from sessions.jsonshapes import export_shape, verification_shape

    out: Path | None = None
    if args.out:
        out = Path(args.out).expanduser()
        if out.is_dir():  # a folder: the export gets its usual name inside it
            out = out / EXPORT_FORMATS[args.format]
    if args.json and out is None:
        from sessions.cli import UsageError

        raise UsageError(
            "--json needs --out FILE_OR_DIR: without it the export itself is the output"
        )
    if args.format == "fhir":
        return _export_fhir(args, out)
    home = home_of(args)
    with _open_log(args, home, read_only=True) as log:
        # streams, as the export does; its status goes with the data
        integrity, trust = log_integrity(log, home)
        target: TextIO | Path = sys.stdout if out is None else out
        if args.format == "jsonl":
            status = verification_shape(integrity, trust)
            header = {"schema": "liv.export_header/1", "integrity": status}
            count = log.export_jsonl(target, header=header)
        elif args.format == "csv":
            count = log.export_sessions_csv(target, _integrity_text(integrity, trust))
        elif args.format == "csv-records":
            count = log.export_csv(target, _integrity_text(integrity, trust))
        else:
            count = log.export_envelopes_csv(target)
    if args.json:
        _print_json(export_shape(args.format, count, str(out), integrity, trust))
    else:
        where = "" if out is None else f" to {out}"
        label = f" ({DEMO_LABEL})" if home.is_demo else ""
        echo(f"exported {count} records{where}{label}", file=sys.stderr)
    if not _integrity_ok(integrity, trust):
        echo(
            "liv: warning: this log FAILED verification ('liv verify' says where); the export "
            "says so too",
            file=sys.stderr,
        )
    return 0


def _export_fhir(args: argparse.Namespace, out: Path | None) -> int:
    """One patient's finished sessions as a FHIR R4 Bundle (docs/fhir.md)."""
    from sessions.clinic.fhir import FhirSession, patient_bundle

    with _open_log(args, read_only=True) as log:
        records = [r for r in log.summaries() if r.finished]
    patients = sorted({r.patient_id for r in records})
    patient = args.patient
    if patient is None:
        if len(patients) != 1:
            listed = ", ".join(patients) or "none"
            raise ReportError(f"say which patient with --patient (in this log: {listed})")
        patient = patients[0]
    elif patient not in patients:
        raise ReportError(f"this log holds no finished sessions of patient {patient!r}")
    kinds = [FhirSession(r, str(getattr(r, "kind", "therapy"))) for r in records]
    bundle = patient_bundle(patient, kinds, datetime.now(UTC))
    text = json.dumps(bundle, indent=1, ensure_ascii=False) + "\n"
    if out is not None:  # health data: readable by its owner only, like the JSONL export
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
    else:
        sys.stdout.write(text)
    count = sum(r.patient_id == patient for r in records)
    echo(f"exported {count} sessions of {patient} as FHIR", file=sys.stderr)
    return 0


def _enrolled_plates(args: argparse.Namespace, home: LivHome) -> tuple[dict[str, Pin], list[Pin]]:
    """The plates whose records import accepts: the home's pins, plus ``--device-key``
    keys for the plates whose records in the file they sign (enrolled on success)."""
    pins = pins_of(home).all()
    keys = [str(k).lower() for k in (getattr(args, "device_key", None) or [])]
    new: list[Pin] = []
    if not keys:
        return pins, new
    from sessions.log import Voucher

    firsts: dict[tuple[str, str], int] = {}
    with open(args.file, encoding="utf-8-sig") as stream:
        for line in stream:
            with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
                obj = json.loads(line)
                voucher = Voucher.from_json(obj.get("device_voucher"))
                if voucher.device_key in keys:
                    place = (str(obj["device_id"]), voucher.device_key)
                    firsts[place] = min(firsts.get(place, voucher.counter), voucher.counter)
    for (device_id, key), first in sorted(firsts.items()):
        pinned = pins.get(device_id)
        if pinned is not None and pinned.device_key != key:
            raise SetupError(
                f"plate {device_id} is already enrolled here with key {pinned.key_id}; nothing "
                "was imported (a replaced plate is paired with 'liv device set URL --re-pair')"
            )
        if pinned is None:
            pin = Pin(device_id, key, first)
            pins[device_id] = pin
            new.append(pin)
    return pins, new


def cmd_import(args: argparse.Namespace) -> int:
    home = home_of(args)
    plates, new = _enrolled_plates(args, home)
    with _open_log(args, home) as log:
        result = log.import_jsonl(Path(args.file), plates=plates)
    store = pins_of(home)
    for pin in new:
        store.pin(pin.device_id, bytes.fromhex(pin.device_key), pin.first_counter)
        echo(f"enrolled plate {terminal_line(pin.device_id)} (key {pin.key_id})")
    echo(
        f"imported {result.added} records ({result.skipped_duplicates} already present), "
        f"every one vouched for by its plate"
    )
    return 0


# ---- clinician report ----------------------------------------------------------------------


class ReportError(LivError):
    pass


def _report_subject(
    args: argparse.Namespace, home: LivHome, records: list[SessionSummary]
) -> tuple[str, PatientProtocol, datetime | None]:
    """The patient to report on, the protocol in force now and when it was installed.

    The protocol in force now is the installed one when it is this patient's (installed when
    its file was written); otherwise the one their latest session ran under (no install time).
    The protocols of earlier sessions come from the sessions themselves (compute_adherence).
    """
    # engineering runs of an installation without a protocol are logged under no patient
    patients = sorted({r.patient_id for r in records if r.kind is not SessionKind.ENGINEERING})
    patient = args.patient
    if patient is None:
        if len(patients) == 1:
            patient = patients[0]
        elif home.protocol_path.exists():
            patient = home.protocol().patient_id
        else:
            listed = ", ".join(patients) or "none"
            raise ReportError(f"say which patient with --patient (in this log: {listed})")
    if home.protocol_path.exists():
        installed = home.protocol()
        if installed.patient_id == patient:
            written = home.protocol_path.stat().st_mtime
            return patient, installed, datetime.fromtimestamp(written, UTC)
    mine = [r for r in records if r.patient_id == patient]
    counted = [r for r in mine if r.kind in _counted(home.is_demo)]
    theirs = counted or [r for r in mine if r.kind is not SessionKind.ENGINEERING]
    if theirs:
        latest = max(theirs, key=lambda r: (r.started_utc, r.session_id))
        return patient, protocol_from_dict(json.loads(latest.protocol_json)), None
    raise ReportError(f"no sessions and no protocol for patient {patient!r} in this log")


def report_text(args: argparse.Namespace, home: LivHome, log: SessionLog, fmt: str) -> str:
    """The report in ``fmt`` (table, csv, json, html) for the patient ``args`` name."""
    return report_output(args, home, log, fmt)[0]


def report_output(
    args: argparse.Namespace, home: LivHome, log: SessionLog, fmt: str
) -> tuple[str, bool]:
    """The report in ``fmt``, and whether the log's integrity it states failed."""
    from sessions.adherence import compute_adherence
    from sessions.jsonshapes import report_shape
    from sessions.report import ReportContext, render_csv, render_html, render_table

    since, until = _period(args)
    records = log.summaries()
    patient, protocol, installed_utc = _report_subject(args, home, records)
    theirs = [r for r in records if r.patient_id == patient]
    try:
        report = compute_adherence(
            protocol,
            theirs,
            since=since,
            until=until,
            installed_utc=installed_utc,
            demo=home.is_demo,
        )
    except ValueError as exc:  # a period the report cannot cover: the message says why
        raise ReportError(str(exc)) from None
    integrity, trust = log_integrity(log, home)
    context = ReportContext.of(report, protocol, theirs, integrity, trust)
    if fmt == "html":
        text = render_html(report, protocol, theirs, lambda s: log.get(s.session_id), context)
    elif fmt == "json":
        data = report_shape(
            report, context.integrity, context.last_session, context.target, context.trust
        )
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    else:
        text = {"table": render_table, "csv": render_csv}[fmt](report, context)
    return text, context.integrity_failed


def cmd_report(args: argparse.Namespace) -> int:
    home = home_of(args)
    fmt = "json" if getattr(args, "json", False) else args.format
    with _open_log(args, home, read_only=True) as log:
        text, failed = report_output(args, home, log, fmt)
    if failed:
        echo(
            "liv: warning: this log FAILED verification ('liv verify' says where); the report "
            "says so at the top",
            file=sys.stderr,
        )
    if args.out:
        out = Path(args.out)
        out.write_text(text, encoding="utf-8")
        echo(f"report written to {out}")
    else:
        echo(text, end="" if text.endswith("\n") else "\n")
    return 0


# ---- demo ------------------------------------------------------------------------------------


DEMO_DEVICE = "SIM-DEMO"
# Sessions of one minute, so that two weeks of history run in seconds on the simulated plate; a
# real prescription is about ten (docs/cli.md).
DEMO_MINUTES = 1.0
DEMO_MARKER = "This directory holds a demo: simulated sessions of a made-up patient, not therapy.\n"


def demo_protocol(
    today: date, zone: str, minutes_per_session: float = DEMO_MINUTES
) -> PatientProtocol:
    """The made-up patient's prescription, its study starting on ``today``."""
    return protocol_from_dict(
        {
            "patient_id": "DEMO-001",
            "target_g": 0.3,
            "frequency_hz": 30.0,
            "minutes_per_session": minutes_per_session,
            "sessions_per_day": 2,
            "min_gap_hours": 3.0,
            "daily_windows": [],
            "study_start": today.isoformat(),
            "study_end": (today + timedelta(days=358)).isoformat(),
            "timezone": zone,
            "dose_tolerance": 0.1,
        }
    )


def _demo_root(args: argparse.Namespace) -> Path:
    """A directory of the demo's own: a new temporary one, or ``--home`` if new or empty."""
    if not args.home:
        return Path(tempfile.mkdtemp(prefix="liv-demo-"))
    root = Path(args.home).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SetupError(
            f"{root} is not empty: the demo writes only into a new or empty directory so that "
            "it never touches real data; give another --home or leave it out"
        )
    return root


@dataclass(frozen=True)
class DemoSession:
    """One session of the demo's history: when it starts, and what happens to it."""

    day: int  # days before today
    slot_time: time  # local start time
    plate: str = ""  # extra sim:// settings (a fault to inject)
    stop_after_s: float | None = None  # the patient presses Ctrl-C after this much dose


# Two weeks before today: every day two sessions, except a missed day (9 days ago), a day with
# only the morning session (5 days ago), a morning cut short by the patient and resumed (11
# days ago) and an evening the plate stopped itself for safety, resumed (3 days ago).
DEMO_DAYS = 14
DEMO_MISSED_DAY = 9
DEMO_MORNING_ONLY_DAY = 5


def demo_history(days: int = DEMO_DAYS) -> list[DemoSession]:
    plan: list[DemoSession] = []
    for day in range(days, 0, -1):
        if day == DEMO_MISSED_DAY:
            continue
        if day == 11:
            plan.append(DemoSession(day, time(7, 40), stop_after_s=25.0))
            plan.append(DemoSession(day, time(8, 10)))
        else:
            plan.append(DemoSession(day, time(7, 45) if day % 2 else time(8, 20)))
        if day == DEMO_MORNING_ONLY_DAY:
            continue
        if day == 3:
            plan.append(DemoSession(day, time(18, 30), plate="&sensor_stuck_at=16"))
            plan.append(DemoSession(day, time(19, 5)))
        else:
            plan.append(DemoSession(day, time(18, 15) if day % 3 else time(20, 0)))
    return plan


class _DemoClock:
    """The simulated clock of a history session: its start, advanced by the plate's own time."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.elapsed_s = 0.0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed_s)


def run_demo_history(
    log: SessionLog,
    protocol: PatientProtocol,
    calibrations: CalibrationStore,
    today: date,
    plan: Sequence[DemoSession],
    pins: DevicePins | None = None,
) -> list[SessionOutcome]:
    """Run ``plan`` on the simulated plate (fast, deterministic) under a simulated clock, as in
    a demo home: its simulated sessions count (and resume) like therapy; ``pins``: the home's
    paired plates, so that the demo's plate vouches for its records as a real one would."""
    from sessions.runner import StopRequest, run_session

    outcomes = []
    for n, item in enumerate(plan):
        local = datetime.combine(today - timedelta(days=item.day), item.slot_time, protocol.zone)
        clock = _DemoClock(local.astimezone(UTC))

        def progress(p: Progress, clock: _DemoClock = clock, item: DemoSession = item) -> None:
            clock.elapsed_s = p.elapsed_s
            if item.stop_after_s is not None and p.at_dose_s >= item.stop_after_s:
                raise StopRequest(STOP_CTRL_C)  # as the patient's Ctrl-C

        outcome = run_session(
            protocol=protocol,
            log=log,
            device_url=f"sim://?mass=70&seed={10 + n}&device_id={DEMO_DEVICE}{item.plate}",
            calibrations=calibrations,
            on_progress=progress,
            now=clock.now,
            demo=True,
            pins=pins,
        )
        outcomes.append(outcome)
    return outcomes


def cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from controller.calibration import identify
    from firmware_bridge.client import DeviceClient

    # The demo never uses the user's installation: no --home/$LIV_HOME resolution, no $LIV_DB,
    # no $LIV_CALIBRATION_DIR. Everything it writes is inside its own directory.
    root = _demo_root(args)
    # The demo's simulated plate keeps its key and counter inside the demo's directory too
    # (docs/simulator.md), unless the caller chose a place for simulated plates' memory.
    os.environ.setdefault("LIV_SIM_STATE_DIR", str(root / "plate-memory"))
    home = LivHome(root)
    home.ensure()
    # Marks every session here as simulated: never counted as therapy (docs/sessions.md).
    write_private_file(root / "DEMO", DEMO_MARKER.encode("utf-8"))
    args.home, args.db, args.calibration_dir = str(root), None, None
    echo(say("demo.banner"))
    echo(f"Demo data is kept in {root}")
    zone = "UTC"
    today = datetime.now(UTC).date()
    protocol = demo_protocol(today - timedelta(days=DEMO_DAYS), zone)
    # The demo plays the clinic too: a DEMO clinic key of its own, kept inside the demo's
    # directory, enrols the demo home and signs the demo protocol, which is then installed
    # the way a clinic's prescription is (docs/trust.md). No real home ever trusts this key.
    from sessions.clinic.keys import init_clinic_key, load_signing_key

    demo_clinic = init_clinic_key(root / "demo-clinic")
    home.enrol(demo_clinic.public_key)
    echo(f"DEMO clinic key {demo_clinic.fingerprint} (made for this demo only, in {root})")
    protocol_file = root / "demo-protocol.signed.yaml"
    text = "# DEMO prescription, signed by the DEMO clinic key: not a real patient's\n"
    text += yaml.safe_dump(protocol.to_dict(), sort_keys=False)
    signed = sign_protocol_bytes(text.encode("utf-8"), load_signing_key(demo_clinic.private_key))
    write_private_file(protocol_file, signed)
    home.install_protocol(protocol_file)
    echo(plain_protocol(protocol))
    echo("Setting up the empty simulated plate ...")
    with DeviceClient.open(f"sim://?mass=0&seed=1&device_id={DEMO_DEVICE}") as device:
        home.calibrations().save(identify(device))
    plan = demo_history()
    echo(
        f"Running {len(plan)} simulated sessions of the last {DEMO_DAYS} days, with a missed "
        "day, a session cut short and a safety stop ..."
    )
    with _open_log(args, home) as log:
        run_demo_history(log, protocol, home.calibrations(), today, plan, pins_of(home))
    sim_url = f"sim://?mass=70&seed=2&device_id={DEMO_DEVICE}"
    home.set_device(sim_url)
    echo("\nToday's first session, as the patient sees it:")
    args.device = None
    args.override = None
    start_session(args, home, sim_url, sys.stdout)
    echo()
    now = datetime.now(UTC)
    with _open_log(args, home) as log:
        recent, minutes = _status_of_log(log, protocol, now, home.is_demo)
        logged = len(log.summaries(patient_id=protocol.patient_id))
        verified = log.verify()
    echo("\n".join(status_lines(protocol, recent, now, minutes, demo=home.is_demo)))
    echo(
        f"\nThe log holds {logged} sessions; its record checks {'pass' if verified.ok else 'FAIL'}."
    )
    args.patient = args.since = args.until = None
    report = root / "report.html"
    with _open_log(args, home) as log:
        write_private_file(report, report_text(args, home, log, "html").encode("utf-8"))
    echo(f"The clinician's report: {report}")
    echo("To look again:")
    echo(f"  liv status --home {root}")
    echo(f"  liv report --home {root}")
    echo(f"  liv report --home {root} --format html --out report.html")
    return 0
