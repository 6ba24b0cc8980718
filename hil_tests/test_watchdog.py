"""The firmware watchdog: when the host goes silent, the plate stops by itself.

The plate is driven at 45 Hz to 0.2 of full scale, or less where the plate's response, measured
first with a small probe drive, would take that past the dose limits under its ceiling; then
the host sends one last frame, a STATUS_REQUEST, and reads the raw port without sending
anything (the client, which would send heartbeats, is bypassed). Judged from what the device sends:

- the FAULT frame: code HOST_WATCHDOG, tripped ``watchdog_s`` after the device handled the
  last host frame, give or take one block (the device checks at block boundaries);
- the reported drive: down to zero within ``watchdog_ramp_s`` (plus a block) of the trip, never
  stepping faster than the slew limit;
- the accelerometer: the sine-fit amplitude of every 20 ms block falls to the plate's noise
  level (measured at rest before the test) within ``watchdog_s + watchdog_ramp_s`` + margin of
  the last host frame, and stays there.

Every instant is on the device's sample clock, and "the last host frame" is the block boundary
at which the device handled it: the ``sample_index`` of the STATUS that answers it
(docs/protocol.md 9.2). Nothing depends on the order in which a device sends a finished block's
SAMPLES and a boundary's replies, which the protocol leaves open, and link latency does not
enter: the same limits hold through a pty, TCP or a USB adapter. The limits are the ones the
device announces in HELLO. Afterwards the latched fault must refuse SET_OUTPUT on
(FAULT_LATCHED, which the client reports as the fault itself) until CLEAR_FAULT, which leaves
the device IDLE.
"""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import CommandRefusedError, DeviceFaultError
from firmware_bridge.protocol import DeviceState, FaultCode, NakReason
from hil_tests.plate import (
    Q16_LSB,
    block_amplitudes,
    block_s,
    drain,
    drive_within_dose,
    go_silent,
    max_drive_step,
    measure_noise_floor,
    output_on,
    read_guarded,
    refusal_name,
    slew_note,
    slew_per_block,
)
from hil_tests.report import QualificationReport

FREQ_HZ = 45.0
DRIVE = 0.2
RAMP_S = 0.2
SETTLE_S = 0.4
RINGDOWN_S = 0.05  # the plate's own motion after the drive has reached zero
LISTEN_AFTER_S = 0.5  # listen this long beyond the expected quiet time
# The driven amplitude must stand this far above the noise level, so that "at noise level"
# means the plate's motion has fallen to a fifth or less.
MIN_SIGNAL_TO_NOISE = 5.0


@pytest.mark.moves_plate
@pytest.mark.timeout(60)
def test_silent_host_trips_the_watchdog_and_the_plate_stops(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    info = device.info
    fs = info.sample_rate_hz
    blk = block_s(device)
    noise = measure_noise_floor(device, FREQ_HZ)
    drive, _ = drive_within_dose(device, FREQ_HZ, DRIVE, qualification, "watchdog")
    with output_on(device, FREQ_HZ):
        device.set_drive(drive, RAMP_S)
        driven = read_guarded(device, RAMP_S + SETTLE_S)
        driven += drain(device)
        silence = go_silent(
            device, info.watchdog_s + info.watchdog_ramp_s + 2 * blk + LISTEN_AFTER_S
        )
        silent_from, samples, faults = silence.silent_from, silence.samples, silence.faults
        amps_driven = block_amplitudes(driven[-10:], fs, info.counts_per_g)
        amps = block_amplitudes(samples, fs, info.counts_per_g)
        ends = np.array([s.first_index + s.counts.size for s in samples])
        loud = np.flatnonzero(amps > noise.level_g)
        quiet_from = int(ends[loud[-1]]) if loud.size else silent_from
        quiet_after_s = (quiet_from - silent_from) / fs
        limit_s = info.watchdog_s + info.watchdog_ramp_s + 2 * blk + RINGDOWN_S
        observed_after_s = (int(ends[-1]) - silent_from) / fs if samples else 0.0

        qualification.info("watchdog.noise_level", "noise level at rest", noise.level_g, "g")
        checks = [
            qualification.check(
                "watchdog.signal_to_noise",
                "driven amplitude over the noise level (the test can see the plate stop)",
                round(float(np.median(amps_driven)) / noise.level_g, 1),
                MIN_SIGNAL_TO_NOISE,
                ">=",
            ),
            qualification.expect(
                "watchdog.fault",
                "FAULT frame sent when the host went silent",
                ", ".join(FaultCode(f.code).name for f in faults) or "none",
                FaultCode.HOST_WATCHDOG.name,
            ),
            qualification.check(
                "watchdog.quiet_after",
                "amplitude at noise level (20 ms sine fits) after the last host frame",
                round(quiet_after_s, 3),
                round(limit_s, 3),
                "<=",
                "s",
                note=f"watchdog {info.watchdog_s:g} s + ramp {info.watchdog_ramp_s:g} s "
                f"+ 2 blocks + {RINGDOWN_S:g} s ringdown",
            ),
            qualification.check(
                "watchdog.observed_quiet",
                "time the stream was watched after the last host frame",
                round(observed_after_s, 3),
                round(limit_s + 0.2, 3),
                ">=",
                "s",
            ),
        ]
        if faults:
            fault = faults[0]
            trip_after_ms = round((fault.sample_index - silent_from) / fs * 1e3, 1)
            checks += [
                qualification.check(
                    "watchdog.trip_late",
                    "watchdog trip after the last host frame (device clock)",
                    trip_after_ms,
                    round((info.watchdog_s + blk) * 1e3, 1),
                    "<=",
                    "ms",
                    note="the watchdog time plus one block (checked at block boundaries)",
                ),
                qualification.check(
                    "watchdog.trip_early",
                    "watchdog trip after the last host frame (device clock)",
                    trip_after_ms,
                    round((info.watchdog_s - blk) * 1e3, 1),
                    ">=",
                    "ms",
                    note="it must not trip while the host is still within its time",
                ),
            ]
            after_trip = [s for s in samples if s.first_index >= fault.sample_index]
            zero_at = next((s.first_index for s in after_trip if s.drive == 0.0), None)
            ramp_s = None if zero_at is None else (zero_at - fault.sample_index) / fs
            checks.append(
                qualification.check(
                    "watchdog.drive_zero",
                    "reported drive at zero after the trip",
                    None if ramp_s is None else round(ramp_s, 3),
                    round(info.watchdog_ramp_s + blk, 3),
                    "<=",
                    "s",
                    note="the safety ramp plus one block",
                )
            )
        checks.append(
            qualification.check(
                "watchdog.drive_step",
                "largest reported drive change between blocks while stopping",
                round(max_drive_step(samples), 5),
                round(slew_per_block(device) + Q16_LSB, 5),
                "<=",
                note=slew_note(device),
            )
        )
        failed = [c.describe() for c in checks if not c.passed]
        assert not failed, "; ".join(failed)

        # The fault latches: output on is refused until CLEAR_FAULT.
        try:
            device.start_output()
            answer = "accepted"
        except (CommandRefusedError, DeviceFaultError) as exc:
            answer = refusal_name(exc)
        latched = qualification.expect(
            "watchdog.latched",
            "SET_OUTPUT on refused while the watchdog fault is latched",
            answer,
            NakReason.FAULT_LATCHED.name,
        )
        assert latched.passed, latched.describe()
        device.clear_fault()
        status = device.request_status()
        cleared = qualification.expect(
            "watchdog.cleared",
            "state after CLEAR_FAULT",
            DeviceState(status.state).name,
            DeviceState.IDLE.name,
        )
        assert cleared.passed, cleared.describe()
