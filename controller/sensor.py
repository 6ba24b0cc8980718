"""The accelerometer's per-device calibration, and the check before every session.

Every dose the controller holds is only as true as the accelerometer's sensitivity: a sensor
reading 12% high makes the plate deliver 12% less than it measures. A level plate at rest
reads gravity, +1 g, so each session starts by reading about a second at rest with the output
off, correcting it with the device's stored sensor calibration and comparing it with 1 g
(:func:`check_sensor`). The limits of what one orientation can prove are in docs/sensor.md.

Model (per device, vertical axis)::

    reading_g = sensitivity x true_g + offset_g        (true_g includes gravity)
    corrected_g = (reading_g - offset_g) / sensitivity

``reading_g`` is counts / HELLO ``counts_per_g``: samples the plate has already corrected with
its own factory calibration of its part (docs/protocol.md, SAMPLES), so ``sensitivity`` and
``offset_g`` are what that calibration left or what has drifted since. ``sensitivity`` is
relative to the announced scale (1.0 = as announced), ``offset_g`` is the reading's offset in
g. Both are bench values an engineer enters (two orientations against gravity, or back-to-back
against a reference, as in ISO 16063-21); without a record the nominal values (1.0, 0.0) apply.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from controller.sensor_limits import (
    OFFSET_RANGE_G,
    SENSITIVITY_RANGE,
    SOURCE_BENCH,
    SOURCE_NOMINAL,
)
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import LivError

log = logging.getLogger(__name__)

SENSOR_FORMAT_VERSION = 1
REST_READ_S = 1.0  # how long the resting reading lasts (noise: about 0.01% of 1 g over 1 s)
CHECK_TOLERANCE_MAX = 0.03  # the MPU-6050's initial sensitivity tolerance (shared/DOMAIN.md)
CHECK_TOLERANCE_MIN = 0.01  # below: a tilt of a few degrees or temperature drift would refuse
CHECK_TOLERANCE_SHARE = 1.0 / 3.0  # of the protocol's dose tolerance


PATIENT_SENTENCE = (
    "The plate's motion sensor failed its check before the session, so no session was started "
    "and nothing was recorded; please contact your clinic or the plate's service."
)


class SensorCheckError(LivError):
    """The resting reading is not gravity: no session may start (one sentence for the patient).

    ``detail`` is the technical reason (logged, and shown to engineers by ``liv run``).
    """

    def __init__(self, detail: str, check: SensorCheck | None = None) -> None:
        self.detail = detail
        self.check = check
        super().__init__(PATIENT_SENTENCE)


class SensorCalibrationError(LivError):
    """A stored sensor calibration that cannot be used; the message says to record it again."""

    def __init__(self, where: str, detail: str) -> None:
        self.detail = detail
        super().__init__(
            f"the sensor calibration {where} is damaged or unreadable: run 'liv calibrate "
            "--sensor' again with the plate level and at rest"
        )


def _number(data: dict[str, Any], key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    if not math.isfinite(value):
        raise ValueError(f"{key} must be finite")
    return float(value)


def _text(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text")
    return value


@dataclass(frozen=True)
class SensorCalibration:
    """One device's accelerometer sensitivity and offset, with how and when they were obtained.

    ``resting_g`` is the uncorrected resting reading measured when the record was written
    (level plate, output off): evidence of the part's state then, not a calibration.
    """

    device_id: str
    sensitivity: float
    offset_g: float
    counts_per_g: int  # the HELLO scale the sensitivity is relative to
    source: str  # SOURCE_BENCH or SOURCE_NOMINAL
    resting_g: float | None
    created_utc: str
    note: str = ""

    def __post_init__(self) -> None:
        low, high = SENSITIVITY_RANGE
        if not (math.isfinite(self.sensitivity) and low <= self.sensitivity <= high):
            raise ValueError(
                f"sensitivity {self.sensitivity!r} is not allowed: use {low:g} to {high:g} "
                "(relative to the plate's announced counts per g)"
            )
        low, high = OFFSET_RANGE_G
        if not (math.isfinite(self.offset_g) and low <= self.offset_g <= high):
            raise ValueError(
                f"offset {self.offset_g!r} g is not allowed: use {low:g} to {high:g} g"
            )
        if self.counts_per_g <= 0:
            raise ValueError(f"counts per g {self.counts_per_g!r} must be positive")
        if self.source not in (SOURCE_BENCH, SOURCE_NOMINAL):
            raise ValueError(f"source {self.source!r} is not {SOURCE_BENCH} or {SOURCE_NOMINAL}")
        if self.resting_g is not None and not math.isfinite(self.resting_g):
            raise ValueError("resting reading must be finite")

    @classmethod
    def nominal(cls, device_id: str, counts_per_g: int) -> SensorCalibration:
        """What applies without a stored record: the announced scale, no offset."""
        return cls(device_id, 1.0, 0.0, counts_per_g, SOURCE_NOMINAL, None, "")

    def correct(self, reading_g: float) -> float:
        """The true acceleration (gravity included) behind an uncorrected reading."""
        return (reading_g - self.offset_g) / self.sensitivity

    def to_dict(self) -> dict[str, Any]:
        return {"format": SENSOR_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> SensorCalibration:
        """The record ``to_dict`` wrote; ValueError (or KeyError) for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"a sensor calibration is a JSON object, not {type(data).__name__}")
        if data.get("format") != SENSOR_FORMAT_VERSION:
            raise ValueError(f"unknown sensor calibration format {data.get('format')!r}")
        counts = data["counts_per_g"]
        if isinstance(counts, bool) or not isinstance(counts, int):
            raise ValueError("counts_per_g must be an integer")
        resting = None if data.get("resting_g") is None else _number(data, "resting_g")
        return cls(
            device_id=_text(data, "device_id"),
            sensitivity=_number(data, "sensitivity"),
            offset_g=_number(data, "offset_g"),
            counts_per_g=counts,
            source=_text(data, "source"),
            resting_g=resting,
            created_utc=_text(data, "created_utc"),
            note=_text(data, "note") if "note" in data else "",
        )


def check_tolerance(dose_tolerance: float | None = None) -> float:
    """Allowed |corrected resting reading - 1 g| / 1 g before a session.

    A third of the protocol's dose tolerance (the rest is left to the controller's own error),
    at most CHECK_TOLERANCE_MAX and at least CHECK_TOLERANCE_MIN; CHECK_TOLERANCE_MAX when no
    protocol applies (``liv run``).
    """
    if dose_tolerance is None:
        return CHECK_TOLERANCE_MAX
    share = dose_tolerance * CHECK_TOLERANCE_SHARE
    return min(CHECK_TOLERANCE_MAX, max(CHECK_TOLERANCE_MIN, share))


@dataclass(frozen=True)
class RestingReading:
    """The mean uncorrected reading of a plate at rest, output off."""

    reading_g: float
    spread_g: float  # standard deviation of the samples
    samples: int


def read_resting(device: DeviceClient, seconds: float = REST_READ_S) -> RestingReading:
    """Read ``seconds`` of samples with the output off, uncorrected (counts / counts_per_g).

    Raises SensorCheckError if the plate reports any drive meanwhile (it is not at rest).
    The mean is what counts: a plate that ends where it started has a mean acceleration of
    about zero besides gravity, so somebody stepping on it barely moves it.
    """
    counts_per_g = float(device.info.counts_per_g)
    blocks = device.read_for(seconds)
    driven = [b.drive for b in blocks if b.drive != 0.0]
    if driven:
        raise SensorCheckError(
            f"the plate reported drive up to {max(driven):.3f} during the resting reading"
        )
    counts = np.concatenate([b.counts for b in blocks]).astype(np.float64)
    reading = counts / counts_per_g
    return RestingReading(float(reading.mean()), float(reading.std()), int(reading.size))


@dataclass(frozen=True)
class SensorCheck:
    """The outcome of the pre-session sensor check (values for the log)."""

    device_id: str
    reading_g: float  # uncorrected resting reading
    corrected_g: float  # with the stored sensitivity and offset
    tolerance: float  # allowed |corrected_g - 1|
    calibration: SensorCalibration

    @property
    def error(self) -> float:
        return self.corrected_g - 1.0

    @property
    def passed(self) -> bool:
        return abs(self.error) <= self.tolerance

    def describe(self) -> str:
        cal = self.calibration
        return (
            f"resting reading {self.reading_g:.4f} g, corrected {self.corrected_g:.4f} g "
            f"({100 * self.error:+.2f}% from 1 g, +/-{100 * self.tolerance:.1f}% allowed) with "
            f"{cal.source} sensitivity {cal.sensitivity:.4f} and offset {cal.offset_g:+.4f} g"
        )


def check_sensor(
    device: DeviceClient, calibration: SensorCalibration, tolerance: float
) -> SensorCheck:
    """Read the plate at rest and compare the corrected reading with 1 g.

    Raises SensorCheckError (the patient's sentence; the detail logged) when it is more than
    ``tolerance`` away, or when the record was made for another counts-per-g scale. Call it
    with the output off and before anything is recorded.
    """
    info = device.info
    if calibration.counts_per_g != info.counts_per_g:
        detail = (
            f"the sensor calibration of {info.device_id} was made for {calibration.counts_per_g} "
            f"counts per g, the plate now announces {info.counts_per_g}: record it again"
        )
        log.error("sensor check refused: %s", detail)
        raise SensorCheckError(detail)
    resting = read_resting(device)
    check = SensorCheck(
        info.device_id,
        resting.reading_g,
        calibration.correct(resting.reading_g),
        tolerance,
        calibration,
    )
    if not check.passed:
        detail = f"sensor check failed on {info.device_id}: {check.describe()}"
        log.error("%s", detail)
        raise SensorCheckError(detail, check)
    log.info("sensor check passed on %s: %s", info.device_id, check.describe())
    return check


def record_sensor(
    device: DeviceClient,
    sensitivity: float = 1.0,
    offset_g: float = 0.0,
    source: str = SOURCE_BENCH,
    tolerance: float = CHECK_TOLERANCE_MAX,
) -> SensorCalibration:
    """A new record for ``device`` from bench values, with its resting reading measured now.

    Refuses (SensorCheckError) values that do not correct this plate's resting reading to
    1 g within ``tolerance``: either they belong to another part or the plate is not level and
    at rest, and a record that fails the next check would only refuse every session.
    """
    info = device.info
    resting = read_resting(device)
    record = SensorCalibration(
        device_id=info.device_id,
        sensitivity=sensitivity,
        offset_g=offset_g,
        counts_per_g=info.counts_per_g,
        source=source,
        resting_g=resting.reading_g,
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        note=f"resting reading over {resting.samples} samples, spread {resting.spread_g:.4f} g",
    )
    check = SensorCheck(
        info.device_id, resting.reading_g, record.correct(resting.reading_g), tolerance, record
    )
    if not check.passed:
        raise SensorCheckError(f"these values do not fit the plate: {check.describe()}", check)
    return record


def apply_sensor_calibration(device: DeviceClient, calibration: SensorCalibration) -> None:
    """Make every reading the controller sees from ``device`` corrected by ``calibration``."""
    device.set_sensor_correction(calibration.sensitivity, calibration.offset_g)


__all__ = [
    "SensorCalibration",
    "SensorCalibrationError",
    "SensorCheck",
    "SensorCheckError",
    "apply_sensor_calibration",
    "check_sensor",
    "check_tolerance",
    "read_resting",
    "record_sensor",
]
