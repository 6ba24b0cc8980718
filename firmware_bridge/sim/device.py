"""A simulated LIV plate: the firmware's behaviour (docs/protocol.md) over plate physics.

The device runs on its own sample clock in blocks (20 ms at the default 1600 Hz). It does not
pace itself: a transport calls :meth:`SimulatedDevice.step` as fast as it likes (``speed=max``)
or in step with the wall clock, so the same device serves tests, benchmarks and real ports.

Host bytes are stamped with the simulated time they arrive and handled at the next block
boundary; commands therefore take effect at the first sample of a block.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from firmware_bridge.codec import (
    FrameDecoder,
    RawFrame,
    encode_frame,
    encode_samples_frame,
    encode_samples_records,
    samples_records,
)
from firmware_bridge.countersign import next_head, signed_bytes
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.errors import ProtocolError
from firmware_bridge.protocol import (
    COIL_TEMP_UNKNOWN,
    DEVICE_ID_LEN,
    HELLO_ANSWER,
    HELLO_BOOT,
    HOST_MESSAGE_TYPES,
    MAX_BLOCK_SAMPLES,
    MESSAGE_TYPES,
    PHASE_TURN,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Q16,
    Ack,
    Capability,
    ClearFault,
    Countersign,
    Countersignature,
    DeviceState,
    Fault,
    FaultCode,
    Heartbeat,
    Hello,
    HelloRequest,
    Identity,
    IdentityRequest,
    Message,
    Nak,
    NakReason,
    Samples,
    SetDrive,
    SetFrequency,
    SetOutput,
    Status,
    StatusRequest,
    drive_to_q16,
    hz_to_mhz,
    phase_to_q32,
    ramp_samples,
    round_half_up,
)
from firmware_bridge.sim.config import SimConfig
from firmware_bridge.sim.nvstore import DeviceNv, LastSignature, NvState, state_root
from firmware_bridge.sim.physics import AheadRun, PlatePhysics
from firmware_bridge.sim.profile import load_profile
from firmware_bridge.sim.sensor import (
    IDEAL_PART,
    Accelerometer,
    SensorAhead,
    draw_part,
    reading_profile,
)
from firmware_bridge.sim.truth import TruthWriter

log = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]

FIRMWARE_VERSION = (1, 0, 0)
BLOCK_S = 0.020
MAX_DRIVE = 0.9
MIN_FREQ_HZ = 20.0
MAX_FREQ_HZ = 150.0
WATCHDOG_S = 0.5
SAFE_RAMP_S = 0.2  # fault (watchdog) ramp and stop ramp: HELLO watchdog_ramp_ms, stop_ramp_ms
FULL_SCALE_SLEW_S = 0.1  # the drive never moves faster than full scale in this time
OVERTEMP_C = 120.0
ACCEL_WINDOW_BLOCKS = 3  # the firmware's own peak measurement spans the last 3 blocks (60 ms)
REST_TOLERANCE = 0.03  # at rest the sensor must read 1 g within 3% before the output goes on
REST_BLOCKS = 4  # the resting reading is the mean of up to 4 blocks streamed with the output off
# how long the plate is simulated after the host leaves: time for its watchdog to fire and its
# ramp to end (longer by as much for a plate whose watchdog_ms is longer)
LINGER_S = WATCHDOG_S + SAFE_RAMP_S + 0.3
AHEAD_BLOCKS_MAX = 16  # blocks simulated in one product at a constant drive (see _run_ahead)
# Fewer blocks than this are cheaper one at a time: a batch costs about 90 us plus 4 us a block,
# a block on its own (_BlockKernel) about 17 us with its fit (measured, session 5).
AHEAD_BLOCKS_MIN = 8
_FIRMWARE_INPUTS = 8  # SimulatedDevice._inputs_key: the firmware's part
HOST_TYPES = frozenset(HOST_MESSAGE_TYPES)
ANSWERED_TYPES = (HelloRequest, StatusRequest, IdentityRequest, Countersign)  # no ACK
_HEARTBEAT_TYPE = Heartbeat.TYPE  # a host type, ACKed, with an empty payload (see _handle)
_ACK_TYPE, _ACK_LAYOUT = Ack.TYPE, Ack.LAYOUT
_SET_DRIVE_TYPE, _SET_DRIVE_LAYOUT = SetDrive.TYPE, SetDrive.LAYOUT  # see _handle


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


@dataclass
class _Envelope:
    """Drive amplitude: the value at the next sample and a linear ramp towards a target.

    ``value_q16`` is the value as an exact Q16 count whenever it is one (at rest, at the end of a
    ramp); mid-ramp it is None and the ramp length rounds the value away from the new target, so
    the slew limit holds (docs/protocol.md 9.4).
    """

    value: float = 0.0
    rate_per_sample: float = 0.0
    samples_left: int = 0
    target: float = 0.0
    value_q16: int | None = 0
    target_q16: int = 0

    def present_q16(self, target_q16: int) -> int:
        """The present amplitude in Q16 counts, rounded away from ``target_q16``."""
        if self.value_q16 is not None:
            return self.value_q16
        counts = self.value * Q16
        return math.floor(counts) if target_q16 >= counts else math.ceil(counts)

    def samples_to(self, target_q16: int, ramp_ms: int, fs: int, slew_ms: int) -> int:
        """Length of a ramp to ``target_q16`` started now (0 if already there)."""
        if self._at(target_q16):
            return 0
        return ramp_samples(target_q16 - self.present_q16(target_q16), ramp_ms, fs, slew_ms)

    def ramp_to(self, target_q16: int, ramp_ms: int, fs: int, slew_ms: int) -> None:
        self.target_q16 = target_q16
        self.target = target_q16 / Q16
        self.samples_left = self.samples_to(target_q16, ramp_ms, fs, slew_ms)
        if not self.samples_left:  # already there: a ramp in progress ends here
            self.rate_per_sample = 0.0
            return
        self.rate_per_sample = (self.target - self.value) / self.samples_left

    def advance(self, start: float, rate: float, samples: int) -> None:
        """The ramp has run ``samples`` more samples from ``start``."""
        self.samples_left -= samples
        if self.samples_left == 0:
            self.value, self.value_q16 = self.target, self.target_q16
        else:
            self.value, self.value_q16 = start + rate * samples, None

    def _at(self, target_q16: int) -> bool:
        if self.value_q16 is not None:
            return self.value_q16 == target_q16
        return self.value == target_q16 / Q16

    def cut(self) -> None:
        self.value = self.target = self.rate_per_sample = 0.0
        self.samples_left = self.target_q16 = 0
        self.value_q16 = 0


FitSums = tuple[float, float, float, float, float]


class _BlockFit:
    """Each block's share of the normal equations of ``x ~ a cos(phi) + b sin(phi) + c_block``.

    Each block has a constant of its own (gravity, and whatever a sensor fault does to it at a
    block boundary), so the block's cosine and sine are taken about their block means. Their
    share is the sums ``(cc, cs, ss, xc, xs)``; a window's sums are the sums of its blocks'.

    Within a block the phase is ``phi0 + w k``, so its cosine and sine are the block's start
    ``(cos phi0, sin phi0)`` rotating the same two centred arrays ``C_k, S_k`` (of ``w k``)
    every block at that frequency. Those, pre-scaled from counts to g, are kept for the last
    frequency and length, and a block costs one (2, n) x (n,) product.
    """

    def __init__(self, sample_rate_hz: float, counts_per_g: float) -> None:
        self._fs = sample_rate_hz
        self._counts_per_g = counts_per_g
        self._key: tuple[float, int] | None = None
        self._basis: FloatArray = np.zeros((2, 0))
        self._cc = self._cs = self._ss = 0.0

    def _prepare(self, freq_hz: float, n: int) -> None:
        if self._key == (freq_hz, n):
            return
        step = 2.0 * math.pi * freq_hz / self._fs * np.arange(n, dtype=np.float64)
        c, s = np.cos(step), np.sin(step)
        c -= c.mean()
        s -= s.mean()
        self._cc, self._cs, self._ss = float(c @ c), float(c @ s), float(s @ s)
        self._basis = np.stack([c, s]) / self._counts_per_g
        self._key = (freq_hz, n)

    def sums(self, counts: npt.NDArray[np.int16], phase0_turns: float, freq_hz: float) -> FitSums:
        """The sums for one block of ``counts`` (shape (n,)) whose first sample has the phase
        ``phase0_turns``. A constant offset of the counts drops out (the arrays are centred)."""
        if self._key != (freq_hz, counts.size):
            self._prepare(freq_hz, counts.size)
        p, q = (self._basis @ counts).tolist()  # Python floats: float(p) of each, at once
        turn = 2.0 * math.pi * phase0_turns
        c0, s0 = math.cos(turn), math.sin(turn)
        cc0, cs0, ss0 = self._cc, self._cs, self._ss
        return (
            c0 * c0 * cc0 - 2.0 * c0 * s0 * cs0 + s0 * s0 * ss0,
            c0 * s0 * (cc0 - ss0) + (c0 * c0 - s0 * s0) * cs0,
            s0 * s0 * cc0 + 2.0 * c0 * s0 * cs0 + c0 * c0 * ss0,
            c0 * p - s0 * q,
            s0 * p + c0 * q,
        )

    def sums_many(
        self, counts: npt.NDArray[np.int16], phase0_turns: list[float], freq_hz: float
    ) -> list[FitSums]:
        """:meth:`sums` for each row of ``counts`` (shape (blocks, n)) in one product."""
        self._prepare(freq_hz, counts.shape[1])
        p, q = self._basis @ counts.T.astype(np.float64)  # int16 would miss the BLAS product
        turns = 2.0 * math.pi * np.asarray(phase0_turns)
        c0, s0 = np.cos(turns), np.sin(turns)
        cc0, cs0, ss0 = self._cc, self._cs, self._ss
        # :meth:`sums`'s expressions with their common products taken once; doubling is exact,
        # so (2 c0) s0 and 2 (c0 s0) are the same number and every column the same bits.
        cc, cs, ss = c0 * c0, c0 * s0, s0 * s0
        cross = 2.0 * cs * cs0
        columns = (
            cc * cc0 - cross + ss * ss0,
            cs * (cc0 - ss0) + (cc - ss) * cs0,
            ss * cc0 + cross + cc * ss0,
            c0 * p - s0 * q,
            s0 * p + c0 * q,
        )
        return list(zip(*(column.tolist() for column in columns), strict=True))


class _BlockKernel:
    """One block at one drive segment, plate and accelerometer, as one matrix product.

    The plate's acceleration, coil current and next state are linear in its start vector ``v``
    (:meth:`PlatePhysics.segment_start`), and the sensor's filtered reading and filter state
    are linear in the acceleration, its filter state, its noise draws and a constant
    (:meth:`Accelerometer.block_map`). So ``[filtered; filter state; accel; current; plant
    state] = W @ [v; filter state; noise; 1]``, with ``W`` made once per table and block
    length (every parameter update) instead of the separate products per block. The result is
    that of :meth:`PlatePhysics.run_accel` then :meth:`Accelerometer.measure` up to the last
    bits (the sums are taken in another order; tests/test_perf_sim_block.py).
    """

    def __init__(self, physics: PlatePhysics, sensor: Accelerometer) -> None:
        self._physics = physics
        self._sensor = sensor
        self._key: tuple[object, ...] | None = None
        self._matrix: FloatArray = np.zeros((0, 0))
        # u, reused from block to block: every entry is written before each product (the last,
        # the constant 1, once)
        self._u: FloatArray = np.ones(0)

    def run(
        self, n: int, freq_hz: float, phase0_rad: float, drive0: float, rate_per_s: float
    ) -> tuple[FloatArray, npt.NDArray[np.int16]] | None:
        """The block's true acceleration and counts, plate and sensor advanced; None (nothing
        advanced) if the block is not one plant segment or too long for the sensor's block form.
        """
        sensor = self._sensor
        block = sensor.block_map(n)
        if block is None:
            return None
        form, gain, offset_g = block
        z = form.shape[0] - n  # the filter's state size
        u = self._u
        if u.size != self._physics.start_vector_size + z + n + 1:
            u = self._u = np.ones(self._physics.start_vector_size + z + n + 1)
        start = self._physics.segment_start(n, freq_hz, phase0_rad, drive0, rate_per_s, u)
        if start is None:
            return None
        tables, v = start
        key = self._key
        if key is None or key[0] is not tables or key[1:] != (n, gain, offset_g):
            self._matrix = self._make(tables.outputs, tables.state[n], form, n, gain, offset_g)
            self._key = (tables, n, gain, offset_g)
        k = v.size
        u[k : k + z] = sensor.filter_state
        np.multiply(sensor.draw_noise(n), sensor.noise_std_g, out=u[k + z : k + z + n])
        out = self._matrix @ u
        current = out[2 * n + z : 3 * n + z]
        counts = sensor.finish_block(out[:n], out[n : n + z])
        self._physics.commit_segment(n, out[3 * n + z :], float(current @ current))
        return out[n + z : 2 * n + z], counts

    @staticmethod
    def _make(
        outputs: FloatArray, state: FloatArray, form: FloatArray, n: int, gain: float, offset: float
    ) -> FloatArray:
        """``W`` for one table (``outputs`` (5, K+1, k), ``state`` (p, p + 4)) and the
        filter's block form ``form`` (n + z, n + z)."""
        accel, current = outputs[0, :n, :], outputs[1, :n, :]
        k = accel.shape[1]
        z = form.shape[0] - n
        p = state.shape[0]
        inputs = form[:, :n]
        w = np.zeros((n + z + 2 * n + p, k + z + n + 1))
        w[: n + z, :k] = inputs @ (gain * accel)  # the plate's acceleration, sensed
        w[: n + z, k : k + z] = form[:, n:]  # the filter's state
        w[: n + z, k + z : k + z + n] = inputs  # the noise (already scaled)
        w[: n + z, -1] = inputs.sum(axis=1) * offset  # gravity and bias
        w[n + z : 2 * n + z, :k] = accel
        w[2 * n + z : 3 * n + z, :k] = current
        w[3 * n + z :, : state.shape[1]] = state
        return w


@dataclass
class _Ahead:
    """Blocks simulated ahead at a constant drive (see SimulatedDevice._run_ahead).

    Block j is valid while the device's inputs key (everything the blocks depend on but the
    plant state) is ``keys[i]``, i the window holding j: the blocks before ``ends[0]``, then
    those before ``ends[1]`` ... (one window per slow-parameter update the blocks run through;
    the plant's part of the key moves on at each). ``phases[j]`` is the phase accumulator at
    block j's first sample (``blocks + 1`` values).
    """

    keys: list[tuple[object, ...]]
    ends: list[int]
    physics: AheadRun
    sensor: SensorAhead
    phases: list[float]
    sums: list[FitSums]
    rest_g: list[float]
    blocks: int
    records: npt.NDArray[np.void]  # the blocks' SAMPLES frame bodies, seq and index not yet set
    # clear[e]: the ceiling surely does not trip on the window of sums[e - 3 : e] (e >= 3;
    # see _surely_clear), judged against the ceiling ``clear_ceiling_mg``: a ceiling changed
    # since voids every flag (the exact fit answers again)
    clear: list[bool]
    clear_ceiling_mg: int
    next: int = 0

    def key_at(self, j: int) -> tuple[object, ...]:
        """The inputs key block ``j`` (< blocks) was computed for."""
        for end, key in zip(self.ends, self.keys, strict=True):
            if j < end:
                return key
        return self.keys[-1]

    def window_end(self, j: int) -> int:
        """The end (exclusive) of the window holding block ``j`` (< blocks)."""
        for end in self.ends:
            if j < end:
                return end
        return self.blocks


def _fitted_peak_g(window: Iterable[FitSums]) -> float:
    """Peak ``sqrt(a^2 + b^2)`` of the sine fitted to a window of blocks, from their sums."""
    cc, cs, ss, xc, xs = map(math.fsum, zip(*window, strict=True))  # C loops, no generator
    det = cc * ss - cs * cs
    if det <= 1e-9 * (cc + ss) ** 2:  # too short a window to tell a sine from a constant
        return 0.0
    a = (ss * xc - cs * xs) / det
    b = (cc * xs - cs * xc) / det
    return float(math.hypot(a, b))


# A window's fit is taken as surely under the ceiling (see _surely_clear) when its peak, fitted
# with plain sums, is below this share of the ceiling and its determinant this share of the
# scale _fitted_peak_g compares it with.
_CLEAR_SHARE = 0.9
_CLEAR_DET_SHARE = 1e-6


def _surely_clear(sums: list[FitSums], ceiling_mg: int) -> list[bool]:
    """For each e (0 .. len(sums)): True where the firmware ceiling surely does not trip on the
    window ``sums[e - ACCEL_WINDOW_BLOCKS : e]`` (False for e < ACCEL_WINDOW_BLOCKS).

    The window's fit is made for all e at once with plain floating-point sums instead of
    :func:`_fitted_peak_g`'s exactly rounded ones. Those differ by a few units in the last place
    of the terms summed; with the determinant at least _CLEAR_DET_SHARE of its scale the 2 x 2
    solve magnifies that at most about 1/_CLEAR_DET_SHARE times. The error so bounded scales
    with the window's whole signal (about its norm over sqrt(cc + ss)), not with the fitted
    peak: at the sensor's full scale it is about 1e-8 g, far inside the _CLEAR_SHARE margin of
    at least a tenth of the ceiling (a second reader's fuzz: 17,273 windows called clear, from
    0.001 Hz to Nyquist, 8-64 samples, up to 40 g with noise, none tripped by the exact fit).
    Where this says True,
    ``round_half_up(_fitted_peak_g(window) * 1000) <= ceiling_mg`` (or the exact fit finds the
    window too short and returns 0). Anything else (False, NaN) is left to the exact fit.
    """
    w = ACCEL_WINDOW_BLOCKS
    if len(sums) < w:
        return [False] * (len(sums) + 1)
    rows = np.array(sums, dtype=np.float64)  # (blocks, 5)
    window = rows[: len(sums) - w + 1].copy()
    for shift in range(1, w):
        window += rows[shift : len(sums) - w + 1 + shift]
    cc, cs, ss, xc, xs = window.T
    det = cc * ss - cs * cs
    with np.errstate(all="ignore"):
        peak = np.hypot((ss * xc - cs * xs) / det, (cc * xs - cs * xc) / det)
        clear = (det > _CLEAR_DET_SHARE * (cc + ss) ** 2) & (
            peak * 1000 < _CLEAR_SHARE * ceiling_mg
        )
    flags: list[bool] = clear.tolist()
    return [False] * w + flags


class SimulatedDevice:
    """Firmware behaviour plus physics for one simulated plate."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        physics_seed, sensor_seed, link_seed = np.random.SeedSequence(config.seed).spawn(3)
        profile = config.plate_profile(load_profile(config.profile))  # posture and knee angle
        # (the sensor's errors: reading_profile below)
        accel_profile = profile.accelerometer
        if config.noise_ug is not None:
            accel_profile = dataclasses.replace(accel_profile, noise_density_ug=config.noise_ug)
        self.sample_rate_hz = float(accel_profile.sample_rate_hz)
        self.block_samples = max(1, round(self.sample_rate_hz * BLOCK_S))
        if self.block_samples > MAX_BLOCK_SAMPLES:
            raise ValueError(
                f"sample rate {self.sample_rate_hz:g} Hz needs {self.block_samples} samples per "
                f"block; a frame holds at most {MAX_BLOCK_SAMPLES}"
            )
        # The part drawn for this device id and the factory calibration its firmware holds
        # (firmware_bridge/sim/sensor.py). The firmware corrects every sample with that
        # calibration before it sends it or measures with it, so its samples, its ceiling and
        # resting checks are all at the nominal counts_per_g, whatever counts_per_g it announces
        # to the host; the calibration's residual and any drift since remain, unknown to all.
        self.sensor_part = (
            IDEAL_PART if config.ideal_sensor else draw_part(accel_profile, config.device_id)
        )
        self._sensor_counts_per_g = accel_profile.counts_per_g
        self.counts_per_g = int(accel_profile.counts_per_g * (1.0 + config.counts_per_g_error))
        accel_profile = reading_profile(
            accel_profile, self.sensor_part, config.sensor_gain_error, config.sensor_offset_g or 0.0
        )
        self.ceiling_mg = round_half_up(DOSE_LIMITS.firmware_ceiling_g * 1000)
        # fixed for the device's life, read at every frame sent: block_s's and the latency's value
        self._block_s = self.block_samples / self.sample_rate_hz
        self._latency_s = config.latency_ms / 1000.0
        self._block_fit = _BlockFit(self.sample_rate_hz, self._sensor_counts_per_g)
        # The limits this firmware announces in HELLO (and obeys): one source for both.
        self.max_drive_q16 = drive_to_q16(MAX_DRIVE)
        self.min_freq_mhz = hz_to_mhz(MIN_FREQ_HZ)
        self.max_freq_mhz = hz_to_mhz(MAX_FREQ_HZ)
        self.watchdog_ms = (
            round_half_up(WATCHDOG_S * 1000) if config.watchdog_ms is None else config.watchdog_ms
        )
        self.fault_ramp_ms = round_half_up(SAFE_RAMP_S * 1000)
        self.stop_ramp_ms = round_half_up(SAFE_RAMP_S * 1000)
        self.slew_full_scale_ms = round_half_up(FULL_SCALE_SLEW_S * 1000)
        # docs/protocol.md 9.2 leaves open whether a finished block's SAMPLES leaves before or
        # after the replies of the boundary where it ends; True sends it after them (tests use
        # it to show that nothing depends on the order).
        self.samples_after_replies = False
        self._held_samples: Samples | None = None
        self.physics = PlatePhysics(
            profile,
            config.mass_kg,
            self.sample_rate_hz,
            np.random.default_rng(physics_seed),
            patient_on_at_s=config.step_on_at_s,
            patient_off_at_s=config.step_off_at_s,
            presence_s=config.presence_s,
            sway=config.sway,
        )
        if config.coil_temp_c is not None:
            self.physics.set_coil_temperature_c(config.coil_temp_c)
        self.sensor = Accelerometer(
            accel_profile, self.sample_rate_hz, np.random.default_rng(sensor_seed)
        )
        self._link_rng = np.random.default_rng(link_seed)
        self._inbox: deque[tuple[float, bytes]] = deque()
        self._outbox: deque[tuple[float, bytes]] = deque()
        self._truth = TruthWriter(Path(config.truth), self.sample_rate_hz) if config.truth else None
        if self._truth is not None:  # the sensor as it truly is; the host never sees these
            part = self.sensor_part
            self._truth.constants |= {
                "sensor_reading_gain": 1.0 + accel_profile.sensitivity_error_fraction,
                "sensor_reading_offset_g": accel_profile.bias_g,
                "sensor_part_sensitivity": part.sensitivity,
                "sensor_part_offset_g": part.offset_g,
                "sensor_calibrated_sensitivity": part.calibrated_sensitivity,
                "sensor_calibrated_offset_g": part.calibrated_offset_g,
            }
        self._kernel = _BlockKernel(self.physics, self.sensor)
        self._ramp_steps: dict[int, FloatArray] = {}  # arange(n), per segment length
        self._block_times: dict[int, FloatArray] = {}  # arange(n) / fs, per block length
        self._pending_events = self._schedule(config)
        self._closed = False
        # non-volatile memory: key, counter, head (read at the first IDENTITY or COUNTERSIGN)
        self.nv = DeviceNv(state_root(config.nv), config.device_id)
        self._boot()
        if config.uptime_s:
            self._power_on_unattended(config.uptime_s)

    # ---- transport-facing ---------------------------------------------------------------

    @property
    def time_s(self) -> float:
        """Simulated time since power-up (the plant's clock, monotonic across resets)."""
        physics = self.physics  # PlatePhysics.time_s, computed here (read several times a block)
        return physics._sample_index * physics._dt

    @property
    def block_s(self) -> float:
        return self._block_s

    @property
    def samples_frame_bytes(self) -> int:
        """Wire bytes of one block's SAMPLES frame (COBS overhead and delimiter included)."""
        raw = 3 + Samples.LAYOUT.size + 2 * self.block_samples + 2
        return raw + raw // 254 + 2

    @property
    def disconnected(self) -> bool:
        """True once the simulated cable has been pulled."""
        at = self.config.disconnect_at_s
        return at is not None and self.time_s >= at

    def receive(self, data: bytes) -> None:
        """Bytes from the host; handled at the first block boundary after they arrive."""
        if not data or (self.config.disconnect_at_s is not None and self.disconnected):
            return
        data = self._corrupt(data)
        self._inbox.append((self.time_s + self.config.latency_ms / 1000.0, data))

    def take_output(self) -> bytes:
        """Device bytes that have reached the host by now."""
        outbox = self._outbox
        if not outbox:
            return b""
        now = self.time_s + 1e-12
        chunks = []
        while outbox and outbox[0][0] <= now:
            chunks.append(outbox.popleft()[1])
        return b"".join(chunks)

    def close(self) -> None:
        """The host has gone: let the plate run on unattended, then save the truth file."""
        if self._closed:
            return
        self._closed = True
        # Bytes the host wrote before closing still reach the plate (its last SET_OUTPUT off).
        end = self.time_s + LINGER_S + max(0.0, self.watchdog_ms / 1000.0 - WATCHDOG_S)
        while self.time_s < end:
            self.step()
        self._outbox.clear()
        if self._truth is not None:
            self._truth.close()

    # ---- firmware ---------------------------------------------------------------------

    def _boot(self) -> None:
        """Power-up or reset: drive off, counters restart, hello after the boot delay."""
        self._booted = False
        self._boot_done_at = self.time_s + self.config.boot_ms / 1000.0
        self._sample_index = 0
        self._tx_seq = 0
        self._rx = FrameDecoder()
        self._last_rx_s = self._boot_done_at
        self._output_on = False
        self._stopping = False
        self._fault_code = self._fault_index = self._fault_detail = 0
        self._freq_hz = 30.0
        self._phase_turns = 0.0
        self._envelope = _Envelope()
        self._held_samples = None
        self._ahead: _Ahead | None = None
        self._steady_blocks = 0  # blocks in a row run with the same inputs (see _run_ahead)
        self._last_inputs: tuple[object, ...] | None = None
        self._inbox.clear()
        # per block: the sums of the least-squares sine fit (see _BlockFit) of its samples
        self._fit_window: deque[FitSums] = deque(maxlen=ACCEL_WINDOW_BLOCKS)
        self._rest_window: deque[float] = deque(maxlen=REST_BLOCKS)  # mean reading per block, g

    def _power_on_unattended(self, uptime_s: float) -> None:
        """Put the device where ``uptime_s`` of powered, idle streaming would have left it.

        Whole blocks from power-up: the boot delay, then one SAMPLES frame per block that no
        host read (index and transmit sequence advanced), the phase accumulator run on at the
        default frequency, the plate at rest and the coil cooled towards ambient. Nothing is
        simulated sample by sample, so minutes of uptime cost nothing and stay deterministic.
        """
        n = self.block_samples
        blocks = round(uptime_s / self.block_s)
        boot_blocks = 0
        while boot_blocks < blocks and boot_blocks * n * (1.0 / self.sample_rate_hz) < (
            self._boot_done_at
        ):
            boot_blocks += 1
        self.physics.skip_at_rest(blocks * n)
        self._phase_turns = (self._freq_hz * blocks * n / self.sample_rate_hz) % 1.0
        streamed = blocks - boot_blocks
        if streamed > 0:
            self._booted = True
            self._last_rx_s = self.time_s
            self._sample_index = streamed * n
            self._tx_seq = (1 + streamed) & 0xFFFF  # its boot HELLO and every block went out

    def step(self) -> None:
        """Simulate one block of samples and queue whatever the firmware sends."""
        now = self.time_s
        events = self._pending_events
        if events and events[0][0] <= now + 1e-9:  # _fire_events' own test, made here first
            self._fire_events(now)
        if not self._booted and now >= self._boot_done_at:
            self._booted = True
            self._last_rx_s = now
            self._send(self._hello(HELLO_BOOT))
        if self._booted:
            self._check_acceleration()
            self._handle_inbox(now)
            self._check_watchdog(now)
        if self._held_samples is not None:
            self._send(self._held_samples)
            self._held_samples = None
        self._run_block(now)

    def step_many(self, max_blocks: int) -> int:
        """Simulate up to ``max_blocks`` blocks, as many calls of :meth:`step` would; return how
        many were simulated (at least one).

        Blocks already simulated ahead (see :meth:`_run_ahead`) are taken several at once while
        nothing happens at their boundaries: no host bytes due, no scheduled event, no watchdog,
        temperature or ceiling trip (the ceiling is checked at every boundary, vectorised, and a
        boundary near the ceiling is left to :meth:`step`). Anything else is one :meth:`step`.
        The bytes, the truth file and the state are those of block-by-block stepping.
        """
        done = 0
        pull_at = self.config.disconnect_at_s
        while done < max_blocks:
            taken = self._take_ahead_many(max_blocks - done) if max_blocks - done > 1 else 0
            if not taken:
                self.step()
                taken = 1
            done += taken
            if pull_at is not None and self.disconnected:  # the transport sees it at once
                break
        return done

    def _take_ahead_many(self, max_blocks: int) -> int:
        """Take up to ``max_blocks`` blocks simulated ahead at once; 0 if the next boundary
        needs :meth:`step` (see :meth:`step_many`)."""
        ahead = self._ahead
        if (
            ahead is None
            or not self._booted
            or self._held_samples is not None
            or self.samples_after_replies
        ):
            return 0
        j0 = ahead.next
        # Not past the window's end: its last block's commit is the plant's slow-parameter
        # update, and the next window's blocks are valid for the key after it (checked then).
        k = min(max_blocks, ahead.window_end(j0) - j0) if j0 < ahead.blocks else 0
        if k < 1 or ahead.phases[j0] != self._phase_turns or ahead.key_at(j0) != self._inputs_key():
            return 0
        n = self.block_samples
        physics = self.physics
        first = physics._sample_index
        # time_s at each boundary, computed as PlatePhysics.time_s computes it
        starts = [(first + i * n) * physics._dt for i in range(k + 1)]
        now = starts[0]
        if self._pending_events and self._pending_events[0][0] <= now + 1e-9:
            return 0
        checked = False  # the checks at boundary 0 were made here (host bytes were due)
        if self._inbox and self._inbox[0][0] <= now:
            # step()'s order at a boundary: ceiling, host bytes, watchdog, then the block
            if not self._surely_clear_at(ahead, j0):
                self._check_acceleration()
            self._handle_inbox(now)
            self._check_watchdog(now)
            checked = True
            if self._ahead is not ahead or ahead.key_at(j0) != self._inputs_key():
                self._run_block(now)  # a command or a fault: this block as step() runs it
                return 1

        # Boundaries 0.. that pass every check below (boundary 0 passes when already checked):
        # each check lowers k to its first failing boundary, as block-by-block stepping would
        # stop there.
        first_check = 1 if checked else 0
        events = self._pending_events
        if events:
            due = events[0][0]
            for i in range(first_check, k):
                if not due > starts[i] + 1e-9:
                    k = i
                    break
        if self._inbox:
            due = self._inbox[0][0]
            for i in range(first_check, k):
                if not due > starts[i]:
                    k = i
                    break
        if self._output_on and not self._fault_code:
            if physics.coil_temperature_c > OVERTEMP_C:
                k = min(k, first_check)
            last_rx, limit = self._last_rx_s, self.watchdog_ms / 1000.0
            for i in range(first_check, k):
                if starts[i] - last_rx > limit:
                    k = i
                    break
            if k:
                k = self._ceiling_clear(ahead, j0, k, checked)
        if k < 1:
            if checked:
                self._run_block(now)
                return 1
            return 0
        self._steady_blocks += k
        ahead.next = j0 + k
        # The truth's per-block columns are read after each block's commit: the last block's
        # commit may be the slow-parameter update (temperature, mass) and the others' not.
        plant_before = (physics.coil_temperature_c, physics.patient_mass_on_plate_kg)
        physics.commit_ahead_many(ahead.physics, j0, k)
        plant = [plant_before] * (k - 1)
        plant.append((physics.coil_temperature_c, physics.patient_mass_on_plate_kg))
        self.sensor.commit_ahead_many(ahead.sensor, j0, k)
        self._phase_turns = ahead.phases[j0 + k]
        drive = self._envelope.value if self._output_on else 0.0
        if self._truth is not None:
            self._record_truth_many(starts[:k], ahead.physics.accel_g[j0 : j0 + k], drive, plant)
        self._fit_window.extend(ahead.sums[j0 : j0 + k])
        if not self._output_on:
            self._rest_window.extend(ahead.rest_g[j0 : j0 + k])
        index = self._sample_index
        seq = self._tx_seq
        records = ahead.records[j0 : j0 + k]
        records["seq"] = [(seq + i) & 0xFFFF for i in range(k)]
        records["first_index"] = [index + i * n for i in range(k)]
        wires = encode_samples_records(records)
        self._tx_seq = (seq + k) & 0xFFFF
        self._sample_index = index + k * n
        config = self.config
        latency = config.latency_ms / 1000.0
        block_s = self.block_s
        outbox = self._outbox
        if not (config.drop_rate or config.corrupt_rate):  # a clean link: no draws per frame
            outbox.extend(
                (start + block_s + latency, wire)
                for start, wire in zip(starts[1 : k + 1], wires, strict=True)
            )
            return k
        for i, wire in enumerate(wires):
            if config.drop_rate and self._link_rng.random() < config.drop_rate:
                continue
            outbox.append((starts[i + 1] + block_s + latency, self._corrupt(wire)))
        return k

    def _surely_clear_at(self, ahead: _Ahead, j0: int) -> bool:
        """Whether :meth:`_check_acceleration` surely does not trip before block ``j0`` of
        ``ahead``: its window, ``_fit_window``, is ahead's blocks before j0 and ahead.clear
        says so."""
        w = ACCEL_WINDOW_BLOCKS
        fit = self._fit_window
        return (
            j0 >= w
            and ahead.clear[j0]
            and ahead.clear_ceiling_mg == self.ceiling_mg
            and len(fit) == w
            and list(fit) == ahead.sums[j0 - w : j0]
        )

    def _ceiling_clear(self, ahead: _Ahead, j0: int, k: int, checked: bool) -> int:
        """How many of the next ``k`` boundaries the firmware ceiling does not trip at.

        Boundary i's window is the last ACCEL_WINDOW_BLOCKS blocks before it: the blocks in
        ``_fit_window``, then blocks ``j0..`` of ``ahead``; each is the fit
        :meth:`_check_acceleration` makes there (boundary 0 is skipped when already checked).
        """
        fit = self._fit_window
        rows = [*fit, *ahead.sums[j0 : j0 + k - 1]]
        m = len(fit)
        w = ACCEL_WINDOW_BLOCKS
        # Boundary i's window is ahead.sums[j0 + i - w : j0 + i] when i >= w, and for i < w
        # too when the blocks in _fit_window are ahead's blocks before j0: then ahead.clear
        # tells at once whether the ceiling surely does not trip there.
        clear = (
            ahead.clear if ahead.clear_ceiling_mg == self.ceiling_mg else [False] * len(ahead.clear)
        )
        tail = w if m == w and j0 >= w and rows[:m] == ahead.sums[j0 - w : j0] else 0
        for i in range(1 if checked else 0, k):
            end = m + i
            if not end or (clear[j0 + i] and i >= w - tail):
                continue
            window = rows[max(0, end - ACCEL_WINDOW_BLOCKS) : end]
            if round_half_up(_fitted_peak_g(window) * 1000) > self.ceiling_mg:
                return i
        return k

    def _handle_inbox(self, now: float) -> None:
        while self._inbox and self._inbox[0][0] <= now:
            for frame in self._rx.feed(self._inbox.popleft()[1]):
                self._last_rx_s = now
                self._handle(frame)

    def _check_watchdog(self, now: float) -> None:
        if self._output_on and not self._fault_code:
            if now - self._last_rx_s > self.watchdog_ms / 1000.0:
                self._trip(FaultCode.HOST_WATCHDOG, round((now - self._last_rx_s) * 1000))
            elif self.physics.coil_temperature_c > OVERTEMP_C:
                temp_centi_c = round_half_up(self.physics.coil_temperature_c * 100)
                self._trip(FaultCode.COIL_OVERTEMP, temp_centi_c)

    def _check_acceleration(self) -> None:
        """Trip OVER_ACCELERATION when the firmware's own peak measurement exceeds its ceiling.

        The measurement is a least-squares fit of a sine at the drive frequency (against the
        firmware's own phase), plus a constant per block, over the last ACCEL_WINDOW_BLOCKS
        blocks of its own samples converted with its own calibration (docs/protocol.md
        section 10).
        """
        if not self._output_on or self._fault_code or not self._fit_window:
            return
        peak_mg = round_half_up(_fitted_peak_g(self._fit_window) * 1000)
        if peak_mg > self.ceiling_mg:
            self._trip(FaultCode.OVER_ACCELERATION, peak_mg)

    def _resting_mg(self) -> int | None:
        """The sensor's resting reading in mg (mean of the latest blocks with the output off)."""
        if not self._rest_window:
            return None
        return round_half_up(sum(self._rest_window) / len(self._rest_window) * 1000)

    def _trip(self, code: FaultCode, detail: int) -> None:
        log.info("simulated device fault %s at sample %d", code.name, self._sample_index)
        self._fault_code = int(code)
        self._fault_index = self._sample_index
        self._fault_detail = detail
        env = self._envelope
        if not self._stopping:
            self._begin_stop(self.fault_ramp_ms)
        elif self._ramp_to_zero_samples(self.fault_ramp_ms) < env.samples_left:
            # A stop under way keeps its ramp unless the fault ramp, started from the
            # amplitude reached, ends sooner: the time to zero never grows.
            self._begin_stop(self.fault_ramp_ms)
        self._send(Fault(int(code), self._sample_index, detail))
        self._record_event(f"fault:{code.name}")

    def _ramp_to_zero_samples(self, ramp_ms: int) -> int:
        return self._envelope.samples_to(0, ramp_ms, self._fs_int, self.slew_full_scale_ms)

    def _begin_stop(self, ramp_ms: int) -> None:
        self._envelope.ramp_to(0, ramp_ms, self._fs_int, self.slew_full_scale_ms)
        if self._envelope.samples_left:
            self._stopping = True
        else:  # already at zero (a ramp up that had not begun ends here)
            self._envelope.cut()
            self._stopping = False
            self._output_on = False

    @property
    def _fs_int(self) -> int:
        return round_half_up(self.sample_rate_hz)

    def _handle(self, frame: RawFrame) -> None:
        if frame.frame_type == _HEARTBEAT_TYPE and not frame.payload:
            # A well-formed HEARTBEAT (the host's most frequent frame): the general path below
            # unpacks it, applies nothing and ACKs it.
            self._ack(frame.seq, _HEARTBEAT_TYPE)
            return
        if frame.frame_type == _SET_DRIVE_TYPE and len(frame.payload) == _SET_DRIVE_LAYOUT.size:
            # A well-formed SET_DRIVE (a closed loop's frame nearly every block): what the
            # general path does with it, without making the message or matching its class.
            reason = self._set_drive(*_SET_DRIVE_LAYOUT.unpack(frame.payload))
            if reason is None:
                self._ack(frame.seq, _SET_DRIVE_TYPE)
            else:
                self._nak(frame, reason)
            return
        cls = MESSAGE_TYPES.get(frame.frame_type)
        if cls is None or cls not in HOST_TYPES:
            self._nak(frame, NakReason.UNKNOWN_TYPE)
            return
        try:
            message = cls.unpack(frame.payload)
        except ProtocolError:
            self._nak(frame, NakReason.BAD_LENGTH)
            return
        reason = self._command(message)
        if reason is None:
            if not isinstance(message, ANSWERED_TYPES):
                self._ack(frame.seq, frame.frame_type)
        else:
            self._nak(frame, reason)

    def _ack(self, seq: int, frame_type: int) -> None:
        """Send ``Ack(seq, frame_type)``: the bytes of ``_send(Ack(seq, frame_type))``, packed
        without making the message (a closed loop ACKs a command nearly every block)."""
        self._send_wire(encode_frame(_ACK_TYPE, self._tx_seq, _ACK_LAYOUT.pack(seq, frame_type)))

    def _command(self, message: Message) -> NakReason | None:
        """Apply one host command; return why it is refused, or None."""
        match message:
            case HelloRequest():
                self._send(self._hello(HELLO_ANSWER))
            case StatusRequest():
                self._send(self._status())
            case Heartbeat():
                pass
            case SetFrequency(freq_mhz=freq_mhz):
                if not self.min_freq_mhz <= freq_mhz <= self.max_freq_mhz:
                    return NakReason.OUT_OF_RANGE
                self._freq_hz = freq_mhz / 1000.0
            case SetDrive(drive_q16=drive_q16, ramp_ms=ramp_ms):
                return self._set_drive(drive_q16, ramp_ms)
            case SetOutput(enable=enable):
                if enable > 1:
                    return NakReason.OUT_OF_RANGE
                if enable:
                    if self._fault_code:
                        return NakReason.FAULT_LATCHED
                    if self._stopping:
                        return NakReason.BUSY
                    if not self._output_on:
                        rest_mg = self._resting_mg() if self.config.rest_check else 1000
                        if rest_mg is None or abs(rest_mg - 1000) > REST_TOLERANCE * 1000:
                            # a sensor that misreads gravity misreads the dose: never switch on
                            self._trip(FaultCode.SENSOR_REST, 0 if rest_mg is None else rest_mg)
                            return NakReason.FAULT_LATCHED
                        self._output_on = True
                        self._envelope.cut()
                elif self._output_on and not self._stopping:
                    self._begin_stop(self.stop_ramp_ms)
            case ClearFault():
                if self._stopping:
                    return NakReason.BUSY
                self._fault_code = self._fault_index = self._fault_detail = 0
            case IdentityRequest():
                state = self.nv.state
                self._send(Identity(self.nv.public_key, state.counter, state.head))
            case Countersign(digest=digest, expected_counter=expected):
                return self._countersign(digest, expected)
            case _:
                return NakReason.UNKNOWN_TYPE
        return None

    def _set_drive(self, drive_q16: int, ramp_ms: int) -> NakReason | None:
        """Apply SET_DRIVE; return why it is refused, or None."""
        if self._fault_code:
            return NakReason.FAULT_LATCHED
        if self._stopping:
            return NakReason.BUSY
        if not self._output_on:
            return NakReason.OUTPUT_OFF
        if drive_q16 > self.max_drive_q16:
            return NakReason.OUT_OF_RANGE
        self._envelope.ramp_to(drive_q16, ramp_ms, self._fs_int, self.slew_full_scale_ms)
        return None

    def _countersign(self, digest: bytes, expected: int) -> NakReason | None:
        """Vouch for ``digest`` as counter ``expected`` (docs/protocol.md 9.8).

        The next counter is signed once: counter and head move on in non-volatile memory before
        the answer leaves. A repeat of the last request (its answer was lost) gets the same
        answer again; any other counter is refused.
        """
        state = self.nv.state
        device_id_raw = self.config.device_id.encode("ascii").ljust(DEVICE_ID_LEN, b"\x00")
        last = state.last
        if expected == state.counter and last is not None and last.digest == digest:
            self._send(
                Countersignature(state.counter, digest, last.prev_head, state.head, last.signature)
            )
            return None
        if expected != state.counter + 1 or expected > 0xFFFFFFFF:
            return NakReason.COUNTER_MISMATCH
        head = next_head(state.head, expected, digest)
        signature = self.nv.key.sign(
            signed_bytes(device_id_raw, expected, digest, state.head, head)
        )
        try:
            self.nv.commit(NvState(expected, head, LastSignature(digest, state.head, signature)))
        except OSError as exc:
            log.error("simulated device could not write its non-volatile memory: %s", exc)
            return NakReason.STORAGE
        self._send(Countersignature(expected, digest, state.head, head, signature))
        return None

    def _nak(self, frame: RawFrame, reason: NakReason) -> None:
        self._send(Nak(frame.seq, frame.frame_type, int(reason)))

    def _hello(self, boot: int) -> Hello:
        return Hello(
            PROTOCOL_MAJOR,
            PROTOCOL_MINOR,
            *FIRMWARE_VERSION,
            self.config.device_id.encode("ascii").ljust(DEVICE_ID_LEN, b"\x00"),
            self._fs_int,
            self.block_samples,
            self.counts_per_g,
            self.max_drive_q16,
            self.min_freq_mhz,
            self.max_freq_mhz,
            self.watchdog_ms,
            self.fault_ramp_ms,
            self.stop_ramp_ms,
            self.slew_full_scale_ms,
            self.ceiling_mg,
            int(
                Capability.COIL_TEMPERATURE
                | Capability.SIMULATED
                | Capability.FAULT_INJECTION
                | Capability.COUNTERSIGN
            ),
            boot,
        )

    def _state(self) -> DeviceState:
        if self._fault_code:
            return DeviceState.FAULT
        if self._stopping:
            return DeviceState.STOPPING
        return DeviceState.RUNNING if self._output_on else DeviceState.IDLE

    def _status(self) -> Status:
        temp = self.physics.coil_temperature_c
        return Status(
            int(self._state()),
            int(self._output_on),
            hz_to_mhz(self._freq_hz),
            drive_to_q16(_clip01(self._envelope.value)),
            drive_to_q16(_clip01(self._envelope.target)),
            self._fault_code,
            self._sample_index,
            min(0xFFFF, self._rx.stats.crc_errors + self._rx.stats.cobs_errors),
            min(0xFFFF, self._rx.stats.lost_frames),
            round_half_up(temp * 100) if -300 < temp < 300 else COIL_TEMP_UNKNOWN,
            self._fault_index,
            self._fault_detail,
        )

    # ---- one block of physics ---------------------------------------------------------

    def _inputs_key(self) -> tuple[object, ...]:
        """Everything a block's samples depend on besides the plant and filter state and the
        phase: the firmware's output state and envelope, frequency, plant and sensor faults."""
        return self._firmware_inputs() + self._plant_inputs()

    def _plant_inputs(self) -> tuple[object, ...]:
        """The plant's and sensor's part of :meth:`_inputs_key` (after the firmware's)."""
        sensor = self.sensor
        return (
            self.physics.inputs_key,
            sensor.stuck,
            sensor.saturated,
            sensor.disconnected,
            sensor.noise_density_ug,
        )

    def _firmware_inputs(self) -> tuple[object, ...]:
        """The firmware's part of :meth:`_inputs_key` (its first _FIRMWARE_INPUTS entries)."""
        env = self._envelope
        return (
            self._booted,
            self._output_on,
            self._stopping,
            env.value,
            env.rate_per_sample,
            env.samples_left,
            self._freq_hz,
            self.samples_after_replies,
        )

    def _run_ahead(self, now: float, inputs: tuple[object, ...]) -> _Ahead | None:
        """Simulate the next blocks at once if the drive is constant, else None.

        AHEAD_BLOCKS_MIN to AHEAD_BLOCKS_MAX blocks, ending before the plant's next
        slow-parameter update and before any scheduled event, are computed in one physics
        product and one sensor pass; they are then taken one per block boundary (plant, filter
        and noise advance one block at a time), so the device's clock, its checks at every
        boundary (watchdog, ceiling, commands) and the bytes it sends are block by block as
        before. A boundary where anything the blocks depend on has changed (a command, a fault,
        an event, a test poking the plant) drops the blocks not yet taken.
        """
        env = self._envelope
        if not self._booted or self.samples_after_replies or self._held_samples is not None:
            return None
        if self._output_on and (env.samples_left or self._stopping):
            return None  # a ramp: block by block
        n = self.block_samples
        physics = self.physics
        # Bet on the inputs staying as long as they have stayed: a host that changes the drive
        # every few blocks (a closed loop) has few blocks computed for nothing.
        blocks = min(AHEAD_BLOCKS_MAX, self._steady_blocks, physics.samples_to_update // n)
        end = now + blocks * self.block_s
        events = self._pending_events
        if events and events[0][0] <= end + 1e-9:
            return None
        disconnect = self.config.disconnect_at_s
        if blocks < AHEAD_BLOCKS_MIN or (disconnect is not None and disconnect <= end + 1e-9):
            return None
        windows = [blocks, *self._windows_after(blocks, disconnect)]
        blocks = sum(windows)
        fs = self.sample_rate_hz
        phases = [self._phase_turns]
        for _ in range(blocks):
            phases.append((phases[-1] + self._freq_hz * n / fs) % 1.0)
        drive = env.value if self._output_on else 0.0
        ahead_physics = physics.run_ahead(
            n, self._freq_hz, [2.0 * math.pi * turns for turns in phases[:blocks]], drive
        )
        ahead_sensor = self.sensor.measure_ahead(ahead_physics.accel_g, windows)
        counts = ahead_sensor.counts
        # The fit's sums and the resting reading window by window: the products of the shapes a
        # run ahead started at each window would take (a product's last bits can depend on its
        # number of columns).
        sums: list[FitSums] = []
        rest_g: list[float] = []
        at = 0
        for size in windows:
            part = counts[at : at + size]
            sums += self._block_fit.sums_many(part, phases[at : at + size], self._freq_hz)
            # the resting reading is kept only while the output is off (the key holds that state)
            if not self._output_on:
                rest_g += (part.mean(axis=1) / self._sensor_counts_per_g).tolist()
            at += size
        firmware, sensor_key = inputs[:_FIRMWARE_INPUTS], inputs[_FIRMWARE_INPUTS + 1 :]
        turn = PHASE_TURN  # phase_to_q32 of each block's first phase, written out
        return _Ahead(
            keys=[(*firmware, plant, *sensor_key) for plant in ahead_physics.keys],
            ends=list(itertools.accumulate(windows)),
            physics=ahead_physics,
            sensor=ahead_sensor,
            phases=phases,
            sums=sums,
            rest_g=rest_g,
            blocks=blocks,
            records=samples_records(
                [math.floor(turns * turn + 0.5) % turn for turns in phases[:blocks]],
                hz_to_mhz(self._freq_hz),
                drive_to_q16(_clip01(drive)),
                counts,
            ),
            clear=_surely_clear(sums, self.ceiling_mg),
            clear_ceiling_mg=self.ceiling_mg,
        )

    def _windows_after(self, first: int, disconnect: float | None) -> list[int]:
        """The blocks of each whole slow-parameter window a run ahead of ``first`` blocks
        (ending at an update) goes on through: those a run ahead started at each window's
        first block would compute (the same blocks, as _run_ahead would size and refuse them
        there), while the inputs have stayed at least as long as the run would reach (the bet
        of _run_ahead) and the tables are built (PlatePhysics.windows_ahead)."""
        n, physics = self.block_samples, self.physics
        per = physics.samples_per_update // n
        steady = self._steady_blocks
        if (
            first * n != physics.samples_to_update
            or per * n != physics.samples_per_update
            or not AHEAD_BLOCKS_MIN <= per <= AHEAD_BLOCKS_MAX
            or steady < first + per
        ):
            return []
        windows: list[int] = []
        ready = physics.windows_ahead(n, self._freq_hz)
        events = self._pending_events
        at = first
        while len(windows) < ready and steady >= at + per:
            # _run_ahead at this window's first block: now, end and its refusals
            now = (physics._sample_index + at * n) * physics._dt  # time_s there
            end = now + per * self.block_s
            if events and events[0][0] <= end + 1e-9:
                break
            if disconnect is not None and disconnect <= end + 1e-9:
                break
            windows.append(per)
            at += per
        return windows

    def _take_ahead(self, now: float) -> bool:
        """Run this block from blocks simulated ahead (computing them if it can); False if
        the block must be simulated on its own."""
        firmware_inputs = self._firmware_inputs()  # not the plant's own slow updates
        if firmware_inputs == self._last_inputs:
            self._steady_blocks += 1
        else:
            self._steady_blocks = 0
            self._last_inputs = firmware_inputs
        ahead = self._ahead
        if ahead is None and self._steady_blocks < AHEAD_BLOCKS_MIN:
            return False  # _run_ahead would refuse (below): too few; the full key is not needed
        inputs = firmware_inputs + self._plant_inputs()
        if ahead is not None and (
            ahead.next >= ahead.blocks
            or ahead.phases[ahead.next] != self._phase_turns
            or ahead.key_at(ahead.next) != inputs
        ):
            ahead = self._ahead = None
        if ahead is None:
            if self._steady_blocks < AHEAD_BLOCKS_MIN:  # _run_ahead would refuse: too few
                return False
            ahead = self._ahead = self._run_ahead(now, inputs)
            if ahead is None:
                return False
        j = ahead.next
        ahead.next += 1
        n = self.block_samples
        self.physics.commit_ahead(ahead.physics, j)
        self.sensor.commit_ahead(ahead.sensor, j)
        first_phase = ahead.phases[j]
        self._phase_turns = ahead.phases[j + 1]
        drive = self._envelope.value if self._output_on else 0.0
        accel = ahead.physics.accel_g[j]
        counts = ahead.sensor.counts[j]
        if self._truth is not None:
            self._record_truth(now, accel, [(n, drive, 0.0, accel)])
        self._fit_window.append(ahead.sums[j])
        if not self._output_on:
            self._rest_window.append(ahead.rest_g[j])
        self._send_wire(
            encode_samples_frame(
                self._tx_seq,
                self._sample_index,
                phase_to_q32(first_phase),
                hz_to_mhz(self._freq_hz),
                drive_to_q16(_clip01(drive)),
                counts,
            )
        )
        self._sample_index += n
        return True

    def _run_block(self, now: float) -> None:
        if self._take_ahead(now):
            return
        n = self.block_samples
        fs = self.sample_rate_hz
        env = self._envelope
        output_was_on = self._output_on
        first_drive = env.value if self._output_on else 0.0
        first_phase = self._phase_turns
        pieces: list[tuple[int, float, float, FloatArray]] = []  # (length, start, rate, accel)
        done = 0
        while done < n:
            if not self._output_on:
                seg, start, rate = n - done, 0.0, 0.0
            elif env.samples_left:
                seg, start, rate = min(n - done, env.samples_left), env.value, env.rate_per_sample
            else:
                seg, start, rate = n - done, env.value, 0.0
            phase_rad = 2.0 * math.pi * self._phase_turns
            fused = None
            if seg == n:  # the block is one drive segment: plate and sensor in one product
                fused = self._kernel.run(n, self._freq_hz, phase_rad, start, rate * fs)
            if fused is None:
                accel_seg = self.physics.run_accel(seg, self._freq_hz, phase_rad, start, rate * fs)
            else:
                accel_seg, counts = fused
            pieces.append((seg, start, rate, accel_seg))
            self._phase_turns = (self._phase_turns + self._freq_hz * seg / fs) % 1.0
            done += seg
            if self._output_on and env.samples_left:
                env.advance(start, rate, seg)
                if env.samples_left == 0 and self._stopping:
                    self._stopping = False
                    self._output_on = False
                    env.cut()
        accel = pieces[0][3] if len(pieces) == 1 else np.concatenate([p[3] for p in pieces])
        if fused is None:
            counts = self.sensor.measure(accel)
        if self._truth is not None:
            self._record_truth(now, accel, pieces)
        if self._booted:
            self._fit_window.append(self._block_fit.sums(counts, first_phase, self._freq_hz))
            if not output_was_on:
                mean_counts = float(np.mean(counts))
                self._rest_window.append(mean_counts / self._sensor_counts_per_g)
            index, phase_q32 = self._sample_index, phase_to_q32(first_phase)
            freq_mhz, drive_q16 = hz_to_mhz(self._freq_hz), drive_to_q16(_clip01(first_drive))
            if self.samples_after_replies:  # sent at the next boundary, after its replies
                self._held_samples = Samples(index, phase_q32, freq_mhz, drive_q16, counts)
            else:  # Samples(...).pack()'s frame, packed in one call
                self._send_wire(
                    encode_samples_frame(
                        self._tx_seq, index, phase_q32, freq_mhz, drive_q16, counts
                    )
                )
            self._sample_index += n

    def _record_truth(
        self, now: float, accel: FloatArray, pieces: list[tuple[int, float, float, FloatArray]]
    ) -> None:
        truth = self._truth
        assert truth is not None
        n = accel.size
        offsets = self._block_times.get(n)
        if offsets is None:
            offsets = self._block_times[n] = np.arange(n) / self.sample_rate_hz
        columns = truth.sample_columns(n)
        np.add(now, offsets, out=columns["t_s"])
        columns["accel_g"][:] = accel
        drive = columns["drive"]
        at = 0
        for seg, start, rate, _ in pieces:
            steps = self._ramp_steps.get(seg)
            if steps is None:
                steps = self._ramp_steps[seg] = np.arange(seg).astype(np.float64)
            np.multiply(rate, steps, out=drive[at : at + seg])
            drive[at : at + seg] += start
            at += seg
        columns["freq_hz"][:] = np.float32(self._freq_hz)
        index = columns["sample_index"]
        if self._booted:
            index[:] = np.arange(self._sample_index, self._sample_index + n, dtype=np.int64)
        else:
            index[:] = -1  # not streaming: boot or reset in progress
        truth.commit_block(
            n, float(now), self.physics.coil_temperature_c, self.physics.patient_mass_on_plate_kg
        )

    def _record_truth_many(
        self,
        starts: list[float],
        accel: FloatArray,
        drive: float,
        plant: list[tuple[float, float]],
    ) -> None:
        """:meth:`_record_truth` for blocks run at the constant ``drive`` (accel (blocks, n));
        ``plant`` holds each block's (coil temperature, mass on the plate) after it."""
        truth = self._truth
        assert truth is not None
        blocks, n = accel.shape
        offsets = self._block_times.get(n)
        if offsets is None:
            offsets = self._block_times[n] = np.arange(n) / self.sample_rate_hz
        columns = truth.sample_columns(blocks * n)
        np.add(np.array(starts)[:, None], offsets, out=columns["t_s"].reshape(blocks, n))
        columns["accel_g"][:] = accel.ravel()
        columns["drive"][:] = drive
        columns["freq_hz"][:] = np.float32(self._freq_hz)
        first = self._sample_index
        columns["sample_index"][:] = np.arange(first, first + blocks * n, dtype=np.int64)
        truth.commit_blocks(n, starts, plant)

    # ---- link and events --------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self._send_wire(encode_frame(message.TYPE, self._tx_seq, message.pack()))

    def _send_wire(self, wire: bytes) -> None:
        """Queue one frame's wire bytes (sent with the sequence number ``_tx_seq``)."""
        self._tx_seq = (self._tx_seq + 1) & 0xFFFF
        config = self.config
        if config.drop_rate and self._link_rng.random() < config.drop_rate:
            return
        physics = self.physics  # time_s, as PlatePhysics.time_s computes it
        release = physics._sample_index * physics._dt + self._block_s + self._latency_s
        self._outbox.append((release, self._corrupt(wire) if config.corrupt_rate else wire))

    def _corrupt(self, data: bytes) -> bytes:
        rate = self.config.corrupt_rate
        if not rate:
            return data
        hits = int(self._link_rng.binomial(len(data), rate))
        if not hits:
            return data
        out = bytearray(data)
        for pos in self._link_rng.integers(0, len(out), size=hits):
            out[pos] ^= int(self._link_rng.integers(1, 256))
        return bytes(out)

    def _schedule(self, config: SimConfig) -> list[tuple[float, str]]:
        events = [
            (config.reset_at_s, "reset"),
            (config.sensor_stuck_at_s, "sensor_stuck"),
            (config.sensor_saturated_at_s, "sensor_saturated"),
            (config.sensor_disconnected_at_s, "sensor_disconnected"),
            (config.open_circuit_at_s, "open_circuit"),
            (config.gain_loss_at_s, "gain_loss"),
            (config.load_step_at_s, "load_step"),
            (config.index_jump_at_s, "index_jump"),
        ]
        return sorted((t, name) for t, name in events if t is not None)

    def _fire_events(self, now: float) -> None:
        while self._pending_events and self._pending_events[0][0] <= now + 1e-9:
            _, name = self._pending_events.pop(0)
            self._record_event(name)
            if name == "reset":
                self._boot()
            elif name == "sensor_stuck":
                self.sensor.stuck = True
            elif name == "sensor_saturated":
                self.sensor.saturated = True
            elif name == "sensor_disconnected":
                self.sensor.disconnected = True
            elif name == "open_circuit":
                self.physics.open_circuit = True
            elif name == "gain_loss":
                self.physics.amplifier_gain_factor = self.config.gain_factor
            elif name == "load_step":
                self.physics.set_patient_mass_kg(self.config.load_step_kg)
            elif name == "index_jump":  # a firmware clock fault: the stream skips (or rewinds)
                self._sample_index = max(0, self._sample_index + self.config.index_jump_samples)

    def _record_event(self, name: str) -> None:
        if self._truth is not None:
            self._truth.events.append(f"{self.time_s:.6f} {name}")
