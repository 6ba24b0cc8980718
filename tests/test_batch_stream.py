"""Open-loop streaming in batches (issue 11): the device steps many blocks per call and the host
reads many blocks per call, with the same bytes, the same samples and every check at its block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.client import DeviceClient, SampleBatch, SampleBlock
from firmware_bridge.codec import encode_frame, encode_samples_records, samples_records
from firmware_bridge.errors import DeviceFaultError, LinkLostError
from firmware_bridge.protocol import (
    FaultCode,
    Heartbeat,
    Message,
    Samples,
    SetDrive,
    SetFrequency,
    SetOutput,
    drive_to_q16,
    encode_message,
)
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.sim.device import SimulatedDevice
from tests.simhelpers import load_truth

# (block, message) the host sends before that block; heartbeats are added every 5 blocks
_START: list[tuple[int, Message]] = [
    (30, SetFrequency(45_000)),
    (31, SetOutput(1)),
    (32, SetDrive(drive_to_q16(0.1), 400)),
]


def _host_run(
    url: str, blocks: int, batched: bool, commands: list[tuple[int, Message]], beat_until: int
) -> bytes:
    """Step a device ``blocks`` blocks with the host's bytes at fixed blocks; its output bytes.

    Heartbeats every 5 blocks until block ``beat_until``. ``batched`` steps with step_many
    between host writes, else block by block.
    """
    device = SimulatedDevice(parse_sim_url(url))
    writes = dict(commands)
    for block in range(35, beat_until, 5):
        writes.setdefault(block, Heartbeat())
    out = bytearray()
    seq = 0
    block = 0
    while block < blocks:
        message = writes.get(block)
        if message is not None:
            device.receive(encode_message(message, seq))
            seq += 1
        following = [b for b in writes if b > block]
        until = min([blocks, *following])
        if batched:
            while block < until:
                block += device.step_many(until - block)
                out += device.take_output()
        else:
            device.step()
            block += 1
            out += device.take_output()
    device.close()
    return bytes(out)


@pytest.mark.parametrize(
    ("name", "url", "commands", "beat_until"),
    [
        ("hold", "sim://?speed=max&seed=4&mass=70", _START, 400),
        # a drive the empty plate cannot take: the firmware ceiling trips mid-batch
        (
            "ceiling",
            "sim://?speed=max&seed=5&mass=0",
            [*_START[:2], (32, SetDrive(drive_to_q16(0.9), 3000))],
            400,
        ),
        # the host goes silent at block 200: the watchdog trips mid-batch
        ("watchdog", "sim://?speed=max&seed=6&mass=70", _START, 200),
        # a slow, lossy, noisy link: host bytes land mid-span, frames are dropped and damaged
        (
            "link",
            "sim://?speed=max&seed=11&mass=70&latency_ms=7&drop_rate=0.02&corrupt_rate=0.0002",
            _START,
            400,
        ),
        # a load step scheduled inside what would be a batch
        ("event", "sim://?speed=max&seed=7&mass=70&load_step_at=5.03&load_step_kg=20", _START, 400),
    ],
)
def test_stepping_many_blocks_gives_the_bytes_of_stepping_one_at_a_time(
    tmp_path: Path, name: str, url: str, commands: list[tuple[int, Message]], beat_until: int
) -> None:
    single = _host_run(f"{url}&truth={tmp_path / 'single.npz'}", 400, False, commands, beat_until)
    many = _host_run(f"{url}&truth={tmp_path / 'many.npz'}", 400, True, commands, beat_until)
    assert single == many
    first, second = load_truth(tmp_path / "single.npz"), load_truth(tmp_path / "many.npz")
    for field in ("t_s", "accel_g", "drive", "sample_index", "coil_temp_c", "events"):
        np.testing.assert_array_equal(first[field], second[field], err_msg=field)
    if name in ("ceiling", "watchdog"):
        code = FaultCode.OVER_ACCELERATION if name == "ceiling" else FaultCode.HOST_WATCHDOG
        assert any(f"fault:{code.name}" in e for e in first["events"])


def test_stepping_many_blocks_takes_several_per_call_at_a_constant_drive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken: list[int] = []
    take = SimulatedDevice._take_ahead_many

    def counted(self: SimulatedDevice, max_blocks: int) -> int:
        taken.append(take(self, max_blocks))
        return taken[-1]

    monkeypatch.setattr(SimulatedDevice, "_take_ahead_many", counted)
    device = SimulatedDevice(parse_sim_url("sim://?speed=max&seed=4&mass=70"))
    for _ in range(60):  # 300 blocks, the output off: constant inputs
        assert device.step_many(5) == 5
    assert max(taken) == 5
    assert sum(taken) >= 250  # the rest: the first block of each run-ahead, and the boot


def test_samples_frames_laid_out_in_bulk_are_the_frames_one_at_a_time() -> None:
    rng = np.random.default_rng(1)
    counts = rng.integers(-32768, 32768, size=(6, 32)).astype(np.int16)
    counts[2] = 0  # COBS with many zeros
    phases = [0, 1, 2**31, 2**32 - 1, 12345, 777]
    records = samples_records(phases, 45_000, 6554, counts)
    records["seq"] = [65533, 65534, 65535, 0, 1, 2]
    records["first_index"] = [0, 32, 64, 2**40, 2**63 - 1, 5]
    wires = encode_samples_records(records)
    for j, wire in enumerate(wires):
        message = Samples(int(records["first_index"][j]), phases[j], 45_000, 6554, counts[j].copy())
        assert wire == encode_frame(Samples.TYPE, int(records["seq"][j]), message.pack())


def _stream(url: str, batched: bool, seconds: float) -> list[SampleBlock]:
    with DeviceClient.open(url) as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(0.1, 0.4)
        blocks: list[SampleBlock] = []
        end = dev.sample_index + round(seconds * dev.info.sample_rate_hz)
        while dev.sample_index < end:
            if batched:  # never past ``end`` (as controller.openloop reads)
                batch = dev.read_blocks(-(-(end - dev.sample_index) // dev.info.block_samples))
                assert batch is not None
                assert isinstance(batch, SampleBatch)
                blocks += batch.blocks()
            else:
                block = dev.read_block()
                assert block is not None
                blocks.append(block)
        dev.set_drive(0.05, 0.1)
        blocks += dev.read_for(0.5)
        return blocks


def test_a_batch_read_gives_the_samples_of_block_by_block_reads(tmp_path: Path) -> None:
    url = "sim://?speed=max&seed=8&mass=60&truth="
    single = _stream(url + str(tmp_path / "single.npz"), False, 6.0)
    many = _stream(url + str(tmp_path / "many.npz"), True, 6.0)
    assert len(many) >= len(single) >= 300
    for a, b in zip(single, many, strict=False):
        assert (a.first_index, a.phase_rad, a.freq_hz, a.drive, a.missing_before) == (
            b.first_index,
            b.phase_rad,
            b.freq_hz,
            b.drive,
            b.missing_before,
        )
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.accel_g, b.accel_g)
    first, second = load_truth(tmp_path / "single.npz"), load_truth(tmp_path / "many.npz")
    common = min(first["accel_g"].size, second["accel_g"].size) - 1600  # before the last drive
    np.testing.assert_array_equal(first["accel_g"][:common], second["accel_g"][:common])


def test_a_batch_read_moves_many_blocks_per_call_and_keeps_the_heartbeat() -> None:
    with DeviceClient.open("sim://?speed=max&seed=9&mass=70") as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(0.1, 0.2)
        dev.read_for(0.5)
        sizes = []
        sent = dev.frames_sent
        for _ in range(100):
            batch = dev.read_blocks(64)
            assert batch is not None
            sizes.append(len(batch))
            assert np.all(np.diff(batch.first_index) == dev.info.block_samples)
        heartbeats = dev.frames_sent - sent
    assert sum(sizes) >= 400
    assert np.median(sizes) >= 4  # a heartbeat is due every 5 blocks (0.1 s of 20 ms blocks)
    assert heartbeats >= sum(sizes) // 5 - 1


def test_a_fault_inside_a_batch_is_delivered_after_the_blocks_before_it() -> None:
    url = "sim://?speed=max&seed=5&mass=0"
    with DeviceClient.open(url) as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(0.9, 3.0)  # the empty plate goes over the firmware ceiling on the way
        delivered: list[int] = []

        def read_until_the_fault() -> None:
            for _ in range(500):
                batch = dev.read_blocks(64)
                assert batch is not None
                delivered.append(batch.end_index)

        with pytest.raises(DeviceFaultError) as caught:
            read_until_the_fault()
    fault = caught.value
    assert fault.code == FaultCode.OVER_ACCELERATION
    # every block the device sent before its FAULT was handed out, none after it
    assert delivered[-1] == fault.sample_index


def test_a_batch_read_refuses_a_batch_of_nothing() -> None:
    with (
        DeviceClient.open("sim://?speed=max&seed=1") as dev,
        pytest.raises(ValueError, match="max_blocks"),
    ):
        dev.read_blocks(0)


def test_a_batch_read_on_a_port_that_is_not_paced_by_reads_takes_what_has_arrived() -> None:
    # speed=20: the device keeps its own clock (as a real plate does); the host reads what came
    with DeviceClient.open("sim://?speed=20&seed=10&mass=70") as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(0.1, 0.2)
        start = dev.sample_index
        batches = []
        while dev.sample_index < start + 3 * 1600:  # 3 s of device time, 0.15 s of wall time
            batch = dev.read_blocks(64)
            assert batch is not None
            batches.append(batch)
        dev.set_drive(0.0, 0.1)
        dev.read_for(0.2)
    joined = SampleBatch.join(batches)
    assert np.all(np.diff(joined.first_index) == 32)
    assert not joined.missing_before.any()
    assert joined.drive[-1] == pytest.approx(0.1, abs=1e-4)


def test_a_batch_read_reports_a_pulled_cable_as_a_lost_link() -> None:
    with DeviceClient.open("sim://?speed=max&seed=1&disconnect_at=3") as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(0.1, 0.2)

        def read_on() -> None:
            for _ in range(200):
                dev.read_blocks(64)

        with pytest.raises(LinkLostError, match="disconnected"):
            read_on()
        assert dev.sample_index <= 3 * 1600


def test_a_block_of_another_length_ends_a_batch_and_starts_the_next() -> None:
    """A device may send a SAMPLES frame of another length (docs/protocol.md does not forbid
    it); a batch holds blocks of one length, so such a block starts the next batch instead of
    failing the read (and the open-loop drive's ramp down with it)."""
    with DeviceClient.open("sim://?speed=max&seed=1") as dev:
        i = dev.sample_index
        dev._on_samples(Samples(i, 0, 45000, 0, np.full(32, 8192, np.int16)))
        dev._on_samples(Samples(i + 32, 0, 45000, 0, np.full(16, 8192, np.int16)))
        first = dev.read_blocks(64)
        second = dev.read_blocks(64)
    assert first is not None
    assert second is not None
    assert (len(first), first.counts.shape[1]) == (1, 32)
    assert (second.first_index[0], second.counts.shape[1]) == (i + 32, 16)


def test_the_open_loop_drive_ramps_down_softly_when_the_host_itself_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host-side error inside the hold (not the link's) still ends in the soft ramp down
    before it propagates, not in the firmware watchdog's fault ramp."""
    from controller import openloop

    def broken(self: openloop.SteadyFit, batch: SampleBatch) -> None:
        raise RuntimeError("a host bug")

    monkeypatch.setattr(openloop.SteadyFit, "push_batch", broken)
    with DeviceClient.open("sim://?speed=max&seed=1") as dev:
        drives: list[tuple[float, float]] = []
        set_drive = dev.set_drive

        def recorded(drive: float, ramp_s: float = 0.0) -> None:
            drives.append((drive, ramp_s))
            set_drive(drive, ramp_s)

        monkeypatch.setattr(dev, "set_drive", recorded)
        with pytest.raises(RuntimeError, match="a host bug"):
            openloop.drive_open_loop(dev, 45.0, 0.1, 5.0, ramp_up_s=0.2, ramp_down_s=0.3)
        status = dev.request_status()
    assert drives[-1] == (0.0, 0.3)
    assert (status.output_on, status.drive_q16, status.fault_code) == (0, 0, 0)
