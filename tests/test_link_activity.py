"""When is a device that sent something but no usable sample "unreadable"?

``LinkActivity.unreadable`` decides between "check the baud rate, the cable, that this is a
LIV plate" (``HandshakeUnreadableError``, ``link_degraded``) and "the device talks but does not
answer" (``HandshakeTimeoutError``) or silence (``link_lost``). A device whose frames mostly
decode is readable: one damaged frame among hundreds of good ones does not make its baud rate
wrong.
"""

from __future__ import annotations

import pytest

from firmware_bridge.errors import (
    TALKING_MIN_BYTES,
    HandshakeTimeoutError,
    HandshakeUnreadableError,
    LinkActivity,
)
from tests.test_unreadable_link import TamperedPort, connect


def activity(nbytes: int, frames: int, damaged: int, malformed: int) -> LinkActivity:
    return LinkActivity(0.3, nbytes, frames, damaged, malformed)


@pytest.mark.parametrize(
    ("nbytes", "frames", "damaged", "malformed", "unreadable"),
    [
        (5000, 0, 60, 0, True),  # noise: every frame damaged
        (5000, 60, 0, 60, True),  # every frame well framed but malformed
        (5000, 0, 0, 0, True),  # bytes but no frame at all
        (5000, 10, 10, 0, True),  # as many damaged as usable
        (5000, 200, 1, 0, False),  # one damaged frame among 200 good ones: readable
        (5000, 200, 0, 1, False),  # one malformed among 200 good ones: readable
        (5000, 200, 0, 0, False),  # good frames of other kinds only
        (TALKING_MIN_BYTES - 1, 0, 2, 0, False),  # the tail of one frame cut by a cable
        (0, 0, 0, 0, False),  # silence
    ],
)
def test_unreadable_needs_the_bad_frames_not_to_be_outnumbered(
    nbytes: int, frames: int, damaged: int, malformed: int, unreadable: bool
) -> None:
    assert activity(nbytes, frames, damaged, malformed).unreadable is unreadable


class DeafPort(TamperedPort):
    """A plate that has been streaming for a while and does not hear this host (its
    host-to-device line is broken): every command is lost; one byte of what it sends, at
    ``damage_at``, is hit, so one frame fails its CRC among hundreds that pass."""

    def __init__(self, url: str, damage_at: int = 300) -> None:
        super().__init__(url, "deaf")
        self.damage_at = damage_at
        self.seen = 0
        self.damaged = False

    def write(self, data: bytes) -> int:
        return len(data)

    def _spoil(self, data: bytes) -> bytes:
        out = bytearray(data)
        for i in range(max(0, self.damage_at - self.seen), len(out) * (not self.damaged)):
            if out[i] not in (0, 1):
                out[i] ^= 1
                self.damaged = True
                break
        self.seen += len(data)
        return bytes(out)


def test_a_deaf_plate_with_one_damaged_frame_is_not_called_unreadable() -> None:
    port = DeafPort("sim://?speed=max&uptime_s=10")
    with pytest.raises(HandshakeTimeoutError) as caught:
        connect(port, hello_timeout_s=0.3)
    exc = caught.value
    assert exc.activity is not None
    assert exc.activity.damaged_frames == 1, exc.activity
    assert exc.activity.usable_frames > 5, exc.activity
    assert not isinstance(exc, HandshakeUnreadableError), str(exc)
    assert "does it hear this host?" in str(exc)
    assert "baud" not in str(exc)
