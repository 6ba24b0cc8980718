"""The plate's own acceleration ceiling (docs/protocol.md section 10): announced, and kept.

- Every plate: the ceiling it announces in HELLO (``ceiling_mg``) lies between the host
  supervisor's ceiling and the hard ceiling of the dose limits (firmware_bridge/dose_limits.py),
  so that the host trips first and the plate is the backstop.
- Simulated plates only (capability SIMULATED; a served simulator also needs
  ``--allow-motion``, as every test that drives a plate): the plate is ramped over 2 s towards
  its highest drive at 45 Hz with nobody on it, with no host supervisor watching, and must stop
  by itself: FAULT OVER_ACCELERATION whose detail (the peak it measured, mg) lies just above
  its ceiling and agrees with the host's own fit of the stream, then the reported drive at zero
  within the fault ramp, and the plate still. Driving a real plate past its ceiling is a bench
  procedure, not part of this suite.
"""

from __future__ import annotations

import pytest

from firmware_bridge.client import DeviceClient, SampleBlock
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.errors import DeviceFaultError
from firmware_bridge.protocol import FaultCode
from hil_tests.plate import block_amplitudes, block_s, fit_whole_cycles, not_applicable, output_on
from hil_tests.report import QualificationReport

FREQ_HZ = 45.0
RAMP_S = 2.0  # a soft ramp: the true amplitude rises at most about 0.5 g/s on the empty plate
READ_LIMIT_S = RAMP_S + 1.0
OVERSHOOT_FRACTION = 0.1  # how far past its ceiling the plate may measure itself at the trip
AGREEMENT_FRACTION = 0.05  # the host's fit of the stream and the plate's own measurement
RINGDOWN_S = 0.1
STILL_G = 0.05
HOST_FIT_BLOCKS = 3  # the host fits the blocks that end at the trip (whole cycles of them)


def test_the_announced_ceiling_lies_between_the_hosts_and_the_hard_ceiling(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    ceiling_g = device.info.ceiling_g
    low = qualification.check(
        "ceiling.above_supervisor",
        "announced acceleration ceiling, at least the host supervisor's",
        ceiling_g,
        DOSE_LIMITS.over_acceleration_ceiling_g,
        ">=",
        "g",
    )
    high = qualification.check(
        "ceiling.below_hard_ceiling",
        "announced acceleration ceiling, at most the hard ceiling of the dose limits",
        ceiling_g,
        DOSE_LIMITS.hard_ceiling_g,
        "<=",
        "g",
    )
    failed = [c.describe() for c in (low, high) if not c.passed]
    assert not failed, "; ".join(failed)


@pytest.mark.moves_plate
@pytest.mark.needs_capability("SIMULATED")
@pytest.mark.timeout(60)
def test_the_plate_stops_itself_above_its_ceiling(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    info = device.info
    if not info.min_freq_hz <= FREQ_HZ <= info.max_freq_hz:
        not_applicable(f"the plate does not accept {FREQ_HZ:g} Hz")
    before: list[SampleBlock] = []
    after: list[SampleBlock] = []
    fault: DeviceFaultError | None = None
    with output_on(device, FREQ_HZ):
        device.set_drive(info.max_drive, RAMP_S)
        # Progress is judged by the blocks read (a stalled host decodes ahead of them), and the
        # stretch after the trip is counted from the FAULT's own sample index.
        end = device.sample_index + round(READ_LIMIT_S * info.sample_rate_hz)
        reached = -1
        while reached < end:
            try:
                block = device.read_block(timeout_s=1.0)
            except DeviceFaultError as exc:
                fault = exc
                end = exc.sample_index + round(
                    (info.watchdog_ramp_s + RINGDOWN_S + 0.2) * info.sample_rate_hz
                )
                continue
            if block is None:
                raise AssertionError("the plate stopped streaming samples")
            (after if fault is not None else before).append(block)
            reached = block.first_index + block.counts.size
    if fault is None:
        reached = float(block_amplitudes(before, info.sample_rate_hz, info.counts_per_g).max())
        if reached < info.ceiling_g:
            not_applicable(f"the plate reaches only {reached:.3f} g at its highest drive")
    observed = "no fault" if fault is None else FaultCode(fault.code).name
    tripped = qualification.expect(
        "ceiling.trip",
        f"driven past its ceiling ({info.ceiling_g:g} g) at {FREQ_HZ:g} Hz, over {RAMP_S:g} s",
        observed,
        FaultCode.OVER_ACCELERATION.name,
    )
    assert tripped.passed, tripped.describe()
    assert fault is not None
    assert fault.detail is not None
    measured_g = fault.detail / 1000.0
    near = qualification.check(
        "ceiling.trip_level",
        "the plate's own measured peak at the trip (FAULT detail)",
        measured_g,
        info.ceiling_g * (1.0 + OVERSHOOT_FRACTION),
        "<=",
        "g",
        note=f"above the ceiling, by at most {100 * OVERSHOOT_FRACTION:g}% on a {RAMP_S:g} s ramp",
    )
    above = qualification.check(
        "ceiling.trip_above", "the plate's measured peak at the trip", measured_g,
        info.ceiling_g, ">", "g",
    )  # fmt: skip
    # The blocks the plate measured at the trip: the last ones that end at the boundary the
    # FAULT names (its sample_index), chosen by index, never by where the FAULT sat in the
    # stream (docs/protocol.md 9.2 leaves open whether it precedes that block's SAMPLES).
    window = [b for b in (*before, *after) if b.first_index + b.counts.size <= fault.sample_index]
    window = window[-HOST_FIT_BLOCKS:]
    missing = f"the blocks that end at the trip (sample {fault.sample_index}) were not received"
    assert window, missing
    assert window[-1].first_index + window[-1].counts.size == fault.sample_index, missing
    host_g = fit_whole_cycles(window, info.sample_rate_hz).peak_g
    agree = qualification.check(
        "ceiling.agrees_with_stream",
        "the plate's measured peak against the host's fit of the stream (relative difference)",
        abs(host_g - measured_g) / measured_g,
        AGREEMENT_FRACTION,
        "<=",
        note="a plate whose counts_per_g misstates its sensor disagrees here",
    )
    zero_at = fault.sample_index + round(
        (info.watchdog_ramp_s + block_s(device)) * info.sample_rate_hz
    )
    late = [b for b in after if b.first_index >= zero_at]
    zero = qualification.check(
        "ceiling.drive_zero",
        "reported drive once the fault ramp has run",
        max((b.drive for b in late), default=float("nan")),
        0.0,
        "==",
    )
    still_at = zero_at + round(RINGDOWN_S * info.sample_rate_hz)
    still_blocks = [b for b in after if b.first_index >= still_at]
    amplitudes = block_amplitudes(still_blocks, info.sample_rate_hz, info.counts_per_g)
    still = qualification.check(
        "ceiling.plate_still",
        "plate amplitude after the fault ramp and ring-down",
        float(amplitudes.max()) if amplitudes.size else float("nan"),
        STILL_G,
        "<=",
        "g",
    )
    failed = [c.describe() for c in (near, above, agree, zero, still) if not c.passed]
    assert not failed, "; ".join(failed)
