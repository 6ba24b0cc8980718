"""Configuration of a simulated plate, parsed from a ``sim://?key=value&...`` URL."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from firmware_bridge.errors import UnknownUrlError
from firmware_bridge.protocol import HELLO_RANGES
from firmware_bridge.sim.profile import POSTURES, PlateProfile

# Accelerometer noise densities from the datasheet table in shared/DOMAIN.md: a low-noise part
# (ADXL355, 22.5 ug/sqrt(Hz)) and a noisy MEMS part (ADXL345 z axis, 430 ug/sqrt(Hz)).
NOISE_PRESETS_UG = {"low": 22.5, "high": 430.0}


@dataclass(frozen=True)
class SimConfig:
    """Everything that makes one simulated plate run: profile, patient, pacing, faults.

    Times ending in ``_at_s`` are seconds of simulated time since the device powered up;
    ``None`` means the event never happens. ``uptime_s`` is how long the device has been
    powered and streaming when it is opened (a plate that was running before the host came);
    fault events must then lie at or after it.
    """

    profile: str = "default"
    mass_kg: float = 70.0
    seed: int = 0
    speed: float | None = None  # None: as fast as the host reads; 1.0: real time
    truth: str | None = None
    device_id: str = "SIM-0001"
    boot_ms: float = 100.0
    step_on_at_s: float | None = None
    step_off_at_s: float | None = None
    load_step_at_s: float | None = None  # the patient's mass jumps to load_step_kg
    load_step_kg: float = 0.0
    sway: bool = True
    noise_ug: float | None = None  # accelerometer noise density override, ug/sqrt(Hz)
    coil_temp_c: float | None = None  # initial coil temperature (default: ambient)
    uptime_s: float = 0.0  # powered and streaming this long before the host connects
    # the patient and the sensor (None: the profile's value)
    posture: str | None = None  # "seated" or "standing"
    knee_deg: float | None = None  # standing knee angle, 180 = straight
    presence_s: tuple[tuple[float, float | None], ...] | None = None  # on/off intervals
    # the reading's offset drift since the factory calibration, g (neither the firmware nor the
    # host knows it; added to the profile's bias_g and the calibration's residual)
    sensor_offset_g: float | None = None
    # True: an exact part, exactly calibrated (no factory errors, no residual); for tests that
    # need exact numbers. False: the part drawn for this device id (docs/simulator.md)
    ideal_sensor: bool = False
    # link faults
    corrupt_rate: float = 0.0  # probability per byte, both directions
    drop_rate: float = 0.0  # probability per device frame
    latency_ms: float = 0.0  # added each way
    disconnect_at_s: float | None = None
    reset_at_s: float | None = None
    # device faults
    sensor_stuck_at_s: float | None = None
    sensor_saturated_at_s: float | None = None
    sensor_disconnected_at_s: float | None = None
    open_circuit_at_s: float | None = None
    gain_loss_at_s: float | None = None
    gain_factor: float = 0.5
    # the sample index jumps by index_jump_samples at this time (a firmware clock fault)
    index_jump_at_s: float | None = None
    index_jump_samples: int = 16000
    # the accelerometer's sensitivity has drifted this fraction since its factory calibration
    # (neither the firmware nor the host knows; the firmware's resting check sees gravity read
    # about 1 + sensor_gain_error g)
    sensor_gain_error: float = 0.0
    # the device announces a counts_per_g this fraction off its sensor's true sensitivity
    counts_per_g_error: float = 0.0
    # False: a firmware without the resting-sensor check of docs/protocol.md (a third-party
    # plate), so that the host's own check can be shown to stand alone
    rest_check: bool = True
    # the host watchdog the plate announces in HELLO and obeys, ms (None: the reference 500 ms;
    # the protocol allows 200-2000, docs/protocol.md section 7)
    watchdog_ms: int | None = None
    # where the plate keeps its device key, counter and head (firmware_bridge/sim/nvstore.py;
    # None: $LIV_SIM_STATE_DIR, else the user's state directory)
    nv: str | None = None

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("mass", 0.0 <= self.mass_kg <= 200.0, "0..200 kg"),
            ("load_step_kg", 0.0 <= self.load_step_kg <= 200.0, "0..200 kg"),
            ("speed", self.speed is None or self.speed > 0.0, "'max' or a positive factor"),
            ("boot_ms", 0.0 <= self.boot_ms <= 10_000.0, "0..10000"),
            ("corrupt_rate", 0.0 <= self.corrupt_rate <= 0.5, "0..0.5"),
            ("drop_rate", 0.0 <= self.drop_rate <= 1.0, "0..1"),
            ("latency_ms", 0.0 <= self.latency_ms <= 5000.0, "0..5000"),
            ("gain_factor", 0.0 <= self.gain_factor <= 4.0, "0..4 (above 1: a runaway amplifier)"),
            ("noise", self.noise_ug is None or 0.0 <= self.noise_ug <= 100_000.0, "0..100000"),
            ("seed", self.seed >= 0, "a non-negative integer"),
            ("device_id", 0 < len(self.device_id.encode()) <= 16, "1..16 ASCII characters"),
            ("uptime_s", 0.0 <= self.uptime_s <= MAX_UPTIME_S, f"0..{MAX_UPTIME_S:g} s"),
            ("sensor_gain_error", -0.5 <= self.sensor_gain_error <= 0.5, "-0.5..0.5"),
            ("counts_per_g_error", -0.5 <= self.counts_per_g_error <= 0.5, "-0.5..0.5"),
            (
                "index_jump_samples",
                self.index_jump_samples != 0 and abs(self.index_jump_samples) <= 2**31,
                "a non-zero whole number of samples, negative to go backwards",
            ),
            (
                "watchdog_ms",
                self.watchdog_ms is None or WATCHDOG_MS_LOW <= self.watchdog_ms <= WATCHDOG_MS_HIGH,
                f"{WATCHDOG_MS_LOW}..{WATCHDOG_MS_HIGH} ms, the protocol's range",
            ),
            ("posture", self.posture is None or self.posture in POSTURES, " or ".join(POSTURES)),
            ("knee_deg", self.knee_deg is None or 135.0 <= self.knee_deg <= 180.0, "135..180"),
            (
                "sensor_offset_g",
                self.sensor_offset_g is None or -2.0 <= self.sensor_offset_g <= 2.0,
                "-2..2 g",
            ),
            (
                "presence",
                self.presence_s is None
                or (self.step_on_at_s is None and self.step_off_at_s is None),
                "either presence or step_on_at/step_off_at, not both",
            ),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"sim parameter {name} is out of range (allowed: {allowed})")
        for key, field_name in _EVENT_KEYS.items():
            at = getattr(self, field_name)
            if at is not None and at < self.uptime_s:
                raise ValueError(
                    f"sim parameter {key}={at:g} lies before uptime_s={self.uptime_s:g} "
                    "(allowed: times since power-up, at or after uptime_s)"
                )

    def plate_profile(self, profile: PlateProfile) -> PlateProfile:
        """``profile`` with this device's posture and knee angle applied.

        The sensor's errors (the part drawn for the device id, its calibration's residual and
        the drift keys) are applied by the device (``firmware_bridge.sim.sensor``).
        """
        changes: dict[str, dict[str, float]] = {}
        if self.knee_deg is not None:
            changes["standing"] = {"knee_deg": self.knee_deg}
        if self.posture is None and not changes:
            return profile
        return profile.with_overrides(posture=self.posture, **changes)


# the HELLO range of watchdog_ms (docs/protocol.md section 7): a plate cannot announce another
WATCHDOG_MS_LOW, WATCHDOG_MS_HIGH, _ = HELLO_RANGES["watchdog_ms"]
MAX_UPTIME_S = 7 * 86400.0  # a week: the longest "plate up before the host" the tests need

# Events the device fires once, at a time since power-up (they cannot lie before uptime_s).
_EVENT_KEYS = {
    "disconnect_at": "disconnect_at_s",
    "reset_at": "reset_at_s",
    "sensor_stuck_at": "sensor_stuck_at_s",
    "sensor_saturated_at": "sensor_saturated_at_s",
    "sensor_disconnected_at": "sensor_disconnected_at_s",
    "open_circuit_at": "open_circuit_at_s",
    "gain_loss_at": "gain_loss_at_s",
    "load_step_at": "load_step_at_s",
    "index_jump_at": "index_jump_at_s",
}

_FLOAT_KEYS = {
    "mass": "mass_kg",
    "boot_ms": "boot_ms",
    "step_on_at": "step_on_at_s",
    "step_off_at": "step_off_at_s",
    "load_step_at": "load_step_at_s",
    "load_step_kg": "load_step_kg",
    "coil_temp_c": "coil_temp_c",
    "knee_deg": "knee_deg",
    "sensor_gain_error": "sensor_gain_error",
    "sensor_offset_g": "sensor_offset_g",
    "corrupt_rate": "corrupt_rate",
    "drop_rate": "drop_rate",
    "latency_ms": "latency_ms",
    "disconnect_at": "disconnect_at_s",
    "reset_at": "reset_at_s",
    "sensor_stuck_at": "sensor_stuck_at_s",
    "sensor_saturated_at": "sensor_saturated_at_s",
    "sensor_disconnected_at": "sensor_disconnected_at_s",
    "open_circuit_at": "open_circuit_at_s",
    "gain_loss_at": "gain_loss_at_s",
    "gain_factor": "gain_factor",
    "uptime_s": "uptime_s",
    "index_jump_at": "index_jump_at_s",
    "counts_per_g_error": "counts_per_g_error",
}
_TEXT_KEYS = {
    "profile": "profile",
    "truth": "truth",
    "device_id": "device_id",
    "posture": "posture",
    "nv": "nv",
}
ALLOWED_KEYS = sorted(
    [
        *_FLOAT_KEYS,
        *_TEXT_KEYS,
        "seed",
        "speed",
        "sway",
        "rest_check",
        "ideal_sensor",
        "noise",
        "presence",
        "index_jump_samples",
        "watchdog_ms",
    ]
)


def parse_sim_url(url: str) -> SimConfig:
    """Parse ``sim://?mass=90&seed=3&speed=max&truth=/tmp/t.npz`` into a SimConfig.

    Unknown keys and malformed values raise UnknownUrlError naming the key and what is allowed.
    """
    parts = urlsplit(url)
    if parts.scheme != "sim":
        raise UnknownUrlError(url, "not a sim:// URL")
    if parts.netloc or parts.path not in ("", "/"):
        raise UnknownUrlError(url, "put settings in the query, e.g. sim://?mass=70&seed=1")
    values: dict[str, object] = {}
    seen: set[str] = set()
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        if key in seen:
            raise UnknownUrlError(url, f"parameter {key!r} given twice")
        seen.add(key)
        if key in _FLOAT_KEYS:
            values[_FLOAT_KEYS[key]] = _number(url, key, raw)
        elif key in _TEXT_KEYS:
            values[_TEXT_KEYS[key]] = raw
        elif key == "seed":
            if not raw.isdigit():
                raise UnknownUrlError(url, f"seed={raw!r} must be a non-negative integer")
            values["seed"] = int(raw)
        elif key == "index_jump_samples":
            if not raw.lstrip("-").isdigit():
                raise UnknownUrlError(
                    url, f"index_jump_samples={raw!r} must be a whole number of samples"
                )
            values["index_jump_samples"] = int(raw)
        elif key == "watchdog_ms":
            if not raw.isdigit():
                raise UnknownUrlError(
                    url, f"watchdog_ms={raw!r} must be a whole number of milliseconds"
                )
            values["watchdog_ms"] = int(raw)
        elif key == "speed":
            values["speed"] = None if raw == "max" else _number(url, key, raw)
        elif key == "sway":
            if raw not in ("0", "1"):
                raise UnknownUrlError(url, f"sway={raw!r} must be 0 or 1")
            values["sway"] = raw == "1"
        elif key == "rest_check":
            if raw not in ("0", "1"):
                raise UnknownUrlError(url, f"rest_check={raw!r} must be 0 or 1")
            values["rest_check"] = raw == "1"
        elif key == "ideal_sensor":
            if raw not in ("0", "1"):
                raise UnknownUrlError(url, f"ideal_sensor={raw!r} must be 0 or 1")
            values["ideal_sensor"] = raw == "1"
        elif key == "presence":
            values["presence_s"] = _presence(url, raw)
        elif key == "noise":
            values["noise_ug"] = (
                NOISE_PRESETS_UG[raw] if raw in NOISE_PRESETS_UG else _number(url, key, raw)
            )
        else:
            raise UnknownUrlError(
                url, f"unknown parameter {key!r}; allowed: {', '.join(ALLOWED_KEYS)}"
            )
    try:
        return SimConfig(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UnknownUrlError(url, str(exc)) from None


def _number(url: str, key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UnknownUrlError(url, f"{key}={raw!r} is not a finite number")
    return value


def _presence(url: str, raw: str) -> tuple[tuple[float, float | None], ...]:
    """``0-120,150-600,700-``: seconds on the plate, in time order; the last may stay open."""
    intervals: list[tuple[float, float | None]] = []
    previous_end = 0.0
    items = raw.split(",")
    for k, item in enumerate(items):
        start_text, dash, end_text = item.strip().partition("-")
        start = _seconds(start_text)
        open_end = not end_text.strip() and k == len(items) - 1
        end = None if open_end else _seconds(end_text)
        if (
            dash != "-"
            or start is None
            or start < previous_end
            or (not open_end and (end is None or end <= start))
        ):
            raise UnknownUrlError(
                url,
                f"presence={raw!r}: interval {item!r} is not allowed; give the seconds on the "
                "plate as START-END intervals in time order, e.g. presence=0-120,150-600 (the "
                "last may stay open: 700-)",
            )
        intervals.append((start, end))
        previous_end = start if end is None else end
    return tuple(intervals)


def _seconds(text: str) -> float | None:
    """A finite time >= 0 s, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0.0 else None
