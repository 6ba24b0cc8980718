"""Presence: is somebody standing on the plate, nobody, or can the plate not tell?

A patient only adds mass, so with somebody on it the plate responds less per unit drive than
the empty plate did at calibration. The detector watches its own response feature, never the
control law's learned correction (which another part of the loop owns and may change):

    x = peak_g / (G(f) * mean_drive) * (1 + k(f) * (T - T_cal))

``peak_g`` and ``mean_drive`` come from the estimator window of one block, ``G(f)`` is the
cold empty-plate calibration at the block's frequency, ``T`` the coil temperature the device
reports in STATUS (polled every few seconds) and ``T_cal`` the coil temperature recorded with
the calibration. A warm coil's resistance rises and every response falls with it (``k(f)``,
about 0.38% per kelvin at 30 Hz, 0.3% at 90 Hz: :func:`tempco_per_k`); the factor puts the
warm plate back on the calibration's scale, so the empty plate reads x = 1 (within a few
percent) whatever the coil temperature. ``x`` is averaged over FEATURE_WINDOW_S.

The decision, per block of the hold (docs/control.md, "Presence"):

- A fresh decision (first in the hold, and after every frequency step, when the feature window
  has refilled): x at least MIN_GAP below 1 is LOADED and x becomes the loaded reference L;
  x within EMPTY_BAND of 1 is UNLOADED unless somebody was on the plate before the step; what
  lies between, or an empty-looking plate after a step with somebody on it, is CANNOT_TELL,
  unless a reference remembered at this frequency shows that a person there reads clearly lower.
- LOADED: L follows slow drift (residual heating, a slow sweep) with TRACK_TAU_S while x stays
  within a quarter of the gap 1 - L; x above the midpoint (L + 1) / 2 for HOLD_S is a step-off. A
  gap that shrinks below MIN_GAP (a sweep into frequencies where this patient barely loads the
  plate) is CANNOT_TELL: loaded and empty are too close to tell apart there.
- UNLOADED: x below 1 - EMPTY_BAND for HOLD_S is somebody stepping on; L is then re-taken
  over ACQUIRE_S while the weight settles.
- CANNOT_TELL: x at least MIN_GAP below 1 for HOLD_S is LOADED again; a remembered reference at
  this frequency that x clearly exceeds is UNLOADED.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

# How much a warmer coil lowers the response, per kelvin: the coil's copper resistance rises
# 0.393%/K (annealed copper), and the current, so the force, falls with the resistive share of
# the coil's impedance, which shrinks as its reactance grows with frequency. The corner
# R/(2 pi L) is an assumption for the reference plate (2 ohm, 2 mH); measure it on a real one.
TEMPCO_DC_PER_K = 0.00393
ELECTRICAL_CORNER_HZ = 159.0
ASSUMED_CALIBRATION_TEMP_C = 20.0  # calibrations that recorded no coil temperature: room
FEATURE_WINDOW_S = 0.5  # the response feature is averaged over this long
EMPTY_BAND = 0.04  # the empty plate reads x within this of 1 (noise plus compensation error)
MIN_GAP = 0.05  # a loaded reference must lie this far below 1 to tell loaded from empty
HOLD_S = 0.3  # a change of state must persist this long
TRACK_TAU_S = 2.0  # the loaded reference follows slow drift with this time constant
ACQUIRE_S = 2.0  # after stepping on, the reference is re-taken over this long
FREQ_STEP_HZ = 1.0  # a frequency change this large starts a fresh decision
FREQ_BIN_HZ = 2.5  # loaded references are remembered per band of this width
UNVERIFIED_FRACTION = 0.1  # more than this share of the hold undecided: presence not verified
MIN_EXPECTED_FRACTION = 0.2  # judge only windows whose expected response is this much of target


class LoadState(enum.StrEnum):
    UNKNOWN = "unknown"
    LOADED = "loaded"
    UNLOADED = "nobody on the plate"
    CANNOT_TELL = "cannot tell whether somebody is on the plate"


_LOADED = LoadState.LOADED  # the state of nearly every judged block (a local look-up)


@dataclass(frozen=True)
class PresenceSummary:
    """What presence detection could and could not see in one exposure's hold.

    ``reference`` is the last loaded reference (x with somebody on the plate, 1 = the empty
    plate); ``smallest_gap`` the smallest 1 - reference seen while loaded (how detectable the
    patient was at worst); ``detectable`` False if loaded and empty were ever too close to tell.
    Seconds are hold time: ``loaded_s`` somebody known on the plate, ``absent_s`` nobody,
    ``undetectable_s`` cannot tell, ``unknown_s`` before the first decision. ``absences``
    counts step-offs seen. ``verified`` is False when the hold could not be judged for more
    than UNVERIFIED_FRACTION of it.
    """

    reference: float | None
    smallest_gap: float | None
    detectable: bool | None
    loaded_s: float
    absent_s: float
    undetectable_s: float
    unknown_s: float
    absences: int
    temperature_compensated: bool
    coil_temp_start_c: float | None
    coil_temp_end_c: float | None
    calibration_temp_c: float

    @property
    def verified(self) -> bool:
        held = self.loaded_s + self.absent_s + self.undetectable_s + self.unknown_s
        return self.undetectable_s <= UNVERIFIED_FRACTION * held

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verified"] = self.verified
        return data


class PresenceDetector:
    """Decides presence block by block from the temperature-compensated response feature."""

    def __init__(self, block_s: float, calibration_temp_c: float | None = None) -> None:
        self.block_s = block_s
        self.calibration_temp_c = (
            ASSUMED_CALIBRATION_TEMP_C if calibration_temp_c is None else calibration_temp_c
        )
        self.state = LoadState.UNKNOWN
        self.reference: float | None = None
        self.feature: float | None = None
        self._window_n = max(1, round(FEATURE_WINDOW_S / block_s))
        self._window: deque[float] = deque(maxlen=self._window_n)
        self._track_alpha = min(1.0, block_s / TRACK_TAU_S)  # the reference's step per block
        self._fresh = True
        self._freq_hz: float | None = None
        self._pending_s = 0.0
        self._acquire_s = 0.0
        self._remembered: dict[int, float] = {}
        self._bin_hz = math.nan  # the frequency whose _bin is _bin_index (nan: none yet)
        self._bin_index = 0
        self._coil_temp_c: float | None = None
        self._factor_key: tuple[float, float | None] = (math.nan, None)
        self._factor_value = 1.0
        self._coil_temp_start_c: float | None = None
        self._smallest_gap: float | None = None
        self._undetectable_seen = False
        self._seconds = dict.fromkeys(LoadState, 0.0)
        self._absences = 0

    # ---- inputs ----------------------------------------------------------------------

    def set_coil_temperature(self, temp_c: float | None) -> None:
        """The coil temperature from the latest STATUS (None: the device does not report it)."""
        if temp_c is None or not math.isfinite(temp_c):
            return
        self._coil_temp_c = temp_c
        if self._coil_temp_start_c is None:
            self._coil_temp_start_c = temp_c

    def compensated(self, response: float, freq_hz: float) -> float:
        """``response`` (measured over calibrated gain) on the calibration's temperature scale."""
        if self._coil_temp_c is None:
            return response
        return response * self._factor(freq_hz)

    def _factor(self, freq_hz: float) -> float:
        """The compensation factor at ``freq_hz`` and the latest coil temperature (remembered
        until either changes: a fixed frequency and a STATUS every few seconds ask the same)."""
        key = (freq_hz, self._coil_temp_c)
        if key != self._factor_key:
            assert self._coil_temp_c is not None
            warmer_k = self._coil_temp_c - self.calibration_temp_c
            self._factor_key = key
            self._factor_value = 1.0 + tempco_per_k(freq_hz) * warmer_k
        return self._factor_value

    def update(
        self, freq_hz: float, response: float | None, in_hold: bool, settled: bool
    ) -> LoadState:
        """One block: ``response`` is peak / (G(f) * drive), None if this block cannot show it.

        Only settled hold blocks are judged; ``in_hold`` blocks are counted in the summary.
        """
        last_hz = self._freq_hz
        # (the same frequency as the last block: no step, without the arithmetic)
        if last_hz is not None and freq_hz != last_hz and abs(freq_hz - last_hz) >= FREQ_STEP_HZ:
            self._window.clear()
            self._fresh = True
            self._pending_s = 0.0
        self._freq_hz = freq_hz
        window = self._window
        if settled and response is not None and math.isfinite(response) and response > 0.0:
            # self.compensated(response, freq_hz), without the call
            window.append(
                response if self._coil_temp_c is None else response * self._factor(freq_hz)
            )
        if settled and len(window) == self._window_n:
            feature = self.feature = sum(window) / len(window)
            self._judge(feature, freq_hz)
        if in_hold:
            self._seconds[self.state] += self.block_s
        return self.state

    # ---- the decision ----------------------------------------------------------------

    def _judge(self, x: float, freq_hz: float) -> None:
        if self._fresh:
            self._fresh = False
            self._decide_fresh(x, freq_hz)
            return
        state = self.state
        if state is _LOADED:
            self._while_loaded(x, freq_hz)
        elif state is LoadState.UNLOADED:
            if self._held(x < 1.0 - EMPTY_BAND):
                self._to_loaded(x)
        elif state is LoadState.CANNOT_TELL:
            known = self._remembered.get(self._bin(freq_hz))
            empty = known is not None and x > _step_off_level(known)
            if self._held(x <= 1.0 - MIN_GAP or empty):
                if empty:
                    self._absences += 1  # somebody was (believed) on the plate until now
                    self._to_unloaded()
                else:
                    self._to_loaded(x)

    def _decide_fresh(self, x: float, freq_hz: float) -> None:
        before = self.state
        self._pending_s = 0.0
        if x <= 1.0 - MIN_GAP:
            self.state = LoadState.LOADED
            self.reference = x
            self._note_gap(x)
            self._remember(freq_hz, x)
            return
        known = self._remembered.get(self._bin(freq_hz))
        if known is not None and x > _step_off_level(known):
            self.state = LoadState.UNLOADED  # a person here reads clearly lower: nobody is on
            if before in (LoadState.LOADED, LoadState.CANNOT_TELL):
                self._absences += 1
        elif x >= 1.0 - EMPTY_BAND and before in (LoadState.UNKNOWN, LoadState.UNLOADED):
            self.state = LoadState.UNLOADED
        else:
            self.state = LoadState.CANNOT_TELL
            self._undetectable_seen = True
        self.reference = None

    def _while_loaded(self, x: float, freq_hz: float) -> None:
        assert self.reference is not None
        if self._acquire_s > 0.0:
            # The weight is still settling onto the plate: the reference follows x.
            self._acquire_s -= self.block_s
            self.reference = x
            if self._acquire_s <= 0.0:
                self._note_gap(x)
                if 1.0 - x < MIN_GAP:
                    self._to_cannot_tell()
                else:
                    self._remember(freq_hz, x)
            return
        reference = self.reference
        gap = 1.0 - reference
        if gap < MIN_GAP:
            self._to_cannot_tell()
            return
        # _held(x > _step_off_level(reference)) written out (this runs every block loaded)
        if x > reference + (1.0 - reference) / 2:
            pending = self._pending_s = self._pending_s + self.block_s
            if pending >= HOLD_S - 1e-9:
                self._pending_s = 0.0
                self._absences += 1
                self._to_unloaded()
                return
        else:
            self._pending_s = 0.0
        if abs(x - reference) < gap / 4:
            reference += self._track_alpha * (x - reference)
            self.reference = reference
            # _note_gap(reference) and _remember(freq_hz, reference), without the calls
            tracked_gap = 1.0 - reference
            smallest = self._smallest_gap
            # min(smallest, tracked_gap) as the builtin picks
            if smallest is None or tracked_gap < smallest:
                self._smallest_gap = tracked_gap
            if tracked_gap >= MIN_GAP:
                self._remembered[self._bin(freq_hz)] = reference

    def _held(self, condition: bool) -> bool:
        self._pending_s = self._pending_s + self.block_s if condition else 0.0
        if self._pending_s >= HOLD_S - 1e-9:
            self._pending_s = 0.0
            return True
        return False

    def _to_loaded(self, x: float) -> None:
        self.state = LoadState.LOADED
        self.reference = x
        self._acquire_s = ACQUIRE_S

    def _to_unloaded(self) -> None:
        self.state = LoadState.UNLOADED
        self.reference = None
        self._pending_s = 0.0

    def _to_cannot_tell(self) -> None:
        self.state = LoadState.CANNOT_TELL
        self.reference = None
        self._pending_s = 0.0
        self._undetectable_seen = True

    def _note_gap(self, reference: float) -> None:
        gap = 1.0 - reference
        self._smallest_gap = gap if self._smallest_gap is None else min(self._smallest_gap, gap)

    def _bin(self, freq_hz: float) -> int:
        if freq_hz != self._bin_hz:  # the last frequency's bin is remembered (a fixed one)
            self._bin_index = round(freq_hz / FREQ_BIN_HZ)
            self._bin_hz = freq_hz
        return self._bin_index

    def _remember(self, freq_hz: float, reference: float) -> None:
        if 1.0 - reference >= MIN_GAP:
            self._remembered[self._bin(freq_hz)] = reference

    # ---- the record ------------------------------------------------------------------

    @property
    def detectable(self) -> bool | None:
        """None before any decision; False once loaded and empty were too close to tell."""
        if self._undetectable_seen:
            return False
        return None if self._smallest_gap is None else True

    def summary(self) -> PresenceSummary:
        s = self._seconds
        last_reference = self.reference
        if last_reference is None and self._remembered:
            last_reference = self._remembered.get(self._bin(self._freq_hz or 0.0))
        return PresenceSummary(
            reference=last_reference,
            smallest_gap=self._smallest_gap,
            detectable=self.detectable,
            loaded_s=s[LoadState.LOADED],
            absent_s=s[LoadState.UNLOADED],
            undetectable_s=s[LoadState.CANNOT_TELL],
            unknown_s=s[LoadState.UNKNOWN],
            absences=self._absences,
            temperature_compensated=self._coil_temp_c is not None,
            coil_temp_start_c=self._coil_temp_start_c,
            coil_temp_end_c=self._coil_temp_c,
            calibration_temp_c=self.calibration_temp_c,
        )


def response_over_empty(
    peak_g: float, mean_drive: float, gain: float, target_g: float
) -> float | None:
    """One window's response over the calibrated empty plate's, ``peak / (G(f) * drive)``.

    None when the drive is too small for the expected response to stand above the noise.
    """
    if mean_drive * gain < MIN_EXPECTED_FRACTION * target_g or peak_g <= 0.0:
        return None
    return peak_g / (gain * mean_drive)


def tempco_per_k(freq_hz: float) -> float:
    """Fraction by which one kelvin of coil warming lowers the response at ``freq_hz``."""
    return TEMPCO_DC_PER_K / (1.0 + (freq_hz / ELECTRICAL_CORNER_HZ) ** 2)


def _step_off_level(reference: float) -> float:
    """x above this (halfway from the loaded reference to the empty plate) is empty."""
    return reference + (1.0 - reference) / 2
