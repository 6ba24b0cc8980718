"""The ``liv`` command: what patients, clinicians and engineers type.

Every expected failure ends in one clear sentence on stderr and a non-zero exit status:
2 for a usage error (bad argument), 1 for a failure while running, 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from controller.openloop import drive_open_loop
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import LivError
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.sim.serve import serve_pty, serve_tcp

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liv", description="Low-intensity vibration plate: control, sessions, simulator."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    device = commands.add_parser("device", help="talk to a plate directly (engineers)")
    device_cmds = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    info = device_cmds.add_parser("info", help="show the device's handshake")
    info.add_argument("--device", required=True, metavar="URL", help="port path or URL")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=cmd_device_info)

    drive = device_cmds.add_parser("drive", help="open-loop drive with soft ramps")
    drive.add_argument("--device", required=True, metavar="URL", help="port path or URL")
    drive.add_argument("--freq", required=True, type=_bounded_float("--freq", 1, 1000, " Hz"))
    drive.add_argument(
        "--drive", required=True, type=_bounded_float("--drive", 0, 1), help="fraction 0..1"
    )
    drive.add_argument("--seconds", required=True, type=_bounded_float("--seconds", 0.1, 3600))
    drive.add_argument("--json", action="store_true", help="print JSON")
    drive.set_defaults(handler=cmd_device_drive)

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
    return parser


def _emit(data: dict[str, Any], as_json: bool, lines: Sequence[str]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))


def cmd_device_info(args: argparse.Namespace) -> int:
    with DeviceClient.open(args.device) as device:
        info = device.info
    data = {"url": args.device, **info.to_dict()}
    width = max(len(k) for k in data)
    _emit(data, args.json, [f"{k:<{width}}  {v}" for k, v in data.items()])
    return 0


def cmd_device_drive(args: argparse.Namespace) -> int:
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


def cmd_sim_serve(args: argparse.Namespace) -> int:
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
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.handler(args)
    except UsageError as exc:
        print(f"liv: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LivError as exc:
        print(f"liv: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("liv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
