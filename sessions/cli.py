"""The ``liv`` command: what patients, clinicians and engineers type.

Every expected failure ends in one clear sentence on stderr and a non-zero exit status
(docs/cli.md): 0 ok, 1 a failure (refused, tripped, nobody on the plate, out of time, an
error), 2 a usage error (bad argument), 130 interrupted (Ctrl-C, SIGTERM, SIGHUP, a closed
output pipe).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import math
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo

from controller.sensor_limits import (
    OFFSET_RANGE_G,
    SENSITIVITY_RANGE,
    SOURCE_BENCH,
    SOURCE_NOMINAL,
)
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.errors import LivError
from sessions import commands as commands_mod
from sessions.clinic.keycommands import add_clinic_init, add_protocol_sign
from sessions.text import echo, terminal_line
from sessions.wording import refusal_sentence

# The plate, the control loop and their numerics (numpy, about 0.1 s to import; the path that
# drives a plate imports no scipy, tests/test_perf_start.py) are imported by the commands that
# drive a plate, never by `liv --help`, `liv status` or the other log commands
# (docs/performance.md, tests/test_log_scale.py).
if TYPE_CHECKING:
    from controller.calibration import Calibration, CalibrationStore, LoadCheck
    from firmware_bridge.client import DeviceClient, DeviceInfo

_log = logging.getLogger("liv")

# Commands that drive a plate or simulate one: numerics run single-threaded in them.
_PLATE_COMMANDS = frozenset({"device", "calibrate", "run", "start", "demo", "sim"})

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# `liv run` holds the same doses a protocol may prescribe (firmware_bridge/dose_limits.py).
_TARGET_G = DOSE_LIMITS.target_g
_BAND_HZ = DOSE_LIMITS.frequency_hz
_CAL_HZ = DOSE_LIMITS.calibration_hz


class UsageError(Exception):
    """A command-line value that is not allowed; the message says what is."""


class EngineerOnlyError(LivError):
    """An engineering command typed without ``--engineer``: one sentence, exit 1."""

    def __init__(self) -> None:
        super().__init__(ENGINEER_SENTENCE)


def _require_engineer(args: argparse.Namespace) -> None:
    """Refuse an engineering command without engineer mode (also when called directly)."""
    if not getattr(args, "engineer", False):
        raise EngineerOnlyError()


def _engineering_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` names an engineering command without ``--engineer`` (help is free).

    Checked before the arguments are parsed, so a patient who types ``liv run`` gets the one
    sentence, never a usage message about the options it needs.
    """
    if "--engineer" in argv or "-h" in argv or "--help" in argv:
        return False
    words = [w for w in argv if not w.startswith("-")]
    return any(tuple(words[: len(c)]) == c for c in ENGINEER_COMMANDS)


def _bounded_float(name: str, low: float, high: float, unit: str = "") -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(
                f"{name} {text!r} is not allowed: use a number from {low:g} to {high:g}{unit}"
            )
        return value

    return parse


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:4000)")
    return host or "127.0.0.1", int(port)


ENGINEER_SENTENCE = "This is a command for service engineers. It is not needed for your sessions."
# The commands that move the plate outside a session: each needs --engineer, and each run is
# recorded in the log as an engineering run (docs/cli.md, "Engineer mode").
ENGINEER_COMMANDS = (("run",), ("calibrate",), ("device", "drive"))
_ENGINEER_HELP = "confirm that a service engineer runs this (recorded in the log; docs/cli.md)"
_DB_HELP = "session log the run is recorded in (default $LIV_DB or the data directory's liv.db)"


def _add_engineer(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--engineer", action="store_true", help=_ENGINEER_HELP)
    p.add_argument("--db", type=Path, metavar="FILE", help=_DB_HELP)
    return p


_CAL_DIR_HELP = "where calibrations are kept (default: the data directory's calibration/)"
_HOME_HELP = "data directory (default: $LIV_HOME, else $XDG_DATA_HOME/liv, else ~/.local/share/liv)"


def _add_home(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--home", metavar="DIR", help=_HOME_HELP)
    return p


def package_version() -> str:
    """The installed package's version (importlib.metadata), or 'unknown' when not installed."""
    try:
        return importlib.metadata.version("liv-platform")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liv",
        description=(
            "Low-intensity vibration plate: sessions for patients, reports for clinicians, "
            "control and a simulator for engineers.\n\n"
            "  patients    start, status, demo\n"
            "  clinicians  protocol, enroll, clinic, sessions, show, report, verify, export, "
            "import\n"
            "  engineers   device, calibrate, run, sim, completion"
        ),
        epilog=_EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {package_version()}",
        help="print the version of liv and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_session_commands(commands)  # patients' and clinicians' commands first in the help

    device = commands.add_parser("device", help="talk to a plate directly (engineers)")
    device_cmds = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    info = device_cmds.add_parser("info", help="show the device's handshake")
    info.add_argument("--device", required=True, metavar="URL", help="port path or URL")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=cmd_device_info)

    drive = device_cmds.add_parser("drive", help="open-loop drive with soft ramps")
    drive.add_argument("--device", required=True, metavar="URL", help="port path or URL")
    drive.add_argument(
        "--freq", required=True, type=_bounded_float("--freq", 1, 1000, " Hz"), metavar="HZ",
        help="drive frequency, 1-1000 Hz",
    )  # fmt: skip
    drive.add_argument(
        "--drive", required=True, type=_bounded_float("--drive", 0, 1), help="fraction 0..1"
    )
    drive.add_argument(
        "--seconds", required=True, type=_bounded_float("--seconds", 0.1, 3600), metavar="S",
        help="time to hold the drive, 0.1-3600 s (ramps excluded)",
    )  # fmt: skip
    drive.add_argument("--json", action="store_true", help="print JSON")
    _add_home(drive)
    drive.add_argument("--calibration-dir", type=Path, metavar="DIR", help=_CAL_DIR_HELP)
    _add_engineer(drive)
    drive.set_defaults(handler=cmd_device_drive)

    dset = device_cmds.add_parser("set", help="configure the plate this installation uses")
    dset.add_argument(
        "url", metavar="PORT_OR_URL",
        help="e.g. hwgrep://SER=A1B2C3 (by USB identity, see 'liv device list') or /dev/ttyACM0",
    )  # fmt: skip
    dset.add_argument(
        "--re-pair", action="store_true",
        help="trust this plate's key from now on, replacing the key this home was paired with "
        "(a replaced plate)",
    )  # fmt: skip
    _add_home(dset)
    dset.set_defaults(handler=commands_mod.cmd_device_set)

    dlist = device_cmds.add_parser("list", help="serial ports with their USB identity")
    dlist.add_argument("--json", action="store_true", help="print JSON")
    dlist.set_defaults(handler=commands_mod.cmd_device_list)

    calibrate = commands.add_parser(
        "calibrate",
        help=f"measure the empty plate's response across {_CAL_HZ.describe()} Hz (engineers)",
    )
    calibrate.add_argument("--device", required=True, metavar="URL", help="port path or URL")
    _add_home(calibrate)
    calibrate.add_argument("--calibration-dir", type=Path, metavar="DIR", help=_CAL_DIR_HELP)
    calibrate.add_argument(
        "--sensor", action="store_true",
        help="record the accelerometer's sensitivity and offset instead (plate level, at rest, "
        "empty; docs/sensor.md)",
    )  # fmt: skip
    calibrate.add_argument(
        "--sensitivity", type=_bounded_float("--sensitivity", *SENSITIVITY_RANGE), metavar="X",
        help="with --sensor: the part's bench-measured sensitivity relative to its announced "
        "counts per g (default 1.0)",
    )  # fmt: skip
    calibrate.add_argument(
        "--offset-g", type=_bounded_float("--offset-g", *OFFSET_RANGE_G, " g"), metavar="G",
        help="with --sensor: the part's bench-measured offset in g (default 0.0)",
    )  # fmt: skip
    calibrate.add_argument("--json", action="store_true", help="print JSON")
    _add_engineer(calibrate)
    calibrate.set_defaults(handler=cmd_calibrate)

    run = commands.add_parser(
        "run", help="one closed-loop exposure (engineers: no protocol; logged as engineering)"
    )
    run.add_argument("--device", required=True, metavar="URL", help="port path or URL")
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--freq", type=_bounded_float("--freq", *_BAND_HZ, " Hz"), metavar="HZ",
        help=f"fixed frequency ({_BAND_HZ.describe()} Hz)",
    )  # fmt: skip
    what.add_argument(
        "--schedule", metavar="SPEC",
        help=f"steps:30@0,45@60 or sweep:30-90/60 (within {_BAND_HZ.describe()} Hz)",
    )  # fmt: skip
    run.add_argument(
        "--amplitude", type=_bounded_float("--amplitude", *_TARGET_G, " g"), default=0.3,
        metavar="G", help=f"peak acceleration to hold, {_TARGET_G.describe()} g (default 0.3 g)",
    )  # fmt: skip
    run.add_argument(
        "--seconds", required=True, type=_bounded_float("--seconds", 1, 3600), metavar="S",
        help="time to hold the amplitude (ramps excluded)",
    )  # fmt: skip
    _add_home(run)
    run.add_argument("--calibration-dir", type=Path, metavar="DIR", help=_CAL_DIR_HELP)
    run.add_argument("--json", action="store_true", help="print JSON")
    _add_engineer(run)
    run.set_defaults(handler=cmd_run)

    sim = commands.add_parser("sim", help="the simulated plate")
    sim_cmds = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION")
    serve = sim_cmds.add_parser("serve", help="run a simulated plate behind a pty or TCP port")
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="create a pty and print its path")
    where.add_argument("--tcp", type=_host_port, metavar="HOST:PORT", help="listen on TCP")
    serve.add_argument(
        "--sim",
        default="sim://",
        metavar="URL",
        help="simulator settings as a sim:// URL, e.g. 'sim://?mass=90&seed=2' (real time)",
    )
    serve.set_defaults(handler=cmd_sim_serve)

    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument(
        "shell", choices=("bash", "zsh"), help="the shell to complete in: bash or zsh"
    )
    completion.set_defaults(handler=cmd_completion)
    _document(parser)
    return parser


def _add_session_commands(commands: Any) -> None:
    """What patients and clinicians type (handlers in sessions/commands.py)."""

    def with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--db", type=Path, metavar="FILE", help="session log (default $LIV_DB or "
                       "the data directory's liv.db)")  # fmt: skip
        return _add_home(p)

    start = with_db(commands.add_parser("start", help="run the session that is due now"))
    start.add_argument("--device", metavar="URL", help="plate to use (default: the configured one)")
    start.add_argument(
        "--override", metavar="REASON", help="start although the schedule says no (recorded)"
    )
    start.add_argument("--calibration-dir", type=Path, metavar="DIR", help=_CAL_DIR_HELP)
    start.set_defaults(handler=commands_mod.cmd_start)

    status = with_db(commands.add_parser("status", help="today's sessions, the next, the streak"))
    status.add_argument("--json", action="store_true", help="print JSON (docs/json.md)")
    status.set_defaults(handler=commands_mod.cmd_status)

    demo = commands.add_parser(
        "demo", help="two weeks of clearly labelled simulated history, then its report"
    )
    demo.add_argument(
        "--home",
        metavar="DIR",
        help="keep the demo's data in this new or empty directory (default: a new temp dir)",
    )
    demo.set_defaults(handler=commands_mod.cmd_demo)

    protocol = commands.add_parser("protocol", help="check, sign or install a patient protocol")
    pcmds = protocol.add_subparsers(dest="protocol_command", required=True, metavar="ACTION")
    check = pcmds.add_parser("check", help="validate a protocol file and show its signature")
    check.add_argument("file", metavar="FILE", help="the protocol file (YAML)")
    check.add_argument("--json", action="store_true", help="print JSON (docs/json.md)")
    _add_home(check)
    check.set_defaults(handler=commands_mod.cmd_protocol_check)
    add_protocol_sign(pcmds)
    install = pcmds.add_parser(
        "install", help="check the clinic's signature and install as the active protocol"
    )
    install.add_argument("file", metavar="FILE", help="the protocol file signed by the clinic")
    _add_home(install)
    install.set_defaults(handler=commands_mod.cmd_protocol_install)

    enroll = commands.add_parser("enroll", help="enrol this home with the clinic's public key")
    enroll.add_argument(
        "key_file", metavar="CLINIC_PUBLIC_KEY_FILE",
        help="the clinic's public key file (clinic-public.pem from 'liv clinic init')",
    )  # fmt: skip
    enroll.add_argument(
        "--replace", action="store_true",
        help="replace the clinic key this home is already enrolled with (recorded)",
    )  # fmt: skip
    _add_home(enroll)
    enroll.set_defaults(handler=commands_mod.cmd_enroll)

    sessions = with_db(commands.add_parser("sessions", help="list logged sessions"))
    sessions.add_argument("--patient", metavar="ID", help="only this patient's sessions")
    sessions.add_argument(
        "--since", metavar="YYYY-MM-DD", type=_iso_date, help="from this local day on"
    )
    sessions.add_argument(
        "--until", metavar="YYYY-MM-DD", type=_iso_date, help="up to this local day"
    )
    sessions.add_argument("--json", action="store_true", help="print JSON")
    sessions.set_defaults(handler=commands_mod.cmd_sessions)

    show = with_db(commands.add_parser("show", help="one session, with its amplitude"))
    show.add_argument(
        "session_id", metavar="ID",
        help="the session's id ('liv sessions'), or enough of its first characters to be unique",
    )  # fmt: skip
    show.add_argument("--json", action="store_true", help="print JSON, with the amplitude")
    show.add_argument("--svg", metavar="FILE", help="also write the amplitude chart as SVG")
    show.set_defaults(handler=commands_mod.cmd_show)

    report = with_db(commands.add_parser("report", help="adherence for clinicians"))
    report.add_argument(
        "--patient", metavar="ID", help="whose adherence (default: the only or installed one)"
    )
    report.add_argument(
        "--since", metavar="YYYY-MM-DD", type=_iso_date, help="first day of the period"
    )
    report.add_argument(
        "--until", metavar="YYYY-MM-DD", type=_iso_date, help="last day of the period"
    )
    report.add_argument(
        "--format", choices=("table", "csv", "json", "html"), default="table",
        help="table (default), csv, json or html",
    )  # fmt: skip
    report.add_argument(
        "--json", action="store_true", help="print JSON (docs/json.md), as --format json"
    )
    report.add_argument("--out", metavar="FILE", help="default: standard output")
    report.set_defaults(handler=commands_mod.cmd_report)

    verify = with_db(
        commands.add_parser(
            "verify", help="check the log's hash chains and what the plate vouches for"
        )
    )
    verify.add_argument(
        "--device", metavar="URL",
        help="the plate to compare the log's last record with (default: the configured plate, "
        "when it answers)",
    )  # fmt: skip
    verify.add_argument("--no-device", action="store_true", help="do not ask the configured plate")
    verify.add_argument("--json", action="store_true", help="print JSON (docs/json.md)")
    verify.set_defaults(handler=commands_mod.cmd_verify)

    export = with_db(commands.add_parser("export", help="write the log as JSONL, CSV or FHIR"))
    export.add_argument(
        "--format", choices=tuple(commands_mod.EXPORT_FORMATS), default="jsonl",
        help="jsonl (default; every field, 'liv import' reads it back), csv (one plain row per "
        "session), csv-records (every field but long envelopes), csv-envelopes (one row per "
        "envelope point) or fhir (one patient's sessions as a FHIR R4 Bundle)",
    )  # fmt: skip
    export.add_argument(
        "--patient", metavar="ID", help="with --format fhir: whose sessions (default: the only one)"
    )
    export.add_argument(
        "--out", metavar="FILE_OR_DIR",
        help="a file, or a folder to write liv-log.jsonl, liv-sessions.csv, ... in "
        "(default: standard output)",
    )  # fmt: skip
    export.add_argument(
        "--json", action="store_true",
        help="print a JSON summary of the export (docs/json.md); needs --out",
    )  # fmt: skip
    export.set_defaults(handler=commands_mod.cmd_export)

    imp = with_db(commands.add_parser("import", help="merge an exported JSONL log"))
    imp.add_argument("file", metavar="FILE", help="a file written by 'liv export'")
    imp.add_argument(
        "--device-key", action="append", metavar="HEX",
        help="enroll the plate with this public key (64 hex digits, from the paired home's "
        "device_keys.json): its records are accepted from now on (repeatable)",
    )  # fmt: skip
    imp.set_defaults(handler=commands_mod.cmd_import)

    _add_clinic_commands(commands)


def _add_clinic_commands(commands: Any) -> None:
    """The clinic's database of many patients (handlers in sessions/clinic/commands.py)."""
    from sessions.clinic import commands as clinic_mod

    def with_clinic_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--db", metavar="URL", help="clinic database: a SQLite file or "
                       "postgresql://... (default $LIV_CLINIC_DB, else clinic.db in the "
                       "clinic directory)")  # fmt: skip
        p.add_argument("--clinic-dir", metavar="DIR", help="the clinic's data directory "
                       "(default $LIV_CLINIC_HOME or ~/.local/share/liv-clinic)")  # fmt: skip
        return p

    clinic = commands.add_parser("clinic", help="the clinic's key and its view of many patients")
    ccmds = clinic.add_subparsers(dest="clinic_command", required=True, metavar="ACTION")
    add_clinic_init(ccmds)
    cimport = with_clinic_db(ccmds.add_parser("import", help="take patients' exports in"))
    cimport.add_argument("files", nargs="+", metavar="FILE", help="files written by 'liv export'")
    cimport.set_defaults(handler=clinic_mod.cmd_clinic_import)

    plate = ccmds.add_parser("plate", help="the plates the clinic dispensed (their keys)")
    pcmds = plate.add_subparsers(dest="plate_command", required=True, metavar="ACTION")
    padd = with_clinic_db(pcmds.add_parser("add", help="register a plate's public key"))
    padd.add_argument("device_id", metavar="DEVICE_ID", help="the plate's id, e.g. LIV-0042")
    padd.add_argument("key", metavar="KEYHEX", help="its Ed25519 public key, 64 hex digits")
    padd.add_argument(
        "--first-counter", type=int, default=1, metavar="N",
        help="the first counter it vouches with for this clinic (default 1: a new plate)",
    )  # fmt: skip
    padd.set_defaults(handler=clinic_mod.cmd_clinic_plate_add)
    plist = with_clinic_db(pcmds.add_parser("list", help="the registered plates"))
    plist.set_defaults(handler=clinic_mod.cmd_clinic_plate_list)

    overview = with_clinic_db(ccmds.add_parser("overview", help="every patient, worst first"))
    overview.add_argument(
        "--format", choices=("table", "json", "html"), default="table",
        help="table (default), json or html (html writes each patient's report beside it)",
    )  # fmt: skip
    overview.add_argument("--out", metavar="FILE", help="default: standard output")
    overview.set_defaults(handler=clinic_mod.cmd_clinic_overview)

    creport = with_clinic_db(ccmds.add_parser("report", help="one patient's full report"))
    creport.add_argument("patient", metavar="PATIENT", help="the patient's id")
    creport.add_argument(
        "--since", metavar="YYYY-MM-DD", type=_iso_date, help="first day of the period"
    )
    creport.add_argument(
        "--until", metavar="YYYY-MM-DD", type=_iso_date, help="last day of the period"
    )
    creport.add_argument(
        "--format", choices=("table", "csv", "json", "html"), default="table",
        help="table (default), csv, json or html",
    )  # fmt: skip
    creport.add_argument("--out", metavar="FILE", help="default: standard output")
    creport.set_defaults(handler=clinic_mod.cmd_clinic_report)

    cexport = with_clinic_db(ccmds.add_parser("export", help="one patient's records as FHIR"))
    cexport.add_argument("patient", metavar="PATIENT", help="the patient's id")
    cexport.add_argument(
        "--format", choices=("fhir",), default="fhir", help="fhir: a FHIR R4 Bundle (JSON)"
    )
    cexport.add_argument("--out", metavar="FILE", help="default: standard output")
    cexport.set_defaults(handler=clinic_mod.cmd_clinic_export)


def _iso_date(text: str) -> str:
    try:
        date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from None
    return text


_EXIT_STATUS_HELP = """\
exit status: 0 ok; 1 failure (refused, tripped, nobody on the plate, out of time, an error);
2 usage error; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP, a closed output pipe)

example:
  liv status"""

# Every command's description and an example, shown by `liv COMMAND --help` (a test checks
# that no command is left without them).
_DOCS: dict[str, tuple[str, str]] = {
    "start": (
        "Run the session that is due now on the configured plate, following the installed "
        "protocol; refuses, with the reason, when none is due.",
        "liv start",
    ),
    "status": (
        "Show today's sessions (done and due), when the next one may start, and the streak of "
        "complete days.",
        "liv status",
    ),
    "demo": (
        "Two weeks of clearly labelled sessions on a simulated plate for a made-up patient (a "
        "missed day, a session cut short, a safety stop), today's session, the status and the "
        "clinician's HTML report, kept in a directory of its own; real data is never touched.",
        "liv demo",
    ),
    "protocol": (
        "Check a patient protocol file, sign it with the clinic's key (at the clinic), or "
        "install a signed one as this installation's active protocol.",
        "liv protocol check examples/twice-daily-30hz.yaml",
    ),
    "protocol check": (
        "Validate a protocol file, describe it and say whether it is signed, by which clinic "
        "key, and whether this home is enrolled with that key; warns when its study has ended "
        "or starts later. Exits 1 when the file was changed after it was signed.",
        "liv protocol check examples/twice-daily-30hz.yaml",
    ),
    "protocol sign": (
        "At the clinic: validate a protocol file with the same rules and dose limits as every "
        "other command, then write it signed with the clinic's private key.",
        "liv protocol sign examples/twice-daily-30hz.yaml --out p-0042.signed.yaml",
    ),
    "protocol install": (
        "Make a protocol signed by the clinic this home is enrolled with the active protocol; "
        "refuses an unsigned, altered or foreign-signed file. Warns when its study has ended "
        "or starts later.",
        "liv protocol install p-0042.signed.yaml",
    ),
    "enroll": (
        "Enrol this home with the clinic's public key, once at set-up; only prescriptions "
        "signed with that key are installed and run. A different key needs --replace, and "
        "every change is recorded.",
        "liv enroll clinic-public.pem",
    ),
    "clinic init": (
        "Make the clinic's Ed25519 key pair in the clinic's data directory (private key mode "
        "600 in a 700 directory); never overwrites a key. Prints the public key file to give "
        "to each home and its fingerprint.",
        "liv clinic init --dir /srv/liv-clinic",
    ),
    "sessions": (
        "List the logged sessions, one line each, with their local start time.",
        "liv sessions --since 2026-01-01",
    ),
    "show": (
        "Show one logged session in plain values, with its amplitude over time; the id may be "
        "shortened to any start of it that no other session shares.",
        "liv show 3f2a --svg session.svg",
    ),
    "report": (
        "Adherence for clinicians over the report period (up to today): the log's integrity, "
        "the last session, weekly adherence against the target, days, flagged sessions.",
        "liv report --format html --out report.html",
    ),
    "verify": (
        "Check the log's hash chains; exits 1 when a finished record was changed.",
        "liv verify",
    ),
    "export": (
        "Write the whole log as JSONL (for 'liv import'), a plain CSV with one row per session "
        "or the detailed CSVs, or one patient's sessions as a FHIR R4 Bundle (docs/fhir.md); "
        "every export but FHIR carries the log's verification status.",
        "liv export --format csv --out ~/Documents",
    ),
    "import": (
        "Merge a log written by 'liv export'; records already present are skipped.",
        "liv import log.jsonl",
    ),
    "device": (
        "Talk to a plate directly (engineers): list the ports, show a plate's handshake, "
        "drive it open loop, or set the plate this installation uses.",
        "liv device list",
    ),
    "device info": ("Show the plate's handshake.", "liv device info --device hwgrep://SER=A1B2C3"),
    "device drive": (
        "Drive the plate open loop at a fixed fraction of full scale, with soft ramps, and "
        "print the measured peak. Engineers only (--engineer); the drive is refused above what "
        "the plate's calibration says reaches the host's ceiling, and the run is logged as "
        "engineering.",
        "liv device drive --engineer --device sim:// --freq 45 --drive 0.05 --seconds 5",
    ),
    "device set": (
        "Configure the plate this installation uses; only a plate that answers is accepted. "
        "A hwgrep:// URL finds it by USB identity, which does not change between boots.",
        "liv device set hwgrep://SER=A1B2C3",
    ),
    "device list": (
        "List the serial ports with their USB identity (VID:PID, serial number) and the "
        "--device URL that finds each one by it.",
        "liv device list",
    ),
    "calibrate": (
        "Measure the empty plate's response across the calibration band and store it for "
        "the device; nobody may stand on the plate. Engineers only (--engineer); logged as an "
        "engineering run.",
        "liv calibrate --engineer --device hwgrep://SER=A1B2C3",
    ),
    "run": (
        "One closed-loop exposure at a fixed frequency or a schedule, without a protocol "
        "(engineers only: --engineer). Logged as an engineering run, never as therapy.",
        "liv run --engineer --device sim:// --freq 45 --amplitude 0.3 --seconds 60",
    ),
    "sim": ("The simulated plate.", "liv sim serve --pty"),
    "sim serve": (
        "Run a simulated plate in real time behind a pty or a TCP port, for other programs.",
        "liv sim serve --tcp 127.0.0.1:4000 --sim 'sim://?mass=90&seed=2'",
    ),
    "clinic": (
        "The clinic's side, run on the clinic's computer (docs/clinic.md): its signing key, and "
        "its database of many patients: import patients' exports, see every patient at once, "
        "one patient's report, FHIR export.",
        "liv clinic overview",
    ),
    "clinic plate": (
        "The plates the clinic dispensed: the clinic takes in only records that a registered "
        "plate vouches for.",
        "liv clinic plate list",
    ),
    "clinic plate add": (
        "Register a plate the clinic dispensed: its device id and its Ed25519 public key (64 "
        "hex digits). Its exports can then be imported.",
        "liv clinic plate add LIV-0042 "
        "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29",
    ),
    "clinic plate list": (
        "List the registered plates: device id, key id, first counter, when registered.",
        "liv clinic plate list",
    ),
    "clinic import": (
        "Verify patients' exports and take them into the clinic database; a file that does "
        "not verify, holds a record its registered plate does not vouch for, or contradicts "
        "records already held is refused whole (exit 1).",
        "liv clinic import P001.jsonl P002.jsonl",
    ),
    "clinic overview": (
        "Every patient: adherence over 7 and 30 days and the study, days since the last "
        "session, open flags, device and firmware; who needs attention first.",
        "liv clinic overview --format html --out clinic/overview.html",
    ),
    "clinic report": (
        "One patient's full adherence report (as 'liv report') from the clinic database.",
        "liv clinic report P001 --format html --out P001.html",
    ),
    "clinic export": (
        "One patient's sessions as a FHIR R4 Bundle (docs/fhir.md).",
        "liv clinic export --format fhir P001 --out P001.fhir.json",
    ),
    "completion": (
        "Print a shell completion script for liv, generated from its commands.",
        'eval "$(liv completion bash)"   # or add it to ~/.bashrc',
    ),
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, in the order of its help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _document(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every subcommand its description and an example (from _DOCS)."""
    for name, sub in subcommands(parser).items():
        key = f"{path} {name}".strip()
        if key in _DOCS:
            description, example = _DOCS[key]
            sub.description = textwrap.fill(description, width=78)
            sub.epilog = f"example:\n  {example}"
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
        _document(sub, key)


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0 and not isinstance(action, argparse._SubParsersAction)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash (or zsh, through bashcompinit) completion script generated from ``parser``."""
    words: list[str] = []
    values: list[str] = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        subs = subcommands(p)
        flags = [f for a in p._actions for f in a.option_strings]
        flags += [  # a positional with choices (liv completion bash|zsh) completes to them
            str(c) for a in p._actions if not a.option_strings and not subs for c in a.choices or ()
        ]
        words.append(f'        "{path}") _liv_found="{" ".join([*subs, *flags])}" ;;')
        for action in p._actions:
            if action.option_strings and _takes_value(action):
                choices = " ".join(str(c) for c in action.choices or ())
                for flag in action.option_strings:
                    key = f"{path} {flag}".strip()
                    values.append(f'        "{key}") _liv_found="{choices}"; return 0 ;;')
        for name, sub in subs.items():
            walk(sub, f"{path} {name}".strip())

    walk(parser, "")
    nl = "\n"
    script = f"""\
# {shell} completion for liv, generated by 'liv completion {shell}' (liv {package_version()})
_liv_words() {{
    case "$1" in
{nl.join(words)}
        *) _liv_found="" ;;
    esac
}}
_liv_values() {{
    case "$1" in
{nl.join(values)}
    esac
    return 1
}}
_liv_complete() {{
    local cur prev cmdpath word i _liv_found
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmdpath=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        _liv_words "${{cmdpath:+$cmdpath }}$word"
        if [ -n "$_liv_found" ]; then cmdpath="${{cmdpath:+$cmdpath }}$word"; fi
    done
    if [ "$COMP_CWORD" -gt 1 ] && _liv_values "${{cmdpath:+$cmdpath }}$prev"; then
        if [ -n "$_liv_found" ]; then
            COMPREPLY=($(compgen -W "$_liv_found" -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
        return 0
    fi
    _liv_words "$cmdpath"
    COMPREPLY=($(compgen -W "$_liv_found" -- "$cur"))
}}
complete -o default -F _liv_complete liv
"""
    if shell == "zsh":
        script = f"autoload -U +X bashcompinit && bashcompinit\n{script}"
    return script


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion_script(build_parser(), args.shell), end="")
    return 0


def _emit(data: dict[str, Any], as_json: bool, lines: Sequence[str]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))  # JSON escapes every control char
    else:
        echo("\n".join(lines))


def cmd_device_info(args: argparse.Namespace) -> int:
    from firmware_bridge.client import DeviceClient
    from sessions.jsonshapes import device_shape

    with DeviceClient.open(args.device) as device:
        info = device.info
    if args.json:
        _emit(device_shape(args.device, info.to_dict()), True, [])
        return 0
    data = {"url": args.device, **info.to_dict()}
    width = max(len(k) for k in data)
    _emit(data, args.json, [f"{k:<{width}}  {v}" for k, v in data.items()])
    return 0


class _EngineeringRun:
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

    def __enter__(self) -> _EngineeringRun:
        import hashlib

        from sessions.log import SessionKind, canonical_json

        home = commands_mod.home_of(self.args)
        patient_id, zone = _engineering_subject(home)
        text = canonical_json({"command": self.command, "engineer": True, **self.settings})
        started = datetime.now(UTC)
        self._log_cm = commands_mod._open_log(self.args, home)
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
    """(patient_id, time zone) an engineering run is filed under (see _EngineeringRun)."""
    if home.protocol_path.exists():
        with contextlib.suppress(LivError):
            protocol = home.protocol()
            return str(protocol.patient_id), str(protocol.timezone)
    return ENGINEERING_PATIENT, "UTC"


def _calibrated_gain(store: CalibrationStore, info: DeviceInfo, freq_hz: float) -> float | None:
    """The empty plate's g per unit drive at ``freq_hz`` by its calibration, if one covers it."""
    cal = store.load(info.device_id)
    if cal is None or not cal.freqs_hz[0] <= freq_hz <= cal.freqs_hz[-1]:
        return None
    gain = cal.gain_at(freq_hz)
    return gain if gain > 0 else None


def cmd_device_drive(args: argparse.Namespace) -> int:
    from controller.openloop import drive_open_loop
    from firmware_bridge.client import DeviceClient

    _require_engineer(args)
    store = _store(args)
    ceiling = DOSE_LIMITS.over_acceleration_ceiling_g
    with DeviceClient.open(args.device) as device:
        info = device.info
        if not info.min_freq_hz <= args.freq <= info.max_freq_hz:
            raise UsageError(
                f"frequency {args.freq:g} Hz is outside the device's {info.min_freq_hz:g}-"
                f"{info.max_freq_hz:g} Hz"
            )
        if args.drive > info.max_drive:
            raise UsageError(
                f"drive {args.drive:g} is outside 0..{info.max_drive:g} (device limit)"
            )
        # The host's own limit: the drive that, by the empty plate's calibration, reaches the
        # supervisor's ceiling. Without a calibration only the firmware's ceiling bounds it.
        gain = _calibrated_gain(store, info, args.freq)
        if gain is not None and args.drive * gain > ceiling:
            raise UsageError(
                f"--drive {args.drive:g} at {args.freq:g} Hz is not allowed: by this plate's "
                f"calibration it would reach {args.drive * gain:.2f} g; use at most "
                f"{math.floor(ceiling / gain * 1000) / 1000:g} (the host's {ceiling:g} g ceiling)"
            )
        # the peak the run is expected to reach: by the calibration, else the firmware's ceiling
        expected_g = args.drive * gain if gain is not None else info.ceiling_g
        settings = {"freq_hz": args.freq, "drive": args.drive, "seconds": args.seconds,
                    "calibrated": gain is not None}  # fmt: skip
        with _EngineeringRun(
            args, "liv device drive", info, max(expected_g, 0.001), args.seconds, settings
        ) as run:
            result = drive_open_loop(device, args.freq, args.drive, args.seconds)
            run.freqs_hz = [args.freq]
            run.status = "stopped_by_patient" if result.interrupted else "completed"
            run.reason = (
                f"held drive {args.drive:g} at {args.freq:g} Hz for {args.seconds:g} s; peak "
                f"{result.peak_g:.4f} g at the drive frequency"
                + ("; Ctrl-C: stopped early by the engineer" if result.interrupted else "")
            )
    data = result.to_dict()
    lines = [
        f"device            {result.device_id}",
        f"drive             {result.drive:.3f} of full scale at {result.freq_hz:g} Hz",
        f"held for          {result.seconds:g} s (after a soft ramp up; ramped down after)",
        f"peak at drive f   {result.peak_g:.4f} g (sine-equivalent, least-squares fit)",
        f"total peak        {result.total_peak_g:.4f} g (harmonics and noise included)",
        f"DC (gravity)      {result.dc_g:.4f} g",
        f"link              {result.frames} frames, {result.crc_errors} CRC errors, "
        f"{result.lost_frames} lost frames, {result.samples_missing} samples missing",
    ]
    if result.interrupted:
        lines.append("interrupted       Ctrl-C: ramped down and stopped early")
    _emit(data, args.json, lines)
    return EXIT_INTERRUPTED if result.interrupted else 0


def _store(args: argparse.Namespace) -> CalibrationStore:
    """The calibrations of the data directory every command uses (or --calibration-dir)."""
    home = commands_mod.home_of(args)
    home.check()
    store = home.calibrations(args.calibration_dir)
    store.check()
    return store


def _calibration_lines(cal: Calibration, where: Path) -> list[str]:
    lines = [
        f"calibration of {terminal_line(cal.device_id)} saved to {where}",
        "  freq Hz   g per unit drive",
    ]
    lines += [f"  {f:7.1f}   {g:.4f}" for f, g in zip(cal.freqs_hz, cal.g_per_drive, strict=True)]
    return lines


ENGINEER_PLAIN_EVERY_S = 5.0  # off a terminal: a progress line every 5 s of plate time
ENGINEER_REDRAW_S = 0.2  # on a terminal: the line is redrawn at most this often (plate time)


def _clock(seconds: float, up: bool = True) -> str:
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
        self.columns = commands_mod.terminal_columns if columns is None else columns
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
        if space >= commands_mod.BAR_MIN:
            bar = commands_mod.progress_bar(fraction, min(space, commands_mod.BAR_MAX))
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    from controller.calibration import MEASURE_S, SETTLE_S, check_for_load, identify
    from controller.sensor import apply_sensor_calibration
    from firmware_bridge.client import DeviceClient

    _require_engineer(args)
    bench = args.sensitivity is not None or args.offset_g is not None
    if bench and not args.sensor:
        raise UsageError("--sensitivity and --offset-g are only allowed with --sensor")
    store = _store(args)
    with DeviceClient.open(args.device) as device:
        if args.sensor:  # the plate stays at rest: nothing moves, nothing to record
            return _calibrate_sensor(args, store, device, bench)
        sensor = store.load_sensor(device.info.device_id)
        if sensor is not None:  # the empty plate's gains in true g, as sessions will read them
            apply_sensor_calibration(device, sensor)
        earlier = _earlier_calibration(store, device.info.device_id)
        with _EngineeringRun(
            args, "liv calibrate", device.info, _calibration_peak_g(device.info),
            _calibration_s(), {"freqs_hz": list(_cal_freqs()), "drive": _cal_drive()},
        ) as run:  # fmt: skip
            progress = EngineerProgress()
            step_s = MEASURE_S + SETTLE_S

            def step(k: int, n: int, freq_hz: float) -> None:
                progress.show(
                    (k - 1) * step_s,
                    [f"calibrating: frequency {k} of {n}", f"{freq_hz:g} Hz",
                     f"{_clock((n - k + 1) * step_s)} left"],
                    (k - 1) / n,
                    last=k == n,
                )  # fmt: skip

            try:
                cal = identify(device, on_step=step)
            finally:
                progress.finish()
            run.freqs_hz = list(cal.freqs_hz)
            run.reason = (
                f"calibrated {cal.freqs_hz[0]:g}-{cal.freqs_hz[-1]:g} Hz at drive {cal.drive:g}; "
                f"highest response {max(cal.g_per_drive) * cal.drive:.3f} g"
            )
    load = check_for_load(cal, earlier)
    where = store.save(cal)
    data = {"path": str(where), **cal.to_dict(), "load_check": load.to_dict()}
    _emit(data, args.json, _calibration_lines(cal, where))
    _warn_about_load(load)
    return 0


def _earlier_calibration(store: CalibrationStore, device_id: str) -> Calibration | None:
    """The plate's stored calibration, the reference a load is judged against (None: none)."""
    from controller.calibration import CalibrationError

    try:
        return store.load(device_id)
    except CalibrationError:  # a damaged file is replaced by this calibration
        return None


def _warn_about_load(load: LoadCheck) -> None:
    """One sentence on stderr when something seemed to be on the plate, or when it cannot tell."""
    if load.loaded:
        echo(
            f"liv: warning: something seems to be on the plate: it responded "
            f"{100 * (1 - (load.low_ratio or 0)):.0f}% less than at its calibration of "
            f"{load.reference_utc} at the low end of the band (a load lowers it most there); "
            "take everything off the plate and run 'liv calibrate' again",
            file=sys.stderr,
        )
    elif load.verdict == "cannot_tell":
        echo(
            "liv: note: this plate has no earlier calibration to compare with, so a load on it "
            "cannot be detected: make sure nobody and nothing is on the plate",
            file=sys.stderr,
        )


def _cal_freqs() -> tuple[float, ...]:
    from controller.calibration import DEFAULT_FREQS_HZ

    return tuple(DEFAULT_FREQS_HZ)


def _cal_drive() -> float:
    from controller.calibration import IDENT_DRIVE

    return float(IDENT_DRIVE)


def _calibration_peak_g(info: DeviceInfo) -> float:
    """The target an engineering record gives a calibration: the plate's own ceiling (the
    sweep's drive is fixed; its g is what the calibration measures)."""
    return float(info.ceiling_g)


def _calibration_s() -> float:
    """How long the sweep holds the drive (the record's planned duration)."""
    from controller.calibration import MEASURE_S, SETTLE_S

    return len(_cal_freqs()) * (SETTLE_S + MEASURE_S)


def _calibrate_sensor(
    args: argparse.Namespace, store: CalibrationStore, device: DeviceClient, bench: bool
) -> int:
    """``liv calibrate --sensor``: store the bench values with the resting reading measured now."""
    from controller.sensor import SensorCheckError, record_sensor

    try:
        record = record_sensor(
            device,
            sensitivity=1.0 if args.sensitivity is None else args.sensitivity,
            offset_g=0.0 if args.offset_g is None else args.offset_g,
            source=SOURCE_BENCH if bench else SOURCE_NOMINAL,
        )
    except SensorCheckError as exc:
        raise LivError(
            f"sensor calibration not saved: {exc.detail}; check that the plate is level, at "
            "rest and empty, and that the values are this part's"
        ) from None
    where = store.save_sensor(record)
    lines = [
        f"sensor calibration of {terminal_line(record.device_id)} saved to {where}",
        f"  sensitivity     {record.sensitivity:.4f} ({record.source})",
        f"  offset          {record.offset_g:+.4f} g",
        f"  resting reading {record.resting_g:.4f} g uncorrected, "
        f"{record.correct(record.resting_g or 0.0):.4f} g corrected",
    ]
    _emit({"path": str(where), **record.to_dict()}, args.json, lines)
    return 0


def _check_sensor_for_run(store: CalibrationStore, device: DeviceClient) -> None:
    """The pre-session sensor check for ``liv run``; the engineer sees the numbers."""
    from controller.sensor import (
        SensorCalibration,
        SensorCheckError,
        apply_sensor_calibration,
        check_sensor,
        check_tolerance,
    )

    info = device.info
    sensor = store.load_sensor(info.device_id) or SensorCalibration.nominal(
        info.device_id, info.counts_per_g
    )
    try:
        check_sensor(device, sensor, check_tolerance(None))
    except SensorCheckError as exc:
        raise LivError(
            f"{exc.detail}; nothing was run: check the plate is level and at rest, and its "
            "sensor calibration ('liv calibrate --sensor')"
        ) from None
    apply_sensor_calibration(device, sensor)


def cmd_run(args: argparse.Namespace) -> int:
    from controller.faults import clear_latched_fault
    from controller.loop import ControlUpdate, ExposureSettings, ExposureStatus, run_exposure
    from controller.safety import SafetyLimits
    from controller.schedule import FrequencySchedule, ScheduleError, parse_schedule
    from firmware_bridge.client import DeviceClient

    _require_engineer(args)
    try:
        band = (_BAND_HZ.low, _BAND_HZ.high)
        schedule = (
            FrequencySchedule.fixed(args.freq, band)
            if args.freq
            else parse_schedule(args.schedule, band)
        )
        settings = ExposureSettings(
            target_g=args.amplitude, hold_s=args.seconds, schedule=schedule,
            limits=SafetyLimits(),
        )  # fmt: skip
    except (ScheduleError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    store = _store(args)
    with DeviceClient.open(args.device) as device:
        cal = store.load(device.info.device_id)
        if cal is None:
            raise UsageError(
                f"no calibration for {terminal_line(device.info.device_id)} in "
                f"{store.directory}: run "
                f"'liv calibrate --engineer --device {args.device}' with nobody on the plate first"
            )
        if cal.stale:
            echo(
                f"liv: warning: the calibration of {terminal_line(cal.device_id)} no longer "
                f"matches the plate ({terminal_line('; '.join(cal.notes[-1:]))}); run "
                "'liv calibrate' with nobody on the plate",
                file=sys.stderr,
            )
        cleared = clear_latched_fault(device)  # refuses a fault that needs a person
        _check_sensor_for_run(store, device)
        spec = {"target_g": args.amplitude, "seconds": args.seconds,
                "schedule": schedule.describe()}  # fmt: skip
        with _EngineeringRun(
            args, "liv run", device.info, args.amplitude, args.seconds, spec
        ) as run:
            next_point = [0.0]
            progress = EngineerProgress()
            total_s = settings.total_s

            def envelope(u: ControlUpdate) -> None:
                if u.measured_g is not None and u.t_s >= next_point[0]:
                    run.envelope.append((round(u.t_s, 3), round(u.measured_g, 5)))
                    next_point[0] = u.t_s + 0.1
                if not progress.due(u.t_s):
                    return  # not shown: no line to compose (this runs once per block)
                measured = "measuring" if u.measured_g is None else f"measured {u.measured_g:.3f} g"
                progress.show(
                    u.t_s,
                    [f"run {_clock(u.t_s, up=False)} of {_clock(total_s)}",
                     f"{_clock(total_s - u.t_s)} left",
                     f"{measured}, target {args.amplitude:.3f} g",
                     f"{u.freq_hz:.1f} Hz, {u.phase.value}"],
                    u.t_s / total_s,
                    last=False,
                )  # fmt: skip

            try:
                result = run_exposure(device, cal, settings, on_update=envelope)
            finally:
                progress.finish()
            run.freqs_hz = _schedule_freqs(schedule)
            run.errors = (result.error_mean_pct, result.error_p95_abs_pct)
            run.status, run.reason = _run_outcome(result)
            if result.trip is not None:
                trip = result.trip.to_dict()
                run.events = [
                    {k: trip[k] for k in ("reason", "t_s", "detail", "values")}
                    | {"text": trip["text"]}
                ]
    if result.calibration_stale:
        store.mark_stale(cal, f"response {result.response_ratio:.2f}x calibration in a run")
    data = result.to_dict()
    fmt = "n/a" if result.settling_time_s is None else f"{result.settling_time_s:.2f} s"
    lines = [
        f"device            {result.device_id}",
        f"target            {result.target_g:g} g at {result.schedule}",
        f"outcome           {result.status.value}",
        f"held              {result.held_s:.1f} of {result.hold_s_requested:g} s",
        f"settled           {fmt} after the ramp (estimate within +/-2%)",
    ]
    if result.error_p95_abs_pct is not None:
        lines.append(
            f"amplitude error   mean {result.error_mean_pct:+.2f}%, p95 |error| "
            f"{result.error_p95_abs_pct:.2f}% (1-s windows, controller's estimate)"
        )
    lines.append(
        f"plate response    {result.response_ratio:.2f}x the calibrated empty plate"
        + (f"; nobody on the plate for {result.unloaded_s:.1f} s" if result.unloaded_s else "")
    )
    lines.append(
        f"host compute      median {result.compute_median_us:.0f} us, p99 "
        f"{result.compute_p99_us:.0f} us per update"
    )
    lines.append(
        f"link              {result.frames} frames, {result.crc_errors} CRC errors, "
        f"{result.lost_frames} lost frames"
    )
    if cleared is not None:
        lines.append(f"cleared fault     {cleared.name} latched before the run (plate at rest)")
        data["fault_cleared"] = cleared.to_event()
    if result.trip is not None:
        lines.append(f"SAFETY STOP       {result.trip.text}: {result.trip.detail}")
    _emit(data, args.json, lines)
    if result.status is ExposureStatus.STOPPED_BY_USER:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if result.status is ExposureStatus.TRIPPED else 0


def _run_outcome(result: Any) -> tuple[str, str]:
    """The record's status and reason for a ``liv run``: its true end."""
    from controller.loop import ExposureStatus

    held = f"held {result.held_s:.1f} of {result.hold_s_requested:g} s at {result.target_g:g} g"
    if result.status is ExposureStatus.TRIPPED and result.trip is not None:
        return "tripped", f"{result.trip.text}: {result.trip.detail}; {held}"
    if result.status is ExposureStatus.STOPPED_BY_USER:
        return "stopped_by_patient", f"Ctrl-C: stopped by the engineer; {held}"
    return "completed", held


def _schedule_freqs(schedule: Any) -> list[float]:
    """The frequencies a schedule visits (its span's ends and its steps, as far as it says)."""
    low, high = schedule.span_hz
    return sorted({round(float(low), 1), round(float(high), 1)})


def cmd_sim_serve(args: argparse.Namespace) -> int:
    from firmware_bridge.sim.config import parse_sim_url
    from firmware_bridge.sim.serve import serve_pty, serve_tcp

    config = parse_sim_url(args.sim)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def ready(where: str) -> None:
        print(where, flush=True)

    if args.pty:
        serve_pty(config, ready, lambda: stopping)
    else:
        host, port = args.tcp
        serve_tcp(config, host, port, ready, lambda: stopping)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = sys.argv[1:] if argv is None else list(argv)
    if _engineering_command(words):
        echo(f"liv: {ENGINEER_SENTENCE}", file=sys.stderr)
        return EXIT_FAILURE
    args = parser.parse_args(argv)
    logging.basicConfig(
        # Diagnostics are for engineers (-v); a patient sees the one sentence each command prints.
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with _numerics_for(args.command):
            code: int = args.handler(args)
    except UsageError as exc:
        echo(f"liv: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LivError as exc:
        sentence = _patient_sentence(args.command, exc, args.verbose)
        if _session_stopped(exc):  # Ctrl-C, SIGTERM, SIGHUP or a closed pipe at start-up
            _tell(f"liv: {sentence}")
            return EXIT_INTERRUPTED
        echo(f"liv: {sentence}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        echo("liv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        # A file or directory the command needs (missing, unwritable, a full disk): one
        # sentence naming it, never a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        echo(f"liv: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILURE
    return code


def _numerics_for(command: str) -> contextlib.AbstractContextManager[Any]:
    """Single-threaded BLAS for the plate commands; nothing (and no numpy) for the others.

    The numerical libraries are loaded first: the limit applies to the libraries loaded
    when it is set.
    """
    if command not in _PLATE_COMMANDS:
        return contextlib.nullcontext()
    import controller.loop  # noqa: F401 (numpy, with its BLAS)
    from firmware_bridge.realtime import single_threaded_numerics

    return single_threaded_numerics()


# Commands a patient runs: their refusals are told in plain words (sessions/wording.py); the
# technical message goes to the log, shown with -v.
_PATIENT_COMMANDS = frozenset({"start", "status", "demo"})


def _patient_sentence(command: str, exc: LivError, verbose: bool) -> str:
    """What the person reads: the plain sentence on a patient command, else the message.

    The technical message goes to the log and, with ``-v``, to stderr as well.
    """
    if command not in _PATIENT_COMMANDS:
        return str(exc)
    sentence = refusal_sentence(exc)
    if sentence is None:
        return str(exc)
    _log.warning("%s: %s", type(exc).__name__, exc)
    if verbose:
        _tell(f"liv: technical detail: {terminal_line(exc)}")
    return sentence


def _session_stopped(exc: BaseException) -> bool:
    """A session stopped at start-up (:class:`sessions.runner.SessionStoppedError`).

    Only a command that imported the runner can raise it, so the runner is not imported here.
    """
    runner = sys.modules.get("sessions.runner")
    return runner is not None and isinstance(exc, runner.SessionStoppedError)


def _tell(sentence: str) -> None:
    """The one sentence on stderr; a closed terminal (SIGHUP) must not turn it into a crash."""
    with contextlib.suppress(OSError):
        print(sentence, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
