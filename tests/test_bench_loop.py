"""The loop benchmark's replay is the controller alone: it reproduces the recorded run."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench_loop
from controller.calibration import identify
from controller.loop import ExposureStatus, run_exposure
from firmware_bridge.client import DeviceClient


def test_replayed_blocks_give_the_updates_of_the_recorded_run() -> None:
    with DeviceClient.open(bench_loop.EMPTY_PLATE) as device:
        calibration = identify(device)
    recorded = bench_loop.record(calibration, 3.0)
    replay = bench_loop.Replay(recorded)
    result = run_exposure(replay, calibration, bench_loop.settings(3.0, False))  # type: ignore[arg-type]
    assert result.status is ExposureStatus.COMPLETED
    assert result.history == recorded["history"]
    assert len(result.history["t_s"]) > 200  # ramps and the 3-s hold, 50 updates a second


def test_the_benchmark_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "loop.json"
    assert bench_loop.main(["--seconds", "2", "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["results"]) == {
        "replayed_run_us", "replayed_start_us", "live_run_us", "live_start_us",
    }  # fmt: skip
    assert all(row["median"] > 0.0 for row in report["results"].values())
