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
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.sensor_limits import (
    OFFSET_RANGE_G,
    SENSITIVITY_RANGE,
    SOURCE_BENCH,
    SOURCE_NOMINAL,
)
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.errors import LivError
from sessions import commands as commands_mod
from sessions.text import echo, terminal_line

# The plate, the control loop and their numerics (numpy, scipy: most of a second to import)
# are imported by the commands that drive a plate, never by `liv --help`, `liv status` or the
# other log commands (docs/performance.md, tests/test_log_scale.py).
if TYPE_CHECKING:
    from controller.calibration import Calibration, CalibrationStore
    from firmware_bridge.client import DeviceClient

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
            "  clinicians  protocol, sessions, show, report, verify, export, import\n"
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
    calibrate.set_defaults(handler=cmd_calibrate)

    run = commands.add_parser(
        "run", help="one closed-loop exposure (engineers: no protocol, no log)"
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
    status.set_defaults(handler=commands_mod.cmd_status)

    demo = commands.add_parser("demo", help="a clearly labelled simulated session for new users")
    demo.add_argument(
        "--home",
        metavar="DIR",
        help="keep the demo's data in this new or empty directory (default: a new temp dir)",
    )
    demo.set_defaults(handler=commands_mod.cmd_demo)

    protocol = commands.add_parser("protocol", help="check or install a patient protocol")
    pcmds = protocol.add_subparsers(dest="protocol_command", required=True, metavar="ACTION")
    check = pcmds.add_parser("check", help="validate a protocol file")
    check.add_argument("file", metavar="FILE", help="the protocol file (YAML)")
    check.set_defaults(handler=commands_mod.cmd_protocol_check)
    install = pcmds.add_parser("install", help="validate and install as the active protocol")
    install.add_argument("file", metavar="FILE", help="the protocol file (YAML)")
    _add_home(install)
    install.set_defaults(handler=commands_mod.cmd_protocol_install)

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
    show.add_argument("session_id", metavar="ID", help="the session's id ('liv sessions')")
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
    verify.set_defaults(handler=commands_mod.cmd_verify)

    export = with_db(commands.add_parser("export", help="write the log as JSONL or CSV"))
    export.add_argument(
        "--format", choices=("jsonl", "csv"), default="jsonl",
        help="jsonl (default; 'liv import' reads it back) or csv",
    )  # fmt: skip
    export.add_argument("--out", metavar="FILE", help="default: standard output")
    export.set_defaults(handler=commands_mod.cmd_export)

    imp = with_db(commands.add_parser("import", help="merge an exported JSONL log"))
    imp.add_argument("file", metavar="FILE", help="a file written by 'liv export'")
    imp.add_argument(
        "--device-key", action="append", metavar="HEX",
        help="enroll the plate with this public key (64 hex digits, from the paired home's "
        "device_keys.json): its records are accepted from now on (repeatable)",
    )  # fmt: skip
    imp.set_defaults(handler=commands_mod.cmd_import)


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
        "A clearly labelled session on a simulated plate for a made-up patient, kept in a "
        "directory of its own; real data is never touched.",
        "liv demo",
    ),
    "protocol": (
        "Check a patient protocol file, or install it as this installation's active one.",
        "liv protocol check examples/twice-daily-30hz.yaml",
    ),
    "protocol check": (
        "Validate a protocol file and describe it; warns when its study has ended or starts later.",
        "liv protocol check examples/twice-daily-30hz.yaml",
    ),
    "protocol install": (
        "Validate a protocol file and make it the active protocol; warns when its study has "
        "ended or starts later.",
        "liv protocol install examples/twice-daily-30hz.yaml",
    ),
    "sessions": ("List the logged sessions, one line each.", "liv sessions --since 2026-01-01"),
    "show": (
        "Show one logged session with its amplitude over time.",
        "liv show SESSION_ID --svg session.svg",
    ),
    "report": (
        "Adherence for clinicians: per day and week, missed days, flagged sessions.",
        "liv report --format html --out report.html",
    ),
    "verify": (
        "Check the log's hash chains; exits 1 when a finished record was changed.",
        "liv verify",
    ),
    "export": (
        "Write the whole log as JSONL (for 'liv import') or CSV.",
        "liv export --format jsonl --out log.jsonl",
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
        "print the measured peak.",
        "liv device drive --device sim:// --freq 45 --drive 0.2 --seconds 5",
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
        "the device; nobody may stand on the plate.",
        "liv calibrate --device hwgrep://SER=A1B2C3",
    ),
    "run": (
        "One closed-loop exposure at a fixed frequency or a schedule, without a protocol or "
        "the log (engineers).",
        "liv run --device sim:// --freq 45 --amplitude 0.3 --seconds 60",
    ),
    "sim": ("The simulated plate.", "liv sim serve --pty"),
    "sim serve": (
        "Run a simulated plate in real time behind a pty or a TCP port, for other programs.",
        "liv sim serve --tcp 127.0.0.1:4000 --sim 'sim://?mass=90&seed=2'",
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

    with DeviceClient.open(args.device) as device:
        info = device.info
    data = {"url": args.device, **info.to_dict()}
    width = max(len(k) for k in data)
    _emit(data, args.json, [f"{k:<{width}}  {v}" for k, v in data.items()])
    return 0


def cmd_device_drive(args: argparse.Namespace) -> int:
    from controller.openloop import drive_open_loop
    from firmware_bridge.client import DeviceClient

    with DeviceClient.open(args.device) as device:
        try:
            result = drive_open_loop(device, args.freq, args.drive, args.seconds)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    from controller.calibration import identify
    from controller.sensor import apply_sensor_calibration
    from firmware_bridge.client import DeviceClient

    bench = args.sensitivity is not None or args.offset_g is not None
    if bench and not args.sensor:
        raise UsageError("--sensitivity and --offset-g are only allowed with --sensor")
    store = _store(args)
    with DeviceClient.open(args.device) as device:
        if args.sensor:
            return _calibrate_sensor(args, store, device, bench)
        sensor = store.load_sensor(device.info.device_id)
        if sensor is not None:  # the empty plate's gains in true g, as sessions will read them
            apply_sensor_calibration(device, sensor)
        cal = identify(device)
    where = store.save(cal)
    _emit({"path": str(where), **cal.to_dict()}, args.json, _calibration_lines(cal, where))
    return 0


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
    from controller.loop import ExposureSettings, ExposureStatus, run_exposure
    from controller.safety import SafetyLimits
    from controller.schedule import FrequencySchedule, ScheduleError, parse_schedule
    from firmware_bridge.client import DeviceClient

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
                f"'liv calibrate --device {args.device}' with nobody on the plate first"
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
        result = run_exposure(device, cal, settings)
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
        if _session_stopped(exc):  # Ctrl-C, SIGTERM, SIGHUP or a closed pipe at start-up
            _tell(f"liv: {exc}")
            return EXIT_INTERRUPTED
        echo(f"liv: {exc}", file=sys.stderr)
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
    import controller.loop  # noqa: F401 (numpy and scipy, with their BLAS)
    from firmware_bridge.realtime import single_threaded_numerics

    return single_threaded_numerics()


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
