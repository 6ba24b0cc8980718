"""The ``liv`` argument parser: every command, its options and where its handler lives."""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from controller.sensor_limits import (
    OFFSET_RANGE_G,
    SENSITIVITY_RANGE,
)
from firmware_bridge.dose_limits import DOSE_LIMITS
from sessions.cli.help import LivParser
from sessions.cli.helptext import EXIT_STATUS_HELP, document
from sessions.clinic.keycommands import add_clinic_init, add_protocol_sign
from sessions.commands import EXPORT_FORMATS

# `liv run` holds the same doses a protocol may prescribe (firmware_bridge/dose_limits.py).
_TARGET_G = DOSE_LIMITS.target_g
_BAND_HZ = DOSE_LIMITS.frequency_hz
_CAL_HZ = DOSE_LIMITS.calibration_hz


def engineering_command(argv: Sequence[str]) -> bool:
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


_Options = TypeVar("_Options", bound=argparse._ActionsContainer)


def _add_home(p: _Options) -> _Options:
    p.add_argument("--home", metavar="DIR", help=_HOME_HELP)
    return p


def _add_report_period(p: argparse.ArgumentParser) -> None:
    """The period and format options that 'liv report' and 'liv clinic report' share."""
    p.add_argument("--since", metavar="YYYY-MM-DD", type=_iso_date, help="first day of the period")
    p.add_argument("--until", metavar="YYYY-MM-DD", type=_iso_date, help="last day of the period")
    p.add_argument(
        "--format", choices=("table", "csv", "json", "html"), default="table",
        help="table (default), csv, json or html",
    )  # fmt: skip


def package_version() -> str:
    """The installed package's version (importlib.metadata), or 'unknown' when not installed."""
    import importlib.metadata  # slow to import: only for --version and completion scripts

    try:
        return importlib.metadata.version("liv-platform")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked (importlib.metadata is
    slow to import, and ``liv --help`` should not pay for it)."""

    def __init__(
        self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
        default: Any = argparse.SUPPRESS, help: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:  # fmt: skip
        print(f"{parser.prog} {package_version()}")
        parser.exit()


class Handler:
    """A command's handler by module and name, imported when the command runs.

    The parser names every handler without importing it, so building the parser (and
    ``liv --help``) loads no command code, no signing library and no numerics
    (docs/performance.md, tests/test_perf_start.py).
    """

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, args: argparse.Namespace) -> int:
        handler: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(self.module), self.name
        )
        return handler(args)

    def __repr__(self) -> str:
        return f"Handler({self.module}:{self.name})"


def build_parser() -> argparse.ArgumentParser:
    parser = LivParser(
        prog="liv",
        description=(
            "Low-intensity vibration plate: sessions for patients, reports for clinicians, "
            "control and a simulator for engineers.\n\n"
            "  patients    start, status, demo\n"
            "  clinicians  protocol, enroll, clinic, sessions, show, report, verify, export, "
            "import\n"
            "  engineers   device, calibrate, run, sim, completion"
        ),
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    parser.add_argument(
        "--version",
        action=VersionAction,
        help="print the version of liv and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_session_commands(commands)  # patients' and clinicians' commands first in the help

    device = commands.add_parser("device", help="talk to a plate directly (engineers)")
    device_cmds = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    info = device_cmds.add_parser("info", help="show the device's handshake")
    info.add_argument("--device", required=True, metavar="URL", help="port path or URL")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=Handler("sessions.cli.device", "cmd_device_info"))

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
    drive.set_defaults(handler=Handler("sessions.cli.device", "cmd_device_drive"))

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
    dset.set_defaults(handler=Handler("sessions.commands.plate", "cmd_device_set"))

    dlist = device_cmds.add_parser("list", help="serial ports with their USB identity")
    dlist.add_argument("--json", action="store_true", help="print JSON")
    dlist.set_defaults(handler=Handler("sessions.commands.plate", "cmd_device_list"))

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
    calibrate.set_defaults(handler=Handler("sessions.cli.calibrate", "cmd_calibrate"))

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
    run.set_defaults(handler=Handler("sessions.cli.run", "cmd_run"))

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
    serve.set_defaults(handler=Handler("sessions.cli.device", "cmd_sim_serve"))

    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument(
        "shell", choices=("bash", "zsh"), help="the shell to complete in: bash or zsh"
    )
    completion.set_defaults(handler=Handler("sessions.cli.completion", "cmd_completion"))

    helpcmd = commands.add_parser("help", help="the help of liv or of one command")
    helpcmd.add_argument(
        "topic", nargs="*", metavar="COMMAND", help="the command to describe, e.g. start"
    )
    helpcmd.set_defaults(handler=Handler("sessions.cli.help", "cmd_help"))
    document(parser)
    return parser


def _add_session_commands(commands: Any) -> None:
    """What patients and clinicians type (handlers in sessions/commands/)."""

    def with_db(p: _Options) -> _Options:
        p.add_argument("--db", type=Path, metavar="FILE", help="session log (default $LIV_DB or "
                       "the data directory's liv.db)")  # fmt: skip
        return _add_home(p)

    # A patient types 'liv start' alone: its page shows that first, and the options the clinic
    # or an engineer uses under a heading of their own (docs/cli.md).
    start = commands.add_parser(
        "start", help="run the session that is due now",
        usage="%(prog)s [-h] [options for the clinic or engineers]",
    )  # fmt: skip
    staff = start.add_argument_group(
        "options for the clinic or service engineers (a patient needs none of these)"
    )
    with_db(staff)
    staff.add_argument("--device", metavar="URL", help="plate to use (default: the configured one)")
    staff.add_argument(
        "--override", metavar="REASON", help="start although the schedule says no (recorded)"
    )
    staff.add_argument("--calibration-dir", type=Path, metavar="DIR", help=_CAL_DIR_HELP)
    start.set_defaults(handler=Handler("sessions.commands.start", "cmd_start"))

    status = with_db(commands.add_parser("status", help="today's sessions, the next, the streak"))
    status.add_argument("--json", action="store_true", help="print JSON (docs/json.md)")
    status.set_defaults(handler=Handler("sessions.commands.status", "cmd_status"))

    demo = commands.add_parser(
        "demo", help="two weeks of clearly labelled simulated history, then its report"
    )
    demo.add_argument(
        "--home",
        metavar="DIR",
        help="keep the demo's data in this new or empty directory (default: a new temp dir)",
    )
    demo.set_defaults(handler=Handler("sessions.commands.demo", "cmd_demo"))

    protocol = commands.add_parser("protocol", help="check, sign or install a patient protocol")
    pcmds = protocol.add_subparsers(dest="protocol_command", required=True, metavar="ACTION")
    check = pcmds.add_parser("check", help="validate a protocol file and show its signature")
    check.add_argument("file", metavar="FILE", help="the protocol file (YAML)")
    check.add_argument("--json", action="store_true", help="print JSON (docs/json.md)")
    _add_home(check)
    check.set_defaults(handler=Handler("sessions.commands.protocols", "cmd_protocol_check"))
    add_protocol_sign(pcmds)
    install = pcmds.add_parser(
        "install", help="check the clinic's signature and install as the active protocol"
    )
    install.add_argument("file", metavar="FILE", help="the protocol file signed by the clinic")
    _add_home(install)
    install.set_defaults(handler=Handler("sessions.commands.protocols", "cmd_protocol_install"))

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
    enroll.set_defaults(handler=Handler("sessions.commands.protocols", "cmd_enroll"))

    sessions = with_db(commands.add_parser("sessions", help="list logged sessions"))
    sessions.add_argument("--patient", metavar="ID", help="only this patient's sessions")
    sessions.add_argument(
        "--since", metavar="YYYY-MM-DD", type=_iso_date, help="from this local day on"
    )
    sessions.add_argument(
        "--until", metavar="YYYY-MM-DD", type=_iso_date, help="up to this local day"
    )
    sessions.add_argument("--json", action="store_true", help="print JSON")
    sessions.set_defaults(handler=Handler("sessions.commands.listing", "cmd_sessions"))

    show = with_db(commands.add_parser("show", help="one session, with its amplitude"))
    show.add_argument(
        "session_id", metavar="ID",
        help="the session's id ('liv sessions'), or enough of its first characters to be unique",
    )  # fmt: skip
    show.add_argument("--json", action="store_true", help="print JSON, with the amplitude")
    show.add_argument("--svg", metavar="FILE", help="also write the amplitude chart as SVG")
    show.set_defaults(handler=Handler("sessions.commands.listing", "cmd_show"))

    report = with_db(commands.add_parser("report", help="adherence for clinicians"))
    report.add_argument(
        "--patient", metavar="ID", help="whose adherence (default: the only or installed one)"
    )
    _add_report_period(report)
    report.add_argument(
        "--json", action="store_true", help="print JSON (docs/json.md), as --format json"
    )
    report.add_argument("--out", metavar="FILE", help="default: standard output")
    report.set_defaults(handler=Handler("sessions.commands.reporting", "cmd_report"))

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
    verify.set_defaults(handler=Handler("sessions.commands.integrity", "cmd_verify"))

    export = with_db(commands.add_parser("export", help="write the log as JSONL, CSV or FHIR"))
    export.add_argument(
        "--format", choices=tuple(EXPORT_FORMATS), default="jsonl",
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
    export.set_defaults(handler=Handler("sessions.commands.integrity", "cmd_export"))

    imp = with_db(commands.add_parser("import", help="merge an exported JSONL log"))
    imp.add_argument("file", metavar="FILE", help="a file written by 'liv export'")
    imp.add_argument(
        "--device-key", action="append", metavar="HEX",
        help="enroll the plate with this public key (64 hex digits, from the paired home's "
        "device_keys.json): its records are accepted from now on (repeatable)",
    )  # fmt: skip
    imp.set_defaults(handler=Handler("sessions.commands.integrity", "cmd_import"))

    _add_clinic_commands(commands)


def _add_clinic_commands(commands: Any) -> None:
    """The clinic's database of many patients (handlers in sessions/clinic/commands.py)."""

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
    cimport.set_defaults(handler=Handler("sessions.clinic.commands", "cmd_clinic_import"))

    plate = ccmds.add_parser("plate", help="the plates the clinic dispensed (their keys)")
    pcmds = plate.add_subparsers(dest="plate_command", required=True, metavar="ACTION")
    padd = with_clinic_db(pcmds.add_parser("add", help="register a plate's public key"))
    padd.add_argument("device_id", metavar="DEVICE_ID", help="the plate's id, e.g. LIV-0042")
    padd.add_argument("key", metavar="KEYHEX", help="its Ed25519 public key, 64 hex digits")
    padd.add_argument(
        "--first-counter", type=int, default=1, metavar="N",
        help="the first counter it vouches with for this clinic (default 1: a new plate)",
    )  # fmt: skip
    padd.set_defaults(handler=Handler("sessions.clinic.commands", "cmd_clinic_plate_add"))
    plist = with_clinic_db(pcmds.add_parser("list", help="the registered plates"))
    plist.set_defaults(handler=Handler("sessions.clinic.commands", "cmd_clinic_plate_list"))

    overview = with_clinic_db(ccmds.add_parser("overview", help="every patient, worst first"))
    overview.add_argument(
        "--format", choices=("table", "json", "html"), default="table",
        help="table (default), json or html (html writes each patient's report beside it)",
    )  # fmt: skip
    overview.add_argument("--out", metavar="FILE", help="default: standard output")
    overview.set_defaults(handler=Handler("sessions.clinic.commands", "cmd_clinic_overview"))

    problems = with_clinic_db(ccmds.add_parser("problems", help="the problems imports found"))
    problems.add_argument(
        "--all", action="store_true", help="also the acknowledged ones, with who, when and why"
    )
    problems.add_argument("--json", action="store_true", help="print JSON (docs/json.md)")
    problems.set_defaults(handler=Handler("sessions.clinic.commands", "cmd_clinic_problems"))

    ack = with_clinic_db(ccmds.add_parser("acknowledge", help="mark a problem as dealt with"))
    ack.add_argument(
        "problem_id", metavar="PROBLEM_ID", help="its id as 'liv clinic problems' shows it"
    )
    ack.add_argument(
        "--note", required=True, metavar="TEXT",
        help="what was done, one line of at most 500 characters",
    )  # fmt: skip
    ack.add_argument("--by", metavar="NAME", help="who (default: your user name)")
    ack.set_defaults(handler=Handler("sessions.clinic.commands", "cmd_clinic_acknowledge"))

    creport = with_clinic_db(ccmds.add_parser("report", help="one patient's full report"))
    creport.add_argument("patient", metavar="PATIENT", help="the patient's id")
    _add_report_period(creport)
    creport.add_argument("--out", metavar="FILE", help="default: standard output")
    creport.set_defaults(handler=Handler("sessions.clinic.commands", "cmd_clinic_report"))

    cexport = with_clinic_db(ccmds.add_parser("export", help="one patient's records as FHIR"))
    cexport.add_argument("patient", metavar="PATIENT", help="the patient's id")
    cexport.add_argument(
        "--format", choices=("fhir",), default="fhir", help="fhir: a FHIR R4 Bundle (JSON)"
    )
    cexport.add_argument("--out", metavar="FILE", help="default: standard output")
    cexport.set_defaults(handler=Handler("sessions.clinic.commands", "cmd_clinic_export"))


def _iso_date(text: str) -> str:
    try:
        date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from None
    return text
