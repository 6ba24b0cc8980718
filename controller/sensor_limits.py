"""What a per-device sensor calibration may hold (docs/sensor.md), without the numerics.

Kept apart from ``controller.sensor`` so that the command line can state these bounds in its
help without importing numpy.
"""

from __future__ import annotations

SENSITIVITY_RANGE = (0.8, 1.2)  # relative to HELLO counts_per_g; beyond: a broken part
OFFSET_RANGE_G = (-0.5, 0.5)
SOURCE_BENCH = "bench"  # sensitivity and offset measured by an engineer and entered
SOURCE_NOMINAL = "nominal"  # no bench values: 1.0 and 0.0 (the part's datasheet scale)
