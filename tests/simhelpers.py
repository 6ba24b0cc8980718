"""Shared helpers for tests that drive the simulated plate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.client import DeviceClient
from firmware_bridge.codec import FrameDecoder
from firmware_bridge.protocol import Message, decode_message


def load_truth(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def run_blocks(client: DeviceClient, seconds: float) -> list[Any]:
    """Read blocks for ``seconds`` of device time (the client keeps sending heartbeats)."""
    end = client.sample_index + round(seconds * client.info.sample_rate_hz)
    blocks = []
    while client.sample_index < end:
        block = client.read_block()
        assert block is not None, "device stopped streaming"
        blocks.append(block)
    return blocks


def listen_silently(client: DeviceClient, seconds: float) -> list[Message]:
    """Read the raw stream for ``seconds`` of device time without sending anything."""
    decoder = FrameDecoder()
    fs = client.info.sample_rate_hz
    messages: list[Message] = []
    read = 0.0
    while read < seconds:
        for frame in decoder.feed(client.port.read(4096)):
            message = decode_message(frame)
            messages.append(message)
            counts = getattr(message, "counts", None)
            if counts is not None:
                read += counts.size / fs
    return messages
