"""The clinic benchmark runs end to end at a tiny size and reports what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_clinic


def test_the_clinic_benchmark_imports_copies_and_measures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    args = ["--patients", "6", "--imported", "2", "--days", "20", "--backend", "sqlite"]
    assert bench_clinic.main([*args, "--json", str(out)]) == 0
    (sqlite,) = json.loads(out.read_text())["results"]
    assert sqlite["imported_sessions"] == 2 * 40 - 12  # the first patient missed 6 days
    first, full = sqlite["points"]
    assert (first["patients"], full["patients"]) == (2, 6)
    assert full["sessions"] == 3 * first["sessions"]
    assert full["overview_s"] > 0
    assert "targets (overview <= 2 s, report <= 1 s): met" in capsys.readouterr().out
