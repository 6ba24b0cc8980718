"""Plate physics: a voice-coil actuator driving a sprung plate that carries a patient.

The plant (docs/simulator.md has the equations and the source of every constant)::

    L di/dt      = V(t) - R(T) i - Bl v                       coil, voltage-driven amplifier
    M a          = Bl i - k_s x - c_s v + m1 (w1^2 z1 + 2 zeta1 w1 z1')   plate, M = m_plate + m0
    y1''         = -w1^2 z1 - 2 zeta1 w1 z1' + (m2/m1) (w2^2 z2 + 2 zeta2 w2 z2')   hip
    z1''         = y1'' - a                                   hip relative to the plate
    z2''         = -w2^2 z2 - 2 zeta2 w2 z2' - y1''           upper body relative to the hip
    C_th dT/dt   = i^2 R(T) - (T - T_amb) / R_th              coil temperature

with the patient as a mass-normalised chain: m0 moves with the plate, m1 (the hip) sits on a
spring and damper tuned to w1 and zeta1, m2 (the upper body) on the hip, tuned to w2 and zeta2.
The seated posture is the special case m2 = 0 (one suspended mass); the standing posture has
all three, with the leg's w1 and zeta1 set by the knee angle. ``V = gain * V_full * u`` where
``u`` is the drive fraction.

How it is integrated: within one call of :meth:`PlatePhysics.run` the drive is a sine with a
linear envelope, which an autonomous 4-state generator produces exactly. The plant plus that
generator is a 9-state (standing: 11-state) linear system whose matrix exponential
(:func:`expm`, Pade 13 with scaling and squaring in numpy, so that opening a simulated plate
does not import scipy) is taken once per (parameters, frequency); its powers for
``k = 0..block_max`` are kept as tables, so ``run`` is a few small matrix-vector products with
no loop over samples and no zero-order-hold error. Slow parameters (coil temperature, sway,
stepping on or off) change only every ``numerics.param_update_s`` of plant time, on sample
boundaries fixed by the sample counter, so a run split into any number of calls gives the same
samples as one call. The coil resistance the electrical equation uses follows the temperature
every ``numerics.resistance_update_every`` updates, so the parameters of the updates between
are known in advance and their tables are built in one batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from firmware_bridge.sim.profile import PlateProfile

if TYPE_CHECKING:
    import scipy.signal

__all__ = ["STANDARD_GRAVITY", "BodyModel", "PhysicsBlock", "PlatePhysics", "body_model", "expm"]

STANDARD_GRAVITY = 9.80665  # m/s^2, the g of every "_g" value
# Plant states: coil current, plate displacement, plate velocity, z1, z1', and with an upper
# body (standing) z2, z2'. The seated model has no upper body and runs on the first five.
_N_PLANT_MAX = 7
_N_GEN = 4  # the generator: cos, sin, tau cos, tau sin
_N_DIST = 6 + 8  # tau^p cos/sin(2 w tau), p <= 2, and (3 w tau), p <= 3
_N_OUT = 5  # accel g, current A, volts, hip accel g, force on the patient N
_MAX_PATIENT_KG = 300.0
_DRIVE_TOLERANCE = 1e-6
# Pade 13 coefficients and the 1-norm up to which it is accurate to unit roundoff (Higham 2005).
_PADE13 = (
    64764752532480000.0,
    32382376266240000.0,
    7771770303897600.0,
    1187353796428800.0,
    129060195264000.0,
    10559470521600.0,
    670442572800.0,
    33522128640.0,
    1323241920.0,
    40840800.0,
    960960.0,
    16380.0,
    182.0,
    1.0,
)
_THETA13 = 5.371920351148152
# The tables act on [x0, drive weights] directly: PlatePhysics._generator orders and signs the
# drive generator's states for that.

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PhysicsBlock:
    """True plant values at the sample instants of one :meth:`PlatePhysics.run` call.

    Attributes
    ----------
    accel_g : (n,) float64
        Vertical plate acceleration in g, gravity removed, harmonic distortion included.
    coil_current_a : (n,) float64
        Coil current in A.
    volts : (n,) float64
        Amplifier output voltage in V.
    hip_accel_g : (n,) float64
        Absolute vertical acceleration of the patient's hip mass (m1) in g, without the
        distortion approximation (zero-mass patients: the model's value all the same).
    patient_force_n : (n,) float64
        Vertical force the plate exerts on the patient, N (dynamic part; weight excluded).
    """

    accel_g: FloatArray
    coil_current_a: FloatArray
    volts: FloatArray
    hip_accel_g: FloatArray
    patient_force_n: FloatArray


@dataclass(frozen=True)
class BodyModel:
    """The patient as a mass-normalised chain: fractions of body mass and per-kg dynamics.

    ``rigid_fraction`` moves with the plate; ``hip_fraction`` sits on the legs (natural
    frequency ``leg_hz``, damping ratio ``leg_zeta``); ``upper_fraction`` sits on the hip
    (``upper_hz``, ``upper_zeta``). The seated model has ``upper_fraction == 0``.
    """

    rigid_fraction: float
    hip_fraction: float
    upper_fraction: float
    leg_hz: float
    leg_zeta: float
    upper_hz: float
    upper_zeta: float

    def response(
        self, freqs_hz: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.complex128], npt.NDArray[np.complex128]]:
        """Transmissibility to the hip and normalised apparent mass on a rigid moving base.

        Returns ``(T_hip, M / m)``: hip acceleration over base acceleration, and the force
        needed to move the body over (base acceleration x body mass), at ``freqs_hz``.
        """
        freqs = np.asarray(freqs_hz, dtype=np.float64)
        s = 2j * np.pi * freqs.reshape(-1)
        w1, w2 = 2.0 * math.pi * self.leg_hz, 2.0 * math.pi * self.upper_hz
        k1 = w1 * w1 + 2.0 * self.leg_zeta * w1 * s  # leg, per kg of hip mass
        k2 = w2 * w2 + 2.0 * self.upper_zeta * w2 * s  # trunk, per kg of upper mass
        ratio = self.upper_fraction / self.hip_fraction
        # Relative motions per unit base acceleration: z2 = -Y1 / (s^2 + k2), where the hip's
        # absolute acceleration Y1 = -k1 z1 + ratio k2 z2 and z1 = (Y1 - 1) / s^2.
        upper_load = ratio * k2 * s * s / (s * s + k2)  # hip accel fed back by the upper body
        hip = k1 / (k1 + s * s + upper_load)
        z1 = (hip - 1.0) / (s * s)
        apparent = self.rigid_fraction - self.hip_fraction * k1 * z1
        return hip.reshape(freqs.shape), apparent.reshape(freqs.shape)


def body_model(profile: PlateProfile, sway_factor: float = 1.0) -> BodyModel:
    """The patient model the profile's posture selects (natural frequencies x sway_factor)."""
    if profile.posture == "standing":
        st = profile.standing
        leg_hz, leg_zeta = st.leg_at_knee(st.knee_deg)
        return BodyModel(
            rigid_fraction=st.feet_shanks_mass_fraction,
            hip_fraction=st.hip_mass_fraction,
            upper_fraction=1.0 - st.feet_shanks_mass_fraction - st.hip_mass_fraction,
            leg_hz=leg_hz * sway_factor,
            leg_zeta=leg_zeta,
            upper_hz=st.upper_natural_frequency_hz * sway_factor,
            upper_zeta=st.upper_damping_ratio,
        )
    body = profile.body
    return BodyModel(
        rigid_fraction=body.rigid_mass_fraction,
        hip_fraction=1.0 - body.rigid_mass_fraction,
        upper_fraction=0.0,
        leg_hz=body.natural_frequency_hz * sway_factor,
        leg_zeta=body.damping_ratio,
        upper_hz=body.natural_frequency_hz,  # unused: no upper mass
        upper_zeta=body.damping_ratio,
    )


@dataclass(frozen=True)
class _Params:
    """Plant parameters that change slowly (held constant between updates)."""

    resistance_ohm: float
    standing_mass_kg: float
    sway_factor: float
    open_circuit: bool


@dataclass(frozen=True)
class AheadRun:
    """Blocks computed ahead by :meth:`PlatePhysics.run_ahead`, not yet committed.

    ``accel_g[j]`` is block j's true acceleration (g), ``states[j]`` the plant state at its end
    and ``i2[j]`` the sum of its squared coil current (for the coil's heating). A run through
    later slow-parameter updates has one window per update: ``keys[i]`` is the inputs key
    (:attr:`PlatePhysics.inputs_key` while they run) of the i-th window's blocks: all of them
    in one window, else the present window's ``samples_to_update // n`` blocks, then
    ``samples_per_update // n`` each (the caller sized the windows; they are not kept here).
    """

    accel_g: FloatArray  # (blocks, n)
    states: FloatArray  # (blocks, p)
    i2: list[float]
    samples_per_block: int
    keys: list[tuple[object, ...]]


@dataclass
class _Tables:
    """Per-sample responses for k = 0..block_max at one (parameters, frequency).

    With ``v = [x0 (p), drive weights (4), distortion weights (14)]`` for a segment starting at
    state ``x0`` (p = 5 plant states, 7 with an upper body): ``outputs[:, k] @ v`` gives (accel
    g, current A, volts, hip accel g, force on the patient N) at sample k and
    ``state[k] @ v[:p + 4]`` the plant state after k samples. Blocks simulated ahead need only
    the first two outputs: the other three are made at the first :meth:`all_outputs`.
    """

    key: tuple[_Params, float]
    state: FloatArray  # (K+1, p, p + 4)
    outputs: FloatArray  # (5, K+1, p + 18); rows 3 and 4 are zero until all_outputs()
    response_g_per_drive: complex  # steady-state accel per unit drive fraction at gain 1
    hip_row: FloatArray  # (p,): hip accel (m/s^2) over the plant state
    force_row: FloatArray  # (p,): patient force (N) over the plant state
    complete: bool = False

    def all_outputs(self) -> FloatArray:
        """``outputs`` with every row filled in."""
        if not self.complete:
            n_aug = self.state.shape[2]
            other_rows = np.stack([self.hip_row / STANDARD_GRAVITY, self.force_row])
            self.outputs[3:5, :, :n_aug] = np.matmul(other_rows, self.state).transpose(1, 0, 2)
            self.complete = True
        return self.outputs


class PlatePhysics:
    """The plate, its actuator, the patient standing on it and the coil's temperature.

    Parameters
    ----------
    profile
        Physical constants (see :mod:`firmware_bridge.sim.profile`).
    patient_mass_kg
        Static body mass, 0 for an empty plate.
    sample_rate_hz
        The sample clock: :meth:`run` returns values at multiples of ``1 / sample_rate_hz``.
    rng
        Source of randomness (the sway phase); same seed, same plant.
    patient_on_at_s, patient_off_at_s
        Plant times at which the patient starts stepping on or off; the standing mass ramps
        over ``profile.stepping.duration_s``. ``patient_on_at_s=None`` means already standing
        at t = 0; ``patient_off_at_s=None`` means never stepping off.
    presence_s
        Instead of one on/off pair: the intervals ``(on_s, off_s)`` the patient spends on the
        plate, in time order, for a patient who steps off and back on several times. Each
        step on or off starts at the given time and ramps like the single pair; ``on_s = 0``
        means already standing at power-up, ``off_s = None`` (last interval only) staying on.
    sway
        Modulate the body's natural frequency slowly (postural sway).

    Attributes
    ----------
    amplifier_gain_factor : float
        Multiplies the amplifier output; 1.0 normally, e.g. 0.5 to inject a gain fault.
    open_circuit : bool
        True breaks the coil circuit: no current, no force, the plate rings down freely.
    """

    def __init__(
        self,
        profile: PlateProfile,
        patient_mass_kg: float,
        sample_rate_hz: float,
        rng: np.random.Generator,
        *,
        patient_on_at_s: float | None = None,
        patient_off_at_s: float | None = None,
        presence_s: Sequence[tuple[float, float | None]] | None = None,
        sway: bool = True,
    ) -> None:
        if not 0.0 <= patient_mass_kg <= _MAX_PATIENT_KG:
            raise ValueError(
                f"patient_mass_kg = {patient_mass_kg!r} is out of range; "
                f"allowed: 0 <= mass <= {_MAX_PATIENT_KG} kg"
            )
        if not (math.isfinite(sample_rate_hz) and sample_rate_hz > 0.0):
            raise ValueError(f"sample_rate_hz = {sample_rate_hz!r} must be a positive number")
        for label, when in (
            ("patient_on_at_s", patient_on_at_s),
            ("patient_off_at_s", patient_off_at_s),
        ):
            if when is not None and not (math.isfinite(when) and when >= 0.0):
                raise ValueError(f"{label} = {when!r} must be None or a time >= 0 s")
        if (
            patient_on_at_s is not None
            and patient_off_at_s is not None
            and patient_off_at_s < patient_on_at_s
        ):
            raise ValueError(
                f"patient_off_at_s = {patient_off_at_s!r} is before patient_on_at_s = "
                f"{patient_on_at_s!r}; stepping off must come after stepping on"
            )
        self.profile = profile
        self.amplifier_gain_factor = 1.0
        self.open_circuit = False
        self._patient_mass_kg = float(patient_mass_kg)
        self._fs = float(sample_rate_hz)
        self._dt = 1.0 / self._fs
        if presence_s is None:
            self._presence: list[tuple[float | None, float | None]] = [
                (patient_on_at_s, patient_off_at_s)
            ]
        elif patient_on_at_s is not None or patient_off_at_s is not None:
            raise ValueError("give either presence_s or patient_on_at_s/patient_off_at_s, not both")
        else:
            self._presence = _checked_presence(presence_s)
        self._sway = sway
        self._sway_phase = float(rng.uniform(0.0, 2.0 * math.pi))  # drawn even if sway is off
        self._block_max = profile.numerics.block_max
        self._update_every = max(1, round(profile.numerics.param_update_s * self._fs))
        self._tau = np.arange(self._block_max + 1) * self._dt

        self._sample_index = 0
        self._until_update = self._update_every
        self._body = body_model(profile)
        has_upper_body = self._body.upper_fraction > 0.0
        self._n_plant = _N_PLANT_MAX if has_upper_body else _N_PLANT_MAX - 2
        self._n_aug = self._n_plant + _N_GEN
        self._x = np.zeros(self._n_plant)
        self._i2_sum = 0.0
        self._i2_count = 0
        self._coil_temp_c = profile.thermal.ambient_c
        # The coil resistance the plant's equations use: refreshed from the temperature every
        # numerics.resistance_update_every updates, so the parameters of the updates between
        # are known in advance and their tables are built together (see _tables_for).
        self._resistance_every = profile.numerics.resistance_update_every
        self._updates = 0  # slow-parameter updates since power-up (or since skip_at_rest)
        self._plant_resistance_ohm = self._resistance(self._coil_temp_c)
        self._params = self._current_params()
        self._tables: _Tables | None = None
        self._tables_ahead: dict[tuple[_Params, float], _Tables] = {}
        self._drive_columns_cache: tuple[float, FloatArray] | None = None
        self._generator_cache: tuple[float, FloatArray, npt.NDArray[np.complex128]] | None = None

    # ---- public state -------------------------------------------------------------------

    @property
    def time_s(self) -> float:
        """Plant time of the current state, s."""
        return self._sample_index * self._dt

    @property
    def coil_temperature_c(self) -> float:
        """Coil temperature, C (updated every ``numerics.param_update_s``)."""
        return self._coil_temp_c

    @property
    def patient_mass_on_plate_kg(self) -> float:
        """Standing mass the plate carries now, including a stepping ramp in progress, kg."""
        return self._params.standing_mass_kg

    def set_patient_mass_kg(self, mass_kg: float) -> None:
        """Change the standing patient's mass at once: a load step (e.g. lifting a bag).

        Takes effect from the next sample; stepping on and off still ramp this mass.
        """
        if not 0.0 <= mass_kg <= _MAX_PATIENT_KG:
            raise ValueError(
                f"mass_kg = {mass_kg!r} is out of range; allowed: 0 <= mass <= {_MAX_PATIENT_KG} kg"
            )
        self._patient_mass_kg = float(mass_kg)
        self._params = self._current_params()

    def set_coil_temperature_c(self, temperature_c: float) -> None:
        """Set the coil temperature (tests, warm starts); takes effect at the next run."""
        if not (math.isfinite(temperature_c) and -50.0 <= temperature_c <= 400.0):
            raise ValueError(
                f"coil temperature {temperature_c!r} C is out of range; allowed: -50..400 C"
            )
        self._coil_temp_c = float(temperature_c)
        self._plant_resistance_ohm = self._resistance(temperature_c)
        self._params = replace(self._params, resistance_ohm=self._plant_resistance_ohm)

    def skip_at_rest(self, n: int) -> None:
        """Advance the clock ``n`` samples with no drive, without simulating them.

        The plate ends at rest (as an undriven plate settles within a second) and the coil
        cools towards ambient as it would with no current: the state of a plate left powered
        and idle, for a device that was up before the host came. Cheap for any ``n``.
        """
        if n < 0:
            raise ValueError(f"n = {n!r} must be >= 0 samples")
        thermal = self.profile.thermal
        tau_s = thermal.thermal_resistance_k_per_w * thermal.thermal_capacity_j_per_k
        cooled = (self._coil_temp_c - thermal.ambient_c) * math.exp(-n * self._dt / tau_s)
        self._coil_temp_c = thermal.ambient_c + cooled
        self._x = np.zeros(self._n_plant)
        self._i2_sum = 0.0
        self._i2_count = 0
        self._until_update = self._update_every
        self._sample_index += n
        self._updates = 0
        self._plant_resistance_ohm = self._resistance(self._coil_temp_c)
        self._params = self._current_params()

    # ---- linear model -------------------------------------------------------------------

    def linear_model(self) -> scipy.signal.StateSpace:
        """Continuous-time model at the current parameters: drive fraction -> accel in g.

        Includes ``amplifier_gain_factor`` and ``open_circuit``; excludes distortion.
        """
        import scipy.signal  # noqa: PLC0415 (an analysis tool: not on the simulator's path)

        a, b, c = self._linear_abc()
        return scipy.signal.StateSpace(a, b[:, None], c[None, :], np.zeros((1, 1)))

    def _linear_abc(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """A, B (gain included) and C of :meth:`linear_model` as plain arrays."""
        params = replace(self._params, open_circuit=self.open_circuit)
        a, b = self._plant_matrices(params)
        return a, b * self.amplifier_gain_factor, a[2] / STANDARD_GRAVITY

    def frequency_response_g_per_drive(self, freqs_hz: npt.ArrayLike) -> npt.NDArray[np.complex128]:
        """Complex accel (g peak) per unit drive fraction at ``freqs_hz``, from the linear model.

        A steady drive ``d sin(theta)`` gives ``d |H| sin(theta + angle(H))``.
        """
        freqs = np.asarray(freqs_hz, dtype=np.float64)
        a, b, c = self._linear_abc()
        d = 0j
        s = 2j * np.pi * freqs.reshape(-1)
        # C (sI - A)^-1 B + D, evaluated directly: converting to a transfer function first
        # (scipy.signal.freqresp) is badly conditioned for this plant.
        resolvent = s[:, None, None] * np.eye(a.shape[0]) - a
        x = np.linalg.solve(resolvent, np.broadcast_to(b, (s.size, b.size))[..., None])[..., 0]
        return np.asarray(x @ c + d, dtype=np.complex128).reshape(freqs.shape)

    # ---- stepping the plant -------------------------------------------------------------

    def run(
        self,
        n: int,
        freq_hz: float,
        phase0_rad: float,
        drive0: float,
        drive_rate_per_s: float,
    ) -> PhysicsBlock:
        """Advance ``n`` samples under ``u(tau) = (drive0 + rate tau) sin(phase0 + 2 pi f tau)``.

        Returns the true values at ``tau_k = k / fs`` for ``k = 0..n-1`` and leaves the state at
        ``tau = n / fs``. The envelope is a fraction of full drive and must stay within -1..1.
        """
        out = self._run(n, freq_hz, phase0_rad, drive0, drive_rate_per_s, _N_OUT)
        return PhysicsBlock(out[0], out[1], out[2], out[3], out[4])

    def run_accel(
        self,
        n: int,
        freq_hz: float,
        phase0_rad: float,
        drive0: float,
        drive_rate_per_s: float,
    ) -> FloatArray:
        """:meth:`run`'s ``accel_g`` alone, shape (n,): the same plant, the same samples.

        What the simulated device needs of a block (the coil current is computed too, for the
        coil's heating); volts, hip acceleration and patient force are left out.
        """
        accel: FloatArray = self._run(n, freq_hz, phase0_rad, drive0, drive_rate_per_s, 2)[0]
        return accel

    def _run(
        self, n: int, freq_hz: float, phase0_rad: float, drive0: float, rate: float, rows: int
    ) -> FloatArray:
        """:meth:`run` as an array of the first ``rows`` outputs, shape (rows, n)."""
        _check_run(n, freq_hz, phase0_rad, drive0, drive0 + rate * n * self._dt)
        w = 2.0 * math.pi * freq_hz
        seg = min(n, self._until_update, self._block_max)
        if seg == n:  # the usual case: one segment, return the product's rows as they are
            return self._segment(n, w, phase0_rad, drive0, rate, rows)
        out = np.empty((rows, n))
        done = 0
        while done < n:
            seg = min(n - done, self._until_update, self._block_max)
            tau0 = done * self._dt
            out[:, done : done + seg] = self._segment(
                seg, w, phase0_rad + w * tau0, drive0 + rate * tau0, rate, rows
            )
            done += seg
        return out

    @property
    def start_vector_size(self) -> int:
        """Entries of a segment's start vector ``v`` (:meth:`segment_start`)."""
        return self._n_aug + _N_DIST

    @property
    def samples_to_update(self) -> int:
        """Samples left before the next slow-parameter update (temperature, sway, stepping)."""
        return self._until_update

    @property
    def inputs_key(self) -> tuple[object, ...]:
        """What a run's result depends on besides its drive and the plant state: equal keys,
        equal plant (parameters, amplifier gain, open circuit)."""
        return (self._params, self.amplifier_gain_factor, self.open_circuit)

    def windows_ahead(self, n: int, freq_hz: float) -> int:
        """How many whole slow-parameter windows after the present one :meth:`run_ahead` can
        run through in blocks of ``n`` samples at ``freq_hz``: those whose tables are built
        (with this window's: see :meth:`_tables_for`, which builds them if they are not), when
        the updates fall on block boundaries. Each holds ``samples_per_update // n`` blocks."""
        if n < 1 or self._until_update % n or self._update_every % n:
            return 0
        w = 2.0 * math.pi * freq_hz
        return len(self._tables_coming(w, self._tables_for(w)))

    @property
    def samples_per_update(self) -> int:
        """Samples between two slow-parameter updates."""
        return self._update_every

    def _tables_coming(self, w: float, tables: _Tables) -> list[_Tables]:
        """The tables :meth:`_tables_for` will give at each update after this window's (whose
        tables are ``tables``), in order, while the parameters there are known now (until the
        coil resistance is next refreshed) and their tables are built: its own choice, made
        ahead without changing what it keeps."""
        coming: list[_Tables] = []
        left = dict(self._tables_ahead)
        first = self._sample_index + self._until_update
        for k in range(self._resistance_every - 1 - self._updates % self._resistance_every):
            params = self._params_at((first + k * self._update_every) * self._dt)  # as built
            if not (tables.key[1] == w and tables.key[0] == params):
                found = left.pop((params, w), None)
                if found is None:
                    break
                tables = found
            coming.append(tables)
        return coming

    def run_ahead(
        self, n: int, freq_hz: float, phases_rad: Sequence[float], drive: float
    ) -> AheadRun:
        """Compute one block of ``n`` samples per entry of ``phases_rad`` (the drive's phase at
        each block's first sample) at the constant drive ``drive``, without advancing the plant.

        Each block is what :meth:`run` gives for it (the same table and weights; the plant state
        carried from block to block, the blocks' products taken at once). The plant moves on only
        through :meth:`commit_ahead`, one block at a time, so a caller can drop the blocks it has
        not committed (the drive changed) and go on from the last committed boundary. The blocks
        must end by the next slow-parameter update (which the last block's commit makes), or
        run on through whole windows of :meth:`windows_ahead`: each window's blocks are
        computed as a run ahead started at its first block would compute them (the same products
        of the same shapes), with the plant state carried from the window before.
        """
        blocks = len(phases_rad)
        until = self._until_update
        extra = blocks * n - until  # samples after the next update
        more = 0
        if n >= 1 and extra > 0 and until % n == 0 and extra % self._update_every == 0:
            more = extra // self._update_every  # whole windows after this one
        if (
            blocks < 1
            or n < 1
            or (extra > 0 and not more)
            or n > self._block_max
            or (more and more > self.windows_ahead(n, freq_hz))
        ):
            raise ValueError(
                f"{blocks} blocks of {n} samples do not end by the next parameter update "
                f"({until} samples) or at a later one whose tables are built, or a block "
                f"exceeds a table ({self._block_max})"
            )
        if not (math.isfinite(drive) and abs(drive) <= 1.0 + _DRIVE_TOLERANCE):
            raise ValueError(f"drive = {drive!r} is outside the drive range -1..1")
        if not (math.isfinite(freq_hz) and freq_hz >= 0.0):
            raise ValueError(f"freq_hz = {freq_hz!r} must be a finite frequency >= 0")
        w = 2.0 * math.pi * freq_hz
        tables = self._tables_for(w)
        if not more:
            accel, states, i2 = self._run_window(tables, n, phases_rad, drive, self._x)
            return AheadRun(accel, states, i2, n, [self.inputs_key])
        window_tables = [tables, *self._tables_coming(w, tables)[:more]]
        sizes = [until // n] + [self._update_every // n] * more
        gain, circuit = self.amplifier_gain_factor, self.open_circuit
        keys: list[tuple[object, ...]] = [self.inputs_key]
        keys += [(table.key[0], gain, circuit) for table in window_tables[1:]]
        accels, all_states, all_i2 = [], [], []
        x, at = self._x, 0
        for table, size in zip(window_tables, sizes, strict=True):
            accel, states, i2 = self._run_window(table, n, phases_rad[at : at + size], drive, x)
            accels.append(accel)
            all_states.append(states)
            all_i2 += i2
            x, at = states[-1], at + size
        return AheadRun(np.concatenate(accels), np.concatenate(all_states), all_i2, n, keys)

    def _run_window(
        self,
        tables: _Tables,
        n: int,
        phases_rad: Sequence[float],
        drive: float,
        x0: FloatArray,
    ) -> tuple[FloatArray, FloatArray, list[float]]:
        """:meth:`run_ahead`'s blocks within one window from the plant state ``x0``:
        (accel (blocks, n), states (blocks, p), i2)."""
        blocks = len(phases_rad)
        n_plant, n_aug = self._n_plant, self._n_aug
        v = np.zeros((blocks, n_aug + _N_DIST))
        gain = self.amplifier_gain_factor
        if drive != 0.0 and gain != 0.0:
            v[:, n_plant:] = self._constant_drive_weights(
                gain * drive, np.asarray(phases_rad, dtype=np.float64), tables.response_g_per_drive
            )
        step = tables.state[n]  # (p, p + 4): plant state after n samples from [x0, generator]
        step_x = step[:, :n_plant]
        driven = v[:, n_plant:n_aug] @ step[:, n_plant:].T  # (blocks, p)
        states = np.empty((blocks, n_plant))
        if self._params.open_circuit:  # no current at each block's start
            x = x0.copy()
            for j in range(blocks):
                x[0] = 0.0
                v[j, :n_plant] = x
                x = step_x @ x + driven[j]
                states[j] = x
        else:  # each block starts where the last ended: its start vector is the state before
            x = x0
            for j in range(blocks):
                x = np.matmul(step_x, x, out=states[j])
                x += driven[j]
            v[0, :n_plant] = x0
            v[1:, :n_plant] = states[:-1]
        out = tables.outputs[:2, :n, :] @ v.T  # (2, n, blocks): accel and coil current
        current = out[1]
        i2 = np.einsum("kj,kj->j", current, current)
        return np.ascontiguousarray(out[0].T), states, i2.tolist()

    def segment_start(
        self,
        n: int,
        freq_hz: float,
        phase0_rad: float,
        drive0: float,
        drive_rate_per_s: float,
        into: FloatArray | None = None,
    ) -> tuple[_Tables, FloatArray] | None:
        """The tables and start vector ``v`` of :meth:`run`'s ``n`` samples from now, if they
        are one segment (no parameter update inside, at most one table long), else None.

        ``outputs[:, :n] @ v`` are the samples and ``state[n] @ v[:p + 4]`` the state after
        them (see ``_Tables``); :meth:`commit_segment` then advances the plant. Checked as
        :meth:`run` checks its arguments. ``v`` is written into the start of ``into`` when
        given (a caller's buffer, every entry of ``v`` overwritten), else a new array.
        """
        _check_run(n, freq_hz, phase0_rad, drive0, drive0 + drive_rate_per_s * n * self._dt)
        if n > self._until_update or n > self._block_max:
            return None
        tables = self._tables_for(2.0 * math.pi * freq_hz)
        if into is None:
            return tables, self._start_vector(tables, phase0_rad, drive0, drive_rate_per_s)
        v = into[: self._n_aug + _N_DIST]
        self._write_start_vector(v, tables, phase0_rad, drive0, drive_rate_per_s)
        return tables, v

    def commit_segment(self, n: int, state: FloatArray, current_squared_sum: float) -> None:
        """Advance the plant over the ``n`` samples of :meth:`segment_start`, which ended in
        ``state`` with the sum of the squared coil current ``current_squared_sum``."""
        self._x = state
        self._i2_sum += current_squared_sum
        self._i2_count += n
        self._sample_index += n
        self._until_update -= n
        if self._until_update == 0:
            self._update_slow_parameters()

    def commit_ahead(self, ahead: AheadRun, block: int) -> None:
        """Advance the plant over block ``block`` of ``ahead`` (blocks are committed in order)."""
        n = ahead.samples_per_block
        self._x = ahead.states[block]
        self._i2_sum += ahead.i2[block]
        self._i2_count += n
        self._sample_index += n
        self._until_update -= n
        if self._until_update == 0:  # the run ended at the update, as run() would have
            self._update_slow_parameters()

    def commit_ahead_many(self, ahead: AheadRun, first: int, count: int) -> None:
        """:meth:`commit_ahead` of blocks ``first .. first + count - 1`` at once."""
        n = ahead.samples_per_block
        for i2 in ahead.i2[first : first + count]:  # in order, as one commit at a time adds them
            self._i2_sum += i2
        self._x = ahead.states[first + count - 1]
        self._i2_count += count * n
        self._sample_index += count * n
        self._until_update -= count * n
        if self._until_update == 0:
            self._update_slow_parameters()

    def _tables_for(self, w: float) -> _Tables:
        """The tables at the present parameters and ``w``.

        A table is built for the parameters of this update and, in the same batch, for those
        of the following updates until the coil resistance is next refreshed: sway and stepping
        are functions of time, so those parameters are known now unless something changes them
        (a load step, an open circuit, another frequency), and then they are built anew.
        """
        if self.open_circuit != self._params.open_circuit:
            self._params = replace(self._params, open_circuit=self.open_circuit)
        tables = self._tables
        if (
            tables is not None
            and tables.key[1] == w
            and (tables.key[0] is self._params or tables.key[0] == self._params)
        ):
            return tables
        tables = self._tables_ahead.pop((self._params, w), None)
        if tables is None:
            coming = [self._params]
            first = self._sample_index + self._until_update
            for k in range(self._resistance_every - 1 - self._updates % self._resistance_every):
                coming.append(self._params_at((first + k * self._update_every) * self._dt))
            built = self._build_tables(coming, w)
            tables = built[0]
            self._tables_ahead = {table.key: table for table in built[1:]}
        self._tables = tables
        return tables

    def _start_vector(
        self, tables: _Tables, phase0: float, drive0: float, rate: float
    ) -> FloatArray:
        """``[x0, drive weights, distortion weights]`` for a segment starting now."""
        v = np.empty(self._n_aug + _N_DIST)
        self._write_start_vector(v, tables, phase0, drive0, rate)
        return v

    def _write_start_vector(
        self, v: FloatArray, tables: _Tables, phase0: float, drive0: float, rate: float
    ) -> None:
        """:meth:`_start_vector` written into ``v`` (every entry)."""
        if self._params.open_circuit:
            self._x[0] = 0.0
        n_plant = self._n_plant
        v[:n_plant] = self._x
        gain = self.amplifier_gain_factor
        if (drive0 != 0.0 or rate != 0.0) and gain != 0.0:
            v[n_plant:] = self._drive_weights(
                gain * drive0, gain * rate, phase0, tables.response_g_per_drive
            )
        else:
            v[n_plant:] = 0.0

    def _segment(
        self, n: int, w: float, phase0: float, drive0: float, rate: float, rows: int
    ) -> FloatArray:
        """Advance n <= block_max samples at constant parameters.

        Returns a (rows, n) array of the first ``rows`` of: accel in g, coil current in A,
        amplifier volts, hip accel in g, force on the patient in N (``rows`` >= 2: the current
        heats the coil).
        """
        tables = self._tables_for(w)
        v = self._start_vector(tables, phase0, drive0, rate)
        table = tables.outputs if rows <= 2 else tables.all_outputs()
        out: FloatArray = table[:rows, :n, :] @ v
        current = out[1]
        self.commit_segment(n, tables.state[n] @ v[: self._n_aug], float(current @ current))
        return out

    def _drive_weights(
        self, level0: float, rate: float, phase0: float, response: complex
    ) -> list[float]:
        """Weights of the table's drive and distortion columns for one segment.

        The drive ``(level0 + rate tau) sin(phase0 + w tau)`` weighs the cos, sin, tau cos and
        tau sin columns. Distortion (an approximation): the steady fundamental
        ``s1(tau) sin(psi)`` with ``s1 = |H| (level0 + rate tau)`` and
        ``psi = phase0 + w tau + angle(H)`` gets harmonics ``k2 s1^2 sin(2 psi + phi2)`` and
        ``k3 s1^3 sin(3 psi + phi3)``, so the 2nd harmonic's share of the fundamental is
        ``k2 |s1|`` and the 3rd's ``k3 s1^2``. Expanded in powers of tau they weigh the
        table's ``tau^p cos(h w tau)`` and ``tau^p sin(h w tau)`` columns.
        """
        sin0 = math.sin(phase0)
        cos0 = math.cos(phase0)
        dist = self.profile.distortion
        ref = dist.reference_accel_g
        magnitude = abs(response)
        angle = math.atan2(response.imag, response.real)
        phi2 = 2.0 * (phase0 + angle) + dist.second_harmonic_phase_rad
        phi3 = 3.0 * (phase0 + angle) + dist.third_harmonic_phase_rad
        k2 = dist.second_harmonic_fraction / ref
        k3 = dist.third_harmonic_fraction / (ref * ref)
        c2, s2 = k2 * math.sin(phi2), k2 * math.cos(phi2)
        c3, s3 = k3 * math.sin(phi3), k3 * math.cos(phi3)
        a0 = magnitude * level0
        a1 = magnitude * rate
        # s1^2 and s1^3 in powers of tau (binomial expansion of (a0 + a1 tau)^h)
        q0, q1, q2 = a0 * a0, 2.0 * a0 * a1, a1 * a1
        r0, r1, r2, r3 = a0 * q0, 3.0 * q0 * a1, 3.0 * a0 * q2, a1 * q2
        return [
            level0 * sin0, level0 * cos0, rate * sin0, rate * cos0,
            q0 * c2, q0 * s2, q1 * c2, q1 * s2, q2 * c2, q2 * s2,
            r0 * c3, r0 * s3, r1 * c3, r1 * s3, r2 * c3, r2 * s3, r3 * c3, r3 * s3,
        ]  # fmt: skip

    def _constant_drive_weights(
        self, level: float, phases: FloatArray, response: complex
    ) -> FloatArray:
        """:meth:`_drive_weights` at a constant drive ``level`` for every phase of ``phases``
        (shape (blocks,)) at once: shape (blocks, 18). With no ramp (``rate`` 0) only the
        level's own columns are non-zero."""
        dist = self.profile.distortion
        ref = dist.reference_accel_g
        angle = math.atan2(response.imag, response.real)
        k2 = dist.second_harmonic_fraction / ref
        k3 = dist.third_harmonic_fraction / (ref * ref)
        a0 = abs(response) * level
        q0, r0 = a0 * a0, a0 * a0 * a0
        phi2 = 2.0 * (phases + angle) + dist.second_harmonic_phase_rad
        phi3 = 3.0 * (phases + angle) + dist.third_harmonic_phase_rad
        out = np.zeros((phases.size, _N_GEN + _N_DIST))
        out[:, 0] = level * np.sin(phases)
        out[:, 1] = level * np.cos(phases)
        out[:, 4] = q0 * (k2 * np.sin(phi2))
        out[:, 5] = q0 * (k2 * np.cos(phi2))
        out[:, 10] = r0 * (k3 * np.sin(phi3))
        out[:, 11] = r0 * (k3 * np.cos(phi3))
        return out

    # ---- slow parameters ----------------------------------------------------------------

    def _update_slow_parameters(self) -> None:
        """Advance the coil temperature over the last interval, then sway and stepping."""
        interval_s = self._i2_count * self._dt
        if self._i2_count:
            thermal = self.profile.thermal
            power_w = self._i2_sum / self._i2_count * self._resistance(self._coil_temp_c)
            steady_c = thermal.ambient_c + power_w * thermal.thermal_resistance_k_per_w
            tau_s = thermal.thermal_resistance_k_per_w * thermal.thermal_capacity_j_per_k
            self._coil_temp_c = steady_c + (self._coil_temp_c - steady_c) * math.exp(
                -interval_s / tau_s
            )
        self._i2_sum = 0.0
        self._i2_count = 0
        self._until_update = self._update_every
        self._updates += 1
        if self._updates % self._resistance_every == 0:
            self._plant_resistance_ohm = self._resistance(self._coil_temp_c)
        self._params = self._current_params()

    def _resistance(self, temperature_c: float) -> float:
        act = self.profile.actuator
        return act.coil_resistance_20c_ohm * (
            1.0 + act.copper_tempco_per_k * (temperature_c - 20.0)
        )

    def _standing_fraction(self, t: float) -> float:
        if self._patient_mass_kg == 0.0:
            return 0.0
        duration = self.profile.stepping.duration_s
        fraction = 0.0
        for on_at, off_at in self._presence:  # in time order, not overlapping: sum <= 1
            on = 1.0 if on_at is None else _smooth_step((t - on_at) / duration)
            off = 0.0 if off_at is None else _smooth_step((t - off_at) / duration)
            fraction += on * (1.0 - off)
        return min(fraction, 1.0)

    def _current_params(self) -> _Params:
        """Parameters at the current plant time (stepping ramp, sway, coil resistance)."""
        return self._params_at(self.time_s)

    def _params_at(self, t: float) -> _Params:
        """Parameters at plant time ``t`` with the present mass, resistance and circuit."""
        standing_mass_kg = self._patient_mass_kg * self._standing_fraction(t)
        sway_factor = 1.0
        if self._sway and standing_mass_kg > 0.0:
            sway = self.profile.sway
            sway_factor += sway.relative_depth * math.sin(
                2.0 * math.pi * sway.frequency_hz * t + self._sway_phase
            )
        return _Params(
            resistance_ohm=self._plant_resistance_ohm,
            standing_mass_kg=standing_mass_kg,
            sway_factor=sway_factor,
            open_circuit=self.open_circuit,
        )

    # ---- matrices -----------------------------------------------------------------------

    def _plant_matrices(self, p: _Params) -> tuple[FloatArray, FloatArray]:
        """State matrix A (7, 7) and input vector b (7,) per unit drive at gain 1.

        State: coil current, plate displacement, plate velocity, hip-minus-plate displacement
        z1, z1', upper-body-minus-hip displacement z2, z2'.
        """
        a, b, _, _ = self._plant_rows([p])
        return a[0], b[0]

    def _plant_rows(
        self, params: Sequence[_Params]
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """A, b, and the output rows for the hip's acceleration (m/s^2) and the patient force,
        for each entry of ``params``: shapes (m, p, p), (m, p), (m, p), (m, p).

        Computed in plain floats, element by element from the equations above, and converted
        to arrays once for all entries (a rebuild builds several).
        """
        prof = self.profile
        bl = prof.actuator.force_constant_n_per_a
        inductance = prof.actuator.coil_inductance_h
        n = self._n_plant  # without an upper body, z2 is neither driven back nor used: drop it
        body = self._body  # at sway 1: its natural frequencies are scaled by each sway factor
        ratio = body.upper_fraction / body.hip_fraction
        a_rows, b_rows, hip_rows, force_rows = [], [], [], []
        for p in params:
            m0 = body.rigid_fraction * p.standing_mass_kg
            m1 = body.hip_fraction * p.standing_mass_kg
            mass = prof.mechanics.moving_mass_kg + m0
            w1 = 2.0 * math.pi * (body.leg_hz * p.sway_factor)
            w2 = 2.0 * math.pi * (body.upper_hz * p.sway_factor)
            k1, c1 = w1 * w1, 2.0 * body.leg_zeta * w1  # per kg of hip mass
            k2, c2 = w2 * w2, 2.0 * body.upper_zeta * w2  # per kg of upper-body mass
            accel_row = [
                value / mass
                for value in (
                    bl,
                    -prof.mechanics.suspension_stiffness_n_per_m,
                    -prof.mechanics.suspension_damping_n_s_per_m,
                    m1 * k1,
                    m1 * c1,
                    0.0,
                    0.0,
                )
            ]
            hip_row = [0.0, 0.0, 0.0, -k1, -c1, ratio * k2, ratio * c2]
            coil = [0.0] * _N_PLANT_MAX
            drive = 0.0
            if not p.open_circuit:
                coil[0] = -p.resistance_ohm / inductance
                coil[2] = -bl / inductance
                drive = prof.amplifier.volts_at_full_drive / inductance
            upper = [-value for value in hip_row]
            upper[5] -= k2
            upper[6] -= c2
            force_row = [m0 * value for value in accel_row]
            force_row[3] -= m1 * k1
            force_row[4] -= m1 * c1
            a = [
                coil,
                [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                accel_row,
                [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
                [h - x for h, x in zip(hip_row, accel_row, strict=True)],
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                upper,
            ]
            a_rows.append([row[:n] for row in a[:n]])
            b_rows.append([drive] + [0.0] * (n - 1))
            hip_rows.append(hip_row[:n])
            force_rows.append(force_row[:n])
        return np.array(a_rows), np.array(b_rows), np.array(hip_rows), np.array(force_rows)

    def patient_response(
        self, freqs_hz: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.complex128], npt.NDArray[np.complex128]]:
        """Transmissibility to the hip and normalised apparent mass of the patient model.

        From the model's equations at the current sway, for a base moving rigidly; see
        :meth:`BodyModel.response`.
        """
        return body_model(self.profile, self._params.sway_factor).response(freqs_hz)

    def _build_tables(self, params: Sequence[_Params], w: float) -> list[_Tables]:
        """Exact per-sample responses of plant + drive generator for k = 0..block_max, one
        table per entry of ``params``, computed together (stacked matrix products)."""
        a, b, hip_rows, force_rows = self._plant_rows(params)
        m = len(params)
        n_plant, n_aug = self._n_plant, self._n_aug
        generator, jw_eye = self._generator(w)
        aug = np.zeros((m, n_aug, n_aug))
        aug[:, :n_plant, :n_plant] = a
        aug[:, :n_plant, n_plant] = b  # the plant input is the generator's tau*cos state
        aug[:, n_plant:, n_plant:] = generator
        step = expm(aug * self._dt)
        k_max = self._block_max
        # state[k] is the plant rows of step^k; state[h + j] = state[j] @ step^h for j <= h, so
        # each doubling of h is one product of all rows so far and one squaring of step^h.
        state = np.empty((m, k_max + 1, n_plant, n_aug))
        state[:, 0] = np.eye(n_plant, n_aug)
        have, power = 0, step  # power = step^(have + 1) once have + 1 is a power of two
        if k_max >= 1:
            state[:, 1] = step[:, :n_plant]
            have = 1
        while have < k_max:  # state[have + 1 .. 2 have] = state[1 .. have] @ step^have
            more = min(have, k_max - have)
            rows = state[:, 1 : 1 + more].reshape(m, more * n_plant, n_aug)
            state[:, have + 1 : have + 1 + more] = (rows @ power).reshape(m, more, n_plant, n_aug)
            have += more
            if have < k_max:
                power = power @ power
        accel_rows = a[:, 2] / STANDARD_GRAVITY
        outputs = np.empty((m, *self._drive_columns(w).shape))
        outputs[:] = self._drive_columns(w)
        outputs[:, 0, :, :n_aug] = (accel_rows[:, None, None, :] @ state)[:, :, 0, :]
        outputs[:, 1, :, :n_aug] = state[:, :, 0, :]
        responses = [0j] * m
        driven = [i for i, p in enumerate(params) if w > 0.0 and not p.open_circuit]
        if driven:
            x_ss = np.linalg.solve(jw_eye - a[driven], b[driven, :, None].astype(np.complex128))
            accel_ss = accel_rows[driven, None, :] @ x_ss  # (driven, 1, 1)
            for i, response in zip(driven, accel_ss.ravel().tolist(), strict=True):
                responses[i] = complex(response)
        return [
            _Tables(
                key=(p, w),
                state=state[i],
                outputs=outputs[i],
                response_g_per_drive=responses[i],
                hip_row=hip_rows[i],
                force_row=force_rows[i],
            )
            for i, p in enumerate(params)
        ]

    def _generator(self, w: float) -> tuple[FloatArray, npt.NDArray[np.complex128]]:
        """The drive generator's block of the augmented matrix at ``w``, in the basis the tables
        act in, and ``j w I`` (plant-sized) for the steady-state response; kept per frequency.

        The generator's states are (tau cos, -tau sin, cos, -sin) of ``w tau``, the plant input
        being the first: started from each unit vector, that input is cos, sin, tau cos and
        tau sin of ``w tau``, so the drive weights for those four columns are the generator's
        start and the plant rows of ``step^k`` act on [x0, drive weights] as they are.
        """
        cache = self._generator_cache
        if cache is not None and cache[0] == w:
            return cache[1], cache[2]
        generator: FloatArray = np.array(
            [  # rows and columns: tau cos, -tau sin, cos, -sin
                [0.0, w, 1.0, 0.0],
                [-w, 0.0, 0.0, 1.0],
                [0.0, 0.0, 0.0, w],
                [0.0, 0.0, -w, 0.0],
            ]
        )
        jw_eye: npt.NDArray[np.complex128] = 1j * w * np.eye(self._n_plant, dtype=np.complex128)
        self._generator_cache = (w, generator, jw_eye)
        return generator, jw_eye

    def _drive_columns(self, w: float) -> FloatArray:
        """The table columns that depend on frequency only: volts and distortion basis."""
        if self._drive_columns_cache is not None and self._drive_columns_cache[0] == w:
            return self._drive_columns_cache[1]
        tau = self._tau
        n_plant, n_aug = self._n_plant, self._n_aug
        columns = np.zeros((_N_OUT, tau.size, n_aug + _N_DIST))
        cos1 = np.cos(w * tau)
        sin1 = np.sin(w * tau)
        columns[2, :, n_plant:n_aug] = self.profile.amplifier.volts_at_full_drive * np.stack(
            [cos1, sin1, tau * cos1, tau * sin1], axis=1
        )
        column = n_aug
        for order in (2, 3):
            cos_h = np.cos(order * w * tau)
            sin_h = np.sin(order * w * tau)
            for p_tau in range(order + 1):
                columns[0, :, column] = tau**p_tau * cos_h
                columns[0, :, column + 1] = tau**p_tau * sin_h
                column += 2
        self._drive_columns_cache = (w, columns)
        return columns


def expm(a: FloatArray) -> FloatArray:
    """Matrix exponential of a square ``a`` (Higham 2005: Pade 13, scaling and squaring), or of
    each matrix of a stack ``a`` (shape (m, n, n)), each scaled by its own norm.

    The simulator's tables need one per (parameters, frequency); numpy alone keeps scipy off
    the path that opens a plate (``liv start`` until the plate moves, issue 11).
    """
    n = a.shape[-1]
    norms = np.abs(a).sum(axis=-2).max(axis=-1)  # the 1-norm of each matrix
    squarings = [
        max(0, math.ceil(math.log2(norm / _THETA13))) if norm > _THETA13 else 0
        for norm in np.ravel(norms).tolist()
    ]
    most, least = max(squarings), min(squarings)
    if most == least:
        x = a / 2.0**most
    else:
        x = a / np.array([2.0**count for count in squarings])[:, None, None]
    b = _PADE13
    ident = np.eye(n)
    x2 = x @ x
    x4 = x2 @ x2
    x6 = x4 @ x2
    odd = x6 @ (b[13] * x6 + b[11] * x4 + b[9] * x2) + b[7] * x6 + b[5] * x4 + b[3] * x2
    u = x @ (odd + b[1] * ident)
    even = x6 @ (b[12] * x6 + b[10] * x4 + b[8] * x2) + b[6] * x6 + b[4] * x4 + b[2] * x2
    v = even + b[0] * ident
    r = np.linalg.solve(v - u, v + u)
    for done in range(most):
        if done < least:
            r = r @ r
        else:  # a stack whose matrices need different numbers of squarings
            more = np.array(squarings) > done
            r[more] = r[more] @ r[more]
    return np.asarray(r, dtype=np.float64)


def _check_run(n: int, freq_hz: float, phase0_rad: float, drive0: float, end: float) -> None:
    """Check the arguments of :meth:`PlatePhysics.run` (``end``: the drive at the segment's end);
    one comparison chain when they are right, :func:`_refuse_run`'s message when not."""
    if not (
        n >= 0
        and 0.0 <= freq_hz < math.inf
        and abs(drive0) <= 1.0 + _DRIVE_TOLERANCE
        and abs(end) <= 1.0 + _DRIVE_TOLERANCE
        and math.isfinite(phase0_rad)
    ):
        _refuse_run(n, freq_hz, phase0_rad, drive0, end)


def _refuse_run(n: int, freq_hz: float, phase0_rad: float, drive0: float, end: float) -> None:
    """Raise the ValueError that says which argument of :meth:`PlatePhysics.run` is wrong."""
    if n < 0:
        raise ValueError(f"n = {n!r} must be >= 0 samples")
    if not (math.isfinite(freq_hz) and freq_hz >= 0.0):
        raise ValueError(f"freq_hz = {freq_hz!r} must be a finite frequency >= 0")
    for label, value in (("drive0", drive0), ("drive at the segment end", end)):
        if not (math.isfinite(value) and abs(value) <= 1.0 + _DRIVE_TOLERANCE):
            raise ValueError(f"{label} = {value!r} is outside the drive range -1..1")
    raise ValueError(f"phase0_rad = {phase0_rad!r} must be finite")


def _checked_presence(
    presence_s: Sequence[tuple[float, float | None]],
) -> list[tuple[float | None, float | None]]:
    """Validate presence intervals; an interval starting at 0 means standing at power-up."""
    if not presence_s:
        raise ValueError("presence_s must hold at least one (on_s, off_s) interval")
    out: list[tuple[float | None, float | None]] = []
    previous_off = 0.0
    for k, (on_s, off_s) in enumerate(presence_s):
        last = k == len(presence_s) - 1
        if not (math.isfinite(on_s) and on_s >= previous_off):
            raise ValueError(
                f"presence interval {k + 1} starts at {on_s!r} s; allowed: a time >= 0 and not "
                f"before the previous interval's end ({previous_off} s)"
            )
        if off_s is None and not last:
            raise ValueError(f"presence interval {k + 1} has no end; only the last may be open")
        if off_s is not None and not (math.isfinite(off_s) and off_s > on_s):
            raise ValueError(
                f"presence interval {k + 1} ends at {off_s!r} s; allowed: after its start "
                f"({on_s} s)"
            )
        out.append((None if on_s == 0.0 else float(on_s), None if off_s is None else float(off_s)))
        previous_off = on_s if off_s is None else off_s
    return out


def _smooth_step(s: float) -> float:
    """0 before 0, 1 after 1, a raised-cosine ramp between."""
    if s <= 0.0:
        return 0.0
    if s >= 1.0:
        return 1.0
    return 0.5 - 0.5 * math.cos(math.pi * s)
