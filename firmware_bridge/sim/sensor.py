"""The plate's accelerometer, vertical axis: what the firmware reads, in output counts.

Signal chain per sample (the default profile models an ADXL355-class low-noise part at +/-4 g;
profiles/adxl345.yaml the older ADXL345). The sensitivity error and bias are what remains after
the firmware's factory calibration of its part (:func:`draw_part`, :func:`reading_profile`)::

    true accel + 1 g gravity  ->  x (1 + sensitivity error) + bias  ->  + white noise
    ->  2nd-order Butterworth anti-alias low-pass  ->  round to counts  ->  clip to the range

The noise is white with standard deviation ``noise_density * sqrt(fs / 2)``. The filter's
state is carried from call to call, so measuring block by block gives the same counts as
measuring everything at once. Faults are flags: ``disconnected`` reads 0 counts,
``saturated`` reads positive full scale, ``stuck`` repeats the last value output before it
stuck (checked in that order). The filter and the noise keep running under a fault, so
clearing it resumes the live reading.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from firmware_bridge.sim.profile import AccelerometerProfile

__all__ = ["IDEAL_PART", "Accelerometer", "SensorPart", "draw_part", "reading_profile"]


FloatArray = npt.NDArray[np.float64]
_BLOCK_FORM_MAX = 128  # longer inputs are filtered by lfilter directly
_NOISE_CHUNK = 2048


def butter2_lowpass(cutoff_hz: float, sample_rate_hz: float) -> tuple[FloatArray, FloatArray]:
    """``(b, a)`` of the 2nd-order Butterworth low-pass (bilinear, pre-warped at the cutoff).

    The design ``scipy.signal.butter(2, cutoff_hz, fs=sample_rate_hz)`` gives, in closed form:
    numpy alone keeps scipy off the path that opens a plate.
    """
    k = math.tan(math.pi * cutoff_hz / sample_rate_hz)
    k2 = k * k
    norm = 1.0 / (1.0 + math.sqrt(2.0) * k + k2)
    b0 = k2 * norm
    b = np.array([b0, 2.0 * b0, b0])
    a = np.array([1.0, 2.0 * (k2 - 1.0) * norm, (1.0 - math.sqrt(2.0) * k + k2) * norm])
    return b, a


def steady_state(b: FloatArray, a: FloatArray) -> FloatArray:
    """The transposed-direct-form state of ``b/a`` after a unit input held for ever.

    What ``scipy.signal.lfilter_zi`` returns: ``zi = (I - A)^-1 (b[1:] - a[1:] b[0])`` with
    ``A`` the transposed companion matrix of ``a`` (``a[0] == 1``).
    """
    order = a.size - 1
    companion_t = np.zeros((order, order))
    companion_t[:, 0] = -a[1:]
    companion_t[:-1, 1:] += np.eye(order - 1)
    state: FloatArray = np.linalg.solve(np.eye(order) - companion_t, b[1:] - a[1:] * b[0])
    return state


def block_form(b: FloatArray, a: FloatArray, n: int) -> FloatArray:
    """The filter ``b/a`` over ``n`` samples as one matrix: ``[y; z'] = M @ [x; z]``.

    ``z`` is the transposed-direct-form state (as in ``scipy.signal.lfilter``); the columns are
    the filter's response to each unit input sample and each unit initial state, computed by
    running the filter's recursion on all of them at once (``a[0] == 1``).
    """
    order = a.size - 1
    inputs = np.zeros((n, n + order))
    inputs[:, :n] = np.eye(n)
    state = np.zeros((order, n + order))
    state[:, n:] = np.eye(order)
    out = np.empty((n, n + order))
    for k in range(n):
        x = inputs[k]
        y = b[0] * x + state[0]
        for j in range(order - 1):
            state[j] = b[j + 1] * x + state[j + 1] - a[j + 1] * y
        state[order - 1] = b[order] * x - a[order] * y
        out[k] = y
    return np.vstack((out, state))


@dataclass(frozen=True)
class SensorPart:
    """One device's accelerometer part and the factory calibration its firmware holds.

    The part reads ``raw_g = sensitivity x true_g + offset_g`` (``true_g`` includes gravity;
    ``sensitivity`` relative to the nominal ``counts_per_g``). The factory bench measured it as
    ``calibrated_sensitivity`` and ``calibrated_offset_g``, and the firmware corrects every
    sample with those before sending it: ``(raw_g - calibrated_offset_g) /
    calibrated_sensitivity``. What is left is the calibration's residual (:attr:`residual_gain`,
    :attr:`residual_offset_g`), which neither the firmware nor the host knows.
    """

    sensitivity: float
    offset_g: float
    calibrated_sensitivity: float
    calibrated_offset_g: float

    @property
    def residual_gain(self) -> float:
        """The corrected reading per true g (1.0: the calibration is exact)."""
        return self.sensitivity / self.calibrated_sensitivity

    @property
    def residual_offset_g(self) -> float:
        """The corrected reading at 0 g true acceleration, g."""
        return (self.offset_g - self.calibrated_offset_g) / self.calibrated_sensitivity


IDEAL_PART = SensorPart(1.0, 0.0, 1.0, 0.0)  # an exact part, exactly calibrated


def draw_part(profile: AccelerometerProfile, device_id: str) -> SensorPart:
    """The part of device ``device_id`` and its factory calibration, drawn from ``profile``.

    Deterministic per device: the draw is seeded by the device id (SHA-256 of its text) and
    the profile's ``part_lot``, never by the simulation's ``seed``, so the same device always
    has the same part. Each error is uniform within its span (the datasheet gives bounds, not a
    distribution; uniform is the widest distribution within them and puts parts near both
    ends): the part's sensitivity within ``1 +/- part_sensitivity_span_fraction`` and its
    offset within ``+/- part_offset_span_g``; the calibration misses the sensitivity by up to
    ``calibration_sensitivity_residual_fraction`` of it and the offset by up to
    ``calibration_offset_residual_g``.
    """
    digest = hashlib.sha256(device_id.encode("utf-8")).digest()
    seed = np.random.SeedSequence([profile.part_lot, int.from_bytes(digest[:16], "little")])
    u = np.random.default_rng(seed).uniform(-1.0, 1.0, 4)
    sensitivity = 1.0 + profile.part_sensitivity_span_fraction * float(u[0])
    offset_g = profile.part_offset_span_g * float(u[1])
    calibrated_sensitivity = sensitivity * (
        1.0 + profile.calibration_sensitivity_residual_fraction * float(u[2])
    )
    calibrated_offset_g = offset_g + profile.calibration_offset_residual_g * float(u[3])
    return SensorPart(sensitivity, offset_g, calibrated_sensitivity, calibrated_offset_g)


def reading_profile(
    profile: AccelerometerProfile,
    part: SensorPart,
    gain_drift: float = 0.0,
    offset_drift_g: float = 0.0,
) -> AccelerometerProfile:
    """``profile`` with the errors of the samples the firmware sends, for :class:`Accelerometer`.

    The sent reading is ``(1 + e) (1 + gain_drift) r_s x true_g + b + offset_drift_g + r_b``:
    the calibration's residual (``r_s``, ``r_b``, :class:`SensorPart`), the profile's own
    ``sensitivity_error_fraction`` ``e`` and ``bias_g`` ``b`` and the URL's drift, all errors
    after the factory calibration that neither the firmware nor the host knows. The firmware's
    correction is linear, so applying it before the anti-alias filter and the rounding to
    counts is the same as correcting each high-resolution reading (the part reads 20 bits)
    before scaling it to the wire's i16, which is what the firmware does.
    """
    gain = (1.0 + profile.sensitivity_error_fraction) * (1.0 + gain_drift) * part.residual_gain
    bias_g = profile.bias_g + offset_drift_g + part.residual_offset_g
    return replace(profile, sensitivity_error_fraction=gain - 1.0, bias_g=bias_g)


@dataclass(frozen=True)
class SensorAhead:
    """Counts computed ahead by :meth:`Accelerometer.measure_ahead`, shape (blocks, n), and
    the filter state after each block; ``window_starts``: the first block of each window after
    the first (see :meth:`Accelerometer.measure_ahead`)."""

    counts: npt.NDArray[np.int16]
    states: FloatArray
    window_starts: tuple[int, ...] = ()


class Accelerometer:
    """One accelerometer axis, deterministic given its ``rng``.

    Parameters
    ----------
    profile
        Sensitivity, bias, noise, range, resolution and anti-alias cutoff.
    sample_rate_hz
        Output data rate; the filter cutoff must lie below half of it.
    rng
        Source of the noise.

    Attributes
    ----------
    noise_density_ug : float
        Noise density in ug/sqrt(Hz); may be changed between calls.
    stuck, saturated, disconnected : bool
        Fault flags (see the module docstring).
    """

    def __init__(
        self, profile: AccelerometerProfile, sample_rate_hz: float, rng: np.random.Generator
    ) -> None:
        if not (math.isfinite(sample_rate_hz) and sample_rate_hz > 0.0):
            raise ValueError(f"sample_rate_hz = {sample_rate_hz!r} must be a positive number")
        if profile.anti_alias_cutoff_hz >= sample_rate_hz / 2.0:
            raise ValueError(
                f"anti_alias_cutoff_hz = {profile.anti_alias_cutoff_hz!r} is out of range; "
                f"allowed: below half the sample rate ({sample_rate_hz / 2.0} Hz)"
            )
        self.profile = profile
        self.sample_rate_hz = float(sample_rate_hz)
        self.noise_density_ug = profile.noise_density_ug
        self.stuck = False
        self.saturated = False
        self.disconnected = False
        self._rng = rng
        self._block_forms: dict[int, FloatArray] = {}
        self._noise_buffer: FloatArray = np.empty(0)
        self._noise_pos = 0
        # draws taken from the rng ahead of the buffer (measure_ahead past a refill the buffer
        # has not made yet): the next refills take them first, so the sequence is unchanged
        self._noise_reserve: FloatArray = np.empty(0)
        self._gain = 1.0 + profile.sensitivity_error_fraction
        self._b, self._a = butter2_lowpass(profile.anti_alias_cutoff_hz, self.sample_rate_hz)
        resting_g = self._gain + profile.bias_g  # level plate at rest: gravity only
        self._zi: npt.NDArray[np.float64] = steady_state(self._b, self._a) * resting_g
        full_scale = round(profile.range_g * profile.counts_per_g)
        word = 2 ** (profile.bit_depth - 1)
        self.max_count = min(full_scale - 1, word - 1)
        self.min_count = max(-full_scale, -word)
        self._last = int(
            np.clip(round(resting_g * profile.counts_per_g), self.min_count, self.max_count)
        )

    def _filter_to_counts(self, x: FloatArray) -> FloatArray:
        """The anti-alias filter (state carried from call to call), output scaled to counts.

        For block-sized inputs the filter runs in its exact block form, one product
        ``[y; zi'] = M @ [x; zi]`` with ``M`` taken once per length from scipy's lfilter on unit
        inputs (it is linear): far cheaper than an lfilter call on 32 samples. Longer inputs
        use lfilter itself.
        """
        n = x.size
        if n > _BLOCK_FORM_MAX:
            import scipy.signal  # noqa: PLC0415 (long inputs only: tests and analysis)

            y, self._zi = scipy.signal.lfilter(self._b, self._a, x, zi=self._zi)
            return np.asarray(y, dtype=np.float64) * self.profile.counts_per_g
        block = self._block_form(n)
        out = block @ np.concatenate((x, self._zi))
        self._zi = out[n:]
        return out[:n]

    def _noise(self, n: int) -> FloatArray:
        """n standard normal draws, taken from the rng in fixed chunks.

        The sequence does not depend on how a run is cut into calls.
        """
        self._refill_noise(n)
        draws = self._noise_buffer[self._noise_pos : self._noise_pos + n]
        self._noise_pos += n
        return draws

    def measure_ahead(self, accel_g: FloatArray, windows: Sequence[int] = ()) -> SensorAhead:
        """Counts for ``accel_g`` of shape (blocks, n), block by block as :meth:`measure` would
        give them, without consuming anything: :meth:`commit_ahead` takes them in order.

        The noise is the same draws, the filter the same block product per block, so a
        committed block equals the one :meth:`measure` gives for the same input. ``windows``
        (block counts, summing to ``blocks``) cuts the blocks into runs the noise buffer is to
        see as separate calls, each made when its first block is committed: the buffer is
        refilled where and as those calls would refill it (its layout is part of the state).
        """
        blocks, n = accel_g.shape
        total = blocks * n
        noise_std_g = self.noise_density_ug * 1e-6 * math.sqrt(self.sample_rate_hz / 2.0)
        self._refill_noise((windows[0] if windows else blocks) * n)
        draws = self._peek_noise(total).reshape(blocks, n)
        sensed = accel_g * self._gain + noise_std_g * draws
        sensed += self._gain + self.profile.bias_g
        block = self._block_form(n)
        # Row j of ``inputs`` is block j's [sensed; filter state], row j of ``outputs`` its
        # [filtered; filter state after]: the same product per block, without a new array each.
        inputs = np.empty((blocks, n + self._zi.size))
        inputs[:, :n] = sensed
        outputs = np.empty_like(inputs)
        zi = self._zi
        for j in range(blocks):
            inputs[j, n:] = zi
            zi = np.matmul(block, inputs[j], out=outputs[j])[n:]
        starts = tuple(itertools.accumulate(windows[:-1])) if windows else ()
        return SensorAhead(self._counts(outputs[:, :n]), outputs[:, n:], starts)

    def commit_ahead(self, ahead: SensorAhead, block: int) -> None:
        """Consume block ``block`` of ``ahead`` (in order): its noise draws and filter state."""
        self.commit_ahead_many(ahead, block, 1)

    def commit_ahead_many(self, ahead: SensorAhead, first: int, count: int) -> None:
        """:meth:`commit_ahead` of blocks ``first .. first + count - 1`` at once."""
        n = ahead.counts.shape[1]
        end = first + count
        for start in ahead.window_starts:  # a window's own refill, made as it begins
            if first <= start < end:
                self._noise_pos += (start - first) * n
                self._refill_noise((self._window_end(ahead, start) - start) * n)
                first = start
        self._noise_pos += (end - first) * n
        self._zi = ahead.states[first + count - 1]
        if n:
            self._last = int(ahead.counts[first + count - 1, -1])

    def _counts(self, filtered: FloatArray) -> npt.NDArray[np.int16]:
        """Filtered readings (in counts) rounded, clipped to the word, then any fault applied."""
        clipped = np.minimum(np.maximum(np.rint(filtered), self.min_count), self.max_count)
        counts: npt.NDArray[np.int16] = clipped.astype(np.int16)
        if self.disconnected:
            counts[:] = 0
        elif self.saturated:
            counts[:] = self.max_count
        elif self.stuck:
            counts[:] = self._last
        return counts

    def _block_form(self, n: int) -> FloatArray:
        block = self._block_forms.get(n)
        if block is None:
            block = block_form(self._b, self._a, n)
            block[:n] *= self.profile.counts_per_g
            self._block_forms[n] = block
        return block

    def _refill_noise(self, n: int) -> None:
        """Make sure the buffer holds n draws from the current position (same sequence)."""
        if self._noise_pos + n > self._noise_buffer.size:
            rest = self._noise_buffer[self._noise_pos :]
            fresh = self._fresh_noise(max(_NOISE_CHUNK, n - rest.size))
            self._noise_buffer = np.concatenate((rest, fresh))
            self._noise_pos = 0

    def _fresh_noise(self, count: int) -> FloatArray:
        """The next ``count`` draws after the buffer: the reserve's, then the rng's."""
        reserve = self._noise_reserve
        if not reserve.size:
            return self._rng.standard_normal(count)
        if reserve.size >= count:
            self._noise_reserve = reserve[count:]
            return reserve[:count]
        self._noise_reserve = reserve[:0]
        return np.concatenate((reserve, self._rng.standard_normal(count - reserve.size)))

    def _peek_noise(self, total: int) -> FloatArray:
        """The next ``total`` draws from the current position, consuming nothing: those past
        the buffer are drawn into the reserve (the buffer is not refilled)."""
        held = self._noise_buffer[self._noise_pos : self._noise_pos + total]
        if held.size == total:
            return held
        more = total - held.size
        reserve = self._noise_reserve
        if reserve.size < more:
            fresh = self._rng.standard_normal(max(_NOISE_CHUNK, more - reserve.size))
            reserve = self._noise_reserve = np.concatenate((reserve, fresh))
        return np.concatenate((held, reserve[:more]))

    @staticmethod
    def _window_end(ahead: SensorAhead, start: int) -> int:
        for later in ahead.window_starts:
            if later > start:
                return later
        return int(ahead.counts.shape[0])

    @property
    def noise_std_g(self) -> float:
        """Standard deviation of the white noise added to each sample, g."""
        return self.noise_density_ug * 1e-6 * math.sqrt(self.sample_rate_hz / 2.0)

    def block_map(self, n: int) -> tuple[FloatArray, float, float] | None:
        """:meth:`measure` of ``n`` samples as a linear map, or None if ``n`` is too long.

        Returns ``(M, gain, offset_g)``: with ``sensed = gain x accel_g + noise_std_g x noise +
        offset_g`` (gravity and bias in the offset), ``M @ [sensed; filter_state]`` gives the
        filtered readings in counts (first ``n`` rows) and the filter state after them; then
        :meth:`finish_block` makes the counts. ``noise`` is :meth:`draw_noise` (n).
        """
        if n > _BLOCK_FORM_MAX:
            return None
        return self._block_form(n), self._gain, self._gain + self.profile.bias_g

    @property
    def filter_state(self) -> FloatArray:
        """The anti-alias filter's state (transposed direct form) before the next sample."""
        return self._zi

    def draw_noise(self, n: int) -> FloatArray:
        """The next ``n`` standard normal draws of the noise (consumed)."""
        return self._noise(n)

    def finish_block(self, filtered: FloatArray, state: FloatArray) -> npt.NDArray[np.int16]:
        """Counts of a block computed through :meth:`block_map`: ``filtered`` readings (counts)
        rounded, clipped and faulted as :meth:`measure` does, the filter left at ``state``."""
        self._zi = state
        counts = self._counts(filtered)
        if counts.size:
            self._last = int(counts[-1])
        return counts

    def measure(self, accel_g: npt.ArrayLike) -> npt.NDArray[np.int16]:
        """Counts for true vertical plate accelerations (g, gravity removed), shape (n,)."""
        true_g = np.asarray(accel_g, dtype=np.float64)
        if true_g.ndim != 1:
            raise ValueError(f"accel_g must be one-dimensional, got shape {true_g.shape}")
        # gravity (+1 g) times the gain plus the bias is one constant offset
        noise_std_g = self.noise_density_ug * 1e-6 * math.sqrt(self.sample_rate_hz / 2.0)
        sensed = true_g * self._gain + noise_std_g * self._noise(true_g.size)
        sensed += self._gain + self.profile.bias_g
        counts = self._counts(self._filter_to_counts(sensed))
        if counts.size:
            self._last = int(counts[-1])
        return counts
