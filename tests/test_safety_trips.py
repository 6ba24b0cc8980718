"""Every safety trip, provoked by a fault injected into the simulated plate, judged from truth.

Each case is a real closed-loop exposure (:func:`controller.loop.run_exposure`) on
``sim://`` with one fault injected about 1 s into the hold. The verdict comes from the
simulator's ground truth, never from the controller's own estimate: the commanded drive
envelope (``truth["drive"]``) must reach zero, and the true plate acceleration
(``truth["accel_g"]``, gravity removed) must have died away, within the documented bound after
the fault. docs/safety.md states the bounds and the figures these runs measure.

Two clocks. ``result.trip.t_s`` counts from the start of the output; the truth file's ``t_s``
is plant time since the simulated plate powered up (boot, 100 ms, and the handshake come
first). Every instant here is taken in plant time, from the truth file itself:

- the fault: from the truth ``events`` array, where the simulator records every injected fault
  and every firmware fault with its plant time (``"3.200000 open_circuit"``). A cable pull is
  not recorded there; its instant is the ``disconnect_at`` plant time the URL asked for. A link
  that is bad from power-up counts from the start of the output: the truth sample whose
  ``sample_index`` is ``result.start_index``.
- the host's decision: the end of the truth block whose ``sample_index`` is
  ``result.trip.sample_index`` (the first sample of the block that tripped).
- zero drive: the end of the last truth sample with a non-zero drive envelope (it stays zero
  for the rest of the record, which runs on for ``LINGER_S`` after the host has gone).

Each fault is also run at the natural operating point (the therapeutic 0.3 g, or 0.45 g on a
heavy patient), where an abrupt fault once made the supervisor name the wrong reason
(docs/safety.md section 7); a wrong reason raises :class:`WrongTripReasonError`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.calibration import Calibration, identify
from controller.loop import (
    ControlUpdate,
    ExposureResult,
    ExposureSettings,
    ExposureStatus,
    run_exposure,
)
from controller.safety import HARD_CEILING_G, TRIP_RAMP_S, SafetyLimits, TripReason
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.sim import device as firmware
from firmware_bridge.sim.device import (
    BLOCK_S,
    FULL_SCALE_SLEW_S,
    SAFE_RAMP_S,
    WATCHDOG_S,
)
from tests.simhelpers import load_truth

LIMITS = SafetyLimits()
WINDOW_S = ExposureSettings().window_s  # the estimator window every response check looks at
SLEW_PER_S = ExposureSettings().law.slew_per_s  # the control law's own drive slew limit
RAMP_UP_S = 2.0
HOLD_S = 4.0
FAULT_AT_S = 3.2  # plant time: boot + handshake (~0.14 s) + 2 s ramp + about 1 s of hold
# After the host decides, the trip block reached it one block late and its SET_DRIVE takes
# effect at the device's next block boundary: two blocks on top of the ramp itself.
HOST_STOP_S = TRIP_RAMP_S + 2 * BLOCK_S
# Watchdog: the last heartbeat is handled at most a block after the pull, the check runs at
# block boundaries (one more block), then the firmware's own ramp.
WATCHDOG_STOP_S = WATCHDOG_S + 2 * BLOCK_S + SAFE_RAMP_S
FIRMWARE_FAULT_STOP_S = SAFE_RAMP_S + BLOCK_S
RINGDOWN_S = 0.05  # the plate's own motion after the drive has ended
STILL_G = 0.01  # "the plate has stopped": true |accel| below this
FS = 1600.0  # the default profile's sample rate
MAX_SLEW_PER_SAMPLE = 1.0 / (FULL_SCALE_SLEW_S * FS)
# The link check looks back over 50 received blocks: 1 s of a clean stream, 1 / (1 - q) s when
# a fraction q of the frames is lost (q up to a third here: 20% dropped, or 0.2% of bytes hit).
LINK_WINDOW_S = 1.0 / (1.0 - 1.0 / 3.0)


class WrongTripReasonError(AssertionError):
    """The plate stopped in time, but the supervisor gave the wrong reason."""


class StoppedBy(enum.Enum):
    HOST = "host supervisor ramp"
    WATCHDOG = "firmware watchdog"
    FIRMWARE_FAULT = "firmware fault ramp"
    RESET = "device reset"


@dataclass(frozen=True)
class Point:
    """An operating point: who stands on the plate and what the exposure asks for."""

    mass_kg: float
    target_g: float
    freq_hz: float

    def settings(self) -> ExposureSettings:
        return ExposureSettings(
            target_g=self.target_g,
            hold_s=HOLD_S,
            schedule=FrequencySchedule.fixed(self.freq_hz),
            ramp_up_s=RAMP_UP_S,
        )


MODERATE = Point(70.0, 0.2, 45.0)
THERAPY = Point(70.0, 0.3, 45.0)
LIGHT = Point(70.0, 0.15, 45.0)
HEAVY = Point(150.0, 0.4, 30.0)
HEAVY_DEMANDING = Point(150.0, 0.45, 30.0)
HEAVY_HIGH_FREQ = Point(150.0, 0.45, 90.0)
EMPTY_LOW = Point(0.0, 0.2, 45.0)
EMPTY_HIGH = Point(0.0, 0.45, 45.0)
HOT = Point(150.0, 0.35, 30.0)  # enough coil current to heat a coil that starts hot


@dataclass(frozen=True)
class Case:
    """One injected fault and what must follow from it."""

    faults: str  # sim:// query parameters that inject the fault
    point: Point
    reason: TripReason
    detect_s: float  # documented bound on detection, from the fault
    stopped_by: StoppedBy
    event: str | None  # truth event that marks the fault; None: see fault_at_s
    fault_at_s: float | None = FAULT_AT_S  # plant time if no event; None: bad from power-up
    seed: int = 2

    def bound_s(self) -> float:
        """Documented bound from the fault to zero commanded drive."""
        if self.stopped_by is StoppedBy.HOST:
            return self.detect_s + HOST_STOP_S
        if self.stopped_by is StoppedBy.WATCHDOG:
            return WATCHDOG_STOP_S
        if self.stopped_by is StoppedBy.FIRMWARE_FAULT:
            return FIRMWARE_FAULT_STOP_S
        return BLOCK_S  # a reset cuts the drive at the block boundary where it happens


CASES: dict[str, Case] = {
    "open_circuit": Case(
        f"open_circuit_at={FAULT_AT_S}", MODERATE, TripReason.NO_RESPONSE,
        WINDOW_S + LIMITS.no_response_hold_s, StoppedBy.HOST, "open_circuit",
    ),
    # An amplifier that lost 70% of its gain under a 150 kg patient at 30 Hz leaves 6% of the
    # empty plate's response (0.21 x 0.3): a plate that cannot respond, whatever the drive.
    # The default plate has so much headroom that no gain loss there saturates the drive
    # without first dropping below the no-response fraction (docs/safety.md 2.2).
    "gain_loss": Case(
        f"gain_loss_at={FAULT_AT_S}&gain_factor=0.3", HEAVY, TripReason.NO_RESPONSE,
        WINDOW_S + LIMITS.no_response_hold_s, StoppedBy.HOST, "gain_loss",
    ),
    # At 90 Hz the same patient leaves 0.44 of the empty response: a 0.3 gain factor leaves
    # 0.13, a response the law follows, and the drive runs into its limit short of 0.45 g.
    "gain_loss_saturating": Case(
        f"gain_loss_at={FAULT_AT_S}&gain_factor=0.3", HEAVY_HIGH_FREQ, TripReason.DRIVE_SATURATED,
        # the estimate sees the loss, the drive slews from zero to the limit at most, then holds
        WINDOW_S + firmware.MAX_DRIVE / SLEW_PER_S + LIMITS.saturation_hold_s,
        StoppedBy.HOST, "gain_loss",
    ),
    "runaway_over_ceiling": Case(
        f"gain_loss_at={FAULT_AT_S}&gain_factor=2.0", EMPTY_HIGH, TripReason.OVER_ACCELERATION,
        WINDOW_S, StoppedBy.HOST, "gain_loss",
    ),
    "runaway_below_ceiling": Case(
        f"gain_loss_at={FAULT_AT_S}&gain_factor=2.0", EMPTY_LOW, TripReason.RUNAWAY,
        WINDOW_S + LIMITS.runaway_hold_s, StoppedBy.HOST, "gain_loss",
    ),
    "sensor_stuck": Case(
        f"sensor_stuck_at={FAULT_AT_S}", LIGHT, TripReason.SENSOR_STUCK,
        LIMITS.stuck_window_s + BLOCK_S, StoppedBy.HOST, "sensor_stuck",
    ),
    "sensor_disconnected": Case(
        f"sensor_disconnected_at={FAULT_AT_S}", THERAPY, TripReason.SENSOR_GRAVITY,
        WINDOW_S, StoppedBy.HOST, "sensor_disconnected",
    ),
    "cable_pull": Case(
        f"disconnect_at={FAULT_AT_S}", THERAPY, TripReason.LINK_LOST,
        0.0, StoppedBy.WATCHDOG, None,
    ),
    "device_reset": Case(
        f"reset_at={FAULT_AT_S}", THERAPY, TripReason.DEVICE_RESET,
        0.0, StoppedBy.RESET, "reset",
    ),
    "dropped_frames": Case(
        "drop_rate=0.2", THERAPY, TripReason.LINK_DEGRADED,
        LINK_WINDOW_S, StoppedBy.HOST, None, fault_at_s=None,
    ),
    "corrupted_bytes": Case(
        "corrupt_rate=0.002", THERAPY, TripReason.LINK_DEGRADED,
        LINK_WINDOW_S, StoppedBy.HOST, None, fault_at_s=None,
    ),
    "coil_overtemperature": Case(
        "coil_temp_c=119.99", HOT, TripReason.DEVICE_FAULT,
        0.0, StoppedBy.FIRMWARE_FAULT, "fault:COIL_OVERTEMP",
    ),
}  # fmt: skip

# The natural operating points, where an abrupt fault puts an amplitude step inside the fit
# window (once reported as EXCESS_HARMONICS) and a saturated sensor moves the fitted DC by
# 0.6 g in one block (once reported as SENSOR_GRAVITY): docs/safety.md section 7.
AT_THERAPY: dict[str, tuple[Case, str]] = {
    "open_circuit_at_0.3g": (
        replace(CASES["open_circuit"], point=THERAPY),
        "open circuit at 0.3 g is reported as EXCESS_HARMONICS",
    ),
    "gain_loss_at_0.45g": (
        replace(CASES["gain_loss"], point=HEAVY_DEMANDING),
        "amplifier gain loss from 0.45 g is reported as EXCESS_HARMONICS",
    ),
    "runaway_at_0.3g": (
        replace(CASES["runaway_over_ceiling"], point=THERAPY),
        "a doubled amplifier gain at 0.3 g is reported as EXCESS_HARMONICS",
    ),
    "sensor_stuck_at_0.3g": (
        replace(CASES["sensor_stuck"], point=THERAPY),
        "a stuck sensor at 0.3 g is reported as EXCESS_HARMONICS",
    ),
    "sensor_saturated": (
        Case(
            f"sensor_saturated_at={FAULT_AT_S}", THERAPY, TripReason.SENSOR_SATURATED,
            LIMITS.stuck_window_s + BLOCK_S, StoppedBy.HOST, "sensor_saturated",
        ),
        "a pinned sensor is reported as SENSOR_GRAVITY; SENSOR_SATURATED cannot fire",
    ),
}  # fmt: skip

ALL_CASES = [pytest.param(case, id=name) for name, case in CASES.items()] + [
    pytest.param(case, id=name) for name, (case, _) in AT_THERAPY.items()
]


# ---- running an exposure and reading its truth ----------------------------------------------


@pytest.fixture(scope="module")
def calibration() -> Iterator[Calibration]:
    """The empty plate, calibrated once like a technician would before a day of sessions."""
    with DeviceClient.open("sim://?mass=0&seed=1") as device:
        yield identify(device)


@dataclass
class Run:
    """One exposure's result and its truth record (plant time)."""

    result: ExposureResult
    t_s: np.ndarray[Any, np.dtype[np.float64]]
    drive: np.ndarray[Any, np.dtype[np.float64]]
    accel_g: np.ndarray[Any, np.dtype[np.float64]]
    sample_index: np.ndarray[Any, np.dtype[np.int64]]
    events: dict[str, float]

    def at_index(self, index: int, after_s: float = 0.0) -> float:
        """Plant time of the device sample ``index`` (first one after ``after_s``)."""
        match = np.flatnonzero((self.sample_index == index) & (self.t_s >= after_s))
        assert match.size, f"sample {index} is not in the truth record"
        return float(self.t_s[match[0]])

    @property
    def output_start_s(self) -> float:
        """Plant time of exposure time 0."""
        return self.at_index(self.result.start_index)

    @property
    def zero_drive_s(self) -> float:
        """Plant time from which the commanded drive stays zero to the end of the record."""
        on = np.flatnonzero(np.abs(self.drive) > 1e-9)
        assert on.size, "the drive was never on"
        assert on[-1] + 1 < self.t_s.size, "the drive was still on when the record ended"
        return float(self.t_s[on[-1] + 1])

    def peak_g(self, start_s: float, end_s: float) -> float:
        """Largest true |acceleration| between two plant times."""
        span = (self.t_s >= start_s) & (self.t_s < end_s)
        assert span.sum() >= 32, f"no truth between {start_s:.3f} s and {end_s:.3f} s"
        return float(np.max(np.abs(self.accel_g[span])))


def expose(
    tmp_path: Path,
    calibration: Calibration,
    point: Point,
    faults: str = "",
    seed: int = 2,
    on_update: Callable[[ControlUpdate], None] | None = None,
) -> Run:
    truth_path = tmp_path / "truth.npz"
    query = f"mass={point.mass_kg:g}&seed={seed}&truth={truth_path}"
    if faults:
        query += f"&{faults}"
    with DeviceClient.open(f"sim://?{query}") as device:
        result = run_exposure(device, calibration, point.settings(), on_update)
    truth = load_truth(truth_path)  # written when the simulated plate closes
    events: dict[str, float] = {}
    for entry in truth["events"]:
        at, name = str(entry).split(" ", 1)
        events.setdefault(name, float(at))
    return Run(
        result, truth["t_s"], truth["drive"], truth["accel_g"], truth["sample_index"], events
    )


def fault_instant(run: Run, case: Case) -> float:
    if case.event is not None:
        assert case.event in run.events, f"the simulator never recorded {case.event}"
        return run.events[case.event]
    if case.fault_at_s is not None:
        return case.fault_at_s
    return run.output_start_s


def check_trip_values(run: Run, case: Case) -> None:
    """The figures the supervisor recorded say why it tripped."""
    values = run.result.trip.values if run.result.trip else {}
    ceiling = LIMITS.ceiling_g
    match case.reason:
        case TripReason.NO_RESPONSE:
            assert values["response_ratio"] < LIMITS.no_response_fraction
        case TripReason.DRIVE_SATURATED:
            assert values["peak_g"] < LIMITS.saturation_shortfall * values["setpoint_g"]
        case TripReason.OVER_ACCELERATION:
            assert (
                values["peak_g"] > ceiling
                or values["total_peak_g"] > LIMITS.total_peak_factor * ceiling
            )
        case TripReason.RUNAWAY:
            assert values["response_ratio"] > LIMITS.runaway_ratio
        case TripReason.SENSOR_GRAVITY:
            assert abs(values["dc_g"] - 1.0) > LIMITS.gravity_tolerance_g
        case TripReason.SENSOR_STUCK | TripReason.SENSOR_SATURATED:
            assert "value_g" in values
        case TripReason.LINK_DEGRADED:
            assert values["error_rate"] > LIMITS.link_error_rate


# ---- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES)
def test_fault_trips_and_the_plate_stops_in_time(
    case: Case, calibration: Calibration, tmp_path: Path
) -> None:
    run = expose(tmp_path, calibration, case.point, case.faults, case.seed)
    result = run.result
    assert result.status is ExposureStatus.TRIPPED, f"no trip: {result.status}"
    assert result.trip is not None
    fault_s = fault_instant(run, case)
    target = case.point.target_g

    if case.fault_at_s is not None:
        # the fault hit a plate vibrating at its target in the hold, not during the ramp
        assert result.trip.t_s > RAMP_UP_S
        assert run.peak_g(fault_s - 0.2, fault_s) > 0.8 * target
        assert run.drive[run.t_s < fault_s][-1] > 0.0, "the drive was off when the fault hit"
    zero_s = run.zero_drive_s
    assert fault_s <= zero_s <= fault_s + case.bound_s(), (
        f"drive reached zero {zero_s - fault_s:.3f} s after the fault "
        f"(bound {case.bound_s():.3f} s)"
    )
    # the plate itself is still soon after, until the record ends
    still_from = zero_s + RINGDOWN_S
    assert run.peak_g(still_from, float(run.t_s[-1]) + 1.0) < STILL_G
    assert np.max(np.abs(run.accel_g)) < HARD_CEILING_G

    falls = -np.diff(run.drive)
    faults_before_zero = {
        n for n, at in run.events.items() if n.startswith("fault:") and at < zero_s
    }
    if case.stopped_by is StoppedBy.RESET:
        cut = np.flatnonzero(falls > MAX_SLEW_PER_SAMPLE + 1e-9)
        assert cut.size == 1, "a reset cuts the drive in one step, and only a reset does"
        assert run.t_s[cut[0] + 1] == pytest.approx(fault_s)
    else:
        assert np.max(falls) <= MAX_SLEW_PER_SAMPLE + 1e-9, "the drive stepped down"
    if case.stopped_by is StoppedBy.HOST:
        # The firmware acts only as the backstop: when the plate truly went above its own
        # ceiling (a runaway on the empty plate), it also ramps down, never later than the host.
        backstop = np.max(np.abs(run.accel_g)) > DOSE_LIMITS.firmware_ceiling_g
        allowed = {"fault:OVER_ACCELERATION"} if backstop else set()
        assert faults_before_zero <= allowed, f"the firmware had to act: {faults_before_zero}"
        decided_s = run.at_index(result.trip.sample_index, run.output_start_s) + BLOCK_S
        assert decided_s - fault_s <= case.detect_s + 1e-9, "detected too late"
        # a soft ramp over TRIP_RAMP_S (or the firmware's sooner fault ramp), starting within
        # two blocks of the decision
        shortest_s = SAFE_RAMP_S if faults_before_zero else TRIP_RAMP_S
        assert shortest_s <= zero_s - decided_s <= HOST_STOP_S + 1e-9
    elif case.stopped_by is StoppedBy.WATCHDOG:
        assert faults_before_zero == {"fault:HOST_WATCHDOG"}
        assert zero_s - run.events["fault:HOST_WATCHDOG"] <= SAFE_RAMP_S + BLOCK_S

    if result.trip.reason is not case.reason:
        raise WrongTripReasonError(
            f"expected {case.reason}, got {result.trip.reason}: {result.trip.detail}"
        )
    check_trip_values(run, case)


@pytest.mark.parametrize(
    "point",
    [pytest.param(p, id=f"{p.mass_kg:g}kg-{p.target_g:g}g-{p.freq_hz:g}Hz") for p in
     (MODERATE, THERAPY, LIGHT, HEAVY, HEAVY_DEMANDING, EMPTY_LOW, EMPTY_HIGH, HOT)],
)  # fmt: skip
def test_without_a_fault_the_same_exposure_completes(
    point: Point, calibration: Calibration, tmp_path: Path
) -> None:
    """Every operating point above runs to the end untouched: the faults are what trip."""
    run = expose(tmp_path, calibration, point)
    assert run.result.status is ExposureStatus.COMPLETED
    assert run.result.trip is None
    assert run.result.held_s == pytest.approx(HOLD_S, abs=BLOCK_S)
    # judged from truth: the plate held its target through the last two seconds of the hold
    hold_end_s = run.output_start_s + RAMP_UP_S + HOLD_S
    assert run.peak_g(hold_end_s - 2.0, hold_end_s - 0.1) == pytest.approx(point.target_g, rel=0.05)
    assert run.zero_drive_s <= hold_end_s + point.settings().ramp_down_s + 2 * BLOCK_S


def test_a_gain_loss_a_heavy_patient_could_cause_is_made_up_for(
    calibration: Calibration, tmp_path: Path
) -> None:
    """70 kg at 45 Hz with the amplifier at 0.3x gain responds at 0.15 of the empty plate, as a
    150 kg patient does with a hot coil: the law learns it and the plate holds the dose."""
    run = expose(tmp_path, calibration, THERAPY, f"gain_loss_at={FAULT_AT_S}&gain_factor=0.3")
    assert "gain_loss" in run.events
    assert run.result.status is ExposureStatus.COMPLETED, run.result.trip
    hold_end_s = run.output_start_s + RAMP_UP_S + HOLD_S
    # judged from truth: back at the target within a second of the loss, to the end of the hold
    assert run.peak_g(run.events["gain_loss"] + 1.0, hold_end_s - 0.1) == pytest.approx(
        THERAPY.target_g, rel=0.05
    )


def test_ctrl_c_ramps_the_plate_down_softly(calibration: Calibration, tmp_path: Path) -> None:
    """Ctrl-C (KeyboardInterrupt) mid-hold: the normal ramp-down, not a trip, and no step."""
    pressed: list[float] = []

    def press_ctrl_c(update: ControlUpdate) -> None:
        if update.t_s >= RAMP_UP_S + 1.0:
            pressed.append(update.t_s)
            raise KeyboardInterrupt

    run = expose(tmp_path, calibration, THERAPY, on_update=press_ctrl_c)
    assert run.result.status is ExposureStatus.STOPPED_BY_USER
    assert run.result.trip is None
    assert len(pressed) == 1
    pressed_s = run.output_start_s + pressed[0]  # the update comes at the end of its block
    ramp_s = THERAPY.settings().ramp_down_s
    zero_s = run.zero_drive_s
    assert ramp_s <= zero_s - pressed_s <= ramp_s + 2 * BLOCK_S
    assert np.max(-np.diff(run.drive)) <= MAX_SLEW_PER_SAMPLE + 1e-9
    assert run.peak_g(zero_s + RINGDOWN_S, float(run.t_s[-1]) + 1.0) < STILL_G
    assert not [n for n, at in run.events.items() if n.startswith("fault:") and at < zero_s]


def test_a_lost_start_acknowledgement_is_an_outcome_not_an_exception(
    calibration: Calibration, tmp_path: Path
) -> None:
    """With 20% of device frames dropped, seed 7 loses the ACK of SET_OUTPUT on."""
    run = expose(tmp_path, calibration, THERAPY, "drop_rate=0.2", seed=7)
    assert run.result.status is ExposureStatus.TRIPPED


def test_a_target_above_the_ceiling_is_refused_before_the_plate_moves(
    calibration: Calibration, tmp_path: Path
) -> None:
    truth_path = tmp_path / "truth.npz"
    with DeviceClient.open(f"sim://?mass=70&truth={truth_path}") as device:
        with pytest.raises(ValueError, match=r"safety ceiling 0\.5 g"):
            run_exposure(device, calibration, ExposureSettings(target_g=0.6, hold_s=4.0))
        with pytest.raises(ValueError, match=r"safety ceiling 0\.5 g"):
            ExposureSettings(target_g=LIMITS.ceiling_g)  # the ceiling itself is not a target
    assert not np.any(load_truth(truth_path)["drive"]), "the plate moved"


@pytest.mark.parametrize("ceiling_g", [1.2, HARD_CEILING_G + 1e-9, 0.0, -0.5])
def test_no_setting_raises_the_ceiling_above_the_hard_ceiling(ceiling_g: float) -> None:
    with pytest.raises(ValueError, match=r"at most 1 g"):
        SafetyLimits(ceiling_g=ceiling_g)


def test_the_hard_ceiling_itself_is_allowed_and_bounds_the_target() -> None:
    assert HARD_CEILING_G == 1.0
    limits = SafetyLimits(ceiling_g=HARD_CEILING_G)
    assert ExposureSettings(target_g=0.9, limits=limits).target_g == 0.9
    with pytest.raises(ValueError, match=r"safety ceiling 1 g"):
        ExposureSettings(target_g=1.0, limits=limits)


def test_documented_limits_match_the_code() -> None:
    """docs/safety.md tables name every limit with the value the code uses."""
    text = (Path(__file__).parents[1] / "docs" / "safety.md").read_text()
    documented = {
        name: float(value)
        for name, value in re.findall(r"^\| `(\w+)` \| (-?[0-9.]+) \|", text, re.MULTILINE)
    }
    in_code: dict[str, float] = {
        f.name: float(getattr(LIMITS, f.name)) for f in dataclasses.fields(SafetyLimits)
    }
    in_code |= {"TRIP_RAMP_S": TRIP_RAMP_S, "HARD_CEILING_G": HARD_CEILING_G}
    for name in ("BLOCK_S", "WATCHDOG_S", "SAFE_RAMP_S", "FULL_SCALE_SLEW_S", "MAX_DRIVE",
                 "MIN_FREQ_HZ", "MAX_FREQ_HZ", "OVERTEMP_C"):  # fmt: skip
        in_code[name] = float(getattr(firmware, name))
    assert {name: documented.get(name) for name in in_code} == in_code
