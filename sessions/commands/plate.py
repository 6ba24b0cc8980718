"""``liv device set`` and ``liv device list``: the plate this installation uses."""

from __future__ import annotations

import argparse
import re
from typing import Any

from sessions.commands.common import home_of, open_log, pins_of, print_json
from sessions.home import LivHome
from sessions.text import echo, terminal_line


def _first_held_counter(args: argparse.Namespace, home: LivHome, key: bytes) -> int | None:
    """The lowest counter of this plate key in the home's log (None without log or key)."""
    if not home.db_path(getattr(args, "db", None)).exists():
        return None
    with open_log(args, home, read_only=True) as log:
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

        print_json([port_shape(r) for r in rows])
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
