"""One error hierarchy for the device link; every exception carries the data that explains it.

::

    LivError                      root of every error this project raises on purpose
    └── BridgeError               anything about talking to a plate
        ├── DeviceNotFoundError   the port or URL names nothing that exists
        ├── DeviceBusyError       another process holds the port
        ├── UnknownUrlError       a URL scheme or query parameter we do not support
        ├── LinkLostError         the cable was pulled / the socket closed / no samples came
        │   └── LinkUnreadableError   no usable samples, but the device kept sending (noise)
        ├── DeviceResetError      the device restarted mid-session (its drive is off)
        ├── HandshakeTimeoutError no hello from the device within the timeout
        │   ├── HandshakeBacklogError  the device's backlog outran the host's drain bound
        │   └── HandshakeUnreadableError  bytes came, but nothing usable (baud rate, noise)
        ├── IncompatibleVersionError  device speaks another protocol major version
        ├── InvalidDeviceInfoError    the device's HELLO holds a value outside its allowed range
        ├── ProtocolError         a well-framed message with a malformed payload
        │   └── SampleIndexError  SAMPLES whose index went back or repeated without a reset
        ├── CommandTimeoutError   no ACK or NAK for a command in time
        │   └── CommandUnreadableError  no answer, but the device kept sending (noise)
        ├── CommandRefusedError   the device NAKed a command (carries the reason code)
        └── DeviceFaultError      the device reported a fault (carries the fault code)

Framing damage (bad CRC, bad COBS, overruns) is never raised: the decoder counts it and
resynchronises, because a noisy line is an expected condition, not an exception. Only when a
wait for the hello, for samples or for a command's answer gives up does what arrived meanwhile
(:class:`LinkActivity`) decide which error it is: a silent device, or one that talks but cannot
be read.
"""

from __future__ import annotations

from dataclasses import dataclass

# More bytes than the longest frame on the wire (docs/protocol.md 2.1: a raw frame of 250 bytes,
# COBS-encoded, with its delimiter): not just the tail of one frame cut by a pulled cable.
TALKING_MIN_BYTES = 253


@dataclass(frozen=True)
class LinkActivity:
    """What arrived from the device during a wait that gave up (the hello, samples, or a
    command's answer).

    Counted as the difference of the client's counters at the start and end of the wait:
    ``frames`` passed COBS, length and CRC; ``damaged_frames`` did not (LinkStats);
    ``malformed_frames`` were well framed but their payload broke docs/protocol.md (dropped as
    a ProtocolError, ``DeviceClient.protocol_errors``); ``bad_index_frames`` are those of them
    that were SAMPLES refused for their sample index alone, past the host's range
    (docs/protocol.md 9.5, ``DeviceClient.bad_index_frames``).
    """

    seconds: float
    bytes_received: int
    frames: int
    damaged_frames: int
    malformed_frames: int
    bad_index_frames: int = 0

    @property
    def bad_indices(self) -> bool:
        """Most frames that could not be used were SAMPLES whose sample index runs past the
        host's range: a well-framed stream whose clock cannot be counted (the device's
        firmware), not a noisy line."""
        other = self.damaged_frames + self.malformed_frames - self.bad_index_frames
        return self.bad_index_frames > other

    @property
    def silent(self) -> bool:
        """Nothing at all arrived."""
        return self.bytes_received == 0

    @property
    def usable_frames(self) -> int:
        """Well-formed frames (of a kind other than the one waited for)."""
        return max(0, self.frames - self.malformed_frames)

    @property
    def unreadable(self) -> bool:
        """The device kept sending, but the host could not read it: more bytes than one frame
        and among them damaged or malformed frames, no fewer than the usable ones, or no frame
        at all (a wrong baud rate, a noisy line, a device speaking something else). A device
        whose frames mostly decode is readable: one damaged frame among many good ones does
        not make its baud rate wrong."""
        bad = self.damaged_frames + self.malformed_frames
        return self.bytes_received >= TALKING_MIN_BYTES and (
            bad >= max(1, self.usable_frames) or self.frames == 0
        )

    def describe(self) -> str:
        """What arrived, for engineers: ``18,400 bytes arrived in 5.0 s but no usable frame
        (212 damaged, 0 well framed but malformed)``."""
        counts = (
            f"{self.damaged_frames:,} damaged, {self.malformed_frames:,} well framed but malformed"
        )
        if self.bad_index_frames:
            counts += (
                f", of which {self.bad_index_frames:,} SAMPLES with a sample index past the "
                "host's range"
            )
        if self.silent:
            return f"nothing arrived in {self.seconds:.1f} s"
        arrived = f"{self.bytes_received:,} bytes arrived in {self.seconds:.1f} s"
        if not self.usable_frames:
            return f"{arrived} but no usable frame ({counts})"
        return f"{arrived}: {self.usable_frames:,} usable frames of other kinds, {counts}"

    def to_values(self) -> dict[str, float]:
        """The counts as numbers (a safety trip's ``values``)."""
        return {
            "wait_s": self.seconds,
            "bytes_received": float(self.bytes_received),
            "frames": float(self.frames),
            "damaged_frames": float(self.damaged_frames),
            "malformed_frames": float(self.malformed_frames),
            "bad_index_frames": float(self.bad_index_frames),
        }


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


class LinkUnreadableError(LinkLostError):
    """No usable samples for the wait, yet the device kept sending: the link is degraded, not
    silent (``activity`` says what arrived). A LinkLostError, so that code which gives up on a
    lost link gives up on this one too."""

    def __init__(self, timeout_s: float, activity: LinkActivity, baud_rate: int) -> None:
        BridgeError.__init__(
            self,
            f"no usable samples from the device for {timeout_s:g} s although it kept sending: "
            f"{activity.describe()}; {_unreadable_advice(activity, baud_rate)}",
        )
        self.timeout_s = timeout_s
        self.activity = activity


def _unreadable_advice(activity: LinkActivity, baud_rate: int) -> str:
    """What to check when the device kept sending what could not be used."""
    if activity.bad_indices:
        return (
            "its SAMPLES frames arrive intact but their sample index cannot be counted "
            "(docs/protocol.md 9.5): check the plate's firmware"
        )
    return (
        "check the cable and its connectors, electrical noise near it, and the baud rate "
        f"({baud_rate:,} baud, docs/protocol.md 1)"
    )


class DeviceResetError(BridgeError):
    def __init__(self, sample_index: int) -> None:
        self.sample_index = sample_index
        super().__init__(
            f"device restarted unexpectedly after sample {sample_index}; its drive is off"
        )


class HandshakeTimeoutError(BridgeError):
    """No hello within the timeout. ``activity`` (None if not known) says what arrived instead:
    nothing (a silent port), or usable frames of other kinds (a device that does not hear this
    host); a device that sends only what cannot be read raises HandshakeUnreadableError."""

    def __init__(self, url: str, timeout_s: float, activity: LinkActivity | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.activity = activity
        if activity is None or activity.silent:
            super().__init__(
                f"no hello from the device at {url!r} within {timeout_s:g} s "
                "(is it powered, is this the right port, is the firmware running?)"
            )
            return
        super().__init__(
            f"no hello from the device at {url!r} within {timeout_s:g} s: "
            f"{activity.describe()}; the device sends but did not answer the hello request "
            "(does it hear this host? check the host-to-device line and the firmware)"
        )


class HandshakeUnreadableError(HandshakeTimeoutError):
    """No hello, but the device kept sending what the host could not use (``activity``): a
    wrong baud rate, a noisy line, or a device that speaks another protocol."""

    def __init__(self, url: str, timeout_s: float, activity: LinkActivity, baud_rate: int) -> None:
        BridgeError.__init__(
            self,
            f"no hello from the device at {url!r} within {timeout_s:g} s: "
            f"{activity.describe()}: check the baud rate (the protocol's is {baud_rate:,} "
            "baud, 8N1, docs/protocol.md 1), the cable, and that this is a LIV plate",
        )
        self.url = url
        self.timeout_s = timeout_s
        self.activity = activity


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
        self.activity = None
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


class SampleIndexError(ProtocolError):
    """A SAMPLES block started at or before an index already seen, without the device's
    restart (docs/protocol.md 9.5): its samples cannot be put on the device's clock."""

    def __init__(self, expected_index: int, first_index: int) -> None:
        self.expected_index = expected_index
        self.first_index = first_index
        super().__init__(
            f"the device's sample index went back from {expected_index} to {first_index} "
            "without a restart (docs/protocol.md 9.5): its samples cannot be timed; check the "
            "plate's firmware"
        )


class CommandTimeoutError(BridgeError):
    def __init__(self, command: str, timeout_s: float) -> None:
        self.command = command
        self.timeout_s = timeout_s
        super().__init__(f"device did not answer {command} within {timeout_s:g} s")


class CommandUnreadableError(CommandTimeoutError):
    """No answer to a command within the timeout, but the device kept sending what the host
    could not use (``activity``, LinkActivity.unreadable): a degraded link, not a silent
    device. A CommandTimeoutError, so that code which gives up on a missing answer still
    does."""

    def __init__(
        self, command: str, timeout_s: float, activity: LinkActivity, baud_rate: int
    ) -> None:
        BridgeError.__init__(
            self,
            f"device did not answer {command} within {timeout_s:g} s; the link is "
            f"unreadable: {activity.describe()}; {_unreadable_advice(activity, baud_rate)}",
        )
        self.command = command
        self.timeout_s = timeout_s
        self.activity = activity


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
