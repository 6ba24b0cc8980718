"""The speed benchmark's start-to-move child sees the plate move, on empty and years-long logs."""

from __future__ import annotations

from pathlib import Path

from benchmarks import bench_log, bench_speed


def test_the_moves_child_sees_the_first_non_zero_drive(tmp_path: Path) -> None:
    homes = bench_speed.Homes(tmp_path)
    moved = bench_speed.measure_moves(homes.fresh(10.0).root)  # raises if it never heard
    assert 0.0 < moved["moved_cpu_s"] <= moved["moved_s"] + 1.0


def test_the_moves_child_sees_the_plate_move_with_a_countersigned_log(tmp_path: Path) -> None:
    """The years-of-log rows: a cached log the benchmark's plate countersigned, and that plate
    (its memory beside the home) paired with the home, as `--log-years` runs them."""
    _, _, start_home = bench_log.build(tmp_path / "logs", 0.02)
    plate = f"{bench_speed.PLATE}&nv={start_home.root / 'nv'}"
    moved = bench_speed.measure_moves(start_home.root, plate)  # raises if it never heard
    assert 0.0 < moved["moved_cpu_s"] <= moved["moved_s"] + 1.0
