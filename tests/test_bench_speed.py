"""The speed benchmark's "until the plate moves" child still sees the plate being moved."""

from __future__ import annotations

from pathlib import Path

from benchmarks import bench_speed


def test_the_moves_child_sees_the_first_non_zero_drive(tmp_path: Path) -> None:
    homes = bench_speed.Homes(tmp_path)
    moved = bench_speed.measure_moves(homes.fresh(10.0).root)  # raises if it never heard
    assert 0.0 < moved["moved_cpu_s"] <= moved["moved_s"] + 1.0
