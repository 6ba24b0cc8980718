"""Plate profiles: the physical constants of one simulated plate, read from YAML.

A profile is a frozen :class:`PlateProfile` made of one small frozen dataclass per section
(actuator, amplifier, mechanics, thermal, body, standing, sway, stepping, distortion,
accelerometer, numerics), plus the patient's ``posture`` (``standing``, the default, or
``seated``), which picks the ``standing`` model or the ``body`` (seated fit). Profiles ship as
package data in
``firmware_bridge/sim/profiles/<name>.yaml``;
``profiles/default.yaml`` names the source of every value or says it is an assumption, and
``docs/simulator.md`` explains the model they feed.

Every value is range-checked when a section is built, so a profile that loads is one the
physics can run. Out-of-range values and unknown keys are refused with a ``ValueError`` that
names the key, the value and what is allowed; nothing is clamped. Keys left out of a YAML file
take the default profile's value (the dataclass defaults equal ``default.yaml``; a test keeps
them in step).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

__all__ = [
    "POSTURES",
    "AccelerometerProfile",
    "ActuatorProfile",
    "AmplifierProfile",
    "BodyProfile",
    "DistortionProfile",
    "MechanicsProfile",
    "NumericsProfile",
    "PlateProfile",
    "StandingProfile",
    "SteppingProfile",
    "SwayProfile",
    "ThermalProfile",
    "available_profiles",
    "load_profile",
]


def _number(
    default: float,
    lo: float,
    hi: float,
    unit: str,
    *,
    lo_open: bool = False,
) -> float:
    """A float field with an allowed range ``lo <= value <= hi`` (``lo < value`` if lo_open)."""
    meta = {"lo": lo, "hi": hi, "unit": unit, "lo_open": lo_open, "integer": False}
    return field(default=default, metadata=meta)


def _integer(default: int, lo: int, hi: int, unit: str) -> int:
    """An int field with an allowed range ``lo <= value <= hi``."""
    meta = {"lo": lo, "hi": hi, "unit": unit, "lo_open": False, "integer": True}
    return field(default=default, metadata=meta)


def _allowed_text(meta: Mapping[str, Any]) -> str:
    op = "<" if meta["lo_open"] else "<="
    kind = "an integer" if meta["integer"] else "a number"
    unit = f" ({meta['unit']})" if meta["unit"] else ""
    return f"{kind} with {meta['lo']} {op} value <= {meta['hi']}{unit}"


class _Section:
    """Range checking shared by every profile section (each is a frozen dataclass)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            meta = f.metadata
            if "lo" not in meta:
                continue
            value = getattr(self, f.name)
            where = f"{self.SECTION}.{f.name}"
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{where} = {value!r} is not {_allowed_text(meta)}")
            if meta["integer"] and not isinstance(value, int):
                raise ValueError(f"{where} = {value!r} is not {_allowed_text(meta)}")
            too_low = value <= meta["lo"] if meta["lo_open"] else value < meta["lo"]
            if not math.isfinite(value) or too_low or value > meta["hi"]:
                raise ValueError(
                    f"{where} = {value!r} is out of range; allowed: {_allowed_text(meta)}"
                )


@dataclass(frozen=True)
class ActuatorProfile(_Section):
    """Moving-coil (voice-coil) actuator: the electrical side and its force constant.

    The back-EMF constant (V per m/s) equals the force constant ``Bl`` (N/A) in SI units,
    so a single value serves both.
    """

    SECTION: ClassVar[str] = "actuator"
    coil_resistance_20c_ohm: float = _number(4.0, 0.0, 100.0, "ohm at 20 C", lo_open=True)
    copper_tempco_per_k: float = _number(0.00393, 0.0, 0.01, "1/K")
    coil_inductance_h: float = _number(0.004, 0.0, 1.0, "H", lo_open=True)
    force_constant_n_per_a: float = _number(64.0, 0.0, 1000.0, "N/A = V s/m", lo_open=True)


@dataclass(frozen=True)
class AmplifierProfile(_Section):
    """Voltage-mode power amplifier: output volts (peak) when the drive fraction is 1."""

    SECTION: ClassVar[str] = "amplifier"
    volts_at_full_drive: float = _number(43.0, 0.0, 1000.0, "V peak", lo_open=True)


@dataclass(frozen=True)
class MechanicsProfile(_Section):
    """The plate's moving part and its suspension, without the patient."""

    SECTION: ClassVar[str] = "mechanics"
    moving_mass_kg: float = _number(20.0, 0.0, 500.0, "kg", lo_open=True)
    suspension_stiffness_n_per_m: float = _number(180_000.0, 0.0, 1e9, "N/m")
    suspension_damping_n_s_per_m: float = _number(200.0, 0.0, 1e6, "N s/m")


@dataclass(frozen=True)
class ThermalProfile(_Section):
    """One-node thermal model of the coil: dT/dt = (P - (T - T_amb)/R_th) / C_th."""

    SECTION: ClassVar[str] = "thermal"
    thermal_resistance_k_per_w: float = _number(4.0, 0.0, 1000.0, "K/W", lo_open=True)
    thermal_capacity_j_per_k: float = _number(300.0, 0.0, 1e6, "J/K", lo_open=True)
    ambient_c: float = _number(20.0, -20.0, 60.0, "C")


@dataclass(frozen=True)
class BodyProfile(_Section):
    """The seated-derived patient: a mass-normalised apparent-mass model (docs/simulator.md).

    Used when ``PlateProfile.posture == "seated"``. A fraction ``rigid_mass_fraction`` of the
    body mass moves with the plate; the rest sits on a spring and damper tuned to
    ``natural_frequency_hz`` and ``damping_ratio``, which do not depend on the body mass (the
    model is normalised per kg).
    """

    SECTION: ClassVar[str] = "body"
    natural_frequency_hz: float = _number(5.0, 0.5, 50.0, "Hz")
    damping_ratio: float = _number(0.475, 0.01, 5.0, "")
    rigid_mass_fraction: float = _number(0.029, 0.0, 1.0, "of body mass")


@dataclass(frozen=True)
class StandingProfile(_Section):
    """The standing patient: three masses in a chain (docs/simulator.md).

    Feet and shanks move with the plate; the legs (a spring and damper whose natural frequency
    and damping ratio depend on the knee angle) carry the hip mass (thighs and pelvis); a
    second spring and damper carries the upper body. Frequencies and damping ratios are per kg
    of the mass they carry, so the model is mass-normalised. Knee angles between 180 degrees
    (straight) and 135 degrees interpolate the leg's values linearly.
    """

    SECTION: ClassVar[str] = "standing"
    feet_shanks_mass_fraction: float = _number(0.12, 0.0, 0.5, "of body mass")
    hip_mass_fraction: float = _number(0.40, 0.0, 1.0, "of body mass", lo_open=True)
    leg_natural_frequency_hz: float = _number(21.0, 0.5, 100.0, "Hz, knees straight")
    leg_damping_ratio: float = _number(0.6, 0.01, 5.0, "knees straight")
    leg_natural_frequency_hz_at_135: float = _number(9.0, 0.5, 100.0, "Hz, knees at 135 deg")
    leg_damping_ratio_at_135: float = _number(1.0, 0.01, 5.0, "knees at 135 deg")
    upper_natural_frequency_hz: float = _number(5.5, 0.5, 50.0, "Hz")
    upper_damping_ratio: float = _number(0.5, 0.01, 5.0, "")
    knee_deg: float = _number(180.0, 135.0, 180.0, "deg, 180 = straight")

    def __post_init__(self) -> None:
        super().__post_init__()
        total = self.feet_shanks_mass_fraction + self.hip_mass_fraction
        if total > 1.0:
            raise ValueError(
                f"standing.feet_shanks_mass_fraction + standing.hip_mass_fraction = {total!r} "
                "is out of range; allowed: at most 1 (the upper body takes the rest)"
            )

    def leg_at_knee(self, knee_deg: float) -> tuple[float, float]:
        """Leg natural frequency (Hz) and damping ratio at ``knee_deg`` (linear, 135..180)."""
        if not 135.0 <= knee_deg <= 180.0:
            raise ValueError(f"knee_deg = {knee_deg!r} is out of range; allowed: 135..180 deg")
        bend = (180.0 - knee_deg) / 45.0
        freq = self.leg_natural_frequency_hz + bend * (
            self.leg_natural_frequency_hz_at_135 - self.leg_natural_frequency_hz
        )
        zeta = self.leg_damping_ratio + bend * (
            self.leg_damping_ratio_at_135 - self.leg_damping_ratio
        )
        return freq, zeta


@dataclass(frozen=True)
class SwayProfile(_Section):
    """Slow postural sway: the body's natural frequency is modulated by a few per cent."""

    SECTION: ClassVar[str] = "sway"
    relative_depth: float = _number(0.03, 0.0, 0.5, "fraction")
    frequency_hz: float = _number(0.2, 0.0, 5.0, "Hz", lo_open=True)


@dataclass(frozen=True)
class SteppingProfile(_Section):
    """Stepping on or off: the body's participating mass ramps over this duration."""

    SECTION: ClassVar[str] = "stepping"
    duration_s: float = _number(1.5, 0.0, 30.0, "s", lo_open=True)


@dataclass(frozen=True)
class DistortionProfile(_Section):
    """Harmonic distortion of the plate acceleration, relative to the fundamental.

    The 2nd harmonic's share grows in proportion to the fundamental amplitude and the 3rd's
    with its square (a quadratic and a cubic nonlinearity); both shares are given at
    ``reference_accel_g``, so at small amplitude the plant is linear.
    """

    SECTION: ClassVar[str] = "distortion"
    reference_accel_g: float = _number(0.3, 0.0, 10.0, "g peak", lo_open=True)
    second_harmonic_fraction: float = _number(0.02, 0.0, 0.5, "of fundamental")
    third_harmonic_fraction: float = _number(0.01, 0.0, 0.5, "of fundamental")
    second_harmonic_phase_rad: float = _number(0.0, -10.0, 10.0, "rad")
    third_harmonic_phase_rad: float = _number(0.0, -10.0, 10.0, "rad")


@dataclass(frozen=True)
class AccelerometerProfile(_Section):
    """Plate accelerometer, vertical axis (defaults: ADXL355 class, +/-4 g, 8192 counts/g).

    ``part_*`` and ``calibration_*`` are the spans each device's part and its factory
    calibration are drawn from (``firmware_bridge.sim.sensor.draw_part``, seeded by the device
    id and ``part_lot``); ``sensitivity_error_fraction`` and ``bias_g`` are errors of the
    corrected reading that every device of the profile has and nobody knows (0 by default).
    """

    SECTION: ClassVar[str] = "accelerometer"
    sample_rate_hz: float = _number(1600.0, 0.0, 100_000.0, "Hz", lo_open=True)
    counts_per_g: float = _number(8192.0, 0.0, 1e6, "LSB/g", lo_open=True)
    sensitivity_error_fraction: float = _number(0.0, -0.9, 1.0, "fraction")
    bias_g: float = _number(0.0, -2.0, 2.0, "g")
    part_sensitivity_span_fraction: float = _number(0.08, 0.0, 0.5, "fraction, +/- part to part")
    part_offset_span_g: float = _number(0.05, 0.0, 1.0, "g, +/- part to part")
    calibration_sensitivity_residual_fraction: float = _number(0.001, 0.0, 0.1, "fraction, +/-")
    calibration_offset_residual_g: float = _number(0.001, 0.0, 0.1, "g, +/-")
    part_lot: int = _integer(0, 0, 2**32 - 1, "seed of the per-device draw")
    noise_density_ug: float = _number(22.5, 0.0, 100_000.0, "ug/sqrt(Hz)")
    range_g: float = _number(4.0, 0.0, 1000.0, "g", lo_open=True)
    bit_depth: int = _integer(16, 2, 16, "bits, signed")
    anti_alias_cutoff_hz: float = _number(600.0, 0.0, 50_000.0, "Hz", lo_open=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        nyquist = self.sample_rate_hz / 2.0
        if self.anti_alias_cutoff_hz >= nyquist:
            raise ValueError(
                f"accelerometer.anti_alias_cutoff_hz = {self.anti_alias_cutoff_hz!r} is out of "
                f"range; allowed: below half of sample_rate_hz ({nyquist} Hz)"
            )


@dataclass(frozen=True)
class NumericsProfile(_Section):
    """How the simulator integrates: not physics, but they set its speed."""

    SECTION: ClassVar[str] = "numerics"
    param_update_s: float = _number(0.24, 0.0, 10.0, "s of plant time", lo_open=True)
    block_max: int = _integer(32, 1, 4096, "samples")
    resistance_update_every: int = _integer(4, 1, 1000, "parameter updates")


_SECTIONS: dict[str, type[_Section]] = {
    cls.SECTION: cls
    for cls in (
        ActuatorProfile,
        AmplifierProfile,
        MechanicsProfile,
        ThermalProfile,
        BodyProfile,
        StandingProfile,
        SwayProfile,
        SteppingProfile,
        DistortionProfile,
        AccelerometerProfile,
        NumericsProfile,
    )
}
_TOP_LEVEL_TEXT = ("description", "posture")
POSTURES = ("seated", "standing")

_S = TypeVar("_S", bound=_Section)


@dataclass(frozen=True)
class PlateProfile:
    """Every physical constant of one simulated plate; see ``profiles/default.yaml``."""

    name: str = "default"
    description: str = ""
    posture: str = "standing"
    actuator: ActuatorProfile = field(default_factory=ActuatorProfile)
    amplifier: AmplifierProfile = field(default_factory=AmplifierProfile)
    mechanics: MechanicsProfile = field(default_factory=MechanicsProfile)
    thermal: ThermalProfile = field(default_factory=ThermalProfile)
    body: BodyProfile = field(default_factory=BodyProfile)
    standing: StandingProfile = field(default_factory=StandingProfile)
    sway: SwayProfile = field(default_factory=SwayProfile)
    stepping: SteppingProfile = field(default_factory=SteppingProfile)
    distortion: DistortionProfile = field(default_factory=DistortionProfile)
    accelerometer: AccelerometerProfile = field(default_factory=AccelerometerProfile)
    numerics: NumericsProfile = field(default_factory=NumericsProfile)

    def __post_init__(self) -> None:
        if self.posture not in POSTURES:
            raise ValueError(
                f"posture = {self.posture!r} is not allowed; allowed: {', '.join(POSTURES)}"
            )

    def with_overrides(
        self, posture: str | None = None, **sections: Mapping[str, Any]
    ) -> PlateProfile:
        """A copy with some values replaced, checked like a loaded file.

        Example: ``profile.with_overrides(posture="seated")`` or
        ``profile.with_overrides(standing={"knee_deg": 160})``.
        """
        changes: dict[str, Any] = {} if posture is None else {"posture": posture}
        for section, values in sections.items():
            if section not in _SECTIONS:
                raise ValueError(
                    f"unknown profile section {section!r}; allowed: {', '.join(_SECTIONS)}"
                )
            changes[section] = _build_section(
                _SECTIONS[section], values, base=getattr(self, section)
            )
        return dataclasses.replace(self, **changes)


def _build_section(cls: type[_S], values: object, base: _S | None = None) -> _S:
    """Build one section from a mapping, refusing unknown keys and non-numbers."""
    if not isinstance(values, Mapping):
        raise ValueError(
            f"profile section {cls.SECTION!r} must be a mapping of key: value, "
            f"got {type(values).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(
                f"unknown key {cls.SECTION}.{key!s} (value {value!r}); "
                f"allowed keys: {', '.join(fields)}"
            )
        is_int = isinstance(value, int) and not isinstance(value, bool)
        kwargs[key] = float(value) if is_int and not fields[key].metadata["integer"] else value
    if base is not None:
        kwargs = {name: getattr(base, name) for name in fields} | kwargs
    return cls(**kwargs)


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    folder = resources.files("firmware_bridge.sim").joinpath("profiles")
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def load_profile(name_or_path: str) -> PlateProfile:
    """Load a profile by package name (``"default"``) or from a YAML file path.

    A bare name (no path separator, no ``.yaml``/``.yml`` suffix) is looked up in the package's
    ``profiles`` folder; anything else is read as a path.

    Raises
    ------
    ValueError
        Unknown profile name, malformed YAML, unknown keys or out-of-range values; the
        message names the key, the value and what is allowed.
    FileNotFoundError
        A path that does not exist.
    """
    looks_like_path = (
        "/" in name_or_path or "\\" in name_or_path or name_or_path.endswith((".yaml", ".yml"))
    )
    if looks_like_path:
        path = Path(name_or_path)
        text = path.read_text(encoding="utf-8")
        name = path.stem
        return _parse_profile(text, name, source=name_or_path)
    return _load_packaged(name_or_path)


@functools.cache
def _load_packaged(name: str) -> PlateProfile:
    """A profile shipped in the package (parsed once: profiles are immutable)."""
    entry = resources.files("firmware_bridge.sim").joinpath("profiles", f"{name}.yaml")
    if not entry.is_file():
        raise ValueError(
            f"unknown profile {name!r}; available: {', '.join(available_profiles())}"
            " (or give a path to a .yaml file)"
        )
    return _parse_profile(entry.read_text(encoding="utf-8"), name, source=name)


def _parse_profile(text: str, name: str, source: str) -> PlateProfile:
    try:
        # libyaml's safe loader where the wheel has it (1 ms against 5 ms: every sim:// open)
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ValueError(f"profile {source!r} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"profile {source!r} must be a mapping of sections at the top level")
    kwargs: dict[str, Any] = {"name": name}
    for key, value in data.items():
        if key in _TOP_LEVEL_TEXT:
            if not isinstance(value, str):
                raise ValueError(f"profile key {key!r} must be text, got {value!r}")
            kwargs[key] = value
        elif key in _SECTIONS:
            try:
                kwargs[key] = _build_section(_SECTIONS[key], value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"profile {source!r}: {exc}") from None
        else:
            allowed = ", ".join([*_TOP_LEVEL_TEXT, *_SECTIONS])
            raise ValueError(f"profile {source!r}: unknown key {key!r}; allowed: {allowed}")
    try:
        return PlateProfile(**kwargs)
    except ValueError as exc:
        raise ValueError(f"profile {source!r}: {exc}") from None
