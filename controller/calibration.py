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
import os
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from controller.estimation import FloatArray, block_phases, fit_sine, whole_cycle_length
from firmware_bridge.client import DeviceClient
from firmware_bridge.dose_limits import DOSE_LIMITS

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

    def __post_init__(self) -> None:
        if len(self.freqs_hz) < 2 or len(self.freqs_hz) != len(self.g_per_drive):
            raise ValueError("a calibration needs matching frequency and gain lists (>= 2)")
        if any(b <= a for a, b in itertools.pairwise(self.freqs_hz)):
            raise ValueError("calibration frequencies must increase")
        if any(not (g > 0.0 and np.isfinite(g)) for g in self.g_per_drive):
            raise ValueError("calibration gains must be positive: was the actuator connected?")

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
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown calibration format {data.get('format')!r}")
        return cls(
            device_id=str(data["device_id"]),
            freqs_hz=tuple(float(f) for f in data["freqs_hz"]),
            g_per_drive=tuple(float(g) for g in data["g_per_drive"]),
            phase_rad=tuple(float(p) for p in data["phase_rad"]),
            drive=float(data["drive"]),
            created_utc=str(data["created_utc"]),
            stale=bool(data.get("stale", False)),
            notes=[str(n) for n in data.get("notes", [])],
        )


def identify(
    device: DeviceClient,
    freqs_hz: tuple[float, ...] = DEFAULT_FREQS_HZ,
    drive: float = IDENT_DRIVE,
) -> Calibration:
    """Step through ``freqs_hz`` at a low fixed drive and fit the response at each.

    The frequency changes phase-continuously with the output on; each point settles for
    SETTLE_S and is fitted over whole cycles in the next MEASURE_S. Ramps down and stops after.
    """
    info = device.info
    fs = float(info.sample_rate_hz)
    gains: list[float] = []
    phases: list[float] = []
    device.set_frequency(freqs_hz[0])
    device.start_output()
    try:
        device.set_drive(drive, 0.3)
        for freq in freqs_hz:
            device.set_frequency(freq)
            device.read_for(SETTLE_S)
            blocks = device.read_for(MEASURE_S)
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
        device.read_for(0.35)
        device.stop_output()
    return Calibration(
        device_id=info.device_id,
        freqs_hz=tuple(freqs_hz),
        g_per_drive=tuple(gains),
        phase_rad=tuple(phases),
        drive=drive,
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
    )


class CalibrationStore:
    """Calibrations as one JSON file per device id in a directory."""

    ENV = "LIV_CALIBRATION_DIR"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def default(cls) -> CalibrationStore:
        env = os.environ.get(cls.ENV)
        if env:
            return cls(Path(env))
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return cls(Path(base) / "liv" / "calibration")

    def path_for(self, device_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", device_id) or "unnamed"
        return self.directory / f"{safe}.json"

    def load(self, device_id: str) -> Calibration | None:
        path = self.path_for(device_id)
        if not path.exists():
            return None
        try:
            return Calibration.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"calibration file {path} is unreadable: {exc}") from None

    def save(self, calibration: Calibration) -> Path:
        path = self.path_for(calibration.device_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(calibration.to_dict(), indent=2))
        tmp.replace(path)
        return path

    def mark_stale(self, calibration: Calibration, why: str) -> None:
        """Record that a run found the plate far from this calibration."""
        self.save(replace(calibration, stale=True, notes=[*calibration.notes, why]))
