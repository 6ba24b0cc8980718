"""One error hierarchy for the device link; every exception carries the data that explains it.

::

    LivError                      root of every error this project raises on purpose
    └── BridgeError               anything about talking to a plate
        ├── DeviceNotFoundError   the port or URL names nothing that exists
        ├── DeviceBusyError       another process holds the port
        ├── UnknownUrlError       a URL scheme or query parameter we do not support
        ├── LinkLostError         the cable was pulled / the socket closed mid-session
        ├── DeviceResetError      the device restarted mid-session (its drive is off)
        ├── HandshakeTimeoutError no hello from the device within the timeout
        │   └── HandshakeBacklogError  the device's backlog outran the host's drain bound
        ├── IncompatibleVersionError  device speaks another protocol major version
        ├── InvalidDeviceInfoError    the device's HELLO holds a value outside its allowed range
        ├── ProtocolError         a well-framed message with a malformed payload
        ├── CommandTimeoutError   no ACK or NAK for a command in time
        ├── CommandRefusedError   the device NAKed a command (carries the reason code)
        └── DeviceFaultError      the device reported a fault (carries the fault code)

Framing damage (bad CRC, bad COBS, overruns) is never raised: the decoder counts it and
resynchronises, because a noisy line is an expected condition, not an exception.
"""

from __future__ import annotations


class LivError(Exception):
    """Root of every error this project raises on purpose."""


class BridgeError(LivError):
    """Something went wrong talking to a plate."""


class DeviceNotFoundError(BridgeError):
    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        msg = f"no device at {url!r}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class DeviceBusyError(BridgeError):
    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"device {url!r} is in use by another program (only one controller may drive a plate)"
        )


class UnknownUrlError(BridgeError):
    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        super().__init__(f"cannot open {url!r}: {detail}")


class LinkLostError(BridgeError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"link to the device lost: {detail}")


class DeviceResetError(BridgeError):
    def __init__(self, sample_index: int) -> None:
        self.sample_index = sample_index
        super().__init__(
            f"device restarted unexpectedly after sample {sample_index}; its drive is off"
        )


class HandshakeTimeoutError(BridgeError):
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        super().__init__(
            f"no hello from the device at {url!r} within {timeout_s:g} s "
            "(is it powered, is this the right port, is the firmware running?)"
        )


class HandshakeBacklogError(HandshakeTimeoutError):
    """The device kept delivering a backlog (stale frames from before this host) for longer or
    more bytes than the host drains while it waits for the hello (docs/protocol.md 3)."""

    def __init__(
        self, url: str, drained_bytes: int, drained_s: float, max_bytes: int, max_s: float
    ) -> None:
        BridgeError.__init__(
            self,
            f"the device at {url!r} delivered {drained_bytes} bytes of old output in "
            f"{drained_s:.1f} s without answering the hello (this host reads at most "
            f"{max_bytes} bytes or {max_s:g} s of it): wait until it has caught up or restart "
            "the plate, then try again",
        )
        self.url = url
        self.timeout_s = drained_s
        self.drained_bytes = drained_bytes
        self.drained_s = drained_s


class IncompatibleVersionError(BridgeError):
    def __init__(self, device_major: int, device_minor: int, host_major: int) -> None:
        self.device_major = device_major
        self.device_minor = device_minor
        self.host_major = host_major
        super().__init__(
            f"device speaks protocol {device_major}.{device_minor}; this host speaks "
            f"{host_major}.x and refuses a different major version (update host or firmware)"
        )


class InvalidDeviceInfoError(BridgeError):
    """The device's HELLO announced a value the protocol does not allow; nothing was sent."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(
            f"device announced an impossible {field} = {value} (allowed: {allowed}); "
            "this host will not drive it (check the firmware or the port)"
        )


class ProtocolError(BridgeError):
    """A frame passed its CRC but its content does not follow docs/protocol.md."""


class CommandTimeoutError(BridgeError):
    def __init__(self, command: str, timeout_s: float) -> None:
        self.command = command
        self.timeout_s = timeout_s
        super().__init__(f"device did not answer {command} within {timeout_s:g} s")


class CommandRefusedError(BridgeError):
    def __init__(self, command: str, reason_code: int, reason_text: str) -> None:
        self.command = command
        self.reason_code = reason_code
        self.reason_text = reason_text
        super().__init__(f"device refused {command}: {reason_text} (reason {reason_code})")


class DeviceFaultError(BridgeError):
    """The device latched a fault: its code, the fault table's text, the detail and when."""

    def __init__(self, code: int, text: str, sample_index: int, detail: int | None = None) -> None:
        self.code = code
        self.text = text
        self.sample_index = sample_index
        self.detail = detail
        # Set when the fault surfaced as the device's refusal (NAK FAULT_LATCHED) of a command.
        self.refused_command: str | None = None
        extra = "" if detail is None else f", detail {detail}"
        super().__init__(f"device fault {code}: {text} (at sample {sample_index}{extra})")
