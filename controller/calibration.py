"""Calibration: the empty plate's response (g per unit drive) across frequency, per device.

A patient only adds mass to the plate, so the empty plate's response is an upper bound on what
any session measures: the control law uses it as its feedforward gain schedule, a response far
above it means a runaway (or a calibration that no longer describes the plate), and a response
that climbs back towards it mid-session means the patient has stepped off.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from controller.estimation import FloatArray, block_phases, fit_sine, whole_cycle_length
from controller.privatefiles import check_private_dir, write_private_file
from controller.safety import READ_WAIT_S, samples_wait_s
from controller.sensor import SensorCalibration, SensorCalibrationError
from firmware_bridge.client import DeviceClient, DeviceInfo
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.errors import LivError

log = logging.getLogger(__name__)

# The empty plate is calibrated across the dose limits' calibration band, which covers the
# therapy band, so the gain schedule is interpolated (never extrapolated) at every frequency a
# protocol may hold.
CALIBRATION_STEP_HZ = 5.0
CALIBRATION_BAND_HZ = DOSE_LIMITS.calibration_hz
DEFAULT_FREQS_HZ = tuple(
    CALIBRATION_BAND_HZ.low + k * CALIBRATION_STEP_HZ
    for k in range(
        round((CALIBRATION_BAND_HZ.high - CALIBRATION_BAND_HZ.low) / CALIBRATION_STEP_HZ) + 1
    )
)  # 25, 30, ... 100 Hz
IDENT_DRIVE = 0.08  # low amplitude: about 0.05-0.15 g on an empty reference plate
SETTLE_S = 0.4
MEASURE_S = 0.3
FORMAT_VERSION = 1
MAX_FILE_BYTES = 1_000_000  # a calibration is a few kB; anything far larger is not one


class CalibrationRangeError(LivError):
    """The device's frequency range (HELLO) leaves too little of the calibration band to
    calibrate, or a grid asks for a frequency outside it (docs/protocol.md 11)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


def calibration_freqs(info: DeviceInfo) -> tuple[float, ...]:
    """The calibration grid for a device: the 5 Hz grid of the calibration band inside the
    device's HELLO range, with the ends of that overlap added (docs/control.md).

    A 30-90 Hz plate is calibrated at 30, 35, ... 90 Hz; a 27-88 Hz one at 27, 30, ... 85, 88 Hz.
    Raises CalibrationRangeError when the range and the band overlap by less than one step.
    """
    low = max(CALIBRATION_BAND_HZ.low, info.min_freq_hz)
    high = min(CALIBRATION_BAND_HZ.high, info.max_freq_hz)
    if high - low < CALIBRATION_STEP_HZ:
        raise CalibrationRangeError(
            f"the plate {info.device_id} drives {info.min_freq_hz:g}-{info.max_freq_hz:g} Hz, "
            f"which leaves less than {CALIBRATION_STEP_HZ:g} Hz of the calibration band "
            f"{CALIBRATION_BAND_HZ.low:g}-{CALIBRATION_BAND_HZ.high:g} Hz: it cannot be "
            "calibrated for therapy"
        )
    inside = [f for f in DEFAULT_FREQS_HZ if low < f < high]
    return (low, *inside, high)


def calibrated_range_note(info: DeviceInfo, freqs_hz: tuple[float, ...]) -> str | None:
    """A note for the record when the grid is narrower than the calibration band because of the
    device's range (None when the whole band was calibrated)."""
    if freqs_hz[0] <= CALIBRATION_BAND_HZ.low and freqs_hz[-1] >= CALIBRATION_BAND_HZ.high:
        return None
    return (
        f"calibrated {freqs_hz[0]:g}-{freqs_hz[-1]:g} Hz only: the plate's range (HELLO) is "
        f"{info.min_freq_hz:g}-{info.max_freq_hz:g} Hz, the calibration band "
        f"{CALIBRATION_BAND_HZ.low:g}-{CALIBRATION_BAND_HZ.high:g} Hz; no session outside "
        f"{freqs_hz[0]:g}-{freqs_hz[-1]:g} Hz can run on it"
    )


class CalibrationError(LivError):
    """A stored calibration that cannot be used; the message says to calibrate again."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"the calibration file {path} is damaged or unreadable: run 'liv calibrate' "
            "again with nobody on the plate"
        )


def _numbers(data: dict[str, Any], key: str) -> tuple[float, ...]:
    values = data[key]
    if not isinstance(values, list | tuple) or not all(_is_number(v) for v in values):
        raise ValueError(f"{key} must be a list of numbers")
    return tuple(float(v) for v in values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _typed(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data[key]
    if not isinstance(value, kind):
        raise ValueError(f"{key} must be a {kind.__name__}, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Calibration:
    """Measured response of one device at a list of frequencies."""

    device_id: str
    freqs_hz: tuple[float, ...]
    g_per_drive: tuple[float, ...]
    phase_rad: tuple[float, ...]
    drive: float
    created_utc: str
    stale: bool = False
    notes: list[str] = field(default_factory=list)
    # Coil temperature when calibrated (STATUS), None if the device does not report it or the
    # file predates it: presence detection compensates the warm coil against it.
    coil_temp_c: float | None = None

    def __post_init__(self) -> None:
        if len(self.freqs_hz) < 2 or len(self.freqs_hz) != len(self.g_per_drive):
            raise ValueError("a calibration needs matching frequency and gain lists (>= 2)")
        if any(b <= a for a, b in itertools.pairwise(self.freqs_hz)):
            raise ValueError("calibration frequencies must increase")
        if any(not (g > 0.0 and np.isfinite(g)) for g in self.g_per_drive):
            raise ValueError("calibration gains must be positive: was the actuator connected?")
        if len(self.phase_rad) != len(self.freqs_hz) or not all(
            math.isfinite(p) for p in self.phase_rad
        ):
            raise ValueError("calibration phases must be finite, one per frequency")
        if not (math.isfinite(self.drive) and 0.0 < self.drive <= 1.0):
            raise ValueError(f"calibration drive {self.drive!r} is not a fraction in (0, 1]")
        if self.coil_temp_c is not None and not (
            _is_number(self.coil_temp_c) and -50.0 <= self.coil_temp_c <= 300.0
        ):
            raise ValueError(f"calibration coil temperature {self.coil_temp_c!r} is not -50..300 C")

    def gain_at(self, freq_hz: float) -> float:
        """g per unit drive at ``freq_hz`` (linear interpolation; refuses extrapolation)."""
        if not self.freqs_hz[0] <= freq_hz <= self.freqs_hz[-1]:
            raise ValueError(
                f"{freq_hz:g} Hz is outside the calibrated {self.freqs_hz[0]:g}-"
                f"{self.freqs_hz[-1]:g} Hz"
            )
        freqs, gains = self.freqs_hz, self.g_per_drive
        i = min(bisect.bisect_right(freqs, freq_hz), len(freqs) - 1)
        f0, f1 = freqs[i - 1], freqs[i]
        return gains[i - 1] + (gains[i] - gains[i - 1]) * (freq_hz - f0) / (f1 - f0)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """The calibration ``to_dict`` wrote; ValueError (or KeyError) for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"a calibration is a JSON object, not {type(data).__name__}")
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown calibration format {data.get('format')!r}")
        drive = data["drive"]
        if not _is_number(drive):
            raise ValueError("drive must be a number")
        notes = data.get("notes", [])
        if not isinstance(notes, list | tuple) or not all(isinstance(n, str) for n in notes):
            raise ValueError("notes must be a list of text")
        return cls(
            device_id=_typed(data, "device_id", str),
            freqs_hz=_numbers(data, "freqs_hz"),
            g_per_drive=_numbers(data, "g_per_drive"),
            phase_rad=_numbers(data, "phase_rad"),
            drive=float(drive),
            created_utc=_typed(data, "created_utc", str),
            stale=_typed(data, "stale", bool) if "stale" in data else False,
            notes=list(notes),
            coil_temp_c=float(data["coil_temp_c"]) if data.get("coil_temp_c") is not None else None,
        )


def identify(
    device: DeviceClient,
    freqs_hz: tuple[float, ...] | None = None,
    drive: float = IDENT_DRIVE,
    on_step: Callable[[int, int, float], None] | None = None,
) -> Calibration:
    """Step through ``freqs_hz`` at a low fixed drive and fit the response at each.

    ``freqs_hz`` defaults to :func:`calibration_freqs` of the device; a grid with a frequency
    outside the device's HELLO range is refused (CalibrationRangeError) before the output comes
    on. The frequency changes phase-continuously with the output on; each point settles for
    SETTLE_S and is fitted over whole cycles in the next MEASURE_S. Ramps down and stops after.
    ``on_step(k, n, freq_hz)`` is told as step k (1-based) of n starts, for a progress display;
    an exception it raises ends the sweep as any other does (ramped down, stopped).
    """
    info = device.info
    if freqs_hz is None:
        freqs_hz = calibration_freqs(info)
    outside = [f for f in freqs_hz if not info.min_freq_hz <= f <= info.max_freq_hz]
    if outside:
        raise CalibrationRangeError(
            f"calibration frequencies {', '.join(f'{f:g}' for f in outside)} Hz are outside "
            f"the plate's {info.min_freq_hz:g}-{info.max_freq_hz:g} Hz"
        )
    note = calibrated_range_note(info, freqs_hz)
    fs = float(info.sample_rate_hz)
    gains: list[float] = []
    phases: list[float] = []
    coil_temp_c = _coil_temperature(device)
    wait_s = samples_wait_s(READ_WAIT_S, info.watchdog_s, info.block_samples / fs)
    device.set_frequency(freqs_hz[0])
    device.start_output()
    try:
        device.set_drive(drive, 0.3)
        for k, freq in enumerate(freqs_hz, start=1):
            if on_step is not None:
                on_step(k, len(freqs_hz), freq)
            device.set_frequency(freq)
            device.read_for(SETTLE_S, wait_s)
            blocks = device.read_for(MEASURE_S, wait_s)
            accel: FloatArray = np.concatenate([b.accel_g for b in blocks])
            phase: FloatArray = np.concatenate(
                [block_phases(b.phase_rad, b.freq_hz, b.counts.size, fs) for b in blocks]
            )
            n = whole_cycle_length(accel.size, freq, fs)
            fit = fit_sine(accel[-n:], phase[-n:])
            gains.append(fit.peak_g / drive)
            phases.append(fit.phase_rad)
            log.info("calibration %.1f Hz: %.4f g per unit drive", freq, gains[-1])
    finally:
        device.set_drive(0.0, 0.3, wait=False)
        device.read_for(0.35, wait_s)
        device.stop_output()
    return Calibration(
        device_id=info.device_id,
        freqs_hz=tuple(freqs_hz),
        g_per_drive=tuple(gains),
        phase_rad=tuple(phases),
        drive=drive,
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        notes=[] if note is None else [note],
        coil_temp_c=coil_temp_c,
    )


# A load on the plate during a calibration of the empty plate. One calibration alone cannot tell
# an empty plate from a loaded one (plates differ), but the same plate's earlier calibration
# can: a mass (a person, a box) lowers the response most at the low end of the band, while a
# weaker actuator or sensor lowers it evenly. Judged on the ratio new/earlier, per frequency.
LOAD_LOW_RATIO = 0.9  # the low third of the band this far below the earlier calibration ...
LOAD_TILT = 0.04  # ... and this much further down than the high third: something is on it


@dataclass(frozen=True)
class LoadCheck:
    """Whether a calibration of the empty plate looks as if something was on the plate."""

    verdict: str  # "load", "empty" or "cannot_tell"
    low_ratio: float | None = None  # new/earlier response, mean over the low third of the band
    high_ratio: float | None = None  # the same over the high third
    reference_utc: str | None = None  # when the earlier calibration was made

    @property
    def loaded(self) -> bool:
        return self.verdict == "load"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_for_load(new: Calibration, earlier: Calibration | None) -> LoadCheck:
    """Compare ``new`` with the same plate's ``earlier`` calibration (None: cannot tell)."""
    if earlier is None or earlier.device_id != new.device_id:
        return LoadCheck("cannot_tell")
    common = [f for f in new.freqs_hz if earlier.freqs_hz[0] <= f <= earlier.freqs_hz[-1]]
    if len(common) < 3:
        return LoadCheck("cannot_tell", reference_utc=earlier.created_utc)
    ratios = [new.gain_at(f) / earlier.gain_at(f) for f in common]
    third = max(1, len(ratios) // 3)
    low = sum(ratios[:third]) / third
    high = sum(ratios[-third:]) / third
    loaded = low < LOAD_LOW_RATIO and high - low > LOAD_TILT
    return LoadCheck(
        "load" if loaded else "empty", round(low, 3), round(high, 3), earlier.created_utc
    )


def _coil_temperature(device: DeviceClient) -> float | None:
    """The coil temperature the device reports (STATUS), None if it does not report one."""
    if "COIL_TEMPERATURE" not in device.info.capabilities:
        return None
    return device.request_status().coil_temperature_c


class CalibrationStore:
    """Calibrations as one JSON file per device id in a directory.

    The directory is given by the caller (sessions/home.py resolves it for every command): the
    controller does not decide where an installation keeps its data. It must be private to the
    user (controller/privatefiles.py); files are replaced atomically, never through a link.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def check(self) -> None:
        """Refuse a directory that other users could change (before any plate moves)."""
        check_private_dir(self.directory)

    def path_for(self, device_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device_id) or "unnamed"
        return self.directory / f"{safe}.json"

    def load(self, device_id: str) -> Calibration | None:
        """The stored calibration of ``device_id``; None if there is none.

        Raises CalibrationError (one sentence: calibrate again) for a file that is truncated,
        not JSON, of the wrong shape or holding non-finite numbers.
        """
        self.check()
        path = self.path_for(device_id)
        if not path.exists():
            return None
        try:
            return Calibration.from_dict(_read_json(path))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            log.warning("calibration file %s is unusable (%s)", path, detail)
            raise CalibrationError(path, detail) from None

    def save(self, calibration: Calibration) -> Path:
        return _write_json(self.path_for(calibration.device_id), calibration.to_dict())

    def sensor_path_for(self, device_id: str) -> Path:
        """The sensor calibration's file: ``+`` never occurs in a safe device id, so it cannot
        be the empty-plate file of another device."""
        plate = self.path_for(device_id)
        return plate.with_name(plate.stem + "+sensor.json")

    def load_sensor(self, device_id: str) -> SensorCalibration | None:
        """The stored sensor calibration of ``device_id`` (docs/sensor.md); None if none.

        Raises SensorCalibrationError (one sentence: record it again) for a damaged file.
        """
        self.check()
        path = self.sensor_path_for(device_id)
        if not path.exists():
            return None
        try:
            record = SensorCalibration.from_dict(_read_json(path))
            if record.device_id != device_id:
                raise ValueError(f"it is the record of {record.device_id!r}")
            return record
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            log.warning("sensor calibration file %s is unusable (%s)", path, detail)
            raise SensorCalibrationError(str(path), detail) from None

    def save_sensor(self, record: SensorCalibration) -> Path:
        return _write_json(self.sensor_path_for(record.device_id), record.to_dict())

    def mark_stale(self, calibration: Calibration, why: str) -> None:
        """Record that a run found the plate far from this calibration."""
        self.save(replace(calibration, stale=True, notes=[*calibration.notes, why]))


def _read_json(path: Path) -> Any:
    """A calibration file's JSON; ValueError for one too large, not UTF-8, or not JSON."""
    with path.open("rb") as stream:
        raw = stream.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` privately and atomically, never through a link (controller/privatefiles)."""
    write_private_file(path, json.dumps(data, indent=2, allow_nan=False).encode("utf-8"))
    return path


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a calibration can hold")
