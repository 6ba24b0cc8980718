"""Faults only a simulated plate can be made to have: a dead sensor and an open coil.

A real plate cannot be asked to break its sensor or its coil on cue, so these run only where
the device announces FAULT_INJECTION and the suite opens it by a ``sim://`` URL: the same
plate (the device URL with its seed and load) plus one fault parameter, injected about 1 s into
the hold of a closed-loop exposure at 0.3 g, 45 Hz. The protocol 1.0 simulator reports neither
fault itself (docs/protocol.md 12); the host's safety supervisor must find each one in the
sample stream. Judged from the stream the loop read (a tap on the client), on the device clock:

- the exposure trips with the reason docs/safety.md gives for the fault;
- the trip comes within the detection bound of docs/safety.md 2.2 after the fault;
- the reported drive is zero within TRIP_RAMP_S + 2 blocks of the end of the tripping block
  (the host ramp; docs/safety.md 2.3), and the output ends off.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, urlencode

import pytest

from controller.calibration import Calibration
from controller.loop import ExposureSettings, run_exposure
from controller.safety import TRIP_RAMP_S, SafetyLimits, TripReason
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient
from firmware_bridge.sim.config import parse_sim_url
from hil_tests.plate import StreamTap, is_simulator_url, not_applicable
from hil_tests.report import QualificationReport

FREQ_HZ = 45.0
TARGET_G = 0.3
RAMP_UP_S = 1.0
HOLD_S = 3.0
INTO_HOLD_S = 1.0
HANDSHAKE_ALLOWANCE_S = 0.2  # plant time from the device's first sample to the exposure start
LIMITS = SafetyLimits()
WINDOW_S = ExposureSettings().window_s

# Fault: URL parameter, the trip reasons that name it (the first is the precise one) and the
# detection bound of docs/safety.md 2.2. An open coil leaves the plate motionless; read by a
# sensor quieter than one count (ADXL355 class on a 256 counts/g scale) a motionless plate is
# a constant, which the supervisor's stuck-sensor check, first in its order, reports first.
# Either reason stops the plate in time; the report shows which one fired.
FAULTS: dict[str, tuple[str, tuple[TripReason, ...], float]] = {
    "sensor_stuck": ("sensor_stuck_at", (TripReason.SENSOR_STUCK,), LIMITS.stuck_window_s),
    "sensor_disconnected": ("sensor_disconnected_at", (TripReason.SENSOR_GRAVITY,), WINDOW_S),
    "open_circuit": (
        "open_circuit_at",
        (TripReason.NO_RESPONSE, TripReason.SENSOR_STUCK),
        WINDOW_S + LIMITS.no_response_hold_s,
    ),
}


def with_fault(url: str, key: str, at_s: float) -> str:
    """``url`` plus ``key=at_s``; skips the test if the URL already sets that parameter."""
    base, _, query_text = url.partition("?")
    query = parse_qsl(query_text, keep_blank_values=True)
    if any(k == key for k, _ in query):
        pytest.skip(f"the device URL already sets {key}")
    query.append((key, f"{at_s:g}"))
    return f"{base}?{urlencode(query)}"


@pytest.mark.moves_plate
@pytest.mark.needs_capability("FAULT_INJECTION")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_injected_fault_trips_and_the_plate_stops(
    fault: str,
    device_url: str,
    request: pytest.FixtureRequest,
    qualification: QualificationReport,
) -> None:
    if not is_simulator_url(device_url):
        not_applicable(
            "fault injection needs a sim:// URL the suite can reopen with a fault parameter; "
            f"this plate is at {device_url}"
        )
    # Asked for only now, so that a plate these tests do not apply to is not calibrated for them.
    calibration: Calibration = request.getfixturevalue("calibration")
    key, reasons, detection_s = FAULTS[fault]
    config = parse_sim_url(device_url)
    boot_s = config.boot_ms / 1000.0
    # plant time, counted from power-up: a plate up before the suite came (uptime_s) is later
    fault_at_s = config.uptime_s + boot_s + HANDSHAKE_ALLOWANCE_S + RAMP_UP_S + INTO_HOLD_S
    settings = ExposureSettings(
        target_g=TARGET_G,
        hold_s=HOLD_S,
        schedule=FrequencySchedule.fixed(FREQ_HZ),
        ramp_up_s=RAMP_UP_S,
        ramp_down_s=0.5,
    )
    with DeviceClient.open(with_fault(device_url, key, fault_at_s)) as device:
        info = device.info
        fs = info.sample_rate_hz
        n = info.block_samples
        with StreamTap(device) as tap:
            result = run_exposure(device, calibration, settings)
            device.read_for(TRIP_RAMP_S)  # the loop stops reading once it has sent its stop
        status = device.request_status()

    # The simulator fires an event at the first block that starts at or after its time; the
    # device's sample 0 is taken when it has booted.
    fault_index = math.ceil(round((fault_at_s - boot_s) * fs, 6) / n) * n
    blk = n / fs
    tag = f"fault.{fault}"
    trip = result.trip
    checks = [
        qualification.check(
            f"{tag}.in_hold",
            "fault injected this long into the hold",
            round((fault_index - result.start_index) / fs - RAMP_UP_S, 3),
            0.0,
            ">",
            "s",
        ),
        qualification.expect_one_of(
            f"{tag}.reason",
            f"trip reason for an injected {fault.replace('_', ' ')}",
            trip.reason.value if trip else f"no trip ({result.status.value})",
            [r.value for r in reasons],
            note="" if len(reasons) == 1 else f"{reasons[0].value} is the precise diagnosis",
        ),
    ]
    if trip is not None:
        trip_end = trip.sample_index + n
        zero_at = next(
            (b.first_index for b in tap.blocks if b.first_index >= trip_end and b.drive == 0.0),
            None,
        )
        checks += [
            qualification.check(
                f"{tag}.detection",
                "fault to the end of the tripping block (device clock)",
                round((trip_end - fault_index) / fs, 3),
                round(detection_s + blk, 3),
                "<=",
                "s",
                note="docs/safety.md 2.2 detection bound + one block",
            ),
            qualification.check(
                f"{tag}.drive_zero",
                "end of the tripping block to zero reported drive",
                None if zero_at is None else round((zero_at - trip_end) / fs, 3),
                round(TRIP_RAMP_S + 2 * blk, 3),
                "<=",
                "s",
                note="host ramp TRIP_RAMP_S + 2 blocks",
            ),
        ]
    checks.append(
        qualification.expect(
            f"{tag}.output_off",
            "output after the trip",
            "on" if status.output_on else "off",
            "off",
        )
    )
    failed = [c.describe() for c in checks if not c.passed]
    assert not failed, "; ".join(failed)
