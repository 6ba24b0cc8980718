"""The control benchmark's open-loop baseline runs on the standing-patient plant (truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_control
from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from firmware_bridge.dose_limits import DOSE_LIMITS


def test_the_open_loop_baseline_keeps_the_empty_plate_under_the_firmware_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drive fixed from a 70 kg calibration, on the empty plate at 30 Hz (its largest gain).

    At 0.3 g this drove the empty standing-patient plate to about 0.8 g: the firmware tripped
    and the benchmark crashed. The baseline aims lower, so the plate stays under the ceiling and
    the case is scored.
    """
    with DeviceClient.open("sim://?speed=max&mass=70&seed=101") as dev:
        cal_70 = identify(dev)
    real_load_truth = bench_control.load_truth
    seen: list[dict[str, np.ndarray]] = []

    def keep_truth(path: Path) -> dict[str, np.ndarray]:
        truth = real_load_truth(path)
        seen.append(truth)
        return truth

    monkeypatch.setattr(bench_control, "load_truth", keep_truth)  # the case deletes its file
    row = bench_control.open_loop_case(
        cal_70, 30.0, 0.0, bench_control.NOISES["low"], 3.0, 7, tmp_path
    )
    assert np.isfinite(row["mean_error_pct"])
    assert row["mean_error_pct"] > 50.0  # the empty plate gets far more than aimed: the point
    (truth,) = seen
    assert "fault:OVER_ACCELERATION" not in " ".join(str(e) for e in truth["events"])
    assert float(np.max(np.abs(truth["accel_g"]))) < DOSE_LIMITS.firmware_ceiling_g
