"""Handshake and stream integrity: what any plate must show before it is driven."""

from __future__ import annotations

import numpy as np

from firmware_bridge.client import DeviceClient
from firmware_bridge.protocol import PROTOCOL_MAJOR

STREAM_S = 3.0


def test_handshake_is_compatible_and_complete(device: DeviceClient) -> None:
    info = device.info
    assert info.protocol_version.split(".")[0] == str(PROTOCOL_MAJOR)
    assert info.device_id
    assert info.sample_rate_hz >= 400, "too slow to sample a 90 Hz drive with its harmonics"
    assert info.counts_per_g > 0
    assert 0.0 < info.max_drive <= 1.0
    assert info.min_freq_hz <= 30.0, "cannot drive down to 30 Hz"
    assert info.max_freq_hz >= 90.0, "cannot drive up to 90 Hz"
    assert 0.0 < info.watchdog_s <= 1.0
    assert 0.0 < info.watchdog_ramp_s <= 1.0


def test_stream_is_gapless_monotonic_and_reads_gravity(device: DeviceClient) -> None:
    fs = device.info.sample_rate_hz
    end = device.sample_index + round(STREAM_S * fs)
    blocks = []
    while device.sample_index < end:
        block = device.read_block(timeout_s=2.0)
        assert block is not None, "the device stopped streaming"
        blocks.append(block)
    starts = np.array([b.first_index for b in blocks])
    sizes = np.array([b.counts.size for b in blocks])
    assert np.all(np.diff(starts) == sizes[:-1]), "sample clock not contiguous"
    assert device.link_stats.lost_frames == 0
    assert device.link_stats.crc_errors == 0
    accel = np.concatenate([b.accel_g for b in blocks])
    assert 0.9 < float(np.mean(accel)) < 1.1, "sensor does not read about +1 g at rest"
