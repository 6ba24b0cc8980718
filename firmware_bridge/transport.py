"""Open a plate's byte stream by URL through pyserial, with errors a person can act on.

Supported: a local port path (``/dev/ttyACM0``, opened exclusively so two controllers cannot
drive one plate), ``hwgrep://REGEXP`` (the first local port whose name, description or USB
identity matches, e.g. ``hwgrep://SER=A1B2C3`` or ``hwgrep://2341:0043``: a name such as
ttyACM0 can change between boots, the USB identity does not; opened exclusively too),
``socket://host:port``, ``rfc2217://host:port``, ``spy://...`` (hex dump of the traffic) and
``sim://?...`` (the simulated plate, firmware_bridge.urlhandler).
"""

from __future__ import annotations

import errno
import sys

import serial

from firmware_bridge.errors import DeviceBusyError, DeviceNotFoundError, UnknownUrlError

HANDLER_PACKAGE = "firmware_bridge.urlhandler"
KNOWN_SCHEMES = ("sim", "hwgrep", "socket", "rfc2217", "spy", "loop")
# Schemes that open a local port: opened exclusively, like a port path.
LOCAL_PORT_SCHEMES = ("hwgrep",)
BAUD_RATE = 921_600


def register_url_handlers() -> None:
    """Make ``sim://`` known to ``serial.serial_for_url`` (idempotent)."""
    if HANDLER_PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(HANDLER_PACKAGE)


def open_port(url: str, read_timeout_s: float = 0.05) -> serial.Serial:
    """Open ``url`` and return the pyserial port; raise a BridgeError saying what went wrong."""
    register_url_handlers()
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme and scheme not in KNOWN_SCHEMES:
        raise UnknownUrlError(
            url, f"unknown scheme {scheme!r}; use a port path or one of {', '.join(KNOWN_SCHEMES)}"
        )
    try:
        if scheme in LOCAL_PORT_SCHEMES:
            return serial.serial_for_url(
                url, baudrate=BAUD_RATE, timeout=read_timeout_s, exclusive=True
            )
        if scheme:
            return serial.serial_for_url(url, baudrate=BAUD_RATE, timeout=read_timeout_s)
        return serial.Serial(url, baudrate=BAUD_RATE, timeout=read_timeout_s, exclusive=True)
    except serial.SerialException as exc:
        raise _classify(url, exc) from None
    except (ValueError, OSError) as exc:
        raise UnknownUrlError(url, str(exc)) from None


def _classify(url: str, exc: serial.SerialException) -> Exception:
    text = str(exc)
    code = getattr(exc, "errno", None)
    if text.startswith("no ports found matching"):  # hwgrep:// matched no port
        return DeviceNotFoundError(
            url, "no serial port matches (is the plate plugged in? 'liv device list' shows them)"
        )
    if code == errno.EBUSY or "lock" in text.lower() or "busy" in text.lower():
        return DeviceBusyError(url)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or "No such file" in text:
        return DeviceNotFoundError(url, "no such port (is the plate plugged in?)")
    if "refused" in text.lower():
        return DeviceNotFoundError(url, "connection refused (is the server running?)")
    return DeviceNotFoundError(url, text)


def close_port(port: serial.Serial) -> None:
    """Close ``port`` and anything its URL handler opened for it.

    pyserial's spy:// handler opens the ``file=`` dump itself and never closes it.
    """
    port.close()
    output = getattr(getattr(port, "formatter", None), "output", None)
    if output is not None and output not in (sys.stderr, sys.stdout) and not output.closed:
        output.close()
