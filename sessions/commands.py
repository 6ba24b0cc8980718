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
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from controller.privatefiles import write_private_file
from firmware_bridge.errors import LivError
from sessions.home import LivHome, SetupError, resolve_home
from sessions.log import (
    PINS_FILE,
    DevicePins,
    Pin,
    PlateState,
    SessionLog,
    SessionStatus,
    SessionSummary,
)
from sessions.protocol import PatientProtocol, load_protocol, protocol_from_dict
from sessions.scheduling import LoggedSession, day_summary, decide, history_start
from sessions.stops import STOP_CTRL_C, STOP_PIPE, STOP_SIGHUP, STOP_SIGTERM
from sessions.text import echo, terminal_line, terminal_text

# What only some commands need (the plate, the control loop and its numerics, the report
# renderers) is imported inside them, so `liv --help` and `liv status` start in a fraction
# of a second (docs/performance.md); tests/test_log_scale.py checks that they stay out.
if TYPE_CHECKING:
    from sessions.runner import Progress, SessionOutcome

EXIT_REFUSED = 1

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
        return (
            f"this protocol's study ended on {protocol.study_end.isoformat()}, so no session "
            "will be due under it; ask the clinic for a current protocol."
        )
    if today < protocol.study_start:
        return (
            f"this protocol's study starts on {protocol.study_start.isoformat()}, so no "
            "session is due before then."
        )
    return None


def _warn_about_study(protocol: PatientProtocol) -> None:
    warning = study_warning(protocol, datetime.now(UTC))
    if warning is not None:
        echo(f"liv: warning: {warning}", file=sys.stderr)


def cmd_protocol_check(args: argparse.Namespace) -> int:
    protocol = load_protocol(Path(args.file))
    echo(f"{args.file}: valid")
    echo("\n".join(describe_protocol(protocol)))
    _warn_about_study(protocol)
    return 0


def cmd_protocol_install(args: argparse.Namespace) -> int:
    home = home_of(args)
    protocol = home.install_protocol(Path(args.file))
    echo(f"installed {args.file} as the active protocol in {home.root}")
    echo("\n".join(describe_protocol(protocol)))
    _warn_about_study(protocol)
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
        print(json.dumps(rows, indent=2))
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


class ProgressLine:
    """One line the patient watches; rewritten in place on a terminal, sparse otherwise.

    A closed output (``liv start | head``: EPIPE; a hung-up terminal: EIO) stops the session
    as Ctrl-C does, once (:class:`StopRequest`); later output goes to /dev/null instead.
    """

    def __init__(self, out: TextIO, target_g: float) -> None:
        self.out = out
        self.tty = out.isatty()
        self.target_g = target_g
        self.closed = False
        self._last_state = ""
        self._last_print = -1e9

    def __call__(self, p: Progress) -> None:
        minutes, seconds = divmod(round(p.remaining_s), 60)
        amp = "  -   " if p.measured_g is None else f"{p.measured_g:.3f}"
        text = (
            f"{minutes:2d}:{seconds:02d} left at dose | {amp} g of {p.target_g:.3f} g | {p.state}"
        )
        if self.tty:
            self.write("\r" + text.ljust(72))
        elif p.state != self._last_state or p.at_dose_s - self._last_print >= 60.0:
            self.write(text + "\n")
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
    """Something the patient should know that is not the session's outcome (a pairing): on
    stderr, so that the outcome stays the one sentence of stdout and a closed stdout is still
    noticed by the progress line, which stops the session (ProgressLine)."""
    with contextlib.suppress(OSError):
        echo(text, file=sys.stderr)


def start_session(
    args: argparse.Namespace, home: LivHome, device_url: str, out: TextIO
) -> SessionOutcome:
    """Run the session due now and tell the patient its outcome in one sentence."""
    from sessions.runner import run_session

    protocol = home.protocol()
    display = ProgressLine(out, protocol.target_g)
    with _open_log(args, home) as log:
        try:
            outcome = run_session(
                protocol=protocol,
                log=log,
                device_url=device_url,
                calibrations=home.calibrations(getattr(args, "calibration_dir", None)),
                override_reason=getattr(args, "override", None),
                on_progress=display,
                on_decision=lambda d: display.write(terminal_text(d.message) + "\n"),
                pins=pins_of(home),
                on_notice=_notice,
            )
        finally:
            display.finish()
    display.say(outcome.message)
    return outcome


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
) -> list[str]:
    """Today, the next session and the streak.

    ``sessions`` needs to hold only the sessions since :func:`history_start` (all ``decide``
    reads); ``minutes`` the minutes at dose per (day, slot) the streak counts back through
    (``SessionStore.slot_minutes``; by default summed from ``sessions``).
    """
    recent = sessions
    if minutes is None:
        minutes = _minutes_by_slot(sessions)
    zone = protocol.zone
    today = now.astimezone(zone).date()
    done = day_summary(protocol, recent, today)
    goal = protocol.minutes_per_session
    lines = [f"today ({today.isoformat()}, {protocol.timezone})"]
    # Outside the study no slot is due; the next line says when it starts or that it ended.
    in_study = protocol.study_start <= today <= protocol.study_end
    for k, delivered in enumerate(done if in_study else [], start=1):
        mark = (
            "done"
            if delivered >= goal - 1e-6
            else f"{delivered:.1f} of {goal:g} min"
            if delivered
            else "due"
        )
        lines.append(f"  session {k}: {mark}")
    decision = decide(protocol, recent, now)
    if decision.allowed:
        lines.append(f"next              now: {decision.message}")
    else:
        lines.append(f"next              {decision.message}")
    days = streak(protocol, minutes, today)
    lines.append(f"streak            {days} day(s) in a row with every session done")
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
    log: SessionLog, protocol: PatientProtocol, now: datetime
) -> tuple[list[SessionSummary], dict[tuple[date, int], float]]:
    """What ``status`` reads: recent summaries and per-slot minutes, never an envelope."""
    recent = log.summaries(protocol.patient_id, since=history_start(protocol, now))
    return recent, log.slot_minutes(protocol.patient_id)


def cmd_status(args: argparse.Namespace) -> int:
    home = home_of(args)
    protocol = home.protocol()
    now = datetime.now(UTC)
    with _open_log(args, home) as log:
        recent, minutes = _status_of_log(log, protocol, now)
    echo("\n".join(status_lines(protocol, recent, now, minutes)))
    return 0


def _parse_date(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


def cmd_sessions(args: argparse.Namespace) -> int:
    with _open_log(args, read_only=True) as log:
        records = log.summaries(
            patient_id=args.patient, since=_parse_date(args.since), until=_parse_date(args.until)
        )
    if args.json:
        print(json.dumps([_summary(r) for r in records], indent=2))
        return 0
    echo(f"{'session':<36} {'patient':<12} {'local day':<10} {'slot':>4} {'status':<18} "
         f"{'at dose':>8}")  # fmt: skip
    for r in records:
        session_id, patient_id = terminal_line(r.session_id), terminal_line(r.patient_id)
        echo(f"{session_id:<36} {patient_id:<12} {r.local_date.isoformat():<10} "
             f"{r.slot:>4} {r.status.value:<18} {r.minutes_at_dose:>7.1f}m")  # fmt: skip
    return 0


def _summary(r: SessionSummary) -> dict[str, Any]:
    return {
        "session_id": r.session_id,
        "patient_id": r.patient_id,
        "device_id": r.device_id,
        "local_date": r.local_date.isoformat(),
        "slot": r.slot,
        "status": r.status.value,
        "reason": r.reason,
        "started_local": r.started_local.isoformat(),
        "ended_local": r.ended_local.isoformat() if r.ended_local else None,
        "minutes_prescribed": r.minutes_prescribed,
        "minutes_at_dose": r.minutes_at_dose,
        "mean_error_pct": r.mean_error_pct,
        "p95_abs_error_pct": r.p95_abs_error_pct,
        "exposure": r.exposure,
        "safety_events": list(r.safety_events),
        "override_reason": r.override_reason,
        "resumed_from": r.resumed_from,
    }


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


def cmd_show(args: argparse.Namespace) -> int:
    from sessions.report import render_session_svg

    with _open_log(args, read_only=True) as log:
        record = log.get(args.session_id)
    if args.svg:
        Path(args.svg).write_text(render_session_svg(record, standalone=True), encoding="utf-8")
        echo(f"amplitude chart written to {args.svg}")
    data = _summary(record)
    if args.json:
        data["envelope"] = [list(p) for p in record.envelope]
        print(json.dumps(data, indent=2))
        return 0
    for key, value in data.items():
        echo(f"{key:<20} {terminal_line(value)}")
    echo(f"{'amplitude':<20} {sparkline(record.envelope, record.target_g)}")
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
    pins = pins_of(home).all()
    with _open_log(args, home, read_only=True) as log:
        result = log.verify()
        trust = log.verify_vouchers(pins, plate) if result.ok else None
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
    if trust.vouched and not pins:
        trust.add("no plate is paired with this home, so nobody vouches for whose key signed")
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


def cmd_export(args: argparse.Namespace) -> int:
    with _open_log(args, read_only=True) as log:
        out = Path(args.out) if args.out else None
        if out is None:
            count = (log.export_csv if args.format == "csv" else log.export_jsonl)(sys.stdout)
        else:
            count = (log.export_csv if args.format == "csv" else log.export_jsonl)(out)
    echo(f"exported {count} records", file=sys.stderr)
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
    patients = sorted({r.patient_id for r in records})
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
    theirs = [r for r in records if r.patient_id == patient]
    if theirs:
        latest = max(theirs, key=lambda r: (r.started_utc, r.session_id))
        return patient, protocol_from_dict(json.loads(latest.protocol_json)), None
    raise ReportError(f"no sessions and no protocol for patient {patient!r} in this log")


def report_text(args: argparse.Namespace, home: LivHome, log: SessionLog, fmt: str) -> str:
    from sessions.adherence import compute_adherence
    from sessions.report import render_csv, render_html, render_json, render_table

    records = log.summaries()
    patient, protocol, installed_utc = _report_subject(args, home, records)
    theirs = [r for r in records if r.patient_id == patient]
    try:
        report = compute_adherence(
            protocol,
            theirs,
            since=_parse_date(args.since),
            until=_parse_date(args.until),
            installed_utc=installed_utc,
        )
    except ValueError as exc:  # a period the report cannot cover: the message says why
        raise ReportError(str(exc)) from None
    if fmt == "html":
        return render_html(report, protocol, theirs, lambda s: log.get(s.session_id))
    renderer = {"table": render_table, "csv": render_csv, "json": render_json}[fmt]
    return renderer(report)


def cmd_report(args: argparse.Namespace) -> int:
    home = home_of(args)
    with _open_log(args, home, read_only=True) as log:
        text = report_text(args, home, log, args.format)
    if args.out:
        out = Path(args.out)
        out.write_text(text, encoding="utf-8")
        echo(f"report written to {out}")
    else:
        echo(text, end="" if text.endswith("\n") else "\n")
    return 0


# ---- demo ------------------------------------------------------------------------------------


def demo_protocol(today: date, zone: str) -> PatientProtocol:
    return protocol_from_dict(
        {
            "patient_id": "DEMO-001",
            "target_g": 0.3,
            "frequency_hz": 30.0,
            "minutes_per_session": 10.0,
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


def cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from controller.calibration import identify
    from firmware_bridge.client import DeviceClient

    # The demo never uses the user's installation: no --home/$LIV_HOME resolution, no $LIV_DB,
    # no $LIV_CALIBRATION_DIR. Everything it writes is inside its own directory.
    root = _demo_root(args)
    home = LivHome(root)
    home.ensure()
    args.home, args.db, args.calibration_dir = str(root), None, None
    echo("=" * 72)
    echo("DEMO: a SIMULATED plate and a made-up patient. Nothing here is a real session.")
    echo(f"Demo data is kept in {root}")
    echo("=" * 72)
    zone = "UTC"
    protocol = demo_protocol(datetime.now(UTC).date(), zone)
    protocol_file = root / "demo-protocol.yaml"
    # the demo writes a real protocol file and installs it the way a clinic's would be
    text = yaml.safe_dump(protocol.to_dict(), sort_keys=False)
    write_private_file(protocol_file, text.encode("utf-8"))
    home.install_protocol(protocol_file)
    echo("\n".join(describe_protocol(protocol)))
    echo("\ncalibrating the empty simulated plate ...")
    with DeviceClient.open("sim://?mass=0&seed=1&device_id=SIM-DEMO") as device:
        home.calibrations().save(identify(device))
    sim_url = "sim://?mass=70&seed=2&device_id=SIM-DEMO"
    home.set_device(sim_url)
    echo(f"plate: {sim_url} (a 70 kg patient, as fast as the computer runs)\n")
    args.device = None
    args.override = None
    start_session(args, home, sim_url, sys.stdout)
    echo()
    now = datetime.now(UTC)
    with _open_log(args, home) as log:
        recent, minutes = _status_of_log(log, protocol, now)
        logged = len(log.summaries(patient_id=protocol.patient_id))
        verified = log.verify()
    echo("\n".join(status_lines(protocol, recent, now, minutes)))
    echo(f"log               {logged} session(s); chain verified: {verified.ok}")
    echo("\nadherence report (what a clinician sees; 'liv report --format html' for the page):")
    args.patient = args.since = args.until = None
    with _open_log(args, home) as log:
        echo(report_text(args, home, log, "table"))
    echo(f"Try: liv report --home {root} --format html --out report.html")
    return 0
