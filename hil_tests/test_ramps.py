"""Soft ramps: the plate never jolts, whatever the host asks for.

Three requests, each judged from the SAMPLES stream (reported drive at each block's first
sample, and the accelerometer fitted block by block at the drive phase):

Every drive is chosen from the plate's measured response (a small probe drive first), so that
no plate passes the dose limits' highest target under the ceiling it announces:

1. a 1 s ramp up to 0.2 of full scale (or less, as above): the reported drive follows the
   straight line ``d0 + (target - d0) k / N`` of docs/protocol.md 9.4 within one block's worth
   of ramp, and the measured amplitude rises with it (correlation with the drive, no jump
   between blocks);
2. an instant drop (``ramp_ms = 0``) from a drive chosen from the plate's measured response
   (1.5 blocks' slew, or less where that would pass the dose limits' highest target under the
   ceiling the plate announces): the device stretches it to the slew limit it announces in
   HELLO (``slew_full_scale_ms``, 100 ms on the reference plate), so no block-to-block change
   of the reported drive exceeds ``block_s / slew`` and the fall takes at least
   ``drive x slew``. On a plate as responsive as the default simulated one (3.9 g per unit
   drive at 45 Hz) the drop starts below one block's slew, so the fall is resolved only to a
   block. A drop is tested rather than
   a jump up: the slew limit is the same, and a device that fails it stops abruptly instead
   of jolting whoever might stand nearby;
3. SET_OUTPUT off: the drive ramps to zero over the stop ramp the device announces
   (``stop_ramp_ms``; not a cut), SET_DRIVE is refused with BUSY meanwhile (or OUTPUT_OFF when
   the stop ramp is at most one block and may have ended before the SET_DRIVE was handled),
   and the device ends IDLE with the output off.
"""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import CommandRefusedError
from firmware_bridge.protocol import DeviceState, NakReason, SetDrive, drive_to_q16
from hil_tests.plate import (
    Q16_LSB,
    block_amplitudes,
    block_s,
    drive_and_settle,
    drive_within_dose,
    fit_whole_cycles,
    max_drive_step,
    measure_noise_floor,
    nak_name,
    output_on,
    read_guarded,
    slew_note,
    slew_per_block,
)
from hil_tests.report import QualificationReport

FREQ_HZ = 45.0
RAMP_DRIVE = 0.2
RAMP_S = 1.0
MIN_CORRELATION = 0.98  # block amplitude against reported drive over the ramp
JUMP_BLOCKS = 3.0  # largest amplitude rise between blocks, in blocks' worth of ramp (+ noise)


@pytest.mark.moves_plate
@pytest.mark.timeout(60)
def test_a_ramp_up_is_linear_and_the_amplitude_rises_smoothly(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    info = device.info
    fs = info.sample_rate_hz
    blk = block_s(device)
    target, _ = drive_within_dose(device, FREQ_HZ, RAMP_DRIVE, qualification, "ramp")
    noise = measure_noise_floor(device, FREQ_HZ)
    with output_on(device, FREQ_HZ):
        device.set_drive(target, RAMP_S)
        blocks = read_guarded(device, RAMP_S + 0.3)

    drives = np.array([b.drive for b in blocks])
    starts = np.array([b.first_index for b in blocks])
    rising = np.flatnonzero(drives > 0.0)
    assert rising.size, "the reported drive never rose: SET_DRIVE had no effect"
    ramp_start = int(starts[rising[0] - 1]) if rising[0] > 0 else int(starts[0])
    ramp_n = RAMP_S * fs
    ideal = target * np.clip((starts - ramp_start) / ramp_n, 0.0, 1.0)
    in_ramp = (starts >= ramp_start) & (starts <= ramp_start + ramp_n)
    deviation = float(np.max(np.abs(drives[in_ramp] - ideal[in_ramp])))
    per_block = target * blk / RAMP_S

    amps = block_amplitudes(blocks, fs, info.counts_per_g)
    ramp_blocks = np.flatnonzero(in_ramp)[:-1]  # the block's mean drive needs the next block
    mean_drive = (drives[ramp_blocks] + drives[ramp_blocks + 1]) / 2.0
    correlation = float(np.corrcoef(mean_drive, amps[ramp_blocks])[0, 1])
    final_g = float(np.median(amps[-5:]))
    largest_rise = float(np.max(np.diff(amps[ramp_blocks])))
    rise_limit = JUMP_BLOCKS * final_g * blk / RAMP_S + noise.level_g
    checks = [
        qualification.check(
            "ramp.drive_linear",
            f"reported drive off the linear {RAMP_S:g} s ramp to {target:g} (largest)",
            round(deviation, 5),
            round(per_block + Q16_LSB, 5),
            "<=",
            note="one block's worth of ramp",
        ),
        qualification.check(
            "ramp.drive_step",
            "largest reported drive change between blocks during the ramp",
            round(max_drive_step(blocks), 5),
            round(slew_per_block(device) + Q16_LSB, 5),
            "<=",
            note=slew_note(device),
        ),
        qualification.check(
            "ramp.amplitude_follows_drive",
            "correlation of the 20 ms amplitude with the reported drive over the ramp",
            round(correlation, 4),
            MIN_CORRELATION,
            ">=",
        ),
        qualification.check(
            "ramp.amplitude_jump",
            "largest rise of the 20 ms amplitude from one block to the next",
            round(largest_rise, 4),
            round(rise_limit, 4),
            "<=",
            "g",
            note=f"{JUMP_BLOCKS:g} blocks' worth of the ramp + the noise level; a step would "
            f"be about {final_g:.2f} g",
        ),
    ]
    qualification.info("ramp.final_amplitude", f"amplitude at drive {target:g}", final_g, "g")
    failed = [c.describe() for c in checks if not c.passed]
    assert not failed, "; ".join(failed)


@pytest.mark.moves_plate
@pytest.mark.timeout(60)
def test_an_instant_drop_is_slew_limited(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    info = device.info
    fs = info.sample_rate_hz
    limit = slew_per_block(device)
    # More than one block's slew where the amplitude allows (the limit then shows across
    # blocks); a responsive plate (3.9 g per unit drive) would reach 1.2 g there.
    drive, allowed_g = drive_within_dose(device, FREQ_HZ, 1.5 * limit, qualification, "slew")
    with output_on(device, FREQ_HZ):
        top_g = fit_whole_cycles(drive_and_settle(device, drive, 0.5), fs).peak_g
        device.set_drive(0.0, 0.0)
        blocks = read_guarded(device, 0.2)

    drives = np.array([b.drive for b in blocks])
    starts = np.array([b.first_index for b in blocks])
    at_top = np.flatnonzero(drives >= drive - Q16_LSB)
    at_zero = np.flatnonzero(drives == 0.0)
    assert at_top.size, f"the drive never reached {drive:g}: {drives}"
    assert at_zero.size, f"no drop from {drive:g} to 0 seen: {drives}"
    fall_s = (starts[at_zero[0]] - starts[at_top[-1]]) / fs
    checks = [
        qualification.check(
            "slew.drive_step",
            f"largest reported drive change between blocks after a 0 ms drop from {drive:g}",
            round(max_drive_step(blocks), 5),
            round(limit + Q16_LSB, 5),
            "<=",
            note=slew_note(device),
        ),
        qualification.check(
            "slew.fall_time",
            f"time from {drive:g} to 0 after a 0 ms drop (block resolution)",
            round(fall_s, 4),
            round(drive * info.full_scale_slew_s, 4),
            ">=",
            "s",
        ),
    ]
    # the drive was chosen from a measured response: what the plate did stays in the limits
    assert top_g <= 1.05 * allowed_g, f"{top_g:.3f} g at drive {drive:g}: above {allowed_g:.3f} g"
    failed = [c.describe() for c in checks if not c.passed]
    assert not failed, "; ".join(failed)


@pytest.mark.moves_plate
@pytest.mark.timeout(60)
def test_output_off_ramps_down_and_refuses_drive_meanwhile(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    info = device.info
    fs = info.sample_rate_hz
    blk = block_s(device)
    drive, _ = drive_within_dose(device, FREQ_HZ, RAMP_DRIVE, qualification, "stop")
    noise = measure_noise_floor(device, FREQ_HZ)
    with output_on(device, FREQ_HZ):
        device.set_drive(drive, 0.3)
        read_guarded(device, 0.5)
        device.stop_output(wait=False)
        try:  # reaches the device at the same block boundary as the stop, or later
            device.command(SetDrive(drive_to_q16(drive / 2), 100))
            answer = "accepted"
        except CommandRefusedError as exc:
            answer = nak_name(exc.reason_code)
        blocks = read_guarded(device, info.stop_ramp_s + 0.2)
        status = device.request_status()

    drives = np.array([b.drive for b in blocks])
    starts = np.array([b.first_index for b in blocks])
    at_zero = np.flatnonzero(drives == 0.0)
    assert at_zero.size, f"the reported drive never reached zero after SET_OUTPUT off: {drives}"
    # The stop ramp starts at the boundary of the last block that still reports the full drive
    # (its first sample is the ramp's first, at the old amplitude: docs/protocol.md 9.4). A
    # ramp shorter than a block shows no block in between, so that block is found by its drive,
    # never assumed to be the first block read.
    at_top = np.flatnonzero(drives[: at_zero[0]] >= drive - Q16_LSB)
    assert at_top.size, f"no block at drive {drive:g} before the stop was read: {drives}"
    top = int(starts[at_top[-1]])
    ramp_s = (starts[at_zero[0]] - top) / fs
    # SET_DRIVE sent right after SET_OUTPUT off is handled at the stop's boundary or the next:
    # BUSY while the stop ramp runs; a stop ramp that ends within one block may already have
    # switched the output off by then, and docs/protocol.md 9.6 answers OUTPUT_OFF.
    allowed = [NakReason.BUSY.name]
    if info.stop_ramp_s <= blk:
        allowed.append(NakReason.OUTPUT_OFF.name)
    amps = block_amplitudes(blocks, fs, info.counts_per_g)
    checks = [
        qualification.expect_one_of(
            "stop.busy",
            "SET_DRIVE while the output ramps down after SET_OUTPUT off",
            answer,
            allowed,
            note="OUTPUT_OFF too when the stop ramp is shorter than a block",
        ),
        qualification.check(
            "stop.ramp_min",
            "reported drive ramp to zero after SET_OUTPUT off",
            round(ramp_s, 4),
            round(info.stop_ramp_s - blk, 4),
            ">=",
            "s",
            note="the stop ramp announced in HELLO, at block resolution: a ramp, not a cut",
        ),
        qualification.check(
            "stop.ramp_max",
            "reported drive ramp to zero after SET_OUTPUT off",
            round(ramp_s, 4),
            round(info.stop_ramp_s + blk, 4),
            "<=",
            "s",
        ),
        qualification.check(
            "stop.quiet",
            "amplitude of the last block after the stop",
            round(float(amps[-1]), 4),
            round(noise.level_g, 4),
            "<=",
            "g",
            note="the noise level at rest",
        ),
        qualification.expect(
            "stop.idle",
            "state after the stop ramp",
            f"{DeviceState(status.state).name}, output {'on' if status.output_on else 'off'}",
            f"{DeviceState.IDLE.name}, output off",
        ),
    ]
    failed = [c.describe() for c in checks if not c.passed]
    assert not failed, "; ".join(failed)
