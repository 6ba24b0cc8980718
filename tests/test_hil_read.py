"""The qualification suite reads by the blocks it has read, not by the index the client decoded.

A host that stalls (a loaded machine, a garbage collection) decodes many frames in one read, so
``DeviceClient.sample_index`` runs ahead of the blocks handed out; a suite that stopped reading
when that index passed its goal returned too few blocks (the probe found none and crashed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_bridge.client import SampleBlock
from hil_tests.plate import read_guarded

N = 32
FS = 1600


@dataclass
class _Info:
    sample_rate_hz: int = FS
    counts_per_g: int = 16384


class _StalledClient:
    """A client that has decoded ``ahead`` blocks more than it has handed out."""

    def __init__(self, ahead: int) -> None:
        self.info = _Info()
        self._next = 0
        self._ahead = ahead

    @property
    def sample_index(self) -> int:
        return (self._next + self._ahead) * N

    def read_block(self, timeout_s: float = 1.0) -> SampleBlock:
        counts = np.full(N, 16384, dtype=np.int16)  # at rest: 1 g, no vibration
        block = SampleBlock(self._next * N, counts, counts / 16384.0, 0.0, 45.0, 0.0, 0)
        self._next += 1
        return block


def test_a_read_covers_the_time_asked_even_when_decoding_ran_ahead() -> None:
    client = _StalledClient(ahead=5)
    end = client.sample_index + round(0.1 * FS)
    blocks = read_guarded(client, 0.1)  # type: ignore[arg-type]
    assert blocks[-1].first_index + N >= end


def test_a_read_up_to_an_index_reaches_it() -> None:
    client = _StalledClient(ahead=12)
    blocks = read_guarded(client, 0.0, until_index=10 * N)  # type: ignore[arg-type]
    assert blocks[-1].first_index + N >= 10 * N
    assert read_guarded(_StalledClient(ahead=3), 0.0) == []  # type: ignore[arg-type]
