"""The clinic benchmark runs end to end at a tiny size and reports what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_clinic


def test_the_clinic_benchmark_imports_every_patient_and_measures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    args = ["--patients", "6", "--measure-at", "2", "--days", "20", "--backend", "sqlite"]
    assert bench_clinic.main([*args, "--json", str(out)]) == 0
    (sqlite,) = json.loads(out.read_text())["results"]
    # every patient imported for real: 6 x 40 sessions, less 6 days missed by patient 0 and 5
    assert sqlite["imported_sessions"] == 6 * 40 - 2 * 12
    first, full = sqlite["points"]
    assert (first["patients"], full["patients"]) == (2, 6)
    assert (first["sessions"], full["sessions"]) == (2 * 40 - 12, 6 * 40 - 24)
    assert full["overview_s"] > 0
    assert sqlite["import_sessions_per_s"] > 0
    assert "targets (overview <= 2 s, report <= 1 s): met" in capsys.readouterr().out


def test_one_real_size_year_is_imported_by_a_child_process(tmp_path: Path) -> None:
    export = bench_clinic.real_size_export(tmp_path, days=2)
    line = export.read_text(encoding="utf-8").splitlines()[0]
    assert len(json.loads(line)["envelope"]) == bench_clinic.REAL_ENVELOPE_POINTS
    assert 85_000 < len(line) < 110_000  # a real session's line: 93,960 bytes
    real = bench_clinic.run_real_size(str(tmp_path / "real.db"), "sqlite", export)
    assert real["added"] == 4
    assert real["rss_peak_mb"] >= real["rss_before_mb"] > 0
