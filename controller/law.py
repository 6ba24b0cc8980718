"""Control law: hold the prescribed peak acceleration by adjusting the drive.

``drive = c * setpoint_g / G(f)`` where ``G(f)`` is the calibrated empty plate's response
(g per unit drive, the gain schedule) and ``c`` is the correction the loop learns. Each update
measures the plate's actual gain over the estimator window, ``rho = peak_g / (G * mean_drive)``,
using the drive the device reported for those very samples, and integrates ``c`` towards
``1 / rho`` with time constant ``time_constant_s``. In steady state ``rho * c = 1``, so the
amplitude equals the setpoint whatever the load, coil temperature or frequency (integral action
on the plate's gain). Because ``c`` estimates a gain instead of accumulating an amplitude error:

- a setpoint ramp does not bias it (no lag error to integrate), so ramps end without overshoot;
- the loop's speed does not depend on how far the plate is from its calibration;
- it cannot wind up at the drive limit (anti-windup by construction); the drive is clamped to
  the limit and slew-limited;
- a response no patient can cause (far below or above the empty plate's) is not learned: the
  drive holds while the safety supervisor confirms the fault, instead of chasing it.

All functions are pure over explicit state, so tests and benchmarks drive them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.estimation import WindowEstimate


@dataclass(frozen=True)
class LawSettings:
    time_constant_s: float = 0.05
    slew_per_s: float = 2.0  # the drive moves at most this much (fraction) per second
    min_expected_fraction: float = 0.2  # learn only when the expected response is this large
    correction_bounds: tuple[float, float] = (0.5, 8.0)
    # Responses (relative to the calibrated empty plate) that a patient can cause; outside
    # them the law stops learning (a 150 kg patient at 30 Hz is about 0.45 on the reference).
    credible_ratio: tuple[float, float] = (0.2, 1.5)

    def __post_init__(self) -> None:
        if self.time_constant_s <= 0.0 or self.slew_per_s <= 0.0:
            raise ValueError("time constant and slew limit must be positive")


def ramp_profile(t_s: float, ramp_up_s: float, hold_s: float, ramp_down_s: float) -> float:
    """Fraction of the target at exposure time ``t_s``: raised-cosine up, hold, raised-cosine down.

    The raised cosine starts and ends with zero slope, so the drive never steps.
    """
    if t_s <= 0.0:
        return 0.0
    if t_s < ramp_up_s:
        return 0.5 - 0.5 * math.cos(math.pi * t_s / ramp_up_s)
    t_down = t_s - ramp_up_s - hold_s
    if t_down <= 0.0:
        return 1.0
    if t_down >= ramp_down_s:
        return 0.0
    return 0.5 + 0.5 * math.cos(math.pi * t_down / ramp_down_s)


class AmplitudeLaw:
    """State of the law: the learned correction and the last drive it asked for."""

    def __init__(self, settings: LawSettings, drive_limit: float, correction: float = 1.0) -> None:
        self.settings = settings
        self.drive_limit = drive_limit
        self.correction = correction
        self.drive = 0.0

    def learn(
        self, estimate: WindowEstimate | None, gain: float, target_g: float, dt: float
    ) -> bool:
        """Move the correction towards the measured inverse gain; True if it learned."""
        s = self.settings
        if estimate is None or estimate.mean_drive * gain < s.min_expected_fraction * target_g:
            return False
        if estimate.fit.peak_g <= 0.0:
            return False
        rho = estimate.fit.peak_g / (gain * estimate.mean_drive)
        low, high = s.credible_ratio
        if not low <= rho <= high:
            # No load makes a plate respond like this: a fault the supervisor is confirming.
            # Hold the drive where it is rather than chase it.
            return False
        wanted = min(max(1.0 / rho, s.correction_bounds[0]), s.correction_bounds[1])
        alpha = min(1.0, dt / s.time_constant_s)
        self.correction += alpha * (wanted - self.correction)
        return True

    def command(self, setpoint_g: float, gain: float, dt: float) -> float:
        """The drive for this update: scheduled feedforward times correction, limited."""
        desired = self.correction * setpoint_g / gain
        desired = min(max(desired, 0.0), self.drive_limit)
        step = self.settings.slew_per_s * dt
        self.drive = min(max(desired, self.drive - step), self.drive + step)
        return self.drive

    @property
    def response_ratio(self) -> float:
        """The plate's gain relative to the calibrated empty plate, as learned (1 / c)."""
        return 1.0 / self.correction
