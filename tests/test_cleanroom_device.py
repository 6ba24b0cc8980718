"""The clean-room device (written from docs/protocol.md alone) serves the product's host.

Kept in CI so that the host never starts to rely on something only the reference device does:
a handshake, a short driven stream and a watchdog trip, through `DeviceClient`, over TCP, in
real time (about two seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from firmware_bridge.client import DeviceClient
from firmware_bridge.protocol import DeviceState, FaultCode
from hil_tests.cleanroom.device import DeviceConfig, cobs_decode, encode_frame, serve
from hil_tests.plate import block_amplitudes, go_silent


def test_frames_follow_the_documents_vectors() -> None:
    # docs/protocol.md 13.3 `heartbeat` and `heartbeat-seq-wrap`
    assert encode_frame(0x05, 5, b"") == bytes.fromhex("03050503051400")
    assert encode_frame(0x05, 65535, b"") == bytes.fromhex("0605fffffff600")
    assert cobs_decode(bytes.fromhex("050102")) is None  # 13.5 `bad-cobs`: points past the end
    assert cobs_decode(bytes.fromhex("030505030514")) == bytes.fromhex("0505000514")


def test_handshake_stream_and_watchdog_trip(tmp_path: Path) -> None:
    config = DeviceConfig()
    with serve(tmp_path / "nv", config) as server, DeviceClient.open(server.url) as client:
        info = client.info
        assert info.device_id == config.device_id
        assert info.sample_rate_hz == config.sample_rate_hz
        assert info.block_samples == config.block_samples
        assert info.watchdog_s == config.watchdog_ms / 1000
        assert "COUNTERSIGN" in info.capabilities
        assert client.request_status().state == DeviceState.IDLE

        client.set_frequency(45.0)
        client.start_output()
        client.set_drive(0.1, 0.1)
        blocks = client.read_for(0.4)
        assert blocks, "no SAMPLES while driven"
        starts = [b.first_index for b in blocks]
        assert np.all(np.diff(starts) == config.block_samples)
        assert blocks[-1].drive > 0.09
        amps = block_amplitudes(blocks[-3:], info.sample_rate_hz, info.counts_per_g)
        assert np.all(amps > 0.1)  # about 0.3 g at 45 Hz on the empty plate
        assert client.link_stats.lost_frames == 0

        silence = go_silent(client, info.watchdog_s + info.watchdog_ramp_s + 0.2)
        codes = [f.code for f in silence.faults]
        assert codes == [FaultCode.HOST_WATCHDOG]
        fault = silence.faults[0]
        block = config.block_samples
        after = fault.sample_index - silence.silent_from
        watchdog_samples = config.watchdog_ms * config.sample_rate_hz // 1000
        assert watchdog_samples < after <= watchdog_samples + block
        ramp_end = fault.sample_index + config.watchdog_ramp_ms * config.sample_rate_hz // 1000
        late = [s for s in silence.samples if s.first_index >= ramp_end + block]
        assert late
        assert all(s.drive == 0 for s in late)
